//! The port's transmit queueing discipline (EVL's `oob_fifo`), behind a trait so others can be
//! plugged in.

use crossbeam_queue::ArrayQueue;

/// A queueing discipline: frames wait here between `oob_sendmsg` and the TX thread.
pub trait Qdisc<T>: Send + Sync {
    /// Queue `item`, or give it back when the qdisc is full (the caller counts the drop).
    fn enqueue(&self, item: T) -> Result<(), T>;
    /// The next item to transmit.
    fn dequeue(&self) -> Option<T>;
    fn len(&self) -> usize;
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Whether a sender may transmit directly when the queue is empty (Linux TCQ_F_CAN_BYPASS).
    fn can_bypass(&self) -> bool;
}

/// First in, first out, bounded, lock-free (EVL's default `oob_fifo`).
pub struct Fifo<T> {
    queue: ArrayQueue<T>,
}

impl<T> Fifo<T> {
    pub fn new(capacity: usize) -> Self {
        Fifo {
            queue: ArrayQueue::new(capacity.max(1)),
        }
    }
}

impl<T: Send> Qdisc<T> for Fifo<T> {
    fn enqueue(&self, item: T) -> Result<(), T> {
        self.queue.push(item)
    }
    fn dequeue(&self) -> Option<T> {
        self.queue.pop()
    }
    fn len(&self) -> usize {
        self.queue.len()
    }
    fn can_bypass(&self) -> bool {
        true
    }
}

/// Make a qdisc by its EVL name; None for an unknown one.
pub fn make_qdisc<T: Send + 'static>(name: &str, capacity: usize) -> Option<Box<dyn Qdisc<T>>> {
    match name {
        "oob_fifo" | "fifo" => Some(Box::new(Fifo::new(capacity))),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fifo_keeps_order_and_bounds() {
        let q = make_qdisc::<u32>("oob_fifo", 2).unwrap();
        assert!(q.enqueue(1).is_ok());
        assert!(q.enqueue(2).is_ok());
        assert_eq!(q.enqueue(3), Err(3));
        assert_eq!(q.dequeue(), Some(1));
        assert_eq!(q.dequeue(), Some(2));
        assert!(q.is_empty());
        assert!(make_qdisc::<u32>("nope", 1).is_none());
    }
}

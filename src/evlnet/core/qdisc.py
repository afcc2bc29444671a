"""Queuing disciplines between senders and a port's TX thread.

EVL registers one, ``oob_fifo``; others plug in through ``register_qdisc`` (EVL:
``evl_net_register_qdisc``). The interface is three methods; the TX thread is the only consumer.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from collections import deque

from .buffers import PacketBuffer


class Qdisc(ABC):
    """A queue of ready-to-send frames. ``enqueue`` may be called from any sender thread."""

    name: str = "?"
    #: Work-conserving FIFO: a sender may transmit directly when it is empty (TCQ_F_CAN_BYPASS).
    can_bypass: bool = False

    @abstractmethod
    def enqueue(self, buf: PacketBuffer) -> bool:
        """Queue *buf*; False if the qdisc refuses it (the caller then drops and counts it)."""

    @abstractmethod
    def dequeue(self) -> PacketBuffer | None:
        """Next frame to send, or None when empty."""

    @abstractmethod
    def __len__(self) -> int: ...


class FifoQdisc(Qdisc):
    """EVL's ``oob_fifo``: first in, first out, bounded by the pool it draws from."""

    name = "oob_fifo"
    can_bypass = True

    def __init__(self, limit: int = 1 << 30) -> None:
        self._queue: deque[PacketBuffer] = deque()
        self.limit = limit

    def enqueue(self, buf: PacketBuffer) -> bool:
        if len(self._queue) >= self.limit:
            return False
        self._queue.append(buf)   # deque.append/popleft are atomic under the GIL
        return True

    def dequeue(self) -> PacketBuffer | None:
        try:
            return self._queue.popleft()
        except IndexError:
            return None

    def __len__(self) -> int:
        return len(self._queue)


_QDISCS: dict[str, type[Qdisc]] = {FifoQdisc.name: FifoQdisc}


def register_qdisc(cls: type[Qdisc]) -> None:
    """Make a queuing discipline selectable by name (``Stack(qdisc=name)``)."""
    _QDISCS[cls.name] = cls


def make_qdisc(name: str) -> Qdisc:
    try:
        return _QDISCS[name]()
    except KeyError:
        raise ValueError(f"unknown qdisc {name!r}; known: {sorted(_QDISCS)}") from None

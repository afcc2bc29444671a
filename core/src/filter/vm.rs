//! Running a filter in user space: the rbpf interpreter, in the thread that runs the RX path.
//!
//! The program sees an `__sk_buff`-style context as in the kernel: the fields the verifier lets
//! it read are at their uapi offsets, and a tagged frame is shown as the kernel shows it after
//! `skb_vlan_untag` (tag in `vlan_present`/`vlan_tci`/`vlan_proto`, `data` without it), so one
//! program gives the same verdict here and in the kernel. `data` and `data_end` are 32-bit
//! fields in the uapi but must be 64-bit pointers here: their loads (found by the verifier) are
//! rewritten to 64-bit loads of two fields past the uapi ones, as the kernel rewrites them.
//!
//! rbpf bounds-checks every load and store at run time too (context, packet, stack): a program
//! can never read outside the frame, even if our verifier had a hole. A run-time fault counts
//! as an invalid verdict.

use std::cell::RefCell;
use std::mem::ManuallyDrop;

use super::verifier::{self, Insn};
use super::{FilterError, Program, Verdict};
use crate::wire::{ETH_P_8021AD, ETH_P_8021Q};

/// `__sk_buff` as the VM shows it: the uapi's 32-bit fields, then 64-bit `data`/`data_end`.
#[repr(C)]
struct SkbContext {
    fields: [u32; 48],
    data: u64,
    data_end: u64,
}

impl Default for SkbContext {
    fn default() -> SkbContext {
        SkbContext {
            fields: [0; 48],
            data: 0,
            data_end: 0,
        }
    }
}

const F_LEN: usize = 0;
const F_PKT_TYPE: usize = 1;
const F_PROTOCOL: usize = 4;
const F_VLAN_PRESENT: usize = 5;
const F_VLAN_TCI: usize = 6;
const F_VLAN_PROTO: usize = 7;
const F_INGRESS_IFINDEX: usize = 9;
const F_IFINDEX: usize = 10;
/// Where the rewritten `data`/`data_end` loads read.
const VM_DATA: i16 = 192;
const VM_DATA_END: i16 = 200;

thread_local! {
    /// The untagged copy of a tagged frame (one per thread that runs RX, reused).
    static UNTAGGED: RefCell<Vec<u8>> = RefCell::new(Vec::with_capacity(2048));
}

/// A verified program loaded into the interpreter.
pub struct VmFilter {
    /// Declared before `code`, and dropped by hand before it: the VM borrows `code`.
    vm: ManuallyDrop<rbpf::EbpfVmMbuff<'static>>,
    code: &'static [u8],
    pub program: Program,
}

impl VmFilter {
    /// Prepare `program` (verified) for the interpreter.
    pub fn new(program: Program) -> Result<VmFilter, FilterError> {
        let mut insns = program.insns.clone();
        for &(pc, end) in &program.facts.packet_pointer_loads {
            let i = insns[pc];
            insns[pc] = Insn::new(
                0x79,
                i.dst,
                i.src,
                if end { VM_DATA_END } else { VM_DATA },
                0,
            );
        }
        let code: &'static [u8] = Box::leak(verifier::encode(&insns).into_boxed_slice());
        let vm = match rbpf::EbpfVmMbuff::new(Some(code)) {
            Ok(vm) => vm,
            Err(e) => {
                // SAFETY: `code` came from Box::leak just above and nothing borrows it any more
                // (the VM that would have was not made).
                unsafe { drop(Box::from_raw(code as *const [u8] as *mut [u8])) };
                return Err(FilterError::invalid(format!(
                    "rbpf refused the program: {e:?}"
                )));
            }
        };
        let mut f = VmFilter {
            vm: ManuallyDrop::new(vm),
            code,
            program,
        };
        f.vm.register_helper(verifier::HELPER_SKB_LOAD_BYTES as u32, skb_load_bytes)
            .map_err(|e| FilterError::invalid(format!("rbpf: {e:?}")))?;
        Ok(f)
    }

    /// The verdict on `frame` (a whole Ethernet frame) received on `ifindex`; `pkt_type` is the
    /// kernel's PACKET_* class of its destination MAC.
    pub fn run(&self, frame: &[u8], ifindex: u32, pkt_type: u8) -> Verdict {
        match self.run_r0(frame, ifindex, pkt_type) {
            Some(r0) => Verdict::from_return(r0),
            None => Verdict::Invalid,
        }
    }

    /// The program's return value on `frame`, None if it faulted (rbpf's run-time checks): a
    /// verified program never does (the `filter_program` fuzz target checks it).
    pub fn run_r0(&self, frame: &[u8], ifindex: u32, pkt_type: u8) -> Option<u64> {
        let mut ctx = SkbContext::default();
        ctx.fields[F_PKT_TYPE] = pkt_type as u32;
        ctx.fields[F_INGRESS_IFINDEX] = ifindex;
        ctx.fields[F_IFINDEX] = ifindex;
        let tpid = if frame.len() >= 18 {
            u16::from_be_bytes([frame[12], frame[13]])
        } else {
            0
        };
        if tpid == ETH_P_8021Q || tpid == ETH_P_8021AD {
            ctx.fields[F_VLAN_PRESENT] = 1;
            ctx.fields[F_VLAN_TCI] = u16::from_be_bytes([frame[14], frame[15]]) as u32;
            ctx.fields[F_VLAN_PROTO] = tpid.to_be() as u32;
            ctx.fields[F_PROTOCOL] = u16::from_be_bytes([frame[16], frame[17]]).to_be() as u32;
            UNTAGGED.with(|scratch| {
                let mut copy = scratch.borrow_mut();
                copy.clear();
                copy.extend_from_slice(&frame[..12]);
                copy.extend_from_slice(&frame[16..]);
                self.execute(&mut ctx, &copy)
            })
        } else {
            if frame.len() >= 14 {
                ctx.fields[F_PROTOCOL] = u16::from_be_bytes([frame[12], frame[13]]).to_be() as u32;
            }
            self.execute(&mut ctx, frame)
        }
    }

    fn execute(&self, ctx: &mut SkbContext, packet: &[u8]) -> Option<u64> {
        ctx.fields[F_LEN] = packet.len() as u32;
        ctx.data = packet.as_ptr() as u64;
        ctx.data_end = ctx.data + packet.len() as u64;
        // SAFETY: SkbContext is repr(C), made of integers only, with no padding (48 u32s then
        // two u64s at offset 192): every byte is initialised, and the slice lives no longer
        // than `ctx`, which this function borrows.
        let mbuff = unsafe {
            std::slice::from_raw_parts(
                ctx as *const SkbContext as *const u8,
                std::mem::size_of::<SkbContext>(),
            )
        };
        self.vm.execute_program(packet, mbuff).ok()
    }
}

impl Drop for VmFilter {
    fn drop(&mut self) {
        // SAFETY: the VM is dropped once, here, and before the code it borrows.
        unsafe { ManuallyDrop::drop(&mut self.vm) };
        // SAFETY: `code` came from Box::leak in `new`; the only borrower (the VM) is gone.
        unsafe { drop(Box::from_raw(self.code as *const [u8] as *mut [u8])) };
    }
}

/// `long bpf_skb_load_bytes(const struct __sk_buff *skb, u32 offset, void *to, u32 len)`:
/// copy packet bytes to the stack, or `-EFAULT` when they are not all in the packet.
fn skb_load_bytes(ctx: u64, offset: u64, to: u64, len: u64, _: u64) -> u64 {
    // SAFETY: the verifier proved r1 is the context, which `execute` made an SkbContext.
    let skb = unsafe { &*(ctx as *const SkbContext) };
    let plen = skb.data_end - skb.data;
    let offset = offset as u32 as u64;
    let len = len as u32 as u64;
    if offset > plen || len > plen - offset {
        return (-(libc::EFAULT as i64)) as u64;
    }
    // SAFETY: the source range is inside the packet (checked just above); the verifier proved
    // `to .. to + len` lies in the VM's stack (r3 a stack pointer, r4 a constant that fits).
    unsafe {
        std::ptr::copy_nonoverlapping(
            (skb.data + offset) as *const u8,
            to as *mut u8,
            len as usize,
        )
    };
    0
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::filter::verifier::tests::*;
    use crate::filter::verifier::verify;

    fn vm_of(insns: Vec<Insn>) -> VmFilter {
        let facts = verify(&insns).unwrap();
        VmFilter::new(Program {
            section: "test".into(),
            license: "GPL".into(),
            insns,
            facts,
        })
        .unwrap()
    }

    fn frame(proto: u8, len: usize) -> Vec<u8> {
        let mut f = vec![0u8; len];
        f[12] = 0x08;
        f[23] = proto;
        f
    }

    #[test]
    fn verdicts_follow_the_packet() {
        let f = vm_of(udp_filter(true));
        assert_eq!(f.run(&frame(17, 60), 3, 0), Verdict::Accept);
        assert_eq!(f.run(&frame(6, 60), 3, 0), Verdict::Skip);
        // too short for the read: the program's own check sends it to SKIP
        assert_eq!(f.run(&frame(17, 60)[..20], 3, 0), Verdict::Skip);
    }

    #[test]
    fn context_fields_read_as_in_the_kernel() {
        // return skb->protocol == htons(ETH_P_IP) ? ACCEPT : DROP, on a tagged frame too
        let p = vec![
            ldxw(2, 1, 16),
            mov64_imm(0, 1),
            Insn::new(0x15, 2, 0, 1, 0x0008),
            mov64_imm(0, 0),
            exit(),
        ];
        let f = vm_of(p);
        assert_eq!(f.run(&frame(17, 60), 1, 0), Verdict::Accept);
        let mut tagged = vec![0u8; 64];
        tagged[12..18].copy_from_slice(&[0x81, 0x00, 0x00, 0x2a, 0x08, 0x00]);
        assert_eq!(f.run(&tagged, 1, 0), Verdict::Accept);
        let mut arp = frame(0, 60);
        arp[13] = 0x06;
        assert_eq!(f.run(&arp, 1, 0), Verdict::Drop);
    }

    #[test]
    fn load_bytes_copies_or_faults() {
        // r0 = (load_bytes(skb, 12, fp-8, 2) == 0) ? 1 : 0, reading back the EtherType
        let p = vec![
            mov64_imm(2, 12),
            mov64_reg(3, 10),
            add64_imm(3, -8),
            mov64_imm(4, 2),
            Insn::new(0x85, 0, 0, 0, verifier::HELPER_SKB_LOAD_BYTES),
            mov64_reg(6, 0),
            mov64_imm(0, 0),
            Insn::new(0x55, 6, 0, 4, 0),   // if ret != 0: return 0
            Insn::new(0x69, 7, 10, -8, 0), // r7 = *(u16 *)(fp - 8)
            Insn::new(0x55, 7, 0, 2, 0x0008),
            mov64_imm(0, 1),
            exit(),
            exit(),
        ];
        let f = vm_of(p);
        assert_eq!(f.run(&frame(17, 60), 1, 0), Verdict::Accept);
        assert_eq!(f.run(&frame(17, 60)[..13], 1, 0), Verdict::Drop);
    }

    #[test]
    fn other_return_values_are_invalid() {
        let f = vm_of(vec![mov64_imm(0, 7), exit()]);
        assert_eq!(f.run(&frame(17, 60), 1, 0), Verdict::Invalid);
    }
}

//! Running a filter in user space: rbpf, in the thread that runs the RX path. On x86-64 the
//! program is compiled by rbpf's JIT; elsewhere, and for programs too long for the JIT's one
//! page, rbpf's interpreter runs it.
//!
//! The program sees an `__sk_buff`-style context as in the kernel: the fields the verifier lets
//! it read are at their uapi offsets, and a tagged frame is shown as the kernel shows it after
//! `skb_vlan_untag` (tag in `vlan_present`/`vlan_tci`/`vlan_proto`, `data` without it), so one
//! program gives the same verdict here and in the kernel. `data` and `data_end` are 32-bit
//! fields in the uapi but must be 64-bit pointers here: their loads (found by the verifier) are
//! rewritten to 64-bit loads of two fields past the uapi ones, as the kernel rewrites them.
//!
//! Safety rests on our verifier ([`super::verifier`]): it proves at load that every access
//! stays in the context, the stack or the packet (`data .. data_end`), as the kernel's
//! verifier does for its JIT. The interpreter also bounds-checks every access at run time
//! (a fault counts as an invalid verdict); the JIT, as the kernel's, does not. The
//! `filter_program` fuzz target runs verified programs under both and requires the interpreter
//! never to fault and the JIT to return what it returns.

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

/// The JIT writes a program's machine code into one 4 KiB page and panics when it does not
/// fit, so only programs whose worst-case size fits are compiled. The bounds are generous
/// upper limits of what rbpf 0.4's x86-64 emitter writes: ~60 bytes for prologue and epilogue,
/// ~50 for a division or modulo by a register (the zero check and register saves), at most 15
/// for any other instruction (a helper call: argument move, 64-bit address load, call).
const JIT_PAGE: usize = 4096;
const JIT_FRAME_BYTES: usize = 128;
const JIT_MULDIV_BYTES: usize = 64;
const JIT_INSN_BYTES: usize = 32;

/// A verified program loaded into rbpf, JIT-compiled where possible.
pub struct VmFilter {
    /// The program as verified (packet pointer loads rewritten), for rbpf's interpreter.
    interpreter: Engine,
    /// The same program lowered for rbpf's JIT and compiled, where it can be.
    jit: Option<Engine>,
    pub program: Program,
}

/// One rbpf VM and the code it borrows.
struct Engine {
    /// Declared before `code`, and dropped by hand before it: the VM borrows `code`.
    vm: ManuallyDrop<rbpf::EbpfVmMbuff<'static>>,
    code: &'static [u8],
}

// SAFETY: rbpf 0.4's VM is neither Send nor Sync only because its stack verifier may hold a
// user `Box<dyn Any>` for a custom stack-usage calculator; we never set one (it stays None).
// Everything else in it (the code, the helper table, the JIT page) is only read after `build`,
// and both the interpreter and the compiled code run from `&self` with all mutable state on the
// calling thread's stack, so the RX thread and busy pollers may run one filter at once.
unsafe impl Send for Engine {}
// SAFETY: see the Send impl just above.
unsafe impl Sync for Engine {}

impl Engine {
    /// Load `insns` into a VM with our helper registered; compile them when `jit`.
    fn new(insns: &[Insn], jit: bool) -> Result<Engine, FilterError> {
        let code: &'static [u8] = Box::leak(verifier::encode(insns).into_boxed_slice());
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
        // From here on, dropping `engine` frees the VM, then the code.
        let mut engine = Engine {
            vm: ManuallyDrop::new(vm),
            code,
        };
        engine
            .vm
            .register_helper(verifier::HELPER_SKB_LOAD_BYTES as u32, skb_load_bytes)
            .map_err(|e| FilterError::invalid(format!("rbpf: {e:?}")))?;
        if jit {
            engine
                .vm
                .jit_compile()
                .map_err(|e| FilterError::invalid(format!("rbpf JIT: {e:?}")))?;
        }
        Ok(engine)
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        // SAFETY: the VM is dropped once, here, and before the code it borrows.
        unsafe { ManuallyDrop::drop(&mut self.vm) };
        // SAFETY: `code` came from Box::leak in `new`; the only borrower (the VM) is gone.
        unsafe { drop(Box::from_raw(self.code as *const [u8] as *mut [u8])) };
    }
}

/// Whether the JIT's output for `insns` surely fits its page.
fn fits_jit_page(insns: &[Insn]) -> bool {
    let body: usize = insns
        .iter()
        .map(|i| {
            let class = i.opc & 0x07;
            let op = i.opc & 0xf0;
            // ALU (4) and ALU64 (7) classes: MUL 0x20, DIV 0x30, MOD 0x90
            if (class == 0x04 || class == 0x07) && matches!(op, 0x20 | 0x30 | 0x90) {
                JIT_MULDIV_BYTES
            } else {
                JIT_INSN_BYTES
            }
        })
        .sum();
    JIT_FRAME_BYTES + body <= JIT_PAGE
}

/// Rewrite the program for rbpf 0.4's x86-64 JIT so that it computes what the interpreter does.
///
/// - The interpreter gives each run a zeroed stack; compiled code runs on the thread's stack,
///   whose bytes are left from earlier calls. Our verifier lets a program read stack it did not
///   write (as the kernel does for privileged programs), so the stack the program uses
///   (`stack_depth`, the deepest byte any access reaches) is zeroed first: the same verdict
///   either way, and nothing of the host's stack reaches the program.
///
/// Then what the JIT gets wrong becomes equivalent instructions it gets right, as the kernel's
/// JIT emits them:
/// - `le16`/`le32` truncate the register, but the JIT compiles every `le` as a no-op:
///   `le16` becomes `&= 0xffff`, `le32` a 32-bit `+= 0` (32-bit ALU results are zero-extended);
/// - a 32-bit register move must zero the upper half, but the JIT emits a 64-bit move:
///   `w = w'` becomes `r = r'` then `w += 0`.
///
/// The second inserts instructions, so jump offsets are recomputed (all jumps go forward: the
/// verifier refuses loops, so a jump's target is always in the program).
fn lower_for_jit(insns: &[Insn], stack_depth: i64) -> Vec<Insn> {
    let zero_extend = |dst: u8| Insn::new(0x04, dst, 0, 0, 0); // add32 dst, 0
    let mut out = Vec::with_capacity(insns.len() + 8);
    for below in (8..stack_depth + 8).step_by(8) {
        out.push(Insn::new(0x7a, 10, 0, -below as i16, 0)); // *(u64 *)(r10 - below) = 0
    }
    let mut new_index = Vec::with_capacity(insns.len() + 1);
    for i in insns {
        new_index.push(out.len());
        match (i.opc, i.imm) {
            (0xd4, 16) => out.push(Insn::new(0x57, i.dst, 0, 0, 0xffff)),
            (0xd4, 32) => out.push(zero_extend(i.dst)),
            (0xbc, _) => {
                out.push(Insn::new(0xbf, i.dst, i.src, 0, 0));
                out.push(zero_extend(i.dst));
            }
            _ => out.push(*i),
        }
    }
    new_index.push(out.len());
    for (old, i) in insns.iter().enumerate() {
        let class = i.opc & 0x07;
        let is_jump = (class == 0x05 || class == 0x06) && !matches!(i.opc & 0xf0, 0x80 | 0x90);
        if is_jump {
            let target = (old as i64 + 1 + i.off as i64) as usize;
            let at = new_index[old];
            out[at].off = (new_index[target] as i64 - at as i64 - 1) as i16;
        }
    }
    out
}

impl VmFilter {
    /// Prepare `program` (verified) for rbpf: JIT-compiled on x86-64 when it fits the JIT's
    /// page, interpreted otherwise.
    pub fn new(program: Program) -> Result<VmFilter, FilterError> {
        Self::build(program, cfg!(target_arch = "x86_64"))
    }

    /// Prepare `program` for the interpreter only (tests and fuzzing compare it with the JIT).
    pub fn interpreted(program: Program) -> Result<VmFilter, FilterError> {
        Self::build(program, false)
    }

    fn build(program: Program, want_jit: bool) -> Result<VmFilter, FilterError> {
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
        let interpreter = Engine::new(&insns, false)?;
        let lowered = lower_for_jit(&insns, program.facts.stack_depth);
        // A JIT refusal (an instruction it lacks) leaves the interpreter in charge.
        let jit = (want_jit && fits_jit_page(&lowered))
            .then(|| Engine::new(&lowered, true).ok())
            .flatten();
        Ok(VmFilter {
            interpreter,
            jit,
            program,
        })
    }

    /// Whether the program runs as JIT-compiled machine code (else in the interpreter).
    pub fn is_jitted(&self) -> bool {
        self.jit.is_some()
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
        self.run_on(self.jit.as_ref(), frame, ifindex, pkt_type)
    }

    /// As [`run_r0`](Self::run_r0), in the interpreter even when the program is compiled: the
    /// reference the JIT is checked against.
    pub fn run_r0_interpreted(&self, frame: &[u8], ifindex: u32, pkt_type: u8) -> Option<u64> {
        self.run_on(None, frame, ifindex, pkt_type)
    }

    fn run_on(
        &self,
        jit: Option<&Engine>,
        frame: &[u8],
        ifindex: u32,
        pkt_type: u8,
    ) -> Option<u64> {
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
                self.execute(jit, &mut ctx, &copy)
            })
        } else {
            if frame.len() >= 14 {
                ctx.fields[F_PROTOCOL] = u16::from_be_bytes([frame[12], frame[13]]).to_be() as u32;
            }
            self.execute(jit, &mut ctx, frame)
        }
    }

    fn execute(&self, jit: Option<&Engine>, ctx: &mut SkbContext, packet: &[u8]) -> Option<u64> {
        ctx.fields[F_LEN] = packet.len() as u32;
        ctx.data = packet.as_ptr() as u64;
        ctx.data_end = ctx.data + packet.len() as u64;
        // SAFETY: SkbContext is repr(C), made of integers only, with no padding (48 u32s then
        // two u64s at offset 192), so it is a valid byte slice; we hold it mutably for this
        // call. rbpf ties the JIT's slice to the VM's lifetime, but neither engine keeps it past
        // the call, which `ctx` outlives.
        let mbuff: &'static mut [u8] = unsafe {
            std::slice::from_raw_parts_mut(
                ctx as *mut SkbContext as *mut u8,
                std::mem::size_of::<SkbContext>(),
            )
        };
        match jit {
            // SAFETY: the program reaches the packet only through `data`/`data_end` in the
            // context (the verifier refuses LD_ABS/LD_IND, which would use rbpf's `mem`, so
            // `mem` is empty), and every access the compiled code makes was proven in bounds by
            // the verifier at load (it has no run-time checks).
            Some(jit) => unsafe { jit.vm.execute_program_jit(&mut [], mbuff) }.ok(),
            None => self.interpreter.vm.execute_program(packet, mbuff).ok(),
        }
    }
}

/// `long bpf_skb_load_bytes(const struct __sk_buff *skb, u32 offset, void *to, u32 len)`:
/// copy packet bytes to the stack, or `-EFAULT` when they are not all in the packet.
///
/// rbpf's JIT calls helpers with the stack 8 bytes off the ABI's 16-byte alignment (measured:
/// rsp % 16 is 8 in a helper's body, 0 from a normal call). So this stays a leaf that needs no
/// aligned stack: integer checks and one `memcpy`, which does not care. The JIT tests run it.
#[inline(never)]
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

    fn program_of(insns: Vec<Insn>) -> Program {
        let facts = verify(&insns).unwrap();
        Program {
            section: "test".into(),
            license: "GPL".into(),
            insns,
            facts,
        }
    }

    /// The default engine (the JIT on x86-64), checked against the interpreter on `frame`.
    fn vm_of(insns: Vec<Insn>) -> VmFilter {
        let f = VmFilter::new(program_of(insns)).unwrap();
        assert_eq!(f.is_jitted(), cfg!(target_arch = "x86_64"));
        f
    }

    fn both_agree(insns: &[Insn], frame: &[u8]) -> Option<u64> {
        let f = vm_of(insns.to_vec());
        let r = f.run_r0_interpreted(frame, 1, 0);
        assert_eq!(f.run_r0(frame, 1, 0), r, "JIT and interpreter differ");
        assert!(!VmFilter::interpreted(program_of(insns.to_vec()))
            .unwrap()
            .is_jitted());
        r
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

    /// r0 = (load_bytes(skb, 12, fp-8, 2) == 0 && that EtherType is IPv4) ? 1 : 0
    fn ethertype_by_helper() -> Vec<Insn> {
        vec![
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
        ]
    }

    #[test]
    fn load_bytes_copies_or_faults() {
        let f = vm_of(ethertype_by_helper());
        assert_eq!(f.run(&frame(17, 60), 1, 0), Verdict::Accept);
        assert_eq!(f.run(&frame(17, 60)[..13], 1, 0), Verdict::Drop);
    }

    #[test]
    fn other_return_values_are_invalid() {
        let f = vm_of(vec![mov64_imm(0, 7), exit()]);
        assert_eq!(f.run(&frame(17, 60), 1, 0), Verdict::Invalid);
    }

    #[test]
    fn jit_and_interpreter_agree_on_byte_order_and_division() {
        let lddw = |dst: u8, v: u64| {
            [
                Insn::new(0x18, dst, 0, 0, v as u32 as i32),
                Insn::new(0, 0, 0, 0, (v >> 32) as u32 as i32),
            ]
        };
        let v = 0x1122_3344_5566_7788u64;
        for (opc, imm, want) in [
            (0xd4, 16, 0x7788),         // le16 truncates
            (0xd4, 32, 0x5566_7788),    // le32 truncates
            (0xd4, 64, v),              // le64: nothing to do on x86-64
            (0xdc, 16, 0x8877),         // be16 swaps and truncates
            (0xdc, 32, 0x8877_6655),    // be32
            (0xdc, 64, v.swap_bytes()), // be64
        ] {
            let mut p = lddw(0, v).to_vec();
            p.push(Insn::new(opc, 0, 0, 0, imm));
            p.push(exit());
            assert_eq!(both_agree(&p, &frame(17, 60)), Some(want), "{opc:#x}/{imm}");
        }
        // a 32-bit move zero-extends, also when a jump crosses it (the JIT's lowering moves
        // the jump targets)
        for (jump, want) in [(0x55, 6), (0x15, 5)] {
            let mut p = lddw(1, 0x1_0000_0005).to_vec();
            p.extend([
                mov64_imm(0, 0),
                Insn::new(jump, 1, 0, 2, 0), // if r1 !=/== 0 goto +2
                Insn::new(0xbc, 0, 1, 0, 0), // w0 = w1
                exit(),
                Insn::new(0xbc, 0, 1, 0, 0),
                add64_imm(0, 1),
                exit(),
            ]);
            assert_eq!(both_agree(&p, &frame(17, 60)), Some(want), "{jump:#x}");
        }
        // stack the program did not write reads as zero, as in the interpreter
        let p = [
            Insn::new(0x79, 0, 10, -16, 0), // r0 = *(u64 *)(r10 - 16)
            Insn::new(0x61, 1, 10, -4, 0),  // r1 = *(u32 *)(r10 - 4)
            Insn::new(0x0f, 0, 1, 0, 0),    // r0 += r1
            exit(),
        ];
        let dirty = vm_of(vec![
            Insn::new(0x7a, 10, 0, -16, -1), // *(u64 *)(r10 - 16) = -1
            Insn::new(0x62, 10, 0, -4, -1),  // *(u32 *)(r10 - 4) = -1
            mov64_imm(0, 0),
            exit(),
        ]);
        let reader = vm_of(p.to_vec());
        for _ in 0..2 {
            // the same call site, so the same native stack
            assert_eq!(dirty.run_r0(&frame(17, 60), 1, 0), Some(0));
            assert_eq!(reader.run_r0(&frame(17, 60), 1, 0), Some(0));
        }
        assert_eq!(both_agree(&p, &frame(17, 60)), Some(0));
        // division and modulo by a zero register: 0 and the dividend unchanged, as in the kernel
        for (opc, want) in [(0x3f, 0), (0x9f, 7), (0x3c, 0), (0x9c, 7)] {
            let p = [
                mov64_imm(0, 7),
                mov64_imm(1, 0),
                Insn::new(opc, 0, 1, 0, 0),
                exit(),
            ];
            assert_eq!(both_agree(&p, &frame(17, 60)), Some(want), "{opc:#x}");
        }
    }

    #[test]
    fn the_helper_and_packet_reads_agree_on_every_frame_length() {
        let helper = ethertype_by_helper();
        for len in 0..80 {
            assert!(both_agree(&udp_filter(true), &frame(17, 80)[..len]).is_some());
            assert!(both_agree(&helper, &frame(17, 80)[..len]).is_some());
        }
    }

    #[test]
    fn programs_too_long_for_the_jit_page_run_interpreted() {
        let mut p = vec![mov64_imm(0, 0)];
        p.extend(std::iter::repeat_n(add64_imm(0, 1), 200));
        p.push(exit());
        assert!(!fits_jit_page(&p));
        let f = VmFilter::new(program_of(p.clone())).unwrap();
        assert!(!f.is_jitted());
        assert_eq!(f.run_r0(&frame(17, 60), 1, 0), Some(200));
        p.truncate(100);
        p.push(exit());
        assert!(fits_jit_page(&p));
        assert_eq!(both_agree(&p, &frame(17, 60)), Some(99));
    }

    #[test]
    fn the_jit_page_bound_holds_for_the_longest_instructions() {
        // Fill a program with as many of one instruction as the bound admits: compiling must
        // not overflow rbpf's page (it would panic). rbpf's own encoding check is enough here;
        // the code is compiled, not run.
        let div = Insn::new(0x3f, 6, 7, 0, 0); // r6 /= r7
        let cases = [
            vec![div],
            vec![Insn::new(0x9c, 8, 9, 0, 0)], // w8 %= w9
            vec![Insn::new(0x85, 0, 0, 0, verifier::HELPER_SKB_LOAD_BYTES)],
            vec![Insn::new(0x7a, 10, 0, -512, 0x7fff_ffff)], // *(u64 *)(r10 - 512) = imm
            vec![Insn::new(0x18, 9, 0, 0, -1), Insn::new(0, 0, 0, 0, -1)], // r9 = imm64
            vec![Insn::new(0x15, 9, 0, 0, 0x7fff_ffff)],     // if r9 == imm goto +0
            vec![Insn::new(0xdc, 8, 0, 0, 64)],              // r8 = be64 r8
            vec![Insn::new(0x6f, 6, 9, 0, 0)],               // r6 <<= r9
            vec![Insn::new(0xbc, 8, 9, 0, 0)],               // w8 = w9 (lowered to two)
        ];
        for unit in cases {
            let mut p = vec![mov64_imm(0, 0)];
            loop {
                let mut longer = p.clone();
                longer.extend(&unit);
                longer.push(exit());
                if !fits_jit_page(&lower_for_jit(&longer, 8)) {
                    break;
                }
                p.extend(&unit);
            }
            p.push(exit());
            let lowered = lower_for_jit(&p, 8);
            assert!(
                fits_jit_page(&lowered) && p.len() > 40,
                "{:#x}",
                unit[0].opc
            );
            assert!(Engine::new(&lowered, true).is_ok(), "{:#x}", unit[0].opc);
        }
    }
}

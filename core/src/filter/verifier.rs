//! The load-time safety check of filter programs.
//!
//! rbpf's own verifier checks the encoding only (opcodes, registers, jump targets); its
//! interpreter then bounds-checks each memory access at run time. That keeps the host safe, but
//! the issue is also to *reject at load*, as the kernel does, programs that could read outside
//! the packet, loop or call what we do not provide. So every path through the program is walked
//! here with an abstract state per register (and per 8-byte stack slot), much like a small
//! version of the kernel's verifier:
//!
//! - **No loops**: every jump goes forward, so a program runs at most its length in steps.
//!   (clang unrolls constant-bound loops at -O2 with `#pragma unroll`.)
//! - **Memory**: loads only from the context (`__sk_buff` fields, 4-byte reads of known fields,
//!   `data`/`data_end`), from the stack (512 bytes below r10), or from the packet at offsets
//!   proven below `data_end` by a comparison on the path (`if (p + n > data_end) return`).
//!   Variable packet offsets are allowed when bounded (`(b & 0xf) << 2`). No stores but to the
//!   stack. No pointer arithmetic but constant moves of stack and packet pointers.
//! - **Helpers**: only `bpf_skb_load_bytes` (26), with a stack buffer of constant length that
//!   fits; it bounds-checks the packet itself at run time (it returns `-EFAULT`, as the kernel's).
//! - **Registers**: no read of an uninitialised register; r0 at `exit` is a number.
//! - No BPF-to-BPF calls, tail calls, atomics, maps, `LD_ABS`/`LD_IND` (the legacy packet loads).
//!
//! Paths are explored depth-first with identical states merged; a program needing more than
//! [`MAX_STEPS`] steps is refused as too complex.

use std::collections::HashSet;

use super::FilterError;

/// One eBPF instruction.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Insn {
    pub opc: u8,
    pub dst: u8,
    pub src: u8,
    pub off: i16,
    pub imm: i32,
}

impl Insn {
    pub const fn new(opc: u8, dst: u8, src: u8, off: i16, imm: i32) -> Insn {
        Insn {
            opc,
            dst,
            src,
            off,
            imm,
        }
    }

    /// The little-endian 8-byte encoding.
    pub fn to_bytes(self) -> [u8; 8] {
        let mut b = [0u8; 8];
        b[0] = self.opc;
        b[1] = (self.src << 4) | (self.dst & 0x0f);
        b[2..4].copy_from_slice(&self.off.to_le_bytes());
        b[4..8].copy_from_slice(&self.imm.to_le_bytes());
        b
    }
}

/// Decode little-endian instructions.
pub fn decode(code: &[u8]) -> Result<Vec<Insn>, FilterError> {
    if code.is_empty() || !code.len().is_multiple_of(8) {
        return Err(FilterError::invalid(format!(
            "program of {} bytes: not a whole number of instructions",
            code.len()
        )));
    }
    if code.len() / 8 > MAX_INSNS {
        return Err(FilterError {
            errno: libc::E2BIG,
            message: format!(
                "program of {} instructions (at most {MAX_INSNS})",
                code.len() / 8
            ),
        });
    }
    Ok(code
        .chunks_exact(8)
        .map(|c| Insn {
            opc: c[0],
            dst: c[1] & 0x0f,
            src: c[1] >> 4,
            off: i16::from_le_bytes([c[2], c[3]]),
            imm: i32::from_le_bytes([c[4], c[5], c[6], c[7]]),
        })
        .collect())
}

/// Encode instructions for rbpf or the kernel.
pub fn encode(insns: &[Insn]) -> Vec<u8> {
    insns.iter().flat_map(|i| i.to_bytes()).collect()
}

/// The longest program accepted (the kernel's limit for unprivileged programs).
pub const MAX_INSNS: usize = 4096;
/// How many instruction visits the path walk may take.
pub const MAX_STEPS: usize = 100_000;
/// The eBPF stack, below r10.
pub const STACK_SIZE: i64 = 512;
/// The largest variable part a packet pointer may have (an IPv4 datagram's length).
const MAX_VAR_OFFSET: u64 = 0xffff;

/// `__sk_buff` offsets of `data` and `data_end` (uapi/linux/bpf.h).
pub const SKB_DATA: i16 = 76;
pub const SKB_DATA_END: i16 = 80;
/// The `__sk_buff` fields a filter may read (4 bytes each; narrower reads at the start allowed):
/// len, pkt_type, mark, queue_mapping, protocol, vlan_present, vlan_tci, vlan_proto, priority,
/// ingress_ifindex, ifindex, tc_index, cb[0..5], hash.
const SKB_SCALAR_FIELDS: [i16; 17] = [
    0, 4, 8, 12, 16, 20, 24, 28, 32, 36, 40, 44, 48, 52, 56, 60, 64,
];
const SKB_HASH: i16 = 68;

/// The helper a filter may call: `long bpf_skb_load_bytes(skb, offset, to, len)`.
pub const HELPER_SKB_LOAD_BYTES: i32 = 26;

/// What the verifier learnt, for the VM and the kernel loaders.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Facts {
    /// Instructions loading `data` (false) or `data_end` (true) from the context.
    pub packet_pointer_loads: Vec<(usize, bool)>,
    /// The deepest stack byte used (0 = none; 512 = all).
    pub stack_depth: i64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Val {
    Uninit,
    /// A number in `min..=max` (unsigned).
    Scalar {
        min: u64,
        max: u64,
    },
    /// The context (`__sk_buff *`).
    Ctx,
    /// `data + var + off`, where `var` (shared by all pointers of the same `id`) is at most
    /// `vmax`, and `[data + var, data + var + range)` is proven inside the packet.
    Pkt {
        off: i64,
        id: u32,
        vmax: u64,
        range: i64,
    },
    PktEnd,
    /// `r10 + off`.
    Stack {
        off: i64,
    },
}

const UNKNOWN: Val = Val::Scalar {
    min: 0,
    max: u64::MAX,
};

fn konst(v: u64) -> Val {
    Val::Scalar { min: v, max: v }
}

fn is_ptr(v: Val) -> bool {
    !matches!(v, Val::Uninit | Val::Scalar { .. })
}

#[derive(Clone, PartialEq, Eq, Hash)]
struct State {
    pc: usize,
    regs: [Val; 11],
    /// One value per 8-byte slot: a spilled register, or `UNKNOWN`.
    stack: [Val; 64],
    next_id: u32,
}

/// Which kind of base each memory instruction had (a loaded context field is rewritten for the
/// VM, so every path must agree).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Base {
    Ctx,
    Other,
}

struct Walk<'a> {
    insns: &'a [Insn],
    bases: Vec<Option<Base>>,
    facts: Facts,
}

type Check<T> = Result<T, String>;

/// Verify `insns` (see the module doc).
pub fn verify(insns: &[Insn]) -> Check<Facts> {
    if insns.is_empty() {
        return Err("empty program".into());
    }
    let n = insns.len();
    // second halves of 64-bit immediate loads: never jump targets, never run on their own
    let mut second_half = vec![false; n];
    let mut i = 0;
    while i < n {
        if insns[i].opc == 0x18 {
            if i + 1 >= n || insns[i + 1].opc != 0 {
                return Err(format!("insn {i}: incomplete 64-bit immediate load"));
            }
            second_half[i + 1] = true;
            i += 2;
        } else {
            i += 1;
        }
    }
    // states are remembered only where paths meet (jump targets), to bound memory
    let mut joins = vec![false; n];
    for (i, insn) in insns.iter().enumerate() {
        if matches!(insn.opc & 0x07, 0x05 | 0x06)
            && insn.off > 0
            && !matches!(insn.opc, 0x85 | 0x95)
        {
            if let Some(t) = (i + 1).checked_add(insn.off as usize).filter(|&t| t < n) {
                joins[t] = true;
            }
        }
    }
    let mut w = Walk {
        insns,
        bases: vec![None; n],
        facts: Facts::default(),
    };
    let mut regs = [Val::Uninit; 11];
    regs[1] = Val::Ctx;
    regs[10] = Val::Stack { off: 0 };
    let start = State {
        pc: 0,
        regs,
        stack: [UNKNOWN; 64],
        next_id: 1,
    };
    let mut seen: HashSet<State> = HashSet::new();
    let mut pending = vec![start];
    let mut steps = 0usize;
    while let Some(mut st) = pending.pop() {
        loop {
            steps += 1;
            if steps > MAX_STEPS {
                return Err(format!(
                    "program too complex to verify (more than {MAX_STEPS} steps)"
                ));
            }
            if st.pc >= n {
                return Err("control falls off the end of the program".into());
            }
            if second_half[st.pc] {
                return Err(format!("insn {}: jump into a 64-bit immediate load", st.pc));
            }
            if joins[st.pc] && !seen.insert(st.clone()) {
                break; // this exact state was walked already
            }
            match w.step(&mut st)? {
                Next::Continue => {}
                Next::Exit => break,
                Next::Fork(other) => pending.push(*other),
            }
        }
    }
    w.facts.packet_pointer_loads.sort_unstable();
    w.facts.packet_pointer_loads.dedup();
    Ok(w.facts)
}

enum Next {
    Continue,
    Exit,
    Fork(Box<State>),
}

fn size_of(opc: u8) -> i64 {
    match opc & 0x18 {
        0x00 => 4,
        0x08 => 2,
        0x10 => 1,
        _ => 8,
    }
}

impl Walk<'_> {
    fn step(&mut self, st: &mut State) -> Check<Next> {
        let pc = st.pc;
        let insn = self.insns[pc];
        let at = |m: &str| format!("insn {pc}: {m}");
        if insn.dst > 10 || insn.src > 10 {
            return Err(at("bad register"));
        }
        let class = insn.opc & 0x07;
        match class {
            0x00 => {
                // BPF_LD: only the 64-bit immediate, and only a plain number
                if insn.opc != 0x18 {
                    return Err(at(
                        "legacy packet loads (LD_ABS/LD_IND) are not supported: \
                                   use bpf_skb_load_bytes() or direct packet access",
                    ));
                }
                if insn.src != 0 {
                    return Err(at("maps and other pseudo immediates are not supported"));
                }
                if insn.dst == 10 {
                    return Err(at("r10 is read-only"));
                }
                let hi = self.insns[pc + 1].imm as u32 as u64;
                st.regs[insn.dst as usize] = konst((insn.imm as u32 as u64) | (hi << 32));
                st.pc += 2;
                Ok(Next::Continue)
            }
            0x01 => self.load(st, insn).map_err(|m| at(&m)),
            0x02 | 0x03 => self.store(st, insn).map_err(|m| at(&m)),
            0x04 | 0x07 => self.alu(st, insn, class == 0x07).map_err(|m| at(&m)),
            0x05 | 0x06 => self.jump(st, insn, class == 0x06).map_err(|m| at(&m)),
            _ => Err(at("unsupported instruction class")),
        }
    }

    fn reg(st: &State, r: u8) -> Check<Val> {
        match st.regs[r as usize] {
            Val::Uninit => Err(format!("r{r} is read before it is set")),
            v => Ok(v),
        }
    }

    fn note_base(&mut self, pc: usize, base: Base) -> Check<()> {
        match self.bases[pc] {
            Some(b) if b != base => Err(
                "the same load reads the context on one path and other memory on another".into(),
            ),
            _ => {
                self.bases[pc] = Some(base);
                Ok(())
            }
        }
    }

    fn use_stack(&mut self, lo: i64, size: i64) -> Check<()> {
        if lo < -STACK_SIZE || lo + size > 0 {
            return Err(format!(
                "stack access out of bounds (offset {lo}, size {size})"
            ));
        }
        self.facts.stack_depth = self.facts.stack_depth.max(-lo);
        Ok(())
    }

    fn load(&mut self, st: &mut State, insn: Insn) -> Check<Next> {
        if insn.opc & 0xe0 != 0x60 {
            return Err("unsupported load mode".into());
        }
        if insn.dst == 10 {
            return Err("r10 is read-only".into());
        }
        let size = size_of(insn.opc);
        let base = Self::reg(st, insn.src)?;
        let value = match base {
            Val::Ctx => {
                self.note_base(st.pc, Base::Ctx)?;
                let off = insn.off;
                if off == SKB_DATA || off == SKB_DATA_END {
                    if size != 4 {
                        return Err("data/data_end must be read as 32-bit fields".into());
                    }
                    self.facts
                        .packet_pointer_loads
                        .push((st.pc, off == SKB_DATA_END));
                    if off == SKB_DATA {
                        let id = st.next_id;
                        st.next_id += 1;
                        Val::Pkt {
                            off: 0,
                            id,
                            vmax: 0,
                            range: 0,
                        }
                    } else {
                        Val::PktEnd
                    }
                } else if (SKB_SCALAR_FIELDS.contains(&off) || off == SKB_HASH) && size <= 4 {
                    Val::Scalar {
                        min: 0,
                        max: u32::MAX as u64 >> (32 - 8 * size),
                    }
                } else {
                    return Err(format!(
                        "invalid __sk_buff access (offset {off}, size {size})"
                    ));
                }
            }
            Val::Pkt { off, range, .. } => {
                self.note_base(st.pc, Base::Other)?;
                let lo = off + insn.off as i64;
                if lo < 0 || lo + size > range {
                    return Err(format!(
                        "packet read out of bounds (offset {lo}, size {size}, proven {range} \
                         bytes): compare with data_end first"
                    ));
                }
                Val::Scalar {
                    min: 0,
                    max: if size == 8 {
                        u64::MAX
                    } else {
                        (1u64 << (8 * size)) - 1
                    },
                }
            }
            Val::Stack { off } => {
                self.note_base(st.pc, Base::Other)?;
                let lo = off + insn.off as i64;
                self.use_stack(lo, size)?;
                if size == 8 && lo % 8 == 0 {
                    st.stack[((lo + STACK_SIZE) / 8) as usize]
                } else if size == 8 {
                    UNKNOWN
                } else {
                    Val::Scalar {
                        min: 0,
                        max: (1u64 << (8 * size)) - 1,
                    }
                }
            }
            Val::PktEnd => return Err("data_end cannot be dereferenced".into()),
            _ => return Err(format!("r{} is not a pointer", insn.src)),
        };
        st.regs[insn.dst as usize] = value;
        st.pc += 1;
        Ok(Next::Continue)
    }

    fn store(&mut self, st: &mut State, insn: Insn) -> Check<Next> {
        if insn.opc & 0xe0 != 0x60 {
            return Err("atomic and other store modes are not supported".into());
        }
        let size = size_of(insn.opc);
        let value = if insn.opc & 0x07 == 0x03 {
            Self::reg(st, insn.src)?
        } else {
            konst(insn.imm as i64 as u64)
        };
        match Self::reg(st, insn.dst)? {
            Val::Stack { off } => {
                let lo = off + insn.off as i64;
                self.use_stack(lo, size)?;
                let first = ((lo + STACK_SIZE) / 8) as usize;
                let last = ((lo + size - 1 + STACK_SIZE) / 8) as usize;
                if size == 8 && lo % 8 == 0 {
                    st.stack[first] = value;
                } else {
                    if is_ptr(value) {
                        return Err("a pointer stored to the stack must be a whole aligned \
                                    8-byte slot"
                            .into());
                    }
                    for slot in &mut st.stack[first..=last] {
                        *slot = UNKNOWN;
                    }
                }
            }
            Val::Ctx => return Err("writes to the context are not allowed".into()),
            Val::Pkt { .. } => return Err("writes to the packet are not allowed".into()),
            _ => return Err(format!("store through r{}, not a stack pointer", insn.dst)),
        }
        st.pc += 1;
        Ok(Next::Continue)
    }

    fn alu(&mut self, st: &mut State, insn: Insn, wide: bool) -> Check<Next> {
        let op = insn.opc & 0xf0;
        if insn.dst == 10 {
            return Err("r10 is read-only".into());
        }
        let d = insn.dst as usize;
        if op == 0xd0 {
            // byte swaps (BPF_END): numbers only
            if wide || !matches!(insn.imm, 16 | 32 | 64) {
                return Err("unsupported byte swap".into());
            }
            match Self::reg(st, insn.dst)? {
                Val::Scalar { .. } => {
                    st.regs[d] = match insn.imm {
                        16 => Val::Scalar {
                            min: 0,
                            max: 0xffff,
                        },
                        32 => Val::Scalar {
                            min: 0,
                            max: u32::MAX as u64,
                        },
                        _ => UNKNOWN,
                    }
                }
                _ => return Err("byte swap of a pointer".into()),
            }
            st.pc += 1;
            return Ok(Next::Continue);
        }
        if op > 0xd0 {
            return Err("unsupported ALU operation".into());
        }
        let b = if insn.opc & 0x08 != 0 {
            Self::reg(st, insn.src)?
        } else if wide {
            konst(insn.imm as i64 as u64)
        } else {
            konst(insn.imm as u32 as u64)
        };
        if op == 0xb0 {
            // MOV
            st.regs[d] = if wide {
                b
            } else if let Val::Scalar { min, max } = b {
                if max <= u32::MAX as u64 {
                    Val::Scalar { min, max }
                } else {
                    Val::Scalar {
                        min: 0,
                        max: u32::MAX as u64,
                    }
                }
            } else {
                Val::Scalar {
                    min: 0,
                    max: u32::MAX as u64,
                }
            };
            st.pc += 1;
            return Ok(Next::Continue);
        }
        let a = Self::reg(st, insn.dst)?;
        st.regs[d] = match (a, b) {
            (Val::Scalar { .. }, Val::Scalar { .. }) => scalar_op(op, a, b, wide),
            _ if !wide => return Err("32-bit arithmetic on a pointer".into()),
            (Val::Stack { off }, Val::Scalar { min, max }) if min == max && op == 0x00 => {
                Val::Stack {
                    off: off.wrapping_add(min as i64),
                }
            }
            (Val::Stack { off }, Val::Scalar { min, max }) if min == max && op == 0x10 => {
                Val::Stack {
                    off: off.wrapping_sub(min as i64),
                }
            }
            (Val::Scalar { min, max }, Val::Stack { off }) if min == max && op == 0x00 => {
                Val::Stack {
                    off: off.wrapping_add(min as i64),
                }
            }
            (p @ Val::Pkt { .. }, s @ Val::Scalar { .. }) if op == 0x00 => {
                pkt_add(st, p, s, false)?
            }
            (s @ Val::Scalar { .. }, p @ Val::Pkt { .. }) if op == 0x00 => {
                pkt_add(st, p, s, false)?
            }
            (p @ Val::Pkt { .. }, s @ Val::Scalar { .. }) if op == 0x10 => pkt_add(st, p, s, true)?,
            (Val::Pkt { .. } | Val::PktEnd, Val::Pkt { .. }) if op == 0x10 => Val::Scalar {
                min: 0,
                max: MAX_VAR_OFFSET * 2,
            },
            (Val::PktEnd, Val::Scalar { min, max }) if min == max => {
                return Err("arithmetic on data_end is not allowed".into())
            }
            _ => return Err("pointer arithmetic not allowed".into()),
        };
        st.pc += 1;
        Ok(Next::Continue)
    }

    fn jump(&mut self, st: &mut State, insn: Insn, narrow: bool) -> Check<Next> {
        let op = insn.opc & 0xf0;
        let target = |st: &State| -> Check<usize> {
            if insn.off < 0 {
                return Err("backward jump: loops are not allowed".into());
            }
            let t = st.pc + 1 + insn.off as usize;
            if t >= self.insns.len() {
                return Err("jump out of the program".into());
            }
            Ok(t)
        };
        match op {
            0x00 if !narrow && insn.opc == 0x05 => {
                st.pc = target(st)?;
                Ok(Next::Continue)
            }
            0x80 => {
                if narrow || insn.opc != 0x85 {
                    return Err("unsupported call".into());
                }
                if insn.src == 1 {
                    return Err("calls to other functions are not supported: mark them \
                                static __always_inline"
                        .into());
                }
                if insn.src != 0 {
                    return Err("kernel function calls are not supported".into());
                }
                if insn.imm != HELPER_SKB_LOAD_BYTES {
                    return Err(format!(
                        "helper {} is not available to filters (only bpf_skb_load_bytes, 26)",
                        insn.imm
                    ));
                }
                self.check_load_bytes(st)?;
                st.regs[0] = UNKNOWN;
                for r in 1..=5 {
                    st.regs[r] = Val::Uninit;
                }
                st.pc += 1;
                Ok(Next::Continue)
            }
            0x90 => {
                if narrow || insn.opc != 0x95 {
                    return Err("unsupported exit".into());
                }
                match st.regs[0] {
                    Val::Scalar { .. } => Ok(Next::Exit),
                    Val::Uninit => Err("r0 is not set at exit".into()),
                    _ => Err("a pointer is returned".into()),
                }
            }
            0x10 | 0x20 | 0x30 | 0x40 | 0x50 | 0x60 | 0x70 | 0xa0 | 0xb0 | 0xc0 | 0xd0 => {
                let t = target(st)?;
                let a = Self::reg(st, insn.dst)?;
                let b = if insn.opc & 0x08 != 0 {
                    Self::reg(st, insn.src)?
                } else {
                    konst(insn.imm as i64 as u64)
                };
                if narrow && (is_ptr(a) || is_ptr(b)) {
                    return Err("32-bit comparison of a pointer".into());
                }
                let mut taken = st.clone();
                taken.pc = t;
                st.pc += 1;
                // what a data/data_end comparison proves, on the branch where it holds
                let proof = match (a, b, op) {
                    (Val::Pkt { off, id, .. }, Val::PktEnd, 0x20 | 0x30) => Some((false, off, id)),
                    (Val::Pkt { off, id, .. }, Val::PktEnd, 0xa0 | 0xb0) => Some((true, off, id)),
                    (Val::PktEnd, Val::Pkt { off, id, .. }, 0xa0 | 0xb0) => Some((false, off, id)),
                    (Val::PktEnd, Val::Pkt { off, id, .. }, 0x20 | 0x30) => Some((true, off, id)),
                    _ => None,
                };
                if let Some((on_taken, off, id)) = proof {
                    prove_range(if on_taken { &mut taken } else { st }, id, off);
                }
                if op == 0x10 && !narrow {
                    // `if r == k`: r is k on the taken branch
                    if let (Val::Scalar { .. }, Val::Scalar { min, max }) = (a, b) {
                        if min == max {
                            taken.regs[insn.dst as usize] = konst(min);
                        }
                    }
                }
                Ok(Next::Fork(Box::new(taken)))
            }
            _ => Err("unsupported jump".into()),
        }
    }

    fn check_load_bytes(&mut self, st: &State) -> Check<()> {
        if st.regs[1] != Val::Ctx {
            return Err("bpf_skb_load_bytes: r1 must be the context".into());
        }
        if !matches!(st.regs[2], Val::Scalar { .. }) {
            return Err("bpf_skb_load_bytes: r2 (offset) must be a number".into());
        }
        let len = match st.regs[4] {
            Val::Scalar { min, max } if min == max && (1..=STACK_SIZE as u64).contains(&min) => {
                min as i64
            }
            _ => return Err("bpf_skb_load_bytes: r4 (length) must be a constant of 1..512".into()),
        };
        match st.regs[3] {
            Val::Stack { off } => self.use_stack(off, len),
            _ => Err("bpf_skb_load_bytes: r3 must point into the stack".into()),
        }
    }
}

/// Mark `[data + var(id), +off)` as proven in every register and slot sharing `id`.
fn prove_range(st: &mut State, id: u32, off: i64) {
    if off <= 0 {
        return;
    }
    for v in st.regs.iter_mut().chain(st.stack.iter_mut()) {
        if let Val::Pkt { id: i, range, .. } = v {
            if *i == id && *range < off {
                *range = off;
            }
        }
    }
}

fn pkt_add(st: &mut State, p: Val, s: Val, sub: bool) -> Check<Val> {
    let (
        Val::Pkt {
            off,
            id,
            vmax,
            range,
        },
        Val::Scalar { min, max },
    ) = (p, s)
    else {
        unreachable!("pkt_add takes a packet pointer and a number")
    };
    if min == max {
        let k = min as i64;
        if k.unsigned_abs() > MAX_VAR_OFFSET {
            return Err("packet pointer moved too far".into());
        }
        return Ok(Val::Pkt {
            off: if sub { off - k } else { off + k },
            id,
            vmax,
            range,
        });
    }
    if sub {
        return Err("subtracting a variable from a packet pointer is not allowed".into());
    }
    let vmax = vmax.saturating_add(max).saturating_add(off.max(0) as u64);
    if vmax > MAX_VAR_OFFSET {
        return Err("variable packet offset without a bound (mask or shift it first)".into());
    }
    // a new variable part: nothing is proven about it yet
    let id2 = st.next_id;
    st.next_id += 1;
    Ok(Val::Pkt {
        off: 0,
        id: id2,
        vmax,
        range: 0,
    })
}

/// Interval arithmetic on numbers, as far as it helps bound packet offsets.
fn scalar_op(op: u8, a: Val, b: Val, wide: bool) -> Val {
    let (
        Val::Scalar {
            min: amin,
            max: amax,
        },
        Val::Scalar {
            min: bmin,
            max: bmax,
        },
    ) = (a, b)
    else {
        return UNKNOWN;
    };
    let mask = if wide { u64::MAX } else { u32::MAX as u64 };
    let full = Val::Scalar { min: 0, max: mask };
    let (amin, amax) = if amax <= mask {
        (amin, amax)
    } else {
        (0, mask)
    };
    let (bmin, bmax) = if bmax <= mask {
        (bmin, bmax)
    } else {
        (0, mask)
    };
    let both_const = amin == amax && bmin == bmax;
    let fits = |v: Option<u64>| v.filter(|&v| v <= mask);
    let r = match op {
        0x00 => match (fits(amin.checked_add(bmin)), fits(amax.checked_add(bmax))) {
            (Some(lo), Some(hi)) => Val::Scalar { min: lo, max: hi },
            _ if both_const => konst(amin.wrapping_add(bmin) & mask),
            _ => full,
        },
        0x10 if both_const => konst(amin.wrapping_sub(bmin) & mask),
        0x20 => match (fits(amin.checked_mul(bmin)), fits(amax.checked_mul(bmax))) {
            (Some(lo), Some(hi)) => Val::Scalar { min: lo, max: hi },
            _ if both_const => konst(amin.wrapping_mul(bmin) & mask),
            _ => full,
        },
        0x30 if both_const => konst(amin.checked_div(bmin).unwrap_or(0)),
        0x30 => Val::Scalar { min: 0, max: amax },
        0x40 if both_const => konst(amin | bmin),
        0x50 if both_const => konst(amin & bmin),
        0x50 if bmin == bmax => Val::Scalar {
            min: 0,
            max: amax.min(bmin),
        },
        0x50 if amin == amax => Val::Scalar {
            min: 0,
            max: bmax.min(amin),
        },
        0x60 if bmin == bmax && bmin < 64 => {
            let k = bmin as u32;
            match (amin.checked_shl(k), amax.checked_shl(k)) {
                (Some(lo), Some(hi)) if hi >> k == amax && hi <= mask => {
                    Val::Scalar { min: lo, max: hi }
                }
                _ => full,
            }
        }
        0x70 if bmin == bmax && bmin < 64 => Val::Scalar {
            min: amin >> bmin,
            max: amax >> bmin,
        },
        0x90 if both_const && bmin != 0 => konst(amin % bmin),
        0x90 if bmin == bmax && bmin != 0 => Val::Scalar {
            min: 0,
            max: bmin - 1,
        },
        0xa0 if both_const => konst(amin ^ bmin),
        _ => full,
    };
    match r {
        Val::Scalar { min, max } if max <= mask => Val::Scalar { min, max },
        _ => full,
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    // a few instructions, written as the kernel's macros would
    pub fn mov64_imm(dst: u8, imm: i32) -> Insn {
        Insn::new(0xb7, dst, 0, 0, imm)
    }
    pub fn mov64_reg(dst: u8, src: u8) -> Insn {
        Insn::new(0xbf, dst, src, 0, 0)
    }
    pub fn add64_imm(dst: u8, imm: i32) -> Insn {
        Insn::new(0x07, dst, 0, 0, imm)
    }
    pub fn ldxw(dst: u8, src: u8, off: i16) -> Insn {
        Insn::new(0x61, dst, src, off, 0)
    }
    pub fn ldxb(dst: u8, src: u8, off: i16) -> Insn {
        Insn::new(0x71, dst, src, off, 0)
    }
    pub fn jgt_reg(dst: u8, src: u8, off: i16) -> Insn {
        Insn::new(0x2d, dst, src, off, 0)
    }
    pub fn exit() -> Insn {
        Insn::new(0x95, 0, 0, 0, 0)
    }

    /// `return pkt[23] == 17 ? ACCEPT : SKIP`, with the bounds check when `checked`.
    pub fn udp_filter(checked: bool) -> Vec<Insn> {
        let mut p = vec![
            ldxw(2, 1, SKB_DATA),
            ldxw(3, 1, SKB_DATA_END),
            mov64_imm(0, 2),
            mov64_reg(4, 2),
            add64_imm(4, 24),
        ];
        if checked {
            p.push(jgt_reg(4, 3, 3)); // if data + 24 > data_end: return SKIP
        }
        p.extend([
            ldxb(5, 2, 23),
            Insn::new(0x55, 5, 0, 1, 17), // if proto != 17 skip the next
            mov64_imm(0, 1),
            exit(),
        ]);
        p
    }

    #[test]
    fn a_checked_packet_read_passes() {
        let facts = verify(&udp_filter(true)).unwrap();
        assert_eq!(facts.packet_pointer_loads, vec![(0, false), (1, true)]);
    }

    #[test]
    fn an_unchecked_packet_read_is_refused() {
        let e = verify(&udp_filter(false)).unwrap_err();
        assert!(e.contains("packet read out of bounds"), "{e}");
    }

    #[test]
    fn a_read_past_the_checked_length_is_refused() {
        let mut p = udp_filter(true);
        p[5] = ldxb(5, 2, 24); // one byte past what `data + 24 <= data_end` proves
        assert!(verify(&p).unwrap_err().contains("out of bounds"));
    }

    #[test]
    fn loops_are_refused() {
        let p = vec![
            mov64_imm(0, 0),
            add64_imm(0, 1),
            Insn::new(0x05, 0, 0, -2, 0),
            exit(),
        ];
        assert!(verify(&p).unwrap_err().contains("loops"));
        let spin = vec![mov64_imm(0, 0), Insn::new(0x05, 0, 0, -1, 0), exit()];
        assert!(verify(&spin).unwrap_err().contains("loops"));
    }

    #[test]
    fn unknown_helpers_and_calls_are_refused() {
        let p = vec![Insn::new(0x85, 0, 0, 0, 6), exit()]; // bpf_trace_printk
        assert!(verify(&p).unwrap_err().contains("helper 6"));
        let p = vec![Insn::new(0x85, 0, 1, 0, 1), mov64_imm(0, 1), exit()];
        assert!(verify(&p).unwrap_err().contains("other functions"));
        let p = vec![Insn::new(0x8d, 0, 1, 0, 0), exit()];
        assert!(verify(&p).is_err());
    }

    #[test]
    fn uninitialised_registers_and_bad_returns_are_refused() {
        assert!(verify(&[exit()]).unwrap_err().contains("r0 is not set"));
        assert!(verify(&[mov64_reg(0, 1), exit()])
            .unwrap_err()
            .contains("pointer is returned"));
        assert!(verify(&[mov64_reg(0, 7), exit()])
            .unwrap_err()
            .contains("r7"));
        assert!(verify(&[mov64_imm(0, 1)])
            .unwrap_err()
            .contains("falls off"));
    }

    #[test]
    fn context_stores_and_odd_fields_are_refused() {
        let st = Insn::new(0x62, 1, 0, 8, 5); // skb->mark = 5
        assert!(verify(&[st, mov64_imm(0, 1), exit()])
            .unwrap_err()
            .contains("context"));
        let odd = ldxw(0, 1, 200);
        assert!(verify(&[odd, exit()]).unwrap_err().contains("__sk_buff"));
        let ok = ldxw(0, 1, 16); // skb->protocol
        assert!(verify(&[ok, exit()]).is_ok());
    }

    #[test]
    fn stack_use_is_bounded() {
        let good = vec![
            Insn::new(0x7a, 10, 0, -8, 7), // *(u64 *)(r10 - 8) = 7
            Insn::new(0x79, 0, 10, -8, 0),
            exit(),
        ];
        assert_eq!(verify(&good).unwrap().stack_depth, 8);
        let bad = vec![Insn::new(0x7a, 10, 0, -520, 7), mov64_imm(0, 0), exit()];
        assert!(verify(&bad).unwrap_err().contains("stack"));
        let above = vec![Insn::new(0x7a, 10, 0, 0, 7), mov64_imm(0, 0), exit()];
        assert!(verify(&above).is_err());
    }

    #[test]
    fn load_bytes_needs_a_fitting_stack_buffer() {
        let call = |len: i32, off: i32| {
            vec![
                mov64_reg(6, 1),
                mov64_imm(2, 12),
                mov64_reg(3, 10),
                add64_imm(3, off),
                mov64_imm(4, len),
                Insn::new(0x85, 0, 0, 0, HELPER_SKB_LOAD_BYTES),
                mov64_imm(0, 1),
                exit(),
            ]
        };
        assert!(verify(&call(2, -8)).is_ok());
        assert!(verify(&call(16, -8)).unwrap_err().contains("stack"));
        assert!(verify(&call(0, -8)).is_err());
    }

    #[test]
    fn variable_offsets_need_a_bound_and_a_check() {
        // ihl = (pkt[14] & 0xf) << 2; read pkt[14 + ihl] after checking data + 14 + ihl + 1
        let p = vec![
            ldxw(2, 1, SKB_DATA),
            ldxw(3, 1, SKB_DATA_END),
            mov64_imm(0, 2),
            mov64_reg(4, 2),
            add64_imm(4, 15),
            jgt_reg(4, 3, 9),
            ldxb(5, 2, 14),
            Insn::new(0x57, 5, 0, 0, 0x0f), // &= 0xf
            Insn::new(0x67, 5, 0, 0, 2),    // <<= 2
            Insn::new(0x0f, 5, 2, 0, 0),    // r5 += r2 (packet pointer + variable)
            mov64_reg(6, 5),
            add64_imm(6, 15),
            jgt_reg(6, 3, 2),
            ldxb(0, 5, 14),
            exit(),
            exit(),
        ];
        verify(&p).unwrap();
        let mut unbounded = p.clone();
        unbounded[7] = Insn::new(0x57, 5, 0, 0, 0xff);
        unbounded[8] = Insn::new(0x67, 5, 0, 0, 12); // up to 1 MiB
        assert!(verify(&unbounded).unwrap_err().contains("without a bound"));
    }
}

//! eBPF RX filters: EVL's `evl_net_set_filter`.
//!
//! A filter is an eBPF program, built by `clang -O2 -target bpf -c` into an ELF object, that
//! looks at each received frame through an `__sk_buff`-style context and returns EVL's verdict
//! ([`Verdict`]). It runs in one of two places:
//!
//! - on a **Linux port**, in the kernel (`kernel`): the program, with an epilogue of ours that
//!   turns the verdict into each hook's return value, is loaded twice — as the AF_PACKET ring's
//!   socket filter (only accepted frames reach user space) and as the tc ingress program (accepted
//!   and dropped frames never reach the kernel's stack; skipped ones do);
//! - on a **virtual link**, or while a Linux port swaps filters, in the core's RX path, in the
//!   rbpf interpreter (`vm`).
//!
//! Either way the program first passes `verifier`, our own load-time check: rbpf's verifier only
//! checks the encoding, so we prove what makes running it safe (no loops, no unknown helpers, no
//! access outside the context, the packet bytes proven present, or the stack). One rule set for
//! both places, so a filter that loads on a virtual link loads on a Linux port too.

pub mod elf;
#[cfg(target_os = "linux")]
pub mod kernel;
pub mod verifier;
pub mod vm;

pub use verifier::Insn;

/// EVL's verdicts (`uapi/evl/net/bpf-abi.h`), plus what any other return value means here.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// `EVL_RX_DROP` (0): free the frame, count it.
    Drop,
    /// `EVL_RX_ACCEPT` (1): the oob stack takes it.
    Accept,
    /// `EVL_RX_SKIP` (2): leave it to the in-band stage.
    Skip,
    /// `EVL_RX_VLAN` (3): apply the VLAN rule.
    Vlan,
    /// Any other return value, or a program that faulted: dropped and counted apart.
    Invalid,
}

impl Verdict {
    /// The verdict a program's return value (r0) means.
    pub fn from_return(r0: u64) -> Verdict {
        match r0 {
            0 => Verdict::Drop,
            1 => Verdict::Accept,
            2 => Verdict::Skip,
            3 => Verdict::Vlan,
            _ => Verdict::Invalid,
        }
    }
}

/// Why a filter could not be loaded: an errno for the Python `OSError` and a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FilterError {
    pub errno: i32,
    pub message: String,
}

impl FilterError {
    pub fn invalid(message: impl Into<String>) -> FilterError {
        FilterError {
            errno: libc::EINVAL,
            message: message.into(),
        }
    }
}

/// A filter program taken from an object file and verified: ready for the VM or the kernel.
#[derive(Debug, Clone)]
pub struct Program {
    /// The ELF section it came from (`tc`, `classifier`, `socket`...).
    pub section: String,
    /// The object's `license` section, or "GPL" when there is none (helpers the examples use
    /// are not GPL-only, so this only matters for the kernel's bookkeeping).
    pub license: String,
    /// The instructions as written by the compiler.
    pub insns: Vec<Insn>,
    /// What the verifier proved and found (context loads to rewrite, stack use).
    pub facts: verifier::Facts,
}

impl Program {
    /// Take the first program of an eBPF ELF object and verify it.
    pub fn from_object(bytes: &[u8]) -> Result<Program, FilterError> {
        let obj = elf::first_program(bytes)?;
        let insns = verifier::decode(&obj.code)?;
        let facts = verifier::verify(&insns).map_err(FilterError::invalid)?;
        Ok(Program {
            section: obj.section,
            license: obj.license.unwrap_or_else(|| "GPL".to_string()),
            insns,
            facts,
        })
    }
}

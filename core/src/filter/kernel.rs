//! Running a filter in the kernel, on a Linux port: the bpf(2) calls, and the programs we load.
//!
//! The user's program is loaded twice, each time followed by an epilogue of ours that turns the
//! verdict (r0) into what the hook wants; every `exit` of the program becomes a jump to it (the
//! verifier refused calls, so every `exit` ends the program). This instruction splicing is why
//! no loader crate is used: libbpf and aya load objects as they are, and the alternatives
//! (freplace, BPF linking) need BTF-described stubs and a C library at run time.
//!
//! - **socket** (`BPF_PROG_TYPE_SOCKET_FILTER`, the AF_PACKET ring's `SO_ATTACH_BPF`): keep the
//!   frame (ACCEPT, or VLAN with a VID of the set) or not. Dropped and skipped frames never
//!   reach user space. Socket filters have no direct packet access: programs reading
//!   `skb->data` are refused here by the kernel, and the port then runs them in the VM.
//! - **tc** (`BPF_PROG_TYPE_SCHED_CLS`, direct action, clsact ingress): `TC_ACT_SHOT` for what
//!   the oob side takes (ACCEPT, VLAN match) and for DROP/invalid (counted), `TC_ACT_UNSPEC`
//!   (the kernel's stack) for SKIP and VLAN without a match (counted too).
//!
//! The VLAN rule needs the context after the program ran: the prologue saves r1 in the deepest
//! stack slot, which the verifier saw the program leave alone.
//!
//! Counters live in a per-CPU array map (`KernelCounters`), indexed by [`Counter`].

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use super::verifier::{Insn, STACK_SIZE};
use super::{FilterError, Program};

const BPF_MAP_CREATE: i64 = 0;
const BPF_MAP_LOOKUP_ELEM: i64 = 1;
const BPF_PROG_LOAD: i64 = 5;
const BPF_PROG_TEST_RUN: i64 = 10;
const BPF_LINK_CREATE: i64 = 28;
const BPF_LINK_UPDATE: i64 = 29;
const BPF_TCX_INGRESS: u32 = 46;
const BPF_MAP_TYPE_PERCPU_ARRAY: u32 = 6;
const BPF_PROG_TYPE_SOCKET_FILTER: u32 = 1;
const BPF_PROG_TYPE_SCHED_CLS: u32 = 3;
const BPF_PROG_TYPE_XDP: u32 = 6;
const BPF_PSEUDO_MAP_FD: u8 = 1;
const HELPER_MAP_LOOKUP_ELEM: i32 = 1;
const TC_ACT_UNSPEC: i32 = -1;
const TC_ACT_SHOT: i32 = 2;
/// What a socket filter returns to keep a whole frame.
const SOCKET_KEEP: i32 = 0x40000;

/// The hooks a program is loaded for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hook {
    Socket,
    Tc,
}

/// The kernel-side counters, one slot each in the map.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
pub enum Counter {
    Dropped = 0,
    Invalid = 1,
    Skipped = 2,
    Accepted = 3,
}
const COUNTERS: u32 = 4;

fn bpf(cmd: i64, attr: &mut [u64]) -> Result<i64, i32> {
    // SAFETY: `attr` is a zero-filled union bpf_attr image of the size passed, and lives for
    // the call; the kernel reads only the fields of `cmd` and writes nothing back for these
    // commands but what the pointers inside it name (buffers owned by the caller).
    let r = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr.as_mut_ptr(),
            std::mem::size_of_val(attr),
        )
    };
    if r < 0 {
        Err(std::io::Error::last_os_error()
            .raw_os_error()
            .unwrap_or(libc::EIO))
    } else {
        Ok(r as i64)
    }
}

/// The per-CPU counters map of one port's kernel filter.
pub struct KernelCounters {
    fd: OwnedFd,
    ncpus: usize,
}

impl KernelCounters {
    pub fn new() -> Result<KernelCounters, FilterError> {
        let mut attr = [0u64; 16];
        // map_type, key_size, value_size, max_entries (four u32s)
        attr[0] = BPF_MAP_TYPE_PERCPU_ARRAY as u64 | (4u64 << 32);
        attr[1] = 8 | ((COUNTERS as u64) << 32);
        let fd = bpf(BPF_MAP_CREATE, &mut attr).map_err(|e| FilterError {
            errno: e,
            message: "could not make the filter's counters map (bpf BPF_MAP_CREATE)".into(),
        })?;
        Ok(KernelCounters {
            // SAFETY: the kernel just returned this fd to us and nothing else owns it.
            fd: unsafe { OwnedFd::from_raw_fd(fd as RawFd) },
            ncpus: possible_cpus(),
        })
    }

    /// The map's fd (for the programs that count into it).
    pub fn fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    /// A counter, summed over the CPUs.
    pub fn read(&self, which: Counter) -> u64 {
        let key: u32 = which as u32;
        let mut values = vec![0u64; self.ncpus];
        let mut attr = [0u64; 4];
        attr[0] = self.fd.as_raw_fd() as u64;
        attr[1] = &key as *const u32 as u64;
        attr[2] = values.as_mut_ptr() as u64;
        match bpf(BPF_MAP_LOOKUP_ELEM, &mut attr) {
            Ok(_) => values.iter().sum(),
            Err(_) => 0,
        }
    }
}

fn possible_cpus() -> usize {
    // "0-1", "0-3,5": the highest CPU number + 1 (per-CPU values are laid out by number)
    std::fs::read_to_string("/sys/devices/system/cpu/possible")
        .ok()
        .and_then(|s| {
            s.trim()
                .split([',', '-'])
                .filter_map(|n| n.parse::<usize>().ok())
                .max()
        })
        .map(|m| m + 1)
        .unwrap_or(1)
}

/// A program loaded into the kernel.
pub struct KernelProgram {
    pub fd: OwnedFd,
}

impl KernelProgram {
    /// Run the program `repeat` times on `frame` in the kernel (`BPF_PROG_TEST_RUN`, for the
    /// benchmark): `(return value, nanoseconds per run as the kernel measured it)`.
    pub fn test_run(&self, frame: &[u8], repeat: u32) -> Result<(u32, u32), i32> {
        let mut out = vec![0u8; frame.len() + 256];
        let mut attr = [0u64; 10];
        attr[0] = self.fd.as_raw_fd() as u64; // prog_fd, retval
        attr[1] = frame.len() as u64 | ((out.len() as u64) << 32); // data_size_in, _out
        attr[2] = frame.as_ptr() as u64;
        attr[3] = out.as_mut_ptr() as u64;
        attr[4] = repeat as u64; // repeat, duration
        bpf(BPF_PROG_TEST_RUN, &mut attr)?;
        Ok(((attr[0] >> 32) as u32, (attr[4] >> 32) as u32))
    }
}

/// Load `program` for `hook`, the VLAN rule taking `vids`, counting into `counters`.
pub fn load(
    program: &Program,
    hook: Hook,
    vids: &[u16],
    counters: &KernelCounters,
    name: &str,
) -> Result<KernelProgram, FilterError> {
    if program.facts.stack_depth > STACK_SIZE - 8 {
        return Err(FilterError::invalid(
            "the program uses the whole stack: the kernel's epilogue needs its last 8 bytes",
        ));
    }
    let map_fd = if hook == Hook::Tc { counters.fd() } else { -1 };
    let insns = splice(program, hook, vids, map_fd);
    let license =
        std::ffi::CString::new(program.license.clone()).unwrap_or_else(|_| c"GPL".to_owned());
    let prog_type = match hook {
        Hook::Socket => BPF_PROG_TYPE_SOCKET_FILTER,
        Hook::Tc => BPF_PROG_TYPE_SCHED_CLS,
    };
    load_insns(prog_type, &insns, &license, name).map_err(|e| FilterError {
        errno: e.errno,
        message: format!(
            "the kernel refused the {hook:?} filter program: {}",
            e.message
        ),
    })
}

/// A tc ingress program attached through a tcx link (Linux 6.6+): the link lives as long as its
/// fd, so a process that dies, even by SIGKILL, takes its program out of the kernel with it.
pub struct TcxLink {
    fd: OwnedFd,
}

impl TcxLink {
    /// Attach `prog` at `ifindex`'s tcx ingress (BPF_LINK_CREATE), ahead of any clsact filter.
    pub fn attach(prog: &KernelProgram, ifindex: u32) -> Result<TcxLink, i32> {
        let mut attr = [0u64; 6];
        attr[0] = prog.fd.as_raw_fd() as u64 | ((ifindex as u64) << 32); // prog_fd, ifindex
        attr[1] = BPF_TCX_INGRESS as u64; // attach_type, flags
        let fd = bpf(BPF_LINK_CREATE, &mut attr)?;
        Ok(TcxLink {
            // SAFETY: a new fd from the kernel, owned by nobody else.
            fd: unsafe { OwnedFd::from_raw_fd(fd as RawFd) },
        })
    }

    /// Swap the link's program for `prog` in one step (BPF_LINK_UPDATE).
    pub fn update(&self, prog: &KernelProgram) -> Result<(), i32> {
        let mut attr = [0u64; 2];
        attr[0] = self.fd.as_raw_fd() as u64 | ((prog.fd.as_raw_fd() as u64) << 32);
        bpf(BPF_LINK_UPDATE, &mut attr).map(|_| ())
    }
}

/// For the benchmark's comparison of hooks: a program that only returns (XDP_PASS, TC_ACT_OK,
/// keep the frame) for "xdp", "tc" or "socket", loaded as that hook's program type.
pub fn load_floor(hook: &str) -> Result<KernelProgram, FilterError> {
    let (prog_type, ret) = match hook {
        "xdp" => (BPF_PROG_TYPE_XDP, 2),
        "tc" => (BPF_PROG_TYPE_SCHED_CLS, 0),
        "socket" => (BPF_PROG_TYPE_SOCKET_FILTER, SOCKET_KEEP),
        _ => return Err(FilterError::invalid("hook: xdp, tc or socket")),
    };
    let insns = [Insn::new(0xb7, 0, 0, 0, ret), Insn::new(0x95, 0, 0, 0, 0)];
    load_insns(prog_type, &insns, c"GPL", "floor")
}

/// BPF_PROG_LOAD; when refused, again with the verifier's log, whose end is the message.
fn load_insns(
    prog_type: u32,
    insns: &[Insn],
    license: &std::ffi::CStr,
    name: &str,
) -> Result<KernelProgram, FilterError> {
    let code: Vec<u8> = insns.iter().flat_map(|i| i.to_bytes()).collect();
    let try_load = |log: &mut [u8]| {
        let mut attr = [0u64; 16];
        attr[0] = prog_type as u64 | ((insns.len() as u64) << 32);
        attr[1] = code.as_ptr() as u64;
        attr[2] = license.as_ptr() as u64;
        if !log.is_empty() {
            attr[3] = 1 | ((log.len() as u64) << 32); // log_level, log_size
            attr[4] = log.as_mut_ptr() as u64;
        }
        // prog_name (16 bytes at offset 48): what bpftool and tc show
        let mut pname = [0u8; 16];
        for (d, s) in pname.iter_mut().zip(name.bytes().take(15)) {
            *d = if s.is_ascii_alphanumeric() || s == b'_' {
                s
            } else {
                b'_'
            };
        }
        attr[6] = u64::from_le_bytes(pname[..8].try_into().unwrap());
        attr[7] = u64::from_le_bytes(pname[8..].try_into().unwrap());
        bpf(BPF_PROG_LOAD, &mut attr)
    };
    match try_load(&mut []) {
        // SAFETY: a new fd from the kernel, owned by nobody else.
        Ok(fd) => Ok(KernelProgram {
            fd: unsafe { OwnedFd::from_raw_fd(fd as RawFd) },
        }),
        Err(errno) => {
            let mut log = vec![0u8; 64 * 1024];
            let _ = try_load(&mut log);
            let text = String::from_utf8_lossy(log.split(|&b| b == 0).next().unwrap_or(&[]))
                .trim()
                .lines()
                .rev()
                .take(6)
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
                .collect::<Vec<_>>()
                .join("\n");
            Err(FilterError {
                errno,
                message: text,
            })
        }
    }
}

/// The program as loaded: prologue (save the context), the user's instructions with every exit
/// turned into a jump to the epilogue, the epilogue.
pub fn splice(program: &Program, hook: Hook, vids: &[u16], map_fd: RawFd) -> Vec<Insn> {
    const CTX_SLOT: i16 = -(STACK_SIZE as i16);
    let user = &program.insns;
    let mut out = Vec::with_capacity(user.len() + 40 + vids.len());
    out.push(Insn::new(0x7b, 10, 1, CTX_SLOT, 0)); // *(u64 *)(r10 - 512) = r1
    let epilogue = 1 + user.len();
    for (i, insn) in user.iter().enumerate() {
        if insn.opc == 0x95 {
            let here = 1 + i;
            out.push(Insn::new(0x05, 0, 0, (epilogue - here - 1) as i16, 0));
        } else {
            out.push(*insn);
        }
    }
    let mut e = Epilogue::default();
    // r6 = verdict; dispatch
    e.op(Insn::new(0xbf, 6, 0, 0, 0));
    e.jeq(6, 1, "accept");
    e.jeq(6, 2, "skip");
    e.jeq(6, 3, "vlan");
    e.jeq(6, 0, "drop");
    e.count(Counter::Invalid, map_fd);
    e.goto("refuse");
    e.label("drop");
    e.count(Counter::Dropped, map_fd);
    e.goto("refuse");
    e.label("vlan");
    // the VLAN rule: a tag (in the metadata, as the kernel untags first) with a VID of the set,
    // and IPv4 inside
    e.op(Insn::new(0x79, 1, 10, CTX_SLOT, 0)); // r1 = saved ctx
    e.op(Insn::new(0x61, 2, 1, 20, 0)); // vlan_present
    e.jeq(2, 0, "skip");
    e.op(Insn::new(0x61, 2, 1, 16, 0)); // protocol (network order)
    e.jne(2, 0x0008, "skip");
    e.op(Insn::new(0x61, 2, 1, 24, 0)); // vlan_tci
    e.op(Insn::new(0x57, 2, 0, 0, 0x0fff));
    for &vid in vids {
        e.jeq(2, vid as i32, "accept");
    }
    e.goto("skip");
    e.label("skip");
    e.count(Counter::Skipped, map_fd);
    e.ret(match hook {
        Hook::Socket => 0,
        Hook::Tc => TC_ACT_UNSPEC,
    });
    e.label("accept");
    e.count(Counter::Accepted, map_fd);
    e.ret(match hook {
        Hook::Socket => SOCKET_KEEP,
        Hook::Tc => TC_ACT_SHOT,
    });
    e.label("refuse");
    e.ret(match hook {
        Hook::Socket => 0,
        Hook::Tc => TC_ACT_SHOT,
    });
    out.extend(e.assemble());
    out
}

/// A tiny assembler with labels for the epilogue.
#[derive(Default)]
struct Epilogue {
    insns: Vec<(Insn, Option<&'static str>)>,
    labels: Vec<(&'static str, usize)>,
}

impl Epilogue {
    fn op(&mut self, i: Insn) {
        self.insns.push((i, None));
    }
    fn jeq(&mut self, r: u8, k: i32, to: &'static str) {
        self.insns.push((Insn::new(0x15, r, 0, 0, k), Some(to)));
    }
    fn jne(&mut self, r: u8, k: i32, to: &'static str) {
        self.insns.push((Insn::new(0x55, r, 0, 0, k), Some(to)));
    }
    fn goto(&mut self, to: &'static str) {
        self.insns.push((Insn::new(0x05, 0, 0, 0, 0), Some(to)));
    }
    fn label(&mut self, name: &'static str) {
        self.labels.push((name, self.insns.len()));
    }
    fn ret(&mut self, v: i32) {
        self.op(Insn::new(0xb7, 0, 0, 0, v));
        self.op(Insn::new(0x95, 0, 0, 0, 0));
    }
    /// `counters[which]++` on this CPU (r1-r5 and r0 clobbered, r6 kept). Only the tc program
    /// counts: every frame meets it exactly once, the socket filter only sees frames again.
    fn count(&mut self, which: Counter, map_fd: RawFd) {
        if map_fd < 0 {
            return;
        }
        self.op(Insn::new(0x62, 10, 0, -8, which as i32)); // *(u32 *)(r10 - 8) = which
        self.op(Insn::new(0xbf, 2, 10, 0, 0));
        self.op(Insn::new(0x07, 2, 0, 0, -8));
        self.op(Insn::new(0x18, 1, BPF_PSEUDO_MAP_FD, 0, map_fd));
        self.op(Insn::new(0x00, 0, 0, 0, 0));
        self.op(Insn::new(0x85, 0, 0, 0, HELPER_MAP_LOOKUP_ELEM));
        self.op(Insn::new(0x15, 0, 0, 3, 0)); // if r0 == NULL: skip the add
        self.op(Insn::new(0x79, 1, 0, 0, 0));
        self.op(Insn::new(0x07, 1, 0, 0, 1));
        self.op(Insn::new(0x7b, 0, 1, 0, 0));
    }
    fn assemble(self) -> Vec<Insn> {
        let find = |name: &str| {
            self.labels
                .iter()
                .find(|(n, _)| *n == name)
                .map(|&(_, at)| at)
                .expect("epilogue label")
        };
        self.insns
            .iter()
            .enumerate()
            .map(|(i, &(mut insn, to))| {
                if let Some(to) = to {
                    insn.off = (find(to) as i64 - i as i64 - 1) as i16;
                }
                insn
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::filter::verifier::{tests::udp_filter, verify};

    #[test]
    fn every_exit_jumps_to_the_epilogue() {
        let insns = udp_filter(true);
        let facts = verify(&insns).unwrap();
        let p = Program {
            section: "t".into(),
            license: "GPL".into(),
            insns: insns.clone(),
            facts,
        };
        let out = splice(&p, Hook::Tc, &[42], 7);
        let epilogue = 1 + insns.len();
        let mut exits = 0;
        for (i, insn) in out[1..epilogue].iter().enumerate() {
            assert_ne!(insn.opc, 0x95);
            if insns[i].opc == 0x95 {
                exits += 1;
                assert_eq!(insn.opc, 0x05);
                assert_eq!(1 + i + 1 + insn.off as usize, epilogue);
            }
        }
        assert_eq!(exits, 1);
        // every jump of the epilogue lands inside it
        for (i, insn) in out.iter().enumerate().skip(epilogue) {
            if insn.opc & 0x07 == 0x05 && !matches!(insn.opc, 0x85 | 0x95) {
                let t = i as i64 + 1 + insn.off as i64;
                assert!(t > i as i64 && (t as usize) < out.len(), "insn {i} -> {t}");
            }
        }
    }
}

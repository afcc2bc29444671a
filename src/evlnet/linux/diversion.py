"""Input diversion on a Linux port: one classic BPF program, attached twice.

EVL diverts the frames a port accepts inside the driver's receive path (Dovetail's
``netif_deliver_oob``): the oob stage gets them and the in-band stack never does, while anything
not accepted (ARP, other ports, other EtherTypes) goes on to the regular stack untouched. From user
space evlnet reproduces this with two hooks that see the same frame in the same form:

1. the **socket filter** of the port's AF_PACKET socket (``SO_ATTACH_FILTER``): our TPACKET ring
   only receives the accepted frames, so the RX thread wastes no time on the rest;
2. a **tc ``clsact`` ingress filter** on the same interface, ``cls_bpf`` in direct-action mode
   running the *same* program with other return values: ``TC_ACT_SHOT`` for accepted frames (the
   kernel never delivers or answers them: no duplicate datagram, no ICMP port unreachable, no
   second echo reply) and ``TC_ACT_UNSPEC`` for the rest (the next filter, or the stack, decides).

Packet taps run before tc ingress in ``__netif_receive_skb_core``, so the ring still gets the
frames tc drops; ``cls_bpf`` pushes the MAC header back at ingress, and both hooks see the VLAN
tag in the skb metadata (``SKF_AD_VLAN_TAG*``) — the program cannot tell which hook runs it.

Why classic BPF (not eBPF compiled by clang, not flower/u32 rules): the accepted set changes
whenever an oob socket binds or closes, and a classic program is generated in Python and swapped
atomically in both places (``SO_ATTACH_FILTER`` replaces, ``RTM_NEWTFILTER`` with
``NLM_F_REPLACE`` swaps in one step) without a compiler, libbpf or BPF maps at run time, and
without one tc rule per key. It needs only CONFIG_NET_CLS_BPF and CONFIG_NET_SCH_INGRESS (no tc
action modules: this VM has no act_gact). Limits: 4096 instructions (about 1000 bindings; beyond
that UDP is matched by address only), and no state — so IPv4 fragments cannot be matched by port
and all fragments to an address with an oob UDP receiver are diverted.

What a port accepts (``rule_for_port`` in ``port_filters.py`` computes it):

- evlnet's default, with no VLAN set: exactly what its oob sockets would receive — untagged IPv4
  UDP to a bound (address, port) of the port (a wildcard binding means every local address of the
  port), ICMP echo requests to its addresses when the stack answers echo, fragments to addresses
  with UDP receivers, and custom EtherTypes the stack has protocols or packet sockets for;
- with a VLAN set: in addition, tagged IPv4 whose VID is in the set (on a VLAN device port whose
  VID is in the set: all of its IPv4 — the kernel untags it before our hooks see it);
- ``strict_diversion=True`` (EVL's rule): only the VLAN part.

Cleanup: the program starts with three dead ``ld #k`` instructions holding a magic word, our pid
and our start time, so ``cleanup_stale()`` recognises the filters of a process that died without
removing them (``tc filter show`` prints them too); the clsact qdisc is removed with the last
filter when evlnet created it.
"""
from __future__ import annotations

import errno
import logging
import os
from dataclasses import dataclass

import evlnet.linux.rtnl as rtnl

log = logging.getLogger("evlnet.linux.diversion")

# classic BPF opcodes (linux/filter.h, linux/bpf_common.h)
BPF_LD, BPF_LDX, BPF_ALU, BPF_JMP, BPF_RET = 0x00, 0x01, 0x04, 0x05, 0x06
BPF_W, BPF_H, BPF_B = 0x00, 0x08, 0x10
BPF_IMM, BPF_ABS, BPF_IND, BPF_MSH = 0x00, 0x20, 0x40, 0xA0
BPF_AND = 0x50
BPF_JA, BPF_JEQ = 0x00, 0x10
BPF_K = 0x00
SKF_AD_OFF = 0xFFFFF000            # -0x1000 as u32
SKF_AD_VLAN_TAG = 44
SKF_AD_VLAN_TAG_PRESENT = 48
BPF_MAXINSNS = 4096

#: verdicts: a socket filter returns how many bytes to keep; cls_bpf (direct action) a TC_ACT_*
SOCKET_ACCEPT, SOCKET_PASS = 0x40000, 0
TC_ACT_SHOT, TC_ACT_UNSPEC = 2, 0xFFFFFFFF

#: the first instruction's constant: "EVLN"
MAGIC = 0x45564C4E
#: tc priority and handle of evlnet's ingress filter
TC_PRIO = 0xE71
TC_HANDLE = 0xE71

ETH_P_IP = 0x0800
ETH_P_8021Q = 0x8100
IPPROTO_ICMP, IPPROTO_UDP = 1, 17


# --------------------------------------------------------------------------------------------
# what a port accepts
# --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class DiversionRule:
    """The frames one port takes from the kernel. All fields are sorted tuples (comparable)."""

    udp: tuple[tuple[int, tuple[int, ...]], ...] = ()   #: (UDP port, destination addresses)
    icmp_echo: tuple[int, ...] = ()      #: echo requests to these addresses
    fragments: tuple[int, ...] = ()      #: IPv4 fragments to these addresses
    ethertypes: tuple[int, ...] = ()     #: untagged frames of these EtherTypes, whole
    all_ipv4: bool = False               #: every untagged IPv4 frame (VLAN port in the VLAN set)
    tagged_vids: tuple[int, ...] = ()    #: tagged IPv4 (802.1Q, or QinQ inner tag) with these VIDs

    @property
    def empty(self) -> bool:
        return not (self.udp or self.icmp_echo or self.fragments or self.ethertypes
                    or self.all_ipv4 or self.tagged_vids)


# --------------------------------------------------------------------------------------------
# a tiny assembler: forward jumps by label, never out of range
# --------------------------------------------------------------------------------------------

class Asm:
    """Classic BPF with labels. Conditional jumps to a label are emitted as ``jeq k,0,1; ja L``
    (or ``jeq k,1,0; ja L`` for "not equal"), so their 8-bit offsets are always 0/1 and only the
    32-bit ``ja`` carries the distance."""

    def __init__(self) -> None:
        self.code: list[list] = []          # [code, jt, jf, k or label]
        self.labels: dict[str, int] = {}

    def emit(self, code: int, k=0, jt: int = 0, jf: int = 0) -> None:
        self.code.append([code, jt, jf, k])

    def label(self, name: str) -> None:
        self.labels[name] = len(self.code)

    def ld_imm(self, k: int) -> None:
        self.emit(BPF_LD | BPF_IMM, k & 0xFFFFFFFF)

    def ld_w(self, off: int) -> None:
        self.emit(BPF_LD | BPF_W | BPF_ABS, off)

    def ld_h(self, off: int) -> None:
        self.emit(BPF_LD | BPF_H | BPF_ABS, off)

    def ld_b(self, off: int) -> None:
        self.emit(BPF_LD | BPF_B | BPF_ABS, off)

    def ld_ind_h(self, off: int) -> None:
        self.emit(BPF_LD | BPF_H | BPF_IND, off)

    def ld_ind_b(self, off: int) -> None:
        self.emit(BPF_LD | BPF_B | BPF_IND, off)

    def ldx_ihl(self, off: int = 14) -> None:
        """X = 4 * (pkt[off] & 0xf): the IPv4 header length."""
        self.emit(BPF_LDX | BPF_B | BPF_MSH, off)

    def and_k(self, k: int) -> None:
        self.emit(BPF_ALU | BPF_AND | BPF_K, k)

    def if_eq(self, k: int, target: str) -> None:
        self.emit(BPF_JMP | BPF_JEQ | BPF_K, k & 0xFFFFFFFF, 0, 1)
        self.goto(target)

    def if_ne(self, k: int, target: str) -> None:
        self.emit(BPF_JMP | BPF_JEQ | BPF_K, k & 0xFFFFFFFF, 1, 0)
        self.goto(target)

    def goto(self, target: str) -> None:
        self.emit(BPF_JMP | BPF_JA, target)

    def ret(self, k: int) -> None:
        self.emit(BPF_RET | BPF_K, k & 0xFFFFFFFF)

    def assemble(self) -> list[tuple[int, int, int, int]]:
        out = []
        for pc, (code, jt, jf, k) in enumerate(self.code):
            if isinstance(k, str):
                dest = self.labels[k]
                if dest <= pc:
                    raise ValueError(f"backward jump to {k}")
                k = dest - pc - 1
            out.append((code, jt, jf, k))
        return out


def _process_start_time() -> int:
    """Our start time in clock ticks since boot (/proc/self/stat field 22), low 32 bits."""
    try:
        with open("/proc/self/stat") as f:
            stat = f.read()
        return int(stat.rsplit(")", 1)[1].split()[19]) & 0xFFFFFFFF
    except (OSError, ValueError, IndexError):
        return 0


_START = _process_start_time()


def build_program(rule: DiversionRule, accept: int, pass_: int, *,
                  pid: int | None = None) -> list[tuple[int, int, int, int]]:
    """The classic BPF program for *rule*, returning *accept* or *pass_*."""
    prog = _build(rule, accept, pass_, pid)
    if len(prog) > BPF_MAXINSNS and rule.udp:
        # too many bindings: match UDP by destination address only
        addrs = sorted({a for _, aa in rule.udp for a in aa})
        coarse = DiversionRule((( -1, tuple(addrs)),), rule.icmp_echo, rule.fragments,
                               rule.ethertypes, rule.all_ipv4, rule.tagged_vids)
        prog = _build(coarse, accept, pass_, pid)
    if len(prog) > BPF_MAXINSNS:
        raise OSError(errno.E2BIG, f"diversion program of {len(prog)} instructions")
    return prog


def _build(rule: DiversionRule, accept: int, pass_: int, pid: int | None):
    a = Asm()
    a.ld_imm(MAGIC)
    a.ld_imm(os.getpid() if pid is None else pid)
    a.ld_imm(_START)
    if rule.empty:
        a.ret(pass_)
        return a.assemble()
    a.ld_w(SKF_AD_OFF + SKF_AD_VLAN_TAG_PRESENT)
    a.if_ne(0, "tagged")
    # ---- untagged
    a.ld_h(12)
    for et in rule.ethertypes:
        a.if_eq(et, "accept")
    a.if_ne(ETH_P_IP, "pass")
    if rule.all_ipv4:
        a.goto("accept")
    a.ld_b(14)
    a.and_k(0xF0)
    a.if_ne(0x40, "pass")
    a.ld_h(20)
    a.and_k(0x3FFF)                       # MF | fragment offset
    a.if_ne(0, "frag")
    a.ld_b(23)
    a.if_eq(IPPROTO_UDP, "udp")
    a.if_eq(IPPROTO_ICMP, "icmp")
    a.goto("pass")
    # UDP: destination port, then destination address
    a.label("udp")
    if rule.udp:
        a.ldx_ihl()
        a.ld_ind_h(16)                    # 14 + ihl + 2
        for i, (port, _) in enumerate(rule.udp):
            if port < 0:
                a.goto(f"udp{i}")
            else:
                a.if_eq(port, f"udp{i}")
        a.goto("pass")
        for i, (_, addrs) in enumerate(rule.udp):
            a.label(f"udp{i}")
            a.ld_w(30)
            for addr in addrs:
                a.if_eq(addr, "accept")
            a.goto("pass")
    else:
        a.goto("pass")
    # ICMP echo request
    a.label("icmp")
    if rule.icmp_echo:
        a.ld_w(30)
        for addr in rule.icmp_echo:
            a.if_eq(addr, "icmp_type")
        a.goto("pass")
        a.label("icmp_type")
        a.ldx_ihl()
        a.ld_ind_b(14)
        a.if_eq(8, "accept")
    a.goto("pass")
    # fragments
    a.label("frag")
    if rule.fragments:
        a.ld_w(30)
        for addr in rule.fragments:
            a.if_eq(addr, "accept")
    a.goto("pass")
    # ---- tagged (the outer tag is in the skb metadata, the data starts with the next EtherType)
    a.label("tagged")
    if rule.tagged_vids:
        a.ld_h(12)
        a.if_eq(ETH_P_8021Q, "qinq")
        a.if_ne(ETH_P_IP, "pass")
        a.ld_w(SKF_AD_OFF + SKF_AD_VLAN_TAG)
        a.and_k(0xFFF)
        for vid in rule.tagged_vids:
            a.if_eq(vid, "accept")
        a.goto("pass")
        a.label("qinq")                   # EVL: the inner tag selects
        a.ld_h(16)
        a.if_ne(ETH_P_IP, "pass")
        a.ld_h(14)
        a.and_k(0xFFF)
        for vid in rule.tagged_vids:
            a.if_eq(vid, "accept")
    a.goto("pass")
    a.label("pass")
    a.ret(pass_)
    a.label("accept")
    a.ret(accept)
    return a.assemble()


def marker_of(ops) -> tuple[int, int] | None:
    """(pid, start time) when *ops* is an evlnet diversion program, else None."""
    if len(ops) >= 3 and all(op[0] == BPF_LD | BPF_IMM for op in ops[:3]) and ops[0][3] == MAGIC:
        return ops[1][3], ops[2][3]
    return None


def ebpf_marker() -> str:
    """The TCA_BPF_NAME of our eBPF tc filters (user RX filters): owner pid and start time."""
    return f"evlnet:{os.getpid()}:{_START}"


def filter_owner(f: rtnl.TcFilter) -> tuple[int, int] | None:
    """(pid, start time) of the evlnet process that installed tc filter *f*, or None."""
    owner = marker_of(f.ops)
    if owner is None and f.name.startswith("evlnet:"):
        try:
            _, pid, start = f.name.split(":")
            return int(pid), int(start)
        except ValueError:
            return None
    return owner


def owner_alive(pid: int, start: int) -> bool:
    """Whether the process that installed a program still runs (pid reuse checked by start time)."""
    if pid == os.getpid():
        return start == _START
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
    except OSError:
        return False
    try:
        return int(stat.rsplit(")", 1)[1].split()[19]) & 0xFFFFFFFF == start
    except (ValueError, IndexError):
        return True


# --------------------------------------------------------------------------------------------
# a reference interpreter (tests, debugging): what the kernel would answer for one frame
# --------------------------------------------------------------------------------------------

def run_program(ops, frame: bytes, vlan_tci: int | None = None) -> int:
    """Run classic BPF *ops* on *frame* as a packet hook sees it (*vlan_tci*: the tag the
    kernel moved to the metadata, or None). Out-of-bounds loads return 0, as in the kernel."""
    A = X = 0
    pc = 0
    n = len(frame)
    while pc < len(ops):
        code, jt, jf, k = ops[pc]
        pc += 1
        cls = code & 0x07
        if cls == BPF_LD:
            mode, size = code & 0xE0, code & 0x18
            if mode == BPF_IMM:
                A = k
                continue
            off = k if mode == BPF_ABS else X + k
            if mode == BPF_ABS and k >= SKF_AD_OFF:
                ad = k - SKF_AD_OFF
                if ad == SKF_AD_VLAN_TAG_PRESENT:
                    A = int(vlan_tci is not None)
                elif ad == SKF_AD_VLAN_TAG:
                    A = vlan_tci or 0
                else:
                    raise ValueError(f"unsupported ancillary load {ad}")
                continue
            width = {BPF_W: 4, BPF_H: 2, BPF_B: 1}[size]
            if off + width > n:
                return 0
            A = int.from_bytes(frame[off:off + width], "big")
        elif cls == BPF_LDX:
            if code == BPF_LDX | BPF_B | BPF_MSH:
                if k >= n:
                    return 0
                X = (frame[k] & 0xF) * 4
            else:
                raise ValueError(f"unsupported LDX {code:#x}")
        elif cls == BPF_ALU:
            if code == BPF_ALU | BPF_AND | BPF_K:
                A &= k
            else:
                raise ValueError(f"unsupported ALU {code:#x}")
        elif cls == BPF_JMP:
            op = code & 0xF0
            if op == BPF_JA:
                pc += k
            elif op == BPF_JEQ:
                pc += jt if A == k else jf
            else:
                raise ValueError(f"unsupported JMP {code:#x}")
        elif cls == BPF_RET:
            return k
        else:
            raise ValueError(f"unsupported opcode {code:#x}")
    raise ValueError("program fell off its end")


# --------------------------------------------------------------------------------------------
# the tc side
# --------------------------------------------------------------------------------------------

class TcDiversion:
    """evlnet's ingress filter on one interface (and the clsact qdisc when we added it)."""

    def __init__(self, nl: rtnl.RtnlSocket, ifindex: int) -> None:
        self.nl = nl
        self.ifindex = ifindex
        self.created_qdisc = False
        self.installed = False

    def install(self, ops) -> None:
        """Add or atomically replace the filter; EBUSY when another live evlnet process owns it."""
        if not self.installed:
            stale = False
            for f in rtnl.filter_dump(self.nl, self.ifindex):
                owner = filter_owner(f)
                if owner is None or owner == (os.getpid(), _START):
                    continue
                if owner_alive(*owner):
                    raise OSError(errno.EBUSY, f"ifindex {self.ifindex} is diverted by "
                                               f"another evlnet process (pid {owner[0]})")
                # a dead evlnet process left it (and, most likely, the qdisc): ours now
                rtnl.filter_del(self.nl, self.ifindex, f.prio, f.handle)
                stale = True
            if rtnl.clsact_add(self.nl, self.ifindex) or stale:
                self.created_qdisc = True
        rtnl.bpf_filter_set(self.nl, self.ifindex, TC_PRIO, TC_HANDLE, ops)
        self.installed = True

    def remove(self) -> None:
        """Remove the filter, and the qdisc if we made it and nobody else filters on it."""
        if not self.installed and not self.created_qdisc:
            return
        try:
            rtnl.filter_del(self.nl, self.ifindex, TC_PRIO, TC_HANDLE)
            if self.created_qdisc and not rtnl.filter_dump(self.nl, self.ifindex) and \
                    not rtnl.filter_dump(self.nl, self.ifindex, rtnl.TC_H_EGRESS_PARENT):
                rtnl.clsact_del(self.nl, self.ifindex)
        except OSError as exc:
            if exc.errno not in (errno.ENODEV, errno.ENOENT, errno.EINVAL):
                raise
        finally:
            self.installed = False
            self.created_qdisc = False


def list_filters(nl: rtnl.RtnlSocket) -> list[tuple[int, tuple[int, int]]]:
    """evlnet diversion filters in the socket's namespace: [(ifindex, (pid, start))]."""
    out = []
    for link in rtnl.link_dump(nl):
        for f in rtnl.filter_dump(nl, link.ifindex):
            owner = filter_owner(f)
            if owner is not None:
                out.append((link.ifindex, owner))
    return out


def cleanup_stale(nl: rtnl.RtnlSocket) -> int:
    """Remove the diversion filters of evlnet processes that died without removing them (and
    their clsact qdisc once empty). Returns how many were removed."""
    removed = 0
    for link in rtnl.link_dump(nl):
        mine = False
        for f in rtnl.filter_dump(nl, link.ifindex):
            owner = filter_owner(f)
            if owner is None or owner_alive(*owner):
                continue
            rtnl.filter_del(nl, link.ifindex, f.prio, f.handle)
            removed += 1
            mine = True
        if mine and not rtnl.filter_dump(nl, link.ifindex) and \
                not rtnl.filter_dump(nl, link.ifindex, rtnl.TC_H_EGRESS_PARENT):
            rtnl.clsact_del(nl, link.ifindex)
        if mine:
            log.info("removed a stale evlnet diversion filter from ifindex %d", link.ifindex)
    return removed

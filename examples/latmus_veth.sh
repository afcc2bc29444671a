#!/usr/bin/env bash
# latmus -E between two network namespaces over a veth pair, with --compare-kernel (root).
#
#   examples/latmus_veth.sh [latmus options]      (or: ./run latmus-veth [latmus options])
#
# Makes two namespaces (evlt-latmusa-<pid>-0, evlt-latmusb-<pid>-0) joined by a veth pair
# (veth0 192.0.2.1/24 <-> veth1 192.0.2.2/24), runs `latmus -E 192.0.2.1 -L veth1` quietly in
# B and `latmus -E 192.0.2.2 -L veth0 --compare-kernel --rtt` in A (its output is what you
# see), and deletes both namespaces on exit, on error and on Ctrl-C. Default: -T 10.
# Each latmus enables its interface as an oob port in its own stack (evlnet ports belong to
# the process that enables them), so root is needed: AF_PACKET, the tc diversion filter.
# Addresses only from 192.0.2.0/24, inside namespaces made here.
set -euo pipefail

if [ "$(id -u)" != 0 ]; then
    echo "latmus_veth.sh needs root (network namespaces, veth, AF_PACKET); try: sudo $0 $*" >&2
    exit 1
fi
command -v ip >/dev/null || { echo "latmus_veth.sh needs iproute2 (ip)" >&2; exit 1; }
LATMUS="${LATMUS:-latmus}"
command -v "$LATMUS" >/dev/null || {
    echo "no '$LATMUS' command: pip install -e '.[tools]' (or run ./run latmus-veth)" >&2
    exit 1; }

args=("$@")
case " ${args[*]-} " in *" -T"*|*" --timeout"*) ;; *) args+=(-T 10) ;; esac

A="evlt-latmusa-$$-0"
B="evlt-latmusb-$$-0"
peer_pid=""
peer_log="$(mktemp)"
cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    if [ -n "$peer_pid" ]; then kill "$peer_pid" 2>/dev/null || true; wait "$peer_pid" 2>/dev/null || true; fi
    ip netns del "$A" 2>/dev/null || true
    ip netns del "$B" 2>/dev/null || true
    rm -f "$peer_log"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

ip netns add "$A"
ip netns add "$B"
ip link add veth0 netns "$A" type veth peer name veth1 netns "$B"
for ns in "$A" "$B"; do
    ip -n "$ns" link set lo up
    sysctl_ipv6="/proc/sys/net/ipv6/conf/all/disable_ipv6"
    ip netns exec "$ns" sh -c "[ -w $sysctl_ipv6 ] && echo 1 > $sysctl_ipv6" || true
done
ip -n "$A" addr add 192.0.2.1/24 dev veth0
ip -n "$B" addr add 192.0.2.2/24 dev veth1
ip -n "$A" link set veth0 up
ip -n "$B" link set veth1 up

# The peer: quiet (-q), pointing back; its figures are not shown unless it fails.
ip netns exec "$B" "$LATMUS" -E 192.0.2.1 -L veth1 -q --compare-kernel --rtt "${args[@]}" \
    >"$peer_log" 2>&1 &
peer_pid=$!

set +e
ip netns exec "$A" "$LATMUS" -E 192.0.2.2 -L veth0 --compare-kernel --rtt "${args[@]}"
rc=$?
wait "$peer_pid"
peer_rc=$?
peer_pid=""
set -e
if [ "$peer_rc" != 0 ]; then
    echo "the peer latmus (namespace B) exited with status $peer_rc:" >&2
    cat "$peer_log" >&2
fi
exit "$rc"

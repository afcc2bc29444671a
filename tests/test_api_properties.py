"""Hypothesis properties on the Python API surface (issue 9): whatever arguments, flags,
addresses and option values a caller passes, an oob socket either does its job or raises an
``OSError`` with an errno — never another exception from inside the stack, never a hang — and
the stack keeps working afterwards."""
from __future__ import annotations

import errno
import socket as pysocket

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from virtual_fixtures import A_IP, B_IP  # noqa: F401

from evlnet import MSG_DONTWAIT, MSG_TIMESTAMP, SO_TIMESTAMP_OOB, SOCK_OOB, SOL_SOCKET

SETTINGS = settings(max_examples=150, deadline=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture])

hosts = st.one_of(
    st.sampled_from(["192.0.2.2", "192.0.2.255", "255.255.255.255", "0.0.0.0", "", "broadcast",
                     "192.0.2.77", "127.0.0.1", "::1", "not an address", "1.2.3"]),
    st.text(max_size=20), st.integers(), st.none(), st.binary(max_size=8))
ports = st.one_of(st.integers(min_value=-5, max_value=70000), st.none(), st.text(max_size=3),
                  st.floats(allow_nan=True))
addresses = st.one_of(st.tuples(hosts, ports), st.tuples(hosts), st.tuples(hosts, ports, ports),
                      hosts, st.none(), st.integers())
flags = st.one_of(st.integers(min_value=-1, max_value=1 << 31),
                  st.sampled_from([0, MSG_DONTWAIT, MSG_TIMESTAMP, MSG_DONTWAIT | MSG_TIMESTAMP]))
payloads = st.one_of(st.binary(max_size=2000), st.lists(st.binary(max_size=300), max_size=5),
                     st.just(bytes(70000)), st.just(bytearray(10)), st.just(memoryview(b"xyz")))
option_values = st.one_of(st.integers(min_value=-(1 << 33), max_value=1 << 33),
                          st.binary(max_size=8), st.booleans(), st.none(), st.text(max_size=4))
levels = st.sampled_from([SOL_SOCKET, pysocket.IPPROTO_IP, pysocket.IPPROTO_TCP, 0, 12345])
optnames = st.one_of(st.sampled_from([SO_TIMESTAMP_OOB, pysocket.SO_RCVBUF, pysocket.SO_SNDBUF,
                                      pysocket.SO_BROADCAST, pysocket.SO_KEEPALIVE,
                                      pysocket.IP_TTL, pysocket.IP_TOS, 0, 1, 2]),
                     st.integers(min_value=-1, max_value=5000))


def _ok_or_oserror(fn, *args, **kw) -> None:
    try:
        fn(*args, **kw)
    except OSError as exc:
        assert exc.errno in errno.errorcode, f"OSError without a valid errno: {exc!r}"


def _still_works(pair) -> None:
    sa, sb = pair.solicited_pair(port=6400 + len(pair.sockets))
    sa.oob_sendmsg([b"alive"], address=(B_IP, sb.getsockname()[1]))
    assert sb.oob_recvmsg(100, timeout=5)[0] == b"alive"


@SETTINGS
@given(address=addresses, payload=payloads, flag=flags)
def test_sendmsg_any_arguments(pair, address, payload, flag):
    s = pair.udp(pair.A, (A_IP, 0))
    buffers = payload if isinstance(payload, list) else [payload]
    _ok_or_oserror(s.oob_sendmsg, buffers, (), flag, address, timeout=0.01)
    s.close()


@SETTINGS
@given(size=st.integers(min_value=-3, max_value=70000),
       anc=st.integers(min_value=-3, max_value=100),
       flag=flags, timeout=st.one_of(st.none(), st.floats(min_value=-1, max_value=0.01)))
def test_recvmsg_any_arguments(pair, size, anc, flag, timeout):
    s = pair.udp(pair.B, ("", 0))
    if timeout is None:
        flag |= MSG_DONTWAIT               # never wait forever on a property run
    _ok_or_oserror(s.oob_recvmsg, size, anc, flag, timeout=timeout)
    s.close()


@SETTINGS
@given(address=addresses)
@example(address=("\x00", 0))            # found by this test: inet_aton raises ValueError on a NUL
def test_bind_and_connect_any_address(pair, address):
    s = pair.udp(pair.A)
    _ok_or_oserror(s.bind, address)
    _ok_or_oserror(s.connect, address)
    s.close()


@SETTINGS
@given(level=levels, name=optnames, value=option_values, oob=st.booleans())
def test_options_any_value(pair, level, name, value, oob):
    s = pair.udp(pair.A, (A_IP, 0))
    setter = s.oob_setsockopt if oob else s.setsockopt
    getter = s.oob_getsockopt if oob else s.getsockopt
    _ok_or_oserror(setter, level, name, value)
    _ok_or_oserror(getter, level, name)
    s.close()


def test_a_nul_in_a_host_is_einval(pair):
    """Every place that parses a host: EINVAL, never the ValueError of inet_aton."""
    s = pair.udp(pair.A, (A_IP, 0))
    for call in (lambda: s.oob_sendmsg([b"x"], address=("1.2.3.4\x00", 9)),
                 lambda: s.connect(("\x00", 9)),
                 lambda: pair.A.solicit(s, ("192.0.2.2\x00", 0)),
                 lambda: pair.A.add_address(pair.link.a.name, "192.0.2.9\x00/24"),
                 lambda: pair.A.add_route("198.51.100.0/24", via="192.0.2.254\x00")):
        with pytest.raises(OSError) as info:
            call()
        assert info.value.errno == errno.EINVAL
    s.close()


def test_the_stack_still_works_after_the_properties(pair):
    """Run after the others in this module's order: a fresh pair still exchanges (each test
    above also closes what it made)."""
    _still_works(pair)


@pytest.mark.parametrize("family, type_, proto", [
    (pysocket.AF_INET, pysocket.SOCK_DGRAM, 0), (pysocket.AF_INET, pysocket.SOCK_STREAM, 0),
    (pysocket.AF_INET6, pysocket.SOCK_DGRAM, 0), (pysocket.AF_PACKET, pysocket.SOCK_RAW, 0),
    (pysocket.AF_INET, pysocket.SOCK_DGRAM, 6), (9999, 1, 0)])
def test_socket_creation_errnos(stacks, family, type_, proto):
    s = stacks()
    _ok_or_oserror(s.socket, family, type_ | SOCK_OOB, proto)

"""The oob UDP calls' fast path (issue 8): the common argument shapes of ``oob_sendmsg`` and
``oob_recvmsg_into`` go straight to the core, with no Python code per datagram past the method
itself, and every shape behaves exactly as the general path does (same result, same errno,
same datagram on the wire)."""
from __future__ import annotations

import errno
import math
import sys

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_api_properties import addresses, flags, payloads
from virtual_fixtures import (  # noqa: F401
    A_IP,
    B_IP,
    make_pair,
    pair,
    raises_errno,
    stacks,
    wait_until,
)

from evlnet import MSG_DONTWAIT, MSG_TIMESTAMP, MSG_TRUNC
from evlnet.sockets.base import OobSocket
from evlnet.sockets.udp import UdpSocket

SETTINGS = settings(max_examples=120, deadline=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture])


def python_calls(fn) -> list[str]:
    """The Python functions called (in this thread) while *fn* runs."""
    calls: list[str] = []

    def profile(frame, event, arg):
        if event == "call":
            calls.append(frame.f_code.co_qualname)

    sys.setprofile(profile)
    try:
        fn()
    finally:
        sys.setprofile(None)
    return calls[1:]                    # the first is *fn* itself


def outcome(fn):
    """What a call did: ``("ok", result)`` or ``("err", errno)``; any other exception fails."""
    try:
        return ("ok", fn())
    except OSError as exc:
        assert exc.errno is not None, exc
        return ("err", exc.errno)


def test_common_shapes_run_no_python_code_per_datagram(pair):
    sa, sb = pair.solicited_pair()
    out = bytearray(100)
    send = python_calls(lambda: sa.oob_sendmsg([b"fast"], address=(B_IP, 6000)))
    assert send == ["UdpSocket.oob_sendmsg"]
    recv = python_calls(lambda: sb.oob_recvmsg_into([out], timeout=5))
    assert recv == ["UdpSocket.oob_recvmsg_into"]
    assert out[:4] == b"fast"
    # the shapes left to the general path do run it (the test can tell the two apart)
    # an echo's slice of its receive buffer is a common shape too
    echo = bytearray(b"..view..")
    send = python_calls(lambda: sa.oob_sendmsg([memoryview(echo)[2:6]], address=(B_IP, 6000)))
    assert send == ["UdpSocket.oob_sendmsg"]
    assert sb.oob_recvmsg_into([out], timeout=5)[0] == 4 and out[:4] == b"view"
    # the shapes left to the general path do run it (the test can tell the two apart)
    send = python_calls(lambda: sa.oob_sendmsg([b"sl", b"ow"], address=(B_IP, 6000)))
    assert "OobSocket.oob_sendmsg" in send
    recv = python_calls(lambda: sb.oob_recvmsg_into([memoryview(out)], timeout=5))
    assert "OobSocket.oob_recvmsg_into" in recv
    assert out[:4] == b"slow"


def test_fast_receive_reports_truncation_and_each_sender(pair):
    sa, sb = pair.solicited_pair()
    sc = pair.udp(pair.A, (A_IP, 0))
    pair.A.solicit(sc, (B_IP, 0))
    small = bytearray(3)
    for s in (sa, sc, sa):
        s.oob_sendmsg([b"12345"], address=(B_IP, 6000))
        n, anc, mflags, (host, port) = sb.oob_recvmsg_into(small, timeout=5)
        assert (n, anc, mflags, host, port) == (3, [], int(MSG_TRUNC), A_IP, s.getsockname()[1])
        assert small == b"123"


def test_fast_receive_timeouts_and_errors(pair):
    sa, sb = pair.solicited_pair()
    buf = bytearray(16)
    with raises_errno(errno.EWOULDBLOCK):
        sb.oob_recvmsg_into([buf], flags=MSG_DONTWAIT)
    with raises_errno(errno.EWOULDBLOCK):
        sb.oob_recvmsg_into([buf], flags=int(MSG_DONTWAIT))
    with raises_errno(errno.ETIMEDOUT):
        sb.oob_recvmsg_into([buf], timeout=0)
    with raises_errno(errno.ETIMEDOUT):
        sb.oob_recvmsg_into([buf], timeout=0.01)
    for bad in (-1, -0.5, math.nan, "1", b""):
        with raises_errno(errno.EINVAL):
            sb.oob_recvmsg_into([buf], timeout=bad)
    with raises_errno(errno.EINVAL):
        sb.oob_recvmsg_into([buf], abs_timeout_ns=1.5)
    for past in (-5, 0, 1):                              # EVL: a deadline passed times out
        with raises_errno(errno.ETIMEDOUT):
            sb.oob_recvmsg_into([buf], abs_timeout_ns=past)
    for readonly in (b"1234", memoryview(b"1234"), [bytearray(2), b"12"]):
        with raises_errno(errno.EINVAL):
            sb.oob_recvmsg_into(readonly, timeout=0)
    sa.oob_sendmsg([b"x"], address=(B_IP, 6000))
    assert sb.oob_recvmsg_into([buf], timeout=math.inf)[0] == 1     # inf: no deadline
    sb.setblocking(False)
    with raises_errno(errno.EWOULDBLOCK):
        sb.oob_recvmsg_into([buf], timeout=5)
    sb.close()
    with raises_errno(errno.EBADF):
        sb.oob_recvmsg_into([buf])


def test_fast_send_checks_what_the_general_path_checks(pair):
    sa, sb = pair.solicited_pair()
    with raises_errno(errno.EACCES):                     # broadcast without SO_BROADCAST
        sa.oob_sendmsg([b"b"], address=("192.0.2.255", 6000))
    with raises_errno(errno.EACCES):
        sa.oob_sendmsg([b"b"], address=("255.255.255.255", 6000))
    with raises_errno(errno.EDESTADDRREQ):               # no address, not connected
        sa.oob_sendmsg([b"b"])
    with raises_errno(errno.EMSGSIZE):
        sa.oob_sendmsg([bytes(65508)], address=(B_IP, 6000))
    sa.connect((B_IP, 6000))
    assert sa.oob_sendmsg([b"connected"]) == 9
    assert sb.oob_recvmsg(64, timeout=5)[0] == b"connected"
    sa.close()
    with raises_errno(errno.EBADF):
        sa.oob_sendmsg([b"b"], address=(B_IP, 6000))


@pytest.fixture
def solicited(pair):
    """One solicited socket pair for all of a property's examples."""
    return pair.solicited_pair()


@SETTINGS
@given(payload=payloads, address=addresses, flag=flags)
def test_send_fast_and_general_paths_agree(solicited, payload, address, flag):
    """Whatever the arguments, the fast path's result or errno is the general path's, and a
    datagram either sends is the same on arrival."""
    sa, sb = solicited
    got = []
    for method in (UdpSocket.oob_sendmsg, OobSocket.oob_sendmsg):
        result = outcome(lambda m=method: m(sa, payload, (), flag, address))
        arrived = None
        if result[0] == "ok" and result[1] > 0 and isinstance(address, tuple) \
                and address[:1] == (B_IP,) and address[1:] == (6000,):
            arrived = sb.oob_recvmsg(70000, timeout=5)[0]
        got.append((result, arrived))
    assert got[0] == got[1]


recv_buffers = st.one_of(st.builds(bytearray, st.integers(0, 40)),
                         st.lists(st.builds(bytearray, st.integers(0, 20)), max_size=3),
                         st.builds(lambda n: memoryview(bytearray(n)), st.integers(0, 40)),
                         st.just(b"readonly"), st.none(), st.integers())
timeouts = st.one_of(st.none(), st.floats(allow_nan=True), st.integers(-2, 3),
                     st.sampled_from([0, 0.0, 2.5, math.inf]), st.text(max_size=2))


@SETTINGS
@given(buffers=recv_buffers, ancbufsize=st.sampled_from([0, 0, 24, 8, -1]),
       flag=st.sampled_from([0, 0, MSG_DONTWAIT, int(MSG_DONTWAIT), MSG_TIMESTAMP, 0x1, -1]),
       timeout=timeouts)
def test_receive_fast_and_general_paths_agree(solicited, buffers, ancbufsize, flag, timeout):
    """The same datagram received through either path: same result or errno, same bytes."""
    sa, sb = solicited
    if isinstance(timeout, (int, float)) and timeout > 0:
        timeout = min(timeout, 0.05)            # nothing to wait for when the data is there
    got = []
    for method in (UdpSocket.oob_recvmsg_into, OobSocket.oob_recvmsg_into):
        sa.oob_sendmsg([b"0123456789abcdef"], address=(B_IP, 6000))
        assert wait_until(lambda: len(sb.core_socket) >= 1)
        result = outcome(lambda m=method: m(sb, buffers, ancbufsize, flag, timeout=timeout))
        filled = [bytes(b) for b in buffers] if isinstance(buffers, list) else (
            bytes(buffers) if isinstance(buffers, (bytearray, memoryview)) else None)
        got.append((result, filled))
        while len(sb.core_socket):               # what an error left queued
            sb.oob_recvmsg(64, flags=MSG_DONTWAIT)
        if isinstance(buffers, list):            # the same starting contents for both
            for b in buffers:
                b[:] = bytes(len(b))
        elif isinstance(buffers, (bytearray, memoryview)):
            buffers[:] = bytes(len(buffers))
    assert got[0] == got[1]

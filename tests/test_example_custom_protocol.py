"""The custom-protocol example in examples/ works end to end, and registration rules hold."""
import errno
import importlib.util
import pathlib

import pytest

import evlnet
from evlnet import AF_OOB, SOCK_DGRAM, SOCK_OOB

EXAMPLE = pathlib.Path(__file__).parent.parent / "examples" / "custom_ethertype.py"


def load_example():
    spec = importlib.util.spec_from_file_location("custom_ethertype", EXAMPLE)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture
def beacon_pair():
    mod = load_example()
    link = evlnet.VirtualLink("bx0", "bx1")
    a, b = evlnet.Stack("a"), evlnet.Stack("b")
    try:
        a.add_interface(link.a)
        b.add_interface(link.b)
        pa, pb = mod.BeaconProtocol(), mod.BeaconProtocol()
        a.register_protocol(pa)
        b.register_protocol(pb)
        a.enable_port("bx0")
        b.enable_port("bx1")
        yield mod, link, a, b, pa, pb
    finally:
        a.close()
        b.close()


def test_beacon_frames_cross_the_link(beacon_pair):
    mod, link, a, b, _, pb = beacon_pair
    tx = a.socket(AF_OOB, SOCK_DGRAM | SOCK_OOB, mod.ETH_P_BEACON)
    rx = b.socket(AF_OOB, SOCK_DGRAM | SOCK_OOB, mod.ETH_P_BEACON)
    tx.bind(("bx0", 7))
    rx.bind(("bx1", 7))
    other = b.socket(AF_OOB, SOCK_DGRAM | SOCK_OOB, mod.ETH_P_BEACON)
    other.bind(("bx1", 8))
    payload = b"beacon-payload" + bytes(range(50))
    assert tx.oob_sendmsg([payload], address=(link.b.mac, 7)) == len(payload)
    data, _, _, (mac, channel) = rx.oob_recvmsg(1500, timeout=2)
    assert data == payload
    assert (mac, channel) == (link.a.mac, 7)
    with pytest.raises(BlockingIOError):
        other.oob_recvmsg(1500, flags=evlnet.MSG_DONTWAIT)
    tx.oob_sendmsg([b"x" * 50], address=(link.b.mac, 99))      # nobody on channel 99
    for _ in range(200):
        if pb.dropped:
            break
        import time
        time.sleep(0.01)
    assert pb.dropped == 1


def test_duplicate_registration_is_eexist(beacon_pair):
    mod, _, a, _, _, _ = beacon_pair
    with pytest.raises(OSError) as e:
        a.register_protocol(mod.BeaconProtocol())
    assert e.value.errno == errno.EEXIST


def test_example_main_runs(capsys):
    load_example().main()
    assert "on channel 7" in capsys.readouterr().out

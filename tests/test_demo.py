"""The main job (README's first command) runs and reports in `evl net -Q` format."""
import io
import re

from virtual_fixtures import os_thread_names

from evlnet.tools import demo


def test_demo_exchanges_and_prints_both_ports():
    out = io.StringIO()
    report = demo.run(seconds=0.5, out=out)
    text = out.getvalue()
    assert report["exchanges"] > 0 and report["lost"] == 0
    assert text.count("oob capability: yes") == 2
    for name in ("vlink0", "vlink1"):
        assert f"# evl net -Q -i {name}" in text
        st = report["stats"][name]
        assert st.skb_free == st.skb_total == 2048
        assert st.tx_packets >= report["exchanges"] and st.rx_packets >= report["exchanges"]
    assert re.search(r"round trip \(us\): min [\d.]+ +p50 [\d.]+", text)
    assert not [t for t in os_thread_names() if t.startswith("vlink")]


def test_demo_main_exit_code():
    assert demo.main(["--seconds", "0.3"]) == 0

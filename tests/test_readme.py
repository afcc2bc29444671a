"""The README's promises: exactly two commands up front, its self-contained snippet runs, the
Install section names every command, and the demo block is what the demo prints."""
import re
import subprocess
import sys
from pathlib import Path

README = (Path(__file__).resolve().parent.parent / "README.md").read_text()


def test_first_block_is_the_two_commands():
    first = re.search(r"```sh\n(.*?)```", README, re.S).group(1)
    commands = [ln.split("#")[0].strip() for ln in first.splitlines() if ln.strip()]
    assert commands == ["./run demo", "./run test"]


def test_self_contained_snippet_runs():
    snippet = re.findall(r"```python\n(.*?)```", README, re.S)[0]
    assert "VirtualLink" in snippet
    p = subprocess.run([sys.executable, "-c", snippet], capture_output=True, text=True,
                       timeout=60)
    assert p.returncode == 0, p.stderr
    assert p.stdout.startswith("b'ping' ('192.0.2.1', 59059)\noob capability: yes\n")


def test_install_names_every_console_script():
    import tomllib
    pyproject = tomllib.loads((Path(__file__).resolve().parent.parent / "pyproject.toml")
                              .read_text())
    sentence = re.search(r"`pip install \.` installs the (.*?) commands?\.", README, re.S)
    assert sentence, "the Install section says which commands `pip install .` installs"
    named = set(re.findall(r"`([^`]+)`", sentence.group(1)))
    assert named == set(pyproject["project"]["scripts"])


def test_demo_block_is_the_demos_output():
    """The block after "A run on this" is what `./run demo` prints (RTD lines elided with
    `...`): the command line it echoes, EVL's RTT|/RTH| header, RTD| lines, the RTS| summary
    and its two lines, then the reading."""
    from evlnet.tools.latency import rth_line
    block = re.search(r"A run on this .*?```\n(.*?)```", README, re.S).group(1).splitlines()
    assert block[0] == "$ latmus --virtual -T 10 --rtt"          # demo's defaults
    assert re.fullmatch(r"RTT\|  00:00:00  \(net, 1000 us period, priority 10, CPU\d+(-noisol)?\)",
                        block[1])
    assert block[2] == rth_line()
    rest = block[3:]
    assert rest[0].startswith("RTD|") and "..." in rest
    rts = next(i for i, ln in enumerate(rest) if ln.startswith("RTS|"))
    assert rest[rts - 1].startswith("---|")
    assert re.match(r"\d+ datagrams received from the peer, \d+ lost", rest[rts + 1])
    assert rest[rts + 2].startswith("round trip (us): min ")
    assert rest[rts + 3] == "" and rest[rts + 4].startswith("How to read this: for 10 s, ")

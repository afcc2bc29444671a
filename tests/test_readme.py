"""The README's promises: exactly two commands up front, and its self-contained snippet runs."""
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

"""``./run``'s ``setup_python``: when it installs, when it leaves the venv alone, and that it makes
a venv without a working pip again. The functions are sourced from ``./run`` and run in a
scratch directory shaped like the repository, with stand-ins for ``python3`` (makes a "venv")
and the venv's ``python`` (logs its arguments; ``-m pip --version`` fails unless the venv has a
``pip-ok`` marker), so nothing is built or downloaded. No root needed; well under a second."""
from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

RUN = Path(__file__).resolve().parent.parent / "run"

FAKE_PYTHON = """#!/bin/sh
echo "python $*" >> "$LOG"
if [ "$1 $2 $3" = "-m pip --version" ]; then
    [ -e "$(dirname "$0")/../pip-ok" ]
    exit $?
fi
exit 0
"""

# python3 -m venv [--clear] DIR: a fresh "venv" whose pip works
FAKE_PYTHON3 = """#!/bin/sh
echo "python3 $*" >> "$LOG"
for dir; do :; done
rm -rf "$dir"
mkdir -p "$dir/bin"
cp "$STUBS/venv-python" "$dir/bin/python"
touch "$dir/pip-ok"
"""


@pytest.fixture
def repo(tmp_path):
    """A scratch tree with what install_hash reads, a built core, the stand-ins and a log."""
    if shutil.which("bash") is None or shutil.which("sha256sum") is None:
        pytest.skip("needs bash and coreutils")
    root = tmp_path / "repo"
    (root / "core" / "src").mkdir(parents=True)
    (root / "pyproject.toml").write_text("[project]\nname = 'x'\n")
    (root / "core" / "Cargo.toml").write_text("[package]\n")
    (root / "core" / "Cargo.lock").write_text("")
    (root / "core" / "src" / "lib.rs").write_text("")
    (root / "src" / "evlnet" / "datapath").mkdir(parents=True)
    (root / "src" / "evlnet" / "datapath" / "_core.abi3.so").write_bytes(b"")
    stubs = tmp_path / "stubs"
    stubs.mkdir()
    for name, text in (("python3", FAKE_PYTHON3), ("venv-python", FAKE_PYTHON)):
        (stubs / name).write_text(text)
        (stubs / name).chmod(0o755)
    return root, stubs, tmp_path / "log"


def setup_python(repo, extras: str) -> list[str]:
    """Run ``setup_python EXTRAS`` from ./run in the scratch tree; the stand-ins' calls."""
    root, stubs, log = repo
    log.write_text("")
    env = dict(os.environ, EVLNET_VENV=str(root / ".venv"), LOG=str(log), STUBS=str(stubs),
               PATH=f"{stubs}:{os.environ['PATH']}")
    script = ('source "$1"; setup_rust() { echo setup_rust >> "$LOG"; }; '
              'setup_python "$2"')
    p = subprocess.run(["bash", "-c", script, "bash", str(RUN), extras], cwd=root, env=env,
                       capture_output=True, text=True, timeout=20)
    assert p.returncode == 0, p.stderr
    return log.read_text().splitlines()


def stamp(repo) -> list[str]:
    return (repo[0] / ".venv" / ".evlnet-install").read_text().splitlines()


PIP_CHECK = "python -m pip --version"
INSTALL = "python -m pip install -q --disable-pip-version-check -e "


def test_no_venv_is_made_and_installed(repo):
    calls = setup_python(repo, "tools")
    venv = repo[0] / ".venv"
    assert calls == [f"python3 -m venv {venv}", "setup_rust", INSTALL + ".[tools]"]
    assert stamp(repo)[1] == "tools"


def test_unchanged_hash_and_extras_present_installs_nothing(repo):
    setup_python(repo, "test,tools")
    assert setup_python(repo, "tools") == [PIP_CHECK]              # a subset: nothing to do
    assert setup_python(repo, "tools,test") == [PIP_CHECK]


def test_a_missing_extra_or_a_changed_source_installs_again(repo):
    setup_python(repo, "tools")
    assert setup_python(repo, "docs") == [PIP_CHECK, "setup_rust", INSTALL + ".[tools,docs]"]
    assert stamp(repo)[1] == "tools,docs"
    (repo[0] / "core" / "src" / "lib.rs").write_text("// changed\n")
    assert setup_python(repo, "tools")[-1] == INSTALL + ".[tools,docs]"
    assert setup_python(repo, "tools") == [PIP_CHECK]


def test_a_venv_without_pip_is_made_again(repo):
    setup_python(repo, "tools")
    venv = repo[0] / ".venv"
    (venv / "pip-ok").unlink()                # an interrupted creation: python but no pip
    calls = setup_python(repo, "tools")
    assert calls == [PIP_CHECK, f"python3 -m venv --clear {venv}", "setup_rust",
                     INSTALL + ".[tools]"]
    assert setup_python(repo, "tools") == [PIP_CHECK]

"""The tools (``evlnet.tools``) and the control server and client (``evlnet.control``) are users
of the public API: no import of the stack's internals (``evlnet.core``, ``evlnet.datapath``,
``evlnet.linux``, ``evlnet.drivers``, ``evlnet.proto``, private modules), no ``.core`` handle of a
Port or Stack, no private attribute of another object."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parent.parent / "src" / "evlnet"
FILES = sorted([*(SRC / "tools").glob("*.py"), *(SRC / "control").glob("*.py")])
#: evlnet's subpackages that are internals, not API
INTERNAL = ("core", "datapath", "linux", "drivers", "proto")


def private_reaches(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(), str(path))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level >= 1:
            # absolute name inside evlnet: level 1 in tools/control is the subpackage itself
            parts = [path.parent.name] if node.level == 1 else []
            parts += (node.module or "").split(".") if node.module else []
            parts = [p for p in parts if p]
            if parts and (parts[0] in INTERNAL or any(p.startswith("_") for p in parts)):
                found.append(f"{path.name}:{node.lineno}: from {'.' * node.level}"
                             f"{node.module or ''} import ...")
        elif isinstance(node, ast.Import):
            for alias in node.names:
                parts = alias.name.split(".")
                if parts[0] == "evlnet" and len(parts) > 1 and (
                        parts[1] in INTERNAL or any(p.startswith("_") for p in parts)):
                    found.append(f"{path.name}:{node.lineno}: import {alias.name}")
        elif isinstance(node, ast.Attribute):
            own = isinstance(node.value, ast.Name) and node.value.id in ("self", "cls")
            if node.attr == "core" and not own:
                found.append(f"{path.name}:{node.lineno}: .core handle")
            elif node.attr.startswith("_") and not node.attr.startswith("__") and not own:
                found.append(f"{path.name}:{node.lineno}: .{node.attr}")
    return found


@pytest.mark.parametrize("path", FILES, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_tools_and_control_use_only_the_public_api(path):
    assert private_reaches(path) == []


def test_the_check_sees_private_reaches(tmp_path):
    bad = tmp_path / "tools" / "bad.py"
    bad.parent.mkdir()
    bad.write_text("from ..core.timestamps import IOTIMES\n"
                   "def f(port):\n"
                   "    port.core.start_capture(3)\n"
                   "    return port._fd\n")
    assert len(private_reaches(bad)) == 3

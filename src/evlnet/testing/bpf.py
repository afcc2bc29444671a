"""Building eBPF filters with clang, for the tests and the benchmark: the examples
(``examples/filters``) and the refused ones (``tests/filters``). No object file is committed;
clang is a test tool that ``./run test`` installs as root when missing. Only in a source
checkout (the folders are not installed with the package)."""
from __future__ import annotations

import errno
import os
import shutil
import subprocess
import sys

from .netns import skip_or_fail

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__)))))
EXAMPLES = os.path.join(ROOT, "examples", "filters")
REFUSED = os.path.join(ROOT, "tests", "filters")


def _multiarch_include() -> list[str]:
    """clang -target bpf does not look in Debian's multiarch include directory (asm/types.h)."""
    try:
        triple = subprocess.run(["gcc", "-dumpmachine"], capture_output=True, text=True,
                                check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return []
    path = f"/usr/include/{triple}"
    return [f"-I{path}"] if os.path.isdir(path) else []


def need_clang() -> str:
    """clang's path; in a test, skip without it (fail under CI=true); elsewhere OSError."""
    clang = shutil.which("clang")
    if clang is None:
        problem = "needs clang to build the eBPF filters (apt-get install clang; ./run test does)"
        if "pytest" not in sys.modules:
            raise OSError(errno.ENOENT, problem)
        skip_or_fail(problem)
    return clang


def build(source: str, out_dir: str, *defines: str) -> str:
    """Compile *source* (a path) to an eBPF object in *out_dir*; returns the object's path."""
    clang = need_clang()
    name = os.path.splitext(os.path.basename(source))[0]
    suffix = "".join("_" + d.replace("=", "_") for d in defines)
    out = os.path.join(out_dir, f"{name}{suffix}.o")
    cmd = [clang, "-O2", "-g", "-target", "bpf", f"-I{EXAMPLES}", *_multiarch_include(),
           *(f"-D{d}" for d in defines), "-c", source, "-o", out]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise OSError(errno.EINVAL, f"{' '.join(cmd)}\n{proc.stderr}")
    return out


def build_all(out_dir: str) -> dict[str, str]:
    """Every example and refused filter, by name (file name without .c)."""
    objects = {}
    for folder in (EXAMPLES, REFUSED):
        for f in sorted(os.listdir(folder)):
            if f.endswith(".c"):
                objects[f[:-2]] = build(os.path.join(folder, f), out_dir)
    return objects

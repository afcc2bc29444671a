"""The compiled data path: ``evlnet.datapath._core``, built from ``core/`` (Rust, PyO3).

This package is the lowest layer of evlnet and imports nothing from it. ``_core`` is the seam
between the oob stage (the core's RX/TX threads, which never take the GIL) and the Python
control plane; ``_core.pyi`` documents every class and call that crosses it.
"""
from . import _core

__all__ = ["_core"]

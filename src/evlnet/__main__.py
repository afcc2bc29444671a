"""``python -m evlnet``: the ``evl-net`` command (``python -m evlnet -Q -i veth0``), or
``python -m evlnet latmus ...`` for latmus when this build has it."""
from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    """Dispatch to ``latmus`` (first argument ``latmus``) or to ``evl-net``."""
    args = list(sys.argv[1:] if argv is None else argv)
    if args and args[0] == "latmus":
        import importlib
        try:
            latmus = importlib.import_module("evlnet.tools.latmus")
        except ModuleNotFoundError as exc:
            if exc.name != "evlnet.tools.latmus":
                raise
            sys.stderr.write("evlnet: latmus is not available in this build\n")
            return 1
        result = latmus.main(args[1:])
        return int(result or 0)
    from .tools import evl_net
    return evl_net.main(args)


if __name__ == "__main__":
    sys.exit(main())

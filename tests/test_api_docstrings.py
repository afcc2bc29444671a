"""Every piece of the public API has a docstring, so that nothing shows up blank in docs/api:
the names in ``evlnet.__all__`` (functions and classes), the public classes and functions of
``evlnet.sockets`` and its modules (what ``./run docs`` documents), and the public methods and
properties of all those classes, inherited ones from evlnet's own classes included. A docstring
inherited from an overridden method counts, as pdoc shows it."""
from __future__ import annotations

import importlib
import inspect
import pkgutil

import evlnet
import evlnet.sockets


def public_objects() -> list[tuple[str, object]]:
    out = [(f"evlnet.{n}", getattr(evlnet, n)) for n in evlnet.__all__]
    mods = [evlnet.sockets] + [importlib.import_module(f"evlnet.sockets.{m.name}")
                               for m in pkgutil.iter_modules(evlnet.sockets.__path__)
                               if not m.name.startswith("_")]
    for mod in mods:
        names = getattr(mod, "__all__", None)
        if names is None:
            names = [k for k, v in vars(mod).items() if not k.startswith("_")
                     and (inspect.isclass(v) or inspect.isfunction(v))
                     and v.__module__ == mod.__name__]
        out += [(f"{mod.__name__}.{n}", getattr(mod, n)) for n in names]
    return [(n, o) for n, o in out if inspect.isclass(o) or inspect.isfunction(o)]


def missing_docstrings() -> list[str]:
    missing = []
    for name, obj in public_objects():
        if not inspect.getdoc(obj):
            missing.append(name)
        if not inspect.isclass(obj):
            continue
        seen = set()
        for cls in obj.__mro__:
            if not cls.__module__.startswith("evlnet"):
                continue
            for attr, raw in vars(cls).items():
                if attr.startswith("_") or attr in seen:
                    continue
                seen.add(attr)
                if isinstance(raw, (staticmethod, classmethod)):
                    raw = raw.__func__
                if not (inspect.isfunction(raw) or isinstance(raw, property)):
                    continue
                if not inspect.getdoc(getattr(obj, attr)):
                    missing.append(f"{name}.{attr}")
    return sorted(set(missing))


def test_public_api_has_docstrings():
    assert missing_docstrings() == []


def test_the_walk_covers_the_api():
    names = {n for n, _ in public_objects()}
    assert {"evlnet.Stack", "evlnet.Port", "evlnet.DevStat", "evlnet.enable_port"} <= names
    assert any(n.startswith("evlnet.sockets.") for n in names)

"""Shared by every test module: the fixtures of ``virtual_fixtures`` (stacks, pairs of stacks on
a virtual link, a stack on a raw wire, TX gates) are registered here once, and helpers such as
``wait_until`` and ``raises_errno`` are imported from ``virtual_fixtures`` by the modules."""
from virtual_fixtures import make_pair, make_solo, pair, solo, stacks, tx_gate  # noqa: F401

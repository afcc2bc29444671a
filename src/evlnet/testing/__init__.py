"""Test helpers: network-namespace harness (see :mod:`evlnet.testing.netns`)."""
from .netns import (
    ALLOWED_NETWORKS,
    NETNS_DIR,
    PREFIX,
    Namespace,
    VethEnd,
    VlanLink,
    check_address,
    cleanup_leaked,
    in_netns,
    list_namespaces,
    netns,
    require_root,
    veth_pair,
    vlan,
    vlan_supported,
)

__all__ = [
    "ALLOWED_NETWORKS", "NETNS_DIR", "PREFIX", "Namespace", "VethEnd", "VlanLink",
    "check_address", "cleanup_leaked", "in_netns", "list_namespaces", "netns", "require_root",
    "veth_pair", "vlan", "vlan_supported",
]

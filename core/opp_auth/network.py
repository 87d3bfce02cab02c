"""Address classification shared by the core and plugins."""

from __future__ import annotations

import ipaddress

_LOCAL_NETWORKS = [
    ipaddress.ip_network(net)
    for net in (
        "127.0.0.0/8",
        "::1/128",
        "10.0.0.0/8",
        "172.16.0.0/12",
        "192.168.0.0/16",
        "fd00::/8",
        "fe80::/10",
        "169.254.0.0/16",
    )
]


def is_local_address(address: str | None) -> bool:
    """Whether an address is loopback, private or link-local (the local network)."""
    if address is None:
        return False
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return any(ip in net for net in _LOCAL_NETWORKS)

"""Address classification shared by the core and plugins."""

from __future__ import annotations

import ipaddress
import socket

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


PREFIX_V4 = 24
PREFIX_V6 = 64
_MAPPED = bytes(10) + b"\xff\xff"


def address_and_prefix(address: str) -> tuple[str, str] | None:
    """The canonical form of an IP address and its network prefix (IPv4 /24, IPv6 /64); None when not an IP.

    An IPv4-mapped IPv6 address is the IPv4 address it maps, so a dual-stack
    socket cannot give one client two identities. (socket.inet_pton: a few
    hundred nanoseconds, where ipaddress takes tens of microseconds for IPv6.)
    """
    try:
        packed = socket.inet_pton(socket.AF_INET, address)
    except (OSError, TypeError, ValueError):
        try:
            packed = socket.inet_pton(socket.AF_INET6, address)
        except (OSError, TypeError, ValueError):
            return _address_and_prefix_slow(address)
        if packed[:12] != _MAPPED:
            prefix = socket.inet_ntop(socket.AF_INET6, packed[:8] + bytes(8))
            return socket.inet_ntop(socket.AF_INET6, packed), f"{prefix}/{PREFIX_V6}"
        packed = packed[12:]
    prefix = socket.inet_ntop(socket.AF_INET, packed[:3] + bytes(1))
    return socket.inet_ntop(socket.AF_INET, packed), f"{prefix}/{PREFIX_V4}"


def _address_and_prefix_slow(address: str) -> tuple[str, str] | None:
    """address_and_prefix for what inet_pton does not parse (scoped IPv6 such as fe80::1%eth0)."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is None:
        net6 = ipaddress.IPv6Address(int(ip) >> (128 - PREFIX_V6) << (128 - PREFIX_V6))
        return ip.compressed, f"{net6.compressed}/{PREFIX_V6}"
    ip4 = ip.ipv4_mapped if isinstance(ip, ipaddress.IPv6Address) else ip
    assert ip4 is not None
    net4 = ipaddress.IPv4Address(int(ip4) >> (32 - PREFIX_V4) << (32 - PREFIX_V4))
    return str(ip4), f"{net4}/{PREFIX_V4}"

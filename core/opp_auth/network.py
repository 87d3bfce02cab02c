"""Every IP address and network helper of the core: parsing, local-network test, prefixes, membership."""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Iterable
from typing import Any

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

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


def unmapped(address: IPAddress) -> IPAddress:
    """The IPv4 address inside an IPv4-mapped IPv6 one (a dual-stack socket's ::ffff:a.b.c.d), else address."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def parse_network(value: Any) -> IPNetwork:
    """An address or CIDR network (host bits tolerated: 192.168.1.10/24 is the /24); ValueError when neither."""
    if isinstance(value, (ipaddress.IPv4Network, ipaddress.IPv6Network)):
        return value
    return ipaddress.ip_network(str(value).strip(), strict=False)


def parse_networks(values: Iterable[Any]) -> list[IPNetwork]:
    """Networks from strings or network objects (ValueError on a bad one)."""
    return [parse_network(v) for v in values]


def in_networks(ip: str | None, networks: list[Any]) -> bool:
    """Whether ip is inside one of networks (IPv4-mapped IPv6 counts as IPv4)."""
    if ip is None or not networks:
        return False
    try:
        address = unmapped(ipaddress.ip_address(ip))
    except ValueError:
        return False
    return any(address in net for net in networks if net.version == address.version)


_LOOPBACK_NETWORKS = (
    ipaddress.ip_network("127.0.0.0/8"),
    ipaddress.ip_network("::1/128"),
    ipaddress.ip_network("::ffff:127.0.0.0/104"),
)
_PRIVATE_NETWORKS = (
    ipaddress.ip_network("10.0.0.0/8"),
    ipaddress.ip_network("172.16.0.0/12"),
    ipaddress.ip_network("192.168.0.0/16"),
    ipaddress.ip_network("fd00::/8"),
)
_NAT64_NETWORK = ipaddress.ip_network("64:ff9b::/96")


def is_local_client_address(address: IPAddress) -> bool:
    """Whether an IndieAuth client id's IP is loopback or private (the addresses such a client id may use)."""
    if isinstance(address, ipaddress.IPv6Address) and address.scope_id:
        return False
    return any(address in network for network in _LOOPBACK_NETWORKS) or any(
        address in network for network in _PRIVATE_NETWORKS
    )


def is_public_fetch_address(address: IPAddress) -> bool:
    """Whether the server may fetch from address (a global one, judging any IPv4 address it embeds too)."""
    if isinstance(address, ipaddress.IPv6Address):
        # Addresses embedding an IPv4 one reach that IPv4 host through a
        # translator, so judge the embedded address too.
        embedded = address.ipv4_mapped or address.sixtofour
        if embedded is None and address in _NAT64_NETWORK:
            embedded = ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
        if embedded is not None and not is_public_fetch_address(embedded):
            return False
    return address.is_global and not (
        address.is_private
        or address.is_loopback
        or address.is_link_local
        or address.is_multicast
        or address.is_reserved
        or address.is_unspecified
    )

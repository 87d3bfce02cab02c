"""Client address, scheme and host behind reverse proxies (SPEC 6.5, bug G26 fixed).

``X-Forwarded-For: <client>, <proxy1>, <proxy2>`` is read right to left,
skipping trusted proxies; the first untrusted address is the client, and if
every entry is trusted the left-most one is. ``X-Forwarded-Proto`` has one
element or one per ``X-Forwarded-For`` element; ``X-Forwarded-Host`` replaces
the host. Headers from a peer that is not a trusted proxy, or while proxy
support is off, are ignored with one warning per peer. This module is pure
logic: the middleware applies the result and turns ``ForwardedError`` into 400.
"""

from __future__ import annotations

import ipaddress
import logging
from dataclasses import dataclass

from aiohttp.hdrs import X_FORWARDED_FOR, X_FORWARDED_HOST, X_FORWARDED_PROTO
from multidict import CIMultiDict, CIMultiDictProxy

from ..network import IPAddress, IPNetwork, parse_network, unmapped

_LOGGER = logging.getLogger(__name__)


# Bounds the memory (and log lines) an attacker spraying source addresses,
# e.g. from an IPv6 /64, can cost.
MAX_WARNED_PEERS = 1024


class ForwardedError(Exception):
    """400-worthy problem; str() is the message for the client and log."""


@dataclass(frozen=True)
class Forwarded:
    """What the forwarding headers say about the original request."""

    remote: str
    scheme: str | None
    host: str | None


class _WarnOncePerPeer:
    """Log a warning the first time a peer is seen, for a bounded number of peers."""

    def __init__(self, limit: int) -> None:
        """Remember up to limit peers."""
        self._limit = limit
        self._seen: set[str] = set()
        self._suppressed = False

    def warn(self, peer: str, message: str, *args: object) -> None:
        """Log message unless peer was warned about already."""
        if peer in self._seen:
            return
        if len(self._seen) >= self._limit:
            if not self._suppressed:
                self._suppressed = True
                _LOGGER.warning(
                    "X-Forwarded-For headers ignored from more than %d peers; no further warnings about new peers",
                    self._limit,
                )
            return
        self._seen.add(peer)
        _LOGGER.warning(message, *args)

    def clear(self) -> None:
        """Forget every peer (tests, configuration reload)."""
        self._seen.clear()
        self._suppressed = False


_WARNINGS = _WarnOncePerPeer(MAX_WARNED_PEERS)


def parse_trusted_proxies(values: list[str]) -> list[IPNetwork]:
    """Parse trusted_proxies addresses/networks; ValueError names a bad entry."""
    networks: list[IPNetwork] = []
    for value in values:
        try:
            # Host bits are tolerated: "192.168.1.10/24" plainly means the /24.
            networks.append(parse_network(value))
        except ValueError as err:
            raise ValueError(
                f"Invalid trusted_proxies entry {value!r}: expected an IP address or network such as 172.30.33.0/24"
            ) from err
    return networks


def _is_trusted(address: IPAddress, trusted_proxies: list[IPNetwork]) -> bool:
    """Return True when address is inside one of the trusted networks."""
    # A dual-stack listener reports IPv4 peers as ::ffff:a.b.c.d, which
    # would otherwise never match IPv4 trusted_proxies entries.
    address = unmapped(address)
    return any(address in network for network in trusted_proxies)


def resolve_forwarded(
    peer_ip: str | None,
    headers: CIMultiDictProxy[str] | CIMultiDict[str],
    use_x_forwarded_for: bool,
    trusted_proxies: list[IPNetwork],
) -> Forwarded | None:
    """Return the forwarded client data, or None to keep the socket's."""
    forwarded_for_headers = headers.getall(X_FORWARDED_FOR, [])
    if not forwarded_for_headers or peer_ip is None:
        return None
    try:
        peer = ipaddress.ip_address(peer_ip)
    except ValueError:
        # A unix socket or other non-IP transport: no proxy can be trusted.
        return None

    # The 2021 code promised to block these requests but only warned (G26).
    # Blocking would break setups that merely forgot the option, so the
    # header is ignored (the socket address is used) and the owner is told.
    if not use_x_forwarded_for:
        _WARNINGS.warn(
            str(peer),
            "A request from a reverse proxy was received from %s, but your HTTP "
            "integration is not set-up for reverse proxies; the X-Forwarded-For "
            "header was ignored. Set use_x_forwarded_for and trusted_proxies "
            "under http: to use it",
            peer,
        )
        return None
    if not _is_trusted(peer, trusted_proxies):
        _WARNINGS.warn(
            str(peer),
            "Received X-Forwarded-For header from untrusted proxy %s, headers not "
            "processed; add it to trusted_proxies under http: if it is your proxy",
            peer,
        )
        return None

    if len(forwarded_for_headers) > 1:
        raise ForwardedError(f"Too many headers for X-Forwarded-For: {forwarded_for_headers}")
    # Right to left: the right-most entries were appended by our own proxies.
    try:
        forwarded_for = [ipaddress.ip_address(entry.strip()) for entry in reversed(forwarded_for_headers[0].split(","))]
    except ValueError:
        raise ForwardedError(f"Invalid IP address in X-Forwarded-For: {forwarded_for_headers[0]}") from None

    for index, address in enumerate(forwarded_for):
        if not _is_trusted(address, trusted_proxies):
            client_index = index
            break
    else:
        # Every hop is trusted: the client itself is on a trusted network.
        client_index = len(forwarded_for) - 1
    remote = str(forwarded_for[client_index])

    scheme: str | None = None
    forwarded_proto_headers = headers.getall(X_FORWARDED_PROTO, [])
    if forwarded_proto_headers:
        if len(forwarded_proto_headers) > 1:
            raise ForwardedError(f"Too many headers for X-Forwarded-Proto: {forwarded_proto_headers}")
        forwarded_proto = [proto.strip() for proto in reversed(forwarded_proto_headers[0].split(","))]
        if "" in forwarded_proto:
            raise ForwardedError(f"Empty item received in X-Forwarded-Proto header: {forwarded_proto_headers[0]}")
        if len(forwarded_proto) not in (1, len(forwarded_for)):
            raise ForwardedError(
                "Incorrect number of elements in X-Forwarded-Proto. Expected 1 or "
                f"{len(forwarded_for)}, got {len(forwarded_proto)}: "
                f"{forwarded_proto_headers[0]}"
            )
        # Some proxies (e.g. Kubernetes NGINX ingress) keep only one element.
        scheme = forwarded_proto[0 if len(forwarded_proto) == 1 else client_index]

    host: str | None = None
    forwarded_host_headers = headers.getall(X_FORWARDED_HOST, [])
    if forwarded_host_headers:
        if len(forwarded_host_headers) > 1:
            raise ForwardedError(f"Too many headers for X-Forwarded-Host: {forwarded_host_headers}")
        host = forwarded_host_headers[0].strip()
        if not host:
            raise ForwardedError("Empty value received in X-Forwarded-Host header")

    return Forwarded(remote=remote, scheme=scheme, host=host)

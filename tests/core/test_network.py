"""One module holds the IP and network helpers (opp_auth.network); the rest of the core imports them."""

from __future__ import annotations

import ast
import ipaddress
from pathlib import Path

import pytest

from opp_auth import network

CORE = Path(__file__).resolve().parents[2] / "core" / "opp_auth"


def test_no_other_core_module_builds_networks_or_address_types() -> None:
    """ip_network(...) and the IPv4|IPv6 type unions appear in network.py only."""
    for path in CORE.rglob("*.py"):
        if path.name == "network.py":
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "ip_network":
                raise AssertionError(
                    f"{path.relative_to(CORE)}:{node.lineno} parses networks itself; use opp_auth.network"
                )
            if isinstance(node, ast.BinOp) and isinstance(node.op, ast.BitOr):
                names = {getattr(side, "attr", None) for side in (node.left, node.right)}
                if names & {"IPv4Address", "IPv6Address", "IPv4Network", "IPv6Network"}:
                    raise AssertionError(
                        f"{path.relative_to(CORE)}:{node.lineno} defines an address type; use opp_auth.network"
                    )


@pytest.mark.parametrize(
    ("ip", "inside"),
    [("10.1.2.3", True), ("::ffff:10.1.2.3", True), ("11.0.0.1", False), ("not an ip", False), (None, False)],
)
def test_in_networks_unmaps_ipv4_mapped_addresses(ip: str | None, inside: bool) -> None:
    """A dual-stack socket's ::ffff:a.b.c.d is the IPv4 address it maps."""
    assert network.in_networks(ip, network.parse_networks(["10.0.0.0/8", "fd00::/8"])) is inside


def test_parse_network_tolerates_host_bits_and_refuses_garbage() -> None:
    """192.168.1.10/24 means the /24; a word is a ValueError."""
    assert network.parse_network(" 192.168.1.10/24 ") == ipaddress.ip_network("192.168.1.0/24")
    assert network.parse_network(ipaddress.ip_network("::1/128")) == ipaddress.ip_network("::1/128")
    with pytest.raises(ValueError):
        network.parse_network("localhost")


def test_local_network_and_fetch_rules() -> None:
    """The session rule (link-local is local) and the IndieAuth fetch rule (only global addresses) side by side."""
    assert network.is_local_address("fe80::1") and network.is_local_address("::ffff:192.168.0.2")
    assert not network.is_local_address("203.0.113.7") and not network.is_local_address(None)
    assert network.is_public_fetch_address(ipaddress.ip_address("93.184.216.34"))
    assert not network.is_public_fetch_address(ipaddress.ip_address("::ffff:127.0.0.1"))
    assert not network.is_public_fetch_address(ipaddress.ip_address("64:ff9b::a00:1"))
    assert network.is_local_client_address(ipaddress.ip_address("192.168.1.5"))

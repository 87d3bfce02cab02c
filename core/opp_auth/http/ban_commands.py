"""Administrators' websocket commands to inspect and lift IP bans and login lockouts.

- ``config/auth/bans/list`` → ``[{"ip_address", "banned_at"}]`` (ISO-8601), oldest first.
- ``config/auth/bans/remove`` ``{ip_address}`` → ``null``; lifts the ban now and
  rewrites ``ip_bans.yaml``; error ``not_found`` "IP address is not banned".
- ``config/auth/lockouts/list`` → ``[{"type": "address_and_user"|"user"|"address"|"prefix",
  "ip_address", "username", "failures", "retry_after"}]``: the throttle counters
  refusing attempts right now, longest lock first (``retry_after`` in seconds;
  for ``prefix`` the ``ip_address`` is the network, e.g. ``2001:db8::/64``).
- ``config/auth/lockouts/clear`` ``{ip_address?, username?}`` → ``{"cleared": n}``:
  forgets the matching counters (locked or not), an address's prefix counter
  included; neither key clears everything.
"""

from __future__ import annotations

import ipaddress
from typing import Any

import voluptuous as vol

from ..throttle import PLUGIN_NAME as THROTTLE_PLUGIN_NAME
from .websocket_api import ActiveConnection, CommandError, CommandRegistry, require_admin, websocket_command

BAN_PLUGIN_NAME = "opp_auth.ban"


def _ip(value: Any) -> str:
    """An IP address in its canonical text form."""
    try:
        return str(ipaddress.ip_address(str(value)))
    except ValueError as err:
        raise vol.Invalid(f"'{value}' is not an IP address") from err


def _plugin(conn: ActiveConnection, name: str) -> Any:
    """The running server's ban manager or throttle."""
    plugin = conn.auth.pm.get_plugin(name)
    if plugin is None:
        raise CommandError("not_supported", "Not available in this server")
    return plugin


@require_admin
@websocket_command({vol.Required("type"): "config/auth/bans/list"})
def bans_list(conn: ActiveConnection, msg: dict[str, Any]) -> None:
    """Banned addresses."""
    conn.send_result(msg["id"], _plugin(conn, BAN_PLUGIN_NAME).list_bans())


@require_admin
@websocket_command({vol.Required("type"): "config/auth/bans/remove", vol.Required("ip_address"): _ip})
def bans_remove(conn: ActiveConnection, msg: dict[str, Any]) -> None:
    """Lift a ban."""
    if not _plugin(conn, BAN_PLUGIN_NAME).remove_ban(msg["ip_address"]):
        raise CommandError("not_found", "IP address is not banned")
    conn.send_result(msg["id"])


@require_admin
@websocket_command({vol.Required("type"): "config/auth/lockouts/list"})
def lockouts_list(conn: ActiveConnection, msg: dict[str, Any]) -> None:
    """Current login lockouts."""
    conn.send_result(msg["id"], _plugin(conn, THROTTLE_PLUGIN_NAME).lockouts())


@require_admin
@websocket_command(
    {
        vol.Required("type"): "config/auth/lockouts/clear",
        vol.Optional("ip_address"): _ip,
        vol.Optional("username"): str,
    }
)
def lockouts_clear(conn: ActiveConnection, msg: dict[str, Any]) -> None:
    """Forget failure counters."""
    cleared = _plugin(conn, THROTTLE_PLUGIN_NAME).clear(msg.get("ip_address"), msg.get("username"))
    conn.send_result(msg["id"], {"cleared": cleared})


def register(registry: CommandRegistry) -> None:
    """Add the four commands."""
    for handler in (bans_list, bans_remove, lockouts_list, lockouts_clear):
        registry.register(handler)

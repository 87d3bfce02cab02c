"""Websocket commands of the login history (docs/api.md, "Login history").

- ``auth/login_history`` ``{limit?, before?}`` → ``{"entries": [...], "next": id | null}``: the
  caller's own sign-ins and failed attempts, newest first; ``next`` is the cursor for the
  following page (pass it as ``before``), null on the last page.
- ``config/auth/login_history`` ``{user_id, limit?, before?}`` → the same for any user
  (administrators); error ``not_found`` for an unknown user.
- ``config/auth/login_summary`` → ``{"<user id>": {"last_sign_in": entry | null,
  "recent_failures": n}}`` for every user (administrators: the users page).

``limit`` is 1 to 100 (default 20); ``before`` an entry id (a positive integer). A cursor
only ever narrows the caller's own (or, for an administrator, the named user's) entries.
"""

from __future__ import annotations

from typing import Any

import voluptuous as vol

from ..history import DEFAULT_PAGE, MAX_PAGE
from .websocket_api import (
    ActiveConnection,
    CommandError,
    CommandRegistry,
    Unauthorized,
    require_admin,
    require_user,
    websocket_command,
)

MAX_CURSOR = 2**53


def _count(maximum: int) -> Any:
    """A positive integer up to maximum (a JSON true is no number)."""

    def check(value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= maximum:
            raise vol.Invalid(f"expected an integer from 1 to {maximum}")
        return value

    return check


PAGE = {
    vol.Optional("limit", default=DEFAULT_PAGE): _count(MAX_PAGE),
    vol.Optional("before"): _count(MAX_CURSOR),
}


def _page(conn: ActiveConnection, user_id: str, msg: dict[str, Any]) -> dict[str, Any]:
    """One page of a user's history, with the cursor of the next."""
    limit = msg["limit"]
    found = conn.auth.login_history.entries(user_id, limit=limit + 1, before=msg.get("before"))
    entries = found[:limit]
    return {"entries": entries, "next": entries[-1]["id"] if len(found) > limit else None}


@require_user()
@websocket_command({vol.Required("type"): "auth/login_history", vol.Optional("user_id"): str, **PAGE})
async def login_history(conn: ActiveConnection, msg: dict[str, Any]) -> None:
    """The caller's own history (a user_id other than the caller's is refused, never answered)."""
    if msg.get("user_id", conn.user.id) != conn.user.id:
        raise Unauthorized("auth/login_history shows your own sign-ins; administrators use config/auth/login_history")
    conn.send_result(msg["id"], _page(conn, conn.user.id, msg))


@require_admin
@websocket_command({vol.Required("type"): "config/auth/login_history", vol.Required("user_id"): str, **PAGE})
async def config_login_history(conn: ActiveConnection, msg: dict[str, Any]) -> None:
    """Any user's history."""
    if await conn.auth.users.async_get_user(msg["user_id"]) is None:
        raise CommandError("not_found", "User not found")
    conn.send_result(msg["id"], _page(conn, msg["user_id"], msg))


@require_admin
@websocket_command({vol.Required("type"): "config/auth/login_summary"})
async def login_summary(conn: ActiveConnection, msg: dict[str, Any]) -> None:
    """Every user's last sign-in and recent failures count."""
    history = conn.auth.login_history
    conn.send_result(msg["id"], {user.id: history.summary(user.id) for user in await conn.auth.users.async_get_users()})


def register(registry: CommandRegistry) -> None:
    """Register the login history commands."""
    for handler in (login_history, config_login_history, login_summary):
        registry.register(handler)

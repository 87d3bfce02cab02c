"""Helpers shared by the views: JSON responses, body validation, the auth requirement, app keys."""

from __future__ import annotations

import functools
import json
import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import voluptuous as vol
from aiohttp import web

if TYPE_CHECKING:
    from ..manager import AuthManager

_LOGGER = logging.getLogger(__name__)

AUTH_KEY: web.AppKey[AuthManager] = web.AppKey("opp_auth")
CONFIG_KEY: web.AppKey[Any] = web.AppKey("opp_auth_config")
CLIENT_SESSION_KEY: web.AppKey[Any] = web.AppKey("opp_auth_client_session")

KEY_AUTHENTICATED: web.RequestKey[bool] = web.RequestKey("opp_authenticated", bool)
KEY_USER: web.RequestKey[Any] = web.RequestKey("opp_user", object)
KEY_REFRESH_TOKEN_ID: web.RequestKey[str] = web.RequestKey("opp_refresh_token_id", str)
KEY_CLIENT_IP: web.RequestKey[str | None] = web.RequestKey("opp_client_ip")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def json_response(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    """A JSON response."""
    return web.Response(
        body=json.dumps(data, default=str, separators=(",", ":")).encode(),
        status=status,
        content_type="application/json",
        headers=headers,
    )


def json_message(message: str, status: int = 200, code: str | None = None) -> web.Response:
    """Open Peer Power's {"message": ..., "code": ...} shape."""
    data: dict[str, Any] = {"message": message}
    if code is not None:
        data["code"] = code
    return json_response(data, status)


def auth_of(request: web.Request) -> AuthManager:
    """The request's auth manager."""
    return request.app[AUTH_KEY]


def client_ip(request: web.Request) -> str | None:
    """The client address after reverse-proxy handling (use this, never a raw header)."""
    return request[KEY_CLIENT_IP] if KEY_CLIENT_IP in request else request.remote


def request_user(request: web.Request) -> Any:
    """The authenticated user of a request, or None."""
    return request.get(KEY_USER) if request.get(KEY_AUTHENTICATED) else None


def require_auth(handler: Handler) -> Handler:
    """Answer 401 unless the auth middleware authenticated the request."""

    @functools.wraps(handler)
    async def wrapper(request: web.Request) -> web.StreamResponse:
        """Check then call."""
        if not request.get(KEY_AUTHENTICATED):
            return json_message("Unauthorized", 401)
        return await handler(request)

    wrapper.requires_auth = True  # type: ignore[attr-defined]
    return wrapper


def require_admin(handler: Handler) -> Handler:
    """Answer 401 unless the user is authenticated and an administrator."""

    @functools.wraps(handler)
    async def wrapper(request: web.Request) -> web.StreamResponse:
        """Check then call."""
        user = request.get(KEY_USER)
        if not request.get(KEY_AUTHENTICATED) or user is None or not user.is_admin:
            return json_message("Unauthorized", 401)
        return await handler(request)

    return wrapper


async def read_json(request: web.Request, schema: vol.Schema) -> tuple[Any, web.Response | None]:
    """Parse and validate a JSON body: (data, None) or (None, a 400 response)."""
    try:
        body = await request.read()
        data = json.loads(body) if body else None
    except (ValueError, UnicodeDecodeError):
        _LOGGER.error("Invalid JSON received")
        return None, json_message("Invalid JSON.", 400)
    try:
        return schema(data), None
    except vol.Invalid as err:
        _LOGGER.error("Data does not match schema: %s", err)
        return None, json_message(f"Message format incorrect: {err}", 400)

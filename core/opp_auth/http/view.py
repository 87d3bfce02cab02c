"""Helpers shared by the views: JSON responses, body validation, the auth requirement, app keys."""

from __future__ import annotations

import functools
import inspect
import json
import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl

import voluptuous as vol
from aiohttp import BodyPartReader, hdrs, web
from aiohttp.helpers import parse_mimetype
from multidict import MultiDict, MultiDictProxy

from .. import validation
from ..validation import (
    CODE_INVALID_FORMAT,
    FORM_CHARSETS,
    MAX_FORM_BYTES,
    MAX_FORM_FIELDS,
    MAX_JSON_BODY_BYTES,
    InvalidData,
)

if TYPE_CHECKING:
    from ..manager import AuthManager

_LOGGER = logging.getLogger(__name__)

AUTH_KEY: web.AppKey[AuthManager] = web.AppKey("opp_auth")
CONFIG_KEY: web.AppKey[Any] = web.AppKey("opp_auth_config")
CLIENT_SESSION_KEY: web.AppKey[Any] = web.AppKey("opp_auth_client_session")

# What the pipeline found out about a request is kept in these attributes of it (not request keys:
# an attribute costs nothing to set or read, a key is two Python calls each way on the hottest path).
# The application's requests (application.OppRequest, in slots) have the first three from the moment
# the pipeline takes them (False, None, None until authentication decides) and the two addresses once
# it has read them (the filter's refusal comes first); the helpers below also answer for any other
# request, which nothing has authenticated.
ATTR_AUTHENTICATED = "opp_authenticated"
ATTR_USER = "opp_user"
ATTR_REFRESH_TOKEN_ID = "opp_refresh_token_id"
ATTR_CLIENT_IP = "opp_client_ip"
ATTR_PEER_IP = "opp_peer_ip"
REQUEST_ATTRS = (ATTR_AUTHENTICATED, ATTR_USER, ATTR_REFRESH_TOKEN_ID, ATTR_CLIENT_IP, ATTR_PEER_IP)
_UNSET: Any = object()

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
    found = getattr(request, ATTR_CLIENT_IP, _UNSET)
    return request.remote if found is _UNSET else found


def peer_address(request: web.Request) -> str | None:
    """The direct peer of the connection, never changed by X-Forwarded-For (a reverse proxy's own address)."""
    found = getattr(request, ATTR_PEER_IP, _UNSET)
    return request.remote if found is _UNSET else found


def request_user(request: web.Request) -> Any:
    """The authenticated user of a request, or None."""
    return getattr(request, ATTR_USER, None) if is_authenticated(request) else None


def is_authenticated(request: web.Request) -> bool:
    """Whether the pipeline let the request in (bearer token, signed path or a plugin authenticator)."""
    return getattr(request, ATTR_AUTHENTICATED, False) is True


def request_refresh_token_id(request: web.Request) -> str | None:
    """The id of the refresh token behind the request's credential (None for a plugin-authenticated user)."""
    return getattr(request, ATTR_REFRESH_TOKEN_ID, None) if is_authenticated(request) else None


def handler_arity(func: Callable[..., Any]) -> int | None:
    """How many positional arguments func requires (None when it cannot be told)."""
    try:
        signature = inspect.signature(func)
    except (TypeError, ValueError):
        return None
    return sum(
        1
        for p in signature.parameters.values()
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) and p.default is p.empty
    )


WS_GUARD_MARKERS = ("_ws_command", "_ws_admin", "_ws_user_guard")


def _check_http_handler(handler: Callable[..., Any], guard: str) -> None:
    """Refuse, at decoration, to guard what is not an aiohttp handler ``(request)``."""
    if any(hasattr(handler, marker) for marker in WS_GUARD_MARKERS) or handler_arity(handler) not in (None, 1):
        raise TypeError(
            f"opp_auth.{guard} guards HTTP handlers (request) -> response, but "
            f"{getattr(handler, '__qualname__', handler)!r} looks like a websocket command handler "
            f"(connection, msg): guard it with opp_auth.websocket.require_admin / require_user instead."
        )


def http_require_auth(handler: Handler) -> Handler:
    """HTTP guard: answer 401 unless the request was authenticated (any active user)."""
    _check_http_handler(handler, "http_require_auth")

    @functools.wraps(handler)
    async def wrapper(request: web.Request) -> web.StreamResponse:
        """Check then call."""
        if not is_authenticated(request):
            return json_message("Unauthorized", 401)
        return await handler(request)

    wrapper.requires_auth = True  # type: ignore[attr-defined]
    wrapper._http_guard = "http_require_auth"  # type: ignore[attr-defined]
    return wrapper


def http_require_admin(handler: Handler) -> Handler:
    """HTTP guard: answer 401 unless the request was authenticated as an administrator."""
    _check_http_handler(handler, "http_require_admin")

    @functools.wraps(handler)
    async def wrapper(request: web.Request) -> web.StreamResponse:
        """Check then call."""
        user = request_user(request)
        if user is None or not user.is_admin:
            return json_message("Unauthorized", 401)
        return await handler(request)

    wrapper.requires_auth = True  # type: ignore[attr-defined]
    wrapper._http_guard = "http_require_admin"  # type: ignore[attr-defined]
    return wrapper


# The core's views use the short names.
require_auth = http_require_auth
require_admin = http_require_admin


def invalid_format(err: InvalidData) -> web.Response:
    """The 400 answer to input that breaks a limit of opp_auth.validation."""
    return json_message(f"Invalid JSON: {err}", 400, CODE_INVALID_FORMAT)


async def read_json(request: web.Request, schema: vol.Schema) -> tuple[Any, web.Response | None]:
    """Parse and validate a JSON body: (data, None) or (None, a 4xx response).

    The limits of opp_auth.validation apply before the body is parsed: at most
    MAX_JSON_BODY_BYTES (else 413), nested at most MAX_JSON_DEPTH deep, UTF-8,
    strings of Unicode scalar values at most MAX_STRING_LENGTH long (else 400
    ``{"message": "Invalid JSON: ...", "code": "invalid_format"}``).
    """
    length = request.content_length
    if length is not None and length > MAX_JSON_BODY_BYTES:
        return None, _too_large(MAX_JSON_BODY_BYTES)
    try:
        body = await request.read()
    except web.HTTPRequestEntityTooLarge:
        return None, _too_large(request.client_max_size)
    if len(body) > MAX_JSON_BODY_BYTES:
        return None, _too_large(MAX_JSON_BODY_BYTES)
    try:
        data = validation.loads(body, what="body") if body else None
    except InvalidData as err:
        _LOGGER.warning("Refused a JSON body: %s", err)
        return None, invalid_format(err)
    except ValueError:
        _LOGGER.error("Invalid JSON received")
        return None, json_message("Invalid JSON.", 400)
    try:
        return schema(data), None
    except vol.Invalid as err:
        _LOGGER.error("Data does not match schema: %s", err)
        return None, json_message(f"Message format incorrect: {err}", 400)


def _too_large(limit: int) -> web.Response:
    """413 in the API's JSON shape."""
    return json_message(f"Request body too large: the limit is {limit} bytes", 413)


class FormError(Exception):
    """A form post that is refused: status (400 or 413) and a message for the client."""

    def __init__(self, status: int, message: str) -> None:
        """Keep status and message."""
        super().__init__(message)
        self.status = status
        self.message = message


_FORM_TYPES = ("", "application/x-www-form-urlencoded", "multipart/form-data")
_IDENTITY_ENCODINGS = frozenset({"", "7bit", "8bit", "binary", "identity"})


async def read_form(request: web.Request) -> MultiDictProxy[str]:
    """The fields of a form post (urlencoded or multipart), in order, repeats kept; raises FormError.

    Unlike aiohttp's request.post(), every part must be a plain field in
    UTF-8 (or ASCII): a declared charset such as ``unicode_escape`` could
    decode to lone surrogates, so it is refused (400), as are file parts,
    nested multiparts and compressed or transfer-encoded parts. At most
    MAX_FORM_FIELDS fields and MAX_FORM_BYTES bytes (413); every name and
    value passes opp_auth.validation.check_string. Other content types give
    no fields.
    """
    if request.content_type not in _FORM_TYPES:
        return MultiDictProxy(MultiDict())
    length = request.content_length
    if length is not None and length > MAX_FORM_BYTES:
        raise FormError(413, f"Request body too large: the limit is {MAX_FORM_BYTES} bytes")
    if request.content_type == "multipart/form-data":
        pairs = await _read_multipart(request)
    else:
        pairs = await _read_urlencoded(request)
    fields: MultiDict[str] = MultiDict()
    for name, value in pairs:
        try:
            validation.check_string(name, what="A form field name")
            validation.check_string(value, what=f"Form field {name!r}")
        except InvalidData as err:
            raise FormError(400, str(err)) from None
        fields.add(name, value)
    return MultiDictProxy(fields)


def _charset_allowed(charset: str | None) -> bool:
    """No charset (UTF-8 by default), or UTF-8 / ASCII by one of their names."""
    return charset is None or charset.strip().lower() in FORM_CHARSETS


async def _read_urlencoded(request: web.Request) -> list[tuple[str, str]]:
    """Fields of an application/x-www-form-urlencoded body."""
    if not _charset_allowed(request.charset):
        raise FormError(400, f"Form charset {request.charset} is not accepted: send UTF-8")
    try:
        body = await request.read()
    except web.HTTPRequestEntityTooLarge:
        raise FormError(413, f"Request body too large: the limit is {MAX_FORM_BYTES} bytes") from None
    if len(body) > MAX_FORM_BYTES:
        raise FormError(413, f"Request body too large: the limit is {MAX_FORM_BYTES} bytes")
    try:
        return parse_qsl(
            body.decode("utf-8").rstrip(),
            keep_blank_values=True,
            encoding="utf-8",
            errors="strict",
            max_num_fields=MAX_FORM_FIELDS,
        )
    except UnicodeDecodeError:
        raise FormError(400, "The form is not valid UTF-8") from None
    except ValueError:
        raise FormError(413, f"Too many form fields: the limit is {MAX_FORM_FIELDS}") from None


async def _read_multipart(request: web.Request) -> list[tuple[str, str]]:
    """Fields of a multipart/form-data body, refusing anything but plain UTF-8 text fields."""
    pairs: list[tuple[str, str]] = []
    size = 0
    try:
        reader = await request.multipart()
        while (part := await reader.next()) is not None:
            if not isinstance(part, BodyPartReader):
                raise FormError(400, "Nested multipart forms are not accepted")
            if part.filename is not None:
                raise FormError(400, "File uploads are not accepted")
            if part.name is None:
                raise FormError(400, "A form part has no name")
            if len(pairs) >= MAX_FORM_FIELDS:
                raise FormError(413, f"Too many form fields: the limit is {MAX_FORM_FIELDS}")
            content_type = part.headers.get(hdrs.CONTENT_TYPE)
            if content_type is not None:
                mime = parse_mimetype(content_type)
                if (mime.type, mime.subtype) != ("text", "plain"):
                    raise FormError(400, f"Form field {part.name!r} is {mime.type}/{mime.subtype}, not text/plain")
                if not _charset_allowed(mime.parameters.get("charset")):
                    raise FormError(
                        400, f"Form field {part.name!r} has charset {mime.parameters['charset']}: send UTF-8"
                    )
            for header in (hdrs.CONTENT_ENCODING, hdrs.CONTENT_TRANSFER_ENCODING):
                if part.headers.get(header, "").strip().lower() not in _IDENTITY_ENCODINGS:
                    raise FormError(400, f"Form field {part.name!r} has a {header} the server does not accept")
            raw = bytearray()
            while chunk := await part.read_chunk():
                size += len(chunk)
                if size > MAX_FORM_BYTES:
                    raise FormError(413, f"Request body too large: the limit is {MAX_FORM_BYTES} bytes")
                raw.extend(chunk)
            try:
                pairs.append((part.name, raw.decode("utf-8")))
            except UnicodeDecodeError:
                raise FormError(400, f"Form field {part.name!r} is not valid UTF-8") from None
    except FormError:
        raise
    except web.HTTPRequestEntityTooLarge:
        raise FormError(413, f"Request body too large: the limit is {MAX_FORM_BYTES} bytes") from None
    except Exception as err:  # noqa: BLE001 - aiohttp raises assorted errors on malformed multipart bodies
        raise FormError(400, f"Malformed multipart form: {err}") from None
    return pairs

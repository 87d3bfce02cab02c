"""The websocket API at /api/websocket: auth phase, command registry, result envelope.

Protocol (Open Peer Power's, so existing clients work unchanged):

1. The server sends ``{"type": "auth_required", "ha_version": "<version>"}``.
2. Within 10 seconds the client sends ``{"type": "auth", "access_token": "..."}``.
   Answer: ``{"type": "auth_ok", "ha_version": ...}``, or ``{"type":
   "auth_invalid", "message": ...}`` and the connection closes. The message
   is "Too many login attempts, try again in N seconds" while the address is
   throttled (opp_auth.throttle), and "Too many connections" when the user
   already has 32 open.
3. Commands: ``{"id": <int, increasing>, "type": "<command>", ...}``. Every
   command gets exactly one answer: ``{"id", "type": "result", "success":
   true, "result": ...}`` or ``{"id", "type": "result", "success": false,
   "error": {"code", "message"}}``.

Limits (opp_auth.validation): a frame nested deeper than 32 levels is never
parsed; the connection closes with code 1007 and the reason. A command
holding a lone surrogate, a string over 65,536 characters or a number JSON
cannot spell (NaN, Infinity) is answered ``invalid_format`` and nothing of
it is kept. Frames are at most 4 MiB.

A connection is closed within a second when the refresh token it
authenticated with is deleted, or its user is deactivated or removed. The auth
phase and every later message ask the one access decision
(``opp_auth.sessions.AccessPolicy``: user active, ``local_only``, refresh token
expiry, the provider's per-request check); a message it refuses is answered
``unauthorized`` and the connection is closed.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeGuard

import voluptuous as vol
from aiohttp import WSCloseCode, WSMsgType, web

from ..events import Origin, set_origin
from ..models import RefreshToken, User
from ..plugins import hookimpl
from ..storage import STORAGE_UNAVAILABLE_MESSAGE, StorageError
from ..throttle import too_many_attempts_message
from ..validation import InvalidData, check_json_text, check_value
from .view import auth_of, client_ip, handler_arity

if TYPE_CHECKING:
    from ..context import PluginContext
    from ..manager import AuthManager
    from ..store import RemoteChanges

_LOGGER = logging.getLogger(__name__)

AUTH_TIMEOUT = 10.0
MAX_PENDING_MESSAGES = 512
MAX_OUTGOING = 4096
MAX_MESSAGE_SIZE = 4 * 1024 * 1024
RATE_PER_SECOND = 200.0
RATE_BURST = 400.0
MAX_CONNECTIONS_PER_USER = 32

ERR_ID_REUSE = "id_reuse"
ERR_INVALID_FORMAT = "invalid_format"
ERR_NOT_FOUND = "not_found"
ERR_NOT_SUPPORTED = "not_supported"
ERR_UNKNOWN_COMMAND = "unknown_command"
ERR_UNKNOWN_ERROR = "unknown_error"
ERR_UNAUTHORIZED = "unauthorized"
ERR_TIMEOUT = "timeout"
ERR_RATE_LIMITED = "rate_limited"

WS_COMMANDS_KEY: web.AppKey[CommandRegistry] = web.AppKey("opp_auth_ws_commands")
WS_CONNECTIONS_KEY: web.AppKey[ConnectionTracker] = web.AppKey("opp_auth_ws_connections")

AUTH_MESSAGE_SCHEMA = vol.Schema(
    {
        vol.Required("type"): "auth",
        vol.Exclusive("api_password", "auth"): str,
        vol.Exclusive("access_token", "auth"): str,
    }
)


def _is_message_id(value: Any) -> TypeGuard[int]:
    """A command id is an integer; JSON true and false are not (Python counts bool as int)."""
    return isinstance(value, int) and not isinstance(value, bool)


def _message_id(value: Any) -> int:
    """The voluptuous form of _is_message_id."""
    if not _is_message_id(value):
        raise vol.Invalid("expected int")
    return int(value)


BASE_COMMAND_SCHEMA = vol.Schema({vol.Required("id"): _message_id, vol.Required("type"): str}, extra=vol.ALLOW_EXTRA)

CommandHandler = Callable[["ActiveConnection", dict[str, Any]], Awaitable[None] | None]


class CommandError(Exception):
    """Raise inside a command handler to answer with this error code and message."""

    def __init__(self, code: str, message: str) -> None:
        """Keep code and message."""
        super().__init__(message)
        self.code = code
        self.message = message


class Unauthorized(CommandError):
    """The user may not run this command."""

    def __init__(self, message: str = "Unauthorized") -> None:
        """Unauthorized, with the standard message."""
        super().__init__(ERR_UNAUTHORIZED, message)


def websocket_command(schema: dict[Any, Any]) -> Callable[[CommandHandler], CommandHandler]:
    """Attach a command's schema (a dict with ``vol.Required("type"): "<name>"``) to its handler."""

    def decorate(func: CommandHandler) -> CommandHandler:
        """Store the compiled schema and the command name on the function."""
        command = next(value for key, value in schema.items() if str(key) == "type")
        func._ws_schema = BASE_COMMAND_SCHEMA.extend(schema)  # type: ignore[attr-defined]
        func._ws_command = command  # type: ignore[attr-defined]
        return func

    return decorate


def _check_ws_handler(func: Callable[..., Any], guard: str) -> None:
    """Refuse, at decoration or registration, what is not a websocket command handler ``(connection, msg)``."""
    if hasattr(func, "_http_guard") or handler_arity(func) not in (None, 2):
        raise TypeError(
            f"opp_auth.{guard} guards websocket command handlers (connection, msg), but "
            f"{getattr(func, '__qualname__', func)!r} looks like an HTTP handler (request): "
            f"guard it with opp_auth.http_require_auth / http_require_admin instead."
        )


def ws_require_admin(func: CommandHandler) -> CommandHandler:
    """Websocket guard: only administrators (and the owner) may run the command."""
    _check_ws_handler(func, "websocket.require_admin")
    func._ws_admin = True  # type: ignore[attr-defined]
    return func


def ws_require_user(
    *, allow_system_user: bool = True, only_active_user: bool = True
) -> Callable[[CommandHandler], CommandHandler]:
    """Websocket guard by the kind of user (Open Peer Power's ws_require_user)."""

    def decorate(func: CommandHandler) -> CommandHandler:
        """Record the guard."""
        _check_ws_handler(func, "websocket.require_user")
        func._ws_user_guard = (allow_system_user, only_active_user)  # type: ignore[attr-defined]
        return func

    return decorate


# The core's commands use the short names.
require_admin = ws_require_admin
require_user = ws_require_user


class CommandRegistry:
    """Commands by type; plugins add theirs through opp_auth_register_websocket_commands."""

    def __init__(self) -> None:
        """Empty registry."""
        self.commands: dict[str, tuple[CommandHandler, vol.Schema]] = {}

    def register(self, handler: CommandHandler, schema: dict[Any, Any] | vol.Schema | None = None) -> None:
        """Add a command; the schema comes from @websocket_command unless given."""
        _check_ws_handler(handler, "websocket.command")
        if schema is not None:
            handler = websocket_command(schema if isinstance(schema, dict) else schema.schema)(handler)
        compiled = getattr(handler, "_ws_schema", None)
        command = getattr(handler, "_ws_command", None)
        if compiled is None or not isinstance(command, str):
            raise ValueError(f"{handler!r} has no websocket command schema with a 'type'")
        if command in self.commands:
            raise ValueError(f"Websocket command {command} registered twice")
        self.commands[command] = (handler, compiled)

    __call__ = register


class ConnectionTracker:
    """Open connections by user, so revocations can close them (G6)."""

    def __init__(self) -> None:
        """No connections yet."""
        self.by_user: dict[str, set[ActiveConnection]] = {}
        self.total = 0

    def add(self, conn: ActiveConnection) -> None:
        """Track a connection that passed the auth phase."""
        conns = self.by_user.setdefault(conn.user.id, set())
        if conn not in conns:
            conns.add(conn)
            self.total += 1

    def discard(self, conn: ActiveConnection) -> None:
        """Stop tracking."""
        conns = self.by_user.get(conn.user.id)
        if conns is not None and conn in conns:
            conns.remove(conn)
            self.total -= 1
            if not conns:
                del self.by_user[conn.user.id]

    def count_all(self) -> int:
        """Open connections of every user."""
        return self.total

    def count(self, user_id: str) -> int:
        """Open connections of a user."""
        return len(self.by_user.get(user_id, ()))

    def close_where(self, user_id: str, predicate: Callable[[ActiveConnection], bool], reason: str) -> None:
        """Close a user's connections that match."""
        for conn in list(self.by_user.get(user_id, ())):
            if predicate(conn):
                conn.close(reason)

    def remote_changes(self, changes: RemoteChanges) -> None:
        """Another server revoked tokens, removed or deactivated users: end their sessions here too."""
        for token in changes.tokens:
            self.opp_auth_refresh_token_removed(None, token)  # type: ignore[arg-type]
        for user in changes.removed_users:
            self.opp_auth_user_removed(None, user)  # type: ignore[arg-type]
        for user in changes.updated_users:
            self.opp_auth_user_updated(None, user)  # type: ignore[arg-type]

    @hookimpl
    def opp_auth_refresh_token_removed(self, auth: AuthManager, refresh_token: RefreshToken) -> None:
        """A deleted refresh token ends the sessions it authenticated."""
        self.close_where(
            refresh_token.user.id, lambda c: c.refresh_token_id == refresh_token.id, "refresh token revoked"
        )

    @hookimpl
    def opp_auth_user_removed(self, auth: AuthManager, user: User) -> None:
        """A removed user is disconnected."""
        self.close_where(user.id, lambda c: True, "user removed")

    @hookimpl
    def opp_auth_user_updated(self, auth: AuthManager, user: User) -> None:
        """A deactivated user is disconnected."""
        if not user.is_active:
            self.close_where(user.id, lambda c: True, "user deactivated")


class ActiveConnection:
    """An authenticated websocket connection."""

    def __init__(
        self, auth: AuthManager, ws: web.WebSocketResponse, user: User, refresh_token_id: str, remote: str | None
    ) -> None:
        """Bind the connection to its user and token."""
        self.auth = auth
        self.ws = ws
        self.user = user
        self.refresh_token_id = refresh_token_id
        self.remote = remote
        self.outgoing: asyncio.Queue[str | None] = asyncio.Queue()
        self.last_id = 0
        self.closing = False
        self._close_requested = False
        # How the writer closes the socket: code and reason the client is told (None: a normal close).
        self.close_code: int | None = None
        self.close_reason = ""
        self.data: dict[str, Any] = {}

    def send_message(self, message: dict[str, Any]) -> None:
        """Queue a message to the client (the writer task sends it)."""
        if self.closing:
            return
        if self.outgoing.qsize() >= MAX_OUTGOING:
            self.close("client is not reading its messages")
            return
        self.outgoing.put_nowait(json.dumps(message, default=str, separators=(",", ":")))

    def send_result(self, msg_id: int, result: Any = None) -> None:
        """Answer a command successfully."""
        self.send_message({"id": msg_id, "type": "result", "success": True, "result": result})

    def send_result_json(self, msg_id: int, result_json: str) -> None:
        """Answer a command with a result already encoded as JSON text (a large list built in one pass).

        The message is the one send_result would send; result_json must be valid JSON.
        """
        if self.closing:
            return
        if self.outgoing.qsize() >= MAX_OUTGOING:
            self.close("client is not reading its messages")
            return
        self.outgoing.put_nowait(f'{{"id":{json.dumps(msg_id)},"type":"result","success":true,"result":{result_json}}}')

    def send_error(self, msg_id: int, code: str, message: str) -> None:
        """Answer a command with an error."""
        self.send_message(
            {"id": msg_id, "type": "result", "success": False, "error": {"code": code, "message": message}}
        )

    def close(self, reason: str, code: int | None = None) -> None:
        """Close the connection soon; a reply the current handler sends right after still goes out.

        With a code, the close frame carries it and the reason (clients see why).
        """
        if self._close_requested:
            return
        self._close_requested = True
        if code is not None:
            self.close_code, self.close_reason = code, reason
        _LOGGER.debug("Closing websocket of %s: %s", self.user.id, reason)
        asyncio.get_running_loop().call_soon(self._finish_close)

    def _finish_close(self) -> None:
        """Stop accepting messages and tell the writer to end."""
        self.closing = True
        self.outgoing.put_nowait(None)

    @property
    def context(self) -> PluginContext:
        """What a plugin's command may ask of the server (``conn.auth`` is the core's own)."""
        return self.auth.context

    @property
    def refresh_token(self) -> RefreshToken | None:
        """The connection's refresh token (None once revoked)."""
        return self.auth.store.get_refresh_token(self.refresh_token_id)


async def _authenticate(request: web.Request, ws: web.WebSocketResponse, auth: AuthManager) -> ActiveConnection | None:
    """Run the auth phase; the tracked connection, or None when the client failed it (the caller closes)."""
    await ws.send_json({"type": "auth_required", "ha_version": auth.version})
    try:
        msg = await ws.receive(timeout=AUTH_TIMEOUT)
    except TimeoutError:
        _LOGGER.warning("Did not receive auth message within %g seconds", AUTH_TIMEOUT)
        return None
    if msg.type != WSMsgType.TEXT:
        return None
    try:
        check_json_text(msg.data)
        data = AUTH_MESSAGE_SCHEMA(json.loads(msg.data))
        check_value(data, what="message")
    except (ValueError, vol.Invalid) as err:
        error = str(err) if isinstance(err, (vol.Invalid, InvalidData)) else "Invalid JSON"
        await ws.send_json({"type": "auth_invalid", "message": f"Auth message incorrectly formatted: {error}"})
        return None
    wait = auth.events.login_retry_after(client_ip(request), None)
    if wait > 0:
        auth.events.login_failed(client_ip(request), None, None, "throttled", plugins=False)
        await ws.send_json({"type": "auth_invalid", "message": too_many_attempts_message(wait)})
        return None
    refresh_token = (
        auth.access_tokens.validate_access_token(data["access_token"], client_ip(request))
        if "access_token" in data
        else None
    )
    if refresh_token is None:
        await ws.send_json({"type": "auth_invalid", "message": "Invalid access token or password"})
        auth.events.login_failed(client_ip(request), None, None, "invalid_token")
        return None
    tracker = request.app[WS_CONNECTIONS_KEY]
    if tracker.count(refresh_token.user.id) >= MAX_CONNECTIONS_PER_USER:
        # Not a failed login: the token is good, the user has simply opened too many.
        await ws.send_json({"type": "auth_invalid", "message": "Too many connections"})
        return None
    # Counted before the next await, so simultaneous connects cannot pass the cap together.
    conn = ActiveConnection(auth, ws, refresh_token.user, refresh_token.id, client_ip(request))
    tracker.add(conn)
    try:
        await ws.send_json({"type": "auth_ok", "ha_version": auth.version})
    except BaseException:
        tracker.discard(conn)
        raise
    auth.known_addresses.add(refresh_token.user.id, client_ip(request))
    auth.events.login_succeeded(client_ip(request), refresh_token.user, None)
    # The commands of this connection run in tasks of this one's context: their events name this origin.
    set_origin(
        Origin(
            via="websocket",
            remote_address=client_ip(request),
            user_agent=request.headers.get("User-Agent"),
            actor_id=refresh_token.user.id,
        )
    )
    return conn


async def websocket_handler(request: web.Request) -> web.WebSocketResponse:
    """GET /api/websocket."""
    auth = auth_of(request)
    ws = web.WebSocketResponse(heartbeat=55, max_msg_size=MAX_MESSAGE_SIZE)
    await ws.prepare(request)
    conn = await _authenticate(request, ws, auth)
    if conn is None:
        await ws.close()
        return ws
    tracker = request.app[WS_CONNECTIONS_KEY]
    writer = asyncio.ensure_future(_writer(conn))
    tasks: set[asyncio.Future[None]] = set()
    registry = request.app[WS_COMMANDS_KEY]
    allowance, last = RATE_BURST, time.monotonic()
    try:
        while not conn._close_requested:
            receive = asyncio.ensure_future(ws.receive())
            done, _ = await asyncio.wait({receive, writer}, return_when=asyncio.FIRST_COMPLETED)
            if receive not in done:
                receive.cancel()
                break
            msg = receive.result()
            if msg.type in (WSMsgType.CLOSE, WSMsgType.CLOSING, WSMsgType.CLOSED, WSMsgType.ERROR):
                break
            if msg.type != WSMsgType.TEXT:
                conn.close("binary message")
                break
            now = time.monotonic()
            allowance = min(RATE_BURST, allowance + (now - last) * RATE_PER_SECOND)
            last = now
            try:
                # Before parsing: nesting that would exhaust the parser's stack is refused unread.
                check_json_text(msg.data)
                payload = json.loads(msg.data)
            except InvalidData as err:
                conn.close(f"Invalid JSON: {err}", WSCloseCode.INVALID_TEXT)
                break
            except ValueError:
                conn.close("invalid JSON")
                break
            for message in payload if isinstance(payload, list) else [payload]:
                # Every message asks the same access decision as the auth phase (and HTTP):
                # user active, local_only, the token's expiry, the provider's per-request check.
                refusal = auth.access_tokens.session_refusal(conn.refresh_token_id, conn.remote)
                if refusal is not None:
                    msg_id = message.get("id") if isinstance(message, dict) else None
                    if _is_message_id(msg_id):
                        conn.send_error(msg_id, ERR_UNAUTHORIZED, f"Access refused: {refusal}")
                    conn.close(refusal)
                    break
                if allowance < 1:
                    msg_id = message.get("id") if isinstance(message, dict) else None
                    if _is_message_id(msg_id):
                        conn.send_error(msg_id, ERR_RATE_LIMITED, "Too many messages, slow down")
                    continue
                allowance -= 1
                if len(tasks) >= MAX_PENDING_MESSAGES:
                    conn.close("too many commands in progress")
                    break
                task = _dispatch(conn, registry, message)
                if task is not None:
                    tasks.add(task)
                    task.add_done_callback(tasks.discard)
    finally:
        tracker.discard(conn)
        conn.close("connection ended")
        for task in tasks:
            task.cancel()
        with contextlib.suppress(Exception):
            await writer
        await ws.close()
    return ws


async def _writer(conn: ActiveConnection) -> None:
    """Send queued messages in order; None ends the connection."""
    while True:
        text = await conn.outgoing.get()
        if text is None:
            # Flush what was queued before the close.
            while not conn.outgoing.empty():
                rest = conn.outgoing.get_nowait()
                if rest is not None and not conn.ws.closed:
                    with contextlib.suppress(ConnectionError, RuntimeError):
                        await conn.ws.send_str(rest)
            if conn.close_code is not None:
                await conn.ws.close(code=conn.close_code, message=conn.close_reason.encode()[:123])
            else:
                await conn.ws.close()
            return
        if conn.ws.closed:
            return
        try:
            await conn.ws.send_str(text)
        except (ConnectionError, RuntimeError):
            return


def _dispatch(conn: ActiveConnection, registry: CommandRegistry, message: Any) -> asyncio.Future[None] | None:
    """Validate one message and start its handler."""
    try:
        # Every command of every plugin: nothing that could not be stored or echoed reaches a handler.
        check_value(message, what="message")
        message = BASE_COMMAND_SCHEMA(message)
    except (vol.Invalid, InvalidData) as err:
        raw_id = message.get("id") if isinstance(message, dict) else None
        msg_id = raw_id if _is_message_id(raw_id) else 0
        conn.send_error(msg_id, ERR_INVALID_FORMAT, f"Message incorrectly formatted: {err}")
        return None
    msg_id = message["id"]
    if message["type"] == "ping":
        # Clients (home-assistant-js-websocket) send pings to keep the connection alive.
        if msg_id > conn.last_id:
            conn.last_id = msg_id
        conn.send_message({"id": msg_id, "type": "pong"})
        return None
    if msg_id <= conn.last_id:
        conn.send_error(msg_id, ERR_ID_REUSE, "Identifier values have to increase.")
        return None
    conn.last_id = msg_id
    entry = registry.commands.get(message["type"])
    if entry is None:
        conn.send_error(msg_id, ERR_UNKNOWN_COMMAND, "Unknown command.")
        return None
    handler, schema = entry
    return asyncio.ensure_future(_run(conn, handler, schema, message))


async def _run(conn: ActiveConnection, handler: CommandHandler, schema: vol.Schema, message: dict[str, Any]) -> None:
    """Run a handler; every failure becomes an error reply (G15)."""
    msg_id = message["id"]
    try:
        try:
            message = schema(message)
        except vol.Invalid as err:
            conn.send_error(msg_id, ERR_INVALID_FORMAT, f"Message format incorrect: {err}")
            return
        guard = getattr(handler, "_ws_user_guard", None)
        if guard is not None:
            allow_system_user, only_active_user = guard
            if only_active_user and not conn.user.is_active:
                raise CommandError("only_active_user", "Only allowed as active user")
            if not allow_system_user and conn.user.system_generated:
                raise CommandError("not_system_user", "Not allowed as system user")
        if getattr(handler, "_ws_admin", False) and not conn.user.is_admin:
            raise Unauthorized()
        result = handler(conn, message)
        if asyncio.iscoroutine(result):
            await result
    except CommandError as err:
        conn.send_error(msg_id, err.code, err.message)
    except InvalidData as err:
        # The store refused a value before changing anything (opp_auth.validation.check_storable).
        conn.send_error(msg_id, ERR_INVALID_FORMAT, str(err))
    except TimeoutError:
        conn.send_error(msg_id, ERR_TIMEOUT, "Timeout")
    except asyncio.CancelledError:
        raise
    except StorageError:
        # A framework error (SPEC 5.5): unknown_error with its text; the store logged file and cause.
        conn.send_error(msg_id, ERR_UNKNOWN_ERROR, STORAGE_UNAVAILABLE_MESSAGE)
    except Exception:
        _LOGGER.exception("Error handling message %s", message.get("type"))
        conn.send_error(msg_id, ERR_UNKNOWN_ERROR, "Unknown error")

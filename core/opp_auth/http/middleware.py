"""The request pipeline: security filter, reverse proxy, bans, authentication and CORS.

One function, the application's request handler right after routing
(http/application.py): it covers every route whenever it was added, and paths
or methods no route serves, which it answers in the API's JSON shape (404, or
405 with ``Allow``). What it costs per request: bench/http_instructions.py. It
reads four private aiohttp attributes, ``Request._match_info`` (set as
Application._handle does), ``Request._transport_peername`` (the peer, as
``request.remote`` computes it), ``Request._message`` (its ``path`` and
``headers`` are what ``request.raw_path`` and ``request.headers`` answer, without
those cached properties' calls) and ``StreamResponse._status`` (what the
``status`` property returns). tests/http/test_application.py drives each against
the aiohttp range core/setup.cfg pins.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote

from aiohttp import hdrs, web

from .. import events
from ..events import Origin, set_origin
from ..models import User
from ..storage import STORAGE_UNAVAILABLE_MESSAGE, StorageError
from ..validation import CODE_INVALID_FORMAT, InvalidData
from .forwarded import ForwardedError, resolve_forwarded
from .view import WS_GUARD_MARKERS, Handler, client_ip, json_message, request_user

if TYPE_CHECKING:
    from ..manager import AuthManager
    from .application import Routing
    from .ban import BanManager

_LOGGER = logging.getLogger(__name__)

# Paths and queries that only attacks send (SPEC 6.6).
_FILTERS = re.compile(
    r"proc/self/environ"
    r"|(?:<|%3C).*script.*(?:>|%3E)"
    r"|\.\./"
    r"|[a-zA-Z0-9_]=/(?:[a-z0-9_.]//?)+"
    r"|union.*select.*\("
    r"|union.*all.*select"
    r"|concat.*\(",
    flags=re.IGNORECASE,
)

# Raw paths (with query) the filter passed, so a repeated path is not searched again: bounded in
# count and length (an attacker varying paths only gets the uncached search, never more memory).
_CLEAN_PATHS_MAX = 1024
_CLEAN_PATH_MAX_LENGTH = 256

# The headers every request is asked for, as module names (one lookup each on the hottest lines).
_X_FORWARDED_FOR, _AUTHORIZATION, _ORIGIN, _EXPECT = hdrs.X_FORWARDED_FOR, hdrs.AUTHORIZATION, hdrs.ORIGIN, hdrs.EXPECT

CORS_ALLOWED_HEADERS = "Origin, Accept, X-Requested-With, Content-Type, Authorization"
# The token endpoints answer any origin, as in Home Assistant (a client holding a token may use it anywhere).
CORS_ANY_ORIGIN_PATHS = frozenset({"/auth/token", "/auth/revoke"})


def _request_origin(request: web.Request) -> Origin:
    """The origin of events emitted while serving request (what the pipeline found out about it)."""
    user = request_user(request)
    return Origin(
        via="http",
        remote_address=client_ip(request),
        user_agent=request.headers.get(hdrs.USER_AGENT),
        actor_id=getattr(user, "id", None),
    )


events.describe_origin = _request_origin


def build_pipeline(
    auth: AuthManager, http_config: dict[str, Any], ban: BanManager | None
) -> Callable[[Routing], Handler]:
    """The pipeline for this configuration: give it the application's routing, get the handler of every request.

    application.PipelineApplication.set_pipeline calls it once with its Routing (aiohttp's routing,
    then the Expect handling, any plugin's middlewares and the route's handler).
    """
    use_xff = bool(http_config.get("use_x_forwarded_for"))
    trusted_proxies = list(http_config.get("trusted_proxies") or [])
    cors_origins = frozenset(http_config.get("cors_allowed_origins") or [])
    ban_active = ban is not None and http_config.get("ip_ban_enabled", True)
    authenticators = auth.pm.hook.opp_auth_authenticate_request
    validate_bearer = auth.access_tokens.validate_bearer
    clean_paths: set[str] = set()
    stats = auth.stats
    perf_counter = time.perf_counter

    def wrap(routing: Routing) -> Handler:
        """The application's request handler: routing, then the pipeline, then the route's handling."""
        resolve, dispatch, chains, app = routing.resolve, routing.dispatch, routing.chains, routing.app

        async def run(request: web.Request) -> web.StreamResponse:
            """Route, filter, resolve the client, check bans, authenticate, call the handler, add CORS."""
            # Routed first, as aiohttp does: a clone made below keeps the route, plugin authenticators
            # and middlewares see it, and every answer (the pipeline's own refusals too) is prepared
            # with the request's application (its on_response_prepare receivers run).
            match_info = await resolve(request)
            # The route given to the request as Application._handle does (Routing's docstring).
            match_info.add_app(app)
            match_info.freeze()
            request._match_info = match_info
            # Nothing let in yet: what readers of the request find until authentication below decides,
            # the pipeline's own refusals too (OppRequest keeps these in slots, which have no default).
            request.opp_authenticated = False
            request.opp_user = request.opp_refresh_token_id = None
            # What request.raw_path and request.headers answer, without their cached properties' calls.
            message = request._message
            raw_path = message.path
            if raw_path not in clean_paths:
                if _FILTERS.search(raw_path) or ("%" in raw_path and _FILTERS.search(unquote(raw_path))):
                    _LOGGER.warning("Filtered a potential harmful request to: %s", raw_path)
                    return json_message("Bad request", 400)
                if len(raw_path) <= _CLEAN_PATH_MAX_LENGTH:
                    if len(clean_paths) >= _CLEAN_PATHS_MAX:
                        clean_paths.clear()
                    clean_paths.add(raw_path)

            headers = message.headers
            # aiohttp prepares the answer with the request it made, which on_response_prepare receivers
            # get: what the pipeline finds out is set on it too when a proxied request is cloned below.
            original = request
            # The direct peer of the connection, before any X-Forwarded-For: what request.remote answers,
            # read from the socket's address (a TCP one is a tuple) without its cached property's call.
            peername = request._transport_peername
            peer = remote = str(peername[0]) if type(peername) is tuple else request.remote
            if _X_FORWARDED_FOR in headers:
                try:
                    forwarded = resolve_forwarded(peer, headers, use_xff, trusted_proxies)
                except ForwardedError as err:
                    _LOGGER.error("%s", err)
                    return json_message(str(err), 400)
                if forwarded is not None:
                    changes: dict[str, Any] = {"remote": forwarded.remote}
                    if forwarded.scheme:
                        changes["scheme"] = forwarded.scheme
                    if forwarded.host:
                        changes["host"] = forwarded.host
                    request = request.clone(**changes)
                    remote = request.remote
                    original.opp_client_ip = remote
                    original.opp_peer_ip = peer
            request.opp_client_ip = remote
            request.opp_peer_ip = peer
            set_origin(request)  # events emitted while serving it name its address, user agent and user

            if ban_active and remote in ban.banned and ban.is_banned(remote):  # type: ignore[union-attr]
                auth.events.login_failed(remote, None, None, "banned", plugins=False)
                return json_message("Forbidden", 403)

            authorization = headers.get(_AUTHORIZATION)
            refresh_token = None if authorization is None else validate_bearer(authorization, remote)
            if refresh_token is None and request.method == "GET" and "authSig" in request.query:
                params = [(k, v) for k, v in request.query.items() if k != "authSig"]
                refresh_token = auth.access_tokens.validate_signed_path(
                    request.path, request.query["authSig"], params, remote
                )
                if refresh_token is not None:
                    _LOGGER.debug("Authenticated %s for %s using signed request", remote, request.path)
            if refresh_token is not None:
                request.opp_user = refresh_token.user
                request.opp_refresh_token_id = refresh_token.id
                authenticated = True
            else:
                authenticated = bool(authenticators.get_hookimpls()) and await _plugin_authenticate(auth, request)
            request.opp_authenticated = authenticated
            if request is not original:
                original.opp_authenticated = authenticated
                original.opp_user = getattr(request, "opp_user", None)
                original.opp_refresh_token_id = getattr(request, "opp_refresh_token_id", None)

            origin = headers.get(_ORIGIN)
            if (
                origin is not None
                and request.method == hdrs.METH_OPTIONS
                and hdrs.ACCESS_CONTROL_REQUEST_METHOD in headers
            ):
                if origin in cors_origins or request.path in CORS_ANY_ORIGIN_PATHS:
                    return web.Response(
                        status=200,
                        headers={
                            hdrs.ACCESS_CONTROL_ALLOW_ORIGIN: origin,
                            hdrs.ACCESS_CONTROL_ALLOW_METHODS: headers[hdrs.ACCESS_CONTROL_REQUEST_METHOD],
                            hdrs.ACCESS_CONTROL_ALLOW_HEADERS: CORS_ALLOWED_HEADERS,
                            hdrs.ACCESS_CONTROL_ALLOW_CREDENTIALS: "true",
                            hdrs.ACCESS_CONTROL_MAX_AGE: "1800",
                        },
                    )
                return json_message("Forbidden", 403)

            observers = stats.request_observers  # those registered now observe this request (a tuple)
            start = perf_counter() if observers else 0.0
            try:
                if _EXPECT in headers:
                    response = await dispatch(request)
                elif routing.direct:  # no middleware anywhere: the route's handler itself
                    response = await match_info.handler(request)
                else:  # the route's handler in the middlewares' chain (built once per handler)
                    response = await (chains.get(match_info.handler) or routing.chain(match_info))(request)
            except InvalidData as err:
                # The store refused a value before changing anything (opp_auth.validation.check_storable).
                response = json_message(str(err), 400, CODE_INVALID_FORMAT)
            except StorageError:
                # The store has logged which file and why; the client is told the change was not saved.
                response = json_message(STORAGE_UNAVAILABLE_MESSAGE, 503)
            except web.HTTPRequestEntityTooLarge:
                # aiohttp's own answer is plain text; API clients expect JSON.
                response = json_message(f"Request body too large: the limit is {request.client_max_size} bytes", 413)
            except web.HTTPException as exc:
                if exc.status < 400:
                    if observers:
                        _observed(observers, request, exc.status, perf_counter() - start)
                    raise  # redirects
                if request.match_info.http_exception is not None:
                    # No route served the path or the method, and no middleware further in (a plugin's,
                    # say serving files) answered: 404, or 405 with Allow, in the API's JSON shape.
                    response = _unmatched(exc)
                else:
                    # aiohttp's refusals (static files, a websocket request without upgrade) in the API's JSON shape.
                    response = _json_refusal(exc)

            if response._status == 401:  # response.status, without the property's call
                auth.events.login_failed(remote, None, None, "unauthorized", plugins=ban_active)
            if origin is not None and (origin in cors_origins or request.path in CORS_ANY_ORIGIN_PATHS):
                response.headers[hdrs.ACCESS_CONTROL_ALLOW_ORIGIN] = origin
                response.headers[hdrs.ACCESS_CONTROL_ALLOW_CREDENTIALS] = "true"
                response.headers[hdrs.ACCESS_CONTROL_EXPOSE_HEADERS] = "*"
            if observers and response.status != 101:  # a websocket's time is the connection's life
                _observed(observers, request, response.status, perf_counter() - start)
            return response

        return run

    return wrap


def _observed(
    observers: tuple[Callable[[web.Request, int, float], None], ...], request: web.Request, status: int, seconds: float
) -> None:
    """Tell each request observer (PluginContext.observe_requests); one that raises is logged, the answer goes on."""
    for observer in observers:
        try:
            observer(request, status, seconds)
        except Exception:  # an observer never changes the answer
            _LOGGER.exception("Request observer %r failed", observer)


def _json_refusal(exc: web.HTTPException) -> web.Response:
    """An aiohttp HTTPException as {"message": ...}, keeping its headers (Allow, ...)."""
    text = exc.text or ""
    message = exc.reason if text in ("", f"{exc.status}: {exc.reason}") else text.strip()
    response = json_message(message, exc.status)
    for name, value in exc.headers.items():
        if name not in (hdrs.CONTENT_TYPE, hdrs.CONTENT_LENGTH):
            response.headers[name] = value
    return response


def _unmatched(exc: web.HTTPException) -> web.Response:
    """No route serves the path (404) or the method (405 with Allow), in the API's JSON shape."""
    if isinstance(exc, web.HTTPMethodNotAllowed):
        return web.json_response(
            {"message": "Method not allowed"}, status=405, headers={hdrs.ALLOW: ",".join(sorted(exc.allowed_methods))}
        )
    if isinstance(exc, web.HTTPNotFound):
        return json_message("Not found", 404)
    return _json_refusal(exc)


def check_routes(app: web.Application) -> None:
    """Refuse a route served by a websocket command handler (it would answer every request 500)."""
    for route in app.router.routes():
        if any(hasattr(route.handler, marker) for marker in WS_GUARD_MARKERS):
            raise TypeError(
                f"Route {route.method} {route.resource.canonical if route.resource else '?'} is served by "
                f"{route.handler!r}, a websocket command handler; HTTP routes take opp_auth.http_require_* guards."
            )


async def _plugin_authenticate(auth: AuthManager, request: web.Request) -> bool:
    """Ask the request-authenticator chain through pluggy: the first non-None answer wins; a failure refuses."""
    result = await auth.pm.acall("opp_auth_authenticate_request", request=request, auth=auth.context)
    if not isinstance(result, User):
        return False
    # The same access decision as every other way in (active, local_only).
    if auth.access.refusal(result, client_ip(request)) is not None:
        return False
    request.opp_user = result
    return True

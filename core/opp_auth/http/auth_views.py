"""The login HTTP API, compatible with Open Peer Power clients.

The views only translate HTTP: the login engine (``LoginFlowManager`` in
``opp_auth.login_flow``) checks client and address, throttles, reports
failures, makes the one MFA decision and issues the authorization codes.

GET /auth/providers
    Providers in configuration order: ``[{"name", "id", "type"}]`` (Open Peer
    Power 2021, ``http: auth_api: openpeerpower``, the default of an
    ``openpeerpower:`` directory), or ``{"providers": [...],
    "preselect_remember_me": bool}`` (today's Home Assistant, ``auth_api:
    homeassistant``, the default of a ``homeassistant:`` directory;
    ``preselect_remember_me`` is true for a caller on the local network).
    Before the owner exists: 400 ``{"message": "Onboarding not finished",
    "code": "onboarding_required"}``.

POST /auth/login_flow  (JSON: client_id, handler [type, id], redirect_uri, type?, response_type?)
    Starts a login flow. ``response_type``, which Home Assistant's clients
    send, may only be ``code``. The redirect_uri must belong to the client_id
    (IndieAuth rules), else 400 ``invalid client id or redirect uri``. Unknown
    handler: 404 ``Invalid handler specified``. Returns the first step (a form,
    an abort, or for a trusted-network bypass of a user without MFA a
    create_entry whose ``result`` is the authorization code). ``type`` is
    ``authorize`` (default) or ``link_user``: the purpose of the flow's code.

POST /auth/login_flow/{flow_id}  (JSON: client_id plus the step's fields)
    Submits a step. A step may also answer ``external`` (``url``: send the
    browser there; the provider's plugin brings it back to
    ``/auth/authorize?resume=<flow_id>``, and the flow is then submitted again
    with only client_id) or ``external_step_done`` (submit again). The client_id must be the one that started the flow and
    the request must come from the same address. Unknown or expired flow: 404
    ``Invalid flow specified``; input not matching the form: 400 ``User input
    malformed``. A finished flow answers create_entry with ``result`` = an
    authorization code, usable once, within ten minutes, by that client_id,
    for the flow's purpose only.

    MFA: whatever the provider (trusted networks included) and the flow type
    (``link_user`` included), a user with an MFA module enrolled gets the
    ``select_mfa_module`` (several modules) and ``mfa`` steps after the
    provider's step; no code exists before the right MFA code.

    Throttling (opp_auth.throttle): before a step reaches the provider or MFA
    module, an address and account that failed too often get 429
    ``{"message": "Too many login attempts, try again in N seconds", "code":
    "too_many_attempts"}`` with a ``Retry-After: N`` header; the flow stays
    open, so the same step can be submitted again after N seconds. The
    account of the MFA steps is the username given in the first step.

    Limits (fair shares, ``opp_auth.shares``): a flow start is refused with
    429 ``Too many logins in progress, try again later`` when the client's
    address has 30 flows in progress, or its network prefix (IPv4 /24, IPv6
    /64) 100, or when the 1000 places for strangers are taken and its prefix
    holds as many as the largest (a smaller prefix takes the place of the
    largest prefix's oldest flow). Addresses that logged in before and
    trusted networks have 1000 places of their own. Flows expire after ten
    minutes. A body over 16 MiB gets 413 ``{"message": "Request body too
    large: ..."}``.

    JSON bodies (here and on every JSON route; ``http/view.py`` ``read_json``,
    limits in ``opp_auth.validation``): over 1 MiB is 413; nested deeper
    than 32 levels (checked before parsing), a string that is not Unicode
    scalar values (a lone surrogate) or longer than 65,536 characters, NaN or
    Infinity is 400 ``{"message": "Invalid JSON: body[...] ...", "code":
    "invalid_format"}``.

DELETE /auth/login_flow/{flow_id}
    Aborts a flow: ``{"message": "Flow aborted"}``.

POST /auth/token  (form-urlencoded or multipart/form-data)
    ``grant_type=authorization_code`` (client_id, code of an ``authorize``
    flow or of onboarding; a ``link_user`` code is 400 ``invalid_request``
    ``Invalid code``): a new refresh token and access token.
    ``grant_type=refresh_token`` (refresh_token, client_id): a new access
    token. ``action=revoke`` (token; Open Peer Power's form of RFC 7009
    revocation): deletes the refresh token if there is one, 200 with an empty
    body either way. ``action`` with another value or together with any
    ``grant_type``, or ``action``, ``grant_type`` or ``token`` given twice, is
    400 ``invalid_request``. Errors follow OAuth 2: ``{"error": ...,
    "error_description": ...}``. With ``auth_api: homeassistant`` the
    authorization-code answer also carries ``ha_auth_provider`` (the type of
    the provider the user logged in with).
    The form (``http/view.py`` ``read_form``): UTF-8 or ASCII only, in the
    form's and in every part's charset (another, such as ``unicode_escape``,
    is 400 ``invalid_request``), plain text fields only (no files, no nested
    or encoded parts), at most 64 fields and 64 KiB (413).

POST /auth/revoke  (form-urlencoded or multipart: token)
    Deletes the refresh token, always 200 (Home Assistant's logout, as
    home-assistant-js-websocket's ``auth.revoke()`` posts it; same as
    ``/auth/token`` with ``action=revoke``). A form that cannot be read
    (see above) revokes nothing and is still 200; over the limits, 413.

POST /auth/link_user  (bearer; JSON: client_id, code)
    Adds the credentials of a finished ``link_user`` login flow to the caller;
    any other code (an ``authorize`` one included) is 400 ``Invalid code``. A
    caller whose session comes from a provider that checks every request
    (trusted networks) gets 403: its login proved a place, not the person.
"""

from __future__ import annotations

import logging
from typing import Any

import voluptuous as vol
from aiohttp import web

from ..codes import AUTHORIZE, LINK_USER
from ..events import login_name
from ..flow import (
    RESULT_TYPE_CREATE_ENTRY,
    InvalidInput,
    TooManyFlows,
    UnknownFlow,
    UnknownHandler,
    UnknownStep,
)
from ..login_flow import AddressChanged, InvalidClient, LoginThrottled
from ..manager import AuthManagerError
from ..network import is_local_address
from ..providers import InvalidAuthError
from ..stats import REFRESH_ACCESS_DENIED, REFRESH_INVALID_GRANT, REFRESH_INVALID_REQUEST, REFRESH_SUCCESS
from ..throttle import retry_after_header, too_many_attempts_message
from . import indieauth
from .serialize import prepare_result_json
from .view import (
    CLIENT_SESSION_KEY,
    CONFIG_KEY,
    FormError,
    auth_of,
    client_ip,
    json_message,
    json_response,
    peer_address,
    read_form,
    read_json,
    request_refresh_token_id,
    request_user,
    require_auth,
)

_LOGGER = logging.getLogger(__name__)

ONBOARDED_KEY: web.AppKey[Any] = web.AppKey("opp_auth_user_onboarded")


def _handler(value: Any) -> tuple[str, str | None]:
    """[type, id] (a bare type string means id null)."""
    if isinstance(value, str):
        return (value, None)
    if (
        isinstance(value, list)
        and len(value) == 2
        and isinstance(value[0], str)
        and (value[1] is None or isinstance(value[1], str))
    ):
        return (value[0], value[1])
    raise vol.Invalid("handler must be [type, id]")


LOGIN_FLOW_SCHEMA = vol.Schema(
    {
        vol.Required("client_id"): str,
        vol.Required("handler"): _handler,
        vol.Required("redirect_uri"): str,
        vol.Optional("type", default="authorize"): vol.In(["authorize", "link_user"]),
        # Home Assistant's clients say which OAuth response they want; only the code flow exists.
        vol.Optional("response_type"): vol.In(["code"]),
    }
)
STEP_SCHEMA = vol.Schema({vol.Required("client_id"): str}, extra=vol.ALLOW_EXTRA)


API_HOMEASSISTANT = "homeassistant"


def speaks_home_assistant(request: web.Request) -> bool:
    """Whether this server speaks today's Home Assistant wire (http: auth_api), not Open Peer Power 2021's."""
    config = request.app.get(CONFIG_KEY) or {}
    return bool(config.get("auth_api") == API_HOMEASSISTANT)


async def providers_view(request: web.Request) -> web.Response:
    """GET /auth/providers."""
    if not request.app[ONBOARDED_KEY]():
        return json_message("Onboarding not finished", 400, "onboarding_required")
    auth = auth_of(request)
    listed = auth.registry.auth_providers
    if speaks_home_assistant(request):
        # Home Assistant's login page cannot answer a login an MFA module adds (a passkey's WebAuthn challenge).
        listed = [p for p in listed if auth.registry.mfa_module_offering(p) is None]
    providers = [{"name": p.name, "id": p.id, "type": p.type} for p in listed]
    if speaks_home_assistant(request):
        return json_response({"providers": providers, "preselect_remember_me": is_local_address(client_ip(request))})
    return json_response(providers)


async def login_flow_get_index(request: web.Request) -> web.Response:
    """GET /auth/login_flow is not a thing."""
    return web.Response(status=405)


def _failed(request: web.Request, reason: str, username: str | None = None) -> None:
    """Tell the plugins a login failed."""
    auth_of(request).events.login_failed(client_ip(request), None, username, reason)


async def login_flow_start(request: web.Request) -> web.Response:
    """POST /auth/login_flow: the login engine starts the flow; this only translates HTTP."""
    data, error = await read_json(request, LOGIN_FLOW_SCHEMA)
    if error is not None:
        return error
    client_id, redirect_uri = data["client_id"], data["redirect_uri"]
    try:
        result = await auth_of(request).login_flow.async_start_login(
            data["handler"],
            ip_address=client_ip(request),
            client_id=client_id,
            redirect_uri=redirect_uri,
            purpose=data["type"],
            client_ok=await indieauth.verify_redirect_uri(request.app.get(CLIENT_SESSION_KEY), client_id, redirect_uri),
            peer_address=peer_address(request),
            headers=request.headers,
        )
    except InvalidClient:
        return json_message("invalid client id or redirect uri", 400)
    except UnknownHandler:
        return json_message("Invalid handler specified", 404)
    except UnknownStep:
        return json_message("Handler does not support init", 400)
    except TooManyFlows:
        return json_message("Too many logins in progress, try again later", 429)
    return _flow_result_response(result)


async def login_flow_step(request: web.Request) -> web.Response:
    """POST /auth/login_flow/{flow_id}: the login engine runs the step; this only translates HTTP."""
    data, error = await read_json(request, STEP_SCHEMA)
    if error is not None:
        return error
    client_id = data.pop("client_id")
    try:
        result = await auth_of(request).login_flow.async_login_step(
            request.match_info["flow_id"],
            data,
            ip_address=client_ip(request),
            client_id=client_id,
            client_ok=indieauth.verify_client_id(client_id),
        )
    except InvalidClient:
        return json_message("Invalid client id", 400)
    except UnknownFlow:
        return json_message("Invalid flow specified", 404)
    except AddressChanged:
        return json_message("IP address changed", 400)
    except LoginThrottled as err:
        response = json_message(too_many_attempts_message(err.retry_after), 429, "too_many_attempts")
        response.headers["Retry-After"] = retry_after_header(err.retry_after)
        return response
    except InvalidInput:
        return json_message("User input malformed", 400)
    return _flow_result_response(result)


async def login_flow_delete(request: web.Request) -> web.Response:
    """DELETE /auth/login_flow/{flow_id}."""
    try:
        await auth_of(request).login_flow.async_abort_login(request.match_info["flow_id"])
    except UnknownFlow:
        return json_message("Invalid flow specified", 404)
    return json_message("Flow aborted")


async def login_flow_get_flow(request: web.Request) -> web.Response:
    """GET /auth/login_flow/{flow_id}: flows are not readable."""
    return json_message("Invalid flow specified", 404)


def _flow_result_response(result: dict[str, Any]) -> web.Response:
    """A step result as JSON; a finished login's ``result`` is the engine's authorization code."""
    if result["type"] == RESULT_TYPE_CREATE_ENTRY:
        return json_response(result)
    return json_response(prepare_result_json(result))


def _oauth_error(error: str, description: str | None = None, status: int = 400) -> web.Response:
    """An OAuth 2 error body."""
    body = {"error": error}
    if description is not None:
        body["error_description"] = description
    return json_response(body, status, headers={"Cache-Control": "no-store", "Pragma": "no-cache"})


async def token_view(request: web.Request) -> web.Response:
    """POST /auth/token: grant, refresh or revoke."""
    try:
        data = await read_form(request)
    except FormError as err:
        # A form that cannot be read at all: 413 in the API's message shape, 400 as OAuth's invalid_request.
        _failed(request, "invalid_token")
        if err.status == 413:
            return json_message(err.message, 413)
        return _oauth_error("invalid_request", err.message)
    for field in ("action", "grant_type", "token"):
        if len(data.getall(field, [])) > 1:
            _failed(request, "invalid_token")
            return _oauth_error("invalid_request", f"{field} given more than once")
    if "action" in data:
        # A revocation is action=revoke (with token) and nothing that names a grant: a request
        # that is both, or another action, is not guessed at (RFC 6749 5.2 invalid_request).
        if data["action"] != "revoke" or "grant_type" in data:
            _failed(request, "invalid_token")
            return _oauth_error("invalid_request", "action=revoke takes a token and no grant_type")
        return await _revoke(request, data.get("token"))
    grant_type = data.get("grant_type")
    if grant_type == "authorization_code":
        response = await _grant_authorization_code(request, data)
    elif grant_type == "refresh_token":
        response = await _grant_refresh_token(request, data)
    else:
        response = _oauth_error("unsupported_grant_type")
    if response.status >= 400:
        _failed(request, "invalid_token")
    return response


async def _revoke(request: web.Request, token: Any) -> web.Response:
    """Delete the refresh token whose secret is token (if any); always 200."""
    if isinstance(token, str):
        auth = auth_of(request)
        refresh_token = await auth.refresh_tokens.async_get_refresh_token_by_token(token)
        if refresh_token is not None:
            await auth.refresh_tokens.async_remove_refresh_token(refresh_token)
        else:
            # It may be gone from memory only: an earlier revocation still being written, or one
            # whose write failed. The 200 must not come before that removal is on disk.
            await auth.store.async_wait_saved()
    # An empty body still says what it is, so clients and the OpenAPI check need not guess.
    return web.Response(status=200, content_type="text/plain")


async def revoke_view(request: web.Request) -> web.Response:
    """POST /auth/revoke: Home Assistant's logout (a form with token)."""
    try:
        token = (await read_form(request)).get("token")
    except FormError as err:
        if err.status == 413:
            return json_message(err.message, 413)
        token = None  # a form that cannot be read (odd charset, broken multipart) revokes nothing, like an empty one
    return await _revoke(request, token)


async def _grant_authorization_code(request: web.Request, data: Any) -> web.Response:
    """Trade an authorization code for tokens."""
    auth = auth_of(request)
    client_id = data.get("client_id")
    if not isinstance(client_id, str) or not indieauth.verify_client_id(client_id):
        return _oauth_error("invalid_request", "Invalid client id")
    code = data.get("code")
    credential = await auth.login_flow.codes.async_redeem(client_id, code, AUTHORIZE)
    if credential is None:
        return _oauth_error("invalid_request", "Invalid code")
    try:
        user = await auth.users.async_get_or_create_user(credential)
    except AuthManagerError as err:
        return _oauth_error("access_denied", str(err), 403)
    if not user.is_active:
        auth.events.login_failed(
            client_ip(request),
            credential.provider_key,
            login_name(credential),
            "user_inactive",
            plugins=False,
            user_id=user.id,
            client_id=client_id,
        )
        return _oauth_error("access_denied", "User is not active", 403)
    try:
        refresh_token = await auth.refresh_tokens.async_create_refresh_token(user, client_id, credential=credential)
    except ValueError as err:
        return _oauth_error("access_denied", str(err), 403)
    try:
        access_token = await auth.access_tokens.async_create_access_token(refresh_token, client_ip(request))
    except (ValueError, InvalidAuthError) as err:
        # Refused from here (local_only, the provider's check): the token never handed out is not kept.
        await auth.refresh_tokens.async_remove_refresh_token(refresh_token)
        return _oauth_error("access_denied", str(err), 403)
    secret, refresh_token.token = refresh_token.token, None  # handed out once; only its digest is kept
    body = {
        "access_token": access_token,
        "token_type": "Bearer",
        "refresh_token": secret,
        "expires_in": int(refresh_token.access_token_expiration.total_seconds()),
    }
    if speaks_home_assistant(request):
        body["ha_auth_provider"] = credential.auth_provider_type
    return json_response(body, headers={"Cache-Control": "no-store", "Pragma": "no-cache"})


async def _grant_refresh_token(request: web.Request, data: Any) -> web.Response:
    """Trade a refresh token for a new access token; counted by result (stats.REFRESH_RESULTS)."""
    response, result = await _refresh(request, data)
    auth_of(request).stats.refresh_grants[result] += 1
    return response


async def _refresh(request: web.Request, data: Any) -> tuple[web.Response, str]:
    """The answer to a refresh grant, and its result for the counters."""
    auth = auth_of(request)
    client_id = data.get("client_id")
    if client_id is not None and (not isinstance(client_id, str) or not indieauth.verify_client_id(client_id)):
        return _oauth_error("invalid_request", "Invalid client id"), REFRESH_INVALID_REQUEST
    token = data.get("refresh_token")
    if not isinstance(token, str) or not token:
        return _oauth_error("invalid_request"), REFRESH_INVALID_REQUEST
    refresh_token = await auth.refresh_tokens.async_get_refresh_token_by_token(token)
    if refresh_token is None:
        return _oauth_error("invalid_grant"), REFRESH_INVALID_GRANT
    if refresh_token.client_id != client_id:
        return _oauth_error("invalid_request"), REFRESH_INVALID_REQUEST
    try:
        access_token = await auth.access_tokens.async_create_access_token(refresh_token, client_ip(request))
    except InvalidAuthError as err:
        return _oauth_error("access_denied", str(err), 403), REFRESH_ACCESS_DENIED
    return json_response(
        {
            "access_token": access_token,
            "token_type": "Bearer",
            "expires_in": int(refresh_token.access_token_expiration.total_seconds()),
        },
        headers={"Cache-Control": "no-store", "Pragma": "no-cache"},
    ), REFRESH_SUCCESS


LINK_USER_SCHEMA = vol.Schema({vol.Required("code"): str, vol.Required("client_id"): str})


@require_auth
async def link_user_view(request: web.Request) -> web.Response:
    """POST /auth/link_user: add a link_user flow's credentials to the caller."""
    data, error = await read_json(request, LINK_USER_SCHEMA)
    if error is not None:
        return error
    auth = auth_of(request)
    session = auth.store.get_refresh_token(request_refresh_token_id(request) or "")
    provider = (
        auth.registry.get_auth_provider(*session.credential.provider_key) if session and session.credential else None
    )
    if provider is not None and provider.CHECKS_EVERY_REQUEST:
        # A session a provider confines to its networks (trusted networks) proved a place, not the person:
        # a way in linked from it would work from anywhere.
        return json_message("A session from a trusted network cannot link another login; log in with it first", 403)
    credentials = await auth.login_flow.codes.async_redeem(data["client_id"], data["code"], LINK_USER)
    if credentials is None:
        return json_message("Invalid code", 400)
    try:
        await auth.users.async_link_user(request_user(request), credentials)
    except AuthManagerError as err:
        return json_message(str(err), 400)
    return json_message("User linked")


_API_RUNNING = b'{"message":"API running."}'


async def api_status_view(request: web.Request) -> web.Response:
    """GET /api/: proof that a token works (the auth check is inline: this is the hottest path)."""
    try:
        authenticated = request.opp_authenticated  # type: ignore[attr-defined]
    except AttributeError:  # a request the pipeline did not pass
        authenticated = False
    if authenticated is not True:  # False on any request nothing let in
        return json_message("Unauthorized", 401)
    return web.Response(body=_API_RUNNING, content_type="application/json")


async def change_password_redirect(request: web.Request) -> web.Response:
    """GET /.well-known/change-password: where password managers send people."""
    raise web.HTTPFound("/profile")


def add_routes(app: web.Application) -> None:
    """Register the login API."""
    app.router.add_get("/auth/providers", providers_view)
    app.router.add_get("/auth/login_flow", login_flow_get_index)
    app.router.add_post("/auth/login_flow", login_flow_start)
    app.router.add_get("/auth/login_flow/{flow_id}", login_flow_get_flow)
    app.router.add_post("/auth/login_flow/{flow_id}", login_flow_step)
    app.router.add_delete("/auth/login_flow/{flow_id}", login_flow_delete)
    app.router.add_post("/auth/token", token_view)
    app.router.add_post("/auth/revoke", revoke_view)
    app.router.add_post("/auth/link_user", link_user_view)
    app.router.add_get("/api/", api_status_view)
    app.router.add_get("/.well-known/change-password", change_password_redirect)


__all__ = ["ONBOARDED_KEY", "add_routes"]

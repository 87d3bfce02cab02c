"""Onboarding: the first start creates the owner (Open Peer Power's /api/onboarding API).

GET  /api/onboarding              ``[{"step": "user", "done": bool}, ...]`` (no auth)
POST /api/onboarding/users        name, username, password, client_id, language -> ``{"auth_code"}`` (no auth)
                                  name and username 1-100 characters, password at most 1024, client_id
                                  at most 2048, language 1-35: every field is checked before anything is
                                  created, so a refused request (400) leaves no owner and no step done.
POST /api/onboarding/core_config  (auth) -> ``{}``
POST /api/onboarding/analytics    (auth) -> ``{}``
POST /api/onboarding/integration  (auth) client_id, redirect_uri -> ``{"auth_code"}``
Both codes are ``authorize`` codes issued by the login engine after its MFA decision
(``LoginFlowManager.async_code_for_credentials``): the new owner has no MFA; the
integration code is for the caller's own session, which passed every factor.
A step done twice answers 403 ``{"message": "<Step> step already done"}``.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import voluptuous as vol
from aiohttp import web

from ..login_flow import MfaRequired
from ..manager import AuthManager
from ..models import GROUP_ID_ADMIN
from ..storage import StorageError
from . import indieauth
from .view import (
    CLIENT_SESSION_KEY,
    auth_of,
    client_ip,
    json_message,
    json_response,
    read_json,
    request_refresh_token_id,
    require_auth,
)

_LOGGER = logging.getLogger(__name__)

STORAGE_KEY = "onboarding"
STORAGE_VERSION = 4
STEP_USER = "user"
STEP_CORE_CONFIG = "core_config"
STEP_ANALYTICS = "analytics"
STEP_INTEGRATION = "integration"
STEPS = [STEP_USER, STEP_CORE_CONFIG, STEP_ANALYTICS, STEP_INTEGRATION]

ONBOARDING_KEY: web.AppKey[Onboarding] = web.AppKey("opp_auth_onboarding")


def _migrate(old_version: int, data: Any) -> Any:
    """Steps added by later Open Peer Power versions count as done for older installs."""
    data = dict(data or {})
    done = list(data.get("done", []))
    if old_version < 2 and STEP_INTEGRATION not in done:
        done.append(STEP_INTEGRATION)
    if old_version < 3 and STEP_CORE_CONFIG not in done:
        done.append(STEP_CORE_CONFIG)
    if old_version < 4 and STEP_ANALYTICS not in done:
        done.append(STEP_ANALYTICS)
    data["done"] = done
    return data


class Onboarding:
    """Which onboarding steps are done, persisted in .storage/onboarding."""

    def __init__(self, auth: AuthManager) -> None:
        """Nothing loaded yet."""
        self.auth = auth
        self._store = auth.storage(STORAGE_KEY, STORAGE_VERSION, private=True, migrate=_migrate)
        self.done: list[str] = []
        self.lock = asyncio.Lock()

    async def async_load(self) -> None:
        """Read the state; an existing owner means the user step is done."""
        data = await self._store.async_load()
        self.done = list((data or {}).get("done", []))
        self._store.listen(self._use)
        if STEP_USER not in self.done and self.auth.users.owner() is not None:
            self.done.append(STEP_USER)
            await self.async_save()

    def _use(self, data: Any) -> None:
        """Another server finished a step."""
        self.done = list((data if isinstance(data, dict) else {}).get("done", []))

    async def async_save(self) -> None:
        """Write the state now."""
        await self._store.async_save({"done": self.done})

    @property
    def onboarded(self) -> bool:
        """Every step done."""
        return all(step in self.done for step in STEPS)

    def user_onboarded(self) -> bool:
        """The owner exists (login is possible)."""
        return STEP_USER in self.done

    async def async_mark_done(self, step: str) -> None:
        """Record a step."""
        if step not in self.done:
            self.done.append(step)
            await self.async_save()


# Every field is bounded here, so the user step refuses bad input before it creates anything.
MAX_NAME_LENGTH = 100
MAX_PASSWORD_LENGTH = 1024
MAX_URL_LENGTH = 2048
MAX_LANGUAGE_LENGTH = 35  # the longest BCP 47 tag in common use
USER_SCHEMA = vol.Schema(
    {
        vol.Required("name"): vol.All(str, vol.Length(min=1, max=MAX_NAME_LENGTH)),
        vol.Required("username"): vol.All(str, vol.Length(min=1, max=MAX_NAME_LENGTH)),
        vol.Required("password"): vol.All(str, vol.Length(min=1, max=MAX_PASSWORD_LENGTH)),
        vol.Required("client_id"): vol.All(str, vol.Length(max=MAX_URL_LENGTH)),
        vol.Required("language"): vol.All(str, vol.Length(min=1, max=MAX_LANGUAGE_LENGTH)),
    }
)
INTEGRATION_SCHEMA = vol.Schema(
    {
        vol.Required("client_id"): vol.All(str, vol.Length(max=MAX_URL_LENGTH)),
        vol.Required("redirect_uri"): vol.All(str, vol.Length(max=MAX_URL_LENGTH)),
    }
)


async def onboarding_status(request: web.Request) -> web.Response:
    """GET /api/onboarding."""
    onboarding = request.app[ONBOARDING_KEY]
    return json_response([{"step": step, "done": step in onboarding.done} for step in STEPS])


async def onboarding_users(request: web.Request) -> web.Response:
    """POST /api/onboarding/users: create the owner with a local login, atomically."""
    data, error = await read_json(request, USER_SCHEMA)
    if error is not None:
        return error
    onboarding = request.app[ONBOARDING_KEY]
    auth = auth_of(request)
    async with onboarding.lock:
        if STEP_USER in onboarding.done:
            return json_message("User step already done", 403)
        if not indieauth.verify_client_id(data["client_id"]):
            return json_message("Invalid client id", 400)
        provider = auth.registry.local_provider()
        if provider is None:
            return json_message(
                "Onboarding needs the local auth provider (type openpeerpower or homeassistant, "
                "package opp-auth-local) configured",
                400,
            )
        username = data["username"]
        try:
            await provider.async_add_auth(username, data["password"])  # type: ignore[attr-defined]
        except ValueError as err:
            return json_message(str(err), 400)
        except StorageError:
            raise  # not a refusal: the middleware answers 503
        except Exception as err:  # noqa: BLE001 - the provider's own refusal (username exists, ...)
            return json_message(str(err) or "Unable to create the login", 400)
        try:
            credentials = await provider.async_get_or_create_credentials({"username": username})
            user = await auth.users.async_create_user(
                data["name"], [GROUP_ID_ADMIN], is_owner=not auth.users.has_non_system_user(), credentials=credentials
            )
        except Exception:
            # Undo the login so a retry with the same username works (G20).
            await provider.async_remove_auth(username)  # type: ignore[attr-defined]
            raise
        await onboarding.async_mark_done(STEP_USER)
        await auth.user_settings.async_update(user.id, {"language": data["language"]})
        auth.known_addresses.add(user.id, client_ip(request))  # the owner is at home: a known address
        try:
            code = await auth.login_flow.async_code_for_credentials(
                data["client_id"], credentials, ip_address=client_ip(request)
            )
        except MfaRequired:
            return json_message("Multi-factor authentication required; log in", 403)
    return json_response({"auth_code": code})


def _simple_step(step: str, label: str) -> Any:
    """A step with no data that only marks itself done."""

    @require_auth
    async def view(request: web.Request) -> web.Response:
        """Mark the step done."""
        onboarding = request.app[ONBOARDING_KEY]
        async with onboarding.lock:
            if step in onboarding.done:
                return json_message(f"{label} step already done", 403)
            await onboarding.async_mark_done(step)
        return json_response({})

    return view


@require_auth
async def onboarding_integration(request: web.Request) -> web.Response:
    """POST /api/onboarding/integration: an auth code for the frontend's real client id."""
    data, error = await read_json(request, INTEGRATION_SCHEMA)
    if error is not None:
        return error
    onboarding = request.app[ONBOARDING_KEY]
    auth = auth_of(request)
    async with onboarding.lock:
        if STEP_INTEGRATION in onboarding.done:
            return json_message("Integration step already done", 403)
        if not await indieauth.verify_redirect_uri(
            request.app.get(CLIENT_SESSION_KEY), data["client_id"], data["redirect_uri"]
        ):
            return json_message("invalid client id or redirect uri", 400)
        refresh_token = auth.store.get_refresh_token(request_refresh_token_id(request) or "")
        if refresh_token is None or refresh_token.credential is None:
            return json_message("Credentials for user not available", 403)
        try:
            code = await auth.login_flow.async_code_for_credentials(
                data["client_id"], refresh_token.credential, session=refresh_token, ip_address=client_ip(request)
            )
        except MfaRequired:
            return json_message("Multi-factor authentication required; log in", 403)
        await onboarding.async_mark_done(STEP_INTEGRATION)
    return json_response({"auth_code": code})


def add_routes(app: web.Application) -> None:
    """Register the onboarding API."""
    app.router.add_get("/api/onboarding", onboarding_status)
    app.router.add_post("/api/onboarding/users", onboarding_users)
    app.router.add_post("/api/onboarding/core_config", _simple_step(STEP_CORE_CONFIG, "Core config"))
    app.router.add_post("/api/onboarding/analytics", _simple_step(STEP_ANALYTICS, "Analytics config"))
    app.router.add_post("/api/onboarding/integration", onboarding_integration)

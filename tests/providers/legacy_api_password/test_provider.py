"""The legacy_api_password provider and request authenticator through the real server (SPEC 3.3, 6.4)."""

from __future__ import annotations

import base64
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import opp_auth_legacy_api_password
import pytest
from opp_auth_legacy_api_password import USER_NAME, LegacyApiPasswordAuthProvider

from opp_auth import AuthProvider, hookimpl
from opp_auth.config import load_config
from opp_auth.manager import AuthManager
from opp_auth.plugins import OppAuthPluginManager, make_plugin_manager
from opp_auth.testing import CLIENT_ID, OppAuthClient
from opp_auth.yaml import ConfigError

HANDLER = ("legacy_api_password", None)
PASSWORD = "s3cret-pässword"
PROVIDER = {"type": "legacy_api_password", "api_password": PASSWORD}
HTTP = {"use_x_forwarded_for": True, "trusted_proxies": ["127.0.0.1"]}
NUDGE_LOGGER = "openpeerpower.components.http.auth"
DISTRIBUTION = "opp-auth-legacy-api-password"

Factory = Callable[..., Awaitable[AuthManager]]


class StubProvider(AuthProvider):
    """A do-nothing provider, so configurations without legacy_api_password need no other plugin."""

    TYPE = "stub_for_tests"
    CONFIG_SCHEMA = AuthProvider.CONFIG_SCHEMA


class StubPlugin:
    """Registers StubProvider."""

    @staticmethod
    @hookimpl
    def opp_auth_register_auth_providers(register: Any) -> None:
        register(StubProvider)


STUB = ("stub_for_tests", StubPlugin())


async def serve(factory: Factory, opp_auth_client: Any, *providers: dict[str, Any]) -> tuple[AuthManager, OppAuthClient]:
    """A server with these providers (the stub when none), behind a proxy at 127.0.0.1."""
    auth = await factory(
        providers=list(providers) or [{"type": StubProvider.TYPE}], mfa_modules=[], http=HTTP, plugins=[STUB]
    )
    return auth, await opp_auth_client(auth)


def basic(user: str, password: str) -> str:
    """An HTTP Basic Authorization header value."""
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def legacy_request(form: str, password: str) -> dict[str, Any]:
    """Request keyword arguments carrying the password in one of the legacy forms."""
    if form == "query":
        return {"params": {"api_password": password}}
    if form == "basic":
        return {"headers": {"Authorization": basic("openpeerpower", password)}}
    return {"headers": {form: password}}


async def get_status(client: OppAuthClient, path: str = "/api/", *, ip: str | None = None, **kwargs: Any) -> int:
    """GET a path (optionally from a forwarded client address): the status."""
    headers = dict(kwargs.pop("headers", {}))
    if ip is not None:
        headers["X-Forwarded-For"] = ip
    async with client.request("GET", path, headers=headers, **kwargs) as resp:
        return resp.status


def legacy_users(auth: AuthManager) -> list[Any]:
    """The users named like the shared legacy user."""
    return [u for u in auth.store.users() if u.name == USER_NAME]


def nudges(caplog: pytest.LogCaptureFixture) -> list[tuple[int, str]]:
    """(level, message) of the bearer-token nudges logged."""
    return [(r.levelno, r.getMessage()) for r in caplog.records if r.name == NUDGE_LOGGER]


# ---- login flow -----------------------------------------------------------------------------


async def test_login_form_asks_for_the_password(opp_auth_factory: Factory, opp_auth_client: Any) -> None:
    """Step init has one required string field, password."""
    _, client = await serve(opp_auth_factory, opp_auth_client, PROVIDER)
    status, result = await client.login.start(HANDLER)
    assert status == 200
    assert (result["type"], result["step_id"]) == ("form", "init")
    assert result["data_schema"] == [{"type": "string", "name": "password", "required": True}]


async def test_login_with_the_password_gives_the_shared_user(opp_auth_factory: Factory, opp_auth_client: Any) -> None:
    """The right password logs in as 'Legacy API password user' in system-users, created on first login."""
    auth, client = await serve(opp_auth_factory, opp_auth_client, PROVIDER)
    tokens = await client.login.tokens(HANDLER, [{"password": PASSWORD}])
    async with client.request("GET", "/api/", headers={"Authorization": f"Bearer {tokens['access_token']}"}) as resp:
        assert resp.status == 200
    (user,) = legacy_users(auth)
    assert user.group_ids == ["system-users"] and user.is_active and not user.is_admin
    assert [c.data for c in user.credentials] == [{}]


async def test_every_login_shares_one_credential(opp_auth_factory: Factory, opp_auth_client: Any) -> None:
    """Two logins: one user, one credential."""
    auth, client = await serve(opp_auth_factory, opp_auth_client, PROVIDER)
    await client.login.tokens(HANDLER, [{"password": PASSWORD}])
    await client.login.tokens(HANDLER, [{"password": PASSWORD}])
    (user,) = legacy_users(auth)
    assert len(user.credentials) == 1
    assert len(auth.store.credentials_for_provider(HANDLER)) == 1


@pytest.mark.parametrize("password", ["wrong", "", PASSWORD.upper(), PASSWORD + " ", "\ud800"])
async def test_wrong_password_is_invalid_auth(opp_auth_factory: Factory, opp_auth_client: Any, password: str) -> None:
    """Any other password (case, spacing) is invalid_auth and creates nobody.

    Unencodable text (a lone surrogate) never reaches the provider: the HTTP edge refuses
    it with 400 invalid_format (opp_auth.validation); nobody is created either way.
    """
    auth, client = await serve(opp_auth_factory, opp_auth_client, PROVIDER)
    _, result = await client.login.start(HANDLER)
    status, result = await client.login.step(result["flow_id"], password=password)
    if password == "\ud800":
        assert (status, result["code"]) == (400, "invalid_format")
    else:
        assert status == 200
        assert result["type"] == "form" and result["errors"] == {"base": "invalid_auth"}
    assert legacy_users(auth) == []


async def test_configured_group_is_used_for_the_shared_user(opp_auth_factory: Factory, opp_auth_client: Any) -> None:
    """group: system-read-only puts the shared user there."""
    auth, client = await serve(opp_auth_factory, opp_auth_client, {**PROVIDER, "group": "system-read-only"})
    await client.login.tokens(HANDLER, [{"password": PASSWORD}])
    (user,) = legacy_users(auth)
    assert user.group_ids == ["system-read-only"]


# ---- request authentication -----------------------------------------------------------------

FORMS = ["X-OPP-Access", "X-HA-Access", "x-opp-access", "query", "basic"]


@pytest.mark.parametrize("form", FORMS)
async def test_request_with_the_password_is_authenticated(
    opp_auth_factory: Factory, opp_auth_client: Any, form: str
) -> None:
    """Header, query parameter or Basic auth with user openpeerpower: 200 as the shared user."""
    auth, client = await serve(opp_auth_factory, opp_auth_client, PROVIDER)
    assert await get_status(client, **legacy_request(form, PASSWORD)) == 200
    (user,) = legacy_users(auth)
    assert user.group_ids == ["system-users"]


@pytest.mark.parametrize("form", FORMS)
async def test_request_with_a_wrong_password_is_refused(
    opp_auth_factory: Factory, opp_auth_client: Any, form: str
) -> None:
    """A wrong legacy password: 401, and no user is created."""
    auth, client = await serve(opp_auth_factory, opp_auth_client, PROVIDER)
    assert await get_status(client, **legacy_request(form, "wrong")) == 401
    assert legacy_users(auth) == []


async def test_request_without_credentials_is_refused(opp_auth_factory: Factory, opp_auth_client: Any) -> None:
    """No legacy password and no token: 401."""
    _, client = await serve(opp_auth_factory, opp_auth_client, PROVIDER)
    assert await get_status(client) == 401


async def test_basic_auth_for_another_user_is_refused(opp_auth_factory: Factory, opp_auth_client: Any) -> None:
    """Only the user name openpeerpower carries the legacy password."""
    _, client = await serve(opp_auth_factory, opp_auth_client, PROVIDER)
    assert await get_status(client, headers={"Authorization": basic("homeassistant", PASSWORD)}) == 401


async def test_one_wrong_value_among_several_refuses(opp_auth_factory: Factory, opp_auth_client: Any) -> None:
    """Every legacy password a request carries must be right."""
    _, client = await serve(opp_auth_factory, opp_auth_client, PROVIDER)
    status = await get_status(client, headers={"X-OPP-Access": PASSWORD}, params={"api_password": "wrong"})
    assert status == 401


async def test_requests_and_logins_share_one_user(opp_auth_factory: Factory, opp_auth_client: Any) -> None:
    """A login, then requests in every form: still one shared user."""
    auth, client = await serve(opp_auth_factory, opp_auth_client, PROVIDER)
    await client.login.tokens(HANDLER, [{"password": PASSWORD}])
    for form in FORMS:
        assert await get_status(client, **legacy_request(form, PASSWORD)) == 200
    assert len(legacy_users(auth)) == 1


async def test_deactivated_shared_user_is_refused(opp_auth_factory: Factory, opp_auth_client: Any) -> None:
    """Deactivating the shared user stops the legacy password working on requests."""
    auth, client = await serve(opp_auth_factory, opp_auth_client, PROVIDER)
    assert await get_status(client, headers={"X-OPP-Access": PASSWORD}) == 200
    await auth.users.async_deactivate_user(legacy_users(auth)[0])
    assert await get_status(client, headers={"X-OPP-Access": PASSWORD}) == 401


async def test_password_without_the_provider_configured_is_refused(
    opp_auth_factory: Factory, opp_auth_client: Any
) -> None:
    """With the plugin installed but not configured, legacy passwords authenticate nothing."""
    _, client = await serve(opp_auth_factory, opp_auth_client)
    assert await get_status(client, headers={"X-OPP-Access": PASSWORD}) == 401


# ---- the bearer-token nudge -----------------------------------------------------------------


async def test_nudge_is_info_when_configured(
    opp_auth_factory: Factory, opp_auth_client: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """A supported legacy request logs the seed's message at INFO, naming path and client address."""
    caplog.set_level(logging.INFO, logger=NUDGE_LOGGER)
    _, client = await serve(opp_auth_factory, opp_auth_client, PROVIDER)
    await get_status(client, ip="192.0.2.4", headers={"X-OPP-Access": PASSWORD})
    assert nudges(caplog) == [(logging.INFO, "You need to use a bearer token to access /api/ from 192.0.2.4")]


async def test_nudge_is_warning_when_not_configured(
    opp_auth_factory: Factory, opp_auth_client: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """A legacy password this server does not accept logs the message at WARNING."""
    caplog.set_level(logging.INFO, logger=NUDGE_LOGGER)
    _, client = await serve(opp_auth_factory, opp_auth_client)
    await get_status(client, "/api/states", ip="192.0.2.4", params={"api_password": "x"})
    assert nudges(caplog) == [(logging.WARNING, "You need to use a bearer token to access /api/states from 192.0.2.4")]


async def test_nudge_once_per_path(
    opp_auth_factory: Factory, opp_auth_client: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """Repeated requests to a path log once; another path logs again."""
    caplog.set_level(logging.INFO, logger=NUDGE_LOGGER)
    _, client = await serve(opp_auth_factory, opp_auth_client, PROVIDER)
    for path in ("/api/", "/api/", "/api/", "/api/states", "/api/states"):
        await get_status(client, path, headers={"X-HA-Access": PASSWORD})
    assert [m for _, m in nudges(caplog)] == [
        "You need to use a bearer token to access /api/ from 127.0.0.1",
        "You need to use a bearer token to access /api/states from 127.0.0.1",
    ]


async def test_nudge_memory_is_bounded(
    opp_auth_factory: Factory, opp_auth_client: Any, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Past the path limit one final message is logged and no further paths are remembered."""
    monkeypatch.setattr(opp_auth_legacy_api_password, "MAX_NUDGED_PATHS", 2)
    caplog.set_level(logging.INFO, logger=NUDGE_LOGGER)
    auth, client = await serve(opp_auth_factory, opp_auth_client, PROVIDER)
    for index in range(5):
        await get_status(client, f"/api/p{index}", headers={"X-OPP-Access": PASSWORD})
    messages = [m for _, m in nudges(caplog)]
    assert messages == [
        "You need to use a bearer token to access /api/p0 from 127.0.0.1",
        "You need to use a bearer token to access /api/p1 from 127.0.0.1",
        "Legacy API passwords were sent to more than 2 paths; not logging further paths",
    ]
    assert len(opp_auth_legacy_api_password._NUDGERS[auth.context]._paths) == 2


async def test_no_nudge_without_a_legacy_password(
    opp_auth_factory: Factory, opp_auth_client: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """Ordinary requests (no token, a bearer token, Basic for another user) log nothing."""
    caplog.set_level(logging.DEBUG, logger=NUDGE_LOGGER)
    _, client = await serve(opp_auth_factory, opp_auth_client, PROVIDER)
    await get_status(client)
    await get_status(client, headers={"Authorization": "Bearer not-a-token"})
    await get_status(client, headers={"Authorization": basic("someone", PASSWORD)})
    assert nudges(caplog) == []


# ---- configuration (real configuration.yaml files) ------------------------------------------


def write_config(config_dir: Path, text: str) -> None:
    """Write configuration.yaml."""
    (config_dir / "configuration.yaml").write_text(text, encoding="utf-8")


def plugins(*, legacy_installed: bool = True) -> OppAuthPluginManager:
    """Installed plugins plus the stub provider (optionally without this distribution)."""
    return make_plugin_manager(plugins=[STUB], blocked=() if legacy_installed else (DISTRIBUTION,))


HTTP_API_PASSWORD = "openpeerpower:\n  auth_providers:\n    - type: stub_for_tests\nhttp:\n  api_password: hunter2\n"


def test_http_api_password_turns_the_provider_on(config_dir: Path, caplog: pytest.LogCaptureFixture) -> None:
    """http: api_password adds a legacy_api_password provider with that password, logging the deprecation once."""
    write_config(config_dir, HTTP_API_PASSWORD)
    with caplog.at_level(logging.WARNING):
        config = load_config(config_dir, plugins())
    assert [(cls, conf) for cls, conf in config.providers][1] == (
        LegacyApiPasswordAuthProvider,
        {"type": "legacy_api_password", "api_password": "hunter2", "group": "system-users"},
    )
    deprecations = [r for r in caplog.records if "api_password is deprecated" in r.getMessage()]
    assert len(deprecations) == 1 and deprecations[0].levelno == logging.WARNING
    assert "hunter2" not in caplog.text


def test_http_api_password_without_the_plugin_names_the_distribution(config_dir: Path) -> None:
    """With the distribution not installed, the error says what to install and hides the password."""
    write_config(config_dir, HTTP_API_PASSWORD)
    with pytest.raises(ConfigError) as info:
        load_config(config_dir, plugins(legacy_installed=False))
    assert "legacy_api_password" in info.value.message
    assert f"pip install {DISTRIBUTION}" in info.value.message
    assert "hunter2" not in str(info.value)


def test_provider_entry_without_the_plugin_names_the_distribution(config_dir: Path) -> None:
    """An auth_providers entry of this type, distribution missing: the error names it and its line."""
    write_config(config_dir, "openpeerpower:\n  auth_providers:\n    - type: legacy_api_password\n      api_password: x\n")
    with pytest.raises(ConfigError) as info:
        load_config(config_dir, plugins(legacy_installed=False))
    assert DISTRIBUTION in info.value.message
    assert info.value.line == 3


@pytest.mark.parametrize(
    ("entry", "problem"),
    [
        ("    - type: legacy_api_password\n", "api_password"),
        ("    - type: legacy_api_password\n      api_password: ''\n", "api_password"),
        ("    - type: legacy_api_password\n      api_password: x\n      group: admins\n", "group"),
    ],
)
def test_bad_provider_entry_is_rejected(config_dir: Path, entry: str, problem: str) -> None:
    """A missing or empty password, or an unknown group, fails loading at that key."""
    write_config(config_dir, "openpeerpower:\n  auth_providers:\n" + entry)
    with pytest.raises(ConfigError) as info:
        load_config(config_dir, plugins())
    assert problem in str(info.value)


async def test_http_api_password_authenticates_requests_end_to_end(config_dir: Path, opp_auth_client: Any) -> None:
    """configuration.yaml with http: api_password, served: the header opens GET /api/."""
    write_config(config_dir, HTTP_API_PASSWORD)
    pm = plugins()
    config = load_config(config_dir, pm)
    auth = AuthManager(
        str(config_dir), pm, provider_configs=config.providers, mfa_configs=config.mfa_modules, http_config=config.http
    )
    client = await opp_auth_client(auth)
    assert await get_status(client, headers={"X-OPP-Access": "hunter2"}) == 200
    assert await get_status(client, headers={"X-OPP-Access": "hunter3"}) == 401


async def test_logins_redeemed_after_a_request_share_the_user(opp_auth_factory: Factory, opp_auth_client: Any) -> None:
    """Codes issued before the shared user existed still resolve to the one user a request created meanwhile."""
    auth, client = await serve(opp_auth_factory, opp_auth_client, PROVIDER)
    first = await client.login.code(HANDLER, [{"password": PASSWORD}])
    second = await client.login.code(HANDLER, [{"password": PASSWORD}])
    assert await get_status(client, headers={"X-OPP-Access": PASSWORD}) == 200
    for code in (first, second):
        status, body = await client.login.token(grant_type="authorization_code", client_id=CLIENT_ID, code=code)
        assert status == 200, body
    assert len(legacy_users(auth)) == 1
    assert len(auth.store.credentials_for_provider(HANDLER)) == 1

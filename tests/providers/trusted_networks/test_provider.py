"""The trusted_networks provider through the real HTTP server (SPEC 3.4, 6.5; G7 fixed).

The server trusts 127.0.0.1 as a reverse proxy, so each test presents its
client address in X-Forwarded-For, as a proxy in front of the server would.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import voluptuous as vol
from opp_auth_trusted_networks import CONFIG_SCHEMA, NOT_TRUSTED, PROXY_ADDRESS, TrustedNetworksAuthProvider

from opp_auth import InvalidAuthError
from opp_auth.config import load_config
from opp_auth.manager import AuthManager
from opp_auth.models import Group
from opp_auth.plugins import make_plugin_manager
from opp_auth.testing import CLIENT_ID, LoginFlowDriver, OppAuthClient

HANDLER = ("trusted_networks", None)
NETWORKS = ["192.168.0.0/24", "fd00::/8", "10.0.0.7"]
HTTP = {"use_x_forwarded_for": True, "trusted_proxies": ["127.0.0.1"]}
INSIDE = "192.168.0.5"
OUTSIDE = "192.168.1.5"

Factory = Callable[..., Awaitable[AuthManager]]
From = Callable[[str | None], LoginFlowDriver]


def provider_config(**extra: Any) -> dict[str, Any]:
    """The provider's configuration entry."""
    return {"type": "trusted_networks", "trusted_networks": NETWORKS, **extra}


async def make_auth(factory: Factory, **extra: Any) -> AuthManager:
    """A manager with only this provider, behind a proxy at 127.0.0.1."""
    return await factory(providers=[provider_config(**extra)], mfa_modules=[], http=HTTP)


async def seed_users(factory: Factory, *people: tuple[str, list[str]]) -> dict[str, str]:
    """Create people in the configuration directory first, so later configurations can name their ids."""
    auth = await make_auth(factory)
    ids = {}
    for name, groups in people:
        ids[name] = (await auth.users.async_create_user(name, groups)).id
    await auth.async_shutdown()
    return ids


def provider(auth: AuthManager) -> TrustedNetworksAuthProvider:
    """The provider under test."""
    return auth.auth_providers[0]  # type: ignore[return-value]


@pytest.fixture
async def served(opp_auth_client: Any) -> Callable[[AuthManager], Awaitable[OppAuthClient]]:
    """Serve a manager with the proxy-trusting http configuration."""

    async def serve(auth: AuthManager) -> OppAuthClient:
        return await opp_auth_client(auth, auth.http_config)

    return serve


@pytest.fixture
async def sessions() -> AsyncIterator[list[aiohttp.ClientSession]]:
    """Client sessions opened by a test, closed after it."""
    opened: list[aiohttp.ClientSession] = []
    yield opened
    for session in opened:
        await session.close()


def client_at(client: OppAuthClient, sessions: list[aiohttp.ClientSession]) -> From:
    """A login driver whose requests say they come from an address (None: the proxy itself)."""

    def make(ip: str | None) -> LoginFlowDriver:
        session = aiohttp.ClientSession(headers={"X-Forwarded-For": ip} if ip else {})
        sessions.append(session)
        return LoginFlowDriver(session, client.base)

    return make


async def form_options(driver: LoginFlowDriver) -> list[list[Any]]:
    """Start a flow and return the user select's options."""
    status, result = await driver.start(HANDLER)
    assert status == 200 and result["type"] == "form", result
    (field,) = result["data_schema"]
    return field["options"]


async def api_status(client: OppAuthClient, access_token: str, ip: str | None = INSIDE) -> int:
    """GET /api/ with a bearer token, from ip (through the trusted proxy) or from the proxy itself."""
    headers = {"Authorization": f"Bearer {access_token}"}
    if ip is not None:
        headers["X-Forwarded-For"] = ip
    async with client.request("GET", "/api/", headers=headers) as resp:
        return resp.status


# ---- the form -----------------------------------------------------------------------------


async def test_form_offers_active_people_as_a_select(opp_auth_factory: Factory, served: Any, sessions: Any) -> None:
    """The one field `user` is a select of [id, name] of active, non-system users; no errors yet."""
    auth = await make_auth(opp_auth_factory)
    alice = await auth.users.async_create_user("Alice", ["system-users"])
    bob = await auth.users.async_create_user("Bob", ["system-admin"])
    await auth.users.async_create_user("Gone", ["system-users"], is_active=False)
    await auth.users.async_create_system_user("Integration", ["system-users"])
    at = client_at(await served(auth), sessions)
    status, result = await at(INSIDE).start(HANDLER)
    assert status == 200
    assert result["type"] == "form" and result["step_id"] == "init"
    assert result["errors"] is None
    assert result["data_schema"] == [
        {"type": "select", "name": "user", "required": True, "options": [[alice.id, "Alice"], [bob.id, "Bob"]]}
    ]


async def test_choosing_a_user_logs_in_as_that_user(opp_auth_factory: Factory, served: Any, sessions: Any) -> None:
    """The tokens belong to the chosen person; their credentials are linked to them and no user is created."""
    auth = await make_auth(opp_auth_factory)
    await auth.users.async_create_user("Alice", ["system-users"])
    bob = await auth.users.async_create_user("Bob", ["system-users"])
    client = await served(auth)
    tokens = await client_at(client, sessions)(INSIDE).tokens(HANDLER, [{"user": bob.id}])
    assert await api_status(client, tokens["access_token"]) == 200
    # G6: the access token is checked against the caller's address on every request.
    assert await api_status(client, tokens["access_token"], "203.0.113.9") == 401
    assert await api_status(client, tokens["access_token"], None) == 401
    refresh_token = await auth.refresh_tokens.async_get_refresh_token_by_token(tokens["refresh_token"])
    assert refresh_token is not None and refresh_token.user.id == bob.id
    assert [(c.auth_provider_type, c.data) for c in bob.credentials] == [("trusted_networks", {"user_id": bob.id})]
    assert len(auth.store.users()) == 2


async def test_second_login_reuses_the_credentials(opp_auth_factory: Factory, served: Any, sessions: Any) -> None:
    """Logging in twice as one person gives one credential, not two."""
    auth = await make_auth(opp_auth_factory)
    alice = await auth.users.async_create_user("Alice", ["system-users"])
    at = client_at(await served(auth), sessions)
    await at(INSIDE).tokens(HANDLER, [{"user": alice.id}])
    await at(INSIDE).tokens(HANDLER, [{"user": alice.id}])
    assert len(alice.credentials) == 1


@pytest.mark.parametrize("choice", ["unknown", "system", "inactive", "not a user id"])
async def test_choice_not_offered_is_invalid_auth(
    opp_auth_factory: Factory, served: Any, sessions: Any, choice: str
) -> None:
    """A user that is not a candidate is a failed login (form with invalid_auth), not a 400 or a login."""
    auth = await make_auth(opp_auth_factory)
    await auth.users.async_create_user("Alice", ["system-users"])
    ids = {
        "unknown": "0123456789ab4def8123456789abcdef",
        "system": (await auth.users.async_create_system_user("Integration", ["system-users"])).id,
        "inactive": (await auth.users.async_create_user("Gone", ["system-users"], is_active=False)).id,
        "not a user id": "../../etc/passwd",
    }
    driver = client_at(await served(auth), sessions)(INSIDE)
    _, result = await driver.start(HANDLER)
    status, result = await driver.step(result["flow_id"], user=ids[choice])
    assert status == 200
    assert result["type"] == "form" and result["errors"] == {"base": "invalid_auth"}


async def test_user_deactivated_after_the_form_was_shown_is_refused(
    opp_auth_factory: Factory, served: Any, sessions: Any
) -> None:
    """The choice is checked against the users as they are at submission time."""
    auth = await make_auth(opp_auth_factory)
    alice = await auth.users.async_create_user("Alice", ["system-users"])
    driver = client_at(await served(auth), sessions)(INSIDE)
    _, result = await driver.start(HANDLER)
    await auth.users.async_deactivate_user(alice)
    _, result = await driver.step(result["flow_id"], user=alice.id)
    assert result["errors"] == {"base": "invalid_auth"}


async def test_non_string_choice_is_malformed_input(opp_auth_factory: Factory, served: Any, sessions: Any) -> None:
    """Input that is not even a string does not match the form: 400."""
    auth = await make_auth(opp_auth_factory)
    await auth.users.async_create_user("Alice", ["system-users"])
    driver = client_at(await served(auth), sessions)(INSIDE)
    _, result = await driver.start(HANDLER)
    status, body = await driver.step(result["flow_id"], user=["a", "b"])
    assert (status, body) == (400, {"message": "User input malformed"})


# ---- who may use it -----------------------------------------------------------------------


@pytest.mark.parametrize("ip", ["192.168.0.5", "fd00::5", "10.0.0.7", "::ffff:192.168.0.9"])
async def test_addresses_inside_the_networks_may_log_in(
    opp_auth_factory: Factory, served: Any, sessions: Any, ip: str
) -> None:
    """IPv4 and IPv6 networks and single addresses are trusted (IPv4-mapped IPv6 counts as IPv4)."""
    auth = await make_auth(opp_auth_factory)
    alice = await auth.users.async_create_user("Alice", ["system-users"])
    client = await served(auth)
    tokens = await client_at(client, sessions)(ip).tokens(HANDLER, [{"user": alice.id}])
    assert await api_status(client, tokens["access_token"]) == 200


@pytest.mark.parametrize("ip", ["192.168.1.5", "2001:db8::5", "10.0.0.8", "8.8.8.8"])
async def test_addresses_outside_the_networks_are_not_allowed(
    opp_auth_factory: Factory, served: Any, sessions: Any, ip: str
) -> None:
    """Clients outside every trusted network get abort not_allowed."""
    auth = await make_auth(opp_auth_factory)
    await auth.users.async_create_user("Alice", ["system-users"])
    status, result = await client_at(await served(auth), sessions)(ip).start(HANDLER)
    assert status == 200
    assert (result["type"], result["reason"]) == ("abort", "not_allowed")


@pytest.mark.parametrize("forwarded", [None, "127.0.0.1"])
async def test_the_proxy_own_address_is_not_allowed(
    opp_auth_factory: Factory, served: Any, sessions: Any, forwarded: str | None
) -> None:
    """A request carrying the trusted proxy's address is refused even when it lies in a trusted network."""
    auth = await make_auth(opp_auth_factory, trusted_networks=["127.0.0.0/8", "192.168.0.0/24"])
    await auth.users.async_create_user("Alice", ["system-users"])
    _, result = await client_at(await served(auth), sessions)(forwarded).start(HANDLER)
    assert (result["type"], result["reason"]) == ("abort", "not_allowed")


async def test_forwarded_header_from_an_untrusted_peer_is_not_believed(
    opp_auth_factory: Factory, served: Any, sessions: Any
) -> None:
    """Without proxy trust the header is ignored, so a claimed trusted address gains nothing."""
    auth = await opp_auth_factory(providers=[provider_config()], mfa_modules=[])
    await auth.users.async_create_user("Alice", ["system-users"])
    _, result = await client_at(await served(auth), sessions)(INSIDE).start(HANDLER)
    assert (result["type"], result["reason"]) == ("abort", "not_allowed")


# ---- allow_bypass_login -------------------------------------------------------------------


async def test_bypass_with_one_candidate_logs_in_without_a_form(
    opp_auth_factory: Factory, served: Any, sessions: Any
) -> None:
    """Flow creation answers create_entry with an authorization code that trades for tokens."""
    auth = await make_auth(opp_auth_factory, allow_bypass_login=True)
    alice = await auth.users.async_create_user("Alice", ["system-users"])
    client = await served(auth)
    driver = client_at(client, sessions)(INSIDE)
    status, result = await driver.start(HANDLER)
    assert status == 200 and result["type"] == "create_entry", result
    assert result["title"] == "Trusted Networks"
    status, body = await driver.token(grant_type="authorization_code", client_id=CLIENT_ID, code=result["result"])
    assert status == 200, body
    refresh_token = await auth.refresh_tokens.async_get_refresh_token_by_token(body["refresh_token"])
    assert refresh_token is not None and refresh_token.user.id == alice.id


async def test_bypass_with_two_candidates_shows_the_form(opp_auth_factory: Factory, served: Any, sessions: Any) -> None:
    """With more than one candidate the person must choose."""
    auth = await make_auth(opp_auth_factory, allow_bypass_login=True)
    await auth.users.async_create_user("Alice", ["system-users"])
    await auth.users.async_create_user("Bob", ["system-users"])
    _, result = await client_at(await served(auth), sessions)(INSIDE).start(HANDLER)
    assert result["type"] == "form"


async def test_without_bypass_one_candidate_still_shows_the_form(
    opp_auth_factory: Factory, served: Any, sessions: Any
) -> None:
    """Bypass is off by default."""
    auth = await make_auth(opp_auth_factory)
    await auth.users.async_create_user("Alice", ["system-users"])
    _, result = await client_at(await served(auth), sessions)(INSIDE).start(HANDLER)
    assert result["type"] == "form"


async def test_bypass_counts_candidates_after_trusted_users(
    opp_auth_factory: Factory, served: Any, sessions: Any
) -> None:
    """trusted_users narrowing the list to one person triggers the bypass."""
    ids = await seed_users(opp_auth_factory, ("Alice", ["system-users"]), ("Bob", ["system-users"]))
    auth = await make_auth(opp_auth_factory, allow_bypass_login=True, trusted_users={"192.168.0.0/24": ids["Bob"]})
    _, result = await client_at(await served(auth), sessions)(INSIDE).start(HANDLER)
    assert result["type"] == "create_entry"
    credentials = auth.store.get_user(ids["Bob"]).credentials  # type: ignore[union-attr]
    assert [c.data for c in credentials] == [{"user_id": ids["Bob"]}]


# ---- trusted_users --------------------------------------------------------------------------


async def test_trusted_users_by_user_id(opp_auth_factory: Factory, served: Any, sessions: Any) -> None:
    """A network listing user ids offers only them; a network without an entry offers everyone."""
    ids = await seed_users(opp_auth_factory, ("Alice", ["system-users"]), ("Bob", ["system-users"]))
    auth = await make_auth(opp_auth_factory, trusted_users={"192.168.0.0/24": [ids["Alice"]]})
    at = client_at(await served(auth), sessions)
    assert await form_options(at(INSIDE)) == [[ids["Alice"], "Alice"]]
    assert await form_options(at("fd00::5")) == [[ids["Alice"], "Alice"], [ids["Bob"], "Bob"]]


async def test_trusted_users_by_system_group(opp_auth_factory: Factory, served: Any, sessions: Any) -> None:
    """{group: system-admin} offers the members of that group (G7: group entries match)."""
    ids = await seed_users(opp_auth_factory, ("Alice", ["system-users"]), ("Root", ["system-admin"]))
    auth = await make_auth(opp_auth_factory, trusted_users={"192.168.0.0/24": {"group": "system-admin"}})
    assert await form_options(client_at(await served(auth), sessions)(INSIDE)) == [[ids["Root"], "Root"]]


async def test_trusted_users_by_custom_group_and_user_id(opp_auth_factory: Factory, served: Any, sessions: Any) -> None:
    """A list mixing a user id and a uuid4 group offers both, and nobody else."""
    auth = await make_auth(opp_auth_factory)
    family = Group(name="Family")
    auth.store.add_group(family)
    kid = await auth.users.async_create_user("Kid", [family.id])
    guest = await auth.users.async_create_user("Guest", ["system-read-only"])
    await auth.users.async_create_user("Other", ["system-users"])
    await auth.async_shutdown()
    auth = await make_auth(opp_auth_factory, trusted_users={"fd00::/8": [guest.id, {"group": [family.id]}]})
    options = await form_options(client_at(await served(auth), sessions)("fd00::5"))
    assert sorted(map(tuple, options)) == sorted([(kid.id, "Kid"), (guest.id, "Guest")])


async def test_first_matching_trusted_users_network_wins(opp_auth_factory: Factory, served: Any, sessions: Any) -> None:
    """Networks are tried in configuration order; the first containing the client decides."""
    ids = await seed_users(opp_auth_factory, ("Alice", ["system-users"]), ("Bob", ["system-users"]))
    auth = await make_auth(
        opp_auth_factory, trusted_users={"192.168.0.0/28": ids["Alice"], "192.168.0.0/24": ids["Bob"]}
    )
    at = client_at(await served(auth), sessions)
    assert await form_options(at("192.168.0.5")) == [[ids["Alice"], "Alice"]]
    assert await form_options(at("192.168.0.100")) == [[ids["Bob"], "Bob"]]


async def test_person_outside_trusted_users_cannot_be_chosen(
    opp_auth_factory: Factory, served: Any, sessions: Any
) -> None:
    """Submitting an existing person that the client's network does not list is invalid_auth."""
    ids = await seed_users(opp_auth_factory, ("Alice", ["system-users"]), ("Bob", ["system-users"]))
    auth = await make_auth(opp_auth_factory, trusted_users={"192.168.0.0/24": [ids["Alice"]]})
    driver = client_at(await served(auth), sessions)(INSIDE)
    _, result = await driver.start(HANDLER)
    _, result = await driver.step(result["flow_id"], user=ids["Bob"])
    assert result["errors"] == {"base": "invalid_auth"}


# ---- refresh tokens -------------------------------------------------------------------------


async def logged_in(factory: Factory, served: Any, sessions: Any) -> tuple[From, dict[str, Any]]:
    """Alice logged in from INSIDE: (driver factory, tokens); the proxy's own network is listed too."""
    auth = await make_auth(factory, trusted_networks=[*NETWORKS, "127.0.0.0/8"])
    alice = await auth.users.async_create_user("Alice", ["system-users"])
    at = client_at(await served(auth), sessions)
    return at, await at(INSIDE).tokens(HANDLER, [{"user": alice.id}])


@pytest.mark.parametrize(("ip", "reason"), [(OUTSIDE, NOT_TRUSTED), ("2001:db8::1", NOT_TRUSTED), (None, PROXY_ADDRESS)])
async def test_refresh_from_an_untrusted_address_is_refused(
    opp_auth_factory: Factory, served: Any, sessions: Any, ip: str | None, reason: str
) -> None:
    """No new access token outside the networks (or from the proxy itself): 403 access_denied with the reason."""
    at, tokens = await logged_in(opp_auth_factory, served, sessions)
    status, body = await at(ip).token(grant_type="refresh_token", client_id=CLIENT_ID, refresh_token=tokens["refresh_token"])
    assert (status, body) == (403, {"error": "access_denied", "error_description": reason})


async def test_refresh_from_inside_the_networks_is_allowed(opp_auth_factory: Factory, served: Any, sessions: Any) -> None:
    """Another trusted address (here IPv6) may refresh."""
    at, tokens = await logged_in(opp_auth_factory, served, sessions)
    status, body = await at("fd00::9").token(grant_type="refresh_token", client_id=CLIENT_ID, refresh_token=tokens["refresh_token"])
    assert status == 200 and body["access_token"], body


async def test_refresh_with_unknown_address_is_refused(opp_auth_factory: Factory) -> None:
    """Minting without a remote address fails with the provider's message."""
    auth = await make_auth(opp_auth_factory)
    alice = await auth.users.async_create_user("Alice", ["system-users"])
    credentials = await provider(auth).async_get_or_create_credentials({"user": alice.id})
    refresh_token = await auth.refresh_tokens.async_create_refresh_token(alice, CLIENT_ID, credential=credentials)
    with pytest.raises(InvalidAuthError, match="^Unknown remote ip can't be used for trusted network provider.$"):
        await auth.access_tokens.async_create_access_token(refresh_token, None)


# ---- credentials ---------------------------------------------------------------------------


@pytest.mark.parametrize("who", ["unknown", "system", "inactive"])
async def test_credentials_only_for_existing_active_people(opp_auth_factory: Factory, who: str) -> None:
    """get_or_create_credentials refuses unknown, system and inactive users and creates no user."""
    auth = await make_auth(opp_auth_factory)
    ids = {
        "unknown": "0123456789ab4def8123456789abcdef",
        "system": (await auth.users.async_create_system_user("Integration", ["system-users"])).id,
        "inactive": (await auth.users.async_create_user("Gone", ["system-users"], is_active=False)).id,
    }
    before = len(auth.store.users())
    with pytest.raises(InvalidAuthError, match="invalid user"):
        await provider(auth).async_get_or_create_credentials({"user": ids[who]})
    assert len(auth.store.users()) == before
    assert auth.store.credentials_for_provider(HANDLER) == []


async def test_new_credentials_are_linked_and_saved_at_once(opp_auth_factory: Factory) -> None:
    """Credentials are linked to the person when created, and written to .storage/auth."""
    auth = await make_auth(opp_auth_factory)
    alice = await auth.users.async_create_user("Alice", ["system-users"])
    credentials = await provider(auth).async_get_or_create_credentials({"user": alice.id})
    assert not credentials.is_new
    assert auth.store.user_for_credentials(credentials) is alice
    await auth.async_shutdown()
    reloaded = await make_auth(opp_auth_factory)
    stored = reloaded.store.credentials_for_provider(HANDLER)
    assert [(c.data, c.user_id) for c in stored] == [({"user_id": alice.id}, alice.id)]


# ---- configuration ---------------------------------------------------------------------------


def write_config(config_dir: Path, text: str) -> Any:
    """Write configuration.yaml and load it with the installed plugins."""
    (config_dir / "configuration.yaml").write_text(text, encoding="utf-8")
    return load_config(config_dir, make_plugin_manager())


def test_yaml_configuration_with_groups_and_ipv6(config_dir: Path) -> None:
    """A documented configuration loads: one network or a list, quoted IPv6 keys, system and uuid4 groups."""
    config = write_config(
        config_dir,
        "openpeerpower:\n"
        "  auth_providers:\n"
        "    - type: trusted_networks\n"
        "      trusted_networks: 192.168.0.0/24\n"
        "      trusted_users:\n"
        "        192.168.0.0/24:\n"
        "          group: system-users\n"
        '        "fd00::/8":\n'
        "          - 6f1b8a2c4d5e4f708192a3b4c5d6e7f8\n"
        "          - group: [system-read-only, 0b6c9a2e1f3d4c5b8a7e6d5c4b3a2f10]\n"
        "      allow_bypass_login: true\n",
    )
    (cls, conf), = config.providers
    assert cls is TrustedNetworksAuthProvider
    assert [str(n) for n in conf["trusted_networks"]] == ["192.168.0.0/24"]
    assert {str(k): v for k, v in conf["trusted_users"].items()} == {
        "192.168.0.0/24": [{"group": ["system-users"]}],
        "fd00::/8": [
            "6f1b8a2c4d5e4f708192a3b4c5d6e7f8",
            {"group": ["system-read-only", "0b6c9a2e1f3d4c5b8a7e6d5c4b3a2f10"]},
        ],
    }
    assert conf["allow_bypass_login"] is True


def test_defaults() -> None:
    """trusted_users defaults to none and bypass to off."""
    conf = CONFIG_SCHEMA({"type": "trusted_networks", "trusted_networks": ["10.0.0.0/8"]})
    assert (conf["trusted_users"], conf["allow_bypass_login"]) == ({}, False)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({"trusted_networks": ["192.168.0.0/33"]}, "not an IP address or network"),
        ({"trusted_users": {"192.168.0.0/24": ["alice"]}}, "not a user id"),
        ({"trusted_users": {"192.168.0.0/24": [{"group": "admins"}]}}, "not a group id"),
        ({"trusted_users": {"192.168.0.0/24": [{"group": "system-users", "user": "x"}]}}, "a user id or {group"),
        ({"trusted_users": {"not-a-network": []}}, "not an IP address or network"),
        ({"trusted_users": {"192.168.0.0/24": [], "192.168.0.1/24": []}}, "listed twice"),
    ],
)
def test_bad_configuration_is_rejected(extra: dict[str, Any], message: str) -> None:
    """Malformed networks, user ids and group entries fail validation, saying what is wrong."""
    with pytest.raises(vol.Invalid, match=message.replace("{", r"\{")):
        CONFIG_SCHEMA({"type": "trusted_networks", "trusted_networks": ["192.168.0.0/24"], **extra})


def test_keeps_open_peer_powers_support_mfa_flag() -> None:
    """The flag stays false for compatibility; the one MFA decision ignores it (tests/http/test_mfa_decision.py)."""
    assert TrustedNetworksAuthProvider.SUPPORT_MFA is False

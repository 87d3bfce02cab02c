"""AuthManager: users, refresh and access tokens, authorization codes and login flows (MFA included)."""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import sys
import time
from collections.abc import Awaitable, Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import jwt
import pytest
import voluptuous as vol

import opp_auth.codes
import opp_auth.flow
import opp_auth.login_flow
import opp_auth.manager
from opp_auth import AuthProvider, Credentials, LoginFlow, User, hookimpl
from opp_auth.codes import AUTHORIZE, LINK_USER
from opp_auth.executor import prefer_loop_latency
from opp_auth.flow import TooManyFlows, UnknownFlow
from opp_auth.manager import AuthManager, AuthManagerError
from opp_auth.models import GROUP_ID_ADMIN, GROUP_ID_USER
from opp_auth.providers import InvalidAuthError
from opp_auth.store import AuthStore

Factory = Callable[..., Awaitable[AuthManager]]

CLIENT_ID = "https://example.com/app"
HANDLER = ("insecure_example", None)
EXAMPLE = {
    "type": "insecure_example",
    "users": [
        {"username": "alice", "password": "alice-pw", "name": "Alice"},
        {"username": "bob", "password": "bob-pw", "name": "Bob"},
    ],
}
PIN_ONE = {"type": "insecure_example", "id": "pin1", "name": "PIN one", "data": []}
PIN_TWO = {"type": "insecure_example", "id": "pin2", "name": "PIN two", "data": []}


class Clock:
    """Stands in for a module's `time`: real time shifted by `offset` seconds."""

    def __init__(self) -> None:
        """Start at real time."""
        self.offset = 0.0

    def monotonic(self) -> float:
        """Shifted monotonic clock."""
        return time.monotonic() + self.offset

    def time(self) -> float:
        """Shifted wall clock."""
        return time.time() + self.offset


@pytest.fixture
async def auth(opp_auth_factory: Factory) -> AuthManager:
    """A manager with the insecure_example provider and no MFA."""
    return await opp_auth_factory(providers=[EXAMPLE])


async def new_user(auth: AuthManager, username: str = "alice") -> tuple[User, Credentials]:
    """A user created the way a first login creates one."""
    provider = auth.registry.get_auth_provider(*HANDLER)
    assert provider is not None
    cred = await provider.async_get_or_create_credentials({"username": username})
    return await auth.users.async_get_or_create_user(cred), cred


async def refused(awaitable: Awaitable[Any], error: type[Exception], message: str) -> None:
    """Assert awaiting raises `error` with exactly `message`."""
    with pytest.raises(error) as info:
        await awaitable
    assert str(info.value) == message


# ---- refresh-token creation rules (SPEC 1.4) --------------------------------------------


async def test_inactive_user_gets_no_refresh_token(auth: AuthManager) -> None:
    """User is not active."""
    user = await auth.users.async_create_user("Idle", is_active=False)
    await refused(auth.refresh_tokens.async_create_refresh_token(user, CLIENT_ID), ValueError, "User is not active")


async def test_normal_token_requires_client_id(auth: AuthManager) -> None:
    """A person's default token is normal and needs a client."""
    user, _ = await new_user(auth)
    await refused(auth.refresh_tokens.async_create_refresh_token(user), ValueError, "Client is required to generate a refresh token.")


async def test_person_token_defaults_to_normal(auth: AuthManager) -> None:
    """No token_type given: normal for people."""
    user, _ = await new_user(auth)
    token = await auth.refresh_tokens.async_create_refresh_token(user, CLIENT_ID)
    assert (token.token_type, token.client_id) == ("normal", CLIENT_ID)
    assert len(token.token) == 128 and len(token.jwt_key) == 128


async def test_system_user_token_defaults_to_system(auth: AuthManager) -> None:
    """No token_type given: system for system users."""
    user = await auth.users.async_create_system_user("Supervisor")
    token = await auth.refresh_tokens.async_create_refresh_token(user)
    assert (token.token_type, token.client_id) == ("system", None)


async def test_system_user_token_cannot_have_client(auth: AuthManager) -> None:
    """System users' tokens are not tied to a client."""
    user = await auth.users.async_create_system_user("Supervisor")
    await refused(
        auth.refresh_tokens.async_create_refresh_token(user, CLIENT_ID),
        ValueError,
        "System generated users cannot have refresh tokens connected to a client.",
    )


async def test_system_user_cannot_have_normal_token(auth: AuthManager) -> None:
    """System users only get system tokens."""
    user = await auth.users.async_create_system_user("Supervisor")
    await refused(
        auth.refresh_tokens.async_create_refresh_token(user, token_type="normal"),
        ValueError,
        "System generated users can only have system type refresh tokens",
    )


async def test_person_cannot_have_system_token(auth: AuthManager) -> None:
    """System tokens only for system users."""
    user, _ = await new_user(auth)
    await refused(
        auth.refresh_tokens.async_create_refresh_token(user, token_type="system"),
        ValueError,
        "System generated users can only have system type refresh tokens",
    )


async def test_long_lived_token_requires_client_name(auth: AuthManager) -> None:
    """A long-lived token must be named."""
    user, _ = await new_user(auth)
    await refused(
        auth.refresh_tokens.async_create_refresh_token(user, token_type="long_lived_access_token"),
        ValueError,
        "Client_name is required for long-lived access token",
    )


async def test_long_lived_token_name_must_be_unique_per_user(auth: AuthManager) -> None:
    """Second token with the same name: '<name> already exists'."""
    user, _ = await new_user(auth)
    await auth.refresh_tokens.async_create_refresh_token(
        user, client_name="Node-RED", token_type="long_lived_access_token", access_token_expiration=timedelta(days=3650)
    )
    await refused(
        auth.refresh_tokens.async_create_refresh_token(user, client_name="Node-RED", token_type="long_lived_access_token"),
        ValueError,
        "Node-RED already exists",
    )


async def test_long_lived_token_name_may_repeat_across_users(auth: AuthManager) -> None:
    """Uniqueness is per user."""
    alice, _ = await new_user(auth, "alice")
    bob, _ = await new_user(auth, "bob")
    await auth.refresh_tokens.async_create_refresh_token(alice, client_name="Node-RED", token_type="long_lived_access_token")
    token = await auth.refresh_tokens.async_create_refresh_token(bob, client_name="Node-RED", token_type="long_lived_access_token")
    assert token.client_name == "Node-RED"


async def test_empty_client_name_and_icon_are_not_stored(auth: AuthManager) -> None:
    """client_name/client_icon are kept only when truthy."""
    user, _ = await new_user(auth)
    token = await auth.refresh_tokens.async_create_refresh_token(user, CLIENT_ID, client_name="", client_icon="")
    assert (token.client_name, token.client_icon) == (None, None)


@pytest.mark.storage_types("json")  # reads the .storage files
async def test_created_refresh_token_is_on_disk_when_call_returns(auth: AuthManager, config_dir: Path) -> None:
    """Tokens handed to clients are durable at once."""
    user, _ = await new_user(auth)
    token = await auth.refresh_tokens.async_create_refresh_token(user, CLIENT_ID)
    # What a restarted server reads: the file and the journal of changes since it was written.
    again = AuthStore(str(config_dir))
    again.keyring = auth.store.keyring
    await again.async_load()
    assert again.get_refresh_token(token.id) is not None


# ---- users ------------------------------------------------------------------------------


async def test_create_user_is_not_owner_unless_asked(auth: AuthManager) -> None:
    """Even the first user is only owner when the caller says so."""
    user = await auth.users.async_create_user("First")
    assert (user.is_owner, user.is_active) == (False, True)


async def test_create_user_as_owner(auth: AuthManager) -> None:
    """is_owner=True makes the owner."""
    user = await auth.users.async_create_user("Owner", [GROUP_ID_ADMIN], is_owner=True)
    assert user.is_owner and user.is_admin
    assert auth.users.owner() is user


async def test_new_credentials_create_a_user_in_system_users(auth: AuthManager) -> None:
    """Users created by a first login are plain users named by the provider (G19 fix), never owner."""
    user, cred = await new_user(auth)
    assert user.name == "Alice"
    assert user.group_ids == [GROUP_ID_USER]
    assert (user.is_owner, user.is_admin, user.is_active, user.system_generated) == (False, False, True, False)
    assert cred.is_new is False
    assert auth.store.user_for_credentials(cred) is user


async def test_known_credentials_return_the_same_user(auth: AuthManager) -> None:
    """The second login finds the first login's user."""
    user, _ = await new_user(auth)
    again, _ = await new_user(auth)
    assert again is user
    assert len(await auth.users.async_get_users()) == 1


async def test_owner_cannot_be_deactivated(auth: AuthManager) -> None:
    """Unable to deactivate the owner."""
    owner = await auth.users.async_create_user("Owner", is_owner=True)
    await refused(auth.users.async_deactivate_user(owner), AuthManagerError, "Unable to deactivate the owner")
    assert owner.is_active


async def test_update_with_unknown_group_changes_nothing(auth: AuthManager) -> None:
    """Invalid group specified. and the name stays."""
    user, _ = await new_user(auth)
    await refused(
        auth.users.async_update_user(user, name="Renamed", group_ids=["no-such-group"]),
        AuthManagerError,
        "Invalid group specified.",
    )
    assert (user.name, user.group_ids) == ("Alice", [GROUP_ID_USER])


class EventSpy:
    """A plugin recording the removal events."""

    def __init__(self) -> None:
        """No events yet."""
        self.events: list[tuple[str, str]] = []

    @hookimpl
    def opp_auth_user_removed(self, auth: AuthManager, user: User) -> None:
        """Record a removed user."""
        self.events.append(("user_removed", user.id))

    @hookimpl
    def opp_auth_refresh_token_removed(self, auth: AuthManager, refresh_token: Any) -> None:
        """Record a removed token."""
        self.events.append(("refresh_token_removed", refresh_token.id))


async def test_remove_user_removes_credentials_and_tokens(opp_auth_factory: Factory) -> None:
    """Nothing of a removed user can be found afterwards."""
    auth = await opp_auth_factory(providers=[EXAMPLE])
    user, cred = await new_user(auth)
    token = await auth.refresh_tokens.async_create_refresh_token(user, CLIENT_ID, credential=cred)
    access = await auth.access_tokens.async_create_access_token(token)
    await auth.users.async_remove_user(user)
    assert auth.users.get_user(user.id) is None
    assert auth.store.find_credentials(HANDLER, {"username": "alice"}) is None
    assert await auth.refresh_tokens.async_get_refresh_token(token.id) is None
    assert await auth.refresh_tokens.async_get_refresh_token_by_token(token.token) is None
    assert auth.access_tokens.validate_access_token(access) is None


async def test_remove_user_fires_removal_hooks(opp_auth_factory: Factory) -> None:
    """Plugins hear about each removed token and then the user."""
    spy = EventSpy()
    auth = await opp_auth_factory(providers=[EXAMPLE], plugins=[("spy", spy)])
    user, _ = await new_user(auth)
    first = await auth.refresh_tokens.async_create_refresh_token(user, CLIENT_ID)
    second = await auth.refresh_tokens.async_create_refresh_token(user, CLIENT_ID)
    await auth.users.async_remove_user(user)
    assert sorted(spy.events[:2]) == sorted([("refresh_token_removed", first.id), ("refresh_token_removed", second.id)])
    assert spy.events[2:] == [("user_removed", user.id)]


async def test_link_user_refuses_credentials_of_another_user(auth: AuthManager) -> None:
    """A credential already linked to Alice cannot be attached to Bob (G18)."""
    _alice, cred = await new_user(auth, "alice")
    bob = await auth.users.async_create_user("Bob")
    await refused(auth.users.async_link_user(bob, cred), AuthManagerError, "Credential is already linked to another user")
    assert auth.store.user_for_credentials(cred).name == "Alice"  # type: ignore[union-attr]


async def test_link_user_refuses_a_copy_of_linked_credentials(auth: AuthManager) -> None:
    """New credentials with the data of linked ones are refused too."""
    await new_user(auth, "alice")
    bob = await auth.users.async_create_user("Bob")
    provider = auth.registry.get_auth_provider(*HANDLER)
    assert provider is not None
    copy = provider.async_create_credentials({"username": "alice"})
    await refused(auth.users.async_link_user(bob, copy), AuthManagerError, "Credential is already linked to another user")
    assert bob.credentials == ()


async def test_link_user_attaches_new_credentials(auth: AuthManager) -> None:
    """Fresh credentials are linked and found afterwards."""
    bob = await auth.users.async_create_user("Bob")
    provider = auth.registry.get_auth_provider(*HANDLER)
    assert provider is not None
    cred = await provider.async_get_or_create_credentials({"username": "bob"})
    await auth.users.async_link_user(bob, cred)
    assert auth.store.find_credentials(HANDLER, {"username": "bob"}) is cred
    assert auth.store.user_for_credentials(cred) is bob


# ---- access tokens (SPEC 2) -------------------------------------------------------------


async def user_token(auth: AuthManager, **kwargs: Any) -> Any:
    """A refresh token of a new user."""
    user, cred = await new_user(auth)
    return await auth.refresh_tokens.async_create_refresh_token(user, CLIENT_ID, credential=cred, **kwargs)


def b64(obj: dict[str, Any]) -> str:
    """Unpadded base64url JSON."""
    return base64.urlsafe_b64encode(json.dumps(obj).encode()).rstrip(b"=").decode()


async def test_access_token_is_a_standard_hs256_jwt(auth: AuthManager) -> None:
    """PyJWT decodes it with the token's key: iss, iat and exp, nothing else."""
    token = await user_token(auth)
    before = int(time.time())
    access = await auth.access_tokens.async_create_access_token(token, "127.0.0.1")
    claims = jwt.decode(access, token.jwt_key, algorithms=["HS256"], issuer=token.id)
    assert set(claims) == {"iss", "iat", "exp"}
    assert claims["iss"] == token.id
    assert before <= claims["iat"] <= int(time.time())
    assert claims["exp"] - claims["iat"] == 1800
    assert jwt.get_unverified_header(access)["alg"] == "HS256"


async def test_long_lived_access_token_lasts_its_lifespan(auth: AuthManager) -> None:
    """exp - iat is the refresh token's access_token_expiration."""
    user, _ = await new_user(auth)
    token = await auth.refresh_tokens.async_create_refresh_token(
        user, client_name="CLI", token_type="long_lived_access_token", access_token_expiration=timedelta(days=3650)
    )
    claims = jwt.decode(await auth.access_tokens.async_create_access_token(token), token.jwt_key, algorithms=["HS256"])
    assert claims["exp"] - claims["iat"] == 3650 * 86400


async def test_minting_records_usage(auth: AuthManager) -> None:
    """last_used_at and last_used_ip are set at mint time."""
    token = await user_token(auth)
    await auth.access_tokens.async_create_access_token(token, "192.168.1.9")
    assert token.last_used_ip == "192.168.1.9"
    assert token.last_used_at is not None


async def test_pyjwt_made_token_validates(auth: AuthManager) -> None:
    """Any HS256 JWT signed with the refresh token's key and naming it as iss is valid."""
    token = await user_token(auth)
    now = int(time.time())
    access = jwt.encode({"iss": token.id, "iat": now, "exp": now + 60}, token.jwt_key, algorithm="HS256")
    assert auth.access_tokens.validate_access_token(access) is token


async def test_token_expired_beyond_leeway_is_rejected(auth: AuthManager) -> None:
    """exp more than 10 s ago: invalid."""
    token = await user_token(auth)
    now = int(time.time())
    access = jwt.encode({"iss": token.id, "iat": now - 1800, "exp": now - 12}, token.jwt_key, algorithm="HS256")
    assert auth.access_tokens.validate_access_token(access) is None


async def test_token_expired_within_leeway_is_accepted(auth: AuthManager) -> None:
    """exp a few seconds ago: still valid (10 s leeway for clock skew)."""
    token = await user_token(auth)
    now = int(time.time())
    access = jwt.encode({"iss": token.id, "iat": now - 1800, "exp": now - 5}, token.jwt_key, algorithm="HS256")
    assert auth.access_tokens.validate_access_token(access) is token


async def test_token_signed_with_another_key_is_rejected(auth: AuthManager) -> None:
    """The signature must be made with this refresh token's jwt_key."""
    token = await user_token(auth)
    now = int(time.time())
    access = jwt.encode({"iss": token.id, "iat": now, "exp": now + 60}, "0" * 128, algorithm="HS256")
    assert auth.access_tokens.validate_access_token(access) is None


async def test_token_signed_with_another_refresh_tokens_key_is_rejected(auth: AuthManager) -> None:
    """iss names the key: a token cannot borrow a sibling's identity."""
    token = await user_token(auth)
    other = await auth.refresh_tokens.async_create_refresh_token(token.user, CLIENT_ID)
    now = int(time.time())
    access = jwt.encode({"iss": token.id, "iat": now, "exp": now + 60}, other.jwt_key, algorithm="HS256")
    assert auth.access_tokens.validate_access_token(access) is None


async def test_alg_none_token_is_rejected(auth: AuthManager) -> None:
    """An unsigned token is never accepted."""
    token = await user_token(auth)
    now = int(time.time())
    access = f"{b64({'alg': 'none', 'typ': 'JWT'})}.{b64({'iss': token.id, 'iat': now, 'exp': now + 60})}."
    assert auth.access_tokens.validate_access_token(access) is None


async def test_other_hmac_algorithm_is_rejected(auth: AuthManager) -> None:
    """HS256 only, even with the right key."""
    token = await user_token(auth)
    now = int(time.time())
    access = jwt.encode({"iss": token.id, "iat": now, "exp": now + 60}, token.jwt_key, algorithm="HS512")
    assert auth.access_tokens.validate_access_token(access) is None


@pytest.mark.parametrize("garbage", ["", "abc", "a.b.c", "a.b", "....", "Bearer x.y.z"])
async def test_malformed_token_is_rejected(auth: AuthManager, garbage: str) -> None:
    """Malformed input is just invalid."""
    await user_token(auth)
    assert auth.access_tokens.validate_access_token(garbage) is None


async def test_revoked_refresh_token_invalidates_access_token_at_once(auth: AuthManager) -> None:
    """Revocation wins over the validation cache."""
    token = await user_token(auth)
    access = await auth.access_tokens.async_create_access_token(token)
    assert auth.access_tokens.validate_access_token(access) is token
    await auth.refresh_tokens.async_remove_refresh_token(token)
    assert auth.access_tokens.validate_access_token(access) is None


async def test_inactive_user_invalidates_access_token(auth: AuthManager) -> None:
    """Deactivation takes effect on the next request."""
    token = await user_token(auth)
    access = await auth.access_tokens.async_create_access_token(token)
    assert auth.access_tokens.validate_access_token(access) is token
    await auth.users.async_deactivate_user(token.user)
    assert auth.access_tokens.validate_access_token(access) is None


async def test_inactive_user_cannot_mint_access_tokens(auth: AuthManager) -> None:
    """The refresh grant refuses deactivated users."""
    token = await user_token(auth)
    await auth.users.async_deactivate_user(token.user)
    with pytest.raises(InvalidAuthError):
        await auth.access_tokens.async_create_access_token(token)


async def test_refresh_token_from_removed_provider_is_refused(opp_auth_factory: Factory) -> None:
    """A provider dropped from the configuration makes its tokens unusable, with a clear reason."""
    first = await opp_auth_factory(providers=[EXAMPLE])
    token = await user_token(first)
    await first.async_shutdown()
    second = await opp_auth_factory(providers=[{**EXAMPLE, "id": "other"}])
    reloaded = second.store.get_refresh_token(token.id)
    assert reloaded is not None
    await refused(
        second.refresh_tokens.async_validate_refresh_token(reloaded),
        InvalidAuthError,
        "Auth provider insecure_example, None not available",
    )
    with pytest.raises(InvalidAuthError):
        await second.access_tokens.async_create_access_token(reloaded)


# ---- authorization codes ----------------------------------------------------------------


ALICE_CREDENTIALS = Credentials(auth_provider_type="insecure_example", auth_provider_id=None, data={"username": "alice"})


async def test_authorization_code_is_single_use(auth: AuthManager) -> None:
    """The second redemption finds nothing."""
    code = auth.codes.issue(CLIENT_ID, ALICE_CREDENTIALS, AUTHORIZE)
    assert auth.codes.redeem(CLIENT_ID, code, AUTHORIZE) is ALICE_CREDENTIALS
    assert auth.codes.redeem(CLIENT_ID, code, AUTHORIZE) is None


async def test_authorization_code_is_bound_to_its_client(auth: AuthManager) -> None:
    """Another client id cannot redeem it (and does not burn it)."""
    code = auth.codes.issue(CLIENT_ID, ALICE_CREDENTIALS, AUTHORIZE)
    assert auth.codes.redeem("https://evil.example/", code, AUTHORIZE) is None
    assert auth.codes.redeem(CLIENT_ID, code, AUTHORIZE) is ALICE_CREDENTIALS


@pytest.mark.parametrize(("issued", "presented"), [(LINK_USER, AUTHORIZE), (AUTHORIZE, LINK_USER)])
async def test_authorization_code_is_bound_to_its_purpose(auth: AuthManager, issued: str, presented: str) -> None:
    """A link_user code is no token grant and the reverse; presenting it for the wrong purpose burns it."""
    code = auth.codes.issue(CLIENT_ID, ALICE_CREDENTIALS, issued)
    assert auth.codes.redeem(CLIENT_ID, code, presented) is None
    assert auth.codes.redeem(CLIENT_ID, code, issued) is None


async def test_authorization_code_needs_a_known_purpose_and_credentials(auth: AuthManager) -> None:
    """Nothing but Credentials, for authorize or link_user, becomes a code."""
    with pytest.raises(ValueError, match="purpose"):
        auth.codes.issue(CLIENT_ID, ALICE_CREDENTIALS, "anything")
    with pytest.raises(TypeError):
        auth.codes.issue(CLIENT_ID, "result", AUTHORIZE)  # type: ignore[arg-type]
    assert len(auth.codes) == 0


async def test_authorization_code_expires(auth: AuthManager, monkeypatch: pytest.MonkeyPatch) -> None:
    """After CODE_TTL a code is worthless."""
    clock = Clock()
    monkeypatch.setattr(opp_auth.codes, "time", clock)
    code = auth.codes.issue(CLIENT_ID, ALICE_CREDENTIALS, AUTHORIZE)
    clock.offset = opp_auth.codes.CODE_TTL + 1
    assert auth.codes.redeem(CLIENT_ID, code, AUTHORIZE) is None


async def test_authorization_code_valid_until_ttl(auth: AuthManager, monkeypatch: pytest.MonkeyPatch) -> None:
    """Just before CODE_TTL it still works."""
    clock = Clock()
    monkeypatch.setattr(opp_auth.codes, "time", clock)
    code = auth.codes.issue(CLIENT_ID, ALICE_CREDENTIALS, AUTHORIZE)
    clock.offset = opp_auth.codes.CODE_TTL - 5
    assert auth.codes.redeem(CLIENT_ID, code, AUTHORIZE) is ALICE_CREDENTIALS


async def test_authorization_codes_are_capped(auth: AuthManager) -> None:
    """Past the cap the oldest unredeemed code is dropped."""
    auth.codes.max_codes = 3
    codes = [auth.codes.issue(CLIENT_ID, ALICE_CREDENTIALS, AUTHORIZE) for _ in range(4)]
    assert len(auth.codes) == 3
    assert auth.codes.redeem(CLIENT_ID, codes[0], AUTHORIZE) is None
    assert all(auth.codes.redeem(CLIENT_ID, code, AUTHORIZE) is ALICE_CREDENTIALS for code in codes[1:])


# ---- login flows ------------------------------------------------------------------------


async def start(auth: AuthManager, handler: Any = HANDLER) -> dict[str, Any]:
    """Start a login flow."""
    return await auth.login_flow.async_init(handler, context={"ip_address": "127.0.0.1", "credential_only": False})


async def password_step(auth: AuthManager, username: str = "alice", password: str = "alice-pw") -> dict[str, Any]:
    """Start a flow and submit username and password."""
    form = await start(auth)
    return await auth.login_flow.async_configure(form["flow_id"], {"username": username, "password": password})


async def test_login_flow_cap_raises_too_many_flows(opp_auth_factory: Factory) -> None:
    """Anonymous callers cannot pile up flows."""
    auth = await opp_auth_factory(providers=[EXAMPLE], max_login_flows=2)
    await start(auth)
    await start(auth)
    with pytest.raises(TooManyFlows):
        await start(auth)


async def test_expired_flows_are_purged(opp_auth_factory: Factory, monkeypatch: pytest.MonkeyPatch) -> None:
    """An abandoned flow expires, and frees its place under the cap."""
    clock = Clock()
    monkeypatch.setattr(opp_auth.flow, "time", clock)
    auth = await opp_auth_factory(providers=[EXAMPLE], max_login_flows=1)
    form = await start(auth)
    clock.offset = auth.login_flow.ttl + 1
    with pytest.raises(UnknownFlow):
        await auth.login_flow.async_configure(form["flow_id"], {"username": "alice", "password": "alice-pw"})
    assert (await start(auth))["type"] == "form"


async def test_wrong_password_shows_invalid_auth(auth: AuthManager) -> None:
    """The form comes back with the error."""
    result = await password_step(auth, password="nope")
    assert (result["type"], result["step_id"], result["errors"]) == ("form", "init", {"base": "invalid_auth"})


class BrokenProvider(AuthProvider):
    """A provider whose login step blows up."""

    TYPE = "broken"
    CONFIG_SCHEMA = AuthProvider.CONFIG_SCHEMA.extend({}, extra=vol.PREVENT_EXTRA)

    async def async_login_flow(self, context: dict[str, Any]) -> LoginFlow:
        """The exploding flow."""
        return BrokenLoginFlow(self)

    def credential_data(self, flow_result: dict[str, Any]) -> dict[str, Any]:
        """Credential lookup fails too."""
        raise RuntimeError("credential store exploded")


class BrokenLoginFlow(LoginFlow):
    """Shows a form, then raises (or finishes, for the credentials case)."""

    async def async_step_init(self, user_input: dict[str, Any] | None = None) -> dict[str, Any]:
        """Form first; with input, explode unless asked to finish."""
        if user_input is None:
            return self.async_show_form(step_id="init", data_schema=vol.Schema({vol.Required("username"): str}))
        if user_input["username"] == "finish":
            return await self.async_finish(user_input)
        raise RuntimeError("directory exploded")


class BrokenPlugin:
    """Registers BrokenProvider."""

    @hookimpl
    def opp_auth_register_auth_providers(self, register: Any) -> None:
        """Ship the broken provider."""
        register(BrokenProvider)


@pytest.fixture
async def broken_auth(opp_auth_factory: Factory) -> AuthManager:
    """A manager whose only provider is broken."""
    return await opp_auth_factory(providers=[{"type": "broken"}], plugins=[("broken", BrokenPlugin())])


async def test_exception_in_provider_step_aborts_unknown_error(
    broken_auth: AuthManager, caplog: pytest.LogCaptureFixture
) -> None:
    """Fail closed: the login is denied with unknown_error, logged, and the flow is gone."""
    form = await start(broken_auth, ("broken", None))
    with caplog.at_level(logging.ERROR):
        result = await broken_auth.login_flow.async_configure(form["flow_id"], {"username": "x"})
    assert (result["type"], result["reason"]) == ("abort", "unknown_error")
    assert "directory exploded" in caplog.text
    with pytest.raises(UnknownFlow):
        await broken_auth.login_flow.async_configure(form["flow_id"], {"username": "x"})


async def test_exception_resolving_credentials_aborts_unknown_error(broken_auth: AuthManager) -> None:
    """A provider failing after its step also denies the login."""
    form = await start(broken_auth, ("broken", None))
    result = await broken_auth.login_flow.async_configure(form["flow_id"], {"username": "finish"})
    assert (result["type"], result["reason"]) == ("abort", "unknown_error")


# ---- MFA in the login flow (SPEC 4.2) -----------------------------------------------------


async def enrolled_user(auth: AuthManager, pins: dict[str, str]) -> User:
    """Alice after her first login, enrolled in the given modules with the given PINs."""
    first = await password_step(auth)
    user = await auth.users.async_get_or_create_user(first["result"])
    for module_id, pin in pins.items():
        await auth.users.async_enable_user_mfa(user, module_id, {"pin": pin})
    return user


async def test_first_login_of_new_credentials_never_asks_mfa(opp_auth_factory: Factory) -> None:
    """With MFA configured, new credentials still finish after the password step."""
    auth = await opp_auth_factory(providers=[EXAMPLE], mfa_modules=[PIN_ONE])
    result = await password_step(auth)
    assert result["type"] == "create_entry"
    assert isinstance(result["result"], Credentials) and result["result"].is_new


async def test_login_without_enrolment_skips_mfa(opp_auth_factory: Factory) -> None:
    """A known user with no module enabled logs in with the password alone."""
    auth = await opp_auth_factory(providers=[EXAMPLE], mfa_modules=[PIN_ONE])
    await enrolled_user(auth, {})
    result = await password_step(auth)
    assert result["type"] == "create_entry"


async def test_single_enabled_module_is_selected_automatically(opp_auth_factory: Factory) -> None:
    """One module: straight to its code form."""
    auth = await opp_auth_factory(providers=[EXAMPLE], mfa_modules=[PIN_ONE, PIN_TWO])
    await enrolled_user(auth, {"pin2": "2222"})
    result = await password_step(auth)
    assert (result["type"], result["step_id"], result["errors"]) == ("form", "mfa", {})
    assert result["description_placeholders"] == {"mfa_module_name": "PIN two", "mfa_module_id": "pin2"}


async def test_two_enabled_modules_ask_which_one(opp_auth_factory: Factory) -> None:
    """select_mfa_module offers the user's modules, in configuration order."""
    auth = await opp_auth_factory(providers=[EXAMPLE], mfa_modules=[PIN_ONE, PIN_TWO])
    await enrolled_user(auth, {"pin1": "1111", "pin2": "2222"})
    result = await password_step(auth)
    assert (result["type"], result["step_id"], result["errors"]) == ("form", "select_mfa_module", {})
    (validator,) = result["data_schema"].schema.values()
    assert validator.container == {"pin1": "PIN one", "pin2": "PIN two"}


async def test_selected_module_checks_the_code(opp_auth_factory: Factory) -> None:
    """After choosing pin2 only pin2's code passes, and the result is the linked credentials."""
    auth = await opp_auth_factory(providers=[EXAMPLE], mfa_modules=[PIN_ONE, PIN_TWO])
    user = await enrolled_user(auth, {"pin1": "1111", "pin2": "2222"})
    select = await password_step(auth)
    mfa = await auth.login_flow.async_configure(select["flow_id"], {"multi_factor_auth_module": "pin2"})
    assert (mfa["step_id"], mfa["description_placeholders"]["mfa_module_id"]) == ("mfa", "pin2")
    wrong = await auth.login_flow.async_configure(select["flow_id"], {"pin": "1111"})
    assert wrong["errors"] == {"base": "invalid_code"}
    done = await auth.login_flow.async_configure(select["flow_id"], {"pin": "2222"})
    assert done["type"] == "create_entry"
    assert done["result"] is user.credentials[0]


async def test_wrong_code_shows_invalid_code(opp_auth_factory: Factory) -> None:
    """The code form comes back with invalid_code."""
    auth = await opp_auth_factory(providers=[EXAMPLE], mfa_modules=[PIN_ONE])
    await enrolled_user(auth, {"pin1": "1111"})
    form = await password_step(auth)
    result = await auth.login_flow.async_configure(form["flow_id"], {"pin": "0000"})
    assert (result["type"], result["step_id"], result["errors"]) == ("form", "mfa", {"base": "invalid_code"})


async def test_too_many_wrong_codes_abort(opp_auth_factory: Factory) -> None:
    """MAX_RETRY_TIME wrong codes end the flow with too_many_retry."""
    auth = await opp_auth_factory(providers=[EXAMPLE], mfa_modules=[PIN_ONE])
    await enrolled_user(auth, {"pin1": "1111"})
    form = await password_step(auth)
    retries = auth.registry.get_auth_mfa_module("pin1").MAX_RETRY_TIME  # type: ignore[union-attr]
    results = [await auth.login_flow.async_configure(form["flow_id"], {"pin": "0000"}) for _ in range(retries)]
    assert [r["type"] for r in results[:-1]] == ["form"] * (retries - 1)
    assert (results[-1]["type"], results[-1]["reason"]) == ("abort", "too_many_retry")
    with pytest.raises(UnknownFlow):
        await auth.login_flow.async_configure(form["flow_id"], {"pin": "1111"})


async def test_code_after_session_expiry_aborts_login_expired(
    opp_auth_factory: Factory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Five minutes after the flow started even the right code is refused."""
    auth = await opp_auth_factory(providers=[EXAMPLE], mfa_modules=[PIN_ONE])
    await enrolled_user(auth, {"pin1": "1111"})
    form = await password_step(auth)
    clock = Clock()
    monkeypatch.setattr(opp_auth.login_flow, "time", clock)
    clock.offset = opp_auth.login_flow.MFA_SESSION_EXPIRATION + 1
    result = await auth.login_flow.async_configure(form["flow_id"], {"pin": "1111"})
    assert (result["type"], result["reason"]) == ("abort", "login_expired")


async def test_code_within_session_is_accepted(opp_auth_factory: Factory, monkeypatch: pytest.MonkeyPatch) -> None:
    """Shortly before the five minutes are up the right code still works."""
    auth = await opp_auth_factory(providers=[EXAMPLE], mfa_modules=[PIN_ONE])
    await enrolled_user(auth, {"pin1": "1111"})
    form = await password_step(auth)
    clock = Clock()
    monkeypatch.setattr(opp_auth.login_flow, "time", clock)
    clock.offset = opp_auth.login_flow.MFA_SESSION_EXPIRATION - 5
    result = await auth.login_flow.async_configure(form["flow_id"], {"pin": "1111"})
    assert result["type"] == "create_entry"


async def test_link_user_flow_of_an_enrolled_user_asks_her_mfa(opp_auth_factory: Factory) -> None:
    """credential_only flows go through the same MFA decision (issue 11: they used to skip it)."""
    auth = await opp_auth_factory(providers=[EXAMPLE], mfa_modules=[PIN_ONE])
    user = await enrolled_user(auth, {"pin1": "1111"})
    form = await auth.login_flow.async_init(HANDLER, context={"ip_address": "127.0.0.1", "credential_only": True})
    result = await auth.login_flow.async_configure(form["flow_id"], {"username": "alice", "password": "alice-pw"})
    assert result["type"] == "form" and result["step_id"] == "mfa" and "result" not in result
    result = await auth.login_flow.async_configure(form["flow_id"], {"pin": "1111"})
    assert result["type"] == "create_entry"
    assert auth.store.user_for_credentials(result["result"]) is user


async def test_new_credentials_of_a_link_user_flow_ask_no_mfa(opp_auth_factory: Factory) -> None:
    """Credentials nobody holds yet belong to no user, so there is no MFA to ask."""
    auth = await opp_auth_factory(providers=[EXAMPLE], mfa_modules=[PIN_ONE])
    await enrolled_user(auth, {"pin1": "1111"})
    form = await auth.login_flow.async_init(HANDLER, context={"ip_address": "127.0.0.1", "credential_only": True})
    result = await auth.login_flow.async_configure(form["flow_id"], {"username": "bob", "password": "bob-pw"})
    assert result["type"] == "create_entry" and result["result"].is_new


async def test_system_user_cannot_enable_mfa(opp_auth_factory: Factory) -> None:
    """System generated users cannot enable/disable multi-factor auth module."""
    auth = await opp_auth_factory(providers=[EXAMPLE], mfa_modules=[PIN_ONE])
    user = await auth.users.async_create_system_user("Supervisor")
    await refused(
        auth.users.async_enable_user_mfa(user, "pin1", {"pin": "1"}),
        AuthManagerError,
        "System generated users cannot enable multi-factor auth module.",
    )


async def test_enabling_unknown_mfa_module_is_refused(auth: AuthManager) -> None:
    """Unable find multi-factor auth module: <id>."""
    user, _ = await new_user(auth)
    await refused(
        auth.users.async_enable_user_mfa(user, "nope", {"pin": "1"}),
        AuthManagerError,
        "Unable find multi-factor auth module: nope",
    )


@pytest.mark.storage_types("json")  # reads the .storage files
async def test_create_user_with_credentials_writes_both_at_once(auth: AuthManager, config_dir: Path) -> None:
    """The account and its login are one write: a crash between them cannot leave an owner without a login."""
    saves: list[int] = []
    real_save = auth.store.async_save

    async def counting_save() -> None:
        saves.append(1)
        await real_save()

    auth.store.async_save = counting_save  # type: ignore[method-assign]
    credentials = auth.auth_providers[0].async_create_credentials({"username": "owner"})
    user = await auth.users.async_create_user("Owner", [GROUP_ID_ADMIN], is_owner=True, credentials=credentials)
    assert len(saves) == 1
    # Both records are in one journal line, which a crash keeps or tears whole.
    (line,) = (config_dir / ".storage" / ".auth.journal").read_bytes().splitlines()
    kinds = [record["t"] for record in json.loads(line.rsplit(b"\t", 1)[0])]
    assert kinds == ["user", "cred"]
    await auth.store.async_compact()
    data = json.loads((config_dir / ".storage" / "auth").read_text())["data"]
    assert [c["user_id"] for c in data["credentials"]] == [user.id]


async def test_create_user_refuses_credentials_of_another_user(auth: AuthManager) -> None:
    """Credentials linked to someone else are not linked twice."""
    alice, credentials = await new_user(auth)
    copy = Credentials(auth_provider_type=credentials.auth_provider_type, auth_provider_id=None, data=dict(credentials.data))
    await refused(auth.users.async_create_user("Mallory", credentials=copy), AuthManagerError, "Credential is already linked to another user")
    assert [u.name for u in auth.store.users()].count("Mallory") == 0


async def test_concurrent_steps_of_one_flow_finish_it_once(auth: AuthManager, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two right answers sent at once to one login flow give one result; the other finds the flow gone."""
    provider = auth.registry.get_auth_provider(*HANDLER)
    assert provider is not None
    real_check = provider.async_validate_login

    async def slow_check(username: str, password: str) -> Any:
        await asyncio.sleep(0.01)  # a provider that takes its time (bcrypt, a directory)
        return real_check(username, password)

    result = await auth.login_flow.async_init(HANDLER, context={"ip_address": "127.0.0.1", "credential_only": False})
    flow_id = result["flow_id"]
    monkeypatch.setattr(provider, "async_validate_login", slow_check)
    outcomes = await asyncio.gather(
        *(auth.login_flow.async_configure(flow_id, {"username": "alice", "password": "alice-pw"}) for _ in range(2)),
        return_exceptions=True,
    )
    finished = [o for o in outcomes if isinstance(o, dict) and o["type"] == "create_entry"]
    assert len(finished) == 1
    assert [type(o) for o in outcomes if not isinstance(o, dict)] == [UnknownFlow]


async def test_set_up_lets_the_loop_have_the_gil_back_within_a_millisecond(opp_auth_factory: Any) -> None:
    """Writer threads (compactions, the audit log) may hold the GIL 1 ms at most while the loop waits."""
    sys.setswitchinterval(0.005)  # Python's default
    try:
        await opp_auth_factory(providers=[{"type": "insecure_example", "users": []}], mfa_modules=[])
        assert sys.getswitchinterval() <= 0.001
        sys.setswitchinterval(0.0005)  # a shorter one chosen by the embedding program is kept
        prefer_loop_latency()
        assert sys.getswitchinterval() == pytest.approx(0.0005)
    finally:
        sys.setswitchinterval(0.005)

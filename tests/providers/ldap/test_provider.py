"""Logins, groups, injection, outages and re-checks of the LDAP provider against a real slapd."""

from __future__ import annotations

import asyncio
import logging
import statistics
import subprocess
import time
from collections.abc import Awaitable, Callable
from typing import Any

import ldap3
import pytest
from opp_auth_ldap import LdapAuthProvider

from opp_auth import InvalidAuthError, UserMeta
from opp_auth.manager import AuthManager
from opp_auth.testing import run_login_flow

from .conftest import (
    ADMINS,
    GROUPS,
    PEOPLE,
    READER_DN,
    READER_PW,
    READERS,
    ROOT_DN,
    ROOT_PW,
    STAFF,
    SUFFIX,
    WEIRD,
    Slapd,
    user_dn,
)

HANDLER = ("ldap", None)
LOGGER = "opp_auth_ldap"
Factory = Callable[..., Awaitable[AuthManager]]


async def make_auth(factory: Factory, url: str | list[str], **options: Any) -> AuthManager:
    """A manager with only an ldap provider (search-then-bind under ou=people unless told otherwise)."""
    if "user_dn_template" not in options:
        options.setdefault("base_dn", PEOPLE)
    return await factory(providers=[{"type": "ldap", "url": url, **options}], mfa_modules=[])


def provider_of(auth: AuthManager) -> LdapAuthProvider:
    """The ldap provider of a manager."""
    provider = auth.registry.get_auth_provider(*HANDLER)
    assert isinstance(provider, LdapAuthProvider)
    return provider


async def login(auth: AuthManager, username: str, password: str) -> dict[str, Any]:
    """Submit the login form once."""
    return await run_login_flow(auth, HANDLER, [{"username": username, "password": password}])


async def login_user(auth: AuthManager, username: str, password: str) -> Any:
    """Log in and return the user (created on first login)."""
    result = await login(auth, username, password)
    assert result["type"] == "create_entry", result
    return await auth.users.async_get_or_create_user(result["result"])


def messages(caplog: pytest.LogCaptureFixture, level: int) -> list[str]:
    """Messages of this provider at a level."""
    return [r.getMessage() for r in caplog.records if r.name.startswith(LOGGER) and r.levelno == level]


def admin_connection(server: Slapd) -> ldap3.Connection:
    """A connection bound as the directory's root DN, to change the directory in a test."""
    return ldap3.Connection(ldap3.Server(server.url, get_info=ldap3.NONE), ROOT_DN, ROOT_PW, auto_bind=True)


# ---- logging in -----------------------------------------------------------------------------


async def test_search_then_bind_logs_in_with_the_directory_name(opp_auth_factory: Factory, ldap_server: Slapd) -> None:
    auth = await make_auth(opp_auth_factory, ldap_server.url)
    user = await login_user(auth, "alice", "alice-pass")
    assert user.name == "Alice Liddell"


async def test_direct_bind_logs_in(opp_auth_factory: Factory, ldap_server: Slapd) -> None:
    auth = await make_auth(opp_auth_factory, ldap_server.url, user_dn_template=f"uid={{username}},{PEOPLE}")
    user = await login_user(auth, "bob", "bob-pass")
    assert user.name == "Bob Builder"


async def test_direct_bind_wrong_password_is_invalid_auth(opp_auth_factory: Factory, ldap_server: Slapd) -> None:
    auth = await make_auth(opp_auth_factory, ldap_server.url, user_dn_template=f"uid={{username}},{PEOPLE}")
    result = await login(auth, "bob", "alice-pass")
    assert result["errors"] == {"base": "invalid_auth"}


async def test_user_in_nested_unit_is_found_with_subtree_scope(opp_auth_factory: Factory, ldap_server: Slapd) -> None:
    auth = await make_auth(opp_auth_factory, ldap_server.url)
    user = await login_user(auth, "erin", "erin-pass")
    assert user.name == "Erin Deep"


async def test_one_level_scope_does_not_descend(opp_auth_factory: Factory, ldap_server: Slapd) -> None:
    auth = await make_auth(opp_auth_factory, ldap_server.url, search_scope="one")
    result = await login(auth, "erin", "erin-pass")
    assert result["errors"] == {"base": "invalid_auth"}


async def test_non_ascii_name_and_password(opp_auth_factory: Factory, ldap_server: Slapd) -> None:
    auth = await make_auth(opp_auth_factory, ldap_server.url)
    user = await login_user(auth, "zoe", "pässwörd-ü")
    assert user.name == "Zoë Ünïcødé"


async def test_non_ascii_username_in_filter_finds_the_entry_by_its_uid(opp_auth_factory: Factory, ldap_server: Slapd) -> None:
    auth = await make_auth(opp_auth_factory, ldap_server.url, user_filter="(cn={username})")
    result = await login(auth, "Zoë Ünïcødé", "pässwörd-ü")
    assert result["type"] == "create_entry", result
    assert result["result"].data == {"username": "zoe"}


async def test_service_account_finds_users_anonymous_search_cannot(opp_auth_factory: Factory, ldap_server: Slapd) -> None:
    anonymous = await make_auth(opp_auth_factory, ldap_server.url, base_dn=SUFFIX)
    assert (await login(anonymous, "hank", "hank-pass"))["errors"] == {"base": "invalid_auth"}
    service = await make_auth(opp_auth_factory, ldap_server.url, base_dn=SUFFIX, bind_dn=READER_DN, bind_password=READER_PW)
    assert (await login(service, "hank", "hank-pass"))["type"] == "create_entry"


async def test_wrong_service_password_is_cannot_connect(
    opp_auth_factory: Factory, ldap_server: Slapd, caplog: pytest.LogCaptureFixture
) -> None:
    auth = await make_auth(opp_auth_factory, ldap_server.url, bind_dn=READER_DN, bind_password="wrong")
    result = await login(auth, "alice", "alice-pass")
    assert result["errors"] == {"base": "cannot_connect"}
    assert any(READER_DN in m for m in messages(caplog, logging.ERROR))


async def test_case_and_spacing_of_the_username_give_one_user(opp_auth_factory: Factory, ldap_server: Slapd) -> None:
    auth = await make_auth(opp_auth_factory, ldap_server.url)
    first = await login_user(auth, "Alice", "alice-pass")
    second = await login_user(auth, "  ALICE ", "alice-pass")
    assert first.id == second.id
    assert [c.data for c in first.credentials] == [{"username": "alice"}]


# ---- refusals ----------------------------------------------------------------------------------


BLANK_PASSWORDS = pytest.mark.parametrize(
    "password",
    ["", " ", "\t \n", "\u00ad", "\u2060\ufeff", "\u00a0"],
    # SASLprep (RFC 4013) maps soft hyphens and zero-width characters to nothing before a bind.
    ids=["empty", "space", "whitespace", "soft-hyphen", "zero-width", "no-break-space"],
)


@BLANK_PASSWORDS
async def test_blank_password_is_refused_by_a_server_that_accepts_unauthenticated_binds(
    opp_auth_factory: Factory, unsafe_ldap_server: Slapd, password: str
) -> None:
    auth = await make_auth(opp_auth_factory, unsafe_ldap_server.url)
    result = await login(auth, "alice", password)
    assert result["errors"] == {"base": "invalid_auth"}


def test_the_unsafe_server_really_accepts_a_dn_with_an_empty_password(
    unsafe_ldap_server: Slapd, ldap_server: Slapd, require_binary: Callable[..., str]
) -> None:
    """The refusal above matters: this slapd says yes to an unauthenticated bind (the safe one says no)."""
    whoami = require_binary("ldapwhoami", "ldap-utils")
    command = [whoami, "-x", "-D", user_dn("alice"), "-w", ""]
    assert subprocess.run([*command, "-H", unsafe_ldap_server.url], capture_output=True).returncode == 0
    assert subprocess.run([*command, "-H", ldap_server.url], capture_output=True).returncode != 0


@BLANK_PASSWORDS
async def test_blank_password_is_refused_without_asking_the_directory(
    opp_auth_factory: Factory, down_url: str, password: str
) -> None:
    auth = await make_auth(opp_auth_factory, down_url)
    result = await login(auth, "alice", password)
    # cannot_connect would mean a connection was tried.
    assert result["errors"] == {"base": "invalid_auth"}


async def test_unknown_user_wrong_password_and_refused_group_look_the_same(
    opp_auth_factory: Factory, ldap_server: Slapd
) -> None:
    auth = await make_auth(opp_auth_factory, ldap_server.url, group_base_dn=GROUPS, required_groups=[STAFF])
    results = [
        await login(auth, "nobody", "some-pass"),
        await login(auth, "alice", "wrong-pass"),
        await login(auth, "dave", "dave-pass"),
    ]
    assert [(r["type"], r["errors"]) for r in results] == [("form", {"base": "invalid_auth"})] * 3


async def test_refusals_take_comparable_time(opp_auth_factory: Factory, ldap_server: Slapd) -> None:
    """Unknown users cost a dummy bind and group search, so timing does not tell which refusal it was."""
    auth = await make_auth(opp_auth_factory, ldap_server.url, group_base_dn=GROUPS, required_groups=[STAFF])
    cases = {"unknown": ("nobody", "some-pass"), "wrong": ("alice", "wrong-pass"), "group": ("dave", "dave-pass")}
    timings: dict[str, list[float]] = {name: [] for name in cases}
    provider = provider_of(auth)
    for _ in range(31):
        for name, (username, password) in cases.items():
            start = time.perf_counter()
            with pytest.raises(InvalidAuthError):
                await provider.async_authenticate(username, password)
            timings[name].append(time.perf_counter() - start)
    # The first round opened the pooled connections; the lower quartile shrugs off a busy machine.
    quartiles = {name: statistics.quantiles(values[1:], n=4)[0] for name, values in timings.items()}
    assert max(quartiles.values()) < 1.5 * min(quartiles.values()), quartiles


async def test_more_than_one_matching_entry_is_refused(
    opp_auth_factory: Factory, ldap_server: Slapd, caplog: pytest.LogCaptureFixture
) -> None:
    auth = await make_auth(opp_auth_factory, ldap_server.url)
    result = await login(auth, "dup", "dup-pass")
    assert result["errors"] == {"base": "invalid_auth"}
    assert any("More than one" in m for m in messages(caplog, logging.WARNING))


@pytest.mark.parametrize(
    "username",
    ["ali*", "*", "alice)(uid=*", "alice\\00", "alice\x00", "*)(|(uid=*"],
    ids=["prefix-wildcard", "wildcard", "or-injection", "escaped-nul", "nul", "nested"],
)
async def test_filter_injection_is_inert(opp_auth_factory: Factory, ldap_server: Slapd, username: str) -> None:
    """Unescaped, "ali*" or "alice)(uid=*" would select alice's entry and her password would log in."""
    auth = await make_auth(opp_auth_factory, ldap_server.url, user_filter="(&(objectClass=person)(uid={username}))")
    result = await login(auth, username, "alice-pass")
    # A NUL never reaches the directory: the login form refuses control characters in usernames.
    assert result["errors"] == {"base": "invalid_username" if "\x00" in username else "invalid_auth"}


@pytest.mark.parametrize("username", ["erin,ou=engineering", "erin+cn=x", "\\65rin,ou=engineering", "#erin"])
async def test_dn_injection_is_inert(opp_auth_factory: Factory, ldap_server: Slapd, username: str) -> None:
    """Unescaped, "erin,ou=engineering" would build erin's real DN from the template."""
    auth = await make_auth(opp_auth_factory, ldap_server.url, user_dn_template=f"uid={{username}},{PEOPLE}")
    result = await login(auth, username, "erin-pass")
    assert result["errors"] == {"base": "invalid_auth"}


async def test_filter_special_characters_in_a_real_username_work(opp_auth_factory: Factory, ldap_server: Slapd) -> None:
    """The uid 'we(ir)d*\\' is found, and its DN found in a group, only because both filters escape it."""
    auth = await make_auth(opp_auth_factory, ldap_server.url, group_base_dn=GROUPS, required_groups=[STAFF])
    result = await login(auth, WEIRD, "weird-pass")
    assert result["type"] == "create_entry", result
    assert result["result"].data == {"username": WEIRD}


# ---- groups --------------------------------------------------------------------------------------

GROUP_MAP = {"admin_groups": [ADMINS], "user_groups": [STAFF], "read_only_groups": [READERS]}


@pytest.mark.parametrize(
    ("username", "group"),
    [("alice", UserMeta.GROUP_ADMIN), ("bob", UserMeta.GROUP_USER), ("carol", UserMeta.GROUP_READ_ONLY), ("dave", UserMeta.GROUP_USER)],
    ids=["member-admin", "uniqueMember-users", "memberUid-read-only", "unmapped-users"],
)
async def test_group_search_maps_new_users(opp_auth_factory: Factory, ldap_server: Slapd, username: str, group: str) -> None:
    auth = await make_auth(opp_auth_factory, ldap_server.url, group_base_dn=GROUPS, **GROUP_MAP)
    user = await login_user(auth, username, f"{username}-pass")
    assert [g.id for g in user.groups] == [group]


@pytest.mark.parametrize(
    ("username", "group"),
    [("alice", UserMeta.GROUP_ADMIN), ("carol", UserMeta.GROUP_READ_ONLY), ("dave", UserMeta.GROUP_USER)],
)
async def test_group_attribute_maps_new_users(opp_auth_factory: Factory, ldap_server: Slapd, username: str, group: str) -> None:
    auth = await make_auth(opp_auth_factory, ldap_server.url, group_attribute="seeAlso", **GROUP_MAP)
    user = await login_user(auth, username, f"{username}-pass")
    assert [g.id for g in user.groups] == [group]


async def test_group_dns_compare_case_and_space_insensitively(opp_auth_factory: Factory, ldap_server: Slapd) -> None:
    auth = await make_auth(opp_auth_factory, ldap_server.url, group_base_dn=GROUPS,
                           admin_groups=["CN=Admins, OU=Groups, DC=Example, DC=Org"])
    user = await login_user(auth, "alice", "alice-pass")
    assert [g.id for g in user.groups] == [UserMeta.GROUP_ADMIN]


async def test_no_group_configuration_never_makes_admins(opp_auth_factory: Factory, ldap_server: Slapd) -> None:
    auth = await make_auth(opp_auth_factory, ldap_server.url)
    user = await login_user(auth, "alice", "alice-pass")
    assert [g.id for g in user.groups] == [UserMeta.GROUP_USER]


async def test_required_groups_admit_members(opp_auth_factory: Factory, ldap_server: Slapd) -> None:
    auth = await make_auth(opp_auth_factory, ldap_server.url, group_base_dn=GROUPS, required_groups=[STAFF, READERS])
    await login_user(auth, "carol", "carol-pass")


async def test_required_groups_refuse_others_in_direct_bind_mode(opp_auth_factory: Factory, ldap_server: Slapd) -> None:
    auth = await make_auth(opp_auth_factory, ldap_server.url, user_dn_template=f"uid={{username}},{PEOPLE}",
                           group_base_dn=GROUPS, required_groups=[STAFF])
    assert (await login(auth, "dave", "dave-pass"))["errors"] == {"base": "invalid_auth"}
    assert (await login(auth, "bob", "bob-pass"))["type"] == "create_entry"


# ---- outages ---------------------------------------------------------------------------------------


async def test_down_server_is_cannot_connect_and_names_the_server(
    opp_auth_factory: Factory, down_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    auth = await make_auth(opp_auth_factory, down_url)
    result = await login(auth, "alice", "alice-pass")
    assert result["type"] == "form"
    assert result["errors"] == {"base": "cannot_connect"}
    assert any(down_url in m for m in messages(caplog, logging.ERROR))


async def test_silent_server_times_out_as_cannot_connect(opp_auth_factory: Factory, silent_url: str) -> None:
    auth = await make_auth(opp_auth_factory, silent_url, timeout=0.3)
    start = time.monotonic()
    result = await login(auth, "alice", "alice-pass")
    assert result["errors"] == {"base": "cannot_connect"}
    assert time.monotonic() - start < 3


async def test_second_url_takes_over_when_the_first_is_down(
    opp_auth_factory: Factory, down_url: str, ldap_server: Slapd
) -> None:
    auth = await make_auth(opp_auth_factory, [down_url, ldap_server.url])
    await login_user(auth, "alice", "alice-pass")


async def test_waiting_for_the_directory_does_not_block_the_event_loop(opp_auth_factory: Factory, silent_url: str) -> None:
    auth = await make_auth(opp_auth_factory, silent_url, timeout=0.5)
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.01)
            ticks += 1

    task = asyncio.create_task(ticker())
    try:
        await asyncio.gather(*(login(auth, f"user{i}", "pass") for i in range(4)))
    finally:
        task.cancel()
    assert ticks >= 20


async def test_down_directory_over_http_is_a_form_error(opp_auth_factory: Factory, opp_auth_client: Any, down_url: str) -> None:
    auth = await make_auth(opp_auth_factory, down_url)
    client = await opp_auth_client(auth)
    status, flow = await client.login.start(HANDLER)
    status, result = await client.login.step(flow["flow_id"], username="alice", password="alice-pass")
    assert status == 200
    assert result["type"] == "form" and result["errors"] == {"base": "cannot_connect"}


async def test_stale_pooled_connection_after_a_restart_is_replaced(opp_auth_factory: Factory, own_ldap_server: Slapd) -> None:
    auth = await make_auth(opp_auth_factory, own_ldap_server.url)
    await login_user(auth, "alice", "alice-pass")
    own_ldap_server.stop()
    own_ldap_server.start()
    await login_user(auth, "alice", "alice-pass")


# ---- the pool ---------------------------------------------------------------------------------------


async def test_pool_reuses_connections(opp_auth_factory: Factory, ldap_server: Slapd) -> None:
    auth = await make_auth(opp_auth_factory, ldap_server.url, group_base_dn=GROUPS)
    for _ in range(5):
        await login_user(auth, "bob", "bob-pass")
    directory = provider_of(auth).directory
    assert (directory.service.opened, directory.auth.opened) == (1, 1)


async def test_without_pool_every_login_opens_connections(opp_auth_factory: Factory, ldap_server: Slapd) -> None:
    auth = await make_auth(opp_auth_factory, ldap_server.url, pool_size=0)
    for _ in range(3):
        await login_user(auth, "bob", "bob-pass")
    directory = provider_of(auth).directory
    assert (directory.service.opened, directory.auth.opened) == (3, 3)


async def test_concurrent_logins_stay_within_the_pool_size(opp_auth_factory: Factory, ldap_server: Slapd) -> None:
    auth = await make_auth(opp_auth_factory, ldap_server.url, pool_size=2)
    results = await asyncio.gather(*(login(auth, "bob", "bob-pass") for _ in range(12)))
    assert all(r["type"] == "create_entry" for r in results)
    assert provider_of(auth).directory.service.opened <= 2


# ---- re-checks when refreshing ------------------------------------------------------------------------


async def _refresh_token(auth: AuthManager, username: str, password: str) -> Any:
    """A refresh token of a freshly logged-in user."""
    user = await login_user(auth, username, password)
    return await auth.refresh_tokens.async_create_refresh_token(user, "https://example.com/app", credential=user.credentials[0])


async def test_user_deleted_from_the_directory_loses_access(
    opp_auth_factory: Factory, opp_auth_client: Any, own_ldap_server: Slapd
) -> None:
    auth = await make_auth(opp_auth_factory, own_ldap_server.url, recheck_interval=0)
    client = await opp_auth_client(auth)
    tokens = await client.login.tokens(HANDLER, [{"username": "bob", "password": "bob-pass"}])
    with admin_connection(own_ldap_server) as conn:
        assert conn.delete(user_dn("bob"))
    status, body = await client.login.token(grant_type="refresh_token", client_id="https://example.com/app",
                                            refresh_token=tokens["refresh_token"])
    assert status == 403, body


async def test_user_removed_from_the_required_group_loses_access(opp_auth_factory: Factory, own_ldap_server: Slapd) -> None:
    auth = await make_auth(opp_auth_factory, own_ldap_server.url, group_base_dn=GROUPS, required_groups=[STAFF],
                           recheck_interval=0)
    refresh_token = await _refresh_token(auth, "bob", "bob-pass")
    await auth.access_tokens.async_create_access_token(refresh_token)
    with admin_connection(own_ldap_server) as conn:
        assert conn.modify(STAFF, {"uniqueMember": [(ldap3.MODIFY_DELETE, [user_dn("bob")])]})
    with pytest.raises(InvalidAuthError):
        await auth.access_tokens.async_create_access_token(refresh_token)


async def test_recheck_answers_are_cached_for_the_interval(opp_auth_factory: Factory, own_ldap_server: Slapd) -> None:
    auth = await make_auth(opp_auth_factory, own_ldap_server.url, recheck_interval=60)
    refresh_token = await _refresh_token(auth, "bob", "bob-pass")
    own_ldap_server.stop()
    # Within the interval the directory is not asked again (it is down: asking would refuse).
    assert await auth.access_tokens.async_create_access_token(refresh_token)


async def test_recheck_with_the_directory_down_refuses(opp_auth_factory: Factory, own_ldap_server: Slapd) -> None:
    auth = await make_auth(opp_auth_factory, own_ldap_server.url, recheck_interval=0)
    refresh_token = await _refresh_token(auth, "bob", "bob-pass")
    own_ldap_server.stop()
    with pytest.raises(InvalidAuthError, match="cannot confirm"):
        await auth.access_tokens.async_create_access_token(refresh_token)

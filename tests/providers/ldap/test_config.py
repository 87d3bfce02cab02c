"""The LDAP provider's configuration schema and its start-up warnings."""

from __future__ import annotations

import logging
from typing import Any

import pytest
import voluptuous as vol
from opp_auth_ldap import CONFIG_SCHEMA, DEFAULT_GROUP_FILTER, DEFAULT_USER_FILTER

from .test_provider import Factory, make_auth, messages

BASE = {"type": "ldap", "url": "ldap://127.0.0.1:389", "base_dn": "ou=people,dc=example,dc=org"}


def test_defaults_are_the_documented_ones() -> None:
    conf = CONFIG_SCHEMA(dict(BASE))
    assert {k: conf[k] for k in ("url", "start_tls", "verify_ssl", "timeout", "user_filter", "search_scope",
                                 "username_attribute", "name_attribute", "group_filter", "pool_size")} == {
        "url": ["ldap://127.0.0.1:389"], "start_tls": False, "verify_ssl": True, "timeout": 5, "pool_size": 4,
        "user_filter": DEFAULT_USER_FILTER, "search_scope": "subtree", "username_attribute": "uid",
        "name_attribute": "cn", "group_filter": DEFAULT_GROUP_FILTER,
    }
    assert DEFAULT_USER_FILTER == "(uid={username})"
    assert DEFAULT_GROUP_FILTER == "(|(member={dn})(uniqueMember={dn})(memberUid={username}))"


def test_a_list_of_urls_is_kept_in_order() -> None:
    urls = ["ldaps://a.example.org", "ldap://b.example.org:1389"]
    assert CONFIG_SCHEMA({**BASE, "url": urls})["url"] == urls


@pytest.mark.parametrize("url", ["http://example.org", "ldap://", "example.org", "ldap://h/dc=x?uid", [], ["ldap://ok", 5]])
def test_bad_urls_are_refused(url: Any) -> None:
    with pytest.raises(vol.Invalid):
        CONFIG_SCHEMA({**BASE, "url": url})


@pytest.mark.parametrize(
    "change",
    [
        {"base_dn": None},  # neither base_dn nor user_dn_template
        {"user_dn_template": "uid={username},dc=example,dc=org"},  # both
        {"bind_dn": "cn=reader,dc=example,dc=org"},  # no password: an unauthenticated bind
        {"bind_dn": "cn=reader,dc=example,dc=org", "bind_password": ""},
        {"bind_password": "secret"},  # password without DN
        {"group_base_dn": "ou=groups,dc=example,dc=org", "group_attribute": "memberOf"},
        {"admin_groups": ["cn=admins,dc=example,dc=org"]},  # no way to find groups
        {"group_filter": "(member={dn})"},  # without group_base_dn
    ],
    ids=["no-user-source", "two-user-sources", "dn-without-password", "empty-password", "password-without-dn",
         "two-group-sources", "groups-without-source", "group-filter-alone"],
)
def test_contradictory_keys_are_refused(change: dict[str, Any]) -> None:
    conf = {**BASE, **change}
    conf = {k: v for k, v in conf.items() if v is not None}
    with pytest.raises(vol.Invalid):
        CONFIG_SCHEMA(conf)


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("user_filter", "(objectClass=person)"),  # no {username}
        ("user_filter", "(uid={username}"),  # unbalanced
        ("base_dn", "not a dn"),
        ("admin_groups", ["cn=admins,,dc=x"]),
        ("search_scope", "everything"),
        ("timeout", 0),
        ("username_attribute", "uid)(x"),
    ],
)
def test_malformed_values_are_refused(key: str, value: Any) -> None:
    with pytest.raises(vol.Invalid):
        CONFIG_SCHEMA({**BASE, key: value})


def test_direct_bind_template_needs_the_placeholder() -> None:
    conf = {k: v for k, v in BASE.items() if k != "base_dn"}
    with pytest.raises(vol.Invalid, match="username"):
        CONFIG_SCHEMA({**conf, "user_dn_template": "uid=fixed,dc=example,dc=org"})


async def test_cleartext_to_a_remote_server_is_warned_about(opp_auth_factory: Factory, caplog: pytest.LogCaptureFixture) -> None:
    await make_auth(opp_auth_factory, "ldap://ldap.example.org")
    assert any("clear text" in m for m in messages(caplog, logging.WARNING))


async def test_missing_ca_file_is_an_error_at_start(
    opp_auth_factory: Factory, caplog: pytest.LogCaptureFixture, tmp_path: Any
) -> None:
    await make_auth(opp_auth_factory, "ldaps://ldap.example.org", ca_file=str(tmp_path / "missing.pem"))
    assert any("missing.pem" in m for m in messages(caplog, logging.ERROR))

"""GroupMapping: the group lists of providers whose source names a person's groups (ldap, trusted_header, oidc)."""

from __future__ import annotations

import pytest
import voluptuous as vol

from opp_auth import AuthProvider, GroupMapping, UserMeta

SCHEMA = AuthProvider.CONFIG_SCHEMA.extend(GroupMapping.schema(), extra=vol.PREVENT_EXTRA)


def mapping(**lists: object) -> GroupMapping:
    return GroupMapping(SCHEMA({"type": "x", **lists}))


def test_the_most_privileged_match_wins_and_no_match_is_system_users() -> None:
    groups = mapping(admin_groups=["admins"], user_groups=["family"], read_only_groups=["guests"])
    assert groups.group_for({"guests", "family", "admins"}) == UserMeta.GROUP_ADMIN
    assert groups.group_for({"guests", "family"}) == UserMeta.GROUP_USER
    assert groups.group_for({"guests"}) == UserMeta.GROUP_READ_ONLY
    assert groups.group_for({"strangers"}) == UserMeta.GROUP_USER
    assert groups.group_for(set()) == UserMeta.GROUP_USER


def test_required_groups_refuse_only_when_set() -> None:
    assert mapping().allows(set()) and not mapping().in_use
    required = mapping(required_groups=["family", "guests"])
    assert required.in_use
    assert required.allows({"guests", "other"})
    assert not required.allows({"other"}) and not required.allows(set())


def test_schema_takes_none_one_name_or_a_list_and_strips_names() -> None:
    conf = SCHEMA({"type": "x", "admin_groups": " admins ", "user_groups": ["a", " b"], "read_only_groups": None})
    assert conf["admin_groups"] == ["admins"] and conf["user_groups"] == ["a", "b"]
    assert conf["read_only_groups"] == [] and conf["required_groups"] == []


@pytest.mark.parametrize("value", ["", "  ", ["ok", ""], [1], {"a": 1}])
def test_schema_errors_name_the_key(value: object) -> None:
    with pytest.raises(vol.Invalid) as err:
        SCHEMA({"type": "x", "required_groups": value})
    assert "required_groups" in str(err.value.path), err.value


def test_normalize_applies_to_the_configured_names() -> None:
    groups = GroupMapping(SCHEMA({"type": "x", "admin_groups": ["CN=Admins"]}), str.casefold)
    assert groups.group_for({"cn=admins"}) == UserMeta.GROUP_ADMIN
    assert groups.group_for({"CN=Admins"}) == UserMeta.GROUP_USER  # the caller normalises what it passes

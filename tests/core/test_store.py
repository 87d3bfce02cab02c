"""opp_auth.store.AuthStore on Open Peer Power `.storage/auth` files: round trip and soft migrations."""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import re
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from opp_auth.models import GROUP_ID_ADMIN, GROUP_ID_READ_ONLY, GROUP_ID_USER
from opp_auth.storage import StorageError
from opp_auth.store import AuthStore

OWNER_ID = "0c3f1b0cbbd44d5c9c8f6b8a4e6c2d11"
ALICE_ID = "7d2c4e8f1a6b4c9d8e7f6a5b4c3d2e1f"
SUPERVISOR_ID = "a1b2c3d4e5f60718293a4b5c6d7e8f90"
CUSTOM_GROUP_ID = "5f4dcc3b5aa765d61d8327deb882cf99"
OWNER_CRED_ID = "c0ffee00c0ffee00c0ffee00c0ffee00"
ALICE_CRED_ID = "beefbeefbeefbeefbeefbeefbeefbeef"
TOKEN_NORMAL_ID = "11111111111111111111111111111111"
TOKEN_LONG_ID = "22222222222222222222222222222222"
TOKEN_SYSTEM_ID = "33333333333333333333333333333333"


def hexes(char: str) -> str:
    """A 128-character hex string (token / jwt_key sized)."""
    return char * 128


# An Open Peer Power 2021.7 `.storage/auth`, as its code writes it (SPEC 1.6).
OPP_AUTH_FILE: dict[str, Any] = {
    "version": 1,
    "key": "auth",
    "data": {
        "users": [
            {
                "id": OWNER_ID,
                "group_ids": [GROUP_ID_ADMIN],
                "is_owner": True,
                "is_active": True,
                "name": "Paulus",
                "system_generated": False,
            },
            {
                "id": ALICE_ID,
                "group_ids": [GROUP_ID_USER, CUSTOM_GROUP_ID],
                "is_owner": False,
                "is_active": False,
                "name": "Alice",
                "system_generated": False,
            },
            {
                "id": SUPERVISOR_ID,
                "group_ids": [GROUP_ID_ADMIN],
                "is_owner": False,
                "is_active": True,
                "name": "Supervisor",
                "system_generated": True,
            },
        ],
        "groups": [
            {"id": GROUP_ID_ADMIN, "name": "Administrators"},
            {"id": GROUP_ID_USER, "name": "Users"},
            {"id": GROUP_ID_READ_ONLY, "name": "Read Only"},
            {
                "id": CUSTOM_GROUP_ID,
                "name": "Kitchen",
                "policy": {"entities": {"entity_ids": {"light.kitchen": True}, "domains": {"switch": {"read": True}}}},
            },
        ],
        "credentials": [
            {
                "id": OWNER_CRED_ID,
                "user_id": OWNER_ID,
                "auth_provider_type": "openpeerpower",
                "auth_provider_id": None,
                "data": {"username": "paulus"},
            },
            {
                "id": ALICE_CRED_ID,
                "user_id": ALICE_ID,
                "auth_provider_type": "command_line",
                "auth_provider_id": "ldap",
                "data": {"username": "Alice"},
            },
        ],
        "refresh_tokens": [
            {
                "id": TOKEN_NORMAL_ID,
                "user_id": OWNER_ID,
                "client_id": "http://192.168.1.2:8123/",
                "client_name": None,
                "client_icon": None,
                "token_type": "normal",
                "created_at": "2021-07-10T12:30:45.123456+00:00",
                "access_token_expiration": 1800.0,
                "token": hexes("a"),
                "jwt_key": hexes("b"),
                "last_used_at": "2021-07-11T08:00:00.000001+00:00",
                "last_used_ip": "192.168.1.20",
                "credential_id": OWNER_CRED_ID,
                "version": "2021.7.3",
            },
            {
                "id": TOKEN_LONG_ID,
                "user_id": OWNER_ID,
                "client_id": None,
                "client_name": "Node-RED",
                "client_icon": "mdi:robot",
                "token_type": "long_lived_access_token",
                "created_at": "2021-06-01T00:00:00+00:00",
                "access_token_expiration": 315360000.0,
                "token": hexes("c"),
                "jwt_key": hexes("d"),
                "last_used_at": None,
                "last_used_ip": None,
                "credential_id": None,
                "version": "2021.6.0",
            },
            {
                "id": TOKEN_SYSTEM_ID,
                "user_id": SUPERVISOR_ID,
                "client_id": None,
                "client_name": None,
                "client_icon": None,
                "token_type": "system",
                "created_at": "2021-05-05T05:05:05.500000+00:00",
                "access_token_expiration": 1800.0,
                "token": hexes("e"),
                "jwt_key": hexes("f"),
                "last_used_at": None,
                "last_used_ip": None,
                "credential_id": None,
                "version": None,
            },
        ],
    },
}


def write_auth(config_dir: Path, data: dict[str, Any], version: int = 1) -> Path:
    """Write .storage/auth by hand."""
    path = config_dir / ".storage" / "auth"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"version": version, "key": "auth", "data": data}, indent=4), encoding="utf-8")
    return path


async def load(config_dir: Path, data: dict[str, Any]) -> AuthStore:
    """An AuthStore loaded from a hand-written file."""
    write_auth(config_dir, data)
    store = AuthStore(str(config_dir))
    await store.async_load()
    return store


def opp_data() -> dict[str, Any]:
    """A fresh copy of the Open Peer Power file's data."""
    return copy.deepcopy(OPP_AUTH_FILE["data"])


def token_record(**fields: Any) -> dict[str, Any]:
    """A refresh token record for the owner; fields override."""
    record = copy.deepcopy(OPP_AUTH_FILE["data"]["refresh_tokens"][0])
    record.update(fields)
    return record


def upgraded(opp_file: dict[str, Any]) -> dict[str, Any]:
    """What opp-auth writes back for an Open Peer Power file: refresh-token secrets only as digests (G8)."""
    out = copy.deepcopy(opp_file)
    for record in out["data"]["refresh_tokens"]:
        record["token_hash"] = hashlib.sha256(record.pop("token").encode()).hexdigest()
        record.setdefault("expire_at", None)
    return out


async def test_open_peer_power_file_round_trips_unchanged(config_dir: Path) -> None:
    """Load then a rewrite (compaction) writes back what Open Peer Power wrote, except that secrets become digests."""
    path = write_auth(config_dir, OPP_AUTH_FILE["data"])
    store = AuthStore(str(config_dir))
    await store.async_load()
    await store.async_compact()
    written = json.loads(path.read_text(encoding="utf-8"))
    assert written == upgraded(OPP_AUTH_FILE)
    assert all("token" not in record for record in written["data"]["refresh_tokens"])


async def test_tokens_written_as_digests_load_again(config_dir: Path) -> None:
    """A file opp-auth wrote (digests, kept keys) loads with every token findable by its secret."""
    path = write_auth(config_dir, OPP_AUTH_FILE["data"])
    store = AuthStore(str(config_dir))
    await store.async_load()
    await store.async_compact()
    again = AuthStore(str(config_dir))
    await again.async_load()
    assert again.get_refresh_token_by_token(hexes("c")).id == TOKEN_LONG_ID  # type: ignore[union-attr]
    assert json.loads(path.read_text(encoding="utf-8")) == upgraded(OPP_AUTH_FILE)


async def test_loaded_objects_carry_the_stored_fields(config_dir: Path) -> None:
    """Users, groups, credentials and tokens are rebuilt with their relations."""
    store = await load(config_dir, opp_data())
    owner = store.get_user(OWNER_ID)
    alice = store.get_user(ALICE_ID)
    assert owner is not None and alice is not None
    assert owner.is_owner and owner.is_active and owner.name == "Paulus"
    assert alice.group_ids == [GROUP_ID_USER, CUSTOM_GROUP_ID]
    assert alice.groups[1].policy == OPP_AUTH_FILE["data"]["groups"][3]["policy"]
    token = store.get_refresh_token(TOKEN_NORMAL_ID)
    assert token is not None
    assert token.user is owner
    assert token.credential is not None and token.credential.id == OWNER_CRED_ID
    assert token.access_token_expiration.total_seconds() == 1800.0
    assert token.created_at.isoformat() == "2021-07-10T12:30:45.123456+00:00"
    assert set(owner.refresh_tokens) == {TOKEN_NORMAL_ID, TOKEN_LONG_ID}
    assert [c.id for c in owner.credentials] == [OWNER_CRED_ID]
    assert all(not c.is_new for c in owner.credentials)


async def test_empty_store_has_the_three_system_groups(config_dir: Path) -> None:
    """No file: no users and the groups admin, users, read-only."""
    store = AuthStore(str(config_dir))
    await store.async_load()
    assert store.users() == []
    assert [g.id for g in store.groups()] == [GROUP_ID_ADMIN, GROUP_ID_USER, GROUP_ID_READ_ONLY]


async def test_system_groups_are_rebuilt_from_code_constants(config_dir: Path) -> None:
    """A stored name or policy for a system group is not trusted."""
    data = opp_data()
    data["groups"][0] = {"id": GROUP_ID_ADMIN, "name": "Renamed", "policy": {"entities": False}}
    store = await load(config_dir, data)
    admin = store.get_group(GROUP_ID_ADMIN)
    assert admin is not None
    assert (admin.name, admin.policy, admin.system_generated) == ("Administrators", {"entities": True}, True)


async def test_legacy_group_without_policy_maps_members_to_admin(config_dir: Path) -> None:
    """The pre-policy 'all access' group is dropped and its members become admins."""
    data = opp_data()
    data["groups"] = [{"id": "legacy-all-access", "name": "All Access"}]
    data["users"][1]["group_ids"] = ["legacy-all-access"]
    store = await load(config_dir, data)
    alice = store.get_user(ALICE_ID)
    assert alice is not None and alice.group_ids == [GROUP_ID_ADMIN]
    assert store.get_group("legacy-all-access") is None
    assert {g.id for g in store.groups()} == {GROUP_ID_ADMIN, GROUP_ID_USER, GROUP_ID_READ_ONLY}


async def test_no_groups_at_all_puts_non_system_users_in_admin(config_dir: Path) -> None:
    """Very old data without groups: people become admins, system users stay out."""
    data = opp_data()
    del data["groups"]
    for user in data["users"]:
        del user["group_ids"]
    store = await load(config_dir, data)
    assert store.get_user(OWNER_ID).group_ids == [GROUP_ID_ADMIN]  # type: ignore[union-attr]
    assert store.get_user(ALICE_ID).group_ids == [GROUP_ID_ADMIN]  # type: ignore[union-attr]
    assert store.get_user(SUPERVISOR_ID).group_ids == []  # type: ignore[union-attr]


async def test_missing_system_groups_are_added(config_dir: Path) -> None:
    """A file with only a custom group gains the three system groups."""
    data = opp_data()
    data["groups"] = [data["groups"][3]]
    store = await load(config_dir, data)
    assert [g.id for g in store.groups()] == [CUSTOM_GROUP_ID, GROUP_ID_ADMIN, GROUP_ID_READ_ONLY, GROUP_ID_USER]


async def test_custom_group_keeps_stored_name_and_policy(config_dir: Path) -> None:
    """Non-system groups are taken from the file."""
    store = await load(config_dir, opp_data())
    group = store.get_group(CUSTOM_GROUP_ID)
    assert group is not None
    assert (group.name, group.policy, group.system_generated) == (
        "Kitchen",
        OPP_AUTH_FILE["data"]["groups"][3]["policy"],
        False,
    )


async def test_tokens_without_jwt_key_are_dropped(config_dir: Path) -> None:
    """Pre-0.76 tokens cannot sign access tokens: they are discarded."""
    data = opp_data()
    del data["refresh_tokens"][0]["jwt_key"]
    store = await load(config_dir, data)
    assert store.get_refresh_token(TOKEN_NORMAL_ID) is None
    assert store.get_refresh_token_by_token(hexes("a")) is None
    assert store.get_refresh_token(TOKEN_LONG_ID) is not None


async def test_invalid_created_at_is_logged_and_skipped(config_dir: Path, caplog: pytest.LogCaptureFixture) -> None:
    """The exact Open Peer Power error message, and the token is not loaded."""
    data = opp_data()
    data["refresh_tokens"][0]["created_at"] = "yesterday"
    with caplog.at_level(logging.ERROR, logger="opp_auth.store"):
        store = await load(config_dir, data)
    assert store.get_refresh_token(TOKEN_NORMAL_ID) is None
    assert [(r.levelno, r.getMessage()) for r in caplog.records if r.name == "opp_auth.store"] == [
        (
            logging.ERROR,
            f"Ignoring refresh token {TOKEN_NORMAL_ID} with invalid created_at yesterday for user_id {OWNER_ID}",
        )
    ]


async def test_missing_token_type_depends_on_client_id(config_dir: Path) -> None:
    """No token_type: system without a client id, normal with one."""
    data = opp_data()
    for record in data["refresh_tokens"]:
        del record["token_type"]
    store = await load(config_dir, data)
    assert store.get_refresh_token(TOKEN_NORMAL_ID).token_type == "normal"  # type: ignore[union-attr]
    assert store.get_refresh_token(TOKEN_SYSTEM_ID).token_type == "system"  # type: ignore[union-attr]


async def test_optional_token_fields_may_be_absent(config_dir: Path) -> None:
    """Old tokens lack last_used_*, client_name/icon, version and credential_id."""
    minimal = {
        key: OPP_AUTH_FILE["data"]["refresh_tokens"][0][key]
        for key in (
            "id",
            "user_id",
            "client_id",
            "token_type",
            "created_at",
            "access_token_expiration",
            "token",
            "jwt_key",
        )
    }
    data = opp_data()
    data["refresh_tokens"] = [minimal]
    store = await load(config_dir, data)
    token = store.get_refresh_token(TOKEN_NORMAL_ID)
    assert token is not None
    assert (token.last_used_at, token.last_used_ip, token.client_name, token.version, token.credential) == (
        None,
        None,
        None,
        None,
        None,
    )


async def test_unknown_fields_are_ignored_and_not_written_back(config_dir: Path) -> None:
    """Fields from a future version do not break loading."""
    data = opp_data()
    data["future"] = {"x": 1}
    data["users"][0]["avatar"] = "pic.png"
    data["groups"][3]["color"] = "red"
    data["credentials"][0]["created"] = "now"
    data["refresh_tokens"][0]["rotated_from"] = "abc"
    path = write_auth(config_dir, data)
    store = AuthStore(str(config_dir))
    await store.async_load()
    await store.async_compact()
    assert json.loads(path.read_text(encoding="utf-8")) == upgraded(OPP_AUTH_FILE)


async def test_refresh_token_lookup_by_token_string(config_dir: Path) -> None:
    """The secret finds its token; anything else finds nothing."""
    store = await load(config_dir, opp_data())
    assert store.get_refresh_token_by_token(hexes("c")).id == TOKEN_LONG_ID  # type: ignore[union-attr]
    assert store.get_refresh_token_by_token(hexes("0")) is None
    assert store.get_refresh_token_by_token(hexes("c")[:-1]) is None
    assert store.get_refresh_token_by_token(None) is None  # type: ignore[arg-type]


async def test_refresh_token_lookup_by_id(config_dir: Path) -> None:
    """Ids find their token."""
    store = await load(config_dir, opp_data())
    assert store.get_refresh_token(TOKEN_SYSTEM_ID).user.id == SUPERVISOR_ID  # type: ignore[union-attr]
    assert store.get_refresh_token("nope") is None


async def test_removed_token_is_no_longer_found(config_dir: Path) -> None:
    """Both indexes forget a removed token."""
    store = await load(config_dir, opp_data())
    token = store.get_refresh_token(TOKEN_NORMAL_ID)
    assert token is not None
    store.remove_refresh_token(token)
    assert store.get_refresh_token(TOKEN_NORMAL_ID) is None
    assert store.get_refresh_token_by_token(hexes("a")) is None
    assert TOKEN_NORMAL_ID not in token.user.refresh_tokens


async def test_find_credentials_by_provider_and_data(config_dir: Path) -> None:
    """(type, id) plus data finds the stored credentials."""
    store = await load(config_dir, opp_data())
    found = store.find_credentials(("command_line", "ldap"), {"username": "Alice"})
    assert found is not None and found.id == ALICE_CRED_ID
    assert store.find_credentials(("command_line", None), {"username": "Alice"}) is None
    assert store.find_credentials(("command_line", "ldap"), {"username": "alice"}) is None


async def test_user_for_credentials(config_dir: Path) -> None:
    """Credentials lead back to their user."""
    store = await load(config_dir, opp_data())
    cred = store.get_credentials(OWNER_CRED_ID)
    assert cred is not None
    assert store.user_for_credentials(cred).id == OWNER_ID  # type: ignore[union-attr]


async def test_credentials_for_provider(config_dir: Path) -> None:
    """A provider's credentials are exactly those with its (type, id)."""
    store = await load(config_dir, opp_data())
    assert [c.id for c in store.credentials_for_provider(("openpeerpower", None))] == [OWNER_CRED_ID]
    assert [c.id for c in store.credentials_for_provider(("command_line", "ldap"))] == [ALICE_CRED_ID]


async def test_removing_a_user_removes_credentials_and_tokens(config_dir: Path) -> None:
    """Every index forgets the user's credentials and tokens."""
    store = await load(config_dir, opp_data())
    owner = store.get_user(OWNER_ID)
    assert owner is not None
    removed = store.remove_user(owner)
    assert {t.id for t in removed} == {TOKEN_NORMAL_ID, TOKEN_LONG_ID}
    assert store.get_user(OWNER_ID) is None
    assert store.get_credentials(OWNER_CRED_ID) is None
    assert store.find_credentials(("openpeerpower", None), {"username": "paulus"}) is None
    assert store.get_refresh_token_by_token(hexes("a")) is None


async def test_unparsable_auth_file_is_not_replaced(config_dir: Path) -> None:
    """A corrupt auth file fails the load and stays on disk as it was."""
    path = config_dir / ".storage" / "auth"
    path.parent.mkdir()
    path.write_text('{"version": 1, "key": "auth", "data": {"users": [', encoding="utf-8")
    store = AuthStore(str(config_dir))
    with pytest.raises(StorageError, match=re.escape(str(path))):
        await store.async_load()
    with pytest.raises(StorageError):
        await store.async_save()
    assert path.read_text(encoding="utf-8") == '{"version": 1, "key": "auth", "data": {"users": ['


async def test_local_only_flag_round_trips_when_set(config_dir: Path) -> None:
    """The opp-auth local_only extension is kept, and written only for users that have it."""
    data = opp_data()
    data["users"][1]["local_only"] = True
    path = write_auth(config_dir, data)
    store = AuthStore(str(config_dir))
    await store.async_load()
    assert store.get_user(ALICE_ID).local_only is True  # type: ignore[union-attr]
    await store.async_compact()
    assert json.loads(path.read_text(encoding="utf-8"))["data"] == upgraded({"data": data})["data"]


def _token_fields(token: Any) -> tuple[Any, ...]:
    """Every field of a loaded token, with relations by id."""
    return (
        token.id,
        token.user.id,
        token.client_id,
        token.client_name,
        token.client_icon,
        token.token_type,
        token.created_at,
        token.created_iso,
        token.access_token_expiration,
        token.token_hash,
        token.stored_jwt_key,
        token.jwt_key,
        token.last_used_at,
        token.last_used_ip,
        token.credential.id if token.credential else None,
        token.version,
        token.expire_at,
        token.token,
    )


async def test_fast_token_loader_matches_the_careful_one(config_dir: Path) -> None:
    """Start-up builds tokens in one inlined loop; each record loads as _load_token alone would load it.

    The records cover the shapes a file may hold: digests and Open Peer Power's secrets, naive and
    offset datetimes, absent optional fields, integer lifetimes, unknown credentials, an unknown
    user, a broken digest and created_at, and the same id twice (the later record wins).
    """
    from opp_auth.models import KeyRing

    digest = "ab" * 32
    base = upgraded(OPP_AUTH_FILE)["data"]["refresh_tokens"][0]
    variants: list[dict[str, Any]] = [
        {**base, "id": "t1", "jwt_key": None},
        {**base, "id": "t2", "created_at": "2021-07-10T12:30:45", "access_token_expiration": 60},
        {**base, "id": "t3", "created_at": "2021-07-10T14:30:45+02:00", "last_used_at": "2021-08-01T00:00:00"},
        {**base, "id": "t4", "credential_id": "missing", "last_used_ip": "10.0.0.1", "expire_at": 1.5e9},
        {**base, "id": "t5", "user_id": "nobody"},
        {**base, "id": "t6", "token_hash": "zz"},
        {**base, "id": "t7", "created_at": "yesterday"},
        {**base, "id": "t8", "created_at": 12},
        {**base, "id": "t9", "user_id": 7},
        {key: value for key, value in base.items() if key not in ("token_type", "expire_at", "version")} | {"id": "ta"},
        {**base, "id": "tb", "token_type": None, "client_id": None, "expire_at": True},
        {**base, "id": "t1", "client_name": "later", "token_hash": digest},
        {**base, "id": "tc", "created_at": "2021-07-10T12:30:45+00:00"},
        {**base, "id": "td", "created_at": "2021-07-10T12:30:45.000000+00:00"},
        {**base, "id": "te", "created_at": "2021-W27-6T12:30:45.123456+00:00"},
        {**base, "id": "tf", "created_at": "2021-07-10T12:30:45,123456+00:00"},
        {**base, "id": "tg", "created_at": "2021-07-10 12:30:45.123456Z"},
        {**base, "id": "th", "created_at": "2021-07-10T12:30:45.123456+00:00"},
        {**base, "id": "ti", "created_at": "2021-13-10T12:30:45.123456+00:00"},
        *copy.deepcopy(OPP_AUTH_FILE["data"]["refresh_tokens"]),
    ]
    data = opp_data()
    data["refresh_tokens"] = variants
    keyring = KeyRing(b"k" * 32)
    fast = AuthStore(str(config_dir))
    fast.keyring = keyring
    fast.idle_expiry = 3600.0
    write_auth(config_dir, data)
    await fast.async_load()

    careful = AuthStore(str(config_dir))
    careful.keyring = keyring
    careful.idle_expiry = 3600.0
    careful._build({**data, "refresh_tokens": []})
    for record in variants:
        careful._load_token(copy.deepcopy(record))

    def by_id(store: AuthStore) -> dict[str, tuple[Any, ...]]:
        return {t.id: _token_fields(t) for t in store.refresh_tokens()}

    fast_tokens, careful_tokens = by_id(fast), by_id(careful)
    assert fast_tokens.keys() == careful_tokens.keys()
    for token_id, fields in fast_tokens.items():
        other = careful_tokens[token_id]
        # expire_at of records without one is "now + idle expiry": equal up to the moments of the loads.
        if fields[-2] != other[-2]:
            assert abs(fields[-2] - other[-2]) < 60, token_id
        assert fields[:-2] + fields[-1:] == other[:-2] + other[-1:], token_id
    assert set(fast_tokens) >= {"t1", "t2", "t3", "t4", "ta", "tb", "tc", "td", "te", "tf", "tg", "th", TOKEN_NORMAL_ID}
    assert not set(fast_tokens) & {"t5", "t6", "t7", "t8", "t9", "ti"}
    # created_at is kept as the text isoformat() gives in UTC, whatever ISO form the file held.
    created = {token_id: fields[7] for token_id, fields in fast_tokens.items()}
    assert created["t2"] == "2021-07-10T12:30:45+00:00"
    assert created["t3"] == "2021-07-10T12:30:45+00:00"
    assert created["tc"] == created["td"] == "2021-07-10T12:30:45+00:00"
    assert created["te"] == created["tf"] == created["tg"] == created["th"] == "2021-07-10T12:30:45.123456+00:00"
    for token_id, fields in fast_tokens.items():
        assert fields[7] == fields[6].isoformat() and fields[6].utcoffset() == timedelta(0), token_id
    assert fast.get_refresh_token("t1").client_name == "later"  # type: ignore[union-attr]
    assert fast.get_refresh_token("t1").token_hash == bytes.fromhex(digest)  # type: ignore[union-attr]
    for store in (fast, careful):
        owner = store.get_user(OWNER_ID)
        assert owner is not None
        assert sorted(t.id for t in owner.token_list) == sorted(t.id for t in store.refresh_tokens() if t.user is owner)


def test_only_a_backend_whose_own_class_says_always_fresh_skips_the_staleness_check(tmp_path: Path) -> None:
    """The JSON backend's token lookup is its index; a subclass that does not say so again is asked each time."""
    from opp_auth.backend import JSON_TYPE, JsonBackend

    class SharedFiles(JsonBackend):
        """Say, JSON files several servers share: its cache could go stale."""

    class Declared(JsonBackend):
        always_fresh = True

    json_store = AuthStore(str(tmp_path), JsonBackend({"type": JSON_TYPE}, str(tmp_path)))
    assert json_store.refresh_token_lookup == json_store._tokens_by_id.get
    shared = AuthStore(str(tmp_path), SharedFiles({"type": JSON_TYPE}, str(tmp_path)))
    assert shared.refresh_token_lookup == shared.get_refresh_token
    declared = AuthStore(str(tmp_path), Declared({"type": JSON_TYPE}, str(tmp_path)))
    assert declared.refresh_token_lookup == declared._tokens_by_id.get

""".storage/auth decoded straight into records (decode_auth_file) loads what the generic parse loads.

A file in the shape opp-auth writes is decoded into typed records, without a dict per record;
any other file is parsed as JSON and read with the same rules. Whatever the file holds, both
ways must give the same store: the same users, groups, credentials and tokens, field by field
(an integer expire_at stays an integer), the same index keys, and the same file once compacted.
"""

from __future__ import annotations

import json
import math
import secrets
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from opp_auth import storage
from opp_auth import store as store_module
from opp_auth.models import KeyRing
from opp_auth.store import AuthStore, decode_auth_file

USER_IDS = ["u" + str(n) * 31 for n in range(4)]
CRED_IDS = ["c" + str(n) * 31 for n in range(4)]
GROUP_IDS = ["system-admin", "system-users", "system-read-only", "custom", "legacy"]
HASH = "ab" * 32


def write(config_dir: Path, data: Any, version: Any = 1, **extra: Any) -> bytes:
    """Write .storage/auth by hand; its bytes."""
    path = config_dir / ".storage" / "auth"
    path.parent.mkdir(parents=True, exist_ok=True)
    raw = json.dumps({"version": version, "minor_version": 1, "key": "auth", "data": data, **extra}).encode()
    path.write_bytes(raw)
    return raw


async def loaded(config_dir: Path, *, decode: bool, keyring: bool = True) -> AuthStore:
    """An AuthStore loaded from the file, with the records decode or (decode=False) the generic parse only."""
    original = store_module.decode_auth_file
    if not decode:
        store_module.decode_auth_file = lambda raw: None  # type: ignore[assignment]
    try:
        store = AuthStore(str(config_dir))
    finally:
        store_module.decode_auth_file = original
    if keyring:
        store.keyring = KeyRing(b"k" * 32)
    await store.async_load()
    return store


def snapshot(store: AuthStore) -> dict[str, Any]:
    """Everything the store holds, as comparable values (types of numbers included)."""
    return {
        "users": {
            u.id: (u.name, u.is_owner, u.is_active, u.system_generated, u.local_only, tuple(u.group_ids))
            for u in store.users()
        },
        "owners": sorted(u.id for u in store.users() if u.is_owner),
        "groups": {g.id: (g.name, repr(g.policy)) for g in store.groups()},
        "credentials": {
            c.id: (c.user_id, c.auth_provider_type, c.auth_provider_id, repr(c.data))
            for u in store.users()
            for c in u.credentials
        },
        "index": sorted(repr(k) for k in store._cred_index),
        "tokens": {
            t.id: (
                t.user.id,
                t.client_id,
                t.client_name,
                t.client_icon,
                t.token_type,
                t.created_iso,
                repr(t.access_token_expiration),
                t.token_hash.hex(),
                t.stored_jwt_key,
                repr(t.last_used_at),
                t.last_used_ip,
                t.credential.id if t.credential else None,
                t.version,
                repr(t.expire_at),
                type(t.expire_at).__name__,
            )
            for t in store.refresh_tokens()
        },
        "per_user": {u.id: sorted(u.refresh_tokens) for u in store.users()},
    }


async def compacted(store: AuthStore, config_dir: Path) -> bytes:
    """The file a compaction of the store writes."""
    await store.async_compact()
    return (config_dir / ".storage" / "auth").read_bytes()


def canonical_token(**fields: Any) -> dict[str, Any]:
    """A refresh token as opp-auth writes it; fields override."""
    record = {
        "id": "t" * 32,
        "user_id": USER_IDS[0],
        "client_id": "https://example.com/app",
        "client_name": None,
        "client_icon": None,
        "token_type": "normal",
        "created_at": "2026-12-02T19:38:03.079924+00:00",
        "access_token_expiration": 1800.0,
        "token_hash": HASH,
        "jwt_key": None,
        "last_used_at": None,
        "last_used_ip": None,
        "credential_id": CRED_IDS[0],
        "version": "0.1.0",
        "expire_at": None,
    }
    record.update(fields)
    return record


def canonical_data(tokens: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """A small file as opp-auth writes it."""
    return {
        "users": [
            {
                "id": USER_IDS[0],
                "group_ids": ["system-admin"],
                "is_owner": True,
                "is_active": True,
                "name": "Owner",
                "system_generated": False,
            },
            {
                "id": USER_IDS[1],
                "group_ids": ["system-users"],
                "is_owner": False,
                "is_active": True,
                "name": "Lisa",
                "system_generated": False,
                "local_only": True,
            },
        ],
        "groups": [
            {"id": "system-admin", "name": "Administrators"},
            {"id": "system-users", "name": "Users"},
            {"id": "system-read-only", "name": "Read Only"},
        ],
        "credentials": [
            {
                "id": CRED_IDS[0],
                "user_id": USER_IDS[0],
                "auth_provider_type": "openpeerpower",
                "auth_provider_id": None,
                "data": {"username": "owner"},
            }
        ],
        "refresh_tokens": tokens if tokens is not None else [canonical_token()],
    }


def test_a_file_opp_auth_writes_is_decoded_into_records() -> None:
    """The shape opp-auth writes decodes; the records hold the file's values (an integer stays one)."""
    raw = json.dumps(
        {"version": 1, "minor_version": 1, "key": "auth", "data": canonical_data([canonical_token(expire_at=17)])}
    ).encode()
    envelope = decode_auth_file(raw)
    assert envelope is not None and envelope["version"] == 1
    data = envelope["data"]
    assert [u.id for u in data.users] == USER_IDS[:2]
    assert data.users[1].local_only is True and data.users[0].local_only is False
    assert data.credentials[0].data == {"username": "owner"}
    (token,) = data.refresh_tokens
    assert token.expire_at == 17 and type(token.expire_at) is int
    assert token.token_hash == HASH


@pytest.mark.parametrize(
    "change",
    [
        pytest.param(lambda d: d["refresh_tokens"][0].update(token="s" * 64), id="open-peer-power-secret"),
        pytest.param(lambda d: d["refresh_tokens"][0].update(surprise=1), id="unknown-token-key"),
        pytest.param(lambda d: d["users"][0].update(is_active=1), id="integer-for-a-boolean"),
        pytest.param(lambda d: d["refresh_tokens"][0].update(expire_at=True), id="boolean-expire-at"),
        pytest.param(lambda d: d["refresh_tokens"][0].update(expire_at=math.inf), id="infinity"),
        pytest.param(lambda d: d["refresh_tokens"][0].update(client_name="\ud800"), id="lone-surrogate"),
        pytest.param(lambda d: d.update(extra=[]), id="unknown-data-key"),
        pytest.param(lambda d: d["credentials"][0].update(data=[1]), id="credential-data-not-an-object"),
        pytest.param(lambda d: d["refresh_tokens"][0].pop("token_hash"), id="no-digest"),
    ],
)
def test_any_other_file_is_left_to_the_generic_parse(change: Any) -> None:
    """Another key, another type, a value JSON's parser takes but records do not: None (parse generically)."""
    data = canonical_data()
    change(data)
    raw = json.dumps({"version": 1, "key": "auth", "data": data}).encode()
    json.loads(raw)  # the generic parse reads it
    assert decode_auth_file(raw) is None


@pytest.mark.parametrize(
    "raw",
    [b"", b"{", b"[]", b'{"version": 1}', b'{"version": "1", "data": {}}', b"\xff", b"[" * 5000 + b"]" * 5000],
)
def test_unreadable_bytes_are_left_to_the_generic_parse(raw: bytes) -> None:
    """Bytes that are not such a file: None, never an exception (the generic parse reports them with the path)."""
    assert decode_auth_file(raw) is None


async def test_the_store_loads_a_file_it_wrote_without_the_careful_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A file opp-auth wrote is decoded, not parsed as JSON, and no token takes the careful path."""
    write(tmp_path, canonical_data([canonical_token(), canonical_token(id="v" * 32, expire_at=1.5e9)]))
    careful: list[Any] = []
    parsed: list[Any] = []
    monkeypatch.setattr(AuthStore, "_load_token", lambda self, rdata: careful.append(rdata))
    real_parse = storage.parse_envelope
    monkeypatch.setattr(storage, "parse_envelope", lambda path, raw: parsed.append(path) or real_parse(path, raw))
    store = await loaded(tmp_path, decode=True)
    assert careful == [] and parsed == []
    assert {t.id for t in store.refresh_tokens()} == {"t" * 32, "v" * 32}


async def test_a_newer_version_is_refused_as_before(tmp_path: Path) -> None:
    """A file of another version is not taken from the records: the generic path refuses it with its message."""
    write(tmp_path, canonical_data(), version=2)
    store = AuthStore(str(tmp_path))
    with pytest.raises(store_module.StorageError, match="version 2"):
        await store.async_load()


async def test_a_token_in_another_date_form_takes_the_careful_path(tmp_path: Path) -> None:
    """A decoded token whose date needs rewriting is loaded by _load_token, with absent keys kept absent."""
    tokens = [canonical_token(created_at="2026-12-02T19:38:03Z")]
    del tokens[0]["expire_at"]
    write(tmp_path, canonical_data(tokens))
    decoded = await loaded(tmp_path, decode=True)
    generic = await loaded(tmp_path, decode=False)
    assert snapshot(decoded) == snapshot(generic)
    (token,) = decoded.refresh_tokens()
    assert token.created_iso == "2026-12-02T19:38:03+00:00"
    assert token.expire_at == decoded.default_expire_at("normal")


@pytest.mark.parametrize("token_id", ["", None, 0, False])
@pytest.mark.parametrize("decode", [True, False])
async def test_a_token_without_a_usable_id_is_skipped_and_logged(
    tmp_path: Path, token_id: Any, decode: bool, caplog: pytest.LogCaptureFixture
) -> None:
    """Never given a made-up id: one new at each load would let a journaled revocation miss it after a restart."""
    write(tmp_path, canonical_data([canonical_token(id=token_id), canonical_token(id="v" * 32, token_hash="cd" * 32)]))
    store = await loaded(tmp_path, decode=decode)
    assert [t.id for t in store.refresh_tokens()] == ["v" * 32]
    assert bytes.fromhex(HASH) not in store._tokens_by_token
    assert "invalid id" in caplog.text


async def test_a_revoked_token_stays_revoked_across_a_restart_without_compaction(tmp_path: Path) -> None:
    """Revoked, journaled, the server stops without rewriting the file: the next load does not bring it back."""
    data = canonical_data([canonical_token(), canonical_token(id="v" * 32, token_hash="cd" * 32)])
    data["users"][1]["is_active"] = 1  # the whole file takes the generic parse
    write(tmp_path, data)
    store = await loaded(tmp_path, decode=True)
    token = store.get_refresh_token("t" * 32)
    assert token is not None
    store.remove_refresh_token(token)
    await store.async_save()
    again = await loaded(tmp_path, decode=True)
    assert [t.id for t in again.refresh_tokens()] == ["v" * 32]


async def test_tokens_of_a_generically_parsed_file_skip_the_careful_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One odd value elsewhere in the file does not send every token through _load_token: each record that
    the typed record takes is converted on its own, the others keep their place in the order."""
    data = canonical_data(
        [
            canonical_token(),
            canonical_token(id="v" * 32, token="s" * 64),  # Open Peer Power's secret: the careful path
            canonical_token(id="w" * 32, token_hash="cd" * 32),
        ]
    )
    data["users"][0]["is_owner"] = 1
    raw = write(tmp_path, data)
    assert decode_auth_file(raw) is None
    careful: list[str] = []
    real = AuthStore._load_token

    def spy(self: AuthStore, rdata: dict[str, Any]) -> None:
        careful.append(rdata["id"])
        real(self, rdata)

    monkeypatch.setattr(AuthStore, "_load_token", spy)
    store = await loaded(tmp_path, decode=True)
    assert careful == ["v" * 32]
    assert sorted(t.id for t in store.refresh_tokens()) == ["t" * 32, "v" * 32, "w" * 32]


# ---- both ways, on any file ---------------------------------------------------------------------

TRUTHY = st.sampled_from([True, False])
ODD_TRUTH = st.sampled_from([True, False, 1, 0, "", "yes", None])
TEXT = st.one_of(st.none(), st.text(max_size=6))


@st.composite
def user_records(draw: st.DrawFn, uid: str, odd: bool) -> dict[str, Any]:
    """A user; odd: sometimes with values only the generic parse takes."""
    truth = ODD_TRUTH if odd and draw(st.booleans()) else TRUTHY
    record: dict[str, Any] = {
        "id": uid,
        "group_ids": draw(st.lists(st.sampled_from(GROUP_IDS), max_size=3)),
        "is_owner": draw(truth),
        "is_active": draw(truth),
        "name": draw(TEXT),
        "system_generated": draw(truth),
    }
    if draw(st.booleans()):
        record["local_only"] = draw(truth)
    if draw(st.integers(0, 9)) == 0:
        del record["group_ids"]
    return record


@st.composite
def credential_records(draw: st.DrawFn, cid: str) -> dict[str, Any]:
    """Credentials, of a known user or not."""
    return {
        "id": cid,
        "user_id": draw(st.sampled_from([USER_IDS[0], USER_IDS[0], *USER_IDS, "nobody", None])),
        "auth_provider_type": draw(st.sampled_from(["openpeerpower", "other"])),
        "auth_provider_id": draw(st.sampled_from([None, "x"])),
        "data": draw(st.one_of(st.none(), st.fixed_dictionaries({"username": st.text(max_size=5)}))),
    }


CREATED = st.sampled_from(
    [
        "2026-12-02T19:38:03.079924+00:00",
        "2026-12-02T19:38:03+00:00",
        "2026-12-02T19:38:03.000000+00:00",
        "2026-12-02T19:38:03Z",
        "2026-12-02 19:38:03.079924+01:00",
        "not a date",
        "",
    ]
)
NUMBER = st.one_of(st.integers(-(10**12), 10**12), st.floats(allow_nan=False, allow_infinity=False, width=64))


@st.composite
def token_records(draw: st.DrawFn, tid: str, odd: bool) -> dict[str, Any]:
    """A refresh token as opp-auth writes it (other date forms, digests, absent keys); odd: sometimes as
    Open Peer Power did (the secret itself) or with values only the generic parse takes."""
    record = canonical_token(
        id=tid,
        user_id=draw(st.sampled_from([USER_IDS[0], USER_IDS[0], USER_IDS[1], "nobody"])),
        client_id=draw(st.sampled_from([None, "https://example.com/app", "https://other.example/"])),
        client_name=draw(TEXT),
        token_type=draw(st.sampled_from([None, "normal", "system", "long_lived_access_token"])),
        created_at=draw(CREATED) if draw(st.integers(0, 3)) == 0 else "2026-12-02T19:38:03.079924+00:00",
        access_token_expiration=draw(st.sampled_from([1800.0, 1800, 60.5, 86400.0])),
        token_hash=draw(st.sampled_from([HASH, HASH, HASH, secrets.token_hex(32), "zz" * 32, ""])),
        jwt_key=draw(st.sampled_from([None, "j" * 128])),
        last_used_at=draw(st.sampled_from([None, "2026-12-01T10:00:00+00:00", "yesterday"])),
        last_used_ip=draw(st.sampled_from([None, "127.0.0.1", "::1"])),
        credential_id=draw(st.sampled_from([*CRED_IDS, None, "", "gone"])),
        version=draw(st.sampled_from([None, "0.1.0", "2021.7"])),
        expire_at=draw(st.one_of(st.none(), NUMBER)),
    )
    if draw(st.integers(0, 9)) == 0:
        record["id"] = draw(st.sampled_from(["", None, 0, False]) if odd else st.just(""))
    for key in ("client_id", "token_type", "expire_at", "version", "jwt_key", "access_token_expiration"):
        if draw(st.integers(0, 5)) == 0:
            del record[key]
    if odd and draw(st.integers(0, 3)) == 0:
        record["token"] = secrets.token_hex(64)
        if draw(st.booleans()):
            del record["token_hash"]
    if odd and draw(st.integers(0, 3)) == 0:
        record["expire_at"] = draw(st.sampled_from([True, "soon"]))
    return record


@st.composite
def auth_files(draw: st.DrawFn, odd: bool) -> dict[str, Any]:
    """The data of a .storage/auth file; odd: some of its values only the generic parse takes."""
    users = [
        draw(user_records(uid, odd)) for uid in [USER_IDS[0], *draw(st.lists(st.sampled_from(USER_IDS), max_size=3))]
    ]
    groups = draw(
        st.sampled_from(
            [
                [],
                [{"id": "system-admin", "name": "Administrators"}, {"id": "system-users", "name": "Users"}],
                [{"id": "custom", "name": "Custom", "policy": {"entities": True}}, {"id": "legacy", "name": "Old"}],
            ]
        )
    )
    creds = [draw(credential_records(cid)) for cid in draw(st.lists(st.sampled_from(CRED_IDS), max_size=4))]
    tokens = [draw(token_records(f"{n:032x}", odd)) for n in draw(st.lists(st.integers(0, 5), max_size=6))]
    return {"users": users, "groups": groups, "credentials": creds, "refresh_tokens": tokens}


@settings(max_examples=50, deadline=None)
@given(data=auth_files(odd=False))
def test_files_in_the_written_shape_are_decoded(data: dict[str, Any]) -> None:
    """The strategy below without odd values gives files the records take (so both ways are compared)."""
    assert decode_auth_file(json.dumps({"version": 1, "key": "auth", "data": data}).encode()) is not None


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.booleans().flatmap(lambda odd: auth_files(odd=odd)), keyring=st.booleans())
async def test_decoded_and_generic_loads_give_the_same_store(
    tmp_path: Path, data: dict[str, Any], keyring: bool
) -> None:
    """Any file: the store built from decoded records equals the one built from the generic parse, compacted too."""
    folder = tmp_path / secrets.token_hex(4)
    write(folder, data)
    decoded = await loaded(folder, decode=True, keyring=keyring)
    generic = await loaded(folder, decode=False, keyring=keyring)
    assert snapshot(decoded) == snapshot(generic)
    assert await compacted(decoded, folder) == await compacted(generic, folder)

"""The journal of .storage/auth: framing, torn writes, replay, compaction and crashes (issue 13).

A change is durable once its journal line is on disk; compaction rewrites .storage/auth in
Open Peer Power's format and cuts the journal. These tests cut the journal at every byte,
abort a compaction between each of its steps, and SIGKILL a process changing the store at
random, and each time compare what loads with what was acknowledged.
"""

from __future__ import annotations

import asyncio
import copy
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import opp_auth.journal
import opp_auth.storage
from opp_auth.journal import encode_record, frame, parse_journal, records_after_base
from opp_auth.models import GROUP_ID_ADMIN, GROUP_ID_USER, Credentials, KeyRing, RefreshToken, User
from opp_auth.storage import StorageError
from opp_auth.store import AuthStore

KEYRING = KeyRing(b"journal worker secret, 32 bytes!")
CLIENT_ID = "https://example.com/app"
WORKER = Path(__file__).with_name("journal_worker.py")


def journal_file(config_dir: Path) -> Path:
    """Where the auth store's journal lives."""
    return config_dir / ".storage" / ".auth.journal"


def auth_file(config_dir: Path) -> Path:
    """The Open Peer Power-format file."""
    return config_dir / ".storage" / "auth"


async def open_store(config_dir: Path) -> AuthStore:
    """An AuthStore loaded from config_dir, as a starting server loads it."""
    store = AuthStore(str(config_dir))
    store.keyring = KEYRING
    await store.async_load()
    return store


def state(store: AuthStore) -> dict[str, Any]:
    """Everything a client could observe, in a comparable form."""
    return {
        "users": {
            u.id: (u.name, u.is_active, u.is_owner, u.system_generated, tuple(u.group_ids), u.local_only)
            for u in store.users()
        },
        "credentials": {
            c.id: (c.user_id, c.auth_provider_type, c.auth_provider_id, json.dumps(c.data, sort_keys=True))
            for u in store.users()
            for c in u.credentials
        },
        "tokens": {
            t.id: (
                t.user.id, t.client_id, t.client_name, t.token_type, t.token_hash.hex(),
                t.credential.id if t.credential else None, t.expire_at, t.created_at.isoformat(),
            )
            for t in store.refresh_tokens()
        },
        "per_user": {u.id: sorted(t.id for t in u.token_list) for u in store.users()},
        "owner": store.owner().id if store.owner() else None,
        "people": store.has_non_system_user(),
    }


def new_token(store: AuthStore, user: User, cred: Credentials | None = None, **kwargs: Any) -> RefreshToken:
    """A normal refresh token of user, added to the store (not yet saved)."""
    token = RefreshToken(
        user=user, client_id=CLIENT_ID, access_token_expiration=timedelta(minutes=30), keyring=KEYRING,
        credential=cred, **kwargs,
    )
    store.add_refresh_token(token)
    return token


def new_user(store: AuthStore, name: str, *, with_login: bool = True, owner: bool = False) -> User:
    """An active user (and their login), added to the store (not yet saved)."""
    group = store.get_group(GROUP_ID_ADMIN if owner else GROUP_ID_USER)
    user = User(name=name, is_active=True, is_owner=owner, groups=[group])
    store.add_user(user)
    if with_login:
        store.link_credentials(user, Credentials("openpeerpower", None, {"username": name}))
    return user


# ---- framing ---------------------------------------------------------------------------------


def test_a_line_holds_the_records_of_one_write_and_parses_back() -> None:
    first = frame([encode_record({"n": 1, "t": "x"}), encode_record({"n": 2, "t": "y"})])
    second = frame([encode_record({"n": 3, "t": "é\u2028"})])
    records, size = parse_journal(first + second)
    assert [r["n"] for r in records] == [1, 2, 3]
    assert records[2]["t"] == "é\u2028"
    assert size == len(first) + len(second)
    assert first.count(b"\n") == 1 and first.endswith(b"\n")


def test_a_journal_cut_at_any_byte_yields_exactly_the_whole_lines_before_the_cut() -> None:
    lines = [frame([encode_record({"n": n, "v": "x" * n})]) for n in range(1, 6)]
    raw = b"".join(lines)
    ends = [sum(len(line) for line in lines[: i + 1]) for i in range(len(lines))]
    for cut in range(len(raw) + 1):
        records, size = parse_journal(raw[:cut])
        whole = [end for end in ends if end <= cut]
        assert [r["n"] for r in records] == list(range(1, len(whole) + 1)), cut
        assert size == (whole[-1] if whole else 0)


@pytest.mark.parametrize(
    "damage",
    [
        lambda line: line[:-3] + b"00\n",  # checksum off
        lambda line: line.replace(b'"n":3', b'"n":4'),  # a byte changed under its checksum
        lambda line: b"\0" * len(line),  # a block that never reached the disk
        lambda line: line[:-1],  # no line feed
    ],
)
def test_a_damaged_last_line_ends_the_journal(damage: Any) -> None:
    good = frame([encode_record({"n": 1})]) + frame([encode_record({"n": 2})])
    last = frame([encode_record({"n": 3})])
    records, size = parse_journal(good + damage(last))
    assert [r["n"] for r in records] == [1, 2]
    assert size == len(good)


def nested(depth: int) -> Any:
    """A list nested depth deep (built without recursion)."""
    value: Any = []
    for _ in range(depth):
        value = [value]
    return value


@pytest.mark.parametrize("value", ["\ud800", nested(100_000), float("nan"), object()])
def test_values_that_cannot_be_stored_are_refused_at_encoding(value: Any) -> None:
    with pytest.raises(opp_auth.journal.UnstorableValueError):
        encode_record({"n": 1, "v": value})


def test_a_marker_skips_the_records_a_matching_base_holds() -> None:
    base = b'{"version": 1, "key": "auth", "data": {}}\n'
    import hashlib

    marker = {"n": 3, "base": {"upto": 2, "size": len(base), "sha256": hashlib.sha256(base).hexdigest()}}
    records = [{"n": 1}, {"n": 2}, marker, {"n": 4}]
    assert [r["n"] for r in records_after_base(records, base)] == [4]
    # Another base (the crash came before the rename): every record, markers aside.
    assert [r["n"] for r in records_after_base(records, base + b" ")] == [1, 2, 4]
    assert [r["n"] for r in records_after_base(records, None)] == [1, 2, 4]


# ---- replay ------------------------------------------------------------------------------------


async def test_every_kind_of_change_is_replayed_at_start(config_dir: Path) -> None:
    store = await open_store(config_dir)
    owner = new_user(store, "owner", owner=True)
    alice = new_user(store, "alice")
    bob = new_user(store, "bob")
    system = User(name="integration", system_generated=True, is_active=True)
    store.add_user(system)
    keep = new_token(store, alice, alice.credentials[0])
    gone = new_token(store, alice)
    via_login = new_token(store, bob, bob.credentials[0])
    new_token(store, bob)
    new_token(store, owner, owner.credentials[0])
    await store.async_save()
    store.remove_refresh_token(gone)
    store.update_user(alice, name="Alice", is_active=False, groups=[store.get_group(GROUP_ID_ADMIN)])
    store.set_token_expiry(keep, 1234567890.5)
    store.remove_credentials(bob.credentials[0])
    store.remove_user(system)
    await store.async_save()
    assert store.get_refresh_token(via_login.id) is None
    assert not auth_file(config_dir).exists(), "no compaction yet: everything is in the journal"
    again = await open_store(config_dir)
    assert state(again) == state(store)


async def test_token_usage_is_journaled_by_the_delayed_write(config_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("opp_auth.store.USAGE_SAVE_DELAY", 0.01)
    store = await open_store(config_dir)
    token = new_token(store, new_user(store, "u"), expire_at=100.0)
    await store.async_save()
    token.last_used_ip = "192.0.2.1"
    token.expire_at = 200.0
    store.schedule_usage_save(token)
    for _ in range(100):
        await asyncio.sleep(0.01)
        if store._usage_task is None and store._usage_handle is None:
            break
    again = await open_store(config_dir)
    used = again.get_refresh_token(token.id)
    assert used is not None and (used.last_used_ip, used.expire_at) == ("192.0.2.1", 200.0)


async def test_a_torn_last_write_is_ignored_and_cut_before_the_next_append(config_dir: Path) -> None:
    store = await open_store(config_dir)
    user = new_user(store, "alice")
    await store.async_save()
    acknowledged = state(store)
    path = journal_file(config_dir)
    whole = path.read_bytes()
    new_token(store, user)
    await store.async_save()
    torn = path.read_bytes()[: len(whole) + 40]
    path.write_bytes(torn)
    again = await open_store(config_dir)
    assert state(again) == acknowledged
    assert path.read_bytes() == torn, "loading changes no file"
    new_token(again, again.get_user(user.id))  # type: ignore[arg-type]
    await again.async_save()
    third = await open_store(config_dir)
    assert state(third) == state(again)
    assert parse_journal(path.read_bytes())[1] == path.stat().st_size, "the torn bytes were cut, not built on"


async def test_a_journal_of_only_torn_bytes_is_gone_after_a_shutdown(config_dir: Path) -> None:
    """A crash in the first write after a compaction leaves a journal with no whole record; the
    next clean stop still leaves a whole file and no journal (the SIGKILL test met this case)."""
    store = await open_store(config_dir)
    new_user(store, "alice")
    await store.async_save()
    await store.async_flush()
    assert not journal_file(config_dir).exists()
    new_token(store, store.users()[-1])
    await store.async_save()
    path = journal_file(config_dir)
    path.write_bytes(path.read_bytes()[:25])
    again = await open_store(config_dir)
    assert state(again) == state(await open_store(config_dir))
    await again.async_flush()
    assert not path.exists()
    assert state(await open_store(config_dir)) == state(again)


async def test_an_empty_journal_is_gone_after_a_shutdown(config_dir: Path) -> None:
    """A crash between the journal's creation and its first write leaves an empty file; the next clean
    stop still leaves a whole file and no journal (the SIGKILL test met this case in CI)."""
    store = await open_store(config_dir)
    new_user(store, "alice")
    await store.async_save()
    await store.async_flush()
    path = journal_file(config_dir)
    assert not path.exists()
    path.write_bytes(b"")
    again = await open_store(config_dir)
    assert state(again) == state(store)
    await again.async_flush()
    assert not path.exists()
    assert json.loads(auth_file(config_dir).read_text())["key"] == "auth"
    assert state(await open_store(config_dir)) == state(store)


async def test_every_byte_of_an_append_loads_the_state_before_or_after_it(config_dir: Path) -> None:
    store = await open_store(config_dir)
    users = [new_user(store, f"user{i}") for i in range(3)]
    await store.async_save()
    before_state = state(store)
    before = journal_file(config_dir).read_bytes()
    new_token(store, users[1], users[1].credentials[0])
    store.remove_user(users[2])
    store.update_user(users[0], name="renamed")
    await store.async_save()
    after_state = state(store)
    after = journal_file(config_dir).read_bytes()
    assert after.startswith(before)
    for cut in range(len(before), len(after) + 1):
        journal_file(config_dir).write_bytes(after[:cut])
        loaded = state(await open_store(config_dir))
        assert loaded == (after_state if cut == len(after) else before_state), cut


async def test_an_unstorable_change_is_refused_before_memory_changes(config_dir: Path) -> None:
    store = await open_store(config_dir)
    alice = new_user(store, "alice")
    await store.async_save()
    acknowledged = state(store)
    with pytest.raises(StorageError):
        store.add_user(User(name="\ud800bad", is_active=True))
    with pytest.raises(StorageError):
        store.update_user(alice, name="bad\udfff")
    with pytest.raises(StorageError):
        store.link_credentials(alice, Credentials("openpeerpower", "x", {"deep": nested(100_000)}))
    with pytest.raises(StorageError):
        new_token(store, alice, client_name="\ud83d")
    assert state(store) == acknowledged, "memory is unchanged"
    assert not store._store.journal.has_unwritten  # type: ignore[union-attr]
    # The store goes on working, and disk and memory agree.
    new_token(store, alice)
    await store.async_save()
    assert state(await open_store(config_dir)) == state(store)


async def test_a_user_and_their_login_are_kept_or_lost_together(config_dir: Path) -> None:
    store = await open_store(config_dir)
    new_user(store, "first")
    await store.async_save()
    size = journal_file(config_dir).stat().st_size
    new_user(store, "owner", owner=True)
    await store.async_save()
    raw = journal_file(config_dir).read_bytes()
    for cut in range(size, len(raw)):
        journal_file(config_dir).write_bytes(raw[:cut])
        loaded = await open_store(config_dir)
        assert loaded.owner() is None and len(loaded.users()) == 1


async def test_one_user_with_many_tokens_changes_in_constant_time(config_dir: Path) -> None:
    store = await open_store(config_dir)
    user = new_user(store, "busy")
    with store.unjournaled():
        tokens = [new_token(store, user) for _ in range(3000)]
    start = time.perf_counter()
    for token in tokens[:1000]:
        store.remove_refresh_token(token)
    elapsed = time.perf_counter() - start
    assert user.token_count == 2000
    # A tuple rebuilt per removal would copy ~2.5 million references here; a dict removes in O(1).
    assert elapsed < 0.5, elapsed
    assert {t.id for t in user.token_list} == {t.id for t in tokens[1000:]}


# ---- compaction ---------------------------------------------------------------------------------


async def test_compaction_writes_open_peer_power_format_and_empties_the_journal(config_dir: Path) -> None:
    store = await open_store(config_dir)
    user = new_user(store, "alice")
    new_token(store, user, user.credentials[0])
    await store.async_save()
    await store.async_compact()
    assert not journal_file(config_dir).exists()
    envelope = json.loads(auth_file(config_dir).read_text())
    assert set(envelope) == {"version", "key", "data"} and envelope["key"] == "auth"
    assert set(envelope["data"]) == {"users", "groups", "credentials", "refresh_tokens"}
    assert state(await open_store(config_dir)) == state(store)


async def test_shutdown_leaves_a_whole_file_and_no_journal(config_dir: Path) -> None:
    store = await open_store(config_dir)
    new_user(store, "alice")
    await store.async_save()
    assert journal_file(config_dir).exists()
    await store.async_flush()
    assert not journal_file(config_dir).exists()
    assert state(await open_store(config_dir)) == state(store)


async def test_the_journal_is_compacted_in_the_background_once_it_grows(
    config_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(opp_auth.storage, "COMPACT_MIN_BYTES", 4096)
    store = await open_store(config_dir)
    user = new_user(store, "alice")
    for _ in range(30):
        new_token(store, user)
        await store.async_save()
    for _ in range(500):
        # Records that came during a compaction wait for the next commit to call for another.
        await store.async_save()
        small = not journal_file(config_dir).exists() or journal_file(config_dir).stat().st_size < 4096
        if store._store._compaction is None and auth_file(config_dir).exists() and small:
            break
        await asyncio.sleep(0.01)
    assert auth_file(config_dir).exists()
    assert not journal_file(config_dir).exists() or journal_file(config_dir).stat().st_size < 4096
    assert state(await open_store(config_dir)) == state(store)


class Crash(BaseException):
    """Stands for the process dying at a given point."""


async def changes_during_compaction(config_dir: Path, monkeypatch: pytest.MonkeyPatch, crash_at: str) -> None:
    """Compact a store while it changes; "crash" at crash_at; what loads is what was acknowledged."""
    store = await open_store(config_dir)
    users = [new_user(store, f"user{i}") for i in range(400)]
    for user in users[:200]:
        new_token(store, user, user.credentials[0])
    await store.async_save()
    await store.async_compact()
    for user in users[200:300]:
        new_token(store, user)
    store.remove_user(users[0])
    await store.async_save()

    real_write_atomic = opp_auth.storage.write_atomic
    real_drop = opp_auth.journal.Journal._drop_sync
    acknowledged: dict[str, Any] = {}

    def write_atomic(path: Path, chunks: Any, private: bool = True) -> None:
        if crash_at == "before rename":
            raise Crash
        real_write_atomic(path, chunks, private)
        if crash_at == "after rename":
            raise Crash

    def drop(journal: Any, upto: int) -> None:
        if crash_at == "during journal rewrite":
            real_replace = os.replace

            def no_replace(*args: Any) -> None:
                raise Crash

            monkeypatch.setattr(os, "replace", no_replace)
            try:
                real_drop(journal, upto)
            finally:
                monkeypatch.setattr(os, "replace", real_replace)
        real_drop(journal, upto)

    monkeypatch.setattr(opp_auth.storage, "write_atomic", write_atomic)
    monkeypatch.setattr(opp_auth.journal.Journal, "_drop_sync", drop)
    compaction = asyncio.ensure_future(store.async_compact())
    # Changes acknowledged while the compaction encodes the file (it yields every millisecond).
    for i, user in enumerate(users[300:340]):
        if i % 3 == 0:
            store.remove_user(user)
        else:
            new_token(store, user)
            store.update_user(users[i + 1], name=f"renamed {i}")
        await store.async_save()
        acknowledged = state(store)
    with pytest.raises(Crash):
        await compaction
    loaded = await open_store(config_dir)
    assert state(loaded) == acknowledged


@pytest.mark.parametrize("crash_at", ["before rename", "after rename", "during journal rewrite"])
async def test_a_compaction_killed_at_any_step_loses_nothing_acknowledged(
    config_dir: Path, monkeypatch: pytest.MonkeyPatch, crash_at: str
) -> None:
    await changes_during_compaction(config_dir, monkeypatch, crash_at)


async def test_a_failed_compaction_leaves_the_files_loading_the_same(config_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = await open_store(config_dir)
    new_user(store, "alice")
    await store.async_save()

    def full(*args: Any) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(opp_auth.storage, "write_atomic", full)
    with pytest.raises(StorageError, match="No space left"):
        await store.async_compact()
    new_user(store, "bob")
    await store.async_save()
    assert state(await open_store(config_dir)) == state(store)


# ---- random operations, then a crash at a random byte -----------------------------------------


OPS = st.lists(
    st.sampled_from(["user", "token", "revoke", "rename", "remove_user", "remove_login", "expiry", "compact"]),
    min_size=1,
    max_size=25,
)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops=OPS, seed=st.integers(0, 2**32 - 1), cut=st.floats(0, 1))
def test_random_changes_then_a_torn_write_load_what_was_acknowledged(
    tmp_path_factory: pytest.TempPathFactory, ops: list[str], seed: int, cut: float
) -> None:
    config_dir = tmp_path_factory.mktemp("config")
    asyncio.run(random_changes(config_dir, ops, random.Random(seed), cut))


async def random_changes(config_dir: Path, ops: list[str], rng: random.Random, cut: float) -> None:
    """Apply ops one save each; then tear the last append at a fraction cut of its length."""
    store = await open_store(config_dir)
    acknowledged = state(store)
    before_last: tuple[bytes | None, bytes | None, dict[str, Any]] = (None, None, acknowledged)
    for op in ops:
        users = store.users()
        tokens = store.refresh_tokens()
        journal_before = journal_file(config_dir).read_bytes() if journal_file(config_dir).exists() else b""
        base_before = auth_file(config_dir).read_bytes() if auth_file(config_dir).exists() else None
        if op == "user" or not users:
            new_user(store, f"user{rng.randrange(10**6)}", owner=rng.random() < 0.1)
        elif op == "token":
            user = rng.choice(users)
            new_token(store, user, user.credentials[0] if user.credentials and rng.random() < 0.5 else None)
        elif op == "revoke" and tokens:
            store.remove_refresh_token(rng.choice(tokens))
        elif op == "rename":
            store.update_user(rng.choice(users), name=f"n{rng.randrange(1000)}", is_active=rng.random() < 0.8)
        elif op == "remove_user":
            store.remove_user(rng.choice(users))
        elif op == "remove_login":
            with_login = [u for u in users if u.credentials]
            if with_login:
                store.remove_credentials(rng.choice(with_login).credentials[0])
        elif op == "expiry" and tokens:
            store.set_token_expiry(rng.choice(tokens), rng.choice([None, 1e9 + rng.random()]))
        elif op == "compact":
            await store.async_compact()
            acknowledged = state(store)
            continue
        await store.async_save()
        before_last = (journal_before, base_before, acknowledged)
        acknowledged = state(store)
    assert state(await open_store(config_dir)) == acknowledged
    # The last append cut short: what loads is the state before it.
    journal_before, base_before, previous = before_last
    after = journal_file(config_dir).read_bytes() if journal_file(config_dir).exists() else b""
    if journal_before is not None and after.startswith(journal_before) and len(after) > len(journal_before):
        torn = len(journal_before) + int(cut * (len(after) - len(journal_before) - 1))
        journal_file(config_dir).write_bytes(after[:torn])
        assert state(await open_store(config_dir)) == previous


# ---- SIGKILL at random moments ------------------------------------------------------------------

KILLS = int(os.environ.get("OPP_AUTH_JOURNAL_KILLS", "12"))


def model_apply(model: dict[str, Any], op: dict[str, Any]) -> None:
    """What an acknowledged change does, in the test's own terms."""
    users, creds, tokens = model["users"], model["creds"], model["tokens"]
    kind = op["op"]
    if kind == "add_user":
        users[op["id"]] = op["name"]
        creds[op["cred"]] = op["id"]
    elif kind == "add_token":
        tokens[op["id"]] = (op["user"], op["cred"])
    elif kind == "remove_token":
        tokens.pop(op["id"])
    elif kind == "rename":
        users[op["id"]] = op["name"]
    elif kind == "remove_user":
        users.pop(op["id"])
        for cid in [c for c, u in creds.items() if u == op["id"]]:
            del creds[cid]
        for tid in [t for t, (u, _) in tokens.items() if u == op["id"]]:
            del tokens[tid]
    elif kind == "remove_cred":
        creds.pop(op["id"])
        for tid in [t for t, (_, c) in tokens.items() if c == op["id"]]:
            del tokens[tid]


def diff(expected: dict[str, Any], loaded: dict[str, Any]) -> dict[str, Any]:
    """Entries that differ, per collection (for failure messages)."""
    out = {}
    for key in expected:
        a, b = expected[key], loaded[key]
        out[key] = {k: (a.get(k), b.get(k)) for k in set(a) | set(b) if a.get(k) != b.get(k)}
    return out


def observed(store: AuthStore) -> dict[str, Any]:
    """The loaded store in the model's terms."""
    return {
        "users": {u.id: u.name for u in store.users()},
        "creds": {c.id: u.id for u in store.users() for c in u.credentials},
        "tokens": {t.id: (t.user.id, t.credential.id if t.credential else None) for t in store.refresh_tokens()},
    }


@pytest.mark.slow
async def test_sigkill_at_random_moments_loses_nothing_acknowledged(config_dir: Path) -> None:
    """A process changes the store (and compacts it often) until SIGKILL; the next start loads every
    acknowledged change, and the change in flight either whole or not at all."""
    seed = int(os.environ.get("OPP_AUTH_CRASH_SEED", random.randrange(2**32)))
    rng = random.Random(seed)
    env = {**os.environ, "OPP_AUTH_COMPACT_MIN_BYTES": "8192"}
    model: dict[str, Any] | None = None
    counts = {"acknowledged": 0, "killed in flight": 0, "compactions": 0, "killed in a compaction": 0}
    try:
        for life in range(KILLS):
            errors = config_dir.parent / f"worker-{life}.err"
            with errors.open("wb") as err_file:
                proc = subprocess.Popen(
                    [sys.executable, str(WORKER), str(config_dir), str(rng.randrange(2**32))],
                    stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err_file, env=env,
                )
            assert proc.stdout is not None
            while True:
                line = proc.stdout.readline()
                if not line:
                    proc.kill()
                    proc.wait()
                    pytest.fail(f"the worker did not start: {errors.read_text()}")
                if "ready" in json.loads(line):
                    break
            if model is None:
                model = observed(await open_store(config_dir))
            assert proc.stdin is not None
            proc.stdin.write(b"go\n")
            proc.stdin.close()
            time.sleep(rng.uniform(0.05, 0.8))
            proc.send_signal(signal.SIGKILL)
            out = proc.stdout.read()
            proc.wait()
            assert "Traceback" not in errors.read_text(), errors.read_text()
            in_flight: dict[str, Any] | None = None
            compacting = False
            for line in out.splitlines():
                if not line.endswith(b"}"):
                    continue  # the kill cut this line short
                event = json.loads(line)
                if "begin" in event:
                    in_flight = event["begin"]
                elif "ack" in event:
                    assert in_flight is not None
                    model_apply(model, in_flight)
                    in_flight = None
                    counts["acknowledged"] += 1
                elif event.get("compact") == "start":
                    compacting = True
                    counts["compactions"] += 1
                elif event.get("compact") == "end":
                    compacting = False
            counts["killed in a compaction"] += compacting
            loaded = observed(await open_store(config_dir))
            if loaded != model:
                assert in_flight is not None, f"life {life}: acknowledged changes lost or altered: {diff(model, loaded)}"
                with_it = copy.deepcopy(model)
                model_apply(with_it, in_flight)
                assert loaded == with_it, f"life {life}: the change in flight was half applied: {in_flight}"
                model = with_it
                counts["killed in flight"] += 1
        assert counts["acknowledged"] > KILLS and counts["compactions"] > 0, counts
    except BaseException:
        print(f"OPP_AUTH_CRASH_SEED={seed} replays this run; {counts}")
        raise
    print(f"{KILLS} kills, seed {seed}: {counts}")
    # The files are in Open Peer Power's format after a final compaction.
    store = await open_store(config_dir)
    await store.async_flush()
    assert not journal_file(config_dir).exists()
    assert json.loads(auth_file(config_dir).read_text())["key"] == "auth"
    shutil.rmtree(config_dir / ".storage")


# ---- plugin stores (TOTP's replay counters are written at every login) --------------------------


async def test_a_journaled_plugin_store_records_only_the_changed_entries(config_dir: Path) -> None:
    from opp_auth.storage import Store

    store = Store(config_dir, "auth_module.totp", 1, journal=True)
    data: dict[str, Any] = {"users": {f"user{i}": "A" * 32 for i in range(500)}, "last_used": {}}
    await store.async_save(data)  # a whole file, as at enrolment of many users
    base = auth_file(config_dir).with_name("auth_module.totp").read_bytes()
    data["last_used"]["user7"] = 1234
    await store.async_save_changes(data, [("last_used", "user7")])
    del data["users"]["user8"]
    await store.async_save_changes(data, [("users", "user8"), ("last_used", "user8")])
    journal = config_dir / ".storage" / ".auth_module.totp.journal"
    assert journal.stat().st_size < 300, "two small records, not the 500 users again"
    assert auth_file(config_dir).with_name("auth_module.totp").read_bytes() == base
    assert await Store(config_dir, "auth_module.totp", 1, journal=True).async_load() == data
    # A crash that tore the last write loads the state before it.
    raw = journal.read_bytes()
    journal.write_bytes(raw[:-5])
    before = copy.deepcopy(data)
    before["users"]["user8"] = "A" * 32
    assert await Store(config_dir, "auth_module.totp", 1, journal=True).async_load() == before
    journal.write_bytes(raw)
    await store.async_flush()
    assert not journal.exists()
    envelope = json.loads(auth_file(config_dir).with_name("auth_module.totp").read_text())
    assert envelope["key"] == "auth_module.totp" and envelope["data"] == data

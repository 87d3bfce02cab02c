"""Tests for the local username/password provider (SPEC 3.2, 1.7, G12)."""

from __future__ import annotations

import asyncio
import base64
import functools
import ipaddress
import json
import logging
import threading
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import bcrypt
import opp_auth_local
import pytest
from opp_auth_local import STORAGE_KEY, InvalidUser, LocalAuthProvider, PasswordTooLong

from opp_auth.manager import AuthManager
from opp_auth.testing import async_seed_documents, async_stored_document
from opp_auth.yaml import ConfigError

HANDLER = ("openpeerpower", None)
PASSWORD = "test-pass"

Factory = Callable[..., Awaitable[AuthManager]]


@functools.cache
def _hash(password: bytes, rounds: int) -> str:
    """A stored-format hash (base64 of a bcrypt hash); cached so slow costs are paid once."""
    return base64.b64encode(bcrypt.hashpw(password, bcrypt.gensalt(rounds=rounds))).decode()


def write_logins(config_dir: Path, users: list[tuple[str, str | bytes]], rounds: int = 4) -> None:
    """Write .storage/auth_provider.openpeerpower as Open Peer Power would (cheap hashes by default)."""
    entries = [
        {"username": name, "password": _hash(pw if isinstance(pw, bytes) else pw.encode(), rounds)}
        for name, pw in users
    ]
    storage = config_dir / ".storage"
    storage.mkdir(exist_ok=True)
    envelope = {"version": 1, "key": STORAGE_KEY, "data": {"users": entries}}
    (storage / STORAGE_KEY).write_text(json.dumps(envelope, indent=4))


def read_logins(config_dir: Path) -> dict[str, Any]:
    """The file's envelope (Open Peer Power's format; whole once the server stopped: the journal compacted)."""
    return json.loads((config_dir / ".storage" / STORAGE_KEY).read_text())


async def stored_logins(config_dir: Path) -> list[dict[str, Any]]:
    """The logins a restart reads: the file with its journal replayed over it."""
    return list((await async_stored_document(config_dir, STORAGE_KEY) or {}).get("users", []))


async def make_auth(factory: Factory, **kwargs: Any) -> AuthManager:
    """A manager with only the local provider."""
    return await factory(providers=[{"type": "openpeerpower"}], mfa_modules=[], **kwargs)


def local(auth: AuthManager) -> LocalAuthProvider:
    """The local provider of a manager."""
    provider = auth.registry.get_auth_provider(*HANDLER)
    assert isinstance(provider, LocalAuthProvider)
    return provider


def auth_dir(auth: AuthManager) -> Path:
    """The configuration directory of a manager."""
    return Path(auth.config_dir)


async def login(auth: AuthManager, username: str, password: str) -> dict[str, Any]:
    """Run the login flow's init step with a username and password."""
    result = await auth.login_flow.async_init(
        HANDLER, context={"ip_address": ipaddress.ip_address("127.0.0.1"), "credential_only": False}
    )
    assert result["type"] == "form" and result["step_id"] == "init"
    return await auth.login_flow.async_configure(result["flow_id"], {"username": username, "password": password})


@pytest.fixture
def fast_hashing(monkeypatch: pytest.MonkeyPatch) -> None:
    """New passwords hashed at cost 4 so add/change tests stay fast (the format test keeps cost 12).

    tests/conftest.py does the same for every test not marked bcrypt_cost; this says it where it matters.
    """
    monkeypatch.setattr(opp_auth_local, "BCRYPT_ROUNDS", 4)


@pytest.fixture
def paulus(config_dir: Path) -> None:
    """One stored login: paulus / test-pass."""
    write_logins(config_dir, [("paulus", PASSWORD)])


# ---- login flow ---------------------------------------------------------------------------


@pytest.mark.usefixtures("paulus")
async def test_login_with_right_password_finishes_flow(opp_auth_factory: Factory) -> None:
    auth = await make_auth(opp_auth_factory)
    result = await login(auth, "paulus", PASSWORD)
    assert result["type"] == "create_entry"
    assert result["title"] == "Open Peer Power Local"
    assert result["result"].data == {"username": "paulus"}


@pytest.mark.usefixtures("paulus")
async def test_login_form_fields_are_username_then_password(opp_auth_factory: Factory) -> None:
    auth = await make_auth(opp_auth_factory)
    result = await auth.login_flow.async_init(HANDLER, context={})
    assert [str(key) for key in result["data_schema"].schema] == ["username", "password"]


@pytest.mark.usefixtures("paulus")
async def test_login_result_keeps_username_as_typed_without_password(opp_auth_factory: Factory) -> None:
    auth = await make_auth(opp_auth_factory)
    result = await login(auth, " Paulus ", PASSWORD)
    assert result["type"] == "create_entry"
    assert result["data"] == {"username": " Paulus "}


@pytest.mark.usefixtures("paulus")
async def test_differently_cased_and_spaced_usernames_share_one_credential(opp_auth_factory: Factory) -> None:
    auth = await make_auth(opp_auth_factory)
    first = await login(auth, " Paulus ", PASSWORD)
    assert first["result"].data == {"username": "paulus"}
    user = await auth.users.async_get_or_create_user(first["result"])

    second = await login(auth, "paulus", PASSWORD)
    assert second["type"] == "create_entry"
    assert not second["result"].is_new
    assert second["result"].id == first["result"].id
    assert [c.id for c in user.credentials] == [first["result"].id]


@pytest.mark.usefixtures("paulus")
async def test_unknown_user_and_wrong_password_give_the_same_error(opp_auth_factory: Factory) -> None:
    auth = await make_auth(opp_auth_factory)
    wrong_password = await login(auth, "paulus", "wrong")
    unknown_user = await login(auth, "nobody", PASSWORD)
    assert wrong_password["type"] == unknown_user["type"] == "form"
    assert wrong_password["errors"] == unknown_user["errors"] == {"base": "invalid_auth"}


@pytest.mark.usefixtures("paulus")
async def test_unknown_user_still_costs_one_bcrypt_check(
    opp_auth_factory: Factory, monkeypatch: pytest.MonkeyPatch
) -> None:
    auth = await make_auth(opp_auth_factory)
    calls: list[bytes] = []
    real_checkpw = bcrypt.checkpw

    def spy(password: bytes, hashed: bytes) -> bool:
        calls.append(hashed)
        return real_checkpw(password, hashed)

    monkeypatch.setattr(bcrypt, "checkpw", spy)
    result = await login(auth, "nobody", PASSWORD)
    assert result["errors"] == {"base": "invalid_auth"}
    assert len(calls) == 1
    stored = base64.b64decode((await stored_logins(auth_dir(auth)))[0]["password"])
    assert calls[0] != stored


async def test_login_over_http_issues_tokens(opp_auth_factory: Factory, opp_auth_client: Any, config_dir: Path) -> None:
    write_logins(config_dir, [("paulus", PASSWORD)])
    auth = await make_auth(opp_auth_factory)
    # Onboarding must be over for /auth/providers and logins to be offered.
    owner = await auth.users.async_create_user("Owner", is_owner=True)
    assert owner.is_owner
    client = await opp_auth_client(auth)
    tokens = await client.login.tokens(list(HANDLER), [{"username": "PAULUS", "password": PASSWORD}])
    assert tokens["token_type"] == "Bearer"
    refresh = await auth.refresh_tokens.async_get_refresh_token_by_token(tokens["refresh_token"])
    assert refresh is not None
    assert refresh.user.name == "paulus"


# ---- legacy mode ------------------------------------------------------------------------


async def test_case_equivalent_stored_usernames_warn_naming_the_username(
    opp_auth_factory: Factory, config_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    write_logins(config_dir, [("Paulus", "upper-pass"), ("paulus", "lower-pass")])
    with caplog.at_level(logging.WARNING):
        await make_auth(opp_auth_factory)
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING and "legacy mode" in r.getMessage()]
    assert len(warnings) == 1
    assert "case-insensitive" in warnings[0].getMessage()
    assert "'paulus'" in warnings[0].getMessage()


async def test_case_equivalent_stored_usernames_compare_exactly(opp_auth_factory: Factory, config_dir: Path) -> None:
    write_logins(config_dir, [("Paulus", "upper-pass"), ("paulus", "lower-pass")])
    auth = await make_auth(opp_auth_factory)
    assert (await login(auth, "Paulus", "upper-pass"))["type"] == "create_entry"
    assert (await login(auth, "paulus", "lower-pass"))["type"] == "create_entry"
    assert (await login(auth, "paulus", "upper-pass"))["errors"] == {"base": "invalid_auth"}
    assert (await login(auth, "PAULUS", "upper-pass"))["errors"] == {"base": "invalid_auth"}


async def test_whitespace_surrounded_stored_username_warns_naming_the_username(
    opp_auth_factory: Factory, config_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    write_logins(config_dir, [(" paulus ", PASSWORD)])
    with caplog.at_level(logging.WARNING):
        await make_auth(opp_auth_factory)
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING and "legacy mode" in r.getMessage()]
    assert len(warnings) == 1
    assert "space" in warnings[0].getMessage()
    assert "' paulus '" in warnings[0].getMessage()


async def test_whitespace_surrounded_stored_username_compares_exactly(
    opp_auth_factory: Factory, config_dir: Path
) -> None:
    write_logins(config_dir, [(" paulus ", PASSWORD)])
    auth = await make_auth(opp_auth_factory)
    assert (await login(auth, " paulus ", PASSWORD))["type"] == "create_entry"
    assert (await login(auth, "paulus", PASSWORD))["errors"] == {"base": "invalid_auth"}


@pytest.mark.usefixtures("paulus")
async def test_normal_data_logs_no_legacy_warning(opp_auth_factory: Factory, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        auth = await make_auth(opp_auth_factory)
    assert not local(auth).data.is_legacy
    assert not [r for r in caplog.records if "legacy mode" in r.getMessage()]


# ---- stored format and password length -----------------------------------------------------


@pytest.mark.bcrypt_cost
async def test_added_login_is_stored_in_open_peer_power_format(opp_auth_factory: Factory, config_dir: Path) -> None:
    auth = await make_auth(opp_auth_factory)
    await local(auth).async_add_auth(" Paulus ", PASSWORD)
    assert [u["username"] for u in await stored_logins(config_dir)] == ["paulus"]
    await auth.async_shutdown()
    envelope = read_logins(config_dir)
    assert envelope["version"] == 1
    assert envelope["key"] == "auth_provider.openpeerpower"
    assert list(envelope["data"]) == ["users"]
    [entry] = envelope["data"]["users"]
    assert set(entry) == {"username", "password"}
    assert entry["username"] == "paulus"
    hashed = base64.b64decode(entry["password"], validate=True)
    assert hashed.startswith(b"$2b$12$")
    assert bcrypt.checkpw(PASSWORD.encode(), hashed)


@pytest.mark.usefixtures("fast_hashing")
async def test_new_password_over_72_bytes_is_refused(opp_auth_factory: Factory, config_dir: Path) -> None:
    auth = await make_auth(opp_auth_factory)
    with pytest.raises(PasswordTooLong, match="at most 72 bytes"):
        await local(auth).async_add_auth("paulus", "p" * 73)
    assert local(auth).data.get("paulus") is None
    assert not (config_dir / ".storage" / STORAGE_KEY).exists()


@pytest.mark.usefixtures("paulus", "fast_hashing")
async def test_changed_password_over_72_bytes_is_refused(opp_auth_factory: Factory) -> None:
    auth = await make_auth(opp_auth_factory)
    # 25 three-byte characters: 25 characters, 75 bytes.
    with pytest.raises(PasswordTooLong, match="at most 72 bytes"):
        await local(auth).async_change_password("paulus", "€" * 25)
    assert (await login(auth, "paulus", PASSWORD))["type"] == "create_entry"


async def test_long_password_logs_in_against_hash_cut_at_72_bytes(opp_auth_factory: Factory, config_dir: Path) -> None:
    long_password = "0123456789" * 8
    # Open Peer Power's bcrypt silently hashed only the first 72 bytes.
    write_logins(config_dir, [("paulus", long_password.encode()[:72])])
    auth = await make_auth(opp_auth_factory)
    result = await login(auth, "paulus", long_password)
    assert result["type"] == "create_entry"


# ---- add / remove / change ---------------------------------------------------------------------


@pytest.mark.usefixtures("fast_hashing")
async def test_added_login_can_log_in(opp_auth_factory: Factory) -> None:
    auth = await make_auth(opp_auth_factory)
    await local(auth).async_add_auth("Paulus", PASSWORD)
    assert (await login(auth, "paulus", PASSWORD))["type"] == "create_entry"


@pytest.mark.usefixtures("paulus", "fast_hashing")
async def test_adding_existing_username_in_other_case_is_refused(opp_auth_factory: Factory) -> None:
    auth = await make_auth(opp_auth_factory)
    with pytest.raises(InvalidUser):
        await local(auth).async_add_auth(" PAULUS", "other-pass")
    assert (await login(auth, "paulus", PASSWORD))["type"] == "create_entry"


@pytest.mark.usefixtures("paulus")
async def test_removed_login_cannot_log_in_and_is_gone_from_file(opp_auth_factory: Factory, config_dir: Path) -> None:
    auth = await make_auth(opp_auth_factory)
    await local(auth).async_remove_auth("Paulus")
    assert await stored_logins(config_dir) == []
    assert (await login(auth, "paulus", PASSWORD))["errors"] == {"base": "invalid_auth"}


@pytest.mark.usefixtures("paulus")
async def test_removing_unknown_login_is_refused(opp_auth_factory: Factory) -> None:
    auth = await make_auth(opp_auth_factory)
    with pytest.raises(InvalidUser):
        await local(auth).async_remove_auth("nobody")


@pytest.mark.usefixtures("paulus", "fast_hashing")
async def test_changed_password_replaces_old_one_and_is_saved(opp_auth_factory: Factory, config_dir: Path) -> None:
    auth = await make_auth(opp_auth_factory)
    await local(auth).async_change_password("PAULUS", "new-pass")
    assert (await login(auth, "paulus", PASSWORD))["errors"] == {"base": "invalid_auth"}
    assert (await login(auth, "paulus", "new-pass"))["type"] == "create_entry"
    [entry] = await stored_logins(config_dir)
    assert bcrypt.checkpw(b"new-pass", base64.b64decode(entry["password"]))


@pytest.mark.usefixtures("paulus", "fast_hashing")
async def test_changing_password_of_unknown_login_is_refused(opp_auth_factory: Factory) -> None:
    auth = await make_auth(opp_auth_factory)
    with pytest.raises(InvalidUser):
        await local(auth).async_change_password("nobody", "new-pass")


@pytest.mark.usefixtures("paulus")
async def test_removing_credentials_removes_the_login(opp_auth_factory: Factory, config_dir: Path) -> None:
    auth = await make_auth(opp_auth_factory)
    result = await login(auth, "paulus", PASSWORD)
    await auth.users.async_get_or_create_user(result["result"])
    await auth.users.async_remove_credentials(result["result"])
    assert local(auth).data.get("paulus") is None
    assert await stored_logins(config_dir) == []
    assert (await login(auth, "paulus", PASSWORD))["errors"] == {"base": "invalid_auth"}


@pytest.mark.usefixtures("paulus")
async def test_removing_login_removes_its_credentials(opp_auth_factory: Factory) -> None:
    auth = await make_auth(opp_auth_factory)
    result = await login(auth, "paulus", PASSWORD)
    user = await auth.users.async_get_or_create_user(result["result"])
    await local(auth).async_remove_auth("Paulus")
    assert user.credentials == ()
    assert await local(auth).async_credentials() == []


# ---- configuration ---------------------------------------------------------------------------


async def test_config_id_is_rejected(opp_auth_factory: Factory) -> None:
    with pytest.raises(ConfigError, match="ID is not allowed for the openpeerpower auth provider."):
        await opp_auth_factory(providers=[{"type": "openpeerpower", "id": "second"}], mfa_modules=[])


async def test_config_unknown_key_is_rejected(opp_auth_factory: Factory) -> None:
    with pytest.raises(ConfigError, match="unknown key 'users'"):
        await opp_auth_factory(providers=[{"type": "openpeerpower", "users": []}], mfa_modules=[])


async def test_config_name_sets_the_title(opp_auth_factory: Factory) -> None:
    auth = await opp_auth_factory(providers=[{"type": "openpeerpower", "name": "Home logins"}], mfa_modules=[])
    assert local(auth).name == "Home logins"


# ---- bcrypt off the event loop, bounded ---------------------------------------------------------


async def test_password_checks_do_not_block_the_event_loop(opp_auth_factory: Factory, config_dir: Path) -> None:
    write_logins(config_dir, [("paulus", PASSWORD)], rounds=12)
    auth = await make_auth(opp_auth_factory)
    ticks: list[float] = []
    stop = asyncio.Event()

    async def ticker() -> None:
        while not stop.is_set():
            ticks.append(time.monotonic())
            await asyncio.sleep(0.01)

    task = asyncio.create_task(ticker())
    await asyncio.sleep(0.02)
    start = time.monotonic()
    results = await asyncio.gather(login(auth, "paulus", PASSWORD), login(auth, "paulus", "wrong"))
    end = time.monotonic()
    stop.set()
    await task
    assert [r["type"] for r in results] == ["create_entry", "form"]
    # The end time counts too: a loop blocked until the end leaves no tick to show it.
    stamps = [t for t in ticks if t < end] + [end]
    gaps = [b - a for a, b in zip(stamps, stamps[1:])]
    # One cost-12 check takes ~0.2 s: on the loop each would leave a gap of half the time or more.
    assert end - start > 0.15
    assert max(gaps) < (end - start) / 3


class _ConcurrencySpy:
    """Wraps bcrypt.checkpw, recording when each check ran and how many ran at once."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.running = 0
        self.peak = 0
        self.intervals: list[tuple[float, float]] = []
        self.real = bcrypt.checkpw

    def __call__(self, password: bytes, hashed: bytes) -> bool:
        with self.lock:
            self.running += 1
            self.peak = max(self.peak, self.running)
        start = time.monotonic()
        try:
            return self.real(password, hashed)
        finally:
            with self.lock:
                self.intervals.append((start, time.monotonic()))
                self.running -= 1


async def _two_concurrent_logins(auth: AuthManager, monkeypatch: pytest.MonkeyPatch) -> tuple[_ConcurrencySpy, float]:
    """Run two logins at once; return the spy and the wall time they took."""
    spy = _ConcurrencySpy()
    monkeypatch.setattr(bcrypt, "checkpw", spy)
    start = time.monotonic()
    results = await asyncio.gather(login(auth, "paulus", PASSWORD), login(auth, "paulus", PASSWORD))
    elapsed = time.monotonic() - start
    assert [r["type"] for r in results] == ["create_entry", "create_entry"]
    assert len(spy.intervals) == 2
    return spy, elapsed


async def test_max_password_checks_serialises_checks(
    opp_auth_factory: Factory, config_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_logins(config_dir, [("paulus", PASSWORD)], rounds=10)
    auth = await make_auth(opp_auth_factory, max_password_checks=1)
    spy, elapsed = await _two_concurrent_logins(auth, monkeypatch)
    assert spy.peak == 1
    (start1, end1), (start2, end2) = sorted(spy.intervals)
    assert start2 >= end1
    # Back to back: together they take as long as both checks one after the other.
    assert elapsed >= (end1 - start1) + (end2 - start2)


async def test_max_password_checks_allows_that_many_at_once(
    opp_auth_factory: Factory, config_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_logins(config_dir, [("paulus", PASSWORD)], rounds=10)
    auth = await make_auth(opp_auth_factory, max_password_checks=2)
    spy, _ = await _two_concurrent_logins(auth, monkeypatch)
    assert spy.peak == 2
    (_, end1), (start2, _) = sorted(spy.intervals)
    assert start2 < end1


@pytest.mark.parametrize("opp_auth_storage_type", ["json", "postgresql"])
async def test_a_change_writes_only_the_login_it_touches(
    opp_auth_factory: Factory, opp_auth_storage: dict[str, Any], config_dir: Path
) -> None:
    """With 2,000 logins stored, adding, renaming, re-passwording and removing one writes that one
    (a journal line, a document row), never the 2,000; a restart reads the same logins."""
    hashed = base64.b64encode(bcrypt.hashpw(b"x", bcrypt.gensalt(4))).decode()
    seeded = [{"username": f"user{i:05d}", "password": hashed} for i in range(2000)]
    await async_seed_documents(config_dir, opp_auth_storage, {STORAGE_KEY: (1, {"users": seeded})})
    auth = await make_auth(opp_auth_factory)
    provider = local(auth)
    written = Written(opp_auth_storage, config_dir)
    await written.start()
    await provider.async_add_auth("Newcomer", PASSWORD)
    await provider.async_change_password("user00007", "another-pass")
    credentials = await auth.users.async_get_or_create_user((await login(auth, "user00011", "x"))["result"])
    await provider.async_change_username(
        next(c for c in credentials.credentials if c.auth_provider_type == "openpeerpower"), "renamed"
    )
    await provider.async_remove_auth("user00003")
    sizes = await written.changes()
    assert len(sizes) >= 4 and max(sizes) < 1024, sizes  # the whole document is ~200 KB
    expected = sorted(u["username"] for u in provider.data.users)
    assert "newcomer" in expected and "renamed" in expected
    assert "user00003" not in expected and "user00011" not in expected
    await auth.async_shutdown()
    again = local(await make_auth(opp_auth_factory))
    assert sorted(u["username"] for u in again.data.users) == expected
    again.data.validate_login("user00007", "another-pass")
    again.data.validate_login("newcomer", PASSWORD)


class Written:
    """What a store wrote since start(): sizes of journal lines (JSON) or document rows (PostgreSQL)."""

    def __init__(self, storage: dict[str, Any], config_dir: Path) -> None:
        self.storage = storage
        self.file = config_dir / ".storage" / STORAGE_KEY
        self.journal = config_dir / ".storage" / f".{STORAGE_KEY}.journal"
        self.mark: Any = None

    def _state(self) -> Any:
        if self.storage["type"] == "json":
            stat = self.file.stat()
            return (stat.st_size, stat.st_mtime_ns, self.journal.read_bytes() if self.journal.exists() else b"")
        import psycopg

        with psycopg.connect(self.storage["url"]) as conn:
            row = conn.execute("SELECT coalesce(max(seq), 0) FROM opp_auth_documents").fetchone()
            return row[0] if row else 0

    async def start(self) -> None:
        self.mark = self._state()

    async def changes(self) -> list[int]:
        if self.storage["type"] == "json":
            size, mtime, before = self.mark
            stat = self.file.stat()
            assert (stat.st_size, stat.st_mtime_ns) == (size, mtime), "the whole file was rewritten"
            after = self.journal.read_bytes()
            return [len(line) for line in after[len(before) :].splitlines() if line]
        import psycopg

        with psycopg.connect(self.storage["url"]) as conn:
            rows = conn.execute(
                "SELECT octet_length(path) + coalesce(octet_length(value), 0) FROM opp_auth_documents "
                "WHERE key = %s AND seq > %s",
                (STORAGE_KEY, self.mark),
            ).fetchall()
        return [int(row[0]) for row in rows]


async def test_a_stored_flow_state_naming_a_passed_mfa_step_is_refused(opp_auth_factory: Factory) -> None:
    """The base LoginFlow (every provider's, the local one included) refuses a state that says its MFA step
    was passed: the step that passes it finishes the flow, so only a forged row holds one."""
    auth = await make_auth(opp_auth_factory)
    flow = await local(auth).async_login_flow({})
    state = json.loads(json.dumps(flow.dump_state()))
    assert state["mfa_passed"] is None
    again = await local(auth).async_login_flow({})
    again.load_state(state, None, None)
    with pytest.raises(ValueError, match="never has passed"):
        again.load_state({**state, "mfa_passed": ["some-user", "totp"]}, None, None)

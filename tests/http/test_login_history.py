"""Login history (issue 18): real logins over HTTP, read back through the websocket commands and the file."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import pytest

from opp_auth import AuthEvent, User, UserMeta
from opp_auth.history import MAX_DEVICES, MAX_FAILURES, MAX_SUCCESSES, STORAGE_KEY, clean_text, network_of
from opp_auth.manager import AuthManager
from opp_auth.testing import CLIENT_ID, REDIRECT_URI, OppAuthClient

EXAMPLE = ["insecure_example", None]
PROVIDERS = [
    {
        "type": "insecure_example",
        "users": [
            {"username": "ann", "password": "ann-pw", "name": "Ann"},
            {"username": "bob", "password": "bob-pw", "name": "Bob"},
        ],
    }
]
MFA = [{"type": "insecure_example", "data": []}]
HTTP = {"use_x_forwarded_for": True, "trusted_proxies": ["127.0.0.1"]}
OTHER_CLIENT = "https://example.com/app2"  # same host as CLIENT_ID: no redirect lookup
BROWSER = "Mozilla/5.0 (X11; Linux x86_64) Chrome/120"


@pytest.fixture
async def auth(opp_auth_factory: Any) -> AuthManager:
    """The example provider and PIN module; addresses come from X-Forwarded-For (a trusted proxy)."""
    return await opp_auth_factory(providers=PROVIDERS, mfa_modules=MFA, http=HTTP)


@pytest.fixture
async def client(auth: AuthManager, opp_auth_client: Any) -> OppAuthClient:
    """A live server."""
    return await opp_auth_client(auth)


@pytest.fixture
def seen(auth: AuthManager) -> list[AuthEvent]:
    """Every event of the stream, in order."""
    events: list[AuthEvent] = []
    auth.events.subscribe(events.append)
    return events


async def login(
    client: OppAuthClient,
    username: str,
    password: str,
    *,
    ip: str = "192.0.2.10",
    agent: str = BROWSER,
    client_id: str = CLIENT_ID,
    pin: str | None = None,
) -> dict[str, Any]:
    """One login over HTTP from ip with agent: the last step's answer (create_entry holds the code)."""
    headers = {"X-Forwarded-For": ip, "User-Agent": agent}
    async with client.session.post(
        client.url("/auth/login_flow"),
        json={"client_id": client_id, "handler": EXAMPLE, "redirect_uri": REDIRECT_URI.replace(CLIENT_ID, client_id)},
        headers=headers,
    ) as resp:
        step = await resp.json()
    async with client.session.post(
        client.url(f"/auth/login_flow/{step['flow_id']}"),
        json={"client_id": client_id, "username": username, "password": password},
        headers=headers,
    ) as resp:
        step = await resp.json()
    if pin is not None and step.get("type") == "form":
        async with client.session.post(
            client.url(f"/auth/login_flow/{step['flow_id']}"),
            json={"client_id": client_id, "pin": pin},
            headers=headers,
        ) as resp:
            step = await resp.json()
    return dict(step)


async def sign_in(client: OppAuthClient, username: str, password: str, **kwargs: Any) -> None:
    """A login that must succeed, with its code traded (the user exists afterwards)."""
    step = await login(client, username, password, **kwargs)
    assert step["type"] == "create_entry", step
    status, body = await client.login.token(
        grant_type="authorization_code", client_id=kwargs.get("client_id", CLIENT_ID), code=step["result"]
    )
    assert status == 200, body


def user_named(auth: AuthManager, name: str) -> User:
    """The user called name."""
    return next(u for u in auth.store.users() if u.name == name)


async def history(connect: Any, auth: AuthManager, user: User, **page: Any) -> dict[str, Any]:
    """The user's own auth/login_history answer."""
    ws = await connect.user(auth, user)
    return dict(await ws.result("auth/login_history", **page))


@pytest.fixture
def connect(client: OppAuthClient, ws_connector: Any) -> Any:
    """Websockets to the server."""
    return ws_connector(client)


async def test_a_sign_in_is_recorded_with_where_and_how(auth: AuthManager, client: OppAuthClient, connect: Any) -> None:
    """Time, address, network, client, user agent, provider and username; the first sign-in is flagged first."""
    await sign_in(client, "ann", "ann-pw", ip="192.0.2.10")
    ann = user_named(auth, "Ann")
    page = await history(connect, auth, ann)
    (entry,) = page["entries"]
    assert page["next"] is None
    assert entry["success"] is True and entry["reason"] is None
    assert entry["remote_address"] == "192.0.2.10" and entry["network"] == "192.0.2.0/24"
    assert entry["client_id"] == CLIENT_ID and entry["user_agent"] == BROWSER
    assert entry["provider"] == {"type": "insecure_example", "id": None}
    assert entry["username"] == "ann" and entry["mfa_module"] is None
    assert entry["first_sign_in"] is True and not entry["new_client"] and not entry["new_network"]
    assert entry["time"].endswith("+00:00")


async def test_new_network_and_new_client_are_flagged_and_announced(
    auth: AuthManager, client: OppAuthClient, connect: Any, seen: list[AuthEvent]
) -> None:
    """The first sign-in is no alarm; a new /24 and a new client id each are, once; a known one is not."""
    await sign_in(client, "ann", "ann-pw", ip="192.0.2.10")
    await sign_in(client, "ann", "ann-pw", ip="192.0.2.99")  # same /24
    await sign_in(client, "ann", "ann-pw", ip="198.51.100.7")  # new network
    await sign_in(client, "ann", "ann-pw", ip="198.51.100.8", client_id=OTHER_CLIENT)  # new client
    await sign_in(client, "ann", "ann-pw", ip="198.51.100.9", client_id=OTHER_CLIENT)  # both known
    ann = user_named(auth, "Ann")
    entries = (await history(connect, auth, ann))["entries"]
    flags = [(e["first_sign_in"], e["new_network"], e["new_client"]) for e in reversed(entries)]
    assert flags == [
        (True, False, False),
        (False, False, False),
        (False, True, False),
        (False, False, True),
        (False, False, False),
    ]
    alarms = [e for e in seen if e.type == "new_device_login"]
    assert [(a.user_id, a.remote_address, list(a.details["new"])) for a in alarms] == [
        (ann.id, "198.51.100.7", ["network"]),
        (ann.id, "198.51.100.8", ["client"]),
    ]
    assert alarms[0].details["network"] == "198.51.100.0/24" and alarms[0].user_agent == BROWSER
    # Each alarm follows the sign-in it is about, for every consumer.
    index = seen.index(alarms[0])
    assert seen[index - 1].type in ("login_succeeded", "refresh_token_created")


async def test_ipv6_counts_by_64_and_mapped_ipv4_as_ipv4() -> None:
    """The network of an address: /24, /64, IPv4-mapped IPv6 as its IPv4; junk is none."""
    assert network_of("2001:db8:1:2:aaaa::1") == "2001:db8:1:2::/64"
    assert network_of("::ffff:192.0.2.33") == "192.0.2.0/24"
    assert network_of("fe80::1%eth0") == "fe80::/64"
    assert network_of("not an address") is None and network_of(None) is None


async def test_failures_of_a_known_user_are_theirs_and_unknown_names_are_nobodys(
    auth: AuthManager, client: OppAuthClient, connect: Any
) -> None:
    """A wrong password for ann (typed as 'ANN ') is in ann's history with the name as typed; 'mallory' is nowhere."""
    await sign_in(client, "ann", "ann-pw")
    await sign_in(client, "bob", "bob-pw")
    assert (await login(client, "ann", "wrong", ip="203.0.113.5"))["errors"] == {"base": "invalid_auth"}
    assert (await login(client, "mallory", "wrong", ip="203.0.113.6"))["errors"] == {"base": "invalid_auth"}
    ann, bob = user_named(auth, "Ann"), user_named(auth, "Bob")
    failure = (await history(connect, auth, ann))["entries"][0]
    assert failure["success"] is False and failure["reason"] == "invalid_auth"
    assert failure["username"] == "ann" and failure["remote_address"] == "203.0.113.5"
    assert failure["new_client"] is False and failure["new_network"] is False
    bob_entries = (await history(connect, auth, bob))["entries"]
    assert [e["success"] for e in bob_entries] == [True]
    await auth.login_history.async_flush()
    stored = json.dumps(auth.login_history._data)
    assert "mallory" not in stored and "wrong" not in stored and "ann-pw" not in stored


async def test_a_wrong_second_factor_is_recorded_under_the_user(
    opp_auth_factory: Any, opp_auth_client: Any, ws_connector: Any
) -> None:
    """mfa_failed, with the user the flow knew and the module; the right PIN then records a sign-in with the module."""
    auth = await opp_auth_factory(providers=PROVIDERS, mfa_modules=MFA, http=HTTP)
    client = await opp_auth_client(auth)
    await sign_in(client, "ann", "ann-pw")
    ann = user_named(auth, "Ann")
    await auth.users.async_enable_user_mfa(ann, "insecure_example", {"pin": "1234"})
    step = await login(client, "ann", "ann-pw", pin="0000")
    assert step["errors"] == {"base": "invalid_code"}
    await sign_in(client, "ann", "ann-pw", pin="1234")
    entries = (await history(ws_connector(client), auth, ann))["entries"]
    assert [(e["success"], e["reason"], e["mfa_module"]) for e in entries[:2]] == [
        (True, None, "insecure_example"),
        (False, "mfa_failed", "insecure_example"),
    ]


async def test_spraying_from_many_addresses_never_pushes_out_sign_ins(
    auth: AuthManager, client: OppAuthClient, connect: Any, seen: list[AuthEvent]
) -> None:
    """Failures keep their own bound: hundreds of them leave every sign-in, and remember no device."""
    await sign_in(client, "ann", "ann-pw", ip="192.0.2.10")
    await sign_in(client, "ann", "ann-pw", ip="192.0.2.11")
    ann = user_named(auth, "Ann")
    for index in range(MAX_FAILURES + 30):
        # The throttle refuses most of these; a refusal is a failure of ann all the same.
        auth.events.login_failed(f"10.{index // 250}.{index % 250}.1", tuple(EXAMPLE), "ann", "invalid_auth")  # type: ignore[arg-type]
    ws = await connect.user(auth, ann)
    entries = []
    cursor = None
    while True:
        page = await ws.result("auth/login_history", limit=100, **({"before": cursor} if cursor else {}))
        entries += page["entries"]
        cursor = page["next"]
        if cursor is None:
            break
    assert sum(e["success"] for e in entries) == 2
    assert sum(not e["success"] for e in entries) == MAX_FAILURES
    assert auth.login_history.devices(ann.id)["networks"] == ["192.0.2.0/24"]


async def test_sign_ins_are_bounded_too(auth: AuthManager, client: OppAuthClient, connect: Any) -> None:
    """The sign-in ring keeps the newest MAX_SUCCESSES; remembered networks stay within MAX_DEVICES."""
    await sign_in(client, "ann", "ann-pw")
    ann = user_named(auth, "Ann")
    history_store = auth.login_history
    for index in range(MAX_SUCCESSES + 5):
        event = AuthEvent(
            type="login_succeeded",
            time=1e9 * 2 + index,
            user_id=ann.id,
            remote_address=f"10.0.{index}.1",
            client_id=CLIENT_ID,
            provider=("insecure_example", None),
        )
        history_store._on_event(event)
    entries = history_store.entries(ann.id, limit=100)
    assert len(entries) == MAX_SUCCESSES
    assert entries[0]["remote_address"] == f"10.0.{MAX_SUCCESSES + 4}.1"
    networks = history_store.devices(ann.id)["networks"]
    assert len(networks) == MAX_DEVICES and networks[0] == f"10.0.{MAX_SUCCESSES + 4}.0/24"


async def test_pages_follow_the_cursor_and_forged_cursors_are_refused(
    auth: AuthManager, client: OppAuthClient, connect: Any
) -> None:
    """limit + before walk every entry once; a cursor that is no positive integer is invalid_format."""
    for index in range(5):
        await sign_in(client, "ann", "ann-pw", ip=f"192.0.2.{index + 1}")
    ann = user_named(auth, "Ann")
    ws = await connect.user(auth, ann)
    first = await ws.result("auth/login_history", limit=2)
    second = await ws.result("auth/login_history", limit=2, before=first["next"])
    third = await ws.result("auth/login_history", limit=2, before=second["next"])
    ids = [e["id"] for page in (first, second, third) for e in page["entries"]]
    assert ids == sorted(set(ids), reverse=True) and len(ids) == 5 and third["next"] is None
    for bad in (
        {"before": 0},
        {"before": -5},
        {"before": "5"},
        {"before": True},
        {"before": 2**64},
        {"before": 1.5},
        {"limit": 0},
        {"limit": 101},
        {"limit": None},
        {"before": {"$gt": 0}},
    ):
        error = await ws.error("auth/login_history", **bad)
        assert error["code"] == "invalid_format", (bad, error)
    # A cursor beyond every id, or below them, is only an empty or a full page of one's own entries.
    assert len((await ws.result("auth/login_history", before=2**53))["entries"]) == 5
    assert (await ws.result("auth/login_history", before=1)) == {"entries": [], "next": None}


async def test_only_administrators_read_someone_elses_history(
    auth: AuthManager, client: OppAuthClient, connect: Any
) -> None:
    """A user cannot name another user (either command); an administrator can; an unknown user is not_found."""
    await sign_in(client, "ann", "ann-pw")
    await sign_in(client, "bob", "bob-pw")
    ann, bob = user_named(auth, "Ann"), user_named(auth, "Bob")
    as_bob = await connect.user(auth, bob)
    assert (await as_bob.error("config/auth/login_history", user_id=ann.id))["code"] == "unauthorized"
    assert (await as_bob.error("config/auth/login_summary"))["code"] == "unauthorized"
    assert (await as_bob.error("auth/login_history", user_id=ann.id))["code"] == "unauthorized"
    own = await as_bob.result("auth/login_history", user_id=bob.id)
    assert {e["username"] for e in own["entries"]} == {"bob"}
    admin = await auth.users.async_create_user("Ada", [UserMeta.GROUP_ADMIN])
    as_admin = await connect.user(auth, admin)
    theirs = await as_admin.result("config/auth/login_history", user_id=ann.id, limit=1)
    assert [e["username"] for e in theirs["entries"]] == ["ann"]
    assert (await as_admin.error("config/auth/login_history", user_id="nobody"))["code"] == "not_found"
    summary = await as_admin.result("config/auth/login_summary")
    assert summary[ann.id]["last_sign_in"]["username"] == "ann" and summary[ann.id]["recent_failures"] == 0
    assert summary[admin.id] == {"last_sign_in": None, "recent_failures": 0}


async def test_summary_counts_recent_failures(auth: AuthManager, client: OppAuthClient, connect: Any) -> None:
    """Failures of the last days are counted for the users page."""
    await sign_in(client, "ann", "ann-pw")
    for _ in range(3):
        await login(client, "ann", "nope")
    ann = user_named(auth, "Ann")
    assert auth.login_history.summary(ann.id)["recent_failures"] == 3


async def test_history_survives_a_restart(opp_auth_factory: Any, opp_auth_client: Any) -> None:
    """A new server (on the same storage, whichever it is) reads every entry and device back."""
    auth = await opp_auth_factory(providers=PROVIDERS, mfa_modules=MFA, http=HTTP)
    client = await opp_auth_client(auth)
    await sign_in(client, "ann", "ann-pw")
    await sign_in(client, "ann", "ann-pw", ip="198.51.100.1")
    ann = user_named(auth, "Ann")
    expected = auth.login_history.entries(ann.id)
    await auth.async_shutdown()
    again = await opp_auth_factory(providers=PROVIDERS, mfa_modules=MFA, http=HTTP)
    assert again.login_history.entries(ann.id) == expected and len(expected) == 2
    assert again.login_history.devices(ann.id)["networks"] == ["198.51.100.0/24", "192.0.2.0/24"]
    # Ids go on increasing after the restart, even within the same microsecond (cursors stay meaningful).
    again.login_history._on_event(AuthEvent(type="login_succeeded", time=expected[0]["id"] / 1e6, user_id=ann.id))
    assert again.login_history.entries(ann.id)[0]["id"] == expected[0]["id"] + 1


@pytest.mark.storage_types("json")
async def test_a_login_appends_a_small_journal_record(
    auth: AuthManager, client: OppAuthClient, config_dir: Path
) -> None:
    """Each login appends what changed to the journal: no whole-file write per login (only the
    document's first change writes its file, small then)."""
    await sign_in(client, "ann", "ann-pw")
    journal = config_dir / ".storage" / f".{STORAGE_KEY}.journal"
    whole = config_dir / ".storage" / STORAGE_KEY
    await auth.login_history.async_flush()
    base = whole.stat()
    before = journal.stat().st_size if journal.exists() else 0
    await sign_in(client, "ann", "ann-pw", ip="198.51.100.1")
    await auth.login_history.async_flush()
    grown = journal.stat().st_size - before
    assert 0 < grown < 2048, grown
    assert (whole.stat().st_size, whole.stat().st_mtime_ns) == (base.st_size, base.st_mtime_ns)


async def test_entries_of_two_servers_on_one_storage_do_not_overwrite_each_other(
    auth: AuthManager, client: OppAuthClient
) -> None:
    """Another server's change arriving before ours is written: both entries are kept (ids are times)."""
    await sign_in(client, "ann", "ann-pw")
    ann = user_named(auth, "Ann")
    history_store = auth.login_history
    await history_store.async_flush()
    theirs = json.loads(json.dumps(history_store._data))
    their_id = 10**15 * 2
    theirs["users"][ann.id]["s"][str(their_id)] = {"n": their_id, "t": their_id / 1e6, "ok": True, "ip": "192.0.2.200"}
    history_store._on_event(
        AuthEvent(type="login_succeeded", time=their_id / 1e6 + 1, user_id=ann.id, remote_address="192.0.2.201")
    )
    history_store._use(theirs)  # their change, heard while ours waits to be written
    await history_store.async_flush()
    addresses = [e["remote_address"] for e in history_store.entries(ann.id)]
    assert addresses[:2] == ["192.0.2.201", "192.0.2.200"]


async def test_a_removed_user_takes_their_history_along(
    auth: AuthManager, client: OppAuthClient, opp_auth_factory: Any
) -> None:
    """Removing a user deletes their entries and devices, from the storage too."""
    await sign_in(client, "ann", "ann-pw")
    ann = user_named(auth, "Ann")
    await auth.users.async_remove_user(ann)
    assert auth.login_history.entries(ann.id) == []
    await auth.async_shutdown()
    again = await opp_auth_factory(providers=PROVIDERS, mfa_modules=MFA, http=HTTP)
    assert ann.id not in again.login_history._data["users"]


async def raw_post(client: OppAuthClient, path: str, body: dict[str, Any], agent: bytes) -> dict[str, Any]:
    """A POST written byte by byte (aiohttp's client refuses control characters in a header; a hostile client does not)."""
    data = json.dumps(body).encode()
    reader, writer = await asyncio.open_connection(client.server.host, client.server.port)
    writer.write(
        b"POST "
        + path.encode()
        + b" HTTP/1.1\r\nHost: 127.0.0.1\r\nUser-Agent: "
        + agent
        + b"\r\nContent-Type: application/json\r\nConnection: close\r\nContent-Length: "
        + str(len(data)).encode()
        + b"\r\n\r\n"
        + data
    )
    await writer.drain()
    raw = await reader.read()
    writer.close()
    head, _, payload = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), head
    return dict(json.loads(payload))


async def test_hostile_client_strings_are_cleaned_and_clipped(
    auth: AuthManager, client: OppAuthClient, connect: Any
) -> None:
    """ANSI escapes, bidi overrides and a huge user agent: stored without control characters, clipped."""
    # The server's HTTP parser refuses C0 controls in a header (ESC included): bidi, invisible and bad UTF-8 get through.
    agent = "Evil \u202egnp.exe\u2066\u200b ".encode() + b"\xff\xfe " + b"A" * 6000
    start = {"client_id": CLIENT_ID, "handler": EXAMPLE, "redirect_uri": REDIRECT_URI}
    step = await raw_post(client, "/auth/login_flow", start, agent)
    step = await raw_post(
        client,
        f"/auth/login_flow/{step['flow_id']}",
        {"client_id": CLIENT_ID, "username": "ann", "password": "ann-pw"},
        agent,
    )
    assert step["type"] == "create_entry", step
    # The user is created at the code exchange; the sign-in waits for it.
    status, _ = await client.login.token(grant_type="authorization_code", client_id=CLIENT_ID, code=step["result"])
    assert status == 200
    ann = user_named(auth, "Ann")
    (entry,) = (await history(connect, auth, ann))["entries"]
    assert entry["user_agent"].startswith("Evil \ufffdgnp.exe\ufffd\ufffd ") and len(entry["user_agent"]) <= 256
    assert entry["user_agent"].endswith("A\u2026")
    # What a plugin may emit (note_event) is cleaned the same way: ANSI escapes, lone surrogates.
    assert clean_text("\x1b[31mred\x1b[0m\x9b") == "\ufffd[31mred\ufffd[0m\ufffd"
    assert clean_text("a\ud800b") == "a\ufffdb"


LIMITS = {"sign_ins": 3, "failures": 2, "keep_days": 1, "devices": 2}


async def test_configured_limits_bound_each_ring_the_devices_and_the_age(opp_auth_factory: Any) -> None:
    """audit: history: sets the bounds: rings of 3 sign-ins and 2 failures, 2 networks, one day."""
    auth = await opp_auth_factory(
        providers=PROVIDERS, mfa_modules=MFA, http=HTTP, blocks={"audit": {"history": LIMITS}}
    )
    history_store = auth.login_history
    user = await auth.users.async_create_user("Cleo")
    now = time.time()
    for index in range(6):
        for kind, reason in (("login_succeeded", None), ("login_failed", "invalid_auth")):
            history_store._on_event(
                AuthEvent(
                    type=kind,
                    reason=reason,
                    time=now - 60 + index,
                    user_id=user.id,
                    remote_address=f"10.{index}.0.1",
                    client_id=CLIENT_ID,
                    provider=("insecure_example", None),
                )
            )
    entries = history_store.entries(user.id, limit=100)
    assert sum(e["success"] for e in entries) == 3 and sum(not e["success"] for e in entries) == 2
    assert [e["remote_address"] for e in entries if e["success"]] == ["10.5.0.1", "10.4.0.1", "10.3.0.1"]
    assert history_store.devices(user.id)["networks"] == ["10.5.0.0/24", "10.4.0.0/24"]
    # An entry two days old is past keep_days: not shown, not the last sign-in.
    history_store._on_event(
        AuthEvent(type="login_failed", reason="invalid_auth", time=now - 2 * 86400, user_id=user.id)
    )
    assert all(e["time"] >= history_store_iso(now - 86400) for e in history_store.entries(user.id, limit=100))
    await history_store.async_flush()


def history_store_iso(timestamp: float) -> str:
    """A timestamp as the history's entries show it (ISO 8601, seconds, UTC)."""
    from datetime import UTC, datetime

    return datetime.fromtimestamp(timestamp, UTC).isoformat(timespec="seconds")


async def test_a_lowered_bound_applies_to_what_is_stored(opp_auth_factory: Any, config_dir: Path) -> None:
    """Entries kept under the default bounds: a restart with smaller ones shows only the newest."""
    auth = await opp_auth_factory(providers=PROVIDERS, mfa_modules=MFA, http=HTTP)
    user = await auth.users.async_create_user("Dora")
    now = time.time()
    for index in range(10):
        auth.login_history._on_event(
            AuthEvent(
                type="login_succeeded",
                time=now - 100 + index,
                user_id=user.id,
                remote_address=f"10.{index}.0.1",
                client_id=CLIENT_ID,
                provider=("insecure_example", None),
            )
        )
    await auth.login_history.async_flush()
    assert len(auth.login_history.entries(user.id, limit=100)) == 10
    await auth.async_shutdown()
    again = await opp_auth_factory(
        providers=PROVIDERS, mfa_modules=MFA, http=HTTP, blocks={"audit": {"history": LIMITS}}
    )
    entries = again.login_history.entries(user.id, limit=100)
    assert [e["remote_address"] for e in entries] == ["10.9.0.1", "10.8.0.1", "10.7.0.1"]
    assert again.login_history.devices(user.id)["networks"] == ["10.9.0.0/24", "10.8.0.0/24"]


@pytest.mark.parametrize(
    ("key", "value"),
    [("sign_ins", 0), ("failures", 1001), ("keep_days", "ninety"), ("devices", -1), ("rings", 5)],
)
def test_a_bad_history_limit_names_file_line_and_key(
    config_dir: Path, capsys: pytest.CaptureFixture[str], key: str, value: Any
) -> None:
    """audit: history: with a bad or unknown key is refused by check-config with the line and the key path."""
    from opp_auth.cli import main

    other = "devices: 5" if key == "sign_ins" else "sign_ins: 10"
    (config_dir / "configuration.yaml").write_text(
        f"openpeerpower:\naudit:\n  keep_days: 30\n  history:\n    {other}\n    {key}: {json.dumps(value)}\n"
    )
    code = main(["-c", str(config_dir), "check-config"])
    err = capsys.readouterr().err
    assert code == 1
    assert "configuration.yaml" in err
    assert f"line 6, key audit -> history -> {key}" in err, err

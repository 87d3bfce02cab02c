"""Edge validation (issue 11, items 2 and 5): nothing that cannot be stored is accepted, no input gives a 500.

Each finding of the review is replayed against a real server, then the test
checks the server still saves, and, where the finding lost data, that a
restart over the same configuration directory still honours revocations.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from opp_auth import UserMeta
from opp_auth.manager import AuthManager
from opp_auth.storage import StorageError, Store
from opp_auth.testing import CLIENT_ID, OppAuthClient
from opp_auth.validation import MAX_FORM_BYTES, MAX_FORM_FIELDS, MAX_JSON_BODY_BYTES

EXAMPLE = ["insecure_example", None]
ALICE = {"username": "alice", "password": "alice-pw"}
PROVIDERS = [
    {"type": "insecure_example", "users": [{"username": "alice", "password": "alice-pw", "name": "Alice"}]},
    {"type": "openpeerpower"},
]
OWNER = {"name": "Paulus", "username": "paulus", "password": "s3cret-pass", "client_id": CLIENT_ID, "language": "en"}
DEEP = "[" * 200_000 + "]" * 200_000
REPLY_TIMEOUT = 5.0


@pytest.fixture(autouse=True)
def cheap_new_hashes(monkeypatch: pytest.MonkeyPatch) -> None:
    """Onboarding hashes its password at cost 4: these tests are about input, not bcrypt."""
    import opp_auth_local

    monkeypatch.setattr(opp_auth_local, "BCRYPT_ROUNDS", 4)


@pytest.fixture
def no_tracebacks(caplog: pytest.LogCaptureFixture) -> Any:
    """After the test: no log record carried a traceback (a handler's exception reached the framework)."""
    caplog.set_level(logging.WARNING)
    yield caplog
    tracebacks = [r for r in caplog.records if r.exc_info is not None]
    assert not tracebacks, [r.getMessage() for r in tracebacks]


async def serve(opp_auth_factory: Any, opp_auth_client: Any, **kwargs: Any) -> tuple[AuthManager, OppAuthClient]:
    """A manager with the example and local providers, served."""
    auth = await opp_auth_factory(providers=kwargs.pop("providers", PROVIDERS), mfa_modules=[], **kwargs)
    return auth, await opp_auth_client(auth)


async def restart(client: OppAuthClient, opp_auth_factory: Any, opp_auth_client: Any) -> OppAuthClient:
    """Stop the server (flushing its store) and serve a new manager over the same configuration directory."""
    await client.server.close()
    _, new_client = await serve(opp_auth_factory, opp_auth_client)
    return new_client


async def ws_session(client: OppAuthClient, access_token: str) -> aiohttp.ClientWebSocketResponse:
    """A websocket past its auth phase."""
    ws = await client.session.ws_connect(client.url("/api/websocket"))
    assert (await ws.receive_json(timeout=REPLY_TIMEOUT))["type"] == "auth_required"
    await ws.send_json({"type": "auth", "access_token": access_token})
    assert (await ws.receive_json(timeout=REPLY_TIMEOUT))["type"] == "auth_ok"
    return ws


async def command(ws: aiohttp.ClientWebSocketResponse, msg_id: int, text: str) -> dict[str, Any]:
    """Send a raw command text; its result."""
    await ws.send_str(text)
    reply = dict(await ws.receive_json(timeout=REPLY_TIMEOUT))
    assert reply["id"] == msg_id and reply["type"] == "result", reply
    return reply


def user_data_text(msg_id: int, key: str, value_text: str) -> str:
    """A frontend/set_user_data command whose value is raw JSON text."""
    return f'{{"id": {msg_id}, "type": "frontend/set_user_data", "key": "{key}", "value": {value_text}}}'


def auth_file(config_dir: Path) -> bytes:
    """What is on disk of the auth store: .storage/auth and its journal (either may not exist yet)."""
    folder = config_dir / ".storage"
    return b"".join(path.read_bytes() for path in (folder / "auth", folder / ".auth.journal") if path.exists())


def strict_json(raw: bytes) -> Any:
    """Parse a storage file as a strict JSON reader would (no NaN, no lone surrogates)."""
    text = raw.decode("utf-8")
    return json.loads(text, parse_constant=lambda c: pytest.fail(f"{c} in a storage file"))


def check_storage_is_strict_json(config_dir: Path) -> None:
    """Every .storage file, and every line of every journal, is strict JSON."""
    for path in sorted((config_dir / ".storage").iterdir()):
        if path.name.endswith(".journal"):
            try:
                raw = path.read_bytes()
            except FileNotFoundError:
                # Compacted meanwhile (the login history's runs in the background): its lines are in its
                # file now, which sorts after it and is read below.
                continue
            for line in raw.splitlines():
                strict_json(line.split(b"\t", 1)[0])
        elif path.is_file() and not path.name.startswith("."):
            strict_json(path.read_bytes())


# ---- item 2: a poisoned value made every later save fail -----------------------------------------


@pytest.mark.storage_types("json")  # reads the .storage files
async def test_lone_surrogate_client_name_is_refused_and_revocations_survive_a_restart(
    opp_auth_factory: Any, opp_auth_client: Any, config_dir: Path, no_tracebacks: Any
) -> None:
    """The long-lived token named "\\ud800" is refused; later logins and revocations are saved and survive a restart."""
    _, client = await serve(opp_auth_factory, opp_auth_client)
    first = await client.login.tokens(EXAMPLE, [ALICE])
    second = await client.login.tokens(EXAMPLE, [ALICE])
    ws = await ws_session(client, first["access_token"])
    raw = '{"id": 1, "type": "auth/long_lived_access_token", "lifespan": 10, "client_name": "\\ud800"}'
    reply = await command(ws, 1, raw)
    assert reply["success"] is False and reply["error"]["code"] == "invalid_format", reply
    assert "client_name" in reply["error"]["message"] and "surrogate" in reply["error"]["message"]
    reply = await command(
        ws, 2, '{"id": 2, "type": "auth/long_lived_access_token", "lifespan": 10, "client_name": "CLI"}'
    )
    assert reply["success"] is True, reply
    await ws.close()

    assert (await client.login.token(action="revoke", token=second["refresh_token"]))[0] == 200
    check_storage_is_strict_json(config_dir)
    client = await restart(client, opp_auth_factory, opp_auth_client)
    status, body = await client.login.token(
        grant_type="refresh_token", refresh_token=second["refresh_token"], client_id=CLIENT_ID
    )
    assert (status, body["error"]) == (400, "invalid_grant")
    status, _ = await client.login.token(
        grant_type="refresh_token", refresh_token=first["refresh_token"], client_id=CLIENT_ID
    )
    assert status == 200


@pytest.mark.parametrize(
    ("value_text", "where"),
    [
        ('"\\udfff"', "surrogate"),
        ('{"a": [1, NaN]}', 'message["value"]["a"][1] is not a finite number'),
        ('{"\\ud800": 1}', "surrogate"),
    ],
)
@pytest.mark.storage_types("json")  # reads the .storage files
async def test_unstorable_user_data_is_refused_and_nothing_is_kept(
    opp_auth_factory: Any, opp_auth_client: Any, config_dir: Path, value_text: str, where: str, no_tracebacks: Any
) -> None:
    """frontend/set_user_data with a value the file cannot hold: invalid_format, memory and file unchanged."""
    auth, client = await serve(opp_auth_factory, opp_auth_client)
    tokens = await client.login.tokens(EXAMPLE, [ALICE])
    ws = await ws_session(client, tokens["access_token"])
    assert (await command(ws, 1, '{"id": 1, "type": "frontend/set_user_data", "key": "theme", "value": "dark"}'))[
        "success"
    ]
    before = (config_dir / ".storage" / "opp_auth.user_data").read_bytes()
    reply = await command(ws, 2, user_data_text(2, "theme", value_text))
    assert reply["success"] is False and reply["error"]["code"] == "invalid_format", reply
    assert where in reply["error"]["message"]
    user_id = next(u.id for u in auth.store.users() if u.name == "Alice")
    assert auth.user_settings.get(user_id) == {"theme": "dark"}
    assert (config_dir / ".storage" / "opp_auth.user_data").read_bytes() == before
    # The server still saves.
    assert (await command(ws, 3, '{"id": 3, "type": "frontend/set_user_data", "key": "theme", "value": "light"}'))[
        "success"
    ]
    assert strict_json((config_dir / ".storage" / "opp_auth.user_data").read_bytes())["data"]["users"][user_id] == {
        "theme": "light"
    }
    await ws.close()


async def test_user_data_nested_600_deep_closes_the_socket_and_nothing_is_kept(
    opp_auth_factory: Any, opp_auth_client: Any, config_dir: Path, no_tracebacks: Any
) -> None:
    """Once a RecursionError in the save: now the frame is refused unparsed (close 1007 with the reason)."""
    auth, client = await serve(opp_auth_factory, opp_auth_client)
    tokens = await client.login.tokens(EXAMPLE, [ALICE])
    ws = await ws_session(client, tokens["access_token"])
    await ws.send_str(user_data_text(1, "k", "[" * 600 + "]" * 600))
    msg = await ws.receive(timeout=REPLY_TIMEOUT)
    assert (msg.type, msg.data, msg.extra) == (
        aiohttp.WSMsgType.CLOSE,
        aiohttp.WSCloseCode.INVALID_TEXT,
        "Invalid JSON: JSON nested deeper than 32 levels",
    )
    user_id = next(u.id for u in auth.store.users() if u.name == "Alice")
    assert auth.user_settings.get(user_id) == {}
    ws = await ws_session(client, tokens["access_token"])
    assert (await command(ws, 1, '{"id": 1, "type": "frontend/set_user_data", "key": "k", "value": 1}'))["success"]
    await ws.close()


async def test_user_data_nested_to_the_limit_is_kept(opp_auth_factory: Any, opp_auth_client: Any) -> None:
    """A value nested 30 deep (32 with the message around it) is accepted and saved."""
    auth, client = await serve(opp_auth_factory, opp_auth_client)
    tokens = await client.login.tokens(EXAMPLE, [ALICE])
    ws = await ws_session(client, tokens["access_token"])
    value = "[" * 30 + "]" * 30
    reply = await command(ws, 1, user_data_text(1, "deep", value))
    assert reply["success"] is True, reply
    await ws.close()


@pytest.mark.storage_types("json")  # reads the .storage files
async def test_failed_user_data_save_leaves_memory_as_on_disk(
    opp_auth_factory: Any, opp_auth_client: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A write that fails (a full disk, simulated) puts the old value back: memory never differs from the file."""
    auth, _ = await serve(opp_auth_factory, opp_auth_client)
    user = await auth.users.async_create_user("Bob")
    await auth.user_settings.async_update(user.id, {"theme": "dark"})

    async def full_disk(self: Store, data: Any) -> None:
        raise StorageError("disk full")

    monkeypatch.setattr(Store, "async_save", full_disk)
    with pytest.raises(StorageError):
        await auth.user_settings.async_update(user.id, {"theme": "light", "language": "de"})
    assert auth.user_settings.get(user.id) == {"theme": "dark"}


@pytest.mark.storage_types("json")  # reads the .storage files
async def test_onboarding_name_with_a_surrogate_creates_nothing(
    opp_auth_factory: Any, opp_auth_client: Any, config_dir: Path, no_tracebacks: Any
) -> None:
    """A surrogate in the owner's name: 400 invalid_format, no owner, no login; a proper request then works."""
    auth, client = await serve(opp_auth_factory, opp_auth_client)
    body = json.dumps({**OWNER, "name": "Pa\ud800ulus"})  # ensure_ascii writes the escape
    async with client.request(
        "POST", "/api/onboarding/users", data=body, headers={"Content-Type": "application/json"}
    ) as resp:
        assert resp.status == 400
        reply = await resp.json()
    assert reply["code"] == "invalid_format" and '["name"]' in reply["message"], reply
    assert auth.users.owner() is None
    async with client.request("POST", "/api/onboarding/users", json=OWNER) as resp:
        assert resp.status == 200, await resp.text()
        assert "auth_code" in await resp.json()
    check_storage_is_strict_json(config_dir)


# ---- item 5: 500s from deep JSON, odd charsets and long fields ---------------------------------------


async def test_onboarding_with_a_huge_language_is_refused_before_anything_is_created(
    opp_auth_factory: Any, opp_auth_client: Any, config_dir: Path, no_tracebacks: Any
) -> None:
    """70,000 characters of language: 400, no owner, the user step still open; then onboarding works."""
    auth, client = await serve(opp_auth_factory, opp_auth_client)
    async with client.request("POST", "/api/onboarding/users", json={**OWNER, "language": "x" * 70_000}) as resp:
        assert resp.status == 400
        assert (await resp.json())["message"].startswith(("Invalid JSON", "Message format incorrect"))
    assert auth.users.owner() is None
    async with client.request("GET", "/api/onboarding") as resp:
        assert {s["step"]: s["done"] for s in await resp.json()}["user"] is False
    async with client.request("POST", "/api/onboarding/users", json={**OWNER, "language": "x" * 36}) as resp:
        assert resp.status == 400
    async with client.request("POST", "/api/onboarding/users", json=OWNER) as resp:
        assert resp.status == 200, await resp.text()
        assert set(await resp.json()) == {"auth_code"}


JSON_ROUTES = [
    "/auth/login_flow",
    "/auth/login_flow/0123456789abcdef0123456789abcdef",
    "/auth/link_user",
    "/api/onboarding/users",
    "/api/onboarding/integration",
]


@pytest.mark.parametrize("path", JSON_ROUTES)
async def test_json_nested_200000_deep_is_400_on_every_json_route(
    opp_auth_factory: Any, opp_auth_client: Any, path: str, no_tracebacks: Any
) -> None:
    """The pre-scan refuses it before the parser: 400 invalid_format, no traceback."""
    _, client = await serve(opp_auth_factory, opp_auth_client)
    tokens = await client.login.tokens(EXAMPLE, [ALICE])
    headers = {"Content-Type": "application/json", "Authorization": f"Bearer {tokens['access_token']}"}
    async with client.request("POST", path, data=DEEP, headers=headers) as resp:
        assert resp.status == 400
        assert await resp.json() == {
            "message": "Invalid JSON: JSON nested deeper than 32 levels",
            "code": "invalid_format",
        }


async def test_json_body_over_a_mebibyte_is_413(opp_auth_factory: Any, opp_auth_client: Any) -> None:
    """JSON bodies are bounded well below the 16 MiB of the whole server."""
    _, client = await serve(opp_auth_factory, opp_auth_client)
    body = json.dumps({"client_id": CLIENT_ID, "pad": "x" * MAX_JSON_BODY_BYTES})
    async with client.request(
        "POST", "/auth/login_flow", data=body, headers={"Content-Type": "application/json"}
    ) as resp:
        assert resp.status == 413
        assert (await resp.json())["message"] == f"Request body too large: the limit is {MAX_JSON_BODY_BYTES} bytes"


async def test_deep_websocket_frame_closes_with_a_reason_and_no_traceback(
    opp_auth_factory: Any, opp_auth_client: Any, no_tracebacks: Any
) -> None:
    """A command frame nested 200,000 deep: close code 1007 naming the limit; the server keeps serving."""
    _, client = await serve(opp_auth_factory, opp_auth_client)
    tokens = await client.login.tokens(EXAMPLE, [ALICE])
    ws = await ws_session(client, tokens["access_token"])
    await ws.send_str(DEEP)
    msg = await ws.receive(timeout=REPLY_TIMEOUT)
    assert msg.type == aiohttp.WSMsgType.CLOSE, msg
    assert msg.data == aiohttp.WSCloseCode.INVALID_TEXT
    assert msg.extra == "Invalid JSON: JSON nested deeper than 32 levels"
    ws = await ws_session(client, tokens["access_token"])
    assert (await command(ws, 1, '{"id": 1, "type": "auth/current_user"}'))["success"] is True
    await ws.close()


async def test_deep_websocket_auth_message_is_auth_invalid(
    opp_auth_factory: Any, opp_auth_client: Any, no_tracebacks: Any
) -> None:
    """The same in the auth phase: auth_invalid with the reason."""
    _, client = await serve(opp_auth_factory, opp_auth_client)
    ws = await client.session.ws_connect(client.url("/api/websocket"))
    await ws.receive_json(timeout=REPLY_TIMEOUT)
    await ws.send_str('{"type": "auth", "access_token": ' + DEEP + "}")
    reply = await ws.receive_json(timeout=REPLY_TIMEOUT)
    assert reply == {
        "type": "auth_invalid",
        "message": "Auth message incorrectly formatted: JSON nested deeper than 32 levels",
    }
    await ws.close()


def multipart(fields: list[tuple[str, str, dict[str, str]]]) -> tuple[bytes, dict[str, str]]:
    """A multipart/form-data body written by hand (aiohttp's writer refuses odd part headers): body, headers."""
    boundary = "edge-validation-boundary"
    body = b""
    for name, value, headers in fields:
        body += f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n'.encode()
        body += "".join(f"{key}: {item}\r\n" for key, item in headers.items()).encode()
        body += b"\r\n" + value.encode("latin-1", "backslashreplace") + b"\r\n"
    body += f"--{boundary}--\r\n".encode()
    return body, {"Content-Type": f"multipart/form-data; boundary={boundary}"}


@pytest.mark.parametrize(
    "headers",
    [
        {"Content-Type": "text/plain; charset=unicode_escape"},
        {"Content-Type": "text/plain; charset=utf-16"},
        {"Content-Type": "text/plain; charset=latin-1"},
        {"Content-Type": "text/plain; charset=no-such-charset"},
        {"Content-Type": "application/octet-stream"},
        {"Content-Type": "text/plain", "Content-Encoding": "gzip"},
        {"Content-Type": "text/plain", "Content-Transfer-Encoding": "base64"},
    ],
)
async def test_multipart_token_part_in_another_charset_is_400(
    opp_auth_factory: Any, opp_auth_client: Any, headers: dict[str, str], no_tracebacks: Any
) -> None:
    """charset=unicode_escape carrying abc\\ud800 (once a UnicodeEncodeError in hash_token): OAuth invalid_request."""
    _, client = await serve(opp_auth_factory, opp_auth_client)
    body, form_headers = multipart([("action", "revoke", {}), ("token", "abc\\ud800", headers)])
    async with client.request("POST", "/auth/token", data=body, headers=form_headers) as resp:
        assert resp.status == 400
        reply = await resp.json()
    assert reply["error"] == "invalid_request" and "'token'" in reply["error_description"], reply


async def test_urlencoded_form_in_another_charset_is_400(opp_auth_factory: Any, opp_auth_client: Any) -> None:
    """The form's own charset parameter is checked too."""
    _, client = await serve(opp_auth_factory, opp_auth_client)
    headers = {"Content-Type": "application/x-www-form-urlencoded; charset=unicode_escape"}
    async with client.request("POST", "/auth/token", data=b"action=revoke&token=abc\\ud800", headers=headers) as resp:
        assert resp.status == 400
        assert (await resp.json())["error"] == "invalid_request"
    headers = {"Content-Type": "application/x-www-form-urlencoded"}
    async with client.request("POST", "/auth/token", data=b"grant_type=%ED%A0%80", headers=headers) as resp:
        assert resp.status == 400
        assert (await resp.json())["error_description"] == "The form is not valid UTF-8"


async def test_multipart_token_request_in_utf8_works(
    opp_auth_factory: Any, opp_auth_client: Any, no_tracebacks: Any
) -> None:
    """Plain multipart forms (with or without charset=utf-8) are read like urlencoded ones."""
    _, client = await serve(opp_auth_factory, opp_auth_client)
    code = await client.login.code(EXAMPLE, [ALICE])
    body, headers = multipart(
        [
            ("grant_type", "authorization_code", {}),
            ("client_id", CLIENT_ID, {"Content-Type": "text/plain; charset=UTF-8"}),
            ("code", code, {"Content-Type": "text/plain; charset=us-ascii"}),
        ]
    )
    async with client.request("POST", "/auth/token", data=body, headers=headers) as resp:
        assert resp.status == 200, await resp.text()
        tokens = await resp.json()
    body, headers = multipart([("action", "revoke", {}), ("token", tokens["refresh_token"], {})])
    async with client.request("POST", "/auth/token", data=body, headers=headers) as resp:
        assert resp.status == 200
    status, reply = await client.login.token(
        grant_type="refresh_token", refresh_token=tokens["refresh_token"], client_id=CLIENT_ID
    )
    assert (status, reply["error"]) == (400, "invalid_grant")


async def test_file_parts_and_nested_multipart_are_400(opp_auth_factory: Any, opp_auth_client: Any) -> None:
    """A form post is fields only."""
    _, client = await serve(opp_auth_factory, opp_auth_client)
    form = aiohttp.FormData()
    form.add_field("token", b"x" * 10, filename="token.txt", content_type="text/plain")
    async with client.request("POST", "/auth/token", data=form) as resp:
        assert resp.status == 400
        assert (await resp.json())["error_description"] == "File uploads are not accepted"
    outer = aiohttp.MultipartWriter("form-data")
    outer.append(aiohttp.MultipartWriter("mixed"))
    async with client.request("POST", "/auth/token", data=outer) as resp:
        assert resp.status == 400
        assert (await resp.json())["error"] == "invalid_request"


@pytest.mark.parametrize("kind", ["urlencoded", "multipart"])
async def test_forms_are_bounded(opp_auth_factory: Any, opp_auth_client: Any, kind: str) -> None:
    """More than 64 fields, or more than 64 KiB: 413 JSON."""
    _, client = await serve(opp_auth_factory, opp_auth_client)
    many = [(f"f{i}", "v", {}) for i in range(MAX_FORM_FIELDS + 1)]
    big = [("token", "x" * (MAX_FORM_BYTES + 1), {})]
    for fields in (many, big):
        if kind == "multipart":
            data, headers = multipart(fields)
        else:
            data = "&".join(f"{name}={value}" for name, value, _ in fields).encode()
            headers = {"Content-Type": "application/x-www-form-urlencoded"}
        async with client.request("POST", "/auth/token", data=data, headers=headers) as resp:
            assert resp.status == 413
            assert (await resp.json())["message"].startswith(("Too many form fields", "Request body too large"))


# ---- the store's own guard ----------------------------------------------------------------------


@pytest.mark.storage_types("json")  # reads the .storage files
async def test_store_refuses_unstorable_records_before_changing_memory(
    opp_auth_factory: Any, opp_auth_client: Any, config_dir: Path, no_tracebacks: Any
) -> None:
    """A provider whose user meta holds a lone surrogate (past every edge): 400 invalid_format, nothing kept."""
    providers = [{"type": "insecure_example", "users": [{"username": "eve", "password": "pw", "name": "E\udcffve"}]}]
    auth, client = await serve(opp_auth_factory, opp_auth_client, providers=providers)
    owner = await auth.users.async_create_user("Owner", [UserMeta.GROUP_ADMIN], is_owner=True)
    before = auth_file(config_dir)
    code = await client.login.code(EXAMPLE, [{"username": "eve", "password": "pw"}])
    status, body = await client.login.token(grant_type="authorization_code", client_id=CLIENT_ID, code=code)
    assert status == 400
    assert body["code"] == "invalid_format" and "surrogate" in body["message"], body
    assert [u.name for u in auth.store.users()] == ["Owner"]
    assert auth.store.credentials_for_provider(("insecure_example", None)) == []
    assert auth_file(config_dir) == before
    # Renames are checked the same way; the store still saves.
    with pytest.raises(ValueError, match="surrogate"):
        await auth.users.async_update_user(owner, name="\ud800")
    assert owner.name == "Owner"
    await auth.users.async_update_user(owner, name="Paulus")
    assert [u.name for u in auth.store.users()] == ["Paulus"]
    assert b"Paulus" in auth_file(config_dir)
    check_storage_is_strict_json(config_dir)

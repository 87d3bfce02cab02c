"""Hostile input at every field of every HTTP route and websocket command; the server then saves, restarts and honours revocations.

Issue 11's class "nothing that cannot be stored is accepted; no request gets a
500": the routes come from the application's router and the commands from its
websocket command registry, so a route or command added later (by the core or
any installed plugin) is fuzzed without touching this file. The fields of a
route come from its OpenAPI description (tests/http/test_openapi.py keeps that
complete), those of a command from its voluptuous schema.

Values are arbitrary Unicode (lone surrogates, NUL, 70,000-character strings),
non-finite numbers, nesting far past the limits (as raw JSON text), sent as
JSON bodies, urlencoded and multipart forms in assorted charsets, and
websocket frames. Every answer must be a 4xx in the documented shape, or a
success; never a 5xx, an ``unknown_error`` or a logged traceback.

Afterwards: a revocation and a login still save (200, not 503), and a new
application over the same configuration directory refuses every refresh
token revoked before (by /auth/token and by the websocket) and accepts the
others. The storage files are strict JSON.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from hypothesis import HealthCheck, given, note, settings
from hypothesis import strategies as st
from hypothesis.errors import InvalidArgument
from yarl import URL

from opp_auth.config import validate_config
from opp_auth.http.app import create_app
from opp_auth.http.openapi import OPENAPI_FILE
from opp_auth.http.websocket_api import WS_COMMANDS_KEY
from opp_auth.manager import AuthManager
from opp_auth.models import GROUP_ID_ADMIN, GROUP_ID_USER
from opp_auth.plugins import make_plugin_manager
from opp_auth.testing import CLIENT_ID, REDIRECT_URI
from opp_auth.validation import MAX_STRING_LENGTH

# Modest counts: the whole file runs in a few seconds; CI can raise them with HYPOTHESIS profiles.
FUZZ = settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.function_scoped_fixture],
)
REPLY_TIMEOUT = 10.0
EXAMPLE = ["insecure_example", None]
USERS = [
    {"username": "victim", "password": "victim-pw", "name": "Victim"},
    {"username": "fuzzer", "password": "fuzzer-pw", "name": "Fuzzer"},
]
PROVIDERS = [{"type": "insecure_example", "users": USERS}, {"type": "openpeerpower"}]
MFA_MODULES = [{"type": "insecure_example", "data": []}]
# The fuzzer comes through a trusted proxy from addresses of its own, so its failures never throttle the victim.
HTTP = {"use_x_forwarded_for": True, "trusted_proxies": ["127.0.0.1"]}
FUZZ_ADDRESSES = [f"203.0.113.{n}" for n in range(1, 40)]
ANY_METHODS = ["GET", "POST", "PUT", "DELETE", "PATCH"]
DOCUMENT = json.loads(OPENAPI_FILE.read_text(encoding="utf-8"))


# ---- hostile values ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Deep:
    """Raw JSON nested n levels deep (too deep for json.dumps to write)."""

    depth: int
    kind: str = "["

    def text(self) -> str:
        """The JSON text."""
        if self.kind == "[":
            return "[" * self.depth + "]" * self.depth
        return '{"a":' * self.depth + "0" + "}" * self.depth


any_char = st.characters(exclude_categories=())  # lone surrogates included
hostile_text = st.one_of(
    st.text(any_char, max_size=12),
    st.sampled_from(["\ud800", "abc\ud800", "\udfff", "\x00", "a\x00b", "\ufeff", "\u202e", "../../etc/passwd"]),
    st.sampled_from([MAX_STRING_LENGTH + 1, 70_000]).map(lambda n: "x" * n),
)
hostile_scalar = st.one_of(
    hostile_text,
    st.sampled_from([float("nan"), float("inf"), float("-inf"), 10**4000 // 10**3990, -1, 0, 2**63, 1e308, True]),
    st.builds(Deep, st.sampled_from([33, 100, 600, 5000, 200_000]), st.sampled_from(["[", "{"])),
)
hostile_value = st.recursive(
    hostile_scalar,
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(hostile_text, inner, max_size=3)),
    max_leaves=6,
)


def render(value: Any) -> str:
    """JSON text of a value that may hold Deep markers and NaN (json.dumps escapes surrogates)."""
    if isinstance(value, Deep):
        return value.text()
    if isinstance(value, dict):
        return "{" + ",".join(f"{json.dumps(str(k))}:{render(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ",".join(render(v) for v in value) + "]"
    return json.dumps(value)


def short(value: Any) -> str:
    """A readable repr of a case for Hypothesis' report (huge strings cut)."""
    text = repr(value)
    return text if len(text) < 400 else text[:200] + f"...<{len(text)} chars>..." + text[-150:]


def report(line: str) -> None:
    """Add a line to Hypothesis' report of a failing example (outside one, where the sweep runs, do nothing)."""
    try:
        note(line)
    except InvalidArgument:
        pass


def as_text(value: Any) -> str:
    """A value for a form field or a URL: strings as they are, anything else as its JSON text."""
    return value if isinstance(value, str) else render(value)


# ---- the site under test -------------------------------------------------------------------------


class Site:
    """A real server on 127.0.0.1 driven from a private event loop, restartable over the same directory."""

    def __init__(self, config_dir: Path) -> None:
        """Nothing is served until start()."""
        self.config_dir = config_dir
        self.loop = asyncio.new_event_loop()
        self.auth: AuthManager | None = None
        self.app: web.Application | None = None
        self.server: TestServer | None = None
        self.session: aiohttp.ClientSession | None = None

    def run(self, coro: Any) -> Any:
        """Run a coroutine on the site's loop."""
        return self.loop.run_until_complete(coro)

    async def start(self) -> None:
        """Build the manager and application exactly as configuration.yaml would, and serve them."""
        pm = make_plugin_manager()
        raw = {"openpeerpower": {"auth_providers": PROVIDERS, "auth_mfa_modules": MFA_MODULES}, "http": HTTP}
        config = validate_config(raw, pm, config_dir=self.config_dir, allow_insecure_example=True)
        self.auth = AuthManager(
            str(self.config_dir),
            pm,
            provider_configs=config.providers,
            mfa_configs=config.mfa_modules,
            http_config=config.http,
        )
        self.app = create_app(self.auth)
        self.server = TestServer(self.app, host="127.0.0.1")
        await self.server.start_server()
        self.session = aiohttp.ClientSession()

    async def stop(self) -> None:
        """Close the client and the server (the application's cleanup flushes and shuts the manager down)."""
        assert self.session is not None and self.server is not None
        await self.session.close()
        await self.server.close()

    def url(self, path: str) -> URL:
        """The server's URL for an already-encoded path."""
        assert self.server is not None
        return URL(str(self.server.make_url("")).rstrip("/") + path, encoded=True)

    async def request(self, method: str, path: str, **kwargs: Any) -> tuple[int, str, bytes]:
        """(status, content type, body) of a request."""
        assert self.session is not None
        async with self.session.request(method, self.url(path), allow_redirects=False, **kwargs) as resp:
            return resp.status, resp.content_type, await resp.read()

    async def token_form(self, **form: str) -> tuple[int, Any]:
        """POST /auth/token with an urlencoded form from the proxy itself (the victim's own address)."""
        status, _, body = await self.request("POST", "/auth/token", data=form)
        return status, (json.loads(body) if body else None)

    async def login(self, username: str, password: str) -> dict[str, Any]:
        """Log in through the HTTP API: the token endpoint's answer."""
        start = {"client_id": CLIENT_ID, "handler": EXAMPLE, "redirect_uri": REDIRECT_URI}
        status, _, body = await self.request("POST", "/auth/login_flow", json=start)
        assert status == 200, body
        flow_id = json.loads(body)["flow_id"]
        step = {"client_id": CLIENT_ID, "username": username, "password": password}
        status, _, body = await self.request("POST", f"/auth/login_flow/{flow_id}", json=step)
        assert status == 200, body
        code = json.loads(body)["result"]
        status, tokens = await self.token_form(grant_type="authorization_code", client_id=CLIENT_ID, code=code)
        assert status == 200, tokens
        return dict(tokens)


@pytest.fixture
def site(tmp_path: Path) -> Iterator[Site]:
    """An onboarded installation with an owner, served; closed after the test."""
    config_dir = tmp_path / "config"
    (config_dir / ".storage").mkdir(parents=True)
    (config_dir / ".storage" / "onboarding").write_text(
        json.dumps(
            {"version": 4, "key": "onboarding", "data": {"done": ["user", "core_config", "analytics", "integration"]}}
        )
    )
    site = Site(config_dir)
    site.run(site.start())
    yield site
    site.run(site.stop())
    site.loop.close()


# ---- what to send ------------------------------------------------------------------------------


def route_table(app: web.Application) -> list[tuple[str, str]]:
    """(method, path template) of every route the router serves."""
    return sorted({(route.method, route.resource.canonical) for route in app.router.routes() if route.resource})


def documented_operation(path: str, method: str) -> dict[str, Any] | None:
    """The OpenAPI operation of a route, if described."""
    return DOCUMENT["paths"].get(path, {}).get(method.lower())


def _resolve(schema: dict[str, Any]) -> dict[str, Any]:
    """Follow one $ref into components."""
    if "$ref" in schema:
        name = schema["$ref"].rsplit("/", 1)[-1]
        return dict(DOCUMENT["components"]["schemas"][name])
    return schema


def body_fields(path: str, method: str) -> tuple[list[str], list[str]]:
    """(field names, content types) of a route's request body, from its description."""
    operation = documented_operation(path, method) or {}
    content = (operation.get("requestBody") or {}).get("content") or {}
    names: list[str] = []
    for media in content.values():
        names += [n for n in _resolve(media.get("schema") or {}).get("properties", {}) if n not in names]
    return names, list(content)


def command_fields(schema: Any) -> list[str]:
    """Field names of a websocket command's voluptuous schema (id and type aside)."""
    return [str(key) for key in schema.schema if str(key) not in ("id", "type")]


@dataclass
class Context:
    """What plausible values may refer to (filled once the site is up)."""

    fuzzer_id: str
    plausible: list[Any]


def field_values(context: Context) -> st.SearchStrategy[Any]:
    """A field's value: usually hostile, sometimes plausible (so handlers get past their first checks)."""
    return st.one_of(hostile_value, hostile_value, st.sampled_from(context.plausible))


@dataclass
class HttpCase:
    """One request."""

    method: str
    template: str
    path_value: Any
    encoding: str  # json, raw, urlencoded, multipart, none
    fields: dict[str, Any]
    raw: Any
    charset: str | None
    bearer: bool | str  # True: the fuzzer's valid token; a string: that Authorization header
    address: str
    route_method: str = ""  # the router's method ("*" for any), when method was chosen for it


@dataclass
class WsCase:
    """One websocket frame: a command with fields, or raw JSON text."""

    command: str | None
    fields: dict[str, Any]
    raw: Any
    batch: bool


# How the sweep sends each documented body type (a form is sent both ways).
SWEEP_ENCODINGS = {
    "application/json": "json",
    "application/x-www-form-urlencoded": "urlencoded",
    "multipart/form-data": "multipart",
}


def _jwt_like(payload: bytes) -> str:
    """A token shaped like an HS256 JWT around any payload (unsigned)."""
    return (
        "Bearer eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9."
        + base64.urlsafe_b64encode(payload).decode().rstrip("=")
        + ".c2ln"
    )


# Authorization headers a client could send (within what an HTTP header can carry).
HOSTILE_AUTHORIZATION = [
    "Bearer ",
    "Bearer x.y.z",
    "bearer x",
    "Basic YWxhZGRpbjpvcGVuc2VzYW1l",
    "Bearer " + "a" * 9000,
    "Bearer \xff\xfe\x80",
    _jwt_like(b"[" * 2000 + b"]" * 2000),  # nested past the parser's recursion limit
    _jwt_like(b'{"iss": "\\ud800", "exp": 1e999}'),
    _jwt_like(b'{"iss": ["x"], "exp": NaN}'),
]
CHARSETS = [None, "utf-8", "UTF-8", "us-ascii", "unicode_escape", "utf-16", "latin-1", "no-such-charset", "utf-7"]


def http_cases(routes: list[tuple[str, str]], context: Context) -> st.SearchStrategy[HttpCase]:
    """Requests to any route, with hostile fields in any body encoding."""

    @st.composite
    def build(draw: Any) -> HttpCase:
        route_method, template = draw(st.sampled_from(routes))
        method = draw(st.sampled_from(ANY_METHODS)) if route_method == "*" else route_method
        names, _ = body_fields(template, method)
        names = names + draw(st.lists(hostile_text, max_size=2))
        chosen = draw(st.lists(st.sampled_from(names), unique=True)) if names else []
        values = field_values(context)
        return HttpCase(
            method=method,
            template=template,
            path_value=draw(st.one_of(hostile_text, st.just("FLOW"), st.sampled_from(["", "x", "a" * 32]))),
            encoding=draw(st.sampled_from(["json", "json", "raw", "urlencoded", "multipart", "none"])),
            fields={name: draw(values) for name in chosen},
            raw=draw(hostile_value),
            charset=draw(st.sampled_from(CHARSETS)),
            bearer=draw(st.one_of(st.booleans(), st.sampled_from(HOSTILE_AUTHORIZATION))),
            address=draw(st.sampled_from(FUZZ_ADDRESSES)),
            route_method=route_method,
        )

    return build()


def ws_cases(commands: dict[str, Any], context: Context) -> st.SearchStrategy[WsCase]:
    """Frames carrying any registered command with hostile fields, or hostile raw JSON."""

    @st.composite
    def build(draw: Any) -> WsCase:
        if draw(st.integers(0, 9)) == 0:
            return WsCase(None, {}, draw(hostile_value), False)
        command = draw(st.sampled_from(sorted(commands)))
        names = command_fields(commands[command][1]) + draw(st.lists(hostile_text, max_size=1))
        chosen = draw(st.lists(st.sampled_from(names), unique=True)) if names else []
        values = field_values(context)
        return WsCase(command, {name: draw(values) for name in chosen}, None, draw(st.integers(0, 9)) == 0)

    return build()


# ---- sending and checking ---------------------------------------------------------------------------


def multipart_body(fields: dict[str, Any], charset: str | None) -> tuple[bytes, str]:
    """A multipart/form-data body whose parts declare charset (encoded with it when Python can)."""
    boundary = "fuzz-boundary-7f3a"
    body = b""
    for name, value in fields.items():
        text = as_text(value)
        header = f"Content-Type: text/plain; charset={charset}\r\n" if charset else ""
        try:
            payload = text.encode(charset or "utf-8", "surrogatepass")
        except (LookupError, UnicodeError):
            payload = text.encode("utf-8", "surrogatepass")
        disposition = f'Content-Disposition: form-data; name="{quote(str(name).encode("utf-8", "surrogatepass"))}"\r\n'
        body += f"--{boundary}\r\n".encode() + disposition.encode() + header.encode() + b"\r\n" + payload + b"\r\n"
    body += f"--{boundary}--\r\n".encode()
    return body, f"multipart/form-data; boundary={boundary}"


# aiohttp's HTTP parser answers a request line or header longer than this itself (400 text/plain).
PARSER_LINE_LIMIT = 8190


def check_http_answer(case: HttpCase, longest_line: int, status: int, content_type: str, body: bytes) -> None:
    """No 5xx; a refusal is JSON in the documented shape (or a documented non-JSON answer)."""
    where = f"{case.method} {case.template} ({case.encoding}) -> {status} {body[:300]!r}"
    assert status < 500, where
    if status < 400:
        return
    if longest_line > PARSER_LINE_LIMIT - 100:
        assert status == 400, where
        return
    if case.method == "HEAD":
        return  # no body to check
    operation = documented_operation(case.template, case.method) or {}
    documented = ((operation.get("responses") or {}).get(str(status)) or {}).get("content") or {}
    if content_type != "application/json":
        assert content_type in documented or (status == 405 and not body), where
        return
    try:
        reply = json.loads(body)
    except ValueError:
        pytest.fail(f"not JSON: {where}")
    assert isinstance(reply, dict), where
    message_shape = set(reply) <= {"message", "code"} and isinstance(reply.get("message"), str)
    oauth_shape = set(reply) <= {"error", "error_description"} and isinstance(reply.get("error"), str)
    assert message_shape or oauth_shape, where
    assert all(isinstance(v, str) for v in reply.values()), where


async def send_http(site: Site, case: HttpCase, bearer: str) -> None:
    """Send one request and check its answer."""
    report(f"http: {short(case)}")
    headers = {"X-Forwarded-For": case.address}
    if case.bearer is True:
        headers["Authorization"] = f"Bearer {bearer}"
    elif isinstance(case.bearer, str):
        headers["Authorization"] = case.bearer
    path_value = as_text(case.path_value)
    if path_value == "FLOW":
        path_value = await start_flow(site, case.address)
    path = case.template
    for name in ("{flow_id}", "{tail}"):
        path = path.replace(name, quote(path_value.encode("utf-8", "surrogatepass"), safe=""))
    kwargs: dict[str, Any] = {}
    if case.encoding == "json":
        kwargs["data"] = ("{" + ",".join(f"{json.dumps(k)}:{render(v)}" for k, v in case.fields.items()) + "}").encode(
            "utf-8", "surrogatepass"
        )
        headers["Content-Type"] = "application/json"
    elif case.encoding == "raw":
        kwargs["data"] = as_text(case.raw).encode("utf-8", "surrogatepass")
        headers["Content-Type"] = "application/json"
    elif case.encoding == "urlencoded":
        pairs = "&".join(
            f"{quote(str(k).encode('utf-8', 'surrogatepass'))}={quote(as_text(v).encode('utf-8', 'surrogatepass'))}"
            for k, v in case.fields.items()
        )
        kwargs["data"] = pairs.encode()
        charset = f"; charset={case.charset}" if case.charset else ""
        headers["Content-Type"] = f"application/x-www-form-urlencoded{charset}"
    elif case.encoding == "multipart":
        kwargs["data"], headers["Content-Type"] = multipart_body(case.fields, case.charset)
    else:
        query = "&".join(
            f"{quote(str(k).encode('utf-8', 'surrogatepass'))}={quote(as_text(v).encode('utf-8', 'surrogatepass'))}"
            for k, v in case.fields.items()
        )
        path = f"{path}?{query}" if query else path
    if case.template == "/api/websocket" and case.method == "GET":
        headers.pop("Upgrade", None)
    # The request line or a header over aiohttp's parser limit is answered by aiohttp itself.
    longest_line = max(len(path), *(len(name) + 2 + len(value) for name, value in headers.items()))
    try:
        status, content_type, body = await site.request(case.method, path, headers=headers, **kwargs)
    except aiohttp.ClientResponseError as err:
        # aiohttp's server answers an over-long request line itself, with a body even to HEAD,
        # which aiohttp's client then refuses to parse: still a 400, never a server error.
        assert longest_line > PARSER_LINE_LIMIT - 100 and err.status == 400, f"{case.method} {case.template}: {err}"
        return
    check_http_answer(case, longest_line, status, content_type, body)


async def start_flow(site: Site, address: str) -> str:
    """A login flow started from address, so a step from there reaches the provider."""
    start = {"client_id": CLIENT_ID, "handler": EXAMPLE, "redirect_uri": REDIRECT_URI}
    status, _, body = await site.request("POST", "/auth/login_flow", json=start, headers={"X-Forwarded-For": address})
    assert status in (200, 429), body
    return str(json.loads(body).get("flow_id", "no-flow")) if status == 200 else "no-flow"


class Fuzzer:
    """The fuzzing user's websocket, reopened with a fresh token whenever the server closes it."""

    def __init__(self, site: Site, user_id: str) -> None:
        """Not connected yet."""
        self.site = site
        self.user_id = user_id
        self.ws: aiohttp.ClientWebSocketResponse | None = None
        self.next_id = 1
        self.access_token = ""

    async def fresh_token(self) -> str:
        """An access token of the fuzzer (an administrator again if a command demoted it)."""
        auth = self.site.auth
        assert auth is not None
        user = auth.store.get_user(self.user_id)
        assert user is not None and user.is_active
        if not user.is_admin:
            await auth.users.async_update_user(user, group_ids=[GROUP_ID_ADMIN])
        refresh_token = await auth.refresh_tokens.async_create_refresh_token(user, CLIENT_ID)
        self.access_token = await auth.access_tokens.async_create_access_token(refresh_token, "127.0.0.1")
        return self.access_token

    async def socket(self) -> aiohttp.ClientWebSocketResponse:
        """An open, authenticated socket."""
        if self.ws is None or self.ws.closed:
            assert self.site.session is not None
            self.ws = await self.site.session.ws_connect(self.site.url("/api/websocket"))
            assert (await self.ws.receive_json(timeout=REPLY_TIMEOUT))["type"] == "auth_required"
            await self.ws.send_json({"type": "auth", "access_token": await self.fresh_token()})
            reply = await self.ws.receive_json(timeout=REPLY_TIMEOUT)
            assert reply["type"] == "auth_ok", reply
            self.next_id = 1
        return self.ws

    async def send(self, case: WsCase) -> None:
        """Send a frame; a command gets exactly one well-formed answer, or the server closes the socket cleanly."""
        report(f"websocket: {short(case)}")
        for attempt in (1, 2):
            ws = await self.socket()
            msg_id = self.next_id
            self.next_id += 1
            if case.command is None:
                text = as_text(case.raw)
            else:
                text = "{" + f'"id":{msg_id},"type":{json.dumps(case.command)}'
                text += "".join(f",{json.dumps(k)}:{render(v)}" for k, v in case.fields.items()) + "}"
                text = f"[{text}]" if case.batch else text
            try:
                # A raw lone surrogate cannot be UTF-8: it goes out as the bytes a broken client would send.
                await ws.send_frame(text.encode("utf-8", "surrogatepass"), aiohttp.WSMsgType.TEXT)
            except ConnectionError:
                # The server closed this socket after the previous frame (as it should, for some): reopen.
                assert attempt == 1
                self.ws = None
                continue
            await self._drain(ws, msg_id if case.command is not None else None)
            return

    async def _drain(self, ws: aiohttp.ClientWebSocketResponse, msg_id: int | None) -> None:
        """Read until the answer to msg_id (or, for raw frames, until the socket is quiet or closed)."""
        while True:
            try:
                msg = await ws.receive(timeout=REPLY_TIMEOUT if msg_id is not None else 0.2)
            except TimeoutError:
                assert msg_id is None, f"no answer to command {msg_id}"
                return
            if msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.CLOSING):
                # Only a frame the server cannot parse, or a command that ends this session, closes it.
                assert msg.data in (None, aiohttp.WSCloseCode.OK, aiohttp.WSCloseCode.INVALID_TEXT), msg
                await ws.close()
                self.ws = None
                return
            assert msg.type == aiohttp.WSMsgType.TEXT, msg
            reply = json.loads(msg.data)
            if reply.get("type") == "pong":
                continue
            assert reply["type"] == "result", reply
            if reply["success"] is False:
                assert set(reply["error"]) == {"code", "message"}, reply
                assert isinstance(reply["error"]["message"], str), reply
                assert reply["error"]["code"] != "unknown_error", reply
            if msg_id is None or reply["id"] == msg_id:
                return


# ---- the test -----------------------------------------------------------------------------------


@pytest.fixture
def tracebacks(caplog: pytest.LogCaptureFixture) -> Callable[[], list[str]]:
    """Messages of log records that carried a traceback so far."""
    caplog.set_level(logging.WARNING)
    return lambda: [r.getMessage() for r in caplog.records if r.exc_info is not None]


def test_hostile_input_everywhere_then_saves_restarts_and_honours_revocations(
    site: Site, tracebacks: Callable[[], list[str]]
) -> None:
    """Every route and command under hostile input; then saves work and revocations hold across a restart."""
    import opp_auth_local

    opp_auth_local.BCRYPT_ROUNDS = 4  # restored below; new local logins are about input, not bcrypt
    assert site.auth is not None and site.app is not None
    auth = site.auth

    async def setup() -> tuple[list[dict[str, Any]], Context]:
        await auth.users.async_create_user("Owner", [GROUP_ID_ADMIN], is_owner=True)
        victim = [await site.login("victim", "victim-pw") for _ in range(4)]
        fuzzer_tokens = await site.login("fuzzer", "fuzzer-pw")
        fuzzer = auth.store.get_refresh_token_by_token(fuzzer_tokens["refresh_token"])
        assert fuzzer is not None
        await auth.users.async_update_user(fuzzer.user, group_ids=[GROUP_ID_ADMIN])
        victim_user = auth.store.get_refresh_token_by_token(victim[0]["refresh_token"])
        assert victim_user is not None and victim_user.user.group_ids == [GROUP_ID_USER]
        # Revoked before the fuzzing: one through /auth/token, one through the victim's websocket.
        assert (await site.token_form(action="revoke", token=victim[0]["refresh_token"]))[0] == 200
        ws = await site.session.ws_connect(site.url("/api/websocket"))  # type: ignore[union-attr]
        await ws.receive_json()
        await ws.send_json({"type": "auth", "access_token": victim[1]["access_token"]})
        assert (await ws.receive_json())["type"] == "auth_ok"
        second = auth.store.get_refresh_token_by_token(victim[1]["refresh_token"])
        assert second is not None
        await ws.send_json({"id": 1, "type": "auth/delete_refresh_token", "refresh_token_id": second.id})
        assert (await ws.receive_json())["success"] is True
        await ws.close()
        plausible: list[Any] = [
            CLIENT_ID,
            REDIRECT_URI,
            EXAMPLE,
            "insecure_example",
            "openpeerpower",
            fuzzer.user.id,
            "fuzzer",
            "fuzzer-pw",
            "a-new-password",
            "normal",
            "long_lived_access_token",
            "/api/",
            "en",
            "203.0.113.9",
            True,
            False,
            1,
            30,
            None,
            {},
            [],
            [GROUP_ID_ADMIN],
            {"pin": "123456"},
        ]
        return victim, Context(fuzzer.user.id, plausible)

    victim, context = site.run(setup())
    routes = route_table(site.app)
    commands = site.app[WS_COMMANDS_KEY].commands
    fuzzer = Fuzzer(site, context.fuzzer_id)
    hit_routes: set[tuple[str, str]] = set()
    hit_commands: set[str] = set()

    @FUZZ
    @given(cases=st.lists(st.one_of(http_cases(routes, context), ws_cases(commands, context)), min_size=1, max_size=4))
    def fuzz(cases: list[HttpCase | WsCase]) -> None:
        async def run() -> None:
            for case in cases:
                if isinstance(case, HttpCase):
                    hit_routes.add((case.route_method, case.template))
                    await send_http(site, case, fuzzer.access_token or await fuzzer.fresh_token())
                else:
                    if case.command is not None:
                        hit_commands.add(case.command)
                    await fuzzer.send(case)

        site.run(run())

    try:
        fuzz()
        # Then every route and every command once more, each field the same hostile value, so none is left out by chance.
        sweep_values: list[Any] = ["\ud800", {"\udfff": [float("nan"), Deep(600)]}]
        for value in sweep_values:
            for method, template in routes:
                names, content_types = body_fields(template, method)
                encodings = [SWEEP_ENCODINGS[t] for t in content_types if t in SWEEP_ENCODINGS] or ["none"]
                for encoding in encodings:
                    case = HttpCase(
                        method if method != "*" else "POST",
                        template,
                        value,
                        encoding,
                        dict.fromkeys(names or ["field"], value),
                        value,
                        "unicode_escape" if encoding != "json" else None,
                        True,
                        FUZZ_ADDRESSES[0],
                    )
                    hit_routes.add((method, template))
                    site.run(send_http(site, case, fuzzer.access_token or site.run(fuzzer.fresh_token())))
            for command in commands:
                hit_commands.add(command)
                fields = dict.fromkeys(command_fields(commands[command][1]), value)
                site.run(fuzzer.send(WsCase(command, fields, None, False)))
        assert hit_routes == set(routes)
        assert hit_commands == set(commands)
        if fuzzer.ws is not None:
            site.run(fuzzer.ws.close())
        assert not tracebacks(), tracebacks()

        async def after() -> dict[str, Any]:
            # Still saving: a revocation and a login answer 200, not 503.
            assert (await site.token_form(action="revoke", token=victim[2]["refresh_token"]))[0] == 200
            return await site.login("victim", "victim-pw")

        late = site.run(after())
    finally:
        opp_auth_local.BCRYPT_ROUNDS = 12

    for path in sorted((site.config_dir / ".storage").iterdir()):
        # The base files, and each line of the journals beside them (JSON, a tab, a checksum).
        if path.name.endswith(".journal"):
            try:
                raw = path.read_bytes()
            except FileNotFoundError:  # compacted meanwhile: its lines are in its file, read after it
                continue
            texts = [line.split(b"\t", 1)[0] for line in raw.splitlines()]
        elif path.is_file() and not path.name.startswith("."):
            texts = [path.read_bytes()]
        else:
            continue
        for text in texts:
            json.loads(text.decode("utf-8"), parse_constant=lambda c: pytest.fail(f"{c} in .storage"))

    site.run(site.stop())
    site.run(site.start())  # a new manager and application over the same directory

    async def check() -> None:
        for revoked in victim[:3]:
            status, body = await site.token_form(
                grant_type="refresh_token", refresh_token=revoked["refresh_token"], client_id=CLIENT_ID
            )
            assert (status, body["error"]) == (400, "invalid_grant")
            status, _, _ = await site.request(
                "GET", "/api/", headers={"Authorization": f"Bearer {revoked['access_token']}"}
            )
            assert status == 401
        for kept in (victim[3], late):
            status, body = await site.token_form(
                grant_type="refresh_token", refresh_token=kept["refresh_token"], client_id=CLIENT_ID
            )
            assert status == 200, body

    site.run(check())
    assert not tracebacks(), tracebacks()

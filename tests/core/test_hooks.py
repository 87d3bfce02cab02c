"""Every hook of hookspecs.py does what its docstring says; a meta-test keeps it that way."""

from __future__ import annotations

import asyncio
import inspect
import types
from typing import Any

import pytest
import voluptuous as vol
from aiohttp import web

import opp_auth.hookspecs
from opp_auth import AuthProvider, MfaModule, PluginContext, hookimpl, hookspec, request_user, websocket
from opp_auth.cli import build_parser
from opp_auth.manager import AuthManager
from opp_auth.plugins import make_plugin_manager
from opp_auth.testing import CLIENT_ID, REDIRECT_URI

EXAMPLE = {"type": "insecure_example", "users": [{"username": "ann", "password": "pw", "name": "Ann"}]}
HANDLER = ["insecure_example", None]
HOOKS = sorted(
    name for name, _ in inspect.getmembers(opp_auth.hookspecs, inspect.isfunction) if name.startswith("opp_auth_")
)


def test_every_hook_is_documented_and_has_a_test_here() -> None:
    """Each hookspec has a docstring and a test named test_hook_<name> in this module."""
    tests = {name for name in globals() if name.startswith("test_hook_")}
    for name in HOOKS:
        assert (getattr(opp_auth.hookspecs, name).__doc__ or "").strip(), f"{name} has no docstring"
        assert f"test_hook_{name}" in tests, f"{name} has no test"


def test_every_hookspec_documents_arguments_results_and_awaiting() -> None:
    """:param: for each argument; how results combine; whether the core awaits; failure matches HOOK_FAILURE."""
    for name in HOOKS:
        spec = getattr(opp_auth.hookspecs, name)
        doc = inspect.getdoc(spec) or ""
        for arg in inspect.signature(spec).parameters:
            assert f":param {arg}:" in doc, f"{name} does not document its argument {arg}"
        firstresult = bool(getattr(spec, "opp_auth_spec", {}).get("firstresult"))
        if firstresult:
            assert "first non-None result wins" in doc, f"{name}: say that the first non-None result wins"
        else:
            assert "every implementation is" in doc, f"{name}: say that every implementation is called/asked"
        assert ("Not awaited" in doc) != ("Awaited" in doc), f"{name}: say whether the core awaits it (exactly once)"
        failure = opp_auth.hookspecs.HOOK_FAILURE.get(name, opp_auth.hookspecs.RAISE)
        if failure is opp_auth.hookspecs.RAISE:
            assert "stops" in doc, f"{name}: say that an exception stops start-up"
        else:
            assert "naming the plugin" in doc, f"{name}: say that an exception is logged naming the plugin"


def test_plugin_guide_lists_every_hook() -> None:
    """docs/plugins.md has a row for every hook of hookspecs.py."""
    from pathlib import Path

    guide = (Path(__file__).resolve().parents[2] / "docs" / "plugins.md").read_text(encoding="utf-8")
    for name in HOOKS:
        assert f"`{name}" in guide, f"docs/plugins.md does not list {name}"


def _guide_rows() -> dict[str, tuple[set[str], str, str]]:
    """hook -> (its arguments, results cell, awaited cell) from the hook table of docs/plugins.md.

    A row names one hook with its arguments, ``name(a, b)``, or several hooks
    followed by their shared arguments, ``name1``, ``name2`` ``(a, b)``.
    """
    import re
    from pathlib import Path

    guide = (Path(__file__).resolve().parents[2] / "docs" / "plugins.md").read_text(encoding="utf-8")
    rows: dict[str, tuple[set[str], str, str]] = {}
    for line in guide.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) != 5 or "`opp_auth_" not in cells[0]:
            continue
        shared = re.search(r"`\(([^)`]*)\)`\s*$", cells[0])
        for hook, own in re.findall(r"`(opp_auth_\w+)(?:\(([^)]*)\))?`", cells[0]):
            args = own if own or shared is None else shared.group(1)
            rows[hook] = ({a.strip() for a in args.split(",") if a.strip()}, cells[2], cells[3])
    return rows


def test_plugin_guide_rows_agree_with_the_hookspecs() -> None:
    """Each hook's row in docs/plugins.md: the spec's arguments, first-result semantics, and whether it is awaited."""
    rows = _guide_rows()
    for name in HOOKS:
        assert name in rows, f"docs/plugins.md has no table row for {name}"
        args, results, awaited = rows[name]
        spec = getattr(opp_auth.hookspecs, name)
        assert args == set(inspect.signature(spec).parameters), f"docs/plugins.md: arguments of {name}"
        firstresult = bool(getattr(spec, "opp_auth_spec", {}).get("firstresult"))
        assert ("first non-None wins" in results) == firstresult, f"docs/plugins.md: results of {name}"
        doc = inspect.getdoc(spec) or ""
        assert awaited.startswith("yes") == ("Awaited" in doc), f"docs/plugins.md: whether {name} is awaited"


def test_the_guide_row_check_catches_a_wrong_row() -> None:
    """The parser reads shared and own arguments, so a row that drifts is seen."""
    rows = _guide_rows()
    assert rows["opp_auth_user_created"][0] == {"auth", "user"}
    assert rows["opp_auth_login_failed"][0] == {"auth", "remote_ip", "provider", "username", "reason"}
    assert rows["opp_auth_startup"][0] == {"auth"}


class Spy:
    """Records every event hook call."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, dict[str, Any]]] = []

    def names(self) -> list[str]:
        return [name for name, _ in self.calls]

    @hookimpl
    def opp_auth_login_failed(self, auth: Any, remote_ip: Any, provider: Any, username: Any, reason: Any) -> None:
        self.calls.append(
            ("login_failed", {"remote_ip": remote_ip, "provider": provider, "username": username, "reason": reason})
        )

    @hookimpl
    def opp_auth_login_succeeded(self, auth: Any, remote_ip: Any, user: Any, credential: Any) -> None:
        self.calls.append(("login_succeeded", {"remote_ip": remote_ip, "user": user, "credential": credential}))

    @hookimpl
    async def opp_auth_user_created(self, auth: Any, user: Any) -> None:
        await asyncio.sleep(0)
        self.calls.append(("user_created", {"user": user}))

    @hookimpl
    def opp_auth_user_updated(self, auth: Any, user: Any) -> None:
        self.calls.append(("user_updated", {"user": user, "is_active": user.is_active}))

    @hookimpl
    def opp_auth_user_removed(self, auth: Any, user: Any) -> None:
        self.calls.append(("user_removed", {"user": user}))

    @hookimpl
    def opp_auth_refresh_token_created(self, auth: Any, refresh_token: Any) -> None:
        self.calls.append(("refresh_token_created", {"refresh_token": refresh_token}))

    @hookimpl
    def opp_auth_refresh_token_removed(self, auth: Any, refresh_token: Any) -> None:
        self.calls.append(("refresh_token_removed", {"refresh_token": refresh_token}))

    @hookimpl
    async def opp_auth_startup(self, auth: Any) -> None:
        self.calls.append(("startup", {}))

    @hookimpl
    async def opp_auth_shutdown(self, auth: Any) -> None:
        self.calls.append(("shutdown", {}))


async def settle() -> None:
    """Let fire-and-forget event tasks run."""
    for _ in range(5):
        await asyncio.sleep(0)


@pytest.fixture
async def spied(opp_auth_factory: Any) -> tuple[AuthManager, Spy]:
    """A manager with the spy plugin."""
    spy = Spy()
    auth = await opp_auth_factory(providers=[EXAMPLE], mfa_modules=[], plugins=[("spy", spy)])
    return auth, spy


def test_hook_opp_auth_add_hookspecs() -> None:
    """A plugin adds its own hookspecs; historic, so it reaches plugins registered later too."""
    specs = types.ModuleType("spec_mod")
    marker = hookspec

    @marker
    def opp_auth_extra_thing(value: int) -> int:  # type: ignore[empty-body]
        """An extra hook."""

    specs.opp_auth_extra_thing = opp_auth_extra_thing  # type: ignore[attr-defined]

    class Adds:
        @hookimpl
        def opp_auth_add_hookspecs(self, pm: Any) -> None:
            pm.add_hookspecs(specs)

    class Answers:
        @hookimpl
        def opp_auth_extra_thing(self, value: int) -> int:
            return value * 2

    pm = make_plugin_manager(load_entrypoints=False, plugins=[("adds", Adds())])
    pm.register_plugin(Answers(), "answers")
    assert pm.hook.opp_auth_extra_thing(value=21) == [42]


def test_hook_opp_auth_register_auth_providers() -> None:
    """register(ProviderClass) makes the TYPE configurable."""

    class P(AuthProvider):
        TYPE = "hook_test_provider"

    class Plugin:
        @hookimpl
        def opp_auth_register_auth_providers(self, register: Any) -> None:
            register(P)

    pm = make_plugin_manager(load_entrypoints=False, plugins=[("p", Plugin())])
    assert pm.provider_classes == {"hook_test_provider": P}


def test_hook_opp_auth_register_mfa_modules() -> None:
    """register(ModuleClass) makes the MFA type configurable."""

    class M(MfaModule):
        TYPE = "hook_test_mfa"

    class Plugin:
        @hookimpl
        def opp_auth_register_mfa_modules(self, register: Any) -> None:
            register(M)

    pm = make_plugin_manager(load_entrypoints=False, plugins=[("m", Plugin())])
    assert pm.mfa_classes == {"hook_test_mfa": M}


async def test_hook_opp_auth_register_stores(tmp_path: Any) -> None:
    """register(BackendClass) makes a storage type configurable; the manager opens it and stores through it."""
    from opp_auth.backend import JsonBackend
    from opp_auth.config import validate_config

    opened: list[str] = []

    class Recording(JsonBackend):
        TYPE = "hook_test_store"
        CONFIG_SCHEMA = vol.Schema({vol.Required("type"): "hook_test_store", vol.Required("label"): str})

        async def async_open(self) -> None:
            opened.append(self.config["label"])

    class Plugin:
        @hookimpl
        def opp_auth_register_stores(self, register: Any) -> None:
            register(Recording)

    pm = make_plugin_manager(plugins=[("s", Plugin())])
    assert pm.store_classes["hook_test_store"] is Recording and "json" in pm.store_classes
    raw = {"openpeerpower": {"storage": {"type": "hook_test_store", "label": "here"}}}
    config = validate_config(raw, pm, config_dir=tmp_path)
    assert config.storage_class is Recording and config.storage == {"type": "hook_test_store", "label": "here"}
    auth = AuthManager(
        str(tmp_path),
        pm,
        provider_configs=config.providers,
        storage=config.storage_class(config.storage, str(tmp_path)),
    )
    await auth.async_setup()
    await auth.users.async_create_user("Stored")
    await auth.async_shutdown()
    assert opened == ["here"]
    assert (tmp_path / ".storage" / "auth").exists()


async def test_hook_opp_auth_authenticate_request(opp_auth_factory: Any, opp_auth_client: Any) -> None:
    """The chain authenticates requests without a bearer token; False refuses; an exception refuses."""

    class ByHeader:
        @hookimpl
        async def opp_auth_authenticate_request(self, request: web.Request, auth: PluginContext) -> Any:
            secret = request.headers.get("X-Test")
            if secret is None:
                return None
            if secret == "boom":
                raise RuntimeError("plugin bug")
            return auth.owner() if secret == "ok" else False

    auth = await opp_auth_factory(providers=[EXAMPLE], mfa_modules=[], plugins=[("by_header", ByHeader())])
    await auth.users.async_create_user("Owner", ["system-admin"], is_owner=True)
    client = await opp_auth_client(auth)
    statuses = {}
    for value in ("ok", "nope", "boom", None):
        headers = {"X-Test": value} if value else {}
        async with client.request("GET", "/api/", headers=headers) as resp:
            statuses[value] = resp.status
    assert statuses == {"ok": 200, "nope": 401, "boom": 401, None: 401}
    owner = auth.users.owner()
    owner.is_active = False
    async with client.request("GET", "/api/", headers={"X-Test": "ok"}) as resp:
        assert resp.status == 401  # an inactive user is never authenticated


async def test_hook_opp_auth_register_config(opp_auth_factory: Any) -> None:
    """A plugin owns a top-level block; its validated value is in auth.config_blocks."""

    class Owns:
        @hookimpl
        def opp_auth_register_config(self, register: Any) -> None:
            register("hooktest", vol.Schema(vol.Any(None, {vol.Required("level"): int})))

    auth = await opp_auth_factory(
        providers=[EXAMPLE], mfa_modules=[], plugins=[("owns", Owns())], blocks={"hooktest": {"level": 3}}
    )
    assert auth.config_blocks["hooktest"] == {"level": 3}


async def test_hook_opp_auth_register_routes(opp_auth_factory: Any, opp_auth_client: Any) -> None:
    """Extra routes are served behind the same pipeline (authentication, security filter)."""

    async def hello(request: web.Request) -> web.Response:
        user = request_user(request)
        return web.json_response({"user": user.name if user else None})

    class Routes:
        @hookimpl
        def opp_auth_register_routes(self, app: web.Application, auth: AuthManager) -> None:
            app.router.add_get("/plugin/hello", hello)

    auth = await opp_auth_factory(providers=[EXAMPLE], mfa_modules=[], plugins=[("routes", Routes())])
    owner = await auth.users.async_create_user("Owner", ["system-admin"], is_owner=True)
    token = await auth.access_tokens.async_create_access_token(await auth.refresh_tokens.async_create_refresh_token(owner, CLIENT_ID))
    client = await opp_auth_client(auth)
    async with client.request("GET", "/plugin/hello") as resp:
        assert (resp.status, await resp.json()) == (200, {"user": None})
    async with client.request("GET", "/plugin/hello", headers={"Authorization": f"Bearer {token}"}) as resp:
        assert await resp.json() == {"user": "Owner"}
    async with client.request("GET", "/plugin/hello?x=<script>") as resp:
        assert resp.status == 400


async def test_hook_opp_auth_register_websocket_commands(opp_auth_factory: Any, opp_auth_client: Any) -> None:
    """A plugin's command answers like a core one."""

    @websocket.command({vol.Required("type"): "hooktest/echo", vol.Required("text"): str})
    async def echo(conn: Any, msg: dict[str, Any]) -> None:
        conn.send_result(msg["id"], {"text": msg["text"], "user": conn.user.name})

    class Commands:
        @hookimpl
        def opp_auth_register_websocket_commands(self, register: Any) -> None:
            register(echo)

    auth = await opp_auth_factory(providers=[EXAMPLE], mfa_modules=[], plugins=[("commands", Commands())])
    owner = await auth.users.async_create_user("Owner", ["system-admin"], is_owner=True)
    token = await auth.access_tokens.async_create_access_token(await auth.refresh_tokens.async_create_refresh_token(owner, CLIENT_ID))
    client = await opp_auth_client(auth)
    async with client.session.ws_connect(client.url("/api/websocket")) as ws:
        await ws.receive_json()
        await ws.send_json({"type": "auth", "access_token": token})
        await ws.receive_json()
        await ws.send_json({"id": 1, "type": "hooktest/echo", "text": "hi"})
        assert await ws.receive_json() == {
            "id": 1,
            "type": "result",
            "success": True,
            "result": {"text": "hi", "user": "Owner"},
        }


def test_hook_opp_auth_register_commands(capsys: pytest.CaptureFixture[str]) -> None:
    """A plugin adds a sub-command to the opp-auth program."""

    def run(args: Any) -> int:
        print(f"hello {args.who}")
        return 3

    class Cli:
        @hookimpl
        def opp_auth_register_commands(self, cli: Any) -> None:
            parser = cli.add_parser("greet", help="say hello")
            parser.add_argument("who")
            parser.set_defaults(func=run)

    parser = build_parser(make_plugin_manager(load_entrypoints=False, plugins=[("cli", Cli())]))
    args = parser.parse_args(["greet", "world"])
    assert args.func(args) == 3
    assert capsys.readouterr().out == "hello world\n"


async def test_hook_opp_auth_startup(opp_auth_factory: Any) -> None:
    """Awaited once when the manager starts."""
    spy = Spy()
    auth = await opp_auth_factory(providers=[EXAMPLE], mfa_modules=[], plugins=[("spy", spy)])
    await auth.async_setup()
    assert spy.names().count("startup") == 1


async def test_hook_opp_auth_shutdown(opp_auth_factory: Any) -> None:
    """Awaited once when the manager stops."""
    spy = Spy()
    auth = await opp_auth_factory(providers=[EXAMPLE], mfa_modules=[], plugins=[("spy", spy)])
    await auth.async_shutdown()
    await auth.async_shutdown()
    assert spy.names().count("shutdown") == 1


async def test_hook_opp_auth_login_failed(spied: tuple[AuthManager, Spy], opp_auth_client: Any) -> None:
    """A wrong password over HTTP reports address, provider, username and reason."""
    auth, spy = spied
    client = await opp_auth_client(auth)
    _, flow = await client.login.start(HANDLER)
    await client.login.step(flow["flow_id"], username="ann", password="wrong")
    await settle()
    (call,) = [kwargs for name, kwargs in spy.calls if name == "login_failed"]
    assert call == {
        "remote_ip": "127.0.0.1",
        "provider": ("insecure_example", None),
        "username": "ann",
        "reason": "invalid_auth",
    }


async def test_hook_opp_auth_login_succeeded(spied: tuple[AuthManager, Spy], opp_auth_client: Any) -> None:
    """A finished login reports the address and the credentials."""
    auth, spy = spied
    client = await opp_auth_client(auth)
    await client.login.code(HANDLER, [{"username": "ann", "password": "pw"}])
    await settle()
    (call,) = [kwargs for name, kwargs in spy.calls if name == "login_succeeded"]
    assert call["remote_ip"] == "127.0.0.1" and call["credential"].data == {"username": "ann"}


async def test_hook_opp_auth_event(opp_auth_factory: Any, opp_auth_client: Any) -> None:
    """Every event of the one stream reaches plugins: a failed and a finished login over HTTP, with their origin."""
    seen: list[Any] = []

    class Listener:
        @hookimpl
        async def opp_auth_event(self, auth: Any, event: Any) -> None:
            await asyncio.sleep(0)
            seen.append(event)

    auth = await opp_auth_factory(providers=[EXAMPLE], mfa_modules=[], plugins=[("listener", Listener())])
    client = await opp_auth_client(auth)
    _, flow = await client.login.start(HANDLER)
    await client.login.step(flow["flow_id"], username="ann", password="wrong")
    await client.login.tokens(HANDLER, [{"username": "ann", "password": "pw"}])
    await client.login.tokens(HANDLER, [{"username": "ann", "password": "pw"}])
    await settle()
    failed, first, succeeded = [e for e in seen if e.type in ("login_failed", "login_succeeded")]
    assert (failed.type, failed.reason, failed.username, failed.remote_address) == (
        "login_failed",
        "invalid_auth",
        "ann",
        "127.0.0.1",
    )
    assert failed.provider == ("insecure_example", None) and failed.via == "http" and failed.user_agent
    assert succeeded.type == "login_succeeded" and succeeded.client_id == CLIENT_ID
    assert first.user_id is None and first.details["new_credentials"] is True  # the user is made with the tokens
    (created,) = [e for e in seen if e.type == "user_created"]
    assert created.user_id == succeeded.user_id and created.username == "ann"
    assert succeeded.details["purpose"] == "authorize" and succeeded.username == "ann"
    assert [e.user_id for e in seen if e.type == "refresh_token_created"] == [created.user_id] * 2


async def test_hook_opp_auth_new_device_login(opp_auth_factory: Any, opp_auth_client: Any) -> None:
    """A sign-in from a new network calls the hook once with the event; the first sign-in and a known network do not."""
    seen: list[Any] = []

    class Listener:
        @hookimpl
        async def opp_auth_new_device_login(self, auth: Any, event: Any) -> None:
            seen.append(event)

    http = {"use_x_forwarded_for": True, "trusted_proxies": ["127.0.0.1"]}
    auth = await opp_auth_factory(providers=[EXAMPLE], mfa_modules=[], http=http, plugins=[("listener", Listener())])
    client = await opp_auth_client(auth)
    for ip in ("192.0.2.1", "192.0.2.2", "198.51.100.1"):
        async with client.session.post(
            client.url("/auth/login_flow"),
            headers={"X-Forwarded-For": ip},
            json={"client_id": CLIENT_ID, "handler": HANDLER, "redirect_uri": REDIRECT_URI},
        ) as resp:
            flow = await resp.json()
        async with client.session.post(
            client.url(f"/auth/login_flow/{flow['flow_id']}"),
            headers={"X-Forwarded-For": ip},
            json={"client_id": CLIENT_ID, "username": "ann", "password": "pw"},
        ) as resp:
            code = (await resp.json())["result"]
        assert (await client.login.token(grant_type="authorization_code", client_id=CLIENT_ID, code=code))[0] == 200
        await settle()
    (event,) = seen
    assert (event.type, event.remote_address, list(event.details["new"])) == (
        "new_device_login",
        "198.51.100.1",
        ["network"],
    )


async def test_hook_opp_auth_audit_sink(opp_auth_factory: Any, config_dir: Any) -> None:
    """A plugin's sink replaces the audit files: opened at start, handed each event, closed at the stop."""
    calls: list[tuple[str, Any]] = []

    class Sink:
        def open(self, version: str) -> None:
            calls.append(("open", version))

        def append(self, events: list[Any], extra: list[Any]) -> None:
            calls.extend(("event", event.type) for event in events)

        def close(self) -> None:
            calls.append(("close", None))

    class Offers:
        @hookimpl
        def opp_auth_audit_sink(self, auth: Any, config: Any) -> Any:
            assert config["keep_days"] == 90
            return Sink()

    auth = await opp_auth_factory(providers=[EXAMPLE], mfa_modules=[], plugins=[("sink", Offers())])
    await auth.users.async_create_user("Bob")
    await auth.async_shutdown()
    assert calls == [("open", auth.version), ("event", "user_created"), ("close", None)]
    assert not (config_dir / "audit").exists()


async def test_hook_opp_auth_user_created(spied: tuple[AuthManager, Spy]) -> None:
    """Creating a user awaits the hook with the new user."""
    auth, spy = spied
    user = await auth.users.async_create_user("Bob")
    assert ("user_created", {"user": user}) in spy.calls


async def test_hook_opp_auth_user_updated(spied: tuple[AuthManager, Spy]) -> None:
    """Deactivating a user reports it."""
    auth, spy = spied
    user = await auth.users.async_create_user("Bob")
    await auth.users.async_deactivate_user(user)
    assert ("user_updated", {"user": user, "is_active": False}) in spy.calls


async def test_hook_opp_auth_user_removed(spied: tuple[AuthManager, Spy]) -> None:
    """Removing a user reports it after its tokens."""
    auth, spy = spied
    user = await auth.users.async_create_user("Bob")
    token = await auth.refresh_tokens.async_create_refresh_token(user, CLIENT_ID)
    await auth.users.async_remove_user(user)
    names = spy.names()
    assert names.index("refresh_token_removed") < names.index("user_removed")
    assert ("refresh_token_removed", {"refresh_token": token}) in spy.calls


async def test_hook_opp_auth_refresh_token_created(spied: tuple[AuthManager, Spy]) -> None:
    """A new refresh token is reported."""
    auth, spy = spied
    user = await auth.users.async_create_user("Bob")
    token = await auth.refresh_tokens.async_create_refresh_token(user, CLIENT_ID)
    assert ("refresh_token_created", {"refresh_token": token}) in spy.calls


async def test_hook_opp_auth_refresh_token_removed(spied: tuple[AuthManager, Spy]) -> None:
    """A revoked refresh token is reported once."""
    auth, spy = spied
    user = await auth.users.async_create_user("Bob")
    token = await auth.refresh_tokens.async_create_refresh_token(user, CLIENT_ID)
    await auth.refresh_tokens.async_remove_refresh_token(token)
    await auth.refresh_tokens.async_remove_refresh_token(token)
    assert spy.calls.count(("refresh_token_removed", {"refresh_token": token})) == 1


async def test_hook_opp_auth_login_retry_after(opp_auth_factory: Any, opp_auth_client: Any) -> None:
    """The largest wait any plugin asks for refuses the step with 429 and Retry-After."""

    class Slow:
        @hookimpl
        def opp_auth_login_retry_after(self, auth: Any, remote_ip: Any, username: Any) -> float:
            return 7 if username == "ann" else 0

    auth = await opp_auth_factory(providers=[EXAMPLE], mfa_modules=[], plugins=[("slow", Slow())])
    client = await opp_auth_client(auth)
    _, flow = await client.login.start(HANDLER)
    async with client.request(
        "POST",
        f"/auth/login_flow/{flow['flow_id']}",
        json={"client_id": CLIENT_ID, "username": "ann", "password": "pw"},
    ) as resp:
        assert resp.status == 429 and resp.headers["Retry-After"] == "7"
        assert (await resp.json())["code"] == "too_many_attempts"

"""The plugin API: a small public surface, guards that refuse the wrong handler, and a meta-test over every plugin.

The meta-test reads the source of every distribution under providers/,
mfa_modules/, plugins_contrib/ (and stores/) and fails when one imports a name
outside ``opp_auth.__all__`` (``opp_auth.testing`` is allowed in tests), another
plugin, or reaches for a private attribute it did not define itself (a core
object's ``_auth_provider``, ``_ws_schema``, a name-mangled field...).
"""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Any

import pytest
import voluptuous as vol
from aiohttp import web

import opp_auth
from opp_auth import (
    ActiveConnection,
    PluginContext,
    hookimpl,
    http_require_admin,
    http_require_auth,
    websocket_command,
    ws_require_admin,
    ws_require_user,
)
from opp_auth.http.websocket_api import CommandRegistry
from opp_auth.manager import AuthManager
from opp_auth.testing import CLIENT_ID

ROOT = Path(__file__).resolve().parents[2]
PLUGIN_ROOTS = ("providers", "mfa_modules", "plugins_contrib", "stores")
EXAMPLE = {"type": "insecure_example", "users": [{"username": "ann", "password": "pw", "name": "Ann"}]}


def _distributions() -> list[Path]:
    """Every plugin distribution directory of the repository."""
    found = []
    for root in PLUGIN_ROOTS:
        base = ROOT / root
        if base.is_dir():
            found.extend(
                sorted(d for d in base.iterdir() if (d / "setup.cfg").exists() or (d / "pyproject.toml").exists())
            )
    return found


def _own_names(files: list[Path]) -> set[str]:
    """Every name a distribution defines: functions, classes, attributes it assigns, module names."""
    names: set[str] = set()
    for path in files:
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                names.add(node.name)
            elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store):
                names.add(node.attr)
            elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
                names.add(node.id)
            elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
                names.add(node.target.id)
            elif isinstance(node, ast.arg):
                names.add(node.arg)
    return names


def _violations(dist: Path) -> list[str]:
    """What a distribution does outside the public API."""
    files = [p for p in dist.rglob("*.py") if ".venv" not in p.parts and "build" not in p.parts]
    own_packages = {p.name for p in dist.iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    own = _own_names(files)
    public = set(opp_auth.__all__)
    problems: list[str] = []
    for path in files:
        rel = path.relative_to(dist.parent.parent)
        is_test = "tests" in path.relative_to(dist).parts or path.name.startswith("test_") or path.name == "conftest.py"
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            where = f"{rel}:{getattr(node, 'lineno', '?')}"
            if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                top = node.module.split(".")[0]
                if node.module == "opp_auth":
                    problems += [f"{where} imports opp_auth.{a.name}" for a in node.names if a.name not in public]
                elif top == "opp_auth" and not (is_test and node.module == "opp_auth.testing"):
                    problems.append(f"{where} imports from {node.module} (core internals)")
                elif top.startswith("opp_auth_") and top not in own_packages:
                    problems.append(f"{where} imports another plugin, {top}")
            elif isinstance(node, ast.Import):
                for alias in node.names:
                    top = alias.name.split(".")[0]
                    if (
                        top == "opp_auth"
                        and alias.name != "opp_auth"
                        and not (is_test and alias.name == "opp_auth.testing")
                    ):
                        problems.append(f"{where} imports {alias.name} (core internals)")
                    elif top.startswith("opp_auth_") and top not in own_packages:
                        problems.append(f"{where} imports another plugin, {top}")
            elif isinstance(node, ast.Attribute):
                if isinstance(node.value, ast.Name) and node.value.id == "opp_auth" and node.attr not in public:
                    problems.append(f"{where} uses opp_auth.{node.attr}")
                if node.attr.startswith("_") and not node.attr.startswith("__") and node.attr not in own:
                    problems.append(f"{where} reaches for private attribute {node.attr}")
            elif (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Name)
                and node.func.id in ("getattr", "hasattr", "setattr")
            ):
                if (
                    len(node.args) >= 2
                    and isinstance(node.args[1], ast.Constant)
                    and isinstance(node.args[1].value, str)
                ):
                    name = node.args[1].value
                    if name.startswith("_") and not name.startswith("__") and name not in own:
                        problems.append(f"{where} reaches for private attribute {name} via {node.func.id}")
        if not is_test:
            for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
                if "type: ignore" in line:
                    problems.append(f"{rel}:{lineno} silences the type checker (type: ignore)")
    return problems


DISTRIBUTIONS = _distributions()


def test_every_plugin_distribution_is_found() -> None:
    """The meta-test below really covers the repository's plugins."""
    names = {d.name for d in DISTRIBUTIONS}
    assert {"local", "trusted_networks", "ldap", "command_line", "legacy_api_password", "totp", "notify"} <= names
    assert {"htpasswd", "insecure_example", "_template"} <= names


@pytest.mark.parametrize("dist", DISTRIBUTIONS, ids=lambda d: f"{d.parent.name}/{d.name}")
def test_plugin_uses_only_the_public_api(dist: Path) -> None:
    """No import outside opp_auth.__all__, no other plugin, no private attribute of a core object."""
    assert _violations(dist) == []


def test_meta_test_catches_what_it_forbids(tmp_path: Path) -> None:
    """The checker fails on each forbidden pattern (so a green run means something)."""
    dist = tmp_path / "bad"
    pkg = dist / "opp_auth_bad"
    pkg.mkdir(parents=True)
    (dist / "setup.cfg").write_text("[metadata]\nname = bad\n")
    (pkg / "__init__.py").write_text(
        "from opp_auth import AuthManager, LoginFlow\n"
        "from opp_auth.throttle import too_many_attempts_message\n"
        "import opp_auth_local\n"
        "class F(LoginFlow):\n"
        "    def step(self):\n"
        "        return self._auth_provider, getattr(self, '_auth_manager')  # type: ignore[attr-defined]\n"
    )
    problems = "\n".join(_violations(dist))
    for expected in (
        "imports opp_auth.AuthManager",
        "imports from opp_auth.throttle",
        "imports another plugin, opp_auth_local",
        "private attribute _auth_provider",
        "private attribute _auth_manager via getattr",
        "type: ignore",
    ):
        assert expected in problems, problems


def test_public_api_is_small_and_documented() -> None:
    """About 25 names plus the handful a plugin needs for routes, commands and helper programs; the docstring teaches."""
    # 40, plus GroupMapping (the group lists of ldap, trusted_header and oidc, once instead of three times).
    assert len(opp_auth.__all__) <= 41
    assert "AuthManager" not in opp_auth.__all__
    assert "require_admin" not in opp_auth.__all__ and "require_user" not in opp_auth.__all__
    for name in opp_auth.__all__:
        assert hasattr(opp_auth, name), name
    doc = opp_auth.__doc__ or ""
    for topic in (
        "opp_auth_register_auth_providers",
        "PluginContext",
        "http_require_admin",
        "ws_require_admin",
        "MfaModule",
    ):
        assert topic in doc, topic


def test_plugin_context_offers_no_manager() -> None:
    """The context's public attributes are a fixed, documented list; none of them is the manager or the store."""
    public = {name for name in dir(PluginContext) if not name.startswith("_")}
    assert "store" not in public and "pm" not in public and "manager" not in public
    doc = __import__("opp_auth.context", fromlist=["x"]).__doc__ or ""
    for name in public:
        assert name in doc, f"PluginContext.{name} is not in the context module's documentation"


# ---- guards ---------------------------------------------------------------------------------


async def _http_handler(request: web.Request) -> web.Response:
    return web.json_response({"ok": True})


async def _ws_handler(conn: ActiveConnection, msg: dict[str, Any]) -> None:
    conn.send_result(msg["id"])


@pytest.mark.parametrize("guard", [http_require_auth, http_require_admin])
def test_http_guard_refuses_a_websocket_handler(guard: Any) -> None:
    """Put on a (connection, msg) handler, an HTTP guard raises at decoration."""
    with pytest.raises(TypeError, match="ws_require_admin"):
        guard(_ws_handler)
    command = websocket_command({vol.Required("type"): "x/y"})(_ws_handler)
    with pytest.raises(TypeError):
        guard(command)


@pytest.mark.parametrize("guard", [ws_require_admin, ws_require_user(), ws_require_user(allow_system_user=False)])
def test_websocket_guard_refuses_an_http_handler(guard: Any) -> None:
    """Put on a (request) handler, a websocket guard raises at decoration."""
    with pytest.raises(TypeError, match="http_require"):
        guard(_http_handler)
    with pytest.raises(TypeError):
        guard(http_require_admin(_http_handler))


def test_registering_an_http_handler_as_a_command_is_refused() -> None:
    """The websocket registry refuses an HTTP handler even without a guard on it."""
    with pytest.raises(TypeError):
        CommandRegistry().register(_http_handler, {vol.Required("type"): "x/http"})


async def test_websocket_guarded_handler_on_an_http_route_fails_start(
    opp_auth_factory: Any, opp_auth_client: Any
) -> None:
    """A route served by a websocket command handler is refused when the app is built."""
    command = websocket_command({vol.Required("type"): "x/z"})(_ws_handler)

    class Routes:
        @hookimpl
        def opp_auth_register_routes(self, app: web.Application) -> None:
            app.router.add_get("/plugin/wrong", command)

    auth = await opp_auth_factory(providers=[EXAMPLE], mfa_modules=[], plugins=[("routes", Routes())])
    with pytest.raises(TypeError, match="websocket command handler"):
        await opp_auth_client(auth)


async def test_http_require_admin_protects_an_http_route(opp_auth_factory: Any, opp_auth_client: Any) -> None:
    """Issue 12: the exported admin guard on an HTTP route refuses anonymous and non-admin callers."""
    admin_only = http_require_admin(_http_handler)
    users_only = http_require_auth(_http_handler)

    class Routes:
        @hookimpl
        def opp_auth_register_routes(self, app: web.Application) -> None:
            app.router.add_get("/plugin/admin", admin_only)
            app.router.add_get("/plugin/user", users_only)

    auth: AuthManager = await opp_auth_factory(providers=[EXAMPLE], mfa_modules=[], plugins=[("routes", Routes())])
    admin = await auth.async_create_user("Admin", ["system-admin"])
    user = await auth.async_create_user("User", ["system-users"])
    tokens = {}
    for who in (admin, user):
        refresh = await auth.async_create_refresh_token(who, CLIENT_ID)
        tokens[who.name] = await auth.async_create_access_token(refresh)
    client = await opp_auth_client(auth)
    expected = {
        ("/plugin/admin", None): 401,
        ("/plugin/admin", "User"): 401,
        ("/plugin/admin", "Admin"): 200,
        ("/plugin/user", None): 401,
        ("/plugin/user", "User"): 200,
    }
    for (path, who), status in expected.items():
        headers = {"Authorization": f"Bearer {tokens[who]}"} if who else {}
        async with client.request("GET", path, headers=headers) as resp:
            assert resp.status == status, (path, who)

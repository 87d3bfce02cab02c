"""The plugin API: a small public surface, guards that refuse the wrong handler, and a meta-test over every plugin.

The meta-test reads the source of every distribution under providers/,
mfa_modules/, plugins_contrib/ (and stores/) and fails when one imports a name
outside ``opp_auth.__all__`` (``opp_auth.testing`` is allowed in tests), uses a
name of a namespace (``opp_auth.websocket``, ``opp_auth.programs``) that the
namespace's ``__all__`` does not publish, uses a deprecated top-level alias,
imports another plugin, or reaches for a private attribute it did not define
itself (a core object's ``_auth_provider``, ``_ws_schema``, a name-mangled field...).
"""

from __future__ import annotations

import ast
import importlib
import re
import types
from functools import reduce
from pathlib import Path
from typing import Any

import pytest
import voluptuous as vol
from aiohttp import web

import opp_auth
from opp_auth import PluginContext, hookimpl, http_require_admin, http_require_auth, websocket
from opp_auth.http.websocket_api import CommandRegistry
from opp_auth.manager import AuthManager
from opp_auth.testing import CLIENT_ID

ROOT = Path(__file__).resolve().parents[2]
PLUGIN_ROOTS = ("providers", "mfa_modules", "plugins_contrib", "stores")
# The public namespaces: names of __all__ that are modules, each publishing its own __all__.
NAMESPACES: dict[str, set[str]] = {
    name: set(value.__all__)
    for name in opp_auth.__all__
    if isinstance(value := getattr(opp_auth, name), types.ModuleType)
}
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


def _namespace_names(tree: ast.Module) -> dict[str, str]:
    """Local names a file binds to a public namespace (``from opp_auth import websocket as ws``: ws -> websocket).

    A name the file also binds by another import (its own ``from . import websocket``)
    is left out: which one an attribute use means is not known without running it.
    """
    bound: dict[str, str] = {}
    other: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            for alias in node.names:
                local = alias.asname or alias.name
                if node.level == 0 and node.module == "opp_auth" and alias.name in NAMESPACES:
                    bound[local] = alias.name
                else:
                    other.add(local)
        elif isinstance(node, ast.Import):
            for alias in node.names:
                namespace = alias.name.removeprefix("opp_auth.")
                if alias.asname and alias.name.startswith("opp_auth.") and namespace in NAMESPACES:
                    bound[alias.asname] = namespace
                else:
                    other.add(alias.asname or alias.name.split(".")[0])
    return {name: namespace for name, namespace in bound.items() if name not in other}


def _violations(dist: Path) -> list[str]:
    """What a distribution does outside the public API."""
    files = [p for p in dist.rglob("*.py") if ".venv" not in p.parts and "build" not in p.parts]
    own_packages = {p.name for p in dist.iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    own = _own_names(files)
    public = set(opp_auth.__all__)
    deprecated = opp_auth.DEPRECATED_ALIASES
    problems: list[str] = []

    def top_level(where: str, name: str) -> list[str]:
        """What is wrong with using opp_auth.<name>."""
        if name in deprecated:
            return [f"{where} uses the deprecated opp_auth.{name} (now opp_auth.{deprecated[name]})"]
        return [] if name in public else [f"{where} uses opp_auth.{name}, which is not in opp_auth.__all__"]

    def in_namespace(where: str, namespace: str, name: str) -> list[str]:
        """What is wrong with using opp_auth.<namespace>.<name>."""
        if name in NAMESPACES[namespace]:
            return []
        return [f"{where} uses opp_auth.{namespace}.{name}, which opp_auth.{namespace}.__all__ does not publish"]

    for path in files:
        rel = path.relative_to(dist.parent.parent)
        is_test = "tests" in path.relative_to(dist).parts or path.name.startswith("test_") or path.name == "conftest.py"
        tree = ast.parse(path.read_text(encoding="utf-8"))
        bound = _namespace_names(tree)
        for node in ast.walk(tree):
            where = f"{rel}:{getattr(node, 'lineno', '?')}"
            if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                top = node.module.split(".")[0]
                namespace = node.module.removeprefix("opp_auth.")
                if node.module == "opp_auth":
                    for a in node.names:
                        problems += top_level(where, a.name)
                elif top == "opp_auth" and namespace in NAMESPACES:
                    for a in node.names:
                        problems += in_namespace(where, namespace, a.name)
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
                        and alias.name.removeprefix("opp_auth.") not in NAMESPACES
                        and not (is_test and alias.name == "opp_auth.testing")
                    ):
                        problems.append(f"{where} imports {alias.name} (core internals)")
                    elif top.startswith("opp_auth_") and top not in own_packages:
                        problems.append(f"{where} imports another plugin, {top}")
            elif isinstance(node, ast.Attribute):
                value = node.value
                if isinstance(value, ast.Name) and value.id == "opp_auth":
                    problems += top_level(where, node.attr)
                elif isinstance(value, ast.Name) and value.id in bound:
                    problems += in_namespace(where, bound[value.id], node.attr)
                elif (
                    isinstance(value, ast.Attribute)
                    and isinstance(value.value, ast.Name)
                    and value.value.id == "opp_auth"
                    and value.attr in NAMESPACES
                ):
                    problems += in_namespace(where, value.attr, node.attr)
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
        "from opp_auth import AuthManager, LoginFlow, ws_require_admin\n"
        "from opp_auth import websocket as ws, programs\n"
        "from opp_auth.throttle import too_many_attempts_message\n"
        "from opp_auth.programs import KILL_GRACE, async_run_program\n"
        "import opp_auth, opp_auth.websocket, opp_auth_local\n"
        "class F(LoginFlow):\n"
        "    def step(self):\n"
        "        return self._auth_provider, getattr(self, '_auth_manager')  # type: ignore[attr-defined]\n"
        "    def more(self):\n"
        "        ws.command, ws.CommandRegistry, programs.READ_CHUNK, opp_auth.websocket.handler_arity\n"
        "        return opp_auth.GROUP_ID_ADMIN, opp_auth.User, opp_auth.programs.SAFE_PATH, opp_auth.manager\n"
    )
    problems = "\n".join(_violations(dist))
    for expected in (
        "uses opp_auth.AuthManager, which is not in opp_auth.__all__",
        "uses the deprecated opp_auth.ws_require_admin (now opp_auth.websocket.require_admin)",
        "imports from opp_auth.throttle",
        "uses opp_auth.programs.KILL_GRACE, which opp_auth.programs.__all__ does not publish",
        "imports another plugin, opp_auth_local",
        "private attribute _auth_provider",
        "private attribute _auth_manager via getattr",
        "type: ignore",
        "uses opp_auth.websocket.CommandRegistry, which",
        "uses opp_auth.programs.READ_CHUNK, which",
        "uses opp_auth.websocket.handler_arity, which",
        "uses the deprecated opp_auth.GROUP_ID_ADMIN (now opp_auth.UserMeta.GROUP_ADMIN)",
        "uses opp_auth.manager, which is not in opp_auth.__all__",
    ):
        assert expected in problems, problems
    # ...and only those: the published names (ws.command, SAFE_PATH, async_run_program, User) pass.
    for allowed in ("ws.command", "websocket.command", "SAFE_PATH", "async_run_program", "LoginFlow"):
        assert allowed not in problems, problems
    assert len(problems.splitlines()) == 13, problems


def test_meta_test_tells_a_plugin_module_from_a_namespace(tmp_path: Path) -> None:
    """A plugin's own module named websocket is not held to opp_auth.websocket's names."""
    dist = tmp_path / "good"
    pkg = dist / "opp_auth_good"
    pkg.mkdir(parents=True)
    (dist / "setup.cfg").write_text("[metadata]\nname = good\n")
    (pkg / "websocket.py").write_text("def register_commands(register):\n    pass\n")
    (pkg / "__init__.py").write_text(
        "from opp_auth import UserMeta, programs\n"
        "from . import websocket\n"
        "websocket.register_commands(None)\n"
        "GROUP = UserMeta.GROUP_USER\n"
        "PATH = programs.SAFE_PATH\n"
    )
    assert _violations(dist) == []


def test_public_api_is_small_and_documented() -> None:
    """About 25 names (websocket commands and helper programs are one namespace each); the docstring teaches."""
    assert len(opp_auth.__all__) <= 26
    assert len(set(opp_auth.__all__)) == len(opp_auth.__all__)
    assert "AuthManager" not in opp_auth.__all__ and "__version__" not in opp_auth.__all__
    assert opp_auth.__version__
    assert "require_admin" not in opp_auth.__all__ and "require_user" not in opp_auth.__all__
    for name in opp_auth.__all__:
        assert hasattr(opp_auth, name), name
    assert set(NAMESPACES) == {"websocket", "programs"}
    for namespace, names in NAMESPACES.items():
        for name in names:
            assert hasattr(getattr(opp_auth, namespace), name), f"opp_auth.{namespace}.{name}"
    # Schemas and constants live on the classes they belong to.
    assert opp_auth.AuthProvider.CONFIG_SCHEMA({"type": "x"}) == {"type": "x"}
    assert opp_auth.MfaModule.CONFIG_SCHEMA({"type": "x"}) == {"type": "x"}
    groups = (opp_auth.UserMeta.GROUP_ADMIN, opp_auth.UserMeta.GROUP_USER, opp_auth.UserMeta.GROUP_READ_ONLY)
    assert groups == ("system-admin", "system-users", "system-read-only")
    assert opp_auth.RefreshToken.TYPE_NORMAL == "normal"
    doc = opp_auth.__doc__ or ""
    for topic in (
        "opp_auth_register_auth_providers",
        "PluginContext",
        "http_require_admin",
        "websocket.require_admin",
        "programs.async_run_program",
        "AuthProvider.CONFIG_SCHEMA",
        "MfaModule",
    ):
        assert topic in doc, topic


def _public_api_table() -> list[str]:
    """The first cell of each row of the table in section 2 (The public API) of docs/plugins.md."""
    guide = (ROOT / "docs" / "plugins.md").read_text(encoding="utf-8")
    section = guide.split("## 2. The public API", 1)[1].split("\n## ", 1)[0]
    return [m.group(1) for m in re.finditer(r"^\| `([^`]+)` \|", section, re.MULTILINE)]


def test_plugins_guide_lists_exactly_the_public_api() -> None:
    """docs/plugins.md has one row per name of opp_auth.__all__, and one per published name of each namespace."""
    rows = _public_api_table()
    assert len(rows) == len(set(rows)), rows
    expected = set(opp_auth.__all__) | {f"{ns}.{name}" for ns, names in NAMESPACES.items() for name in names}
    assert set(rows) == expected


# The module each deprecated alias came from in the previous release: the alias must give the same object.
PREVIOUS_HOME = {
    "PROVIDER_CONFIG_SCHEMA": "opp_auth.providers",
    "MFA_CONFIG_SCHEMA": "opp_auth.mfa",
    "GROUP_ID_ADMIN": "opp_auth.models",
    "GROUP_ID_USER": "opp_auth.models",
    "GROUP_ID_READ_ONLY": "opp_auth.models",
    "TOKEN_TYPE_NORMAL": "opp_auth.models",
    "websocket_command": "opp_auth.http.websocket_api",
    "ws_require_admin": "opp_auth.http.websocket_api",
    "ws_require_user": "opp_auth.http.websocket_api",
    "ActiveConnection": "opp_auth.http.websocket_api",
    "CommandError": "opp_auth.http.websocket_api",
    "Unauthorized": "opp_auth.http.websocket_api",
    "async_run_program": "opp_auth.programs",
    "ProgramError": "opp_auth.programs",
    "ProgramTimeout": "opp_auth.programs",
    "SAFE_PATH": "opp_auth.programs",
}


def test_every_deprecated_alias_is_listed_with_its_previous_home() -> None:
    """The aliases are exactly the names the previous release exported and this one moved."""
    assert set(opp_auth.DEPRECATED_ALIASES) == set(PREVIOUS_HOME)


@pytest.mark.parametrize("old", sorted(PREVIOUS_HOME))
def test_deprecated_alias_still_works_and_warns(old: str) -> None:
    """For one release an old top-level name imports the same object, warning with its new spelling."""
    new = opp_auth.DEPRECATED_ALIASES[old]
    assert old not in opp_auth.__all__
    assert old not in vars(opp_auth), "a module attribute would bypass the warning"
    head, *rest = new.split(".")
    assert head in opp_auth.__all__, new
    if head in NAMESPACES:
        assert rest[0] in NAMESPACES[head], new
    expected = reduce(getattr, new.split("."), opp_auth)
    assert expected is getattr(importlib.import_module(PREVIOUS_HOME[old]), old)
    message = re.escape(f"opp_auth.{old} is deprecated") + ".*" + re.escape(f"use opp_auth.{new}")
    with pytest.warns(DeprecationWarning, match=message):
        assert getattr(opp_auth, old) is expected
    scope: dict[str, Any] = {}
    with pytest.warns(DeprecationWarning, match=message) as record:
        exec(f"from opp_auth import {old}", scope)
    assert scope[old] is expected
    assert all(w.filename == "<string>" for w in record), "the warning points at the importing line"


def test_unknown_top_level_name_is_an_attribute_error() -> None:
    """The alias hook answers only the aliases: anything else is a plain AttributeError, with no warning."""
    with pytest.raises(AttributeError, match="AuthManager"):
        opp_auth.AuthManager  # noqa: B018
    assert not hasattr(opp_auth, "require_admin")


def test_plugin_context_offers_no_manager() -> None:
    """The context's public attributes are a fixed, documented list; none of them is the manager or the store."""
    public = {name for name in dir(PluginContext) if not name.startswith("_")}
    assert "store" not in public and "pm" not in public and "manager" not in public
    doc = __import__("opp_auth.context", fromlist=["x"]).__doc__ or ""
    for name in public:
        assert name in doc, f"PluginContext.{name} is not in the context module's documentation"


# The names the manager carried for test code until tests named the part (auth.users.async_create_user),
# each with the method of the part that does the job.
OLD_MANAGER_NAMES = {
    "get_auth_provider": "registry.get_auth_provider",
    "get_auth_providers": "registry.get_auth_providers",
    "local_provider": "registry.local_provider",
    "get_auth_mfa_module": "registry.get_auth_mfa_module",
    "async_add_executor_job": "executor.async_add_executor_job",
    "async_password_check": "executor.async_password_check",
    "async_get_users": "users.async_get_users",
    "async_get_user": "users.async_get_user",
    "get_user": "users.get_user",
    "owner": "users.owner",
    "async_create_user": "users.async_create_user",
    "async_create_system_user": "users.async_create_system_user",
    "async_get_or_create_user": "users.async_get_or_create_user",
    "async_link_user": "users.async_link_user",
    "async_remove_user": "users.async_remove_user",
    "async_update_user": "users.async_update_user",
    "async_activate_user": "users.async_activate_user",
    "async_deactivate_user": "users.async_deactivate_user",
    "async_remove_credentials": "users.async_remove_credentials",
    "async_enable_user_mfa": "users.async_enable_user_mfa",
    "async_disable_user_mfa": "users.async_disable_user_mfa",
    "async_get_enabled_mfa": "users.async_get_enabled_mfa",
    "async_create_refresh_token": "refresh_tokens.async_create_refresh_token",
    "async_get_refresh_token": "refresh_tokens.async_get_refresh_token",
    "async_get_refresh_token_by_token": "refresh_tokens.async_get_refresh_token_by_token",
    "is_expired": "refresh_tokens.is_expired",
    "expire_at": "refresh_tokens.expire_at",
    "async_set_expiry": "refresh_tokens.async_set_expiry",
    "async_purge_expired_tokens": "refresh_tokens.async_purge_expired_tokens",
    "async_remove_refresh_token": "refresh_tokens.async_remove_refresh_token",
    "async_validate_refresh_token": "refresh_tokens.async_validate_refresh_token",
    "async_create_access_token": "access_tokens.async_create_access_token",
    "validate_access_token": "access_tokens.validate_access_token",
    "sign_path": "access_tokens.sign_path",
    "validate_signed_path": "access_tokens.validate_signed_path",
    "note_login_failure": "events.login_failed",
    "login_retry_after": "events.login_retry_after",
}


async def test_manager_facade_has_one_spelling_per_operation(opp_auth_factory: Any) -> None:
    """The manager builds, starts and stops the parts; an operation is named by the part that owns it.

    The old second spelling (auth.async_create_user for auth.users.async_create_user) is
    gone from the manager, and each part still has the method it stood for.
    """
    auth: AuthManager = await opp_auth_factory(providers=[EXAMPLE], mfa_modules=[])
    for name, target in OLD_MANAGER_NAMES.items():
        assert not hasattr(auth, name), f"AuthManager.{name}: name the part, auth.{target}"
        part, attribute = target.split(".")
        assert callable(getattr(getattr(auth, part), attribute)), target
    for gone in (
        "session_refusal",
        "mfa_module_offering",
        "async_remove_refresh_tokens",
        "has_non_system_user",
        "mfa_required_from",
        "refresh_token_expiry",
    ):
        assert not hasattr(auth, gone), gone


# ---- guards ---------------------------------------------------------------------------------


async def _http_handler(request: web.Request) -> web.Response:
    return web.json_response({"ok": True})


async def _ws_handler(conn: websocket.ActiveConnection, msg: dict[str, Any]) -> None:
    conn.send_result(msg["id"])


@pytest.mark.parametrize("guard", [http_require_auth, http_require_admin])
def test_http_guard_refuses_a_websocket_handler(guard: Any) -> None:
    """Put on a (connection, msg) handler, an HTTP guard raises at decoration."""
    with pytest.raises(TypeError, match=r"opp_auth\.websocket\.require_admin"):
        guard(_ws_handler)
    command = websocket.command({vol.Required("type"): "x/y"})(_ws_handler)
    with pytest.raises(TypeError):
        guard(command)


@pytest.mark.parametrize(
    "guard", [websocket.require_admin, websocket.require_user(), websocket.require_user(allow_system_user=False)]
)
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
    command = websocket.command({vol.Required("type"): "x/z"})(_ws_handler)

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
    admin = await auth.users.async_create_user("Admin", ["system-admin"])
    user = await auth.users.async_create_user("User", ["system-users"])
    tokens = {}
    for who in (admin, user):
        refresh = await auth.refresh_tokens.async_create_refresh_token(who, CLIENT_ID)
        tokens[who.name] = await auth.access_tokens.async_create_access_token(refresh)
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

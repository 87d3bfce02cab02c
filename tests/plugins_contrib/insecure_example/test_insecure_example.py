"""Tests for the insecure_example provider and MFA module (SPEC 3.6, 4.5, 10.1)."""

from __future__ import annotations

import ast
import textwrap
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import opp_auth_insecure_example
import pytest
from opp_auth_insecure_example import ExampleMfaModule

import opp_auth
from opp_auth.config import load_config
from opp_auth.manager import AuthManager
from opp_auth.plugins import make_plugin_manager
from opp_auth.yaml import ConfigError

HANDLER = ("insecure_example", None)
USERS = [
    {"username": "test-user", "password": "test-pass", "name": "Test Name"},
    {"username": "nameless", "password": "other-pass"},
]

Factory = Callable[..., Awaitable[AuthManager]]


async def make_auth(factory: Factory, mfa_data: list[dict[str, str]] | None = None) -> AuthManager:
    """A manager with the example provider and the example MFA module."""
    return await factory(
        providers=[{"type": "insecure_example", "users": USERS}],
        mfa_modules=[{"type": "insecure_example", "data": mfa_data or []}],
    )


async def login(auth: AuthManager, username: str, password: str) -> dict[str, Any]:
    """Run the provider step of a login flow."""
    result = await auth.login_flow.async_init(HANDLER, context={})
    assert result["type"] == "form" and result["step_id"] == "init"
    return await auth.login_flow.async_configure(result["flow_id"], {"username": username, "password": password})


def mfa(auth: AuthManager) -> ExampleMfaModule:
    """The example MFA module of a manager."""
    module = auth.registry.get_auth_mfa_module("insecure_example")
    assert isinstance(module, ExampleMfaModule)
    return module


# ---- provider ---------------------------------------------------------------------------------


async def test_login_with_configured_password_succeeds(opp_auth_factory: Factory) -> None:
    auth = await make_auth(opp_auth_factory)
    result = await login(auth, "test-user", "test-pass")
    assert result["type"] == "create_entry"
    assert result["data"] == {"username": "test-user"}
    assert result["result"].data == {"username": "test-user"}


async def test_wrong_password_is_invalid_auth(opp_auth_factory: Factory) -> None:
    auth = await make_auth(opp_auth_factory)
    result = await login(auth, "test-user", "other-pass")
    assert result["type"] == "form"
    assert result["errors"] == {"base": "invalid_auth"}


async def test_unknown_user_is_invalid_auth(opp_auth_factory: Factory) -> None:
    auth = await make_auth(opp_auth_factory)
    result = await login(auth, "nobody", "test-pass")
    assert result["type"] == "form"
    assert result["errors"] == {"base": "invalid_auth"}


async def test_new_user_is_named_from_configuration(opp_auth_factory: Factory) -> None:
    auth = await make_auth(opp_auth_factory)
    result = await login(auth, "test-user", "test-pass")
    user = await auth.users.async_get_or_create_user(result["result"])
    assert user.name == "Test Name"
    assert user.is_active


async def test_new_user_without_configured_name_has_no_name(opp_auth_factory: Factory) -> None:
    auth = await make_auth(opp_auth_factory)
    result = await login(auth, "nameless", "other-pass")
    user = await auth.users.async_get_or_create_user(result["result"])
    assert user.name is None


async def test_default_title_is_the_base_one(opp_auth_factory: Factory) -> None:
    auth = await make_auth(opp_auth_factory)
    provider = auth.registry.get_auth_provider(*HANDLER)
    assert provider is not None
    assert provider.name == "Unnamed auth provider"


# ---- MFA module ---------------------------------------------------------------------------------


async def test_module_title(opp_auth_factory: Factory) -> None:
    auth = await make_auth(opp_auth_factory)
    assert mfa(auth).name == "Insecure Personal Identify Number"


async def test_configured_pin_validates_exactly(opp_auth_factory: Factory) -> None:
    auth = await make_auth(opp_auth_factory, mfa_data=[{"user_id": "u1", "pin": "123456"}])
    module = mfa(auth)
    assert await module.async_validate("u1", {"pin": "123456"}) is True
    assert await module.async_validate("u1", {"pin": "12345"}) is False
    assert await module.async_validate("u2", {"pin": "123456"}) is False


async def test_setup_flow_asks_for_pin_and_enrols_user(opp_auth_factory: Factory) -> None:
    auth = await make_auth(opp_auth_factory)
    form = await auth.mfa_setup_flow.async_init("insecure_example", context={"user_id": "u1"})
    assert form["type"] == "form"
    assert form["step_id"] == "init"
    assert [str(key) for key in form["data_schema"].schema] == ["pin"]

    result = await auth.mfa_setup_flow.async_configure(form["flow_id"], {"pin": "4321"})
    assert result["type"] == "create_entry"
    assert result["title"] == "Insecure Personal Identify Number"
    assert result["data"] == {"result": "4321"}
    assert await mfa(auth).async_is_user_setup("u1")
    assert await mfa(auth).async_validate("u1", {"pin": "4321"}) is True


async def test_setup_replaces_existing_pin(opp_auth_factory: Factory) -> None:
    auth = await make_auth(opp_auth_factory, mfa_data=[{"user_id": "u1", "pin": "123456"}])
    module = mfa(auth)
    await module.async_setup_user("u1", {"pin": "654321"})
    assert await module.async_validate("u1", {"pin": "654321"}) is True
    assert await module.async_validate("u1", {"pin": "123456"}) is False


async def test_depose_forgets_the_pin(opp_auth_factory: Factory) -> None:
    auth = await make_auth(opp_auth_factory, mfa_data=[{"user_id": "u1", "pin": "123456"}])
    module = mfa(auth)
    await module.async_depose_user("u1")
    assert not await module.async_is_user_setup("u1")
    assert await module.async_validate("u1", {"pin": "123456"}) is False


async def test_enrolled_user_is_asked_for_pin_at_login(opp_auth_factory: Factory) -> None:
    auth = await make_auth(opp_auth_factory)
    first = await login(auth, "test-user", "test-pass")
    user = await auth.users.async_get_or_create_user(first["result"])
    await auth.users.async_enable_user_mfa(user, "insecure_example", {"pin": "2468"})

    step = await login(auth, "test-user", "test-pass")
    assert step["type"] == "form"
    assert step["step_id"] == "mfa"
    wrong = await auth.login_flow.async_configure(step["flow_id"], {"pin": "0000"})
    assert wrong["errors"] == {"base": "invalid_code"}
    done = await auth.login_flow.async_configure(step["flow_id"], {"pin": "2468"})
    assert done["type"] == "create_entry"
    assert done["result"].id == first["result"].id


# ---- configuration -------------------------------------------------------------------------------


async def test_provider_config_rejects_unknown_key(opp_auth_factory: Factory) -> None:
    with pytest.raises(ConfigError, match="unknown key 'extra'"):
        await opp_auth_factory(providers=[{"type": "insecure_example", "users": USERS, "extra": 1}], mfa_modules=[])


async def test_provider_config_rejects_unknown_user_key(opp_auth_factory: Factory) -> None:
    users = [{"username": "a", "password": "b", "email": "a@example.com"}]
    with pytest.raises(ConfigError, match="unknown key 'email'"):
        await opp_auth_factory(providers=[{"type": "insecure_example", "users": users}], mfa_modules=[])


async def test_mfa_config_rejects_unknown_key(opp_auth_factory: Factory) -> None:
    with pytest.raises(ConfigError, match="unknown key 'extra'"):
        await opp_auth_factory(
            providers=[{"type": "insecure_example", "users": USERS}],
            mfa_modules=[{"type": "insecure_example", "data": [], "extra": 1}],
        )


def write_config(config_dir: Path, text: str) -> None:
    """Write configuration.yaml."""
    (config_dir / "configuration.yaml").write_text(textwrap.dedent(text), encoding="utf-8")


def test_core_config_rejects_insecure_example_provider(config_dir: Path) -> None:
    write_config(
        config_dir,
        """\
        openpeerpower:
          auth_providers:
            - type: insecure_example
              users: []
        """,
    )
    with pytest.raises(ConfigError, match="The insecure_example auth provider is for testing only.") as exc:
        load_config(config_dir, make_plugin_manager())
    assert exc.value.line == 3


def test_core_config_rejects_insecure_example_mfa_module(config_dir: Path) -> None:
    write_config(
        config_dir,
        """\
        openpeerpower:
          auth_providers:
            - type: openpeerpower
          auth_mfa_modules:
            - type: insecure_example
              data: []
        """,
    )
    with pytest.raises(ConfigError, match="The insecure_example mfa module is for testing only.") as exc:
        load_config(config_dir, make_plugin_manager())
    assert exc.value.line == 5


# ---- public API only ------------------------------------------------------------------------------


def test_plugin_imports_only_the_public_api() -> None:
    tree = ast.parse(Path(opp_auth_insecure_example.__file__).read_text(encoding="utf-8"))
    imported: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "opp_auth":
            assert node.module == "opp_auth", f"imports from {node.module}"
            imported += [alias.name for alias in node.names]
        elif isinstance(node, ast.Import):
            for alias in node.names:
                assert alias.name.split(".")[0] != "opp_auth", f"imports {alias.name}"
    assert imported
    assert set(imported) <= set(opp_auth.__all__)

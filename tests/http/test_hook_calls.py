"""Every hook is called through pluggy: subset arguments, wrappers, awaited results, isolation, check_pending."""

from __future__ import annotations

import asyncio
import inspect
import logging
import types
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

import opp_auth.hookspecs
from opp_auth import PluginContext, hookimpl
from opp_auth.cli import build_parser
from opp_auth.plugins import PluginError, make_plugin_manager
from opp_auth.testing import CLIENT_ID, LoginFlowDriver

EXAMPLE = {"type": "insecure_example", "users": [{"username": "ann", "password": "pw", "name": "Ann"}]}
HANDLER = ["insecure_example", None]
HOOKS = sorted(n for n, _ in inspect.getmembers(opp_auth.hookspecs, inspect.isfunction) if n.startswith("opp_auth_"))
# pluggy refuses wrappers on historic hooks (they replay to late plugins); everything else must take one.
WRAPPABLE = [name for name in HOOKS if name != "opp_auth_add_hookspecs"]


async def settle() -> None:
    """Let fire-and-forget event tasks run."""
    for _ in range(10):
        await asyncio.sleep(0)


def _wrapper_plugin(seen: list[str]) -> Any:
    """An object with a wrapper=True implementation of every wrappable hook, taking no arguments at all."""
    namespace: dict[str, Any] = {}
    for name in WRAPPABLE:

        def make(hook: str) -> Any:
            def wrapper() -> Any:
                seen.append(hook)
                result = yield
                return result

            wrapper.__name__ = hook
            return hookimpl(wrapper=True)(wrapper)

        namespace[name] = make(name)
    return types.SimpleNamespace(**namespace)


async def test_wrappers_see_every_hook_the_core_calls(
    onboarded: Path, opp_auth_factory: Any, opp_auth_client: Any
) -> None:
    """A wrapper=True implementation of each hook is run when the core calls that hook."""
    seen: list[str] = []
    wrappers = _wrapper_plugin(seen)
    auth = await opp_auth_factory(
        providers=[EXAMPLE], mfa_modules=[], plugins=[("wrappers", wrappers)], blocks={}, setup=False
    )
    build_parser(auth.pm)
    client = await opp_auth_client(auth)  # startup, routes, websocket commands
    driver = LoginFlowDriver(client.session, client.url(""))
    status, _ = await driver.start(HANDLER)
    flow = _["flow_id"]
    await driver.step(flow, username="ann", password="wrong")
    tokens = await driver.tokens(HANDLER, [{"username": "ann", "password": "pw"}])
    # A second sign-in from another client: opp_auth_new_device_login.
    await driver.tokens(HANDLER, [{"username": "ann", "password": "pw"}], client_id="https://example.com/other")
    async with client.request("GET", "/api/", headers={"Authorization": "Bearer nonsense"}) as resp:
        assert resp.status == 401
    user = next(u for u in auth.store.users() if u.name == "Ann")
    await auth.users.async_update_user(user, name="Ann B")
    token = await auth.refresh_tokens.async_get_refresh_token_by_token(tokens["refresh_token"])
    await auth.refresh_tokens.async_remove_refresh_token(token)
    await auth.users.async_remove_user(user)
    await auth.async_shutdown()
    await settle()
    assert status == 200
    assert set(WRAPPABLE) - set(seen) == set(), "hooks the core called without going through pluggy"


async def test_implementation_may_take_a_subset_of_the_arguments(opp_auth_factory: Any) -> None:
    """def opp_auth_user_created(user) works (pluggy passes only what an implementation names)."""
    created: list[str] = []

    class OnlyUser:
        @hookimpl
        def opp_auth_user_created(self, user: Any) -> None:
            created.append(user.name)

        @hookimpl
        async def opp_auth_refresh_token_created(self) -> None:
            created.append("token")

    auth = await opp_auth_factory(providers=[EXAMPLE], mfa_modules=[], plugins=[("subset", OnlyUser())])
    user = await auth.users.async_create_user("Zoe")
    await auth.refresh_tokens.async_create_refresh_token(user, CLIENT_ID)
    assert created == ["Zoe", "token"]


async def test_awaitable_results_are_awaited_in_order(opp_auth_factory: Any) -> None:
    """An implementation returning a coroutine has finished when the operation returns."""
    order: list[str] = []

    class Slow:
        @hookimpl
        async def opp_auth_user_created(self, user: Any) -> None:
            await asyncio.sleep(0.01)
            order.append("slow")

    auth = await opp_auth_factory(providers=[EXAMPLE], mfa_modules=[], plugins=[("slow", Slow())])
    await auth.users.async_create_user("Yan")
    order.append("returned")
    assert order == ["slow", "returned"]


@pytest.mark.parametrize("mode", ["raises", "awaitable raises"])
async def test_one_plugins_exception_is_isolated_and_names_plugin_and_distribution(
    opp_auth_factory: Any, caplog: pytest.LogCaptureFixture, mode: str
) -> None:
    """A failing event implementation is logged with its plugin and distribution; the others still run."""
    calls: list[str] = []

    class Broken:
        @hookimpl
        def opp_auth_user_created(self, user: Any) -> Any:
            if mode == "raises":
                raise RuntimeError("broken plugin")

            async def later() -> None:
                raise RuntimeError("broken plugin")

            return later()

    # As if shipped by an installed distribution: its module belongs to opp-auth-insecure-example.
    Broken.__module__ = "opp_auth_insecure_example"

    class Fine:
        @hookimpl
        def opp_auth_user_created(self, user: Any) -> None:
            calls.append(user.name)

    auth = await opp_auth_factory(providers=[EXAMPLE], mfa_modules=[], plugins=[("fine", Fine()), ("broken", Broken())])
    with caplog.at_level(logging.ERROR):
        user = await auth.users.async_create_user("Xia")
    assert calls == ["Xia"]
    assert auth.users.get_user(user.id) is user
    messages = [r.getMessage() for r in caplog.records if "opp_auth_user_created" in r.getMessage()]
    assert messages, caplog.text
    assert "broken" in messages[0] and "opp-auth-insecure-example" in messages[0], messages[0]


async def test_failing_request_authenticator_refuses_and_the_chain_ends(
    opp_auth_factory: Any, opp_auth_client: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """A login decision fails closed: the authenticator that raised answers 'refused', not 'next please'."""

    class Raises:
        @hookimpl(tryfirst=True)
        def opp_auth_authenticate_request(self) -> Any:
            raise RuntimeError("authenticator bug")

    class Grants:
        @hookimpl
        def opp_auth_authenticate_request(self, auth: PluginContext) -> Any:
            return auth.owner()

    auth = await opp_auth_factory(
        providers=[EXAMPLE], mfa_modules=[], plugins=[("grants", Grants()), ("raises", Raises())]
    )
    await auth.users.async_create_user("Owner", ["system-admin"], is_owner=True)
    client = await opp_auth_client(auth)
    async with client.request("GET", "/api/") as resp:
        assert resp.status == 401
    assert "raises" in caplog.text and "opp_auth_authenticate_request" in caplog.text


async def test_a_wrapper_can_veto_a_request_authenticator(opp_auth_factory: Any, opp_auth_client: Any) -> None:
    """wrapper=True on a firstresult hook sees and may replace the winning answer."""

    class Grants:
        @hookimpl
        def opp_auth_authenticate_request(self, auth: PluginContext) -> Any:
            return auth.owner()

    class Veto:
        @hookimpl(wrapper=True)
        def opp_auth_authenticate_request(self, request: web.Request) -> Any:
            result = yield
            return False if request.headers.get("X-Veto") else result

    auth = await opp_auth_factory(providers=[EXAMPLE], mfa_modules=[], plugins=[("grants", Grants()), ("veto", Veto())])
    await auth.users.async_create_user("Owner", ["system-admin"], is_owner=True)
    client = await opp_auth_client(auth)
    async with client.request("GET", "/api/") as resp:
        assert resp.status == 200
    async with client.request("GET", "/api/", headers={"X-Veto": "1"}) as resp:
        assert resp.status == 401


async def test_failing_throttle_fails_closed(
    onboarded: Path, opp_auth_factory: Any, opp_auth_client: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """A throttling plugin that raises makes the login wait instead of letting it through unthrottled."""

    class BrokenThrottle:
        @hookimpl
        def opp_auth_login_retry_after(self, remote_ip: Any) -> Any:
            raise RuntimeError("throttle bug")

    auth = await opp_auth_factory(providers=[EXAMPLE], mfa_modules=[], plugins=[("bt", BrokenThrottle())])
    assert auth.events.login_retry_after("127.0.0.1", "ann") == opp_auth.hookspecs.FAIL_CLOSED_RETRY_AFTER
    client = await opp_auth_client(auth)
    driver = LoginFlowDriver(client.session, client.url(""))
    status, flow = await driver.start(HANDLER)
    status, result = await driver.step(flow["flow_id"], username="ann", password="pw")
    assert result.get("type") != "create_entry", result
    assert "bt" in caplog.text


def test_misspelled_hook_fails_start_up_naming_plugin_and_closest_hook() -> None:
    """check_pending: an implementation of an unknown hook is an error, with a suggestion."""

    class Typo:
        @hookimpl
        def opp_auth_user_creatd(self, user: Any) -> None:
            pass

    with pytest.raises(PluginError, match=r"typo .*'opp_auth_user_creatd'.*Did you mean 'opp_auth_user_created'"):
        make_plugin_manager(load_entrypoints=False, plugins=[("typo", Typo())])


async def test_misspelled_hook_registered_late_fails_setup(opp_auth_factory: Any) -> None:
    """A plugin registered after the manager was made is checked when the server sets up."""

    class Typo:
        @hookimpl
        def opp_auth_startpu(self) -> None:
            pass

    auth = await opp_auth_factory(providers=[EXAMPLE], mfa_modules=[], setup=False)
    auth.pm.register(Typo(), name="late")
    with pytest.raises(PluginError, match="opp_auth_startup"):
        await auth.async_setup()


def test_optional_hook_of_an_absent_plugin_is_allowed() -> None:
    """A hook of another plugin that is not installed is fine when marked optionalhook."""

    class Extra:
        @hookimpl(optionalhook=True)
        def opp_auth_someone_elses_hook(self) -> None:
            pass

    make_plugin_manager(load_entrypoints=False, plugins=[("extra", Extra())])


def test_exception_in_a_registration_hook_names_plugin() -> None:
    """Registrations fail start-up with the plugin named (through pluggy, not impl.function)."""

    class Bad:
        @hookimpl
        def opp_auth_register_auth_providers(self) -> None:
            raise ValueError("nope")

    pm = make_plugin_manager(load_entrypoints=False, plugins=[("bad", Bad())])
    with pytest.raises(PluginError, match=r"Plugin bad .*opp_auth_register_auth_providers: nope"):
        _ = pm.provider_classes

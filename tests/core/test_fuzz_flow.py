"""Random sequences of init / configure / abort on the flow engine: only FlowError escapes, the caps hold."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import voluptuous as vol
from hypothesis import given, settings
from hypothesis import strategies as st

from opp_auth.config import validate_config
from opp_auth.flow import (
    RESULT_TYPE_ABORT,
    RESULT_TYPE_CREATE_ENTRY,
    RESULT_TYPE_FORM,
    FlowError,
    FlowHandler,
    FlowManager,
    UnknownFlow,
    UnknownHandler,
)
from opp_auth.manager import AuthManager
from opp_auth.plugins import make_plugin_manager

FAST = settings(max_examples=120, deadline=None)
MAX_FLOWS = 4

# Any code point, lone surrogates included: the engine sees what the edge would refuse (plugins call it directly).
_any_text = st.text(st.characters(exclude_categories=()), max_size=10)
_json = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=True), _any_text),
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(_any_text, inner, max_size=3)),
    max_leaves=8,
)
_login_input = st.one_of(
    _json,
    st.fixed_dictionaries({"username": st.sampled_from(["alice", "bob", "", "\ud800", "al\x00ice"]), "password": st.sampled_from(["pw", "x", "", "\udfff"])}),
    st.fixed_dictionaries({"code": st.sampled_from(["123456", "000000", ""])}),
    st.fixed_dictionaries({"multi_factor_auth_module": st.sampled_from(["insecure_example", "nope"])}),
)
# A flow reference is either the n-th flow the sequence started or some made-up id.
_flow_ref = st.one_of(st.integers(0, 8), st.text(max_size=34))
operations = st.lists(
    st.one_of(
        st.tuples(st.just("init"), st.sampled_from(["form", "boom", "noinit", "badcreate", "missing"]), _json),
        st.tuples(st.just("configure"), _flow_ref, _login_input),
        st.tuples(st.just("abort"), _flow_ref, st.none()),
    ),
    max_size=15,
)


class FormFlow(FlowHandler):
    """Asks for a username and password; "alice"/"pw" finishes, anything else shows the form again."""

    async def async_step_init(self, user_input: Any = None) -> dict[str, Any]:
        """The only step."""
        if user_input is not None and user_input.get("username") == "alice" and user_input.get("password") == "pw":
            return self.async_create_entry(title="alice", data=user_input)
        errors = {"base": "invalid_auth"} if user_input is not None else {}
        schema = vol.Schema({vol.Required("username"): str, vol.Required("password"): str})
        return self.async_show_form(step_id="init", data_schema=schema, errors=errors)


class BoomFlow(FlowHandler):
    """A broken plugin: its step raises."""

    async def async_step_init(self, user_input: Any = None) -> dict[str, Any]:
        """Fail."""
        raise RuntimeError("plugin bug")


class NoInitFlow(FlowHandler):
    """A handler without the init step."""


class Manager(FlowManager):
    """Handlers by name; "badcreate" fails to build, unknown names are UnknownHandler."""

    async def async_create_flow(self, handler_key: Any, *, context: dict[str, Any], data: Any) -> FlowHandler:
        """Build a handler."""
        if handler_key == "badcreate":
            raise ValueError("cannot build")
        handlers = {"form": FormFlow, "boom": BoomFlow, "noinit": NoInitFlow}
        if handler_key not in handlers:
            raise UnknownHandler(handler_key)
        return handlers[handler_key]()


def _flow_id(ref: Any, started: list[str]) -> Any:
    """The flow id a reference names."""
    return started[ref % len(started)] if isinstance(ref, int) and started else ref


async def _run(manager: FlowManager, ops: list[tuple[str, Any, Any]], start: Any) -> None:
    """Apply the operations, checking the invariants after each."""
    started: list[str] = []
    for op, arg, value in ops:
        try:
            if op == "init":
                result = await start(arg, value)
                started.append(result["flow_id"])
            elif op == "configure":
                result = await manager.async_configure(_flow_id(arg, started), value)
            else:
                manager.async_abort(_flow_id(arg, started))
                result = None
        except FlowError:
            result = None
        assert len(manager.async_progress()) <= manager.max_flows
        if result is None:
            continue
        assert result["type"] in (RESULT_TYPE_FORM, RESULT_TYPE_CREATE_ENTRY, RESULT_TYPE_ABORT)
        if result["type"] != RESULT_TYPE_FORM:
            # A finished flow is gone: it cannot be fed again.
            with pytest.raises(UnknownFlow):
                await manager.async_configure(result["flow_id"], {})


@FAST
@given(ops=operations)
def test_generic_engine_raises_only_flow_errors_and_respects_the_cap(ops: list[tuple[str, Any, Any]]) -> None:
    """Broken handlers, unknown ids and junk input end as results or FlowError subclasses."""
    manager = Manager(max_flows=MAX_FLOWS)

    async def start(key: Any, data: Any) -> dict[str, Any]:
        return await manager.async_init(key, context={"ip_address": "127.0.0.1"})

    asyncio.run(_run(manager, ops, start))


_PROVIDER = {"type": "insecure_example", "users": [{"username": "alice", "password": "pw", "name": "Alice"}]}
_MFA = {"type": "insecure_example", "data": [{"user_id": "nobody", "pin": "123456"}]}


@pytest.fixture(scope="module")
def login_auth(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """A real AuthManager (insecure_example provider and MFA module) and the loop it lives on."""
    config_dir = tmp_path_factory.mktemp("fuzz_flow")
    pm = make_plugin_manager()
    config = validate_config(
        {"openpeerpower": {"auth_providers": [_PROVIDER], "auth_mfa_modules": [_MFA]}},
        pm, config_dir=config_dir, allow_insecure_example=True,
    )
    loop = asyncio.new_event_loop()
    auth = AuthManager(
        str(config_dir), pm, provider_configs=config.providers, mfa_configs=config.mfa_modules, http_config=config.http,
    )
    loop.run_until_complete(auth.async_setup())
    yield auth, loop
    loop.run_until_complete(auth.async_shutdown())
    loop.close()


@FAST
@given(ops=operations, addresses=st.lists(st.sampled_from(["127.0.0.1", "10.0.0.2"]), min_size=15, max_size=15))
def test_login_flow_raises_only_flow_errors_and_respects_the_caps(
    login_auth: Any, ops: list[tuple[str, Any, Any]], addresses: list[str]
) -> None:
    """The real login flow manager under the same random sequences, with per-address caps too."""
    auth, loop = login_auth
    manager = auth.login_flow
    manager.max_flows, manager.max_per_address = MAX_FLOWS, 2
    handlers = {"form": ("insecure_example", None), "boom": ("insecure_example", "other"), "noinit": "insecure_example"}
    addresses_left = list(addresses)

    async def start(key: Any, data: Any) -> dict[str, Any]:
        address = addresses_left.pop()
        context = {"ip_address": address, "credential_only": False, "client_id": "https://example.com/"}
        return await manager.async_init(handlers.get(key, (key, None)), context=context)

    async def run() -> None:
        await _run(manager, ops, start)
        per_address: dict[str, int] = {}
        for flow in manager.async_progress():
            per_address[flow.context["ip_address"]] = per_address.get(flow.context["ip_address"], 0) + 1
        assert all(count <= manager.max_per_address for count in per_address.values())
        for flow in manager.async_progress():
            manager.async_abort(flow.flow_id)

    loop.run_until_complete(run())

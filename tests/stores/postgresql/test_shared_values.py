"""Plugins' short-lived values on the shared ephemeral state (PluginContext.async_put_shared and friends)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

EXAMPLE = [{"type": "insecure_example", "users": []}]


@pytest.fixture
def opp_auth_storage_type() -> str:
    return "postgresql"


async def test_a_value_put_on_a_is_read_and_taken_once_on_b(opp_auth_factory: Any) -> None:
    """Put on A, read on B with its time left; a take expecting another value leaves it; one take gets it."""
    a = await opp_auth_factory(providers=EXAMPLE)
    b = await opp_auth_factory(providers=EXAMPLE)
    on_a, on_b = a.context, b.context
    assert on_a.shared_state and on_b.shared_state
    await on_a.async_put_shared("test.k", {"x": 1}, 5)
    got = await on_b.async_get_shared("test.k")
    assert got is not None and got[0] == {"x": 1} and 4 < got[1] <= 5
    assert await on_b.async_take_shared("test.k", {"x": 2}) is None  # replaced meanwhile: stays
    results = await asyncio.gather(on_a.async_take_shared("test.k", got[0]), on_b.async_take_shared("test.k", got[0]))
    assert sorted(results, key=str) == [None, {"x": 1}]
    assert await on_a.async_get_shared("test.k") is None


async def test_a_value_is_replaced_and_expires_by_the_database_clock(opp_auth_factory: Any) -> None:
    """A second put replaces the first everywhere; an expired value is neither read nor taken, and is swept."""
    a = await opp_auth_factory(providers=EXAMPLE)
    b = await opp_auth_factory(providers=EXAMPLE)
    await a.context.async_put_shared("test.k", {"x": 1}, 5)
    await b.context.async_put_shared("test.k", {"x": 2}, 0.2)
    got = await a.context.async_get_shared("test.k")
    assert got is not None and got[0] == {"x": 2}
    await asyncio.sleep(0.3)
    assert await a.context.async_get_shared("test.k") is None
    assert await b.context.async_take_shared("test.k") is None
    await b.context.async_put_shared("test.gone", {"secret": "x"}, 0.1)
    await asyncio.sleep(0.2)
    await a.ephemeral.async_sweep()
    row = await a.ephemeral._one("SELECT count(*) FROM opp_auth_values", None)
    assert row[0] == 0


async def test_in_memory_the_values_are_the_plugins_own() -> None:
    """The JSON store (one process): shared_state is False and the calls keep nothing."""
    from opp_auth.ephemeral import EphemeralState

    state = EphemeralState()
    await state.async_put_value("test.k", {"x": 1}, 5)
    assert await state.async_get_value("test.k") is None
    assert await state.async_take_value("test.k") is None

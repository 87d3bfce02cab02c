"""The template provider passes opp-auth's provider contract suite, and keeps its own promises."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import bcrypt
import pytest
import voluptuous as vol
from opp_auth_myprovider import MyAuthProvider

from opp_auth.testing import AuthManager, ProviderContract

# Cost 4 keeps the tests fast; real hashes use bcrypt's default (12).
PASSWORD_HASH = bcrypt.hashpw(b"right-pass", bcrypt.gensalt(rounds=4)).decode()
CONFIG = {"type": "myprovider", "username": "alice", "password_hash": PASSWORD_HASH}


class TestMyProviderContract(ProviderContract):
    """The contract: the suite's tests run against the fixtures below."""

    @pytest.fixture
    def provider_config(self) -> dict[str, Any]:
        """The provider's entry of configuration.yaml."""
        return dict(CONFIG)

    @pytest.fixture
    def login_steps(self) -> list[dict[str, Any]]:
        """Form inputs that log the known user in."""
        return [{"username": "alice", "password": "right-pass"}]

    @pytest.fixture
    def wrong_password_steps(self) -> list[dict[str, Any]]:
        """The same with a wrong password."""
        return [{"username": "alice", "password": "wrong-pass"}]


async def test_right_password_with_wrong_username_is_invalid_auth(
    opp_auth_factory: Callable[..., Awaitable[AuthManager]],
) -> None:
    auth = await opp_auth_factory(providers=[dict(CONFIG)], mfa_modules=[])
    result = await auth.login_flow.async_init(("myprovider", None), context={"ip_address": "127.0.0.1"})
    result = await auth.login_flow.async_configure(result["flow_id"], {"username": "bob", "password": "right-pass"})
    assert result["errors"] == {"base": "invalid_auth"}


async def test_http_login_gives_tokens(
    opp_auth_factory: Callable[..., Awaitable[AuthManager]], opp_auth_client: Callable[..., Awaitable[Any]]
) -> None:
    auth = await opp_auth_factory(providers=[dict(CONFIG)], mfa_modules=[])
    client = await opp_auth_client(auth)
    tokens = await client.login.tokens(["myprovider", None], [{"username": "alice", "password": "right-pass"}])
    async with client.request("GET", "/api/", headers={"Authorization": f"Bearer {tokens['access_token']}"}) as resp:
        assert resp.status == 200


def test_password_hash_must_be_bcrypt() -> None:
    with pytest.raises(vol.Invalid, match="bcrypt hash"):
        MyAuthProvider.CONFIG_SCHEMA({**CONFIG, "password_hash": "right-pass"})

"""trusted_header passes the provider contract of opp_auth.testing, as far as a formless provider can.

The contract's password tests do not apply: there is no form. Its
"wrong password" case becomes a forged header from an untrusted peer.
"""

from __future__ import annotations

from typing import Any

import pytest
from multidict import CIMultiDict, CIMultiDictProxy

from opp_auth.manager import AuthManager
from opp_auth.testing import HOSTILE_STRINGS, LOGIN_CONTEXT, ProviderContract, run_login_flow


def context(peer: str, **headers: str) -> dict[str, Any]:
    """A login flow context as the HTTP layer builds it."""
    return {**LOGIN_CONTEXT, "peer_address": peer, "headers": CIMultiDictProxy(CIMultiDict(headers))}


class TestProviderContract(ProviderContract):
    """Logins from the trusted proxy 10.0.0.1 naming alice."""

    @pytest.fixture
    def provider_config(self) -> dict[str, Any]:
        return {"type": "trusted_header"}

    @pytest.fixture
    async def contract_auth(self, opp_auth_factory: Any, provider_config: dict[str, Any]) -> AuthManager:
        return await opp_auth_factory(
            providers=[provider_config],
            mfa_modules=[],
            http={"use_x_forwarded_for": True, "trusted_proxies": ["10.0.0.1"]},
        )

    @pytest.fixture
    def contract_context(self) -> dict[str, Any]:
        return context("10.0.0.1", **{"Remote-User": "alice"})

    @pytest.fixture
    def login_steps(self) -> list[dict[str, Any]]:
        return []

    @pytest.fixture
    def wrong_password_steps(self) -> list[dict[str, Any]]:
        return []

    @pytest.fixture
    def break_provider(self) -> Any:
        def breaker(provider: Any, monkeypatch: pytest.MonkeyPatch) -> None:
            async def boom(*args: Any) -> None:
                raise RuntimeError("provider exploded")

            monkeypatch.setattr(provider, "async_get_or_create_credentials", boom)

        return breaker

    async def test_wrong_password_is_invalid_auth(
        self, contract_auth: AuthManager, wrong_password_steps: list[dict[str, Any]], contract_context: dict[str, Any]
    ) -> None:
        """No password here: the same header from an untrusted peer is refused (abort not_allowed)."""
        provider = self._provider(contract_auth)
        result = await run_login_flow(contract_auth, provider.key, [], context("10.0.0.2", **{"Remote-User": "alice"}))
        assert result["type"] == "abort" and result["reason"] == "not_allowed", result

    @pytest.mark.parametrize("value", HOSTILE_STRINGS, ids=lambda v: repr(v)[:20])
    async def test_hostile_input_never_raises_or_grants(
        self, contract_auth: AuthManager, value: str, contract_context: dict[str, Any]
    ) -> None:
        """Hostile header values from an untrusted peer never log in; from the trusted one only a safe name does."""
        provider = self._provider(contract_auth)
        untrusted = await run_login_flow(contract_auth, provider.key, [], context("10.0.0.2", **{"Remote-User": value}))
        assert untrusted["type"] == "abort", untrusted
        trusted = await run_login_flow(contract_auth, provider.key, [], context("10.0.0.1", **{"Remote-User": value}))
        if trusted["type"] == "create_entry":
            username = trusted["result"].data["username"]
            assert username == value.strip().casefold() and username and "\x00" not in username
        else:
            assert trusted["type"] == "abort", trusted

    @pytest.mark.parametrize("unsafe", ["\n", "\r", "\x85", "\u2028", "\u202e", "\ufeff", "\x00"], ids=repr)
    async def test_username_with_unsafe_character_never_logs_in(
        self, contract_auth: AuthManager, contract_context: dict[str, Any], unsafe: str, **_: Any
    ) -> None:
        """A named user plus a control, format or separator character is refused."""
        provider = self._provider(contract_auth)
        ctx = context("10.0.0.1", **{"Remote-User": f"alice{unsafe}"})
        result = await run_login_flow(contract_auth, provider.key, [], ctx)
        assert result["type"] == "abort", result

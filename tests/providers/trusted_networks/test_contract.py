"""trusted_networks passes the provider contract of opp_auth.testing (adapted to a passwordless provider)."""

from __future__ import annotations

from typing import Any

import pytest

from opp_auth.manager import AuthManager
from opp_auth.testing import HOSTILE_STRINGS, LOGIN_CONTEXT, ProviderContract


class TestProviderContract(ProviderContract):
    """Logins from 192.168.0.5 pick the one person created in contract_auth."""

    @pytest.fixture
    def provider_config(self) -> dict[str, Any]:
        return {"type": "trusted_networks", "trusted_networks": ["192.168.0.0/24"]}

    @pytest.fixture
    def contract_context(self) -> dict[str, Any]:
        return {**LOGIN_CONTEXT, "ip_address": "192.168.0.5"}

    @pytest.fixture
    async def contract_auth(self, opp_auth_factory: Any, provider_config: dict[str, Any]) -> AuthManager:
        """The contract's manager plus the person the logins choose (this provider never creates users)."""
        auth = await opp_auth_factory(providers=[provider_config], mfa_modules=[])
        await auth.users.async_create_user("Alice", ["system-users"])
        return auth

    @pytest.fixture
    def login_steps(self, contract_auth: AuthManager) -> list[dict[str, Any]]:
        alice = next(u for u in contract_auth.store.users() if u.name == "Alice")
        return [{"user": alice.id}]

    @pytest.fixture
    def wrong_password_steps(self) -> list[dict[str, Any]]:
        # The "password" here is the choice of user: one that does not exist.
        return [{"user": "0123456789ab4def8123456789abcdef"}]

    @pytest.fixture
    def break_provider(self) -> Any:
        def breaker(provider: Any, monkeypatch: pytest.MonkeyPatch) -> None:
            def boom(*args: Any) -> None:
                raise RuntimeError("provider exploded")

            monkeypatch.setattr(provider, "available_users", boom)

        return breaker

    @pytest.mark.parametrize("value", HOSTILE_STRINGS, ids=lambda v: repr(v)[:20])
    async def test_hostile_input_never_raises_or_grants(
        self, contract_auth: AuthManager, value: str, contract_context: dict[str, Any]
    ) -> None:
        """Hostile input in the user select is invalid_auth, never an exception or a login.

        Overridden because the form has no free-text field for the base test to
        fill: its one field is a select (serialised with the candidate users as
        options), so the hostile strings go into that field instead.
        """
        provider = self._provider(contract_auth)
        result = await contract_auth.login_flow.async_init(provider.key, context=dict(contract_context))
        assert result["type"] == "form", result
        result = await contract_auth.login_flow.async_configure(result["flow_id"], {"user": value})
        assert result["type"] == "form", result
        assert result["errors"] == {"base": "invalid_auth"}

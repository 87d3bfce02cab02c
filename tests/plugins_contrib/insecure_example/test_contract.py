"""insecure_example passes the provider and MFA contract suites of opp_auth.testing."""

from __future__ import annotations

from typing import Any

import pytest

from opp_auth.testing import MfaContract, ProviderContract


class TestProviderContract(ProviderContract):
    """The example provider."""

    @pytest.fixture
    def provider_config(self) -> dict[str, Any]:
        return {"type": "insecure_example", "users": [{"username": "alice", "password": "right-pass", "name": "Alice"}]}

    @pytest.fixture
    def login_steps(self) -> list[dict[str, Any]]:
        return [{"username": "alice", "password": "right-pass"}]

    @pytest.fixture
    def wrong_password_steps(self) -> list[dict[str, Any]]:
        return [{"username": "alice", "password": "wrong-pass"}]


class TestMfaContract(MfaContract):
    """The example PIN module."""

    @pytest.fixture
    def module_config(self) -> dict[str, Any]:
        return {"type": "insecure_example", "data": []}

    @pytest.fixture
    def enrol(self) -> Any:
        async def do(auth: Any, module: Any, user_id: str) -> None:
            await auth.users.async_enable_user_mfa(await auth.users.async_get_user(user_id), module.id, {"pin": "4321"})

        return do

    @pytest.fixture
    def valid_code(self) -> Any:
        async def code(module: Any, user_id: str) -> dict[str, str]:
            return {"pin": "4321"}

        return code

    @pytest.fixture
    def break_module(self) -> Any:
        def breaker(module: Any, monkeypatch: pytest.MonkeyPatch) -> None:
            async def boom(*args: Any) -> bool:
                raise RuntimeError("module exploded")

            monkeypatch.setattr(module, "async_validate", boom)

        return breaker

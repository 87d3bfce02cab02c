"""legacy_api_password passes the provider contract of opp_auth.testing."""

from __future__ import annotations

from typing import Any

import pytest

from opp_auth.testing import ProviderContract


class TestProviderContract(ProviderContract):
    """One shared password."""

    @pytest.fixture
    def provider_config(self) -> dict[str, Any]:
        return {"type": "legacy_api_password", "api_password": "right-pass"}

    @pytest.fixture
    def login_steps(self) -> list[dict[str, Any]]:
        return [{"password": "right-pass"}]

    @pytest.fixture
    def wrong_password_steps(self) -> list[dict[str, Any]]:
        return [{"password": "wrong-pass"}]

    @pytest.fixture
    def break_provider(self) -> Any:
        def breaker(provider: Any, monkeypatch: pytest.MonkeyPatch) -> None:
            def boom(*args: Any) -> bool:
                raise RuntimeError("provider exploded")

            monkeypatch.setattr(provider, "check_password", boom)

        return breaker

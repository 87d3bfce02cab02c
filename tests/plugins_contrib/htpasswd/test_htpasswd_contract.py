"""The htpasswd provider passes the provider contract suite of opp_auth.testing."""

from __future__ import annotations

from typing import Any

import pytest

from opp_auth.testing import ProviderContract


class TestHtpasswdProviderContract(ProviderContract):
    """A file with one bcrypt user, made by htpasswd -B."""

    @pytest.fixture
    def provider_config(self, htpasswd: Any) -> dict[str, Any]:
        htpasswd.add("alice", "right-pass")
        return {"type": "htpasswd", "path": str(htpasswd.path)}

    @pytest.fixture
    def login_steps(self) -> list[dict[str, Any]]:
        return [{"username": "alice", "password": "right-pass"}]

    @pytest.fixture
    def wrong_password_steps(self) -> list[dict[str, Any]]:
        return [{"username": "alice", "password": "wrong-pass"}]


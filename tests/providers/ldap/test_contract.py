"""The LDAP provider passes the provider contract of opp_auth.testing against a real slapd."""

from __future__ import annotations

from typing import Any

import ldap3
import pytest

from opp_auth.testing import ProviderContract

from .conftest import PEOPLE, Slapd


class TestLdapProviderContract(ProviderContract):
    """Search-then-bind against the session's slapd."""

    @pytest.fixture
    def provider_config(self, ldap_server: Slapd) -> dict[str, Any]:
        return {"type": "ldap", "url": ldap_server.url, "base_dn": PEOPLE}

    @pytest.fixture
    def login_steps(self) -> list[dict[str, Any]]:
        return [{"username": "alice", "password": "alice-pass"}]

    @pytest.fixture
    def wrong_password_steps(self) -> list[dict[str, Any]]:
        return [{"username": "alice", "password": "not-alice-pass"}]

    @pytest.fixture
    def break_provider(self) -> Any:
        def breaker(provider: Any, monkeypatch: pytest.MonkeyPatch) -> None:
            def boom(*args: Any, **kwargs: Any) -> None:
                raise RuntimeError("ldap connection exploded")

            # Every ldap3 connection the provider opens (pooled or new) now fails unexpectedly.
            monkeypatch.setattr(ldap3.Connection, "search", boom)
            monkeypatch.setattr(ldap3.Connection, "bind", boom)

        return breaker

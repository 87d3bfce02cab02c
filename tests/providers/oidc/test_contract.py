"""opp-auth-oidc against the provider contract of opp_auth.testing, as far as an external-step provider allows.

Applies as is: unknown configuration keys are refused; an exception inside the provider denies the login.
Adapted: the first step is an ``external`` step, not a form, so "hostile input" is the client's own
submission of that step (it must never finish the flow) and "wrong password" is a login whose callback
never came. The contract's good-login and unsafe-username tests need the provider's login pages, which
test_oidc.py drives with Chromium (browser_login) and identity_from's refusal of unsafe usernames.
"""

from __future__ import annotations

from typing import Any

import pytest
from opp_auth_oidc import OidcAuthProvider, OidcError

from opp_auth.manager import AuthManager
from opp_auth.testing import HOSTILE_STRINGS, LOGIN_CONTEXT, ProviderContract

CONTEXT = {**LOGIN_CONTEXT, "headers": {"Origin": "http://127.0.0.1:8123"}}


async def submit(auth: AuthManager, handler: Any, user_input: dict[str, Any]) -> dict[str, Any]:
    """Start a flow and submit its external step once, as a client would."""
    result = await auth.login_flow.async_init(handler, context=dict(CONTEXT))
    assert result["type"] == "external", result
    return await auth.login_flow.async_configure(result["flow_id"], user_input)


class TestProviderContract(ProviderContract):
    """A provider configured for a running oidc-provider."""

    @pytest.fixture
    async def provider_config(self, op: Any) -> dict[str, Any]:
        client = {
            "client_id": "c",
            "client_secret": "s" * 32,
            "redirect_uris": ["http://127.0.0.1:8123/auth/oidc/callback"],
        }
        provider = await op(clients=[client], accounts={"alice": {"preferred_username": "alice"}})
        return {"type": "oidc", "issuer": provider.issuer, "client_id": "c", "client_secret": "s" * 32}

    @pytest.fixture
    def contract_context(self) -> dict[str, Any]:
        return dict(CONTEXT)

    @pytest.fixture
    def login_steps(self) -> list[dict[str, Any]]:
        return [{}]

    @pytest.fixture
    def wrong_password_steps(self) -> list[dict[str, Any]]:
        return [{}]

    @pytest.fixture
    def break_provider(self) -> Any:
        def breaker(provider: Any, monkeypatch: pytest.MonkeyPatch) -> None:
            async def boom(*args: Any) -> None:
                raise RuntimeError("provider exploded")

            monkeypatch.setattr(provider, "async_authorization_url", boom)
            monkeypatch.setattr(provider, "async_complete", boom)

        return breaker

    async def test_good_login_creates_credentials(self, contract_auth: AuthManager, **_: Any) -> None:
        """Does not apply without the provider's pages: the flow starts with an external step to the provider."""
        provider: OidcAuthProvider = self._provider(contract_auth)
        result = await contract_auth.login_flow.async_init(provider.key, context=dict(CONTEXT))
        assert result["type"] == "external" and result["url"].startswith(provider.issuer + "/")

    async def test_wrong_password_is_invalid_auth(self, contract_auth: AuthManager, **_: Any) -> None:
        """No password here: submitting the flow without a callback having run ends it (login_expired)."""
        provider = self._provider(contract_auth)
        result = await submit(contract_auth, provider.key, {})
        assert result["type"] == "abort" and result["reason"] == "login_expired", result

    @pytest.mark.parametrize("value", HOSTILE_STRINGS, ids=lambda v: repr(v)[:20])
    async def test_hostile_input_never_raises_or_grants(self, contract_auth: AuthManager, value: str, **_: Any) -> None:
        """Whatever the client submits to the external step, it never finishes the flow."""
        provider = self._provider(contract_auth)
        data = {"iss": value, "sub": value, "identity": value, "code": value, "state": value}
        result = await submit(contract_auth, provider.key, data)
        assert result["type"] == "abort", result

    @pytest.mark.parametrize("unsafe", ["\n", "\r", "\x85", "\u2028", "\u202e", "\ufeff", "\x00"], ids=repr)
    async def test_username_with_unsafe_character_never_logs_in(
        self, contract_auth: AuthManager, unsafe: str, **_: Any
    ) -> None:
        """A username claim with a control, format or separator character is refused."""
        provider: OidcAuthProvider = self._provider(contract_auth)
        with pytest.raises(OidcError):
            provider.identity_from({"sub": "alice", "preferred_username": f"alice{unsafe}"})

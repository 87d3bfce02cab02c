"""Fixtures of the metrics plugin tests: an onboarded server with metrics on, and a parsed scrape."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from opp_auth.manager import AuthManager
from opp_auth.testing import OppAuthClient

PASSWORDS = {"alice": "alice-Secret-pw-7731", "bob": "bob-Secret-pw-9920"}
PROVIDER = {
    "type": "insecure_example",
    "users": [{"username": name, "password": pw, "name": name.title()} for name, pw in PASSWORDS.items()],
}
HANDLER = ["insecure_example", None]
PROXIED = {"use_x_forwarded_for": True, "trusted_proxies": ["127.0.0.1"]}


class Scrape:
    """One parsed /metrics answer: samples by (name, labels)."""

    def __init__(self, text: str) -> None:
        """Parse the Prometheus text format (prometheus_client.parser), failing on anything malformed."""
        self.text = text
        self.families = {family.name: family for family in text_string_to_metric_families(text)}
        self.samples = [sample for family in self.families.values() for sample in family.samples]

    def value(self, name: str, **labels: str) -> float:
        """The value of the one sample of name with exactly these labels (0 when absent)."""
        found = [s.value for s in self.samples if s.name == name and s.labels == labels]
        assert len(found) <= 1, (name, labels, found)
        return found[0] if found else 0.0

    def total(self, name: str, **labels: str) -> float:
        """The sum over the samples of name whose labels include these."""
        return sum(s.value for s in self.samples if s.name == name and labels.items() <= s.labels.items())


@pytest.fixture
def onboarded(config_dir: Path) -> Path:
    """A configuration directory whose onboarding is done."""
    storage = config_dir / ".storage"
    storage.mkdir(exist_ok=True)
    (storage / "onboarding").write_text(
        json.dumps(
            {"version": 4, "key": "onboarding", "data": {"done": ["user", "core_config", "analytics", "integration"]}}
        ),
        encoding="utf-8",
    )
    return config_dir


@pytest.fixture
def metrics_server(
    onboarded: Path, opp_auth_factory: Any, opp_auth_client: Any
) -> Callable[..., Awaitable[tuple[AuthManager, OppAuthClient]]]:
    """``await metrics_server(metrics={...}, http={...})``: (auth, client) of a served app with metrics on."""

    async def make(
        metrics: dict[str, Any] | None = None,
        http: dict[str, Any] | None = None,
        mfa_modules: list[dict[str, Any]] | None = None,
        **kwargs: Any,
    ) -> tuple[AuthManager, OppAuthClient]:
        conf = {"enabled": True, **(metrics or {})}
        auth = await opp_auth_factory(
            providers=[PROVIDER], mfa_modules=mfa_modules or [], http={**(http or {}), "metrics": conf}, **kwargs
        )
        return auth, await opp_auth_client(auth)

    return make


async def scrape(client: OppAuthClient, headers: dict[str, str] | None = None) -> Scrape:
    """GET /metrics, which must answer 200 in the Prometheus text format."""
    async with client.request("GET", "/metrics", headers=headers or {}) as resp:
        text = await resp.text()
        assert resp.status == 200, text
        assert resp.headers["Content-Type"].startswith("text/plain; version=0.0.4"), resp.headers
        return Scrape(text)

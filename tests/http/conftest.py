"""Shared fixture of the HTTP tests: an onboarded configuration directory."""

from __future__ import annotations

import json
from pathlib import Path

import pytest


@pytest.fixture
def onboarded(config_dir: Path) -> Path:
    """A configuration directory whose .storage/onboarding says every step is done (SPEC 1.10)."""
    storage = config_dir / ".storage"
    storage.mkdir(exist_ok=True)
    (storage / "onboarding").write_text(
        json.dumps(
            {"version": 4, "key": "onboarding", "data": {"done": ["user", "core_config", "analytics", "integration"]}}
        ),
        encoding="utf-8",
    )
    return config_dir

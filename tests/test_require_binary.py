"""The require_binary helper of tests/conftest.py: skip locally, fail in CI."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

import pytest

MISSING = "opp-auth-no-such-program-xyz"


def test_installed_program_gives_its_path(require_binary: Callable[..., str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(Path(sys.executable).parent))
    assert require_binary("python") == str(Path(sys.executable).parent / "python")


def test_missing_program_skips_naming_the_package(
    require_binary: Callable[..., str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("OPP_AUTH_REQUIRE_INTEGRATION", raising=False)
    with pytest.raises(pytest.skip.Exception, match=f"{MISSING} is not installed .*apt-get install some-package"):
        require_binary(MISSING, "some-package")


def test_missing_program_fails_when_integration_is_required(
    require_binary: Callable[..., str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OPP_AUTH_REQUIRE_INTEGRATION", "1")
    with pytest.raises(pytest.fail.Exception, match="OPP_AUTH_REQUIRE_INTEGRATION=1"):
        require_binary(MISSING)

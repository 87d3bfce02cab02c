"""The command_line provider passes the provider contract suite of opp_auth.testing."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import opp_auth_command_line
import pytest

from opp_auth.testing import ProviderContract


class TestProviderContract(ProviderContract):
    """A real sh script that accepts alice / right-pass."""

    @pytest.fixture
    def provider_config(self, tmp_path: Path) -> dict[str, Any]:
        command = tmp_path / "check-login"
        command.write_text('#!/bin/sh\n[ "$username" = alice ] && [ "$password" = right-pass ]\n')
        command.chmod(0o755)
        return {"type": "command_line", "command": str(command), "meta": True}

    @pytest.fixture
    def login_steps(self) -> list[dict[str, Any]]:
        return [{"username": "alice", "password": "right-pass"}]

    @pytest.fixture
    def wrong_password_steps(self) -> list[dict[str, Any]]:
        return [{"username": "alice", "password": "wrong-pass"}]

    @pytest.fixture
    def break_provider(self) -> Any:
        def breaker(provider: Any, monkeypatch: pytest.MonkeyPatch) -> None:
            async def boom(*args: Any, **kwargs: Any) -> None:
                raise RuntimeError("process spawning exploded")

            monkeypatch.setattr(opp_auth_command_line.programs, "async_run_program", boom)

        return breaker

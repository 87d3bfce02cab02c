"""notify passes the MFA contract of opp_auth.testing, with codes captured by the file platform."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from opp_auth.testing import MfaContract


class TestNotifyContract(MfaContract):
    """notify over the file platform."""

    @pytest.fixture
    def module_config(self) -> dict[str, Any]:
        return {"type": "notify"}

    @pytest.fixture
    def config_blocks(self) -> dict[str, Any]:
        return {"notify": [{"name": "codes", "platform": "file", "filename": "codes.txt"}]}

    @pytest.fixture
    def enrol(self) -> Any:
        async def do(auth: Any, module: Any, user_id: str) -> None:
            await auth.users.async_enable_user_mfa(await auth.users.async_get_user(user_id), module.id, {"notify_service": "codes"})

        return do

    @pytest.fixture
    def valid_code(self, config_dir: Path) -> Any:
        async def code(module: Any, user_id: str) -> dict[str, str]:
            # The code of the login in progress; before any login there is none to know.
            path = config_dir / "codes.txt"
            codes = re.findall(r"\b\d{6}\b", path.read_text()) if path.exists() else []
            return {"code": codes[-1] if codes else "000000"}

        return code

    @pytest.fixture
    def break_module(self) -> Any:
        def breaker(module: Any, monkeypatch: pytest.MonkeyPatch) -> None:
            async def boom(*args: Any) -> bool:
                raise RuntimeError("module exploded")

            monkeypatch.setattr(module, "async_validate", boom)

        return breaker

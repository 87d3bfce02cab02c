"""docs/api.md's commands, run in order against a fresh server: each output the page shows is what comes out."""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import sys
from pathlib import Path
from typing import Any

import pytest

from opp_auth.config import ensure_config_dir, load_config
from opp_auth.plugins import make_plugin_manager
from opp_auth.server import build_auth

PAGE = Path(__file__).resolve().parents[1] / "docs" / "api.md"
BLOCK = re.compile(r"^```sh\n(.*?)^```", re.DOTALL | re.MULTILINE)
PY_OUTPUT = re.compile(r"print\(.*\)\s+# (\S+)$")


def walkthrough() -> tuple[str, list[str]]:
    """The page's shell blocks as one script, and the outputs it shows (comment lines; '...' ends a prefix)."""
    blocks = BLOCK.findall(PAGE.read_text(encoding="utf-8"))
    expected: list[str] = []
    for block in blocks:
        for line in block.splitlines():
            if line.startswith("# "):
                expected.append(line[2:])
            elif match := PY_OUTPUT.search(line):
                expected.append(match.group(1))
    return "set -euo pipefail\n" + "\n".join(blocks), expected


def test_the_page_has_every_part() -> None:
    """Onboarding, login flow, code exchange, refresh, websocket, revoke: each has its commands."""
    script, expected = walkthrough()
    for path in ("/api/onboarding/users", "/auth/login_flow", "grant_type=authorization_code",
                 "grant_type=refresh_token", "/api/websocket", "/auth/revoke"):
        assert path in script, path
    assert len(expected) >= 10


async def test_walkthrough_runs_as_written(tmp_path: Path, opp_auth_client: Any) -> None:
    """A fresh directory (the default configuration.yaml, as `opp-auth serve` writes it), then the page's script."""
    for tool in ("bash", "curl", "jq"):
        if shutil.which(tool) is None:
            message = f"{tool} is not installed (docs/api.md uses it)"
            if os.environ.get("OPP_AUTH_REQUIRE_INTEGRATION") == "1":
                pytest.fail(message, pytrace=False)
            pytest.skip(message)
    ensure_config_dir(tmp_path)
    pm = make_plugin_manager()
    config = load_config(tmp_path, pm)
    client = await opp_auth_client(build_auth(config, pm), config.http)
    script, expected = walkthrough()
    env = {**os.environ, "BASE": client.url("").rstrip("/"),
           # python3 of the page is one with aiohttp: this interpreter's.
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    proc = await asyncio.create_subprocess_exec(
        "bash", "-c", script, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    stdout, stderr = await asyncio.wait_for(proc.communicate(), 120)
    assert proc.returncode == 0, stderr.decode()
    lines = stdout.decode().splitlines()
    assert len(lines) == len(expected), (lines, expected)
    for line, shown in zip(lines, expected, strict=True):
        if "..." in shown:
            assert line.startswith(shown.split("...")[0].rstrip()), (line, shown)
        else:
            assert line == shown, (line, shown)

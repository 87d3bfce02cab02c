"""home-assistant-js-websocket, the websocket client of Home Assistant's web and mobile clients, against opp-auth.

The client comes from npm (tests/homeassistant/js: package.json and
package-lock.json; ``npm ci`` there installs it, .ci/run does). Skipped with
the reason when node or the installed package is missing; failing instead
under OPP_AUTH_REQUIRE_INTEGRATION=1.
"""

from __future__ import annotations

import asyncio
import json
import shutil
from pathlib import Path
from typing import Any

import pyotp
import pytest

from opp_auth.config import load_config
from opp_auth.http.view import AUTH_KEY
from opp_auth.plugins import make_plugin_manager
from opp_auth.server import build_auth
from tests.conftest import unavailable

JS_DIR = Path(__file__).parent / "js"
OWNER_ID = "a1b2c3d4e5f64a7b8c9d0e1f2a3b4c5d"
PASSWORD = "correct horse battery staple"


@pytest.fixture
def node() -> str:
    """The node program, with the client installed."""
    path = shutil.which("node")
    if path is None:
        unavailable("node is not installed (Debian packages nodejs and npm)")
    if not (JS_DIR / "node_modules" / "home-assistant-js-websocket" / "package.json").exists():
        unavailable(f"home-assistant-js-websocket is not installed: run `npm ci` in {JS_DIR}")
    return str(path)


async def run_client(node: str, payload: dict[str, Any]) -> dict[str, Any]:
    """Run client.mjs with payload on stdin; its JSON report."""
    proc = await asyncio.create_subprocess_exec(
        node, str(JS_DIR / "client.mjs"), cwd=JS_DIR,
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    stdout, stderr = await asyncio.wait_for(proc.communicate(json.dumps(payload).encode()), 60)
    assert proc.returncode == 0, stderr.decode()
    return dict(json.loads(stdout))


async def test_home_assistant_js_websocket_session(ha_dir: dict[str, Any], opp_auth_client: Any, node: str) -> None:
    """Refresh, websocket auth, commands, a long-lived token, then auth.revoke(): the session is over for real."""
    pm = make_plugin_manager()
    config = load_config(ha_dir["dir"], pm)
    client = await opp_auth_client(build_auth(config, pm), config.http)
    base = client.url("").rstrip("/")
    client_id = f"{base}/"
    status, step = await client.login.start(["homeassistant", None], client_id=client_id, redirect_uri=f"{base}/?auth_callback=1")
    status, step = await client.login.step(step["flow_id"], client_id=client_id, username="paulus", password=PASSWORD)
    status, step = await client.login.step(step["flow_id"], client_id=client_id, code=pyotp.TOTP(ha_dir["totp"][OWNER_ID]).now())
    status, tokens = await client.login.token(grant_type="authorization_code", client_id=client_id, code=step["result"])
    assert status == 200, tokens

    report = await run_client(node, {"hassUrl": base, "clientId": client_id, **tokens})

    assert report["expired_before"] is True and report["refreshed"] is True and report["saved_tokens"] == 1
    assert report["supported_features"] is None
    assert report["user"] == {"id": OWNER_ID, "name": "Paulus", "is_owner": True, "is_admin": True}
    assert report["ping"] is True
    assert {"type": "normal", "is_current": True, "auth_provider_type": "homeassistant"} in report["refresh_tokens"]
    assert report["unknown_command"] == "unknown_command"
    assert report["long_lived_user"] == OWNER_ID
    assert report["saved_after_revoke"] is None
    assert report["refresh_after_revoke"] == "ERR_INVALID_AUTH"
    assert report["access_after_revoke"] == "ERR_INVALID_AUTH"
    auth = client.app[AUTH_KEY]
    assert auth.store.get_refresh_token_by_token(tokens["refresh_token"]) is None

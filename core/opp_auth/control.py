"""The local control socket: the command line asks a running server what only it knows.

Login lockouts live in the server's memory (opp_auth.throttle), so
``opp-auth lockouts list`` cannot read them from a file. While serving, the
server listens on the Unix socket ``<config>/.storage/.opp-auth.sock``, made
readable and writable by its owner only, the same people who can read the
``.storage`` files. It answers one read-only request:

GET /lockouts
    The current lockouts, as the websocket command ``config/auth/lockouts/list``
    gives them: ``[{"type", "ip_address", "username", "failures", "retry_after"}]``.

Nothing else is served there; changes still go through the websocket API.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

from aiohttp import web

from .storage import STORAGE_DIR

_LOGGER = logging.getLogger(__name__)

SOCKET_NAME = ".opp-auth.sock"
# sockaddr_un.sun_path holds 108 bytes with the terminating NUL.
MAX_SOCKET_PATH = 107


def socket_path(config_dir: str | os.PathLike[str]) -> Path:
    """Where a server on config_dir listens."""
    return Path(config_dir) / STORAGE_DIR / SOCKET_NAME


async def async_start(config_dir: str | os.PathLike[str], throttle: Any) -> web.AppRunner | None:
    """Listen on the control socket (call while holding the directory lock); None when the path is too long."""
    path = socket_path(config_dir)
    if len(os.fsencode(path)) > MAX_SOCKET_PATH:
        _LOGGER.warning("No control socket: %s is longer than a Unix socket path may be", path)
        return None

    async def lockouts(request: web.Request) -> web.Response:
        """GET /lockouts."""
        return web.json_response(throttle.lockouts())

    app = web.Application()
    app.router.add_get("/lockouts", lockouts)
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    # A socket left by a crash: only the holder of the directory lock gets here, so it is stale.
    path.unlink(missing_ok=True)
    await web.UnixSite(runner, str(path)).start()
    os.chmod(path, 0o600)
    return runner


async def async_stop(config_dir: str | os.PathLike[str], runner: web.AppRunner | None) -> None:
    """Stop listening and remove the socket."""
    if runner is None:
        return
    await runner.cleanup()
    socket_path(config_dir).unlink(missing_ok=True)


async def async_ask(config_dir: str | os.PathLike[str], what: str) -> Any:
    """GET /<what> from the server running on config_dir (raises OSError when none answers)."""
    import aiohttp

    path = socket_path(config_dir)
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist")
    async with (
        aiohttp.ClientSession(connector=aiohttp.UnixConnector(path=str(path))) as session,
        session.get(f"http://opp-auth/{what}", timeout=aiohttp.ClientTimeout(total=10)) as resp,
    ):
        if resp.status != 200:
            raise OSError(f"the server answered {resp.status}")
        return json.loads(await resp.text())

"""The aiohttp application: routes, the middleware pipeline, onboarding and plugin routes."""

from __future__ import annotations

import logging
from typing import Any

import aiohttp
from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

from ..manager import AuthManager
from ..throttle import PLUGIN_NAME as THROTTLE_PLUGIN_NAME
from ..throttle import TOPIC as THROTTLE_TOPIC
from ..throttle import LoginThrottle
from . import auth_views, onboarding, openapi, pages
from .application import PipelineApplication
from .ban import TOPIC as BAN_TOPIC
from .ban import BanManager
from .ban_commands import BAN_PLUGIN_NAME
from .middleware import build_pipeline, check_routes
from .view import AUTH_KEY, CLIENT_SESSION_KEY, CONFIG_KEY
from .websocket_commands import setup_websocket

_LOGGER = logging.getLogger(__name__)

MAX_BODY_SIZE = 16 * 1024 * 1024
BAN_KEY: web.AppKey[BanManager] = web.AppKey("opp_auth_ban")
THROTTLE_KEY: web.AppKey[LoginThrottle] = web.AppKey("opp_auth_throttle")


class MalformedRequestFilter(logging.Filter):
    """aiohttp logs a traceback for every request its parser refuses (a 400 it answers itself).

    A malformed or over-long request line or header is the client's doing, not
    a server fault: it is logged as one warning line, without the traceback.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        """Rewrite parser refusals; let everything else through unchanged."""
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, HttpProcessingError):
            record.msg = f"{record.getMessage()}: {exc.code} {exc.message}"
            record.args = None
            record.exc_info = record.exc_text = None
            record.levelno, record.levelname = logging.WARNING, logging.getLevelName(logging.WARNING)
        return True


_MALFORMED_REQUEST_FILTER = MalformedRequestFilter()


def create_app(auth: AuthManager, http_config: dict[str, Any] | None = None) -> web.Application:
    """An application serving auth's APIs and pages; auth is set up on start-up."""
    http_config = http_config if http_config is not None else auth.http_config
    ban = BanManager(
        auth.config_dir,
        threshold=http_config.get("login_attempts_threshold", -1),
        enabled=http_config.get("ip_ban_enabled", True),
        allowlist=http_config.get("ban_allowlist") or (),
    )
    throttle = LoginThrottle.from_http_config(http_config)
    ban.emit = throttle.emit = auth.events.emit
    # With several servers on one storage, counters and bans are every server's (opp_auth.ephemeral).
    throttle.share(auth.ephemeral)
    ban.share(auth.ephemeral)
    app = PipelineApplication(client_max_size=MAX_BODY_SIZE)
    logging.getLogger("aiohttp.server").addFilter(_MALFORMED_REQUEST_FILTER)  # once: filters are a set
    app[AUTH_KEY] = auth
    app[CONFIG_KEY] = http_config
    app[BAN_KEY] = ban
    app[THROTTLE_KEY] = throttle
    onboard = onboarding.Onboarding(auth)
    app[onboarding.ONBOARDING_KEY] = onboard
    app[auth_views.ONBOARDED_KEY] = onboard.user_onboarded
    if not auth.pm.is_registered(ban):
        auth.pm.register(ban, name=BAN_PLUGIN_NAME)
    if not auth.pm.is_registered(throttle):
        auth.pm.register(throttle, name=THROTTLE_PLUGIN_NAME)

    auth_views.add_routes(app)
    onboarding.add_routes(app)
    pages.add_routes(app)
    openapi.add_routes(app)
    setup_websocket(app, auth)
    auth.pm.hook.opp_auth_register_routes(app=app, auth=auth.context)
    # Before every middleware: a plugin's own middleware already sees the authenticated user.
    app.set_pipeline(build_pipeline(auth, http_config, ban))
    check_routes(app)

    async def on_startup(app: web.Application) -> None:
        """Load data and open resources before serving."""
        ban.load()
        await auth.async_setup()
        # What the other servers counted and banned before this one started (nothing for a memory state).
        await auth.ephemeral.async_replay(THROTTLE_TOPIC, max(throttle.reset_after, ban.window))
        await auth.ephemeral.async_replay(BAN_TOPIC, 10 * 365 * 86400.0)
        await onboard.async_load()
        app[CLIENT_SESSION_KEY] = aiohttp.ClientSession()

    async def on_cleanup(app: web.Application) -> None:
        """Flush and close."""
        session = app.get(CLIENT_SESSION_KEY)
        if session is not None:
            await session.close()
        await auth.async_shutdown()
        auth.pm.unregister(ban)
        auth.pm.unregister(throttle)

    app.on_startup.append(on_startup)
    app.on_cleanup.append(on_cleanup)
    return app

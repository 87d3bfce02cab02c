"""Build everything from a configuration directory and serve it."""

from __future__ import annotations

import asyncio
import logging
import signal
from datetime import timedelta
from pathlib import Path
from typing import Any

from aiohttp import web

from . import control
from .config import Config, load_config
from .http.app import THROTTLE_KEY, create_app
from .manager import AuthManager
from .plugins import OppAuthPluginManager, make_plugin_manager
from .storage import ConfigDirLock, remove_stale_temporaries

_LOGGER = logging.getLogger(__name__)


def build_auth(
    config: Config, pm: OppAuthPluginManager, *, require_provider: bool = True, **overrides: Any
) -> AuthManager:
    """An AuthManager for a validated configuration, as the server runs it; overrides replace its options.

    The one place that turns a Config into manager options (the server, the CLI's copy check
    and opp_auth.testing all build through it).
    """
    if require_provider and not config.providers:
        raise RuntimeError("No auth provider is configured")
    options: dict[str, Any] = {
        "provider_configs": config.providers,
        "mfa_configs": config.mfa_modules,
        "http_config": config.http,
        "config_blocks": config.blocks,
        "refresh_token_expiry": expiry_of(config),
        "mfa_required": config.mfa_required,
        "audit_config": config.audit,
    }
    options.update(overrides)
    if "storage" not in options:
        options["storage"] = config.storage_class(config.storage, str(config.config_dir))
    return AuthManager(str(config.config_dir), pm, **options)


def expiry_of(config: Config) -> timedelta | None:
    """The idle expiry of refresh tokens (None: never)."""
    days = config.refresh_token_expiry_days
    return None if days is None else timedelta(days=days)


def no_provider_installed_message(pm: OppAuthPluginManager) -> str | None:
    """A clear message when no provider plugin is installed at all."""
    if pm.provider_classes:
        return None
    return (
        "No auth provider is installed, so nobody could log in. Install one, for example "
        "the local username/password provider: pip install opp-auth-local"
    )


async def async_serve(
    config_dir: Path, host: str | None = None, port: int | None = None, pm: OppAuthPluginManager | None = None
) -> None:
    """Serve until SIGINT/SIGTERM."""
    pm = pm or make_plugin_manager()
    config = load_config(config_dir, pm)
    # Handlers first: a stop asked for while starting must still end cleanly.
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    # The directory lock keeps a second server off the same .storage files; servers that share a
    # database (storage: postgresql) may share one configuration directory.
    lock = ConfigDirLock(config_dir) if not config.storage_class.shares_config_dir else None
    if lock is not None:
        lock.acquire("server")
    try:
        if lock is not None:
            for name in remove_stale_temporaries(config_dir):
                _LOGGER.warning("Removed %s, left in .storage by a crash during a write", name)
        auth = build_auth(config, pm)
        app = create_app(auth, config.http)
        runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await runner.setup()
        hosts = host or config.http.get("server_host", "0.0.0.0")
        bind_port = port or config.http.get("server_port", 8123)
        ssl_context = _ssl_context(config.http)
        for bind_host in [hosts] if isinstance(hosts, str) else hosts:
            site = web.TCPSite(runner, bind_host, bind_port, ssl_context=ssl_context, reuse_address=True)
            await site.start()
        control_runner = await control.async_start(config_dir, app[THROTTLE_KEY]) if lock is not None else None
        scheme = "https" if ssl_context else "http"
        shown = hosts if isinstance(hosts, str) else hosts[0]
        _LOGGER.warning("opp-auth %s serving %s on %s://%s:%s/", auth.version, config_dir, scheme, shown, bind_port)
        await stop.wait()
        await control.async_stop(config_dir, control_runner)
        await runner.cleanup()
    finally:
        if lock is not None:
            lock.release()


def _ssl_context(http: dict[str, Any]) -> Any:
    """An SSL context when ssl_certificate is configured."""
    cert = http.get("ssl_certificate")
    if not cert:
        return None
    import ssl

    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    if http.get("ssl_profile", "modern") == "modern":
        context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(cert, http.get("ssl_key"))
    if http.get("ssl_peer_certificate"):
        context.verify_mode = ssl.CERT_REQUIRED
        context.load_verify_locations(http["ssl_peer_certificate"])
    return context

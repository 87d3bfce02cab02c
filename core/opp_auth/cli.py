"""The opp-auth command: serve, check-config, plugins, auth ..., reset."""

from __future__ import annotations

import argparse
import asyncio
import getpass
import json
import logging
import os
import shutil
import sys
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import voluptuous as vol

from . import __version__, audit_cli
from .audit import AUDIT_SCHEMA, audit_config, record_offline
from .config import ensure_config_dir, load_config
from .events import ADDRESS_UNBANNED, AuthEvent, Origin, set_origin
from .manager import AuthManager
from .models import GROUP_ID_ADMIN, GROUP_ID_READ_ONLY, GROUP_ID_USER
from .plugins import PluginError, make_plugin_manager
from .providers import LOCAL_PROVIDER_TYPES
from .storage import STORAGE_DIR, ConfigDirLock, StorageError, read_envelope
from .yaml import ConfigError

_T = TypeVar("_T")

DEFAULT_CONFIG_DIR = os.path.join(os.path.expanduser("~"), ".openpeerpower")
LOCAL_TYPE = "openpeerpower"
RESET_FILES = (
    "auth",
    "auth_provider.openpeerpower",
    "auth_provider.homeassistant",
    "onboarding",
    "hassio",
    "oppio",
    "cloud",
)


class CliError(Exception):
    """A message for the person at the terminal; exit code 1."""


def _config_dir(args: argparse.Namespace) -> Path:
    """The -c directory, relative to the current one."""
    return Path(os.path.abspath(os.path.expanduser(args.config)))


def cmd_serve(args: argparse.Namespace) -> int:
    """Run the server."""
    from .server import async_serve, no_provider_installed_message

    config_dir = _config_dir(args)
    ensure_config_dir(config_dir)
    pm = args.pm
    message = no_provider_installed_message(pm)
    if message:
        raise CliError(message)
    asyncio.run(async_serve(config_dir, args.host, args.port, pm))
    return 0


def cmd_check_config(args: argparse.Namespace) -> int:
    """Validate configuration.yaml without serving."""
    from .server import no_provider_installed_message

    pm = args.pm
    message = no_provider_installed_message(pm)
    if message:
        raise CliError(message)
    config = load_config(_config_dir(args), pm)
    print(f"Configuration valid: {len(config.providers)} auth provider(s), {len(config.mfa_modules)} MFA module(s).")
    for cls, conf in config.providers:
        print(f"  provider {cls.TYPE}" + (f" (id {conf['id']})" if conf.get("id") else ""))
    for mcls, conf in config.mfa_modules:
        print(f"  mfa module {mcls.TYPE} (id {conf.get('id') or mcls.TYPE})")
    print(f"Read from {config.core_block}: and http:; HTTP API generation: {config.http['auth_api']}.")
    if config.unused_blocks:
        # Accepted, so a whole Home Assistant or Open Peer Power configuration.yaml loads; named, so
        # nothing meant for the auth system is silently ignored.
        names = ", ".join(f"{name}:" for name in config.unused_blocks)
        print(f"Not used by opp-auth (accepted and ignored): {names}")
    return 0


def cmd_plugins(args: argparse.Namespace) -> int:
    """List installed plugins."""
    pm = args.pm
    pm.provider_classes  # noqa: B018 - collecting fills in the types each plugin provides
    pm.mfa_classes  # noqa: B018
    rows = []
    for info in pm.infos.values():
        if info.name.startswith("opp_auth."):
            continue
        rows.append(
            {
                "name": info.name,
                "distribution": info.distribution,
                "version": info.version,
                "provider_types": info.provider_types,
                "mfa_types": info.mfa_types,
                "hooks": info.hooks,
                "error": info.error,
            }
        )
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    if not rows:
        print("No plugins installed. Install at least an auth provider, e.g. pip install opp-auth-local")
        return 0
    for row in rows:
        types = ", ".join([f"provider {t}" for t in row["provider_types"]] + [f"mfa {t}" for t in row["mfa_types"]])
        print(f"{row['name']}: {row['distribution']} {row['version']}" + (f" [{types}]" if types else ""))
        if row["hooks"]:
            print(f"    hooks: {', '.join(row['hooks'])}")
        if row["error"]:
            print(f"    LOAD ERROR: {row['error']}")
    return 0


def _read_password(args: argparse.Namespace, prompt: str = "Password: ") -> str:
    """A password from a prompt (asked twice) or one line of standard input."""
    if args.password_stdin or not sys.stdin.isatty():
        line = sys.stdin.readline()
        if not line:
            raise CliError("No password on standard input")
        return line.rstrip("\r\n")
    first = getpass.getpass(prompt)
    if getpass.getpass("Repeat password: ") != first:
        raise CliError("Passwords don't match")
    return first


def _local_type(config_dir: Path, pm: Any) -> str:
    """The local provider's type in this directory: homeassistant in a Home Assistant one."""
    try:
        config = load_config(config_dir, pm)
    except (ConfigError, PluginError, OSError):
        # No usable configuration.yaml: go by the logins file that exists.
        storage = config_dir / STORAGE_DIR
        only_ha = (storage / "auth_provider.homeassistant").exists() and not (
            storage / "auth_provider.openpeerpower"
        ).exists()
        return "homeassistant" if only_ha else LOCAL_TYPE
    for cls, _conf in config.providers:
        if cls.TYPE in LOCAL_PROVIDER_TYPES:
            return str(cls.TYPE)
    return "homeassistant" if config.core_block == "homeassistant" else LOCAL_TYPE


def _audit_config(config_dir: Path, pm: Any) -> dict[str, Any] | None:
    """The audit: block of configuration.yaml (defaults when it cannot be read: the command is still audited)."""
    try:
        return load_config(config_dir, pm).audit
    except (ConfigError, PluginError, OSError):
        return None


def _run_local(args: argparse.Namespace, action: Callable[[AuthManager, Any], Awaitable[int]]) -> int:
    """Run action with a minimal manager (local provider only) on the directory's storage.

    With the JSON store the directory lock is held (no server may run); with a shared storage
    (PostgreSQL) servers may run: they hear of the change like of any other server's.
    """
    config_dir = _config_dir(args)
    if not config_dir.is_dir():
        raise CliError(f"{config_dir} does not exist")
    pm = args.pm
    local_type = _local_type(config_dir, pm)
    cls = pm.provider_classes.get(local_type)
    if cls is None:
        raise CliError("The auth commands need the local provider: pip install opp-auth-local")
    storage = _configured_storage(config_dir, pm)
    lock = None if storage is not None and storage.shares_config_dir else ConfigDirLock(config_dir)
    if lock is not None:
        lock.acquire("auth command")
    try:
        # The CLI has not read the server's expiry policy, so it removes no tokens itself.
        auth = AuthManager(
            str(config_dir),
            pm,
            provider_configs=[(cls, {"type": local_type})],
            purge_expired_tokens=False,
            storage=storage,
            audit_config=_audit_config(config_dir, pm),
        )

        async def run() -> int:
            """Set up, act, flush."""
            set_origin(Origin(via="cli"))  # events of this command say so
            await auth.async_setup()
            try:
                return await action(auth, auth.registry.get_auth_provider(local_type, None))
            finally:
                await auth.async_shutdown()

        return asyncio.run(run())
    finally:
        if lock is not None:
            lock.release()


def _configured_storage(config_dir: Path, pm: Any) -> Any:
    """The storage backend configuration.yaml names (None: the JSON files, or no usable configuration)."""
    try:
        config = load_config(config_dir, pm)
    except (ConfigError, PluginError, OSError):
        return None
    if config.storage["type"] == "json":
        return None
    return config.storage_class(config.storage, str(config_dir))


def _audit_reader(args: argparse.Namespace) -> Any:
    """The configured storage's audit sink, which also reads (opp_auth_audit_sink: PostgreSQL), or None: the files."""
    config_dir = _config_dir(args)
    storage = _configured_storage(config_dir, args.pm)
    if storage is None:
        return None
    # Read even when this directory's server writes no audit log now (enabled: false).
    conf = {**audit_config(_audit_config(config_dir, args.pm)), "enabled": True}
    manager = AuthManager(str(config_dir), args.pm, storage=storage, audit_config=conf)
    sink = manager.audit.sink if manager.audit is not None else None
    if all(callable(getattr(sink, name, None)) for name in ("read", "recorded_head", "describe", "user_ids_named")):
        return sink
    return None


def cmd_auth_list(args: argparse.Namespace) -> int:
    """List local usernames; read-only, so it works while a server runs."""
    config_dir = _config_dir(args)
    if not config_dir.is_dir():
        raise CliError(f"{config_dir} does not exist")
    if _configured_storage(config_dir, args.pm) is not None:

        async def listing(auth: AuthManager, provider: Any) -> int:
            usernames = [u["username"] for u in provider.data.users]
            for username in usernames:
                print(username)
            print()
            print(f"Total users: {len(usernames)}")
            return 0

        return _run_local(args, listing)
    key = f"auth_provider.{_local_type(config_dir, args.pm)}"
    # Writers replace the file by an atomic rename, so reading without the lock sees a whole file.
    envelope = read_envelope(config_dir / STORAGE_DIR / key)
    data = envelope["data"] if envelope is not None else None
    users = data.get("users") if isinstance(data, dict) else None
    usernames = [u["username"] for u in users or [] if isinstance(u, dict) and isinstance(u.get("username"), str)]
    for username in usernames:
        print(username)
    print()
    print(f"Total users: {len(usernames)}")
    return 0


def cmd_auth_add(args: argparse.Namespace) -> int:
    """Add a local login and its user."""
    password = _read_password(args)

    async def action(auth: AuthManager, provider: Any) -> int:
        if provider.data.get(args.username) is not None:
            print("Username already exists!")
            return 1
        if args.owner and auth.users.owner() is not None:
            raise CliError("An owner exists already; add the user without --owner")
        try:
            await provider.async_add_auth(args.username, password)
        except ValueError as err:
            raise CliError(str(err)) from err
        credentials = await provider.async_get_or_create_credentials({"username": args.username})
        group = GROUP_ID_ADMIN if args.owner else args.group
        await auth.users.async_create_user(
            args.name or args.username, [group], is_owner=args.owner, credentials=credentials
        )
        print("Auth created")
        return 0

    return _run_local(args, action)


def cmd_auth_validate(args: argparse.Namespace) -> int:
    """Check a password."""
    password = _read_password(args)

    async def action(auth: AuthManager, provider: Any) -> int:
        from .providers import InvalidAuthError

        try:
            await provider.async_validate_login(args.username, password)
        except InvalidAuthError:
            print("Auth invalid")
            return 1
        print("Auth valid")
        return 0

    return _run_local(args, action)


def cmd_auth_change_password(args: argparse.Namespace) -> int:
    """Set a new password."""
    password = _read_password(args, "New password: ")

    async def action(auth: AuthManager, provider: Any) -> int:
        if provider.data.get(args.username) is None:
            print("User not found")
            return 1
        try:
            await provider.async_change_password(args.username, password)
        except ValueError as err:
            raise CliError(str(err)) from err
        print("Password changed")
        return 0

    return _run_local(args, action)


def cmd_auth_delete(args: argparse.Namespace) -> int:
    """Remove a local login (and the user it belongs to, if it has no other credentials)."""

    async def action(auth: AuthManager, provider: Any) -> int:
        if provider.data.get(args.username) is None:
            print("User not found")
            return 1
        cred = provider.async_find_credentials({"username": args.username})
        user = auth.store.user_for_credentials(cred) if cred is not None else None
        if user is not None and user.is_owner:
            raise CliError("Refusing to delete the owner's login; use opp-auth reset to start afresh")
        await provider.async_remove_auth(args.username)
        if user is not None and not user.credentials:
            await auth.users.async_remove_user(user)
        print("Auth deleted")
        return 0

    return _run_local(args, action)


def cmd_reset(args: argparse.Namespace) -> int:
    """The lost-owner procedure: move the auth files into a backup folder."""
    config_dir = _config_dir(args)
    storage = config_dir / STORAGE_DIR
    # A journal goes with its file (a crash leaves one: .auth.journal), or it would bring changes back.
    present = [entry for name in RESET_FILES for entry in (name, f".{name}.journal") if (storage / entry).exists()]
    if not present:
        print("Nothing to reset: no authentication data found.")
        return 0
    if not args.yes:
        if not sys.stdin.isatty():
            raise CliError("Refusing to reset without --yes (no terminal to ask)")
        answer = input(f"Delete {', '.join(present)} from {storage}? A backup is kept. [y/N] ")
        if answer.strip().lower() not in ("y", "yes"):
            print("Nothing changed.")
            return 1
    lock = ConfigDirLock(config_dir)
    lock.acquire("reset")
    try:
        backup = storage / f"backup-{datetime.now().strftime('%Y%m%d-%H%M%S')}"
        backup.mkdir()
        for name in present:
            shutil.move(str(storage / name), str(backup / name))
    finally:
        lock.release()
    print(f"Removed {', '.join(present)}; backup in {backup}")
    print("Start the server and open it in a browser to create a new owner.")
    return 0


# ---- bans and lockouts ------------------------------------------------------------------------
#
# ip_bans.yaml is read by a server at start and appended to while it runs, so
# `bans remove` (which rewrites it) needs the server stopped: the running
# server would not see the change and could append to the file meanwhile. A
# running server is told through the admin websocket commands instead. Login
# lockouts live only in a server's memory (a restart clears them), so the
# lockouts commands can only say so or point to those commands.

RUNNING_SERVER_BANS = (
    "A server is running on {dir}; it would neither see nor keep this change. "
    "Remove the ban through its websocket API as an administrator "
    "(config/auth/bans/remove), or stop the server first."
)
RUNNING_SERVER_LOCKOUTS = (
    "Login lockouts live in the memory of the server running on {dir}. Clear them "
    "through its websocket API as an administrator (config/auth/lockouts/clear), "
    "or restart the server, which clears them all."
)
UNREACHABLE_SERVER_LOCKOUTS = (
    "A server is running on {dir} but its control socket ({socket}) did not answer: {error}. "
    "List lockouts through its websocket API as an administrator (config/auth/lockouts/list)."
)
NO_LOCKOUTS = (
    "No server is running on {dir}, so nobody is locked out: login lockouts live in a running "
    "server's memory and end when it stops. Run this while the server runs to see them."
)


def _bans(config_dir: Path) -> Any:
    """The bans of ip_bans.yaml (bad entries are logged and skipped)."""
    from .http.ban import BanManager

    bans = BanManager(config_dir, threshold=-1)
    bans.load()
    return bans


def _holding_lock(config_dir: Path, purpose: str, running_message: str) -> ConfigDirLock:
    """The directory lock, or a CliError explaining what to do while a server runs."""
    if not config_dir.is_dir():
        raise CliError(f"{config_dir} does not exist")
    lock = ConfigDirLock(config_dir)
    try:
        lock.acquire(purpose)
    except StorageError:
        raise CliError(running_message.format(dir=config_dir)) from None
    return lock


def cmd_bans_list(args: argparse.Namespace) -> int:
    """Print the banned addresses of ip_bans.yaml (read-only, so a running server does not matter)."""
    config_dir = _config_dir(args)
    if not config_dir.is_dir():
        raise CliError(f"{config_dir} does not exist")
    bans = _bans(config_dir).list_bans()
    for ban in bans:
        print(f"{ban['ip_address']}  banned at {ban['banned_at']}")
    if bans:
        print()
    print(f"Total bans: {len(bans)}")
    return 0


def cmd_bans_remove(args: argparse.Namespace) -> int:
    """Lift a ban by rewriting ip_bans.yaml (server stopped)."""
    import ipaddress

    try:
        address = str(ipaddress.ip_address(args.ip_address))
    except ValueError:
        raise CliError(f"{args.ip_address} is not an IP address") from None
    config_dir = _config_dir(args)
    with _holding_lock(config_dir, "bans remove", RUNNING_SERVER_BANS):
        bans = _bans(config_dir)
        lifted: list[Any] = []
        bans.emit = lambda event_type, **values: lifted.append(
            AuthEvent(type=event_type, time=time.time(), via="cli", **values)
        )
        # With a shared storage the ban lives in the database too: lifted there first (every running
        # server applies it, and one started later does not bring it back from the database).
        in_database = _lift_shared_ban(config_dir, args.pm, address)
        if not bans.remove_ban(address):
            if not in_database:
                print(f"{address} is not banned")
                return 1
            bans.emit(ADDRESS_UNBANNED, details={"ip_address": address})
        # With a shared storage (servers may run) the record goes where theirs go: the database.
        record_offline(config_dir, _audit_config(config_dir, args.pm), lifted, sink=_audit_reader(args))
    print(f"Ban of {address} removed")
    return 0


def _shared_storage(config_dir: Path, pm: Any) -> tuple[Any, Any, Any] | None:
    """(configuration, backend, its ephemeral state) when configuration.yaml names a storage several
    servers share; None otherwise (the JSON files, or no usable configuration)."""
    try:
        config = load_config(config_dir, pm)
    except (ConfigError, PluginError, OSError):
        return None
    backend = config.storage_class(config.storage, str(config_dir))
    state = backend.ephemeral_state()
    return (config, backend, state) if state.shared else None


def _run_on(backend: Any, work: Callable[[], Awaitable[_T]]) -> _T:
    """Open backend, await work(), close it; a storage failure is the command's error."""

    async def run() -> _T:
        await backend.async_open()
        try:
            return await work()
        finally:
            await backend.async_close()

    try:
        return asyncio.run(run())
    except StorageError as err:
        raise CliError(str(err)) from None


def _lift_shared_ban(config_dir: Path, pm: Any, address: str) -> bool:
    """With a shared storage, lift address's ban in it (a retained event); whether it was banned there."""
    from .http.ban import TOPIC, BanManager

    shared_storage = _shared_storage(config_dir, pm)
    if shared_storage is None:
        return False
    _config, backend, state = shared_storage

    async def lift() -> bool:
        """Replay the database's bans; publish the lift if it holds one."""
        shared = BanManager(config_dir, threshold=-1)  # not loaded: the database's bans only
        shared.share(state)
        await state.async_replay(TOPIC, 10 * 365 * 86400.0)
        if address not in shared.banned:
            return False
        event = {"op": "unban", "ip": address, "at": datetime.now(UTC).isoformat()}
        await state.async_publish_retained(TOPIC, event, address)
        return True

    return _run_on(backend, lift)


def _server_running(config_dir: Path) -> bool:
    """Whether a server holds the directory (probing the lock releases it at once)."""
    if not config_dir.is_dir():
        raise CliError(f"{config_dir} does not exist")
    lock = ConfigDirLock(config_dir)
    try:
        lock.acquire("lockouts")
    except StorageError:
        return True
    lock.release()
    return False


def _shared_lockouts(config_dir: Path, pm: Any, *, clear: bool = False) -> list[dict[str, Any]] | None:
    """The lockouts of every server sharing the configured storage (cleared first when clear); None: not shared.

    Each server applies the failure events all of them publish (opp_auth.throttle), so replaying
    those of the last reset_after_seconds here gives what every server holds; a clear is published
    like a server's, and every server applies it.
    """
    from .throttle import TOPIC, LoginThrottle

    if not config_dir.is_dir():
        raise CliError(f"{config_dir} does not exist")
    shared_storage = _shared_storage(config_dir, pm)
    if shared_storage is None:
        return None
    config, backend, state = shared_storage
    throttle = LoginThrottle.from_http_config(config.http)
    throttle.share(state)

    async def replay() -> list[dict[str, Any]]:
        """Replay, maybe clear, list."""
        await state.async_replay(TOPIC, throttle.reset_after)
        if clear:
            await state.async_publish(TOPIC, {"op": "clear", "ip": None, "username": None})
            throttle.apply_shared({"op": "clear", "ip": None, "username": None})
        return throttle.lockouts()

    return _run_on(backend, replay)


def _print_lockouts(lockouts: list[dict[str, Any]]) -> None:
    """One line per lockout, then the total."""
    for item in lockouts:
        who = " ".join(
            part
            for part in (
                f"address {item['ip_address']}" if item.get("ip_address") else "",
                f"user {item['username']}" if item.get("username") else "",
            )
            if part
        )
        print(f"{who} ({item['type']}): {item['failures']} failures, locked for {item['retry_after']} s more")
    if lockouts:
        print()
    print(f"Total lockouts: {len(lockouts)}")


def cmd_lockouts_list(args: argparse.Namespace) -> int:
    """Ask the running server for its lockouts (over the control socket); without one, say why there are none.

    With a shared storage (several servers), the lockouts of every server, read from the storage.
    """
    from . import control

    config_dir = _config_dir(args)
    shared = _shared_lockouts(config_dir, args.pm)
    if shared is not None:
        _print_lockouts(shared)
        return 0
    if not _server_running(config_dir):
        print(NO_LOCKOUTS.format(dir=config_dir))
        return 0
    try:
        lockouts = asyncio.run(control.async_ask(config_dir, "lockouts"))
    except (OSError, ValueError) as err:
        socket = control.socket_path(config_dir)
        raise CliError(UNREACHABLE_SERVER_LOCKOUTS.format(dir=config_dir, socket=socket, error=err)) from None
    _print_lockouts(lockouts)
    return 0


def cmd_lockouts_clear(args: argparse.Namespace) -> int:
    """Without a running server there is nothing to clear; with one, where to go.

    With a shared storage (several servers), every server's lockouts are cleared.
    """
    config_dir = _config_dir(args)
    shared = _shared_lockouts(config_dir, args.pm, clear=True)
    if shared is not None:
        print("Cleared the login lockouts of every server using this storage")
        return 0
    with _holding_lock(config_dir, "lockouts", RUNNING_SERVER_LOCKOUTS):
        print(NO_LOCKOUTS.format(dir=config_dir))
    return 0


# ---- storage copy ------------------------------------------------------------------------------

_URL_TYPES = {"postgresql": "postgresql", "postgres": "postgresql"}


def _backend_for_url(pm: Any, url: str, config_dir: Path) -> Any:
    """The storage backend a URL names (postgresql://...), from its installed plugin."""
    from urllib.parse import urlsplit

    type_name = _URL_TYPES.get(urlsplit(url).scheme)
    if type_name is None:
        raise CliError(f"{urlsplit(url).scheme or url!r} is not a storage URL; use postgresql://user@host/database")
    cls = pm.store_classes.get(type_name)
    if cls is None:
        raise CliError(f"Storage type {type_name} needs its plugin: pip install opp-auth-{type_name}")
    try:
        conf = cls.CONFIG_SCHEMA({"type": type_name, "url": url})
    except vol.Invalid as err:
        raise CliError(f"Invalid {type_name} URL: {err}") from None
    return cls(conf, str(config_dir))


def _summary(exported: dict[str, Any]) -> dict[str, Any]:
    """What a copy is checked by: entries per list of the auth data, and the documents' keys and versions."""
    auth = exported.get("auth") or {}
    counts = {name: len(auth.get(name) or []) for name in ("users", "groups", "credentials", "refresh_tokens")}
    return {"auth": counts, "documents": {k: v[0] for k, v in sorted((exported.get("documents") or {}).items())}}


def _canonical(exported: dict[str, Any]) -> str:
    """The exported data as one comparable text (entries by id, keys sorted)."""
    auth = dict(exported.get("auth") or {})
    for name in ("users", "groups", "credentials", "refresh_tokens"):
        auth[name] = sorted(auth.get(name) or [], key=lambda e: str(e.get("id")))
    documents = {k: [v[0], v[1]] for k, v in (exported.get("documents") or {}).items()}
    return json.dumps({"auth": auth, "documents": documents}, sort_keys=True, ensure_ascii=False)


async def _verify_with_a_server(config_dir: Path, pm: Any, backend: Any, login: tuple[str, str] | None) -> str:
    """Start a manager on the copy as a server would; check a stored session and, if given, a local login."""
    from .server import build_auth

    # As a server would start on it, but it removes no tokens and writes no audit record of the check.
    auth = build_auth(
        load_config(config_dir, pm),
        pm,
        require_provider=False,
        purge_expired_tokens=False,
        storage=backend,
        audit_config=audit_config(AUDIT_SCHEMA({"enabled": False})),
    )
    await auth.async_setup()
    try:
        checked = [f"{auth.store.user_count()} users loaded"]
        tokens = [t for t in auth.store.refresh_tokens() if t.user.is_active]
        if tokens:
            access = await auth.access_tokens.async_create_access_token(tokens[0])
            if auth.access_tokens.validate_access_token(access) is None:
                raise CliError("The copy loads, but a stored session does not work on it; the copy is not usable")
            checked.append(f"a stored session of {tokens[0].user.name!r} works")
        if login is not None:
            provider = auth.registry.local_provider()
            if provider is None:
                raise CliError("--check-login needs the local provider configured in configuration.yaml")
            try:
                await provider.async_validate_login(*login)
            except Exception as err:  # noqa: BLE001 - any refusal (InvalidAuthError or a provider failure) is a failed check
                raise CliError(f"The copy loads, but {login[0]!r} cannot log in with that password: {err}") from None
            checked.append(f"{login[0]!r} logs in")
        return ", ".join(checked)
    finally:
        await auth.async_shutdown()


_CHAIN_COPY = ("describe", "read", "recorded_head", "holds_records", "chain_texts", "import_chain")


def _chain_side(pm: Any, backend: Any, config_dir: Path) -> Any:
    """Where a store keeps the audit chain, able to give and take it whole: the files for the JSON store,
    else the sink its plugin offers (opp_auth_audit_sink); None when that plugin's cannot be copied."""
    from .audit import offered_sink
    from .audit_files import AuditFiles
    from .backend import JsonBackend

    if isinstance(backend, JsonBackend):
        return AuditFiles(config_dir)
    conf = {**audit_config(_audit_config(config_dir, pm)), "enabled": True}
    sink = offered_sink(pm, None, conf, backend)
    return sink if all(callable(getattr(sink, name, None)) for name in _CHAIN_COPY) else None


def _audit_copy_plan(pm: Any, source: Any, target: Any, config_dir: Path, without: bool) -> tuple[Any, Any, Any]:
    """(from, to, source report) when the audit chain is to be copied, else (None, None, None).

    Refused before anything is written: a target that holds a chain (two chains cannot be mixed), a
    source chain that fails verification (copying it would hide where it was changed).
    """
    from .audit_files import AuditFiles

    give, take = _chain_side(pm, source, config_dir), _chain_side(pm, target, config_dir)
    if without or give is None or not give.holds_records():
        return None, None, None
    if take is None:
        raise CliError(
            f"{target.describe()} cannot take the audit log of {give.describe()}; "
            "copy without it with --without-audit (it stays where it is)"
        )
    if take.holds_records():
        raise CliError(
            f"{take.describe()} already holds an audit log; copy into a place without one, "
            "or copy without it with --without-audit"
        )
    try:
        report = audit_cli.chain_report(Path(give.describe()), None if isinstance(give, AuditFiles) else give)
        fatal = [p for p in report.problems if p.fatal]
        if fatal:
            raise CliError(
                f"The audit log in {give.describe()} fails verification "
                f"({audit_cli.safe_text(str(fatal[0]), 300)}); see opp-auth audit verify. "
                "Copy without it with --without-audit (it stays where it is)"
            )
        # Every record as the target will store it (the writer's own form), before anything is written:
        # a copy cannot then stop half-way on a record the check above accepted.
        for text in give.chain_texts():
            record = AuthEvent.parse_chained(text)
            seq = record.get("seq") if record is not None else None
            if (
                record is None
                or isinstance(seq, bool)
                or not isinstance(seq, int)
                or not 0 < seq < 2**63
                or AuthEvent.canonical_text(record) is None
            ):
                raise CliError(
                    f"The audit log in {give.describe()} holds a record that cannot be copied: {text[:80]!r}"
                )
            datetime.fromisoformat(str(record.get("time")))
    except CliError:
        raise
    except Exception as err:  # noqa: BLE001 - a store plugin's reader: any failure is a refusal, before writing
        raise CliError(
            f"The audit log in {give.describe()} cannot be read for the copy ({type(err).__name__}: "
            f"{audit_cli.safe_text(str(err), 300)}); nothing was copied. Copy without it with --without-audit"
        ) from None
    return give, take, report


def _copy_audit(give: Any, take: Any, report: Any, target: str) -> int:
    """Copy the chain as it is and check the copy: as many records, the same head."""
    from .audit_files import AuditFiles

    try:
        count = take.import_chain(give.chain_texts(), give.recorded_head())
        copied = audit_cli.chain_report(Path(take.describe()), None if isinstance(take, AuditFiles) else take)
    except Exception as err:  # noqa: BLE001 - the disk or the database failed meanwhile (the content was checked)
        raise CliError(
            f"The audit log was not copied ({type(err).__name__}: {audit_cli.safe_text(str(err), 300)}); "
            f"the users and tokens are in {target} already: empty it, then copy again"
        ) from None
    if copied.records != report.records or copied.head_hash != report.head_hash or not copied.ok:
        raise CliError(
            f"The audit log copied into {take.describe()} differs from {give.describe()} "
            f"({copied.records} records, head {copied.head_hash}, against {report.records}, {report.head_hash}); "
            "do not use it"
        )
    return int(count)


def cmd_storage_copy(args: argparse.Namespace) -> int:
    """Copy this directory's JSON store into a database (--to) or a database's data into it (--from)."""
    from .backend import JsonBackend

    config_dir = _config_dir(args)
    if not config_dir.is_dir():
        raise CliError(f"{config_dir} does not exist")
    pm = args.pm
    url = args.to or args.source
    load_config(config_dir, pm)  # the check below starts the directory's providers: fail before copying
    login = (args.check_login, _read_password(args)) if args.check_login else None
    lock = _holding_lock(
        config_dir, "storage copy", "Stop the server using it first: a copy needs the data to stand still."
    )
    try:
        other = _backend_for_url(pm, url, config_dir)
        files = JsonBackend({"type": "json"}, str(config_dir))
        source, target = (files, other) if args.to else (other, files)

        async def run() -> int:
            await other.async_open()
            try:
                if await other.async_servers_running():
                    raise CliError(f"A server is using {other.describe()}. Stop every server first.")
                give, take, chain = await asyncio.to_thread(
                    _audit_copy_plan, pm, source, target, config_dir, args.without_audit
                )
                exported = await source.async_export()
                if exported.get("auth") is None and not exported.get("documents"):
                    raise CliError(f"Nothing to copy: {source.describe()} holds no opp-auth data")
                if args.source:
                    existing = [
                        k for k in ("auth", *exported.get("documents", {})) if (config_dir / STORAGE_DIR / k).exists()
                    ]
                    if existing:
                        raise CliError(
                            f"{config_dir / STORAGE_DIR} already holds {', '.join(existing)}; "
                            "copy into a directory without them (move them away first)"
                        )
                await target.async_import(exported)
                copied = await target.async_export()
                if _canonical(copied) != _canonical(exported):
                    raise CliError(
                        f"The copy in {target.describe()} differs from the source "
                        f"({_summary(copied)} against {_summary(exported)}); do not use it"
                    )
                audited = (
                    await asyncio.to_thread(_copy_audit, give, take, chain, target.describe())
                    if give is not None
                    else None
                )
            finally:
                await other.async_close()
            # A fresh backend object: the one above is closed.
            check_backend = (
                _backend_for_url(pm, url, config_dir) if args.to else JsonBackend({"type": "json"}, str(config_dir))
            )
            result = await _verify_with_a_server(config_dir, pm, check_backend, login)
            counts = _summary(exported)["auth"]
            audit_note = f", {audited} audit records (chain verified)" if audited is not None else ""
            print(
                f"Copied {counts['users']} users, {counts['groups']} groups, {counts['credentials']} credentials, "
                f"{counts['refresh_tokens']} refresh tokens and {len(exported.get('documents') or {})} documents"
                f"{audit_note} from {source.describe()} to {target.describe()}; checked: {result}."
            )
            if args.to:
                print(
                    f"Now set openpeerpower: storage: type: postgresql with this url in {config_dir}/configuration.yaml"
                )
            return 0

        return asyncio.run(run())
    finally:
        lock.release()


def build_parser(pm: Any = None) -> argparse.ArgumentParser:
    """The argument parser (plugins may add sub-commands)."""
    parser = argparse.ArgumentParser(prog="opp-auth", description="Open Peer Power compatible authentication server")
    parser.add_argument(
        "-c", "--config", default=DEFAULT_CONFIG_DIR, help="configuration directory (default %(default)s)"
    )
    parser.add_argument("--version", action="version", version=f"opp-auth {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = sub.add_parser("serve", help="run the server")
    serve.add_argument("--host", help="address to listen on (default: http: server_host)")
    serve.add_argument("--port", type=int, help="port (default: http: server_port, 8123)")
    serve.set_defaults(func=cmd_serve)
    sub.add_parser("check-config", help="validate configuration.yaml").set_defaults(func=cmd_check_config)
    plugins = sub.add_parser("plugins", help="list installed plugins")
    plugins.add_argument("--json", action="store_true")
    plugins.set_defaults(func=cmd_plugins)

    auth = sub.add_parser("auth", help="manage local logins (server must be stopped)")
    auth_sub = auth.add_subparsers(dest="auth_command", required=True, metavar="AUTH_COMMAND")
    auth_sub.add_parser("list", help="list usernames").set_defaults(func=cmd_auth_list)
    add = auth_sub.add_parser("add", help="add a login (password prompted or read from stdin)")
    add.add_argument("username")
    add.add_argument("--name", help="display name (default: the username)")
    add.add_argument("--group", default=GROUP_ID_USER, choices=[GROUP_ID_ADMIN, GROUP_ID_USER, GROUP_ID_READ_ONLY])
    add.add_argument("--owner", action="store_true", help="make this user the owner (when there is none)")
    add.set_defaults(func=cmd_auth_add)
    for name, func, helptext in (
        ("validate", cmd_auth_validate, "check a password"),
        ("change-password", cmd_auth_change_password, "set a new password"),
        ("change_password", cmd_auth_change_password, argparse.SUPPRESS),
        ("delete", cmd_auth_delete, "remove a login"),
    ):
        cmd = auth_sub.add_parser(name, help=helptext) if helptext != argparse.SUPPRESS else auth_sub.add_parser(name)
        cmd.add_argument("username")
        cmd.set_defaults(func=func)
    for cmd in (add, *[auth_sub.choices[n] for n in ("validate", "change-password", "change_password")]):
        cmd.add_argument("--password-stdin", action="store_true", help="read the password from standard input")

    bans = sub.add_parser("bans", help="IP bans of ip_bans.yaml (remove: server must be stopped)")
    bans_sub = bans.add_subparsers(dest="bans_command", required=True, metavar="BANS_COMMAND")
    bans_sub.add_parser("list", help="list banned addresses").set_defaults(func=cmd_bans_list)
    bans_remove = bans_sub.add_parser("remove", help="lift a ban")
    bans_remove.add_argument("ip_address")
    bans_remove.set_defaults(func=cmd_bans_remove)
    lockouts = sub.add_parser("lockouts", help="login lockouts (kept in a running server's memory)")
    lockouts_sub = lockouts.add_subparsers(dest="lockouts_command", required=True, metavar="LOCKOUTS_COMMAND")
    lockouts_sub.add_parser("list", help="list lockouts (asks the running server)").set_defaults(func=cmd_lockouts_list)
    lockouts_sub.add_parser("clear", help="clear lockouts").set_defaults(func=cmd_lockouts_clear)

    storage = sub.add_parser("storage", help="move the stored data between storage types")
    storage_sub = storage.add_subparsers(dest="storage_command", required=True, metavar="STORAGE_COMMAND")
    copy = storage_sub.add_parser(
        "copy", help="copy .storage into a database (--to URL) or a database into .storage (--from URL)"
    )
    where = copy.add_mutually_exclusive_group(required=True)
    where.add_argument("--to", metavar="URL", help="an empty database, e.g. postgresql://user@host/db")
    where.add_argument("--from", dest="source", metavar="URL", help="the database to copy into .storage")
    copy.add_argument("--check-login", metavar="USERNAME", help="also check that this local login works on the copy")
    copy.add_argument("--password-stdin", action="store_true", help="read --check-login's password from standard input")
    copy.add_argument(
        "--without-audit",
        action="store_true",
        help="leave the audit log where it is (by default it is copied, as it is, and verified)",
    )
    copy.set_defaults(func=cmd_storage_copy)
    audit_cli.add_commands(sub, _config_dir, _audit_reader)

    reset = sub.add_parser("reset", help="lost owner password: remove auth data (keeps a backup)")
    reset.add_argument("--yes", action="store_true", help="do not ask")
    reset.set_defaults(func=cmd_reset)
    if pm is not None:
        pm.hook.opp_auth_register_commands(cli=sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point."""
    pm = make_plugin_manager()
    parser = build_parser(pm)
    args = parser.parse_args(argv)
    args.pm = pm
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s (%(threadName)s) [%(name)s] %(message)s",
    )
    try:
        return int(args.func(args) or 0)
    except (CliError, ConfigError, StorageError, PluginError, audit_cli.UsageError) as err:
        print(f"Error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())

"""pytest plugin for plugin authors (opt-in: ``pytest_plugins = ["opp_auth.testing"]``).

Fixtures:

``config_dir``
    An empty configuration directory (a ``tmp_path`` subfolder).
``opp_auth_factory``
    ``await opp_auth_factory(providers=[...], mfa_modules=[...], http={...}, plugins=[(name, module)], blocks={...})``
    builds and sets up an :class:`~opp_auth.AuthManager` from configuration
    entries exactly as configuration.yaml would give them (schemas, defaults
    and errors included); it is shut down after the test.
``opp_auth_client``
    ``await opp_auth_client(auth)`` serves the real application on 127.0.0.1
    and returns an :class:`OppAuthClient`: an aiohttp client session bound to
    that server, with a :class:`LoginFlowDriver` as ``.login``.
``opp_auth_storage_type`` / ``opp_auth_storage``
    Which storage backend ``opp_auth_factory`` uses: ``"json"`` by default.
    Override ``opp_auth_storage_type`` with ``params=["json", "postgresql"]`` in a
    conftest.py to run a whole suite against both; ``opp_auth_storage`` is then
    the ``storage:`` block, with a fresh database per test for PostgreSQL.
``postgresql_server``
    A PostgreSQL server for the test session (:class:`PostgresServer`: initdb and
    pg_ctl on a free loopback port in a temporary folder). Skips with the reason
    when PostgreSQL or opp-auth-postgresql is missing; fails instead when
    ``OPP_AUTH_REQUIRE_INTEGRATION=1``.
"""

from __future__ import annotations

import asyncio
import contextlib
import glob
import inspect
import itertools
import json
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from .config import HTTP_SCHEMA, validate_config
from .http.app import create_app
from .manager import AuthManager
from .plugins import make_plugin_manager
from .server import build_auth

CLIENT_ID = "https://example.com/app"
REDIRECT_URI = "https://example.com/app/callback"


class LoginFlowDriver:
    """Drives /auth/login_flow and /auth/token the way a browser client does."""

    def __init__(self, session: aiohttp.ClientSession, base: str) -> None:
        """Bind to a server."""
        self.session = session
        self.base = base

    async def start(
        self,
        handler: list[Any] | tuple[Any, ...],
        *,
        client_id: str = CLIENT_ID,
        redirect_uri: str = REDIRECT_URI,
        flow_type: str | None = None,
    ) -> tuple[int, Any]:
        """POST /auth/login_flow: (status, JSON body)."""
        body: dict[str, Any] = {"client_id": client_id, "handler": list(handler), "redirect_uri": redirect_uri}
        if flow_type is not None:
            body["type"] = flow_type
        async with self.session.post(f"{self.base}/auth/login_flow", json=body) as resp:
            return resp.status, await resp.json()

    async def step(self, flow_id: str, *, client_id: str = CLIENT_ID, **data: Any) -> tuple[int, Any]:
        """POST /auth/login_flow/{flow_id}: (status, JSON body)."""
        async with self.session.post(
            f"{self.base}/auth/login_flow/{flow_id}", json={"client_id": client_id, **data}
        ) as resp:
            return resp.status, await resp.json()

    async def token(self, **form: str) -> tuple[int, Any]:
        """POST /auth/token with form fields: (status, JSON body or None)."""
        async with self.session.post(f"{self.base}/auth/token", data=form) as resp:
            text = await resp.text()
            return resp.status, (json.loads(text) if text else None)

    async def code(self, handler: Any, steps: list[dict[str, Any]], *, client_id: str = CLIENT_ID) -> str:
        """Run a flow through the given step inputs; return the authorization code."""
        status, result = await self.start(handler, client_id=client_id)
        assert status == 200, result
        for data in steps:
            if result["type"] == "create_entry":
                break
            assert result["type"] == "form", result
            status, result = await self.step(result["flow_id"], client_id=client_id, **data)
            assert status == 200, result
        assert result["type"] == "create_entry", result
        return str(result["result"])

    async def tokens(self, handler: Any, steps: list[dict[str, Any]], *, client_id: str = CLIENT_ID) -> dict[str, Any]:
        """Log in and trade the code: access_token, refresh_token, expires_in."""
        code = await self.code(handler, steps, client_id=client_id)
        status, body = await self.token(grant_type="authorization_code", client_id=client_id, code=code)
        assert status == 200, body
        return dict(body)


class OppAuthClient:
    """A client session bound to a live test server."""

    def __init__(self, server: TestServer, session: aiohttp.ClientSession, app: web.Application) -> None:
        """Keep the pieces."""
        self.server = server
        self.session = session
        self.app = app
        self.base = str(server.make_url("")).rstrip("/")
        self.login = LoginFlowDriver(session, self.base)

    def url(self, path: str) -> str:
        """Absolute URL of a path on the server."""
        return f"{self.base}{path}"

    def request(self, method: str, path: str, **kwargs: Any) -> Any:
        """session.request against the server."""
        return self.session.request(method, self.url(path), **kwargs)


@pytest.fixture
def config_dir(tmp_path: Path) -> Path:
    """An empty configuration directory."""
    path = tmp_path / "config"
    path.mkdir()
    return path


REQUIRE_INTEGRATION_ENV = "OPP_AUTH_REQUIRE_INTEGRATION"


def skip_or_fail(message: str) -> None:
    """Skip a test that needs a missing part, or fail when OPP_AUTH_REQUIRE_INTEGRATION=1 (CI)."""
    if os.environ.get(REQUIRE_INTEGRATION_ENV) == "1":
        pytest.fail(f"{message}, and {REQUIRE_INTEGRATION_ENV}=1 says integration tests must run", pytrace=False)
    pytest.skip(message)


def _free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def postgresql_bin_dir() -> str | None:
    """The folder of initdb and pg_ctl: $OPP_AUTH_PG_BIN, the newest /usr/lib/postgresql/*/bin, or PATH."""
    configured = os.environ.get("OPP_AUTH_PG_BIN")
    if configured:
        return configured if os.path.isfile(os.path.join(configured, "initdb")) else None
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(p.split("/")[-3]))
    if found:
        return os.path.dirname(found[-1])
    initdb = shutil.which("initdb")
    return os.path.dirname(initdb) if initdb else None


class PostgresServer:
    """A throw-away PostgreSQL cluster on 127.0.0.1 (initdb, pg_ctl), run as the postgres user under root."""

    def __init__(self, bin_dir: str) -> None:
        """Choose a folder and a port; nothing runs before start."""
        self.bin_dir = bin_dir
        self.root = tempfile.mkdtemp(prefix="opp-auth-pg-")
        self.data = os.path.join(self.root, "data")
        self.port = _free_port()
        self.user = "postgres"
        self._run_as = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        self._names = itertools.count(1)
        self._admin: Any = None
        self._shared_ready = False
        self._shared: Any = None
        if self._run_as:
            shutil.chown(self.root, "postgres")
            os.chmod(self.root, 0o700)
        self.initdb()

    def _run(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        """Run a PostgreSQL program (as postgres under root), raising with its output when it fails."""
        cmd = [*self._run_as, os.path.join(self.bin_dir, args[0]), *args[1:]]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed ({done.returncode}): {done.stdout}{done.stderr}")
        return done

    def initdb(self) -> None:
        """Create the cluster: trust authentication on loopback only, no fsync (tests only)."""
        self._run("initdb", "-D", self.data, "-U", self.user, "--auth=trust", "-E", "UTF8", "--no-sync")

    @property
    def running(self) -> bool:
        """Whether the server answers pg_ctl status."""
        cmd = [*self._run_as, os.path.join(self.bin_dir, "pg_ctl"), "-D", self.data, "status"]
        return subprocess.run(cmd, capture_output=True, check=False).returncode == 0

    def start(self) -> None:
        """Start (again) on the same port; returns once it accepts connections."""
        options = (
            f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync=off "
            "-c synchronous_commit=off -c full_page_writes=off -c max_connections=400"
        )
        self._run("pg_ctl", "-D", self.data, "-o", options, "-l", os.path.join(self.root, "log"), "-w", "start")

    def stop(self, mode: str = "fast") -> None:
        """Stop (fast: connections are cut, as a crashed or restarted database does)."""
        self._close_admin()
        self._close_shared()
        self._run("pg_ctl", "-D", self.data, "-m", mode, "-w", "stop")

    def url(self, database: str = "postgres") -> str:
        """A libpq URL for database on this server."""
        return f"postgresql://{self.user}@127.0.0.1:{self.port}/{database}"

    def _admin_conn(self) -> Any:
        """An autocommit connection to the postgres database (psycopg imported only here)."""
        import psycopg

        if self._admin is None or self._admin.closed:
            self._admin = psycopg.connect(self.url(), autocommit=True)
        return self._admin

    def _close_admin(self) -> None:
        """Drop the admin connection."""
        if self._admin is not None:
            self._admin.close()
            self._admin = None

    def execute(self, sql: str, *params: Any) -> list[tuple[Any, ...]]:
        """Run one statement as the superuser on the postgres database; its rows (if any)."""
        cur = self._admin_conn().execute(sql, params or None)
        return cur.fetchall() if cur.description else []

    def create_database(self) -> str:
        """A fresh, empty database; its name."""
        name = f"t{os.getpid()}_{next(self._names)}"
        self.execute(f'CREATE DATABASE "{name}"')
        return name

    SHARED_DATABASE = "opp_auth_tests"

    # Empties every opp-auth table but opp_auth_meta, restarts the numbering, forgets the secret's
    # fingerprint and what was pruned. DELETE rather than TRUNCATE: on tables of a few rows it is
    # ~10x faster (TRUNCATE makes new files for each table and its indexes). A table a DELETE cannot
    # empty (a trigger refuses) is truncated instead.
    _EMPTY_SHARED = r"""DO $$
DECLARE
    r record;
BEGIN
    PERFORM set_config('opp_auth.audit_prune', 'on', true);
    PERFORM set_config('opp_auth.audit_reset', 'on', true);
    FOR r IN
        SELECT c.relname FROM pg_class c
        WHERE c.relnamespace = current_schema()::regnamespace AND c.relkind IN ('r', 'p')
          AND c.relname LIKE 'opp\_auth\_%' AND c.relname <> 'opp_auth_meta'
        ORDER BY (SELECT count(*) FROM pg_constraint f WHERE f.conrelid = c.oid AND f.contype = 'f') DESC
    LOOP
        BEGIN
            EXECUTE format('DELETE FROM %I', r.relname);
        EXCEPTION WHEN others THEN
            EXECUTE format('TRUNCATE %I CASCADE', r.relname);
        END;
    END LOOP;
    FOR r IN SELECT c.relname FROM pg_class c
             WHERE c.relnamespace = current_schema()::regnamespace AND c.relkind = 'S' LOOP
        EXECUTE format('ALTER SEQUENCE %I RESTART', r.relname);
    END LOOP;
    IF to_regclass('opp_auth_meta') IS NOT NULL THEN
        UPDATE opp_auth_meta SET value = '0' WHERE name = 'pruned_through';
        DELETE FROM opp_auth_meta WHERE name = 'secret_fingerprint';
    END IF;
END $$"""

    def empty_shared_database(self) -> str:
        """The database most tests share, emptied of opp-auth data (faster than a database per test).

        Its tables are made by the first server that starts on it; each test starts from empty
        tables (numbering restarted), emptied in one round trip on a connection kept for it. A test
        that changes the schema uses a database of its own (create_database).
        """
        import psycopg

        if not self._shared_ready:
            self.execute(f'DROP DATABASE IF EXISTS "{self.SHARED_DATABASE}" WITH (FORCE)')
            self.execute(f'CREATE DATABASE "{self.SHARED_DATABASE}"')
            self._shared_ready = True
            return self.SHARED_DATABASE
        for attempt in (1, 2):
            try:
                if self._shared is None or self._shared.closed:
                    self._shared = psycopg.connect(self.url(self.SHARED_DATABASE), autocommit=True)
                self._shared.execute(self._EMPTY_SHARED)
                break
            except psycopg.OperationalError:
                # The server restarted, or a test cut this connection: once more on a new one.
                self._close_shared()
                if attempt == 2:
                    raise
        return self.SHARED_DATABASE

    def _close_shared(self) -> None:
        """Drop the connection that empties the shared database."""
        if self._shared is not None:
            with contextlib.suppress(Exception):
                self._shared.close()
            self._shared = None

    def drop_database(self, name: str) -> None:
        """Drop a database, cutting its connections."""
        self.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    def destroy(self) -> None:
        """Stop and delete everything."""
        try:
            if self.running:
                self.stop("immediate")
        finally:
            shutil.rmtree(self.root, ignore_errors=True)


@pytest.fixture(scope="session")
def postgresql_server() -> Iterator[PostgresServer]:
    """A PostgreSQL server for the session (see PostgresServer); skipped with the reason when missing."""
    bin_dir = postgresql_bin_dir()
    if bin_dir is None:
        skip_or_fail("PostgreSQL is not installed (Debian package postgresql: apt-get install postgresql)")
    try:
        import psycopg  # noqa: F401
    except ImportError:
        skip_or_fail("psycopg is not installed (pip install opp-auth-postgresql)")
    assert bin_dir is not None
    server = PostgresServer(bin_dir)
    try:
        server.start()
        yield server
    finally:
        server.destroy()


@pytest.fixture
def opp_auth_storage_type() -> str:
    """The storage type opp_auth_factory uses ("json"); override with params to run a suite on several."""
    return "json"


@pytest.fixture
def opp_auth_storage(request: pytest.FixtureRequest, opp_auth_storage_type: str) -> Iterator[dict[str, Any]]:
    """The ``storage:`` block of opp_auth_factory's managers (postgresql: a fresh database per test)."""
    if opp_auth_storage_type == "json":
        yield {"type": "json"}
        return
    if opp_auth_storage_type != "postgresql":
        raise ValueError(f"unknown storage type {opp_auth_storage_type!r}")
    server: PostgresServer = request.getfixturevalue("postgresql_server")
    yield {"type": "postgresql", "url": server.url(server.empty_shared_database())}


async def async_wait_until(predicate: Callable[[], Any], timeout: float = 3.0, interval: float = 0.01) -> float:
    """Seconds until predicate() is true (a plain or an async predicate); an AssertionError after timeout.

    For what another server, a background write or the change feed makes true a little later.
    """
    start = time.monotonic()
    while True:
        result = predicate()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return time.monotonic() - start
        assert time.monotonic() - start < timeout, f"not true within {timeout} s"
        await asyncio.sleep(interval)


async def async_stored_document(config_dir: str | Path, key: str, version: int = 1) -> Any:
    """A ``.storage`` document as a restart reads it: the file with its journal (if any) replayed.

    Journaled documents (the local provider's logins, the MFA modules' data) reach their file
    whole at a compaction or when the server stops; between, a change is a journal line.
    """
    from .storage import Store

    return await Store(str(config_dir), key, version, journal=True).async_load()


async def async_seed_documents(
    config_dir: Path, storage: dict[str, Any], documents: dict[str, tuple[int, Any]]
) -> None:
    """Store documents ({key: (version, data)}) before a server starts, in whatever storage it uses."""
    if storage["type"] == "json":
        from .storage import Store

        for key, (version, data) in documents.items():
            await Store(config_dir, key, version).async_save(data)
        return
    cls = make_plugin_manager().store_classes[storage["type"]]
    backend = cls(cls.CONFIG_SCHEMA(dict(storage)), str(config_dir))
    await backend.async_open()
    try:
        await backend.async_import({"auth": None, "documents": documents})
    finally:
        await backend.async_close()


@pytest.fixture
async def opp_auth_factory(
    config_dir: Path, opp_auth_storage: dict[str, Any]
) -> AsyncIterator[Callable[..., Awaitable[AuthManager]]]:
    """Build set-up AuthManagers from configuration entries (their storage: opp_auth_storage)."""
    made: list[AuthManager] = []

    async def factory(
        providers: list[dict[str, Any]] | None = None,
        mfa_modules: list[dict[str, Any]] | None = None,
        http: dict[str, Any] | None = None,
        plugins: list[tuple[str, Any]] = (),  # type: ignore[assignment]
        load_entrypoints: bool = True,
        setup: bool = True,
        blocks: dict[str, Any] | None = None,
        mfa_required: str | None = None,
        **kwargs: Any,
    ) -> AuthManager:
        pm = make_plugin_manager(load_entrypoints=load_entrypoints, plugins=plugins)
        core: dict[str, Any] = {}
        if providers is not None:
            core["auth_providers"] = providers
        if mfa_modules is not None:
            core["auth_mfa_modules"] = mfa_modules
        if mfa_required is not None:
            core["mfa_required"] = mfa_required
        if opp_auth_storage["type"] != "json":
            core["storage"] = dict(opp_auth_storage)
        # blocks: other top-level blocks of configuration.yaml that plugins own (e.g. notify:).
        raw: dict[str, Any] = {**(blocks or {}), "openpeerpower": core, "http": http or {}}
        config = validate_config(raw, pm, config_dir=config_dir, allow_insecure_example=True)
        auth = build_auth(config, pm, require_provider=False, **kwargs)
        if setup:
            await auth.async_setup()
            made.append(auth)
        return auth

    yield factory
    for auth in made:
        await auth.async_shutdown()


@pytest.fixture
async def opp_auth_client() -> AsyncIterator[Callable[..., Awaitable[OppAuthClient]]]:
    """Serve an AuthManager's application on 127.0.0.1 and return a bound client."""
    servers: list[tuple[TestServer, aiohttp.ClientSession]] = []

    async def factory(auth: AuthManager, http: dict[str, Any] | None = None) -> OppAuthClient:
        # An http block given here passes the configuration's own schema, as from configuration.yaml
        # (a wrong value is a clear vol.Invalid in the test, not a 500 from the server).
        app = create_app(auth, None if http is None else HTTP_SCHEMA(http))
        server = TestServer(app, host="127.0.0.1")
        await server.start_server()
        session = aiohttp.ClientSession()
        servers.append((server, session))
        return OppAuthClient(server, session, app)

    yield factory
    for server, session in servers:
        await session.close()
        await server.close()


# ---- contract suites ----------------------------------------------------------------------

HOSTILE_STRINGS = [
    "",
    " ",
    "\t\n",
    "a" * 10000,
    "ü名前🙂",
    "\x00",
    "*)(uid=*",
    "' OR '1'='1",
    "../../etc/passwd",
    "$(touch /tmp/pwned)",
]

LOGIN_CONTEXT = {
    "ip_address": "127.0.0.1",
    "credential_only": False,
    "client_id": CLIENT_ID,
    "redirect_uri": REDIRECT_URI,
}


async def run_login_flow(
    auth: AuthManager,
    handler: tuple[str, str | None],
    steps: list[dict[str, Any]],
    context: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Start a login flow and feed it the step inputs; returns the last result."""
    result = await auth.login_flow.async_init(handler, context=dict(context or LOGIN_CONTEXT))
    for data in steps:
        if result["type"] != "form":
            break
        result = await auth.login_flow.async_configure(result["flow_id"], dict(data))
    return result


def _string_fields(schema: Any) -> list[str]:
    """Names of the string fields of a form schema."""
    names = []
    for key, validator in (getattr(schema, "schema", None) or {}).items():
        if validator is str:
            names.append(str(key))
    return names


class ProviderContract:
    """The behaviour every auth provider must show. Subclass it in a test module and define fixtures:

    ``provider_config``: the provider's configuration entry (dict with ``type``).
    ``login_steps``: step inputs (list of dicts) that log a known user in.
    ``wrong_password_steps``: the same with a wrong password.
    ``break_provider`` (optional): a function ``(provider, monkeypatch) -> None``
    that makes the provider's credential check raise an exception; the default
    makes ``async_validate_login`` raise, which fits providers that check a
    username and password that way.
    Optionally ``contract_context`` (the login flow context, e.g. another ip_address).
    """

    @pytest.fixture
    def break_provider(self) -> Callable[[Any, pytest.MonkeyPatch], None]:
        """Make async_validate_login raise."""

        def breaker(provider: Any, monkeypatch: pytest.MonkeyPatch) -> None:
            async def boom(*args: Any) -> None:
                raise RuntimeError("provider exploded")

            assert hasattr(provider, "async_validate_login"), "override break_provider for this provider"
            monkeypatch.setattr(provider, "async_validate_login", boom)

        return breaker

    @pytest.fixture
    def contract_context(self) -> dict[str, Any]:
        """Login flow context (override for providers that look at the address)."""
        return dict(LOGIN_CONTEXT)

    @pytest.fixture
    async def contract_auth(
        self, opp_auth_factory: Callable[..., Awaitable[AuthManager]], provider_config: dict[str, Any]
    ) -> AuthManager:
        """A manager with only this provider."""
        return await opp_auth_factory(providers=[provider_config], mfa_modules=[])

    @staticmethod
    def _provider(auth: AuthManager) -> Any:
        """The provider under test."""
        return auth.registry.auth_providers[0]

    def test_schema_rejects_unknown_keys(self, contract_auth: AuthManager, provider_config: dict[str, Any]) -> None:
        """An unknown configuration key is an error, not silently ignored."""
        import voluptuous as vol

        cls = type(self._provider(contract_auth))
        with pytest.raises(vol.Invalid):
            cls.CONFIG_SCHEMA({**provider_config, "no_such_option_xyz": 1})

    async def test_good_login_creates_credentials(
        self, contract_auth: AuthManager, login_steps: list[dict[str, Any]], contract_context: dict[str, Any]
    ) -> None:
        """A right login ends in credentials of this provider."""
        from .models import Credentials

        provider = self._provider(contract_auth)
        result = await run_login_flow(contract_auth, provider.key, login_steps, contract_context)
        assert result["type"] == "create_entry", result
        credentials = result["result"]
        assert isinstance(credentials, Credentials)
        assert credentials.provider_key == provider.key
        user = await contract_auth.users.async_get_or_create_user(credentials)
        assert user.is_active

    async def test_wrong_password_is_invalid_auth(
        self, contract_auth: AuthManager, wrong_password_steps: list[dict[str, Any]], contract_context: dict[str, Any]
    ) -> None:
        """A wrong password gives invalid_auth and names no field."""
        provider = self._provider(contract_auth)
        result = await run_login_flow(contract_auth, provider.key, wrong_password_steps, contract_context)
        assert result["type"] == "form", result
        assert result["errors"] == {"base": "invalid_auth"}

    @pytest.mark.parametrize("value", HOSTILE_STRINGS, ids=lambda v: repr(v)[:20])
    async def test_hostile_input_never_raises_or_grants(
        self, contract_auth: AuthManager, value: str, contract_context: dict[str, Any]
    ) -> None:
        """Empty, blank, huge, non-ASCII and injection-like input is refused without an exception."""
        provider = self._provider(contract_auth)
        result = await contract_auth.login_flow.async_init(provider.key, context=dict(contract_context))
        if result["type"] != "form":
            assert result["type"] == "abort", result
            return
        fields = _string_fields(result["data_schema"])
        assert fields, "the first form has no string fields to fill"
        result = await contract_auth.login_flow.async_configure(result["flow_id"], {name: value for name in fields})
        assert result["type"] in ("form", "abort"), result

    @pytest.mark.parametrize("unsafe", ["\n", "\r", "\x85", "\u2028", "\u202e", "\ufeff", "\x00"], ids=repr)
    async def test_username_with_unsafe_character_never_logs_in(
        self,
        contract_auth: AuthManager,
        login_steps: list[dict[str, Any]],
        contract_context: dict[str, Any],
        unsafe: str,
    ) -> None:
        """A known username plus a control, format or separator character (even one strip() removes) is refused."""
        steps = [dict(step) for step in login_steps]
        named = [step for step in steps if isinstance(step.get("username"), str)]
        if not named:
            pytest.skip("this provider's form asks for no username")
        for step in named:
            step["username"] = f"{step['username']}{unsafe}"
        result = await run_login_flow(contract_auth, self._provider(contract_auth).key, steps, contract_context)
        assert result["type"] != "create_entry", result

    async def test_exception_inside_provider_denies_login(
        self,
        contract_auth: AuthManager,
        login_steps: list[dict[str, Any]],
        break_provider: Callable[..., None],
        monkeypatch: pytest.MonkeyPatch,
        contract_context: dict[str, Any],
    ) -> None:
        """Fail closed: a provider that raises never lets anyone in."""
        break_provider(self._provider(contract_auth), monkeypatch)
        result = await run_login_flow(contract_auth, self._provider(contract_auth).key, login_steps, contract_context)
        assert result["type"] != "create_entry", result


class MfaContract:
    """The behaviour every MFA module must show. Subclass it and define fixtures:

    ``module_config``: the module's configuration entry.
    ``enrol``: an async function ``(auth, module, user_id) -> None`` that enrols the user.
    ``valid_code``: an async function ``(module, user_id) -> dict`` returning login
    input that is right now.
    ``break_module``: a function ``(module, monkeypatch) -> None`` making validation raise.

    Optionally ``config_blocks``: other top-level configuration.yaml blocks the
    module needs (e.g. ``{"notify": [...]}``); none by default.
    """

    @pytest.fixture
    def config_blocks(self) -> dict[str, Any]:
        """No extra configuration.yaml blocks unless a subclass needs them."""
        return {}

    @pytest.fixture
    async def contract_auth(
        self,
        opp_auth_factory: Callable[..., Awaitable[AuthManager]],
        module_config: dict[str, Any],
        config_blocks: dict[str, Any],
    ) -> AuthManager:
        """A manager with the example provider and only this module."""
        return await opp_auth_factory(
            providers=[{"type": "insecure_example", "users": [{"username": "mfa-user", "password": "mfa-pass"}]}],
            mfa_modules=[module_config],
            blocks=config_blocks,
        )

    @staticmethod
    def _module(auth: AuthManager) -> Any:
        """The module under test."""
        return auth.registry.auth_mfa_modules[0]

    async def _user(self, auth: AuthManager) -> Any:
        """A user with credentials of the example provider (so logins ask for MFA)."""
        result = await run_login_flow(
            auth, ("insecure_example", None), [{"username": "mfa-user", "password": "mfa-pass"}]
        )
        assert result["type"] == "create_entry", result
        return await auth.users.async_get_or_create_user(result["result"])

    def test_schema_rejects_unknown_keys(self, contract_auth: AuthManager, module_config: dict[str, Any]) -> None:
        """An unknown configuration key is an error."""
        import voluptuous as vol

        with pytest.raises(vol.Invalid):
            type(self._module(contract_auth)).CONFIG_SCHEMA({**module_config, "no_such_option_xyz": 1})

    async def test_user_not_set_up_is_not_valid(self, contract_auth: AuthManager) -> None:
        """Validating for a user who never enrolled is False, not an exception."""
        module = self._module(contract_auth)
        assert not await module.async_is_user_setup("nobody")
        fields = _string_fields(module.input_schema)
        assert await module.async_validate("nobody", {name: "123456" for name in fields}) is False

    async def test_login_with_right_code(self, contract_auth: AuthManager, enrol: Any, valid_code: Any) -> None:
        """An enrolled user is asked for the code and gets in with the right one."""
        user = await self._user(contract_auth)
        module = self._module(contract_auth)
        await enrol(contract_auth, module, user.id)
        assert await module.async_is_user_setup(user.id)
        result = await run_login_flow(
            contract_auth, ("insecure_example", None), [{"username": "mfa-user", "password": "mfa-pass"}]
        )
        assert result["type"] == "form" and result["step_id"] == "mfa", result
        result = await contract_auth.login_flow.async_configure(result["flow_id"], await valid_code(module, user.id))
        assert result["type"] == "create_entry", result

    @pytest.mark.parametrize("value", HOSTILE_STRINGS, ids=lambda v: repr(v)[:20])
    async def test_wrong_or_hostile_code_is_invalid(self, contract_auth: AuthManager, enrol: Any, value: str) -> None:
        """Wrong, empty and hostile codes give invalid_code (or end the flow), never an exception."""
        user = await self._user(contract_auth)
        module = self._module(contract_auth)
        await enrol(contract_auth, module, user.id)
        result = await run_login_flow(
            contract_auth, ("insecure_example", None), [{"username": "mfa-user", "password": "mfa-pass"}]
        )
        assert result["step_id"] == "mfa", result
        fields = _string_fields(module.input_schema)
        result = await contract_auth.login_flow.async_configure(result["flow_id"], {name: value for name in fields})
        assert result["type"] in ("form", "abort"), result
        if result["type"] == "form":
            assert result["errors"] == {"base": "invalid_code"}

    async def test_exception_inside_module_denies_login(
        self,
        contract_auth: AuthManager,
        enrol: Any,
        valid_code: Any,
        break_module: Callable[..., None],
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        """Fail closed: a module that raises never lets anyone in."""
        user = await self._user(contract_auth)
        module = self._module(contract_auth)
        await enrol(contract_auth, module, user.id)
        code = await valid_code(module, user.id)
        break_module(module, monkeypatch)
        result = await run_login_flow(
            contract_auth, ("insecure_example", None), [{"username": "mfa-user", "password": "mfa-pass"}, code]
        )
        assert result["type"] != "create_entry", result

    async def test_depose_removes_enrolment(self, contract_auth: AuthManager, enrol: Any) -> None:
        """After depose the user is no longer asked for this module."""
        user = await self._user(contract_auth)
        module = self._module(contract_auth)
        await enrol(contract_auth, module, user.id)
        await module.async_depose_user(user.id)
        assert not await module.async_is_user_setup(user.id)
        result = await run_login_flow(
            contract_auth, ("insecure_example", None), [{"username": "mfa-user", "password": "mfa-pass"}]
        )
        assert result["type"] == "create_entry", result


def find_secrets(text: str, secrets: Any) -> list[str]:
    """The secrets that appear in text: as they are, JSON-escaped, URL-encoded or base64 (for leak scans).

    Use it on audit records, log output or metric labels with every password, code and token a test used.
    """
    import base64
    from urllib.parse import quote

    found = []
    for secret in secrets:
        if not secret:
            continue
        forms = {
            secret,
            json.dumps(secret)[1:-1],
            json.dumps(secret, ensure_ascii=False)[1:-1],
            quote(secret, safe=""),
            base64.b64encode(secret.encode()).decode().rstrip("="),
        }
        if any(form in text for form in forms if len(form) >= 4):
            found.append(secret)
    return found

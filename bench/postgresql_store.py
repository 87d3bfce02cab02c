"""The PostgreSQL store against the JSON store, each server in a fresh process (issue 15).

Targets:
- access-token check (cache hit, ``validate_access_token`` on a reused token) with
  PostgreSQL within 10% of the JSON store's, at the same store size;
- revocation propagation between two processes: p99 < 1 s (p50 reported);
- a login end to end over HTTP (flow, password, ``/auth/token``: a refresh token
  written durably) with PostgreSQL within 1.1x of the JSON store's, with a login
  hashed at the shipped cost (12, added to each store); the prepared cost-4 logins
  give a second, informational ratio in which the database's share dominates;
- start-up time and resident memory per process (reported).

A throw-away PostgreSQL (initdb, pg_ctl; ``opp_auth.testing.PostgresServer``) is
started for the script, fsync ON (like a real server; the test fixture turns it
off). The N-user store is the one ``_common.prepared_config`` builds, copied into
the database by ``opp-auth storage copy``'s code (``async_export`` / ``async_import``).
JSON and PostgreSQL child processes alternate, three rounds; every figure is the
median with the range in its note.

    .venv/bin/python bench/postgresql_store.py --users 100000
"""

from __future__ import annotations

import asyncio
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
import timeit
from pathlib import Path
from typing import Any

from _common import BENCH_PASSWORD, CLIENT_ID, Result, emit, median, parse_args, percentile, prepared_config

BENCH = "postgresql_store"
ROUNDS = 3


# ---- child processes --------------------------------------------------------------------------


def build_manager(config_dir: str, url: str | None) -> Any:
    """An AuthManager on the prepared directory with the local provider; PostgreSQL when url is given."""
    from opp_auth.config import validate_config
    from opp_auth.manager import AuthManager
    from opp_auth.plugins import make_plugin_manager

    pm = make_plugin_manager()
    core: dict[str, Any] = {"auth_providers": [{"type": "openpeerpower"}], "auth_mfa_modules": []}
    if url:
        core["storage"] = {"type": "postgresql", "url": url}
    raw = {"openpeerpower": core, "http": {"ip_ban_enabled": False, "login_throttle": {"enabled": False}}}
    config = validate_config(raw, pm, config_dir=Path(config_dir))
    return AuthManager(
        config_dir,
        pm,
        provider_configs=config.providers,
        mfa_configs=config.mfa_modules,
        http_config=config.http,
        storage=config.storage_class(config.storage, config_dir),
        purge_expired_tokens=False,
    )


async def child_measure(config_dir: str, url: str | None) -> dict[str, Any]:
    """Start-up, memory, token check and logins of one server process."""
    cpu0, wall0 = time.process_time(), time.perf_counter()
    auth = build_manager(config_dir, url)
    await auth.async_setup()
    startup, startup_cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    token = next(t for t in auth.store.refresh_tokens() if t.user.is_active)
    access = await auth.access_tokens.async_create_access_token(token)
    assert auth.access_tokens.validate_access_token(access) is not None
    check_us = median(
        [timeit.timeit(lambda: auth.access_tokens.validate_access_token(access), number=100_000) * 10 for _ in range(5)]
    )
    # A login at the shipped cost (12; the prepared logins are cost 4): added once per store.
    provider = auth.registry.get_auth_provider("openpeerpower", None)
    if provider.data.get(SHIPPED_COST_USER) is None:
        await provider.async_add_auth(SHIPPED_COST_USER, BENCH_PASSWORD)
    logins, logins12 = await http_logins(auth, ["user0", SHIPPED_COST_USER])
    await auth.async_shutdown()
    return {
        "startup": startup, "startup_cpu": startup_cpu, "rss_mb": rss_mb, "check_us": check_us,
        "login": logins, "login12": logins12,
    }  # fmt: skip


SHIPPED_COST_USER = "shipped-cost"


async def http_logins(auth: Any, usernames: list[str]) -> list[float]:
    """For each username, median seconds of 8 full logins over HTTP on one served app (the app's
    shutdown stops the manager: one server for every user)."""
    import aiohttp
    from aiohttp.test_utils import TestServer

    from opp_auth.http.app import create_app
    from opp_auth.testing import LoginFlowDriver

    server = TestServer(create_app(auth), host="127.0.0.1")
    await server.start_server()
    medians = []
    async with aiohttp.ClientSession() as session:
        driver = LoginFlowDriver(session, str(server.make_url("")).rstrip("/"))
        for username in usernames:
            times = []
            for i in range(9):
                start = time.perf_counter()
                await driver.tokens(["openpeerpower", None], [{"username": username, "password": BENCH_PASSWORD}])
                if i:  # the first warms caches
                    times.append(time.perf_counter() - start)
            medians.append(median(times))
    await server.close()
    return medians


async def child_listen(config_dir: str, url: str, count: int) -> None:
    """Print the wall time each revoked token disappears here (another process revokes them)."""
    auth = build_manager(config_dir, url)
    await auth.async_setup()
    await auth.backend.connected.wait()
    seen: dict[str, float] = {}

    def heard(changes: Any) -> None:
        now = time.time()
        for token in changes.tokens:
            seen.setdefault(token.id, now)

    auth.remote_listeners.append(heard)
    print("READY", flush=True)
    deadline = time.monotonic() + 120
    while len(seen) < count and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    print("SEEN " + json.dumps(seen), flush=True)
    await auth.async_shutdown()


async def child_revoke(config_dir: str, url: str, count: int) -> None:
    """Make count tokens, wait for the listener, then revoke them one by one; print when each was committed."""
    auth = build_manager(config_dir, url)
    await auth.async_setup()
    user = next(u for u in auth.store.users() if u.is_active and not u.system_generated)
    tokens = [await auth.refresh_tokens.async_create_refresh_token(user, CLIENT_ID) for _ in range(count)]
    print("MADE", flush=True)
    sys.stdin.readline()
    committed: dict[str, float] = {}
    for token in tokens:
        # From the start of the call: the commit's own time is part of the delay measured.
        committed[token.id] = time.time()
        await auth.refresh_tokens.async_remove_refresh_token(token)
        await asyncio.sleep(0.02)
    print("REVOKED " + json.dumps(committed), flush=True)
    await auth.async_shutdown()


def child_main(argv: list[str]) -> None:
    """python postgresql_store.py --child MODE CONFIG_DIR URL [COUNT]."""
    mode, config_dir, url = argv[0], argv[1], argv[2] or None
    if mode == "measure":
        print("RESULT " + json.dumps(asyncio.run(child_measure(config_dir, url))), flush=True)
    elif mode == "listen":
        asyncio.run(child_listen(config_dir, str(url), int(argv[3])))
    elif mode == "revoke":
        asyncio.run(child_revoke(config_dir, str(url), int(argv[3])))


# ---- the parent ----------------------------------------------------------------------------------


def run_child(*args: str) -> dict[str, Any]:
    """One measuring child; its RESULT."""
    proc = subprocess.run(
        [sys.executable, __file__, "--child", *args], capture_output=True, text=True, check=False, timeout=1800
    )
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            return dict(json.loads(line[7:]))
    raise RuntimeError(f"child {args} failed:\n{proc.stdout}\n{proc.stderr}")


def propagation(config_dir: str, url: str, count: int = 200) -> list[float]:
    """Seconds from a revocation's commit on one process to its removal from the other's cache."""
    base = [sys.executable, __file__, "--child"]
    listener = subprocess.Popen([*base, "listen", config_dir, url, str(count)], stdout=subprocess.PIPE, text=True)
    revoker = subprocess.Popen(
        [*base, "revoke", config_dir, url, str(count)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    assert listener.stdout is not None and revoker.stdout is not None and revoker.stdin is not None
    assert listener.stdout.readline().strip() == "READY"
    assert revoker.stdout.readline().strip() == "MADE"
    time.sleep(1.0)  # the listener has heard of the new tokens
    revoker.stdin.write("go\n")
    revoker.stdin.flush()
    committed = json.loads(revoker.stdout.readline().split(" ", 1)[1])
    seen = json.loads(listener.stdout.readline().split(" ", 1)[1])
    revoker.wait()
    listener.wait()
    missing = set(committed) - set(seen)
    assert not missing, f"{len(missing)} revocations never reached the other process"
    return [seen[t] - committed[t] for t in committed]


async def load_database(config_dir: str, url: str) -> None:
    """Copy the prepared directory into the database (the storage copy code)."""
    from opp_auth_postgresql import PostgresBackend

    from opp_auth.backend import JsonBackend

    target = PostgresBackend(PostgresBackend.CONFIG_SCHEMA({"type": "postgresql", "url": url}), config_dir)
    await target.async_open()
    try:
        await target.async_import(await JsonBackend({"type": "json"}, config_dir).async_export())
    finally:
        await target.async_close()


def main() -> None:
    """Measure at --users."""
    args = parse_args(__doc__ or "")
    from opp_auth.testing import PostgresServer, postgresql_bin_dir

    bin_dir = postgresql_bin_dir()
    if bin_dir is None:
        raise SystemExit("PostgreSQL is not installed (apt-get install postgresql)")
    server = PostgresServer(bin_dir)
    # A real server's durability: fsync on (the test fixture turns it off).
    conf = Path(server.data) / "postgresql.conf"
    server.start()
    try:
        server.execute("ALTER SYSTEM SET fsync = on")
        server.execute("ALTER SYSTEM SET synchronous_commit = on")
        server.execute("ALTER SYSTEM SET full_page_writes = on")
        server.stop()
        server._run(
            "pg_ctl", "-D", server.data, "-o", f"-p {server.port} -k {server.root} -c listen_addresses=127.0.0.1",
            "-l", os.path.join(server.root, "log"), "-w", "start",
        )  # fmt: skip
        del conf
        with tempfile.TemporaryDirectory() as tmp:
            json_dir = str(prepared_config(args.users, Path(tmp) / "json"))
            pg_dir = str(prepared_config(args.users, Path(tmp) / "pg"))
            url = server.url(server.create_database())
            t0 = time.perf_counter()
            asyncio.run(load_database(pg_dir, url))
            copy_s = time.perf_counter() - t0
            shutil_rm_storage(pg_dir)
            runs: dict[str, list[dict[str, Any]]] = {"json": [], "pg": []}
            for _ in range(ROUNDS):
                runs["json"].append(run_child("measure", json_dir, ""))
                runs["pg"].append(run_child("measure", pg_dir, url))
            delays = propagation(pg_dir, url)
    finally:
        server.destroy()
    emit(results(args.users, runs, delays, copy_s))


def shutil_rm_storage(config_dir: str) -> None:
    """Remove .storage from the PostgreSQL run's directory (only the secret and configuration stay)."""
    import shutil

    shutil.rmtree(Path(config_dir) / ".storage", ignore_errors=True)


def results(users: int, runs: dict[str, list[dict[str, Any]]], delays: list[float], copy_s: float) -> list[Result]:
    """The rows."""

    def med(store: str, key: str) -> float:
        return median([r[key] for r in runs[store]])

    def spread(store: str, key: str, scale: float = 1.0, unit: str = "") -> str:
        values = [r[key] * scale for r in runs[store]]
        return f"{min(values):.3g}-{max(values):.3g}{unit}"

    label = f"{users:,} users"
    check_ratio = median([p["check_us"] / j["check_us"] for p, j in zip(runs["pg"], runs["json"])])
    login_ratio = median([p["login"] / j["login"] for p, j in zip(runs["pg"], runs["json"])])
    login12_ratio = median([p["login12"] / j["login12"] for p, j in zip(runs["pg"], runs["json"])])
    return [
        Result(
            BENCH, f"token check, PostgreSQL / JSON ({label})", check_ratio, "x", 1.10,
            note=f"pg {med('pg', 'check_us'):.3g} µs ({spread('pg', 'check_us')}), "
            f"json {med('json', 'check_us'):.3g} µs ({spread('json', 'check_us')}); per-round ratios",
        ),
        Result(
            BENCH, f"revocation propagation p50 ({label})", percentile(delays, 50) * 1000, "ms",
            note=f"{len(delays)} revocations, from the call on one process (commit included) to removal from the other's cache",
        ),
        Result(BENCH, f"revocation propagation p99 ({label})", percentile(delays, 99) * 1000, "ms", 1000.0,
               note=f"max {max(delays) * 1000:.3g} ms"),
        Result(
            BENCH, f"login over HTTP, PostgreSQL / JSON, shipped cost-12 bcrypt ({label})", login12_ratio, "x", 1.10,
            note=f"pg {med('pg', 'login12') * 1000:.3g} ms ({spread('pg', 'login12', 1000, ' ms')}), "
            f"json {med('json', 'login12') * 1000:.3g} ms ({spread('json', 'login12', 1000, ' ms')}); per-round ratios",
        ),
        Result(
            BENCH, f"login over HTTP, PostgreSQL / JSON, cost-4 bcrypt ({label})", login_ratio, "x",
            note=f"pg {med('pg', 'login') * 1000:.3g} ms ({spread('pg', 'login', 1000, ' ms')}), "
            f"json {med('json', 'login') * 1000:.3g} ms ({spread('json', 'login', 1000, ' ms')}); "
            "the database's share made visible: what PostgreSQL adds per login, in ms, is the difference",
        ),
        Result(
            BENCH, f"start-up, PostgreSQL ({label})", med("pg", "startup"), "s",
            note=f"range {spread('pg', 'startup', 1, ' s')}, CPU {med('pg', 'startup_cpu'):.3g} s; "
            f"JSON {med('json', 'startup'):.3g} s ({spread('json', 'startup', 1, ' s')})",
        ),
        Result(
            BENCH, f"memory per process, PostgreSQL ({label})", med("pg", "rss_mb"), "MiB",
            note=f"max RSS after start-up and the checks; JSON {med('json', 'rss_mb'):.0f} MiB",
        ),
        Result(BENCH, f"storage copy into PostgreSQL ({label})", copy_s, "s", note="one run"),
    ]  # fmt: skip


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        child_main(sys.argv[2:])
    else:
        main()

"""Shared pieces of the benchmark scripts: building a real AuthManager, results, machine facts."""

from __future__ import annotations

import argparse
import json
import os
import platform
import secrets
import statistics
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from opp_auth.config import validate_config
from opp_auth.manager import AuthManager
from opp_auth.models import (
    ACCESS_TOKEN_EXPIRATION,
    GROUP_ID_USER,
    TOKEN_TYPE_NORMAL,
    Credentials,
    KeyRing,
    RefreshToken,
    User,
    hash_token,
)
from opp_auth.plugins import make_plugin_manager
from opp_auth.store import AuthStore

CLIENT_ID = "https://example.com/app"
REDIRECT_URI = "https://example.com/app/callback"
BENCH_DIR = Path(__file__).resolve().parent
# Lines starting with this carry a script's results to run_all.py.
RESULT_PREFIX = "BENCH-RESULTS "


@dataclass
class Result:
    """One row of the results table; target None means "reported, not a target"."""

    bench: str
    name: str
    value: float
    unit: str
    target: float | None = None
    op: str = "<="
    note: str = ""

    @property
    def status(self) -> str:
        """PASS, FAIL or "info"."""
        if self.target is None:
            return "info"
        ok = self.value <= self.target if self.op == "<=" else self.value >= self.target
        return "PASS" if ok else "FAIL"


def fmt(value: float) -> str:
    """A number with about three significant digits."""
    if value == 0:
        return "0"
    magnitude = abs(value)
    if magnitude >= 1000:
        return f"{value:,.0f}"
    if magnitude >= 100:
        return f"{value:.0f}"
    if magnitude >= 10:
        return f"{value:.1f}"
    if magnitude >= 1:
        return f"{value:.2f}"
    return f"{value:.3g}"


def render_rows(results: list[Result]) -> list[str]:
    """Markdown table rows: benchmark, measurement, value, target, status, note."""
    lines = [
        "| benchmark | measurement | measured | target | status | note |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for r in results:
        target = f"{r.op} {fmt(r.target)} {r.unit}" if r.target is not None else "—"
        lines.append(f"| {r.bench} | {r.name} | {fmt(r.value)} {r.unit} | {target} | {r.status} | {r.note} |")
    return lines


def emit(results: list[Result]) -> None:
    """Print a table for people and one machine-readable line for run_all.py."""
    print("\n".join(render_rows(results)))
    print(RESULT_PREFIX + json.dumps([asdict(r) for r in results]), flush=True)


# Store sizes every figure is taken at (bench/README.md); --quick uses smaller ones.
SIZES = (1, 10_000, 100_000)
QUICK_SIZES = (1, 1_000)


def parse_args(description: str, default_users: int = 100_000) -> argparse.Namespace:
    """The options every script accepts: --quick, and --users (the store size of this run)."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--quick", action="store_true", help="smaller sizes, for a smoke run")
    parser.add_argument("--users", type=int, default=default_users, help="users in the store (each with a token)")
    return parser.parse_args()


def users_label(users: int) -> str:
    """ "1 user", "10,000 users"."""
    return f"{users:,} user" + ("s" if users != 1 else "")


CACHE_DIR = Path(os.environ.get("OPP_AUTH_BENCH_CACHE", "/tmp/opp-auth-bench-cache"))
BENCH_PASSWORD = "bench-password"
# One bcrypt hash (cost 4) shared by every generated login: 100,000 cost-12 hashes would take hours.
_CHEAP_HASH: bytes | None = None


def prepared_config(users: int, dest: str | os.PathLike[str]) -> Path:
    """A configuration directory at dest with users people, each with a local login and a refresh token.

    .storage/auth (compacted, no journal), .storage/auth_provider.openpeerpower (logins user0..,
    a cost-4 hash each) and the server secret, as a server that ran for a while leaves them.
    Built once per size under CACHE_DIR and copied, so each run starts from the same files.
    """
    import asyncio
    import concurrent.futures
    import shutil

    cached = CACHE_DIR / f"users-{users}"
    if not (cached / "ready").exists():
        shutil.rmtree(cached, ignore_errors=True)
        cached.mkdir(parents=True)
        # In a thread of its own: callers may be inside an event loop already.
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            pool.submit(asyncio.run, _build_config(cached, users)).result()
        (cached / "ready").write_text("ok")
    dest = Path(dest)
    shutil.copytree(cached, dest, dirs_exist_ok=True)
    (dest / "ready").unlink()
    return dest


async def _build_config(config_dir: Path, users: int) -> None:
    """Write the files prepared_config copies."""
    import base64

    import bcrypt

    from opp_auth.manager import load_server_secret

    keyring = KeyRing(load_server_secret(str(config_dir)))
    store = AuthStore(str(config_dir))
    store.keyring = keyring
    await store.async_load()
    populate(store, users, credentials=True)
    await store.async_compact()
    hashed = base64.b64encode(bcrypt.hashpw(BENCH_PASSWORD.encode(), bcrypt.gensalt(4))).decode()
    logins = {
        "version": 1,
        "key": "auth_provider.openpeerpower",
        "data": {"users": [{"username": f"user{i}", "password": hashed} for i in range(users)]},
    }
    (config_dir / ".storage" / "auth_provider.openpeerpower").write_text(json.dumps(logins))


def make_auth(
    config_dir: str | os.PathLike[str], providers: list[dict[str, Any]], http: dict[str, Any] | None = None
) -> AuthManager:
    """An AuthManager built from configuration entries exactly as configuration.yaml gives them."""
    pm = make_plugin_manager()
    raw: dict[str, Any] = {"openpeerpower": {"auth_providers": providers}, "http": http or {}}
    config = validate_config(raw, pm, config_dir=Path(config_dir), allow_insecure_example=True)
    return AuthManager(
        str(config_dir),
        pm,
        provider_configs=config.providers,
        mfa_configs=config.mfa_modules,
        http_config=config.http,
        config_blocks=config.blocks,
    )


INSECURE_PROVIDER = {"type": "insecure_example", "users": [{"username": "bench", "password": "bench", "name": "Bench"}]}


def populate(store: AuthStore, count: int, *, credentials: bool = False, version: str = "0.1.0") -> list[RefreshToken]:
    """count active users with one normal refresh token each, added straight to the store's indexes.

    Built the way AuthStore's loader builds them: shared group tuple, client id,
    version and expiration objects, only the digest of each token's secret, and
    signing keys derived from the server secret (a store without a manager gets
    a key ring of its own, as AuthManager.async_setup gives it one).
    """
    group = store.get_group(GROUP_ID_USER)
    assert group is not None, "load the store first"
    if store.keyring is None:
        store.keyring = bench_keyring()
    groups = store.shared_groups([group])
    tokens: list[RefreshToken] = []
    # As a load builds them: no journal records (write the result with store.async_compact()).
    with store.unjournaled():
        _populate(store, count, groups, tokens, credentials, version)
    return tokens


def _populate(
    store: AuthStore, count: int, groups: Any, tokens: list[RefreshToken], credentials: bool, version: str
) -> None:
    """populate's loop."""
    for i in range(count):
        user = User(name=f"user {i}", is_active=True, groups=groups)
        store.add_user(user)
        cred = None
        if credentials:
            cred = Credentials(auth_provider_type="openpeerpower", auth_provider_id=None, data={"username": f"user{i}"})
            store.link_credentials(user, cred)
        token = RefreshToken(
            user=user,
            client_id=CLIENT_ID,
            access_token_expiration=ACCESS_TOKEN_EXPIRATION,
            token_hash=hash_token(secrets.token_hex(64)),
            keyring=store.keyring,
            credential=cred,
            version=version,
            expire_at=store.default_expire_at(TOKEN_TYPE_NORMAL),
        )
        store.add_refresh_token(token)
        tokens.append(token)


def bench_keyring() -> KeyRing:
    """A key ring for a store used without a manager (any secret will do for timing and sizes)."""
    return KeyRing(b"opp-auth bench server secret, 32")


def median(values: list[float]) -> float:
    """statistics.median, named for brevity."""
    return statistics.median(values)


def percentile(values: list[float], pct: float) -> float:
    """Nearest-rank percentile of values (pct in 0..100)."""
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    rank = max(1, min(len(ordered), round(pct / 100 * len(ordered) + 0.5)))
    return ordered[rank - 1]


def machine() -> dict[str, str]:
    """Core count, CPU model (as lscpu names it) and Python version of this machine."""
    import subprocess

    model = "unknown"
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
        for line in out.splitlines():
            if line.startswith("Model name:"):
                model = line.split(":", 1)[1].strip()
                break
    except (OSError, subprocess.SubprocessError):
        pass
    if model == "unknown":
        try:
            for line in Path("/proc/cpuinfo").read_text().splitlines():
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
        except OSError:
            pass
    return {
        "nproc": str(os.cpu_count()),
        "cpu": model,
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "os": f"{platform.system()} {platform.release()}",
    }


def python_exe() -> str:
    """This interpreter, for child processes."""
    return sys.executable


async def serve_with_api_token(auth: AuthManager) -> None:
    """Serve auth's app on a free loopback port with an API client's token; print READY; stop on SIGTERM."""
    import asyncio
    import signal
    import socket

    from aiohttp import web

    from opp_auth.http.app import create_app
    from opp_auth.models import GROUP_ID_ADMIN

    user = await auth.users.async_create_user("API client", [GROUP_ID_ADMIN])
    refresh_token = await auth.refresh_tokens.async_create_refresh_token(user, CLIENT_ID)
    token = await auth.access_tokens.async_create_access_token(refresh_token, "127.0.0.1")
    runner = web.AppRunner(create_app(auth), access_log=None, handle_signals=False)
    await runner.setup()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    await web.SockSite(runner, sock).start()
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    print("READY " + json.dumps({"port": sock.getsockname()[1], "token": token}), flush=True)
    await stop.wait()
    await runner.cleanup()


# ---- served processes and wrk (http_throughput, metrics_overhead) --------------------------------


class ServedProcess:
    """A server child process started with ``--serve KIND --config-dir DIR --users N`` by script,
    which prints ``READY {"port", "token"}`` once it listens; optionally pinned to cpu."""

    def __init__(self, script: str, kind: str, config_dir: str, cpu: str | None, users: int = 0) -> None:
        """Start it and wait for READY."""
        import subprocess

        cmd = [sys.executable, script, "--serve", kind, "--config-dir", config_dir, "--users", str(users)]
        if cpu is not None:
            cmd = ["taskset", "-c", cpu, *cmd]
        self.kind = kind
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line.startswith("READY "):
            self.proc.kill()
            raise RuntimeError(f"{kind} server did not start: {line!r}")
        info = json.loads(line[6:])
        self.base = f"http://127.0.0.1:{info['port']}"
        self.url = f"{self.base}/api/"
        self.token = info["token"]

    def get(self, path: str) -> tuple[int, bytes]:
        """GET path with the bench token: (status, body)."""
        import urllib.error
        import urllib.request

        req = urllib.request.Request(self.base + path, headers={"Authorization": f"Bearer {self.token}"})
        try:
            with urllib.request.urlopen(req, timeout=10) as resp:
                return resp.status, resp.read()
        except urllib.error.HTTPError as err:
            return err.code, err.read()

    def cpu_seconds(self) -> float:
        """User + system CPU time the server process has used."""
        with open(f"/proc/{self.proc.pid}/stat") as stat:
            fields = stat.read().rpartition(")")[2].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stop(self) -> None:
        """SIGTERM and wait."""
        import signal
        import subprocess

        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


WRK_CONNECTIONS = 32


def wrk_rps(url: str, token: str, seconds: float, cpu: str | None) -> tuple[float, int, int]:
    """(requests/s, requests, non-2xx responses) of one wrk run (-t1, WRK_CONNECTIONS connections)."""
    import re
    import subprocess

    cmd = ["wrk", "-t1", f"-c{WRK_CONNECTIONS}", f"-d{seconds:g}s", "-H", f"Authorization: Bearer {token}", url]
    if cpu is not None:
        cmd = ["taskset", "-c", cpu, *cmd]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True, timeout=seconds + 30).stdout
    rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
    total = re.search(r"(\d+) requests in", out)
    bad = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    errors = re.search(r"Socket errors:.*", out)
    if rps is None or total is None:
        raise RuntimeError(f"unexpected wrk output:\n{out}")
    if errors is not None:
        raise RuntimeError(f"wrk saw socket errors: {errors.group(0)}")
    return float(rps.group(1)), int(total.group(1)), int(bad.group(1)) if bad else 0

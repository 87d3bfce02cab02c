"""LDAP login latency with and without the connection pool, and GET latency while 50 LDAP logins run.

Needs slapd (Debian packages slapd and ldap-utils) and the opp-auth-ldap distribution. A throwaway
slapd is started on a free loopback port with one user and one group.

- one LDAP login step (search with the service account, group search, bind as the user) through the
  login flow manager, p50 and p99, with ``pool_size: 4`` and with ``pool_size: 0`` (new connections
  for every login);
- while 50 LDAP logins run at once over HTTP (login flow and token grant), authenticated
  GET /api/ requests sent at a steady 200 per second keep a 99th-percentile latency of at most 20 ms.

The HTTP server runs in a child process (the real application on 127.0.0.1); this process sends the
logins, and the GETs come from a probe process of their own, so the logins' client work is not
counted as the server's latency.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
from _common import CLIENT_ID, REDIRECT_URI, Result, emit, make_auth, median, percentile, serve_with_api_token

BENCH = "ldap_login"
P99_TARGET_MS = 20.0
GET_RATE = 200
CONCURRENT_LOGINS = 50
SUFFIX = "dc=example,dc=org"
PEOPLE = f"ou=people,{SUFFIX}"
GROUPS = f"ou=groups,{SUFFIX}"
READER_DN, READER_PW = f"cn=reader,{SUFFIX}", "reader-secret"
USERNAME, PASSWORD = "bench", "bench-pass"
HANDLER = ["ldap", None]

LDIF = f"""\
dn: {SUFFIX}
objectClass: dcObject
objectClass: organization
dc: example
o: Example

dn: {READER_DN}
objectClass: organizationalRole
objectClass: simpleSecurityObject
cn: reader
userPassword: {READER_PW}

dn: {PEOPLE}
objectClass: organizationalUnit
ou: people

dn: {GROUPS}
objectClass: organizationalUnit
ou: groups

dn: uid={USERNAME},{PEOPLE}
objectClass: inetOrgPerson
uid: {USERNAME}
cn: Bench User
sn: User
userPassword: {PASSWORD}

dn: cn=staff,{GROUPS}
objectClass: groupOfNames
cn: staff
member: uid={USERNAME},{PEOPLE}
"""


def _find(name: str) -> str:
    """A program from PATH or the sbin directories."""
    found = shutil.which(name) or next(
        (p for d in ("/usr/local/sbin", "/usr/sbin", "/sbin") if os.access(p := os.path.join(d, name), os.X_OK)), None
    )
    if found is None:
        raise SystemExit(f"{name} is not installed (Debian: apt-get install slapd ldap-utils)")
    return found


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_slapd(folder: Path) -> tuple[subprocess.Popen[bytes], str]:
    """A slapd with the bench directory; (process, ldap:// URL)."""
    slapd = _find("slapd")
    (folder / "db").mkdir()
    (folder / "slapd.conf").write_text(f"""\
include /etc/ldap/schema/core.schema
include /etc/ldap/schema/cosine.schema
include /etc/ldap/schema/nis.schema
include /etc/ldap/schema/inetorgperson.schema
pidfile {folder}/slapd.pid
modulepath /usr/lib/ldap
moduleload back_mdb
database mdb
maxsize 16777216
suffix "{SUFFIX}"
rootdn "cn=admin,{SUFFIX}"
directory {folder}/db
access to attrs=userPassword by anonymous auth by * none
access to * by * read
""")
    (folder / "data.ldif").write_text(LDIF)
    subprocess.run([os.path.join(os.path.dirname(slapd), "slapadd"), "-q", "-f", str(folder / "slapd.conf"),
                    "-l", str(folder / "data.ldif")], check=True, capture_output=True)
    port = _free_port()
    proc = subprocess.Popen([slapd, "-f", str(folder / "slapd.conf"), "-h", f"ldap://127.0.0.1:{port}/", "-d", "0"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return proc, f"ldap://127.0.0.1:{port}"
        except OSError:
            time.sleep(0.02)
    proc.kill()
    raise RuntimeError("slapd did not start")


def provider_config(url: str, pool_size: int) -> dict[str, Any]:
    """The provider as a directory administrator would configure it."""
    return {
        "type": "ldap", "url": url, "base_dn": PEOPLE, "bind_dn": READER_DN, "bind_password": READER_PW,
        "group_base_dn": GROUPS, "required_groups": [f"cn=staff,{GROUPS}"], "pool_size": pool_size,
    }


async def step_latencies(url: str, pool_size: int, rounds: int) -> list[float]:
    """Seconds of the login step (the LDAP part) through the flow manager, rounds times."""
    with tempfile.TemporaryDirectory() as config_dir:
        auth = make_auth(config_dir, [provider_config(url, pool_size)])
        await auth.async_setup()
        context = {"ip_address": "127.0.0.1", "credential_only": False, "client_id": CLIENT_ID,
                   "redirect_uri": REDIRECT_URI}
        times = []
        for i in range(rounds + 5):
            flow = await auth.login_flow.async_init(tuple(HANDLER), context=dict(context))
            start = time.perf_counter()
            result = await auth.login_flow.async_configure(flow["flow_id"], {"username": USERNAME, "password": PASSWORD})
            elapsed = time.perf_counter() - start
            assert result["type"] == "create_entry", result
            if i >= 5:  # warm-up: imports, first connections
                times.append(elapsed)
        await auth.async_shutdown()
        return times


async def _serve(config_dir: str, url: str) -> None:
    """The real application with the ldap provider and one bearer token; READY line on stdout."""

    auth = make_auth(config_dir, [provider_config(url, 4)])
    # All the bench's logins come from 127.0.0.1: lift the per-address and per-prefix caps on flows in progress.
    auth.login_flow.max_per_address = auth.login_flow.max_per_prefix = 10 * CONCURRENT_LOGINS
    await auth.async_setup()
    await serve_with_api_token(auth)
    await auth.async_shutdown()


async def http_login(session: aiohttp.ClientSession, base: str) -> float:
    """One LDAP login over HTTP (flow, credentials, token grant); seconds taken."""
    start = time.perf_counter()
    body = {"client_id": CLIENT_ID, "handler": HANDLER, "redirect_uri": REDIRECT_URI}
    async with session.post(f"{base}/auth/login_flow", json=body) as resp:
        flow = await resp.json()
    step = {"client_id": CLIENT_ID, "username": USERNAME, "password": PASSWORD}
    async with session.post(f"{base}/auth/login_flow/{flow['flow_id']}", json=step) as resp:
        result = await resp.json()
        assert resp.status == 200 and result["type"] == "create_entry", result
    form = {"grant_type": "authorization_code", "client_id": CLIENT_ID, "code": result["result"]}
    async with session.post(f"{base}/auth/token", data=form) as resp:
        assert resp.status == 200, await resp.text()
    return time.perf_counter() - start


async def _probe(base: str, token: str) -> None:
    """GET /api/ at GET_RATE per second until a line arrives on stdin; then print [[sent, ms], ...] as JSON.

    Runs in a process of its own: the 50 logins' own client work (150 requests in a tenth of a second)
    would otherwise delay this loop's requests and be counted as the server's latency. Sending times are
    time.monotonic(), which the parent process reads on the same clock.
    """
    samples: list[tuple[float, float]] = []
    failures = 0
    headers = {"Authorization": f"Bearer {token}"}

    async def one(session: aiohttp.ClientSession) -> None:
        nonlocal failures
        sent = time.monotonic()
        start = time.perf_counter()
        async with session.get(f"{base}/api/", headers=headers) as resp:
            await resp.read()
            if resp.status != 200:
                failures += 1
                return
        samples.append((sent, (time.perf_counter() - start) * 1000))

    loop = asyncio.get_running_loop()
    stop = loop.run_in_executor(None, sys.stdin.readline)
    tasks: set[asyncio.Task[None]] = set()
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        await one(session)  # the connection is open before the first timed request
        samples.clear()
        print("PROBING", flush=True)
        next_at = time.perf_counter()
        while not stop.done():
            task = asyncio.ensure_future(one(session))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            next_at += 1 / GET_RATE
            await asyncio.sleep(max(0.0, next_at - time.perf_counter()))
        if tasks:
            await asyncio.gather(*tasks)
    print(json.dumps({"samples": samples, "failures": failures}), flush=True)


async def gets_during_logins(
    base: str, token: str, concurrent: int, waves: int
) -> tuple[list[float], list[float], list[float]]:
    """GET /api/ latencies (ms) sent at GET_RATE per second by a probe process: quiet, during the bursts of
    logins this process sends; and login seconds."""
    probe = subprocess.Popen(
        [sys.executable, __file__, "--probe", base, token], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert probe.stdin is not None and probe.stdout is not None
        if probe.stdout.readline().strip() != "PROBING":
            raise RuntimeError("the GET probe did not start")
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as login_session:
            await http_login(login_session, base)  # the first login creates the user
            await asyncio.sleep(0.5)
            quiet_from = time.monotonic()
            await asyncio.sleep(2.0)
            busy_from = time.monotonic()
            windows: list[tuple[float, float]] = []
            durations: list[float] = []
            # One burst of LDAP logins is over in ~0.1 s: repeat it so the p99 rests on enough GETs.
            for _ in range(waves):
                start = time.monotonic()
                durations += await asyncio.gather(*(http_login(login_session, base) for _ in range(concurrent)))
                windows.append((start, time.monotonic()))
                await asyncio.sleep(0.05)
        out, _ = probe.communicate("stop\n", timeout=60)
    finally:
        if probe.poll() is None:
            probe.kill()
            probe.wait()
    report = json.loads(out.strip().splitlines()[-1])
    if report["failures"]:
        raise RuntimeError(f"{report['failures']} GET /api/ requests failed")
    samples = report["samples"]
    quiet = [lat for sent, lat in samples if quiet_from <= sent < busy_from]
    busy = [lat for sent, lat in samples if any(a <= sent < b for a, b in windows)]
    return quiet, busy, durations


def main() -> None:
    """Start slapd and the server process, measure, stop them."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller sizes, for a smoke run")
    parser.add_argument("--serve", nargs=2, metavar=("CONFIG_DIR", "URL"))
    parser.add_argument("--probe", nargs=2, metavar=("BASE_URL", "TOKEN"))
    args = parser.parse_args()
    if args.serve:
        logging.basicConfig(level=logging.ERROR)
        asyncio.run(_serve(*args.serve))
        return
    if args.probe:
        asyncio.run(_probe(*args.probe))
        return
    rounds = 50 if args.quick else 300
    concurrent = 10 if args.quick else CONCURRENT_LOGINS
    waves = 3 if args.quick else 10
    with tempfile.TemporaryDirectory() as folder:
        slapd, url = start_slapd(Path(folder))
        try:
            pooled = asyncio.run(step_latencies(url, 4, rounds))
            unpooled = asyncio.run(step_latencies(url, 0, rounds))
            with tempfile.TemporaryDirectory() as config_dir:
                proc = subprocess.Popen([sys.executable, __file__, "--serve", config_dir, url], stdout=subprocess.PIPE,
                                        text=True)
                try:
                    assert proc.stdout is not None
                    line = proc.stdout.readline()
                    if not line.startswith("READY "):
                        raise RuntimeError(f"server did not start: {line!r}")
                    info = json.loads(line[6:])
                    quiet, busy, durations = asyncio.run(
                        gets_during_logins(f"http://127.0.0.1:{info['port']}", info["token"], concurrent, waves)
                    )
                finally:
                    proc.send_signal(signal.SIGTERM)
                    proc.wait(timeout=30)
        finally:
            slapd.terminate()
            slapd.wait(timeout=10)

    def ms(values: list[float], pct: float) -> float:
        return percentile(values, pct) * 1000

    results = [
        Result(BENCH, "LDAP login step p50, pool_size 4", ms(pooled, 50), "ms", note=f"{rounds} logins"),
        Result(BENCH, "LDAP login step p99, pool_size 4", ms(pooled, 99), "ms"),
        Result(BENCH, "LDAP login step p50, no pool", ms(unpooled, 50), "ms", note=f"{rounds} logins"),
        Result(BENCH, "LDAP login step p99, no pool", ms(unpooled, 99), "ms"),
        Result(BENCH, f"GET /api/ p99 at {GET_RATE}/s during {concurrent} concurrent LDAP logins", percentile(busy, 99),
               "ms", P99_TARGET_MS,
               note=f"{len(busy)} GETs during {waves} bursts; p50 {percentile(busy, 50):.1f} ms, max {max(busy):.1f} ms; "
               f"logins median {median(durations) * 1000:.0f} ms, slowest {max(durations) * 1000:.0f} ms"),
        Result(BENCH, f"GET /api/ p99 at {GET_RATE}/s, no logins", percentile(quiet, 99), "ms",
               note=f"{len(quiet)} GETs; p50 {percentile(quiet, 50):.1f} ms"),
    ]
    emit(results)


if __name__ == "__main__":
    main()

"""Login cost against one bcrypt check, and GET latency while 50 logins run.

Targets, with the local (openpeerpower) provider, bcrypt cost 12:

- one login (POST /auth/login_flow, POST the username and password, POST
  /auth/token for the code) costs at most 1.1 × one bare bcrypt.checkpw of cost
  12, measured alternately in this process;
- while 50 logins run at once, authenticated GET /api/ requests sent at a steady
  200 per second keep a 99th-percentile latency of at most 20 ms.

The server runs in a child process (the real application on 127.0.0.1); this
process is the client.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import signal
import subprocess
import sys
import tempfile
import time
from typing import Any

import aiohttp
import bcrypt
from _common import (
    CLIENT_ID,
    REDIRECT_URI,
    Result,
    emit,
    make_auth,
    median,
    percentile,
    prepared_config,
    serve_with_api_token,
    users_label,
)

BENCH = "login"
USERNAME = "bench"
PASSWORD = "correct horse battery staple"
RATIO_TARGET = 1.1
P99_TARGET_MS = 20.0
GET_RATE = 200
CONCURRENT_LOGINS = 50


async def _serve(config_dir: str, users: int) -> None:
    """The real application with one local login and one bearer token; READY line on stdout."""

    if users > 1:
        prepared_config(users, config_dir)  # plus the bench login and API client
    auth = make_auth(config_dir, [{"type": "openpeerpower"}])
    await auth.async_setup()
    provider = auth.registry.get_auth_provider("openpeerpower", None)
    assert provider is not None
    await provider.async_add_auth(USERNAME, PASSWORD)
    await serve_with_api_token(auth)


async def login(session: aiohttp.ClientSession, base: str) -> float:
    """One full login with the local provider; seconds taken."""
    start = time.perf_counter()
    body = {"client_id": CLIENT_ID, "handler": ["openpeerpower", None], "redirect_uri": REDIRECT_URI}
    async with session.post(f"{base}/auth/login_flow", json=body) as resp:
        flow = await resp.json()
        assert resp.status == 200 and flow["type"] == "form", flow
    step = {"client_id": CLIENT_ID, "username": USERNAME, "password": PASSWORD}
    async with session.post(f"{base}/auth/login_flow/{flow['flow_id']}", json=step) as resp:
        result = await resp.json()
        assert resp.status == 200 and result["type"] == "create_entry", result
    form = {"grant_type": "authorization_code", "client_id": CLIENT_ID, "code": result["result"]}
    async with session.post(f"{base}/auth/token", data=form) as resp:
        tokens = await resp.json()
        assert resp.status == 200 and "access_token" in tokens, tokens
    return time.perf_counter() - start


class GetSampler:
    """Sends authenticated GET /api/ at a steady rate (open loop) and records latencies."""

    def __init__(self, session: aiohttp.ClientSession, url: str, token: str, rate: int) -> None:
        """Not sending until start()."""
        self.session = session
        self.url = url
        self.headers = {"Authorization": f"Bearer {token}"}
        self.interval = 1 / rate
        self.samples: list[tuple[float, float]] = []  # (sent at, latency s)
        self.failures = 0
        self._tasks: set[asyncio.Task[None]] = set()
        self._runner: asyncio.Task[None] | None = None

    async def _one(self) -> None:
        start = time.perf_counter()
        async with self.session.get(self.url, headers=self.headers) as resp:
            await resp.read()
            ok = resp.status == 200
        if ok:
            self.samples.append((start, time.perf_counter() - start))
        else:
            self.failures += 1

    async def _run(self) -> None:
        next_at = time.perf_counter()
        while True:
            task = asyncio.ensure_future(self._one())
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
            next_at += self.interval
            await asyncio.sleep(max(0.0, next_at - time.perf_counter()))

    def start(self) -> None:
        """Begin sending."""
        self._runner = asyncio.ensure_future(self._run())

    async def stop(self) -> None:
        """Stop sending and wait for the requests in flight."""
        assert self._runner is not None
        self._runner.cancel()
        try:
            await self._runner
        except asyncio.CancelledError:
            pass
        if self._tasks:
            await asyncio.gather(*self._tasks)

    def latencies_ms(self, since: float, until: float) -> list[float]:
        """Latencies of requests sent in [since, until)."""
        return [lat * 1000 for sent, lat in self.samples if since <= sent < until]


async def client(base: str, token: str, rounds: int, concurrent: int, label: str) -> list[Result]:
    """Everything measured from the client side."""
    stored_hash = bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(rounds=12))
    loop = asyncio.get_running_loop()
    async with aiohttp.ClientSession() as session:
        await login(session, base)  # the first login creates the user; time the usual case
        logins, checks = [], []
        for _ in range(rounds):
            start = time.perf_counter()
            await loop.run_in_executor(None, bcrypt.checkpw, PASSWORD.encode(), stored_hash)
            checks.append(time.perf_counter() - start)
            logins.append(await login(session, base))

    # The server allows 30 login flows in progress per client address, so the 50 logins come
    # from 50 loopback addresses, as 50 clients would.
    login_sessions = [
        aiohttp.ClientSession(connector=aiohttp.TCPConnector(local_addr=(f"127.0.0.{index + 2}", 0)))
        for index in range(concurrent)
    ]
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as get_session:
        sampler = GetSampler(get_session, f"{base}/api/", token, GET_RATE)
        sampler.start()
        try:
            await asyncio.sleep(0.5)  # connections opened
            quiet_from = time.perf_counter()
            await asyncio.sleep(2.0)
            busy_from = time.perf_counter()
            durations = await asyncio.gather(*(login(session, base) for session in login_sessions))
            busy_until = time.perf_counter()
        finally:
            await sampler.stop()
            for session in login_sessions:
                await session.close()
    quiet = sampler.latencies_ms(quiet_from, busy_from)
    busy = sampler.latencies_ms(busy_from, busy_until)
    if sampler.failures:
        raise RuntimeError(f"{sampler.failures} GET /api/ requests failed")

    login_s, check_s = median(logins), median(checks)
    return [
        Result(BENCH, f"one login (flow + token grant), local provider, {label}", login_s * 1000, "ms",
               note=f"median of {rounds}"),
        Result(BENCH, f"one bcrypt.checkpw, cost 12 (beside {label})", check_s * 1000, "ms", note=f"median of {rounds}, alternated with the logins"),
        Result(BENCH, f"login / bcrypt check, {label}", login_s / check_s, "×", RATIO_TARGET),
        Result(BENCH, f"GET /api/ p99 at {GET_RATE}/s during {concurrent} concurrent logins, {label}",
               percentile(busy, 99), "ms",
               P99_TARGET_MS,
               note=f"{len(busy)} GETs over {busy_until - busy_from:.1f} s; p50 {percentile(busy, 50):.1f} ms, "
               f"max {max(busy):.1f} ms; slowest login {max(durations):.2f} s"),
        Result(BENCH, f"GET /api/ p99 at {GET_RATE}/s, no logins, {label}", percentile(quiet, 99), "ms",
               note=f"{len(quiet)} GETs; p50 {percentile(quiet, 50):.1f} ms"),
    ]


def main() -> None:
    """Start the server process, measure, stop it."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--serve")
    parser.add_argument("--users", type=int, default=1, help="people in the store, each with a refresh token")
    args = parser.parse_args()
    if args.serve:
        logging.basicConfig(level=logging.ERROR)
        asyncio.run(_serve(args.serve, args.users))
        return
    with tempfile.TemporaryDirectory() as config_dir:
        proc = subprocess.Popen(
            [sys.executable, __file__, "--serve", config_dir, "--users", str(args.users)], stdout=subprocess.PIPE, text=True
        )
        try:
            assert proc.stdout is not None
            line = proc.stdout.readline()
            if not line.startswith("READY "):
                raise RuntimeError(f"server did not start: {line!r}")
            info: dict[str, Any] = json.loads(line[6:])
            base = f"http://127.0.0.1:{info['port']}"
            results = asyncio.run(
                client(base, info["token"], 3 if args.quick else 8, 10 if args.quick else CONCURRENT_LOGINS,
                       users_label(args.users))
            )
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=30)
    emit(results)


if __name__ == "__main__":
    main()

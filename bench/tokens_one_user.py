"""One user with 10,000 refresh tokens: load, list and revoke-all each under 100 ms.

- load: AuthStore.async_load of a .storage/auth holding that user and their tokens;
- list: the websocket command auth/refresh_tokens, round trip through the real app;
- revoke-all: auth/delete_all_refresh_tokens (keeping the current token), round trip,
  durable on return (one journal write for all of them).

The application runs in a server process on 127.0.0.1 (the client, this process, decodes
the answers on the other CPU); the websocket authenticates with an access token of one of
the user's tokens.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import tempfile
import time

import aiohttp
from _common import CLIENT_ID, INSECURE_PROVIDER, Result, bench_keyring, emit, make_auth, parse_args

from opp_auth.http.app import create_app
from opp_auth.models import ACCESS_TOKEN_EXPIRATION, GROUP_ID_ADMIN, RefreshToken, User
from opp_auth.store import AuthStore

BENCH = "tokens_one_user"
TARGET_MS = 100.0


async def write_store(config_dir: str, count: int) -> None:
    """A .storage/auth with one admin holding count refresh tokens."""
    store = AuthStore(config_dir)
    store.keyring = bench_keyring()
    await store.async_load()
    with store.unjournaled():
        user = User(name="busy", is_active=True, groups=[store.get_group(GROUP_ID_ADMIN)])
        store.add_user(user)
        for i in range(count):
            store.add_refresh_token(
                RefreshToken(user=user, client_id=CLIENT_ID, access_token_expiration=ACCESS_TOKEN_EXPIRATION,
                             client_name=f"device {i}", keyring=store.keyring)
            )
    await store.async_compact()


async def serve(config_dir: str) -> None:
    """Child process: the real app on a free port; READY with the port and an access token."""
    import json
    import signal
    import socket

    from aiohttp import web

    logging.basicConfig(level=logging.ERROR)
    auth = make_auth(config_dir, [INSECURE_PROVIDER])
    await auth.async_setup()
    current = next(iter(auth.store.users()[0].token_list))
    access = await auth.access_tokens.async_create_access_token(current, "127.0.0.1")
    runner = web.AppRunner(create_app(auth), access_log=None, handle_signals=False)
    await runner.setup()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    await web.SockSite(runner, sock).start()
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    print("READY " + json.dumps({"port": sock.getsockname()[1], "token": access}), flush=True)
    await stop.wait()
    await runner.cleanup()
    await auth.async_shutdown()


def _cpu_ms(pid: int) -> float:
    """CPU time (user + system) a process has used so far, in milliseconds (from /proc/<pid>/stat)."""
    import os

    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) * 1000 / os.sysconf("SC_CLK_TCK")


async def client(url: str, access: str, count: int, server_pid: int) -> tuple[float, float, float, float]:
    """List, then revoke all but the current token: round-trip milliseconds of each, and the server's CPU ms."""
    async with aiohttp.ClientSession() as session, session.ws_connect(url) as ws:
        assert (await ws.receive_json())["type"] == "auth_required"
        await ws.send_json({"type": "auth", "access_token": access})
        assert (await ws.receive_json())["type"] == "auth_ok"
        cpu = _cpu_ms(server_pid)
        start = time.perf_counter()
        await ws.send_json({"id": 1, "type": "auth/refresh_tokens"})
        listed = await ws.receive_json(timeout=60)
        list_ms = (time.perf_counter() - start) * 1000
        list_cpu = _cpu_ms(server_pid) - cpu
        assert listed["success"] and len(listed["result"]) == count, listed.get("error")
        cpu = _cpu_ms(server_pid)
        start = time.perf_counter()
        await ws.send_json({"id": 2, "type": "auth/delete_all_refresh_tokens", "delete_current_token": False})
        revoked = await ws.receive_json(timeout=600)
        revoke_ms = (time.perf_counter() - start) * 1000
        # Includes the start of the background hook calls for the revoked tokens (after the answer).
        revoke_cpu = _cpu_ms(server_pid) - cpu
        assert revoked["success"], revoked
        await ws.send_json({"id": 3, "type": "auth/refresh_tokens"})
        left = await ws.receive_json(timeout=60)
        assert len(left["result"]) == 1, len(left["result"])
    return list_ms, revoke_ms, list_cpu, revoke_cpu


def measure(count: int) -> list[Result]:
    """Load (in this process), then list and revoke all against a server process."""
    import json
    import signal
    import subprocess
    import sys

    with tempfile.TemporaryDirectory() as config_dir:
        asyncio.run(write_store(config_dir, count))
        probe = AuthStore(config_dir)
        probe.keyring = bench_keyring()
        gc.collect()
        start, cpu = time.perf_counter(), time.process_time()
        asyncio.run(probe.async_load())
        load_ms = (time.perf_counter() - start) * 1000
        load_cpu = (time.process_time() - cpu) * 1000
        assert probe.users()[0].token_count == count
        del probe
        proc = subprocess.Popen([sys.executable, __file__, "--serve", config_dir], stdout=subprocess.PIPE, text=True)
        try:
            assert proc.stdout is not None
            line = proc.stdout.readline()
            if not line.startswith("READY "):
                raise RuntimeError(f"server did not start: {line!r}")
            info = json.loads(line[6:])
            list_ms, revoke_ms, list_cpu, revoke_cpu = asyncio.run(
                client(f"http://127.0.0.1:{info['port']}/api/websocket", info["token"], count, proc.pid)
            )
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=60)
    label = f"one user with {count:,} tokens"
    return [
        Result(BENCH, f"load (AuthStore.async_load), {label}", load_ms, "ms", TARGET_MS),
        Result(BENCH, f"load CPU time, {label}", load_cpu, "ms",
               note="time.process_time, all threads: what the load costs whatever else runs"),
        Result(BENCH, f"list (websocket auth/refresh_tokens), {label}", list_ms, "ms", TARGET_MS,
               note="round trip to a server process"),
        Result(BENCH, f"list, server CPU time, {label}", list_cpu, "ms",
               note="/proc/<pid>/stat of the server across the round trip (10 ms ticks)"),
        Result(BENCH, f"revoke all (auth/delete_all_refresh_tokens), {label}", revoke_ms, "ms", TARGET_MS,
               note="round trip, durable on return"),
        Result(BENCH, f"revoke all, server CPU time, {label}", revoke_cpu, "ms",
               note="/proc/<pid>/stat across the round trip (10 ms ticks)"),
    ]


def main() -> None:
    """10,000 tokens (1,000 with --quick)."""
    import sys

    if len(sys.argv) == 3 and sys.argv[1] == "--serve":
        asyncio.run(serve(sys.argv[2]))
        return
    args = parse_args(__doc__.splitlines()[0])
    emit(measure(1_000 if args.quick else 10_000))


if __name__ == "__main__":
    main()

"""What metrics cost on the bearer GET path: the real app with http: metrics on vs the same app with it off.

Target (issue 18): with metrics on, authenticated GET /api/ keeps at least 95%
of the requests per second it has with metrics off. Both servers are the real
application (create_app, the same store of N users, a bearer token of the
bench client); the only difference is ``http: metrics: enabled: true`` (the
opp-auth-metrics plugin then times each request and counts the token check,
and /metrics is scraped once per round so the series exist and stay read).

Each server runs in its own process pinned to CPU 0 (when taskset is there),
wrk on CPU 1; twelve rounds of 1 s alternate A-B-B-A and the median of the per-round ratios
is the target row. Server CPU per request (from /proc/<pid>/stat around each
wrk run) is the cross-check that other load on the machine disturbs much less.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile

from _common import (
    CLIENT_ID,
    INSECURE_PROVIDER,
    WRK_CONNECTIONS,
    Result,
    ServedProcess,
    emit,
    fmt,
    make_auth,
    median,
    prepared_config,
    users_label,
    wrk_rps,
)

BENCH = "metrics_overhead"
TARGET_RATIO = 95.0
CONNECTIONS = WRK_CONNECTIONS
KINDS = ("off", "on")


async def _serve(kind: str, config_dir: str, users: int) -> None:
    """Serve the real app on a free 127.0.0.1 port until SIGTERM; print READY with port and token."""
    from aiohttp import web

    from opp_auth.http.app import create_app
    from opp_auth.models import GROUP_ID_ADMIN

    if users > 1:
        prepared_config(users, config_dir)
    http = {"metrics": {"enabled": kind == "on"}}
    auth = make_auth(config_dir, [INSECURE_PROVIDER], http)
    await auth.async_setup()
    user = await auth.users.async_create_user("Bench", [GROUP_ID_ADMIN])
    refresh_token = await auth.refresh_tokens.async_create_refresh_token(user, CLIENT_ID)
    token = await auth.access_tokens.async_create_access_token(refresh_token, "127.0.0.1")
    app = create_app(auth)
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    await web.SockSite(runner, sock).start()
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    print("READY " + json.dumps({"port": sock.getsockname()[1], "token": token}), flush=True)
    await stop.wait()
    await runner.cleanup()


class Server(ServedProcess):
    """A server child process of this script."""

    def __init__(self, kind: str, config_dir: str, cpu: str | None, users: int = 0) -> None:
        """Start it and wait for READY."""
        super().__init__(__file__, kind, config_dir, cpu, users)


def check(servers: dict[str, Server]) -> None:
    """Both answer the bearer GET; only the one with metrics on serves /metrics, with the requests counted."""
    for server in servers.values():
        assert server.get("/api/")[0] == 200
    assert servers["off"].get("/metrics")[0] == 404
    status, body = servers["on"].get("/metrics")
    assert status == 200 and b'opp_auth_http_request_duration_seconds_count{method="GET",route="/api/"' in body, body[
        :300
    ]


# ---- in process: the pipeline and the view, without sockets (for instruction counts) -------


async def _in_process(kind: str, config_dir: str, requests: int) -> float:
    """Serve GET /api/ requests times through the app's own handler (mocked transport); CPU seconds taken."""
    import time

    from aiohttp.test_utils import make_mocked_request

    from opp_auth.http.app import create_app
    from opp_auth.models import GROUP_ID_ADMIN

    auth = make_auth(config_dir, [INSECURE_PROVIDER], {"metrics": {"enabled": kind == "on"}})
    app = create_app(auth)
    app.freeze()
    await app.startup()
    user = await auth.users.async_create_user("Bench", [GROUP_ID_ADMIN])
    refresh_token = await auth.refresh_tokens.async_create_refresh_token(user, CLIENT_ID)
    headers = {"Authorization": f"Bearer {await auth.access_tokens.async_create_access_token(refresh_token, '127.0.0.1')}"}
    handle = app._handle
    # One mocked request served again and again (a mock per request would cost more than the request).
    request = make_mocked_request("GET", "/api/", headers=headers, app=app)
    for _ in range(200):  # warm the caches both ways
        assert (await handle(request)).status == 200
    start = time.process_time()
    for _ in range(requests):
        await handle(request)
    used = time.process_time() - start
    await app.shutdown()
    await app.cleanup()
    return used


def callgrind_instructions(kind: str, requests: int) -> int:
    """Instructions (callgrind's Ir) of a whole in-process run of requests requests."""
    with tempfile.TemporaryDirectory() as config_dir:
        out = os.path.join(config_dir, "callgrind.out")
        cmd = [
            "valgrind",
            "--tool=callgrind",
            f"--callgrind-out-file={out}",
            sys.executable,
            __file__,
            "--in-process",
            kind,
            "--config-dir",
            config_dir,
            "--requests",
            str(requests),
        ]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=1800)
        found = re.search(r"Collected : (\d+)", done.stderr)
        if done.returncode != 0 or found is None:
            raise RuntimeError(f"callgrind run failed:\n{done.stderr[-2000:]}")
        return int(found.group(1))


def instruction_results(label: str) -> list[Result]:
    """Instructions per request from callgrind: (run of 2,200 requests - run of 200) / 2,000, off and on."""
    per_request = {}
    for kind in KINDS:
        per_request[kind] = (callgrind_instructions(kind, 2200) - callgrind_instructions(kind, 200)) / 2000
    added = per_request["on"] - per_request["off"]
    return [
        Result(
            BENCH,
            "instructions per GET /api/ through the app's handler, metrics off",
            per_request["off"],
            "Ir",
            note="callgrind, in process (mocked transport: no socket, no HTTP parsing or writing)",
        ),
        Result(
            BENCH,
            "instructions per GET /api/ through the app's handler, metrics on",
            per_request["on"],
            "Ir",
            note=f"added by metrics: {fmt(added)} Ir per request",
        ),
        Result(
            BENCH,
            "added instructions / metrics-off instructions, handler path only",
            added / per_request["off"] * 100,
            "%",
            note="an upper bound of the share of a real request (which also parses and writes HTTP)",
        ),
    ]


def main() -> None:
    """Alternate the two servers under the same load; compare median requests/s and CPU per request."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--serve", choices=KINDS)
    parser.add_argument("--config-dir")
    parser.add_argument("--seconds", type=float, default=1.0)
    parser.add_argument("--rounds", type=int, default=12)
    parser.add_argument("--users", type=int, default=1, help="people in the store, the bench client included")
    parser.add_argument("--in-process", choices=KINDS)
    parser.add_argument("--requests", type=int, default=0)
    parser.add_argument("--callgrind", action="store_true", help="also count instructions per request (valgrind)")
    args = parser.parse_args()
    if args.in_process:
        logging.basicConfig(level=logging.ERROR)
        used = asyncio.run(_in_process(args.in_process, args.config_dir, args.requests))
        print(json.dumps({"cpu_seconds": used}))
        return
    if args.serve:
        logging.basicConfig(level=logging.ERROR)
        asyncio.run(_serve(args.serve, args.config_dir, args.users))
        return
    if shutil.which("wrk") is None:
        sys.exit("metrics_overhead needs wrk (apt-get install -y wrk)")
    two_cpus = (os.cpu_count() or 1) >= 2 and shutil.which("taskset") is not None
    server_cpu, load_cpu = ("0", "1") if two_cpus else (None, None)
    seconds = 1.0 if args.quick else args.seconds
    rounds = 2 if args.quick else args.rounds

    with tempfile.TemporaryDirectory() as off_dir, tempfile.TemporaryDirectory() as on_dir:
        servers = {
            "off": Server("off", off_dir, server_cpu, args.users),
            "on": Server("on", on_dir, server_cpu, args.users),
        }
        try:
            check(servers)
            for server in servers.values():
                wrk_rps(server.url, server.token, 1.0, load_cpu)  # warm-up
            rates: dict[str, list[float]] = {kind: [] for kind in KINDS}
            cpu_per_request: dict[str, list[float]] = {kind: [] for kind in KINDS}
            for index in range(rounds):
                order = list(KINDS) if index % 2 == 0 else list(reversed(KINDS))
                for kind in order:
                    server = servers[kind]
                    cpu_before = server.cpu_seconds()
                    rps, total, bad = wrk_rps(server.url, server.token, seconds, load_cpu)
                    cpu_used = server.cpu_seconds() - cpu_before
                    if bad:
                        raise RuntimeError(f"metrics {kind}: {bad} responses were not 2xx")
                    rates[kind].append(rps)
                    cpu_per_request[kind].append(cpu_used / total * 1e6)
                servers["on"].get("/metrics")  # a scrape per round, as Prometheus would
            check(servers)
        finally:
            for server in servers.values():
                server.stop()

    callgrind = instruction_results(users_label(1)) if args.callgrind else []
    ratios = [on / off * 100 for on, off in zip(rates["on"], rates["off"], strict=True)]
    cpu_ratios = [off / on * 100 for on, off in zip(cpu_per_request["on"], cpu_per_request["off"], strict=True)]
    label = users_label(max(1, args.users))
    pinning = "server on CPU 0, wrk on CPU 1" if two_cpus else "unpinned"
    emit(
        [
            Result(
                BENCH,
                f"authenticated GET /api/, metrics off, {label}",
                median(rates["off"]),
                "req/s",
                note="rounds: " + ", ".join(fmt(r) for r in rates["off"]),
            ),
            Result(
                BENCH,
                f"authenticated GET /api/, metrics on, {label}",
                median(rates["on"]),
                "req/s",
                note="rounds: " + ", ".join(fmt(r) for r in rates["on"]),
            ),
            Result(
                BENCH,
                f"metrics on / off requests/s, {label}",
                median(ratios),
                "%",
                TARGET_RATIO,
                op=">=",
                note=f"median of {rounds} back-to-back pairs of {seconds:g} s ({', '.join(fmt(r) for r in ratios)}); "
                f"wrk -t1 -c{CONNECTIONS}; {pinning}",
            ),
            Result(
                BENCH,
                f"server CPU per request, metrics off, {label}",
                median(cpu_per_request["off"]),
                "µs",
                note="rounds: " + ", ".join(fmt(r) for r in cpu_per_request["off"]),
            ),
            Result(
                BENCH,
                f"server CPU per request, metrics on, {label}",
                median(cpu_per_request["on"]),
                "µs",
                note="rounds: " + ", ".join(fmt(r) for r in cpu_per_request["on"]),
            ),
            Result(
                BENCH,
                f"metrics on / off requests/s, from server CPU per request, {label}",
                median(cpu_ratios),
                "%",
                TARGET_RATIO,
                op=">=",
                note=f"per round: off CPU per request / on CPU per request ({', '.join(fmt(r) for r in cpu_ratios)})",
            ),
            *callgrind,
        ]
    )


if __name__ == "__main__":
    main()

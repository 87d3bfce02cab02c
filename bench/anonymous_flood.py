"""A flood of anonymous login-flow starts keeps the server's memory flat.

Starts `opp-auth serve` (a subprocess, reverse-proxy headers trusted from
127.0.0.1), warms it up, then sends --requests POST /auth/login_flow from
--addresses different X-Forwarded-For client addresses (only header values:
every request goes to 127.0.0.1) and reports the server's resident set size
(RSS) before and after, and how the requests were answered (200 until the
fair shares of flows in progress are taken, then 429, and 200 again for a
prefix holding fewer flows than the largest, which takes the place of that
prefix's oldest flow: the number in progress stays bounded either way).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
from _common import CLIENT_ID, REDIRECT_URI, Result, emit

BENCH = "anonymous_flood"
CONCURRENCY = 32
TARGET_GROWTH_MIB = 64.0
CONFIG = """\
openpeerpower: {}
http:
  use_x_forwarded_for: true
  trusted_proxies: [127.0.0.1]
"""


def rss_mib(pid: int) -> float:
    """Resident set size of a process in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def start_server(config_dir: Path) -> tuple[subprocess.Popen[bytes], str]:
    """`opp-auth serve` on a free port."""
    exe = shutil.which("opp-auth", path=str(Path(sys.executable).parent)) or "opp-auth"
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    proc = subprocess.Popen(
        [exe, "-c", str(config_dir), "serve", "--host", "127.0.0.1", "--port", str(port)],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 20
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return proc, f"http://127.0.0.1:{port}"
        except OSError:
            if time.monotonic() > deadline:
                proc.kill()
                raise RuntimeError("server did not start") from None
            time.sleep(0.05)


async def flood(
    url: str, requests: int, addresses: int, offset: int = 0, delete: bool = False
) -> collections.Counter[int]:
    """POST /auth/login_flow requests times, round-robin over addresses; statuses counted.

    delete: end each accepted flow again (the warm-up, so it leaves no flow in progress).
    """
    body = {"client_id": CLIENT_ID, "handler": ["openpeerpower", None], "redirect_uri": REDIRECT_URI}
    statuses: collections.Counter[int] = collections.Counter()
    queue = iter(range(offset, offset + requests))

    async def worker(session: aiohttp.ClientSession) -> None:
        for i in queue:
            address = i % addresses
            headers = {"X-Forwarded-For": f"198.18.{address // 256}.{address % 256}"}
            async with session.post(f"{url}/auth/login_flow", json=body, headers=headers) as resp:
                answer = await resp.json(content_type=None)
                statuses[resp.status] += 1
            if delete and resp.status == 200:
                async with session.delete(f"{url}/auth/login_flow/{answer['flow_id']}", headers=headers) as resp:
                    await resp.read()

    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=CONCURRENCY)) as session:
        await asyncio.gather(*(worker(session) for _ in range(CONCURRENCY)))
    return statuses


def main() -> None:
    """Run the flood and print the results."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2,000 requests instead of 20,000")
    parser.add_argument("--requests", type=int, default=20000)
    parser.add_argument("--addresses", type=int, default=5000)
    args = parser.parse_args()
    requests = 2000 if args.quick else args.requests
    with tempfile.TemporaryDirectory() as tmp:
        config_dir = Path(tmp)
        (config_dir / "configuration.yaml").write_text(CONFIG)
        proc, url = start_server(config_dir)
        try:
            # Warm-up (imports, caches, pools); its flows are ended, so the caps start empty.
            asyncio.run(flood(url, 500, args.addresses, offset=10**6, delete=True))
            before = rss_mib(proc.pid)
            start = time.monotonic()
            statuses = asyncio.run(flood(url, requests, args.addresses))
            elapsed = time.monotonic() - start
            after = rss_mib(proc.pid)
        finally:
            proc.terminate()
            proc.wait(10)
    answered = ", ".join(f"{count} x {status}" for status, count in sorted(statuses.items()))
    accepted = statuses.get(200, 0)
    emit(
        [
            Result(BENCH, "server RSS before flood", before, "MiB"),
            Result(BENCH, f"server RSS after {requests:,} requests", after, "MiB", note=answered),
            Result(BENCH, "RSS growth", after - before, "MiB", TARGET_GROWTH_MIB),
            Result(BENCH, "flows accepted (200; the rest refused by the caps)", accepted, "flows"),
            Result(BENCH, "RSS growth per accepted flow", (after - before) * 1024 / max(1, accepted), "KiB",
                   note="what one flow in progress costs; refusals cost nothing lasting"),
            Result(BENCH, "requests per second", requests / elapsed, "req/s"),
        ]
    )


if __name__ == "__main__":
    main()

"""Memory per user holding one refresh token, built in memory and loaded from .storage/auth.

Target: at most 900 bytes per user with one refresh token. Measured over
100,000 users two ways, each in a fresh process:

- model: User and RefreshToken objects added through AuthStore's indexes
  (add_user / add_refresh_token), sharing group, client id and version the way
  the loader does;
- load: AuthStore.async_load of a .storage/auth holding the same 100,000 users
  and tokens (the realistic path: what a restarted server holds).

Each is measured with tracemalloc (bytes still allocated once built, after a
full collection) and, in a separate process without tracemalloc, as the growth
of the resident set (RSS), which also counts allocator overhead and memory the
interpreter keeps after freeing it.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import subprocess
import sys
import tempfile
import tracemalloc
from pathlib import Path
from typing import Any

from _common import Result, emit

from opp_auth.store import AuthStore

BENCH = "memory"
TARGET_BYTES = 900.0


def rss_bytes() -> int:
    """Resident set size of this process."""
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


async def build(mode: str, config_dir: str, users: int, credentials: bool) -> AuthStore:
    """A store of users, in memory (model) or read from config_dir (load)."""
    from _common import bench_keyring, populate

    store = AuthStore(config_dir if mode == "load" else os.path.join(config_dir, "empty"))
    # As AuthManager.async_setup does: the tokens it made keep no key in the file.
    store.keyring = bench_keyring()
    await store.async_load()
    if mode == "model":
        populate(store, users, credentials=credentials)
    return store


async def measure_child(mode: str, method: str, config_dir: str, users: int, credentials: bool) -> dict[str, Any]:
    """Child process: bytes per user by tracemalloc or by RSS growth."""
    # Import everything a load touches first, so the delta is the data and not code.
    warm = await build("model", tempfile.mkdtemp(), 10, credentials)
    del warm
    gc.collect()
    if method == "tracemalloc":
        tracemalloc.start()
        before = tracemalloc.get_traced_memory()[0]
    else:
        before = rss_bytes()
    store = await build(mode, config_dir, users, credentials)
    # Let go of the event loop's handle that resumed us: its arguments hold the load's result.
    await asyncio.sleep(0)
    gc.collect()
    after = tracemalloc.get_traced_memory()[0] if method == "tracemalloc" else rss_bytes()
    assert len(store.users()) == users and len(store.refresh_tokens()) == users
    return {"bytes_per_user": (after - before) / users}


def run_child(mode: str, method: str, config_dir: str, users: int, credentials: bool = False) -> float:
    """Run one measurement in a fresh interpreter."""
    cmd = [sys.executable, __file__, "--child", mode, method, config_dir, str(users)]
    if credentials:
        cmd.append("--credentials")
    out = subprocess.run(cmd, capture_output=True, text=True, check=True, timeout=300).stdout
    return float(json.loads(out.strip().splitlines()[-1])["bytes_per_user"])


async def write_store(config_dir: str, users: int) -> int:
    """A .storage/auth with users, each with one refresh token; its size."""
    from _common import populate

    store = AuthStore(config_dir)
    await store.async_load()
    populate(store, users)
    await store.async_compact()
    return (Path(config_dir) / ".storage" / "auth").stat().st_size


def main() -> None:
    """Measure model and load paths, each by tracemalloc and by RSS."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--child", nargs=4, metavar=("MODE", "METHOD", "DIR", "USERS"))
    parser.add_argument("--credentials", action="store_true")
    parser.add_argument("--users", type=int, default=100_000)
    args = parser.parse_args()
    if args.child:
        mode, method, config_dir, users = args.child
        print(json.dumps(asyncio.run(measure_child(mode, method, config_dir, int(users), args.credentials))))
        return

    users = min(args.users, 10_000) if args.quick else args.users
    label = f"{users:,} users"
    with tempfile.TemporaryDirectory() as config_dir:
        asyncio.run(write_store(config_dir, users))
        model_tm = run_child("model", "tracemalloc", config_dir, users)
        model_rss = run_child("model", "rss", config_dir, users)
        load_tm = run_child("load", "tracemalloc", config_dir, users)
        load_rss = run_child("load", "rss", config_dir, users)
        with_login = run_child("model", "tracemalloc", config_dir, users, credentials=True)
    emit([
        Result(BENCH, f"per user + refresh token, model + indexes, tracemalloc, {label}", model_tm, "B", TARGET_BYTES),
        Result(BENCH, f"per user + refresh token, model + indexes, RSS growth, {label}", model_rss, "B"),
        Result(BENCH, f"per user + refresh token, AuthStore.async_load, tracemalloc, {label}", load_tm, "B", TARGET_BYTES,
               note="the realistic path"),
        Result(BENCH, f"per user + refresh token, AuthStore.async_load, RSS growth, {label}", load_rss, "B",
               note="includes freed JSON-parse memory the allocator keeps"),
        Result(BENCH, f"per user + login + refresh token, model + indexes, tracemalloc, {label}", with_login, "B",
               note="each user also has local-provider credentials"),
    ])


if __name__ == "__main__":
    main()

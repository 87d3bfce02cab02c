"""Instructions per authenticated GET /api/, counted by callgrind: the bearer path without the noise.

bench/http_throughput.py times requests per second, which moves by tens of percent
when anything else runs on the machine. This script serves the same three
applications (the real opp_auth app, the bare aiohttp app with the same body, and
the bare app sending the real app's whole response, security headers included)
under valgrind's callgrind, switches the counting on only while wrk sends
authenticated GETs, and divides the instructions the server executed by the
requests it answered. The counts barely move with machine load, so a change to
the pipeline can be judged on a busy machine too. Counts are not time: a
request's cache misses and system calls are left out, so use it for ratios and
for what a change costs, and http_throughput.py for the targets' figures.

Needs valgrind (callgrind_control) and wrk; the counted server runs about 50
times slower than normal, so each run answers a few hundred requests.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import Result, emit, fmt, median, users_label

BENCH = "http_instructions"
THROUGHPUT = Path(__file__).with_name("http_throughput.py")
METRICS = Path(__file__).with_name("metrics_overhead.py")
KINDS = ("opp", "bare", "same")
# --metrics: the real app with metrics off and on (bench/metrics_overhead.py's servers), issue 18's target.
METRICS_KINDS = ("off", "on")


def count(kind: str, users: int, seconds: float, token: str | None) -> tuple[float, int, str]:
    """(instructions per request, requests, the opp server's token) for one counted run of kind."""
    with tempfile.TemporaryDirectory() as work:
        out = os.path.join(work, "callgrind.out")
        config_dir = os.path.join(work, "config")
        os.mkdir(config_dir)
        cmd = [
            "valgrind", "--tool=callgrind", "--instr-atstart=no", f"--callgrind-out-file={out}",
            sys.executable, str(METRICS if kind in METRICS_KINDS else THROUGHPUT), "--serve", kind,
            "--config-dir", config_dir, "--users", str(users),
        ]  # fmt: skip
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        try:
            assert proc.stdout is not None
            line = proc.stdout.readline()
            if not line.startswith("READY "):
                raise RuntimeError(f"{kind} server did not start under valgrind: {line!r}")
            info = json.loads(line[6:])
            token = info["token"] or token or "none"
            url = f"http://127.0.0.1:{info['port']}/api/"
            wrk = ["wrk", "-t1", "-c4", "-H", f"Authorization: Bearer {token}", url]
            subprocess.run([*wrk[:3], "-d2s", *wrk[3:]], capture_output=True, check=True)  # warm-up, not counted
            subprocess.run(["callgrind_control", "--instr=on", str(proc.pid)], capture_output=True, check=True)
            result = subprocess.run([*wrk[:3], f"-d{seconds:g}s", *wrk[3:]], capture_output=True, text=True, check=True)
            subprocess.run(["callgrind_control", "--instr=off", str(proc.pid)], capture_output=True, check=True)
            subprocess.run(["callgrind_control", "--dump", str(proc.pid)], capture_output=True, check=True)
            if "Non-2xx" in result.stdout:
                raise RuntimeError(f"{kind}: some answers were not 2xx:\n{result.stdout}")
            match = re.search(r"(\d+) requests in", result.stdout)
            assert match is not None, result.stdout
            requests = int(match.group(1))
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        # The dump asked for above (out.1) holds exactly the counted stretch.
        time.sleep(0.2)
        dumps = sorted(Path(work).glob("callgrind.out.*"))
        totals = [int(m.group(1)) for d in dumps for m in [re.search(r"^totals:\s+(\d+)", d.read_text(), re.M)] if m]
        if not totals or requests == 0:
            raise RuntimeError(f"{kind}: no counted dump ({[d.name for d in dumps]})")
        return totals[0] / requests, requests, token


def main() -> None:
    """Count each application's instructions per request a few times; compare medians."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=1, help="counted runs of each app (run_all.py repeats the script)")
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--users", type=int, default=1, help="people in the real app's store")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument(
        "--metrics", action="store_true", help="count the real app with metrics off and on instead (issue 18's target)"
    )
    args = parser.parse_args()
    for tool in ("valgrind", "callgrind_control", "wrk"):
        if shutil.which(tool) is None:
            sys.exit(f"{tool} is not installed (apt-get install valgrind wrk)")
    runs = 1 if args.quick else args.runs
    if args.metrics:
        metrics_instructions(runs, args.users, args.seconds)
        return
    per_request: dict[str, list[float]] = {kind: [] for kind in KINDS}
    token = None
    for _ in range(runs):
        for kind in KINDS:
            value, _requests, found = count(kind, args.users, args.seconds, token)
            token = token or found
            per_request[kind].append(value)
    opp, bare, same = (median(per_request[k]) for k in KINDS)
    label = users_label(max(1, args.users))

    def spread(kind: str) -> str:
        values = per_request[kind]
        return f"median of {len(values)} runs ({fmt(min(values))}–{fmt(max(values))})"

    emit(
        [
            Result(BENCH, f"instructions per request, opp_auth app, {label}", opp, "instr", note=spread("opp")),
            Result(BENCH, "instructions per request, bare aiohttp app (same body)", bare, "instr", note=spread("bare")),
            Result(BENCH, "instructions per request, bare app, same response bytes", same, "instr", note=spread("same")),
            Result(BENCH, f"opp_auth / bare, from instructions, {label}", bare / opp * 100, "%", 85.0, op=">=",
                   note="bare instructions per request / opp_auth instructions per request (issue 12)"),
            Result(BENCH, f"opp_auth / same-bytes bare, from instructions, {label}", same / opp * 100, "%", 90.0,
                   op=">=", note="the same response bytes: what the pipeline itself costs (issue 13)"),
        ]
    )


def metrics_instructions(runs: int, users: int, seconds: float) -> None:
    """Instructions per authenticated GET /api/ with metrics off and on, alternated; their ratio."""
    per_request: dict[str, list[float]] = {kind: [] for kind in METRICS_KINDS}
    for _ in range(runs):
        for kind in METRICS_KINDS:
            per_request[kind].append(count(kind, users, seconds, None)[0])
    off, on = (median(per_request[k]) for k in METRICS_KINDS)
    label = users_label(max(1, users))

    def spread(kind: str) -> str:
        values = per_request[kind]
        return f"median of {len(values)} runs ({fmt(min(values))}–{fmt(max(values))})"

    emit(
        [
            Result(BENCH, f"instructions per request, metrics off, {label}", off, "instr", note=spread("off")),
            Result(BENCH, f"instructions per request, metrics on, {label}", on, "instr", note=spread("on")),
            Result(BENCH, f"metrics on / off, from instructions, {label}", off / on * 100, "%", 95.0, op=">=",
                   note="off instructions per request / on instructions per request (whole requests, wrk -c4)"),
        ]
    )  # fmt: skip


if __name__ == "__main__":
    main()

"""Run every benchmark, one after another, and print their results in one table.

    .venv/bin/python bench/run_all.py            # run and print
    .venv/bin/python bench/run_all.py --write    # also replace the results in bench/README.md
    .venv/bin/python bench/run_all.py --quick    # smaller sizes, a smoke run (never written)

Each script runs in its own process, so one's memory and threads never disturb
another's. Exits 1 when a script crashed (a missed target is a result, not a crash).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from _common import BENCH_DIR, RESULT_PREFIX, Result, machine, render_rows

SCRIPTS = ["token_validation", "http_throughput", "store_save", "memory", "login", "ldap_login", "anonymous_flood"]
README = BENCH_DIR / "README.md"
START = "<!-- results:start -->"
END = "<!-- results:end -->"


def other_cpu_load(seconds: float = 1.0) -> float:
    """How busy the CPUs were over a short pause (in CPUs), i.e. work that is not ours."""

    def sample() -> tuple[int, int]:
        fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
        idle = fields[3] + fields[4]
        return sum(fields) - idle, sum(fields)

    busy0, total0 = sample()
    time.sleep(seconds)
    busy1, total1 = sample()
    cpus = os.cpu_count() or 1
    return (busy1 - busy0) / max(1, total1 - total0) * cpus


def run_script(name: str, quick: bool) -> tuple[list[Result], float, str | None]:
    """(results, seconds, error) of one script."""
    cmd = [sys.executable, str(BENCH_DIR / f"{name}.py")]
    if quick:
        cmd.append("--quick")
    start = time.perf_counter()
    proc = subprocess.run(cmd, check=False, capture_output=True, text=True, cwd=BENCH_DIR.parent)
    elapsed = time.perf_counter() - start
    for line in proc.stdout.splitlines():
        if line.startswith(RESULT_PREFIX):
            rows = [Result(**row) for row in json.loads(line[len(RESULT_PREFIX):])]
            if proc.returncode == 0:
                return rows, elapsed, None
    tail = (proc.stderr or proc.stdout).strip().splitlines()[-15:]
    return [], elapsed, f"exit {proc.returncode}:\n" + "\n".join(tail)


def write_readme(block: str) -> None:
    """Replace the text between the result markers in bench/README.md."""
    text = README.read_text()
    head, sep, rest = text.partition(START)
    if not sep or END not in rest:
        raise SystemExit(f"{README} lacks the {START} ... {END} markers")
    README.write_text(f"{head}{START}\n{block}\n{END}{rest.partition(END)[2]}")


def main() -> int:
    """Run, print, maybe write."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", action="store_true", help="update the results section of bench/README.md")
    parser.add_argument("--quick", action="store_true", help="smaller sizes (a smoke run; --write is refused)")
    parser.add_argument("--only", nargs="+", choices=SCRIPTS, help="run only these scripts")
    args = parser.parse_args()
    if args.quick and args.write:
        parser.error("--quick results are not the benchmark's; they are never written")

    facts = machine()
    load = other_cpu_load()
    started = datetime.datetime.now().astimezone()
    print(f"{facts['nproc']} CPUs, {facts['cpu']}, {facts['python']}; other CPU load before start: {load:.2f} CPUs",
          flush=True)
    results: list[Result] = []
    timings: list[str] = []
    errors: list[str] = []
    for name in args.only or SCRIPTS:
        print(f"running {name} ...", flush=True)
        rows, elapsed, error = run_script(name, args.quick)
        results += rows
        timings.append(f"{name} {elapsed:.0f} s")
        if error is not None:
            errors.append(f"{name}: {error}")
            print(f"  FAILED TO RUN: {error}", flush=True)
        else:
            print(f"  {elapsed:.1f} s", flush=True)
    total = sum(float(t.split()[-2]) for t in timings)

    table = render_rows(results)
    print()
    print("\n".join(table))
    counts = {s: sum(r.status == s for r in results) for s in ("PASS", "FAIL")}
    print(f"\n{counts['PASS']} passed, {counts['FAIL']} failed targets; {total:.0f} s in all")

    if args.write:
        lines = [
            (
                f"Run {started:%Y-%m-%d %H:%M %Z} by `make bench` (`bench/run_all.py --write`) on "
                f"{facts['nproc']} CPUs ({facts['cpu']}), {facts['python']}, {facts['os']}. "
                f"Other CPU load just before the run: {load:.2f} CPUs."
            ),
            "",
            *table,
            "",
            (
                f"{counts['PASS']} targets met, {counts['FAIL']} missed. Time per script: {', '.join(timings)} "
                f"({total:.0f} s in all)."
            ),
        ]
        if errors:
            lines += ["", "Scripts that did not finish:", "", *[f"- {e.splitlines()[0]}" for e in errors]]
        write_readme("\n".join(lines))
        print(f"wrote {README}")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())

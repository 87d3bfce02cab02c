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
import statistics
import subprocess
import sys
import time
from pathlib import Path

from _common import BENCH_DIR, QUICK_SIZES, RESULT_PREFIX, SIZES, Result, fmt, machine, render_rows

# Which store sizes (people, each with a refresh token) each script runs at. ldap_login and
# anonymous_flood measure paths that never read the store's collections (an LDAP bind; flows
# of anonymous callers) and tokens_one_user has its own fixed shape; memory per user of a
# one-user store is noise, so memory starts at 10,000.
SCRIPT_SIZES: dict[str, tuple[int, ...]] = {
    "token_validation": SIZES,
    "http_throughput": SIZES,
    "http_instructions": (0,),
    "metrics_overhead": SIZES,
    "store_ops": SIZES,
    "memory": SIZES[1:],
    "login": SIZES,
    "tokens_one_user": (0,),
    "ldap_login": (0,),
    "anonymous_flood": (0,),
    "login_history": SIZES,
    "audit_log": (0,),
}
SCRIPTS = list(SCRIPT_SIZES)
RUNS = 3
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


def run_script(name: str, quick: bool, users: int) -> tuple[list[Result], float, str | None]:
    """(results, seconds, error) of one run of a script (users 0: the script's own shape)."""
    cmd = [sys.executable, str(BENCH_DIR / f"{name}.py")]
    if quick:
        cmd.append("--quick")
    if users:
        cmd += ["--users", str(users)]
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


def combine(runs: list[list[Result]]) -> list[Result]:
    """One row per measurement: the median of the runs, their spread in the note."""
    by_name: dict[tuple[str, str], list[Result]] = {}
    for rows in runs:
        for row in rows:
            by_name.setdefault((row.bench, row.name), []).append(row)
    out = []
    for rows in by_name.values():
        values = [r.value for r in rows]
        med = statistics.median(values)
        spread = f"median of {len(values)} runs ({fmt(min(values))}–{fmt(max(values))})"
        closest = min(rows, key=lambda r: abs(r.value - med))
        note = f"{spread}; {closest.note}" if closest.note else spread
        out.append(Result(rows[0].bench, rows[0].name, med, rows[0].unit, rows[0].target, rows[0].op, note))
    return out


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
    parser.add_argument("--runs", type=int, default=RUNS, help=f"runs per script and size (default {RUNS})")
    parser.add_argument("--sizes", nargs="+", type=int, help="store sizes (default 1 10000 100000)")
    args = parser.parse_args()
    if args.write and args.runs < 3:
        parser.error("figures written to bench/README.md are medians of at least 3 runs")
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
    loads = [load]
    for name in args.only or SCRIPTS:
        sizes = SCRIPT_SIZES[name]
        if args.quick:
            sizes = tuple(q for q in QUICK_SIZES if q >= min(sizes)) if sizes != (0,) else sizes
        elif args.sizes:
            sizes = tuple(s for s in sizes if s in args.sizes or s == 0)
        elapsed_all = 0.0
        for users in sizes:
            runs: list[list[Result]] = []
            for run in range(1 if args.quick else args.runs):
                loads.append(other_cpu_load(0.5))
                print(f"running {name}" + (f" at {users:,} users" if users else "") + f", run {run + 1} ...", flush=True)
                rows, elapsed, error = run_script(name, args.quick, users)
                elapsed_all += elapsed
                if error is not None:
                    errors.append(f"{name} ({users} users): {error}")
                    print(f"  FAILED TO RUN: {error}", flush=True)
                    break
                runs.append(rows)
                print(f"  {elapsed:.1f} s", flush=True)
            if runs:
                results += combine(runs)
        timings.append(f"{name} {elapsed_all:.0f} s")
    total = sum(float(t.split()[-2]) for t in timings)

    table = render_rows(results)
    print()
    print("\n".join(table))
    counts = {s: sum(r.status == s for r in results) for s in ("PASS", "FAIL")}
    print()
    for r in results:
        if r.target is not None:
            print(f"{'pass' if r.status == 'PASS' else 'MISS'}  {r.bench}: {r.name}: {fmt(r.value)} {r.unit} "
                  f"(target {r.op} {fmt(r.target)} {r.unit})")
    print(f"\n{counts['PASS']} targets met, {counts['FAIL']} missed; {total:.0f} s in all")
    busy = statistics.median(loads)

    if args.write:
        lines = [
            (
                f"Run {started:%Y-%m-%d %H:%M %Z} by `make bench` (`bench/run_all.py --write`) on "
                f"{facts['nproc']} CPUs ({facts['cpu']}, as lscpu names it), {facts['python']}, {facts['os']}. "
                f"Other CPU load before the runs: median {busy:.2f} CPUs, at most {max(loads):.2f} CPUs "
                f"({len(loads)} samples); {'the machine was shared' if max(loads) > 0.2 else 'a quiet machine'}. "
                f"Each figure is the median of {args.runs} runs in fresh processes, with the lowest and "
                "highest in its note."
            ),
            "",
            *table,
            "",
            (
                f"{counts['PASS']} targets met, {counts['FAIL']} missed"
                + (" (missed targets are marked FAIL above)" if counts["FAIL"] else "")
                + f". Time per script: {', '.join(timings)} "
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

"""async_run_program: the one way plugins run helper programs (real programs, no mocks)."""

from __future__ import annotations

import asyncio
import os
import sys
import time
from pathlib import Path

import pytest

from opp_auth import programs


def script(tmp_path: Path, body: str, name: str = "prog") -> str:
    """An executable Python script."""
    path = tmp_path / name
    path.write_text(f"#!{sys.executable}\n{body}")
    path.chmod(0o755)
    return str(path)


def alive(pid: int) -> bool:
    """Whether a process exists and is not a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


async def test_exit_code_output_and_exact_environment(tmp_path: Path) -> None:
    """The program sees only the environment it is given; exit code and output come back."""
    monkey_secret = "OPP_TEST_SECRET_VALUE"
    os.environ["OPP_TEST_SECRET"] = monkey_secret
    try:
        prog = script(tmp_path, "import os, sys\nprint(sorted(os.environ))\nprint('err', file=sys.stderr)\nsys.exit(3)\n")
        result = await programs.async_run_program([prog], env={"PATH": programs.SAFE_PATH, "who": "ann"}, timeout=10)
    finally:
        del os.environ["OPP_TEST_SECRET"]
    assert result.returncode == 3
    assert result.stdout.decode().strip() in ("['PATH', 'who']", "['LC_CTYPE', 'PATH', 'who']")
    assert result.stderr == b"err\n"


async def test_stdin_is_given_bytes_or_dev_null(tmp_path: Path) -> None:
    """Given bytes arrive on standard input; without, it is /dev/null."""
    prog = script(tmp_path, "import sys\nsys.stdout.write(sys.stdin.read())\n")
    assert (await programs.async_run_program([prog], env={}, timeout=10, stdin=b"code 123")).stdout == b"code 123"
    assert (await programs.async_run_program([prog], env={}, timeout=10)).stdout == b""


async def test_output_is_bounded_and_drained(tmp_path: Path) -> None:
    """Megabytes of output neither block the program nor fill memory."""
    prog = script(tmp_path, "import sys\nsys.stdout.buffer.write(b'x' * 5_000_000)\nsys.exit(0)\n")
    result = await programs.async_run_program([prog], env={}, timeout=20, max_stdout=1000)
    assert (result.returncode, len(result.stdout)) == (0, 1000)


async def test_time_out_kills_the_whole_process_group(tmp_path: Path) -> None:
    """A program past its time-out is killed with the children it started."""
    pid_file = tmp_path / "child.pid"
    prog = script(
        tmp_path,
        f"import subprocess, time\nchild = subprocess.Popen(['sleep', '30'])\nopen({str(pid_file)!r}, 'w').write(str(child.pid))\ntime.sleep(30)\n",
    )
    started = time.monotonic()
    with pytest.raises(programs.ProgramTimeout, match="did not finish within 0.5 s"):
        await programs.async_run_program([prog], env={"PATH": programs.SAFE_PATH}, timeout=0.5)
    assert time.monotonic() - started < 5
    child = int(pid_file.read_text())
    for _ in range(100):
        if not alive(child):
            break
        await asyncio.sleep(0.02)
    assert not alive(child)


async def test_missing_or_not_executable_program_is_a_program_error(tmp_path: Path) -> None:
    """Start failures are ProgramError, never an OSError escaping."""
    with pytest.raises(programs.ProgramError):
        await programs.async_run_program([str(tmp_path / "missing")], env={}, timeout=5)
    plain = tmp_path / "plain"
    plain.write_text("#!/bin/sh\nexit 0\n")
    with pytest.raises(programs.ProgramError):
        await programs.async_run_program([str(plain)], env={}, timeout=5)


async def test_cancelling_kills_the_program(tmp_path: Path) -> None:
    """A cancelled caller (a login abandoned) leaves nothing running."""
    pid_file = tmp_path / "pid"
    prog = script(tmp_path, f"import os, time\nopen({str(pid_file)!r}, 'w').write(str(os.getpid()))\ntime.sleep(30)\n")
    task = asyncio.ensure_future(programs.async_run_program([prog], env={}, timeout=30))
    for _ in range(500):
        if pid_file.exists() and pid_file.read_text():
            break
        await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    pid = int(pid_file.read_text())
    for _ in range(100):
        if not alive(pid):
            break
        await asyncio.sleep(0.02)
    assert not alive(pid)

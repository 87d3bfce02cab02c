"""Running helper programs for plugins: no shell, no server secrets, bounded output, a time-out.

The command_line provider and the notify module's command_line platform both
run programs a user configured; this is the one place that does it right:
the program leads its own session (a time-out or a cancelled login kills it
and everything it started), sees only the environment it is given, reads
/dev/null or the given bytes, and its output is read to the end but kept
only up to a bound, so it can neither block on a full pipe nor fill memory.

A public namespace: a plugin writes ``from opp_auth import programs`` and uses
the names of ``__all__`` (``programs.async_run_program``, ``programs.SAFE_PATH``...).
"""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

SAFE_PATH = "/usr/local/bin:/usr/bin:/bin"
READ_CHUNK = 64 * 1024
KILL_GRACE = 1.0

__all__ = ["SAFE_PATH", "ProgramError", "ProgramResult", "ProgramTimeout", "async_run_program"]


class ProgramError(Exception):
    """The program could not be started (missing, not executable, bad argument)."""


class ProgramTimeout(ProgramError):
    """The program ran past its time-out and was killed with its process group."""


@dataclass(frozen=True)
class ProgramResult:
    """How a program ended and (the first part of) what it printed."""

    returncode: int
    stdout: bytes
    stderr: bytes


async def async_run_program(
    argv: Sequence[str],
    *,
    env: Mapping[str, str],
    timeout: float,
    stdin: bytes | None = None,
    max_stdout: int = 64 * 1024,
    max_stderr: int = 4 * 1024,
) -> ProgramResult:
    """Run argv without a shell and wait for it, within timeout seconds (ProgramError, ProgramTimeout)."""
    try:
        process = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.DEVNULL if stdin is None else asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=dict(env),
            close_fds=True,
            start_new_session=True,
        )
    except (OSError, ValueError) as err:
        raise ProgramError(str(err)) from err
    try:
        async with asyncio.timeout(timeout):
            if stdin is not None:
                await _feed(process, stdin)
            stdout, stderr = await asyncio.gather(
                _read_bounded(process.stdout, max_stdout), _read_bounded(process.stderr, max_stderr)
            )
            code = await process.wait()
    except TimeoutError:
        _kill_group(process)
        await _reap(process)
        raise ProgramTimeout(f"{argv[0]} did not finish within {timeout:g} s and was killed") from None
    finally:
        if process.returncode is None:
            # Cancelled (server stopping, client gone): leave nothing running.
            _kill_group(process)
    return ProgramResult(code, stdout, stderr)


async def _feed(process: asyncio.subprocess.Process, data: bytes) -> None:
    """Write standard input and close it (a program need not read it)."""
    assert process.stdin is not None
    process.stdin.write(data)
    try:
        await process.stdin.drain()
    except (BrokenPipeError, ConnectionResetError):
        pass
    process.stdin.close()


async def _read_bounded(stream: asyncio.StreamReader | None, limit: int) -> bytes:
    """Read a stream to its end, keeping at most limit bytes (the rest is drained so the program can't block)."""
    if stream is None:
        return b""
    kept = bytearray()
    while chunk := await stream.read(READ_CHUNK):
        room = limit - len(kept)
        if room > 0:
            kept += chunk[:room]
    return bytes(kept)


def _kill_group(process: asyncio.subprocess.Process) -> None:
    """Kill the program and whatever it started (it leads its own session)."""
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        try:
            process.kill()
        except ProcessLookupError:
            pass


async def _reap(process: asyncio.subprocess.Process) -> None:
    """Wait for a killed program, without waiting on pipes a descendant outside its group keeps open."""
    try:
        async with asyncio.timeout(KILL_GRACE):
            await process.wait()
    except TimeoutError:
        # wait() also waits for the pipes to close; Process has no public way to drop them.
        transport = getattr(process, "_transport", None)
        if transport is not None:
            transport.close()

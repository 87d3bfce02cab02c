"""Tests for the command_line provider (SPEC 3.5 with G25 fixed, G19) against real scripts."""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import signal
import sys
import textwrap
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import voluptuous as vol
from opp_auth_command_line import CONFIG_SCHEMA, CommandLineAuthProvider

from opp_auth import InvalidAuthError, UserMeta
from opp_auth.manager import AuthManager
from opp_auth.testing import run_login_flow

HANDLER = ("command_line", None)
LOGGER = "opp_auth_command_line"

Factory = Callable[..., Awaitable[AuthManager]]
_names = itertools.count()

ALWAYS_OK = "exit 0\n"


def write_script(directory: Path, body: str, *, python: bool = False) -> Path:
    """An executable script (sh, or Python with this interpreter) in directory."""
    path = directory / f"helper{next(_names)}{'.py' if python else '.sh'}"
    shebang = f"#!{sys.executable}" if python else "#!/bin/sh"
    path.write_text(f"{shebang}\n{textwrap.dedent(body)}")
    path.chmod(0o755)
    return path


async def make_auth(factory: Factory, command: Path | str, **options: Any) -> AuthManager:
    """A manager with only a command_line provider running command."""
    return await factory(providers=[{"type": "command_line", "command": str(command), **options}], mfa_modules=[])


def provider_of(auth: AuthManager) -> CommandLineAuthProvider:
    """The command_line provider of a manager."""
    provider = auth.registry.get_auth_provider(*HANDLER)
    assert isinstance(provider, CommandLineAuthProvider)
    return provider


async def login(auth: AuthManager, username: str = "alice", password: str = "secret") -> dict[str, Any]:
    """Run the login form once."""
    return await run_login_flow(auth, HANDLER, [{"username": username, "password": password}])


def alive(pid: int) -> bool:
    """Whether a process exists and is not a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        # The process vanished between the lookup and the read.
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def error_messages(caplog: pytest.LogCaptureFixture, level: int = logging.ERROR) -> list[str]:
    """Messages this provider logged at a level."""
    return [r.getMessage() for r in caplog.records if r.name == LOGGER and r.levelno == level]


# ---- configuration -----------------------------------------------------------------------


def test_relative_command_is_refused() -> None:
    with pytest.raises(vol.Invalid, match="must be an absolute path"):
        CONFIG_SCHEMA({"type": "command_line", "command": "bin/check"})


async def test_relative_command_fails_configuration(opp_auth_factory: Factory) -> None:
    with pytest.raises(Exception, match="must be an absolute path"):
        await make_auth(opp_auth_factory, "check-login")


def test_defaults_and_normalised_command() -> None:
    conf = CONFIG_SCHEMA({"type": "command_line", "command": "/usr/local/../bin//check"})
    assert conf["command"] == "/usr/bin/check"
    assert conf["args"] == []
    assert conf["meta"] is False
    assert conf["timeout"] == 10
    assert conf["default_group"] == UserMeta.GROUP_USER


def test_unknown_default_group_is_refused() -> None:
    with pytest.raises(vol.Invalid):
        CONFIG_SCHEMA({"type": "command_line", "command": "/bin/true", "default_group": "wheel"})


def test_non_positive_timeout_is_refused() -> None:
    with pytest.raises(vol.Invalid):
        CONFIG_SCHEMA({"type": "command_line", "command": "/bin/true", "timeout": 0})


# ---- deciding logins -----------------------------------------------------------------------


async def test_exit_zero_logs_in(opp_auth_factory: Factory, tmp_path: Path) -> None:
    auth = await make_auth(opp_auth_factory, write_script(tmp_path, ALWAYS_OK))
    result = await login(auth)
    assert result["type"] == "create_entry"
    assert result["title"] == "Command Line Authentication"
    assert result["result"].data == {"username": "alice"}


async def test_checks_the_password(opp_auth_factory: Factory, tmp_path: Path) -> None:
    command = write_script(tmp_path, '[ "$username" = alice ] && [ "$password" = "right pass" ]\n')
    auth = await make_auth(opp_auth_factory, command)
    assert (await login(auth, "alice", "right pass"))["type"] == "create_entry"
    assert (await login(auth, "alice", "wrong"))["errors"] == {"base": "invalid_auth"}


async def test_non_zero_exit_is_invalid_auth_and_logged(
    opp_auth_factory: Factory, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    auth = await make_auth(opp_auth_factory, write_script(tmp_path, "exit 3\n"))
    result = await login(auth, "bob")
    assert result["type"] == "form"
    assert result["errors"] == {"base": "invalid_auth"}
    assert "User 'bob' failed to authenticate, command exited with code 3" in error_messages(caplog)


async def test_args_are_passed_without_a_shell(opp_auth_factory: Factory, tmp_path: Path) -> None:
    out = tmp_path / "args.txt"
    command = write_script(tmp_path, f'import sys\nopen({str(out)!r}, "w").write(repr(sys.argv[1:]))\n', python=True)
    auth = await make_auth(opp_auth_factory, command, args=["--realm", "a b", "$(id)"])
    assert (await login(auth))["type"] == "create_entry"
    assert out.read_text() == repr(["--realm", "a b", "$(id)"])


async def test_missing_command_is_invalid_auth_and_logged(
    opp_auth_factory: Factory, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    auth = await make_auth(opp_auth_factory, tmp_path / "does-not-exist")
    result = await login(auth, "carol")
    assert result["errors"] == {"base": "invalid_auth"}
    [message] = error_messages(caplog)
    assert message.startswith("Error while authenticating 'carol': ")
    assert "No such file" in message


async def test_non_executable_command_is_invalid_auth_and_logged(
    opp_auth_factory: Factory, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    command = write_script(tmp_path, ALWAYS_OK)
    command.chmod(0o644)
    auth = await make_auth(opp_auth_factory, command)
    result = await login(auth, "carol")
    assert result["errors"] == {"base": "invalid_auth"}
    [message] = error_messages(caplog)
    assert message.startswith("Error while authenticating 'carol': ")
    assert "Permission denied" in message


async def test_blank_username_is_refused_without_running_the_command(opp_auth_factory: Factory, tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    auth = await make_auth(opp_auth_factory, write_script(tmp_path, f"touch {marker}\nexit 0\n"))
    result = await login(auth, "  \u3000 ", "secret")
    assert result["errors"] == {"base": "invalid_auth"}
    assert not marker.exists()


# ---- what the program sees -------------------------------------------------------------------


async def test_environment_holds_only_username_password_and_path(
    opp_auth_factory: Factory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OPP_SERVER_SECRET", "do-not-leak")
    out = tmp_path / "env.bin"
    # /proc/self/environ is the environment exactly as exec'd (before Python adjusts its own).
    command = write_script(
        tmp_path, f"import shutil\nshutil.copyfile('/proc/self/environ', {str(out)!r})\n", python=True
    )
    auth = await make_auth(opp_auth_factory, command)
    assert (await login(auth, "alice", " pass word "))["type"] == "create_entry"
    entries = [e for e in out.read_bytes().split(b"\0") if e]
    env = dict(e.decode().split("=", 1) for e in entries)
    assert env == {"username": "alice", "password": " pass word ", "PATH": "/usr/local/bin:/usr/bin:/bin"}


async def test_env_shebang_scripts_find_their_interpreter(opp_auth_factory: Factory, tmp_path: Path) -> None:
    command = tmp_path / "env-shebang"
    command.write_text("#!/usr/bin/env sh\nexit 0\n")
    command.chmod(0o755)
    auth = await make_auth(opp_auth_factory, command)
    assert (await login(auth))["type"] == "create_entry"


async def test_username_is_stripped_before_the_command_sees_it(opp_auth_factory: Factory, tmp_path: Path) -> None:
    command = write_script(tmp_path, '[ "$username" = Alice ]\n')
    auth = await make_auth(opp_auth_factory, command)
    result = await login(auth, "  Alice \u3000")
    assert result["type"] == "create_entry"
    assert result["data"]["username"] == "Alice"


async def test_stdin_is_dev_null(opp_auth_factory: Factory, tmp_path: Path) -> None:
    command = write_script(
        tmp_path, "import os, sys\nsys.exit(0 if os.readlink('/proc/self/fd/0') == '/dev/null' else 1)\n", python=True
    )
    auth = await make_auth(opp_auth_factory, command)
    assert (await login(auth))["type"] == "create_entry"


async def test_stderr_is_logged_at_debug(
    opp_auth_factory: Factory, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger=LOGGER)
    auth = await make_auth(opp_auth_factory, write_script(tmp_path, "echo 'directory unreachable' >&2\nexit 1\n"))
    await login(auth)
    assert any("directory unreachable" in m for m in error_messages(caplog, logging.DEBUG))


# ---- credentials -----------------------------------------------------------------------------


async def test_usernames_differing_in_case_share_one_credential(opp_auth_factory: Factory, tmp_path: Path) -> None:
    auth = await make_auth(opp_auth_factory, write_script(tmp_path, ALWAYS_OK))
    first = await login(auth, "Alice")
    user = await auth.users.async_get_or_create_user(first["result"])
    second = await login(auth, "alice")
    assert not second["result"].is_new
    assert second["result"].id == first["result"].id
    assert (await auth.users.async_get_or_create_user(second["result"])).id == user.id


async def test_credential_keeps_username_as_first_typed(opp_auth_factory: Factory, tmp_path: Path) -> None:
    auth = await make_auth(opp_auth_factory, write_script(tmp_path, ALWAYS_OK))
    await auth.users.async_get_or_create_user((await login(auth, "Alice"))["result"])
    assert (await login(auth, "ALICE"))["result"].data == {"username": "Alice"}


async def test_case_insensitive_match_survives_a_restart(opp_auth_factory: Factory, tmp_path: Path) -> None:
    command = write_script(tmp_path, ALWAYS_OK)
    first_auth = await make_auth(opp_auth_factory, command)
    user = await first_auth.users.async_get_or_create_user((await login(first_auth, "Alice"))["result"])
    await first_auth.async_shutdown()
    second_auth = await make_auth(opp_auth_factory, command)
    result = await login(second_auth, "alice")
    assert not result["result"].is_new
    assert (await second_auth.users.async_get_or_create_user(result["result"])).id == user.id


# ---- time-out, output bounds, event loop, concurrency -----------------------------------------


async def test_time_out_kills_the_program_group_and_denies(
    opp_auth_factory: Factory, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    pid_file, child_file = tmp_path / "pid", tmp_path / "child"
    command = write_script(tmp_path, f"echo $$ > {pid_file}\nsleep 30 &\necho $! > {child_file}\nwait\nexit 0\n")
    auth = await make_auth(opp_auth_factory, command, timeout=0.5)
    start = time.monotonic()
    result = await login(auth, "dave")
    assert time.monotonic() - start < 5
    assert result["errors"] == {"base": "invalid_auth"}
    pid, child = int(pid_file.read_text()), int(child_file.read_text())
    assert not alive(pid)
    assert not alive(child)
    [message] = error_messages(caplog)
    assert "'dave'" in message and "0.5 s timeout" in message


async def test_descendant_leaving_the_group_cannot_hold_the_login(
    opp_auth_factory: Factory, tmp_path: Path
) -> None:
    escaped_file = tmp_path / "escaped"
    command = write_script(
        tmp_path,
        f"""\
        import os, time
        if os.fork() == 0:
            os.setsid()  # out of reach of the group kill, still holding stdout
            open({str(escaped_file)!r}, "w").write(str(os.getpid()))
            time.sleep(30)
        time.sleep(30)
        """,
        python=True,
    )
    auth = await make_auth(opp_auth_factory, command, timeout=0.5)
    start = time.monotonic()
    try:
        result = await login(auth)
        assert time.monotonic() - start < 4
        assert result["errors"] == {"base": "invalid_auth"}
    finally:
        if escaped_file.exists():
            os.kill(int(escaped_file.read_text()), signal.SIGKILL)


async def test_cancelled_login_kills_the_program(opp_auth_factory: Factory, tmp_path: Path) -> None:
    pid_file = tmp_path / "pid"
    auth = await make_auth(opp_auth_factory, write_script(tmp_path, f"echo $$ > {pid_file}\nexec sleep 30\n"))
    task = asyncio.create_task(provider_of(auth).async_validate_login("alice", "secret"))
    for _ in range(200):
        if pid_file.exists() and pid_file.read_text().strip():
            break
        await asyncio.sleep(0.01)
    pid = int(pid_file.read_text())
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    for _ in range(200):
        if not alive(pid):
            break
        await asyncio.sleep(0.01)
    assert not alive(pid)


async def test_huge_output_is_bounded_and_exit_code_still_decides(opp_auth_factory: Factory, tmp_path: Path) -> None:
    flood = "import sys\nsys.stdout.buffer.write(b'x' * (8 * 1024 * 1024))\nsys.stderr.buffer.write(b'y' * (1024 * 1024))\n"
    ok = write_script(tmp_path, flood + "sys.exit(0)\n", python=True)
    bad = write_script(tmp_path, flood + "sys.exit(1)\n", python=True)
    auth_ok = await make_auth(opp_auth_factory, ok, meta=True, timeout=20)
    assert (await login(auth_ok))["type"] == "create_entry"
    auth_bad = await make_auth(opp_auth_factory, bad, meta=True, timeout=20)
    assert (await login(auth_bad))["errors"] == {"base": "invalid_auth"}


async def test_meta_beyond_64_kib_of_output_is_not_read(opp_auth_factory: Factory, tmp_path: Path) -> None:
    command = write_script(tmp_path, "import sys\nprint('name = Early')\nprint('#' * 70000)\nprint('group = system-admin')\n", python=True)
    auth = await make_auth(opp_auth_factory, command, meta=True)
    user = await auth.users.async_get_or_create_user((await login(auth))["result"])
    assert user.name == "Early"
    assert user.group_ids == [UserMeta.GROUP_USER]


async def test_event_loop_keeps_running_during_a_slow_command(opp_auth_factory: Factory, tmp_path: Path) -> None:
    auth = await make_auth(opp_auth_factory, write_script(tmp_path, "sleep 0.5\nexit 0\n"))
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.05)
            ticks += 1

    task = asyncio.create_task(ticker())
    try:
        assert (await login(auth))["type"] == "create_entry"
    finally:
        task.cancel()
    assert ticks >= 5


async def test_at_most_four_commands_run_at_once(opp_auth_factory: Factory, tmp_path: Path) -> None:
    running, seen = tmp_path / "running", tmp_path / "seen"
    running.mkdir()
    seen.mkdir()
    command = write_script(
        tmp_path,
        f"""\
        import os, time
        mine = os.path.join({str(running)!r}, str(os.getpid()))
        open(mine, "w").close()
        open(os.path.join({str(seen)!r}, str(os.getpid())), "w").write(str(len(os.listdir({str(running)!r}))))
        time.sleep(0.3)
        os.remove(mine)
        """,
        python=True,
    )
    auth = await make_auth(opp_auth_factory, command)
    results = await asyncio.gather(*(login(auth, f"user{i}") for i in range(8)))
    assert all(r["type"] == "create_entry" for r in results)
    counts = [int(p.read_text()) for p in seen.iterdir()]
    assert len(counts) == 8
    assert max(counts) <= 4
    assert max(counts) >= 2  # logins do run in parallel up to the bound


# ---- meta and new users (G19) ----------------------------------------------------------------


async def test_meta_sets_name_group_and_local_only_of_new_user(opp_auth_factory: Factory, tmp_path: Path) -> None:
    command = write_script(
        tmp_path, "echo '# comment = ignored'\necho '  name = Alice Example '\necho 'group=system-admin'\n"
        "echo 'local_only = true'\necho 'no equals sign'\n"
    )
    auth = await make_auth(opp_auth_factory, command, meta=True)
    user = await auth.users.async_get_or_create_user((await login(auth))["result"])
    assert user.name == "Alice Example"
    assert user.group_ids == [UserMeta.GROUP_ADMIN]
    assert user.is_admin
    assert user.local_only is True


async def test_new_user_without_meta_joins_users_not_admins(opp_auth_factory: Factory, tmp_path: Path) -> None:
    auth = await make_auth(opp_auth_factory, write_script(tmp_path, ALWAYS_OK))
    user = await auth.users.async_get_or_create_user((await login(auth))["result"])
    assert user.group_ids == [UserMeta.GROUP_USER]
    assert not user.is_admin
    assert user.local_only is False
    assert user.name is None


async def test_default_group_applies_when_meta_names_none(opp_auth_factory: Factory, tmp_path: Path) -> None:
    command = write_script(tmp_path, "echo 'name = Reader'\n")
    auth = await make_auth(opp_auth_factory, command, meta=True, default_group=UserMeta.GROUP_READ_ONLY)
    user = await auth.users.async_get_or_create_user((await login(auth))["result"])
    assert user.group_ids == [UserMeta.GROUP_READ_ONLY]


async def test_unknown_meta_group_is_ignored_with_a_warning(
    opp_auth_factory: Factory, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    auth = await make_auth(opp_auth_factory, write_script(tmp_path, "echo 'group = root'\n"), meta=True)
    user = await auth.users.async_get_or_create_user((await login(auth))["result"])
    assert user.group_ids == [UserMeta.GROUP_USER]
    assert any("'root'" in m for m in error_messages(caplog, logging.WARNING))


async def test_output_is_ignored_when_meta_is_off(opp_auth_factory: Factory, tmp_path: Path) -> None:
    command = write_script(tmp_path, "echo 'name = Mallory'\necho 'group = system-admin'\n")
    auth = await make_auth(opp_auth_factory, command)
    user = await auth.users.async_get_or_create_user((await login(auth))["result"])
    assert user.group_ids == [UserMeta.GROUP_USER]
    assert user.name is None


async def test_non_utf8_output_with_meta_never_raises(opp_auth_factory: Factory, tmp_path: Path) -> None:
    command = write_script(
        tmp_path,
        "import sys\nsys.stdout.buffer.write(b'\\xff\\xfe\\x80 = \\xc3\\n name = Jos\\xe9\\n\\x00\\x01garbage\\n')\n",
        python=True,
    )
    auth = await make_auth(opp_auth_factory, command, meta=True)
    result = await login(auth)
    assert result["type"] == "create_entry"
    user = await auth.users.async_get_or_create_user(result["result"])
    assert user.name == "Jos\ufffd"


async def test_meta_belongs_to_the_login_that_printed_it(opp_auth_factory: Factory, tmp_path: Path) -> None:
    """Each login's meta travels with its own credentials: later logins never change an earlier one's user."""
    flag = tmp_path / "admin"
    flag.touch()
    command = write_script(tmp_path, f"echo \"name = $username\"\n[ -e {flag} ] && echo 'group = system-admin'\nexit 0\n")
    auth = await make_auth(opp_auth_factory, command, meta=True)
    admin_login = await login(auth, "erin")
    flag.unlink()
    later = [await login(auth, name) for name in ("frank", "grace")]
    erin = await auth.users.async_get_or_create_user(admin_login["result"])
    frank = await auth.users.async_get_or_create_user(later[0]["result"])
    assert (erin.name, erin.group_ids) == ("erin", ["system-admin"])
    assert (frank.name, frank.group_ids) == ("frank", [UserMeta.GROUP_USER])


async def test_http_login_creates_user_from_meta(
    opp_auth_factory: Factory, opp_auth_client: Any, tmp_path: Path
) -> None:
    command = write_script(
        tmp_path, '[ "$password" = pw ] || exit 1\necho "name = Heidi"\necho "group = system-read-only"\n'
        'echo "local_only = true"\n'
    )
    auth = await make_auth(opp_auth_factory, command, meta=True)
    client = await opp_auth_client(auth)
    tokens = await client.login.tokens(list(HANDLER), [{"username": " heidi ", "password": "pw"}])
    refresh = await auth.refresh_tokens.async_get_refresh_token_by_token(tokens["refresh_token"])
    assert refresh is not None
    user = refresh.user
    assert user.name == "Heidi"
    assert user.group_ids == [UserMeta.GROUP_READ_ONLY]
    assert user.local_only is True
    assert [c.data for c in user.credentials] == [{"username": "heidi"}]
    # The core refuses local-only users tokens from outside the local network.
    with pytest.raises(InvalidAuthError):
        await auth.refresh_tokens.async_validate_refresh_token(refresh, "203.0.113.5")


# ---- meta injection through the username (issue 11, item 6) -------------------------------

# A program that greets the user by echoing the name it was given: the attack's helper.
ECHO_NAME = 'echo "name = $username"\nexit 0\n'

UNSAFE_USERNAMES = [
    "alice\ngroup = system-admin",
    "alice\rgroup = system-admin",
    "alice\r\ngroup = system-admin",
    "alice\x0bgroup = system-admin",
    "alice\x0cgroup = system-admin",
    "alice\x1cgroup = system-admin",
    "alice\x85group = system-admin",
    "alice\u2028group = system-admin",
    "alice\u2029group = system-admin",
    "alice\x00group = system-admin",
    "alice\u202egroup = system-admin",
    "\u202ealice",
    "ali\u200bce",
    "alice\ufeff",
    "alice\ud800",
    "alice\n",
    "\talice",
]


@pytest.mark.parametrize("username", UNSAFE_USERNAMES, ids=lambda v: repr(v))
async def test_unsafe_usernames_are_refused_before_the_program_runs(
    opp_auth_factory: Factory, tmp_path: Path, username: str
) -> None:
    """Control, format and separator characters (even one a strip would remove) never reach the program."""
    marker = tmp_path / "ran"
    command = write_script(tmp_path, f'printf %s "$username" > {marker}\n' + ECHO_NAME)
    auth = await make_auth(opp_auth_factory, command, meta=True)
    result = await login(auth, username)
    assert result["type"] == "form"
    assert result["errors"] == {"base": "invalid_username"}
    assert not marker.exists()
    with pytest.raises(InvalidAuthError):
        await provider_of(auth).async_validate_login(username, "secret")
    assert not marker.exists()


async def test_echoed_username_cannot_make_an_admin(opp_auth_factory: Factory, tmp_path: Path) -> None:
    """The reported attack: the program echoes the username into its meta; the line break never gets there."""
    auth = await make_auth(opp_auth_factory, write_script(tmp_path, ECHO_NAME), meta=True)
    result = await login(auth, "alice\ngroup = system-admin")
    assert result["type"] == "form"
    assert not [u for u in await auth.users.async_get_users() if u.is_admin]
    # The same program with a plain username still names the user from its output.
    user = await auth.users.async_get_or_create_user((await login(auth, "alice"))["result"])
    assert (user.name, user.group_ids, user.is_admin) == ("alice", [UserMeta.GROUP_USER], False)


async def test_username_with_equals_is_refused_when_meta_is_on(opp_auth_factory: Factory, tmp_path: Path) -> None:
    """A program echoing the bare username would print a meta line; such usernames never run it."""
    marker = tmp_path / "ran"
    command = write_script(tmp_path, f'touch {marker}\necho "$username"\nexit 0\n')
    auth = await make_auth(opp_auth_factory, command, meta=True)
    result = await login(auth, "group = system-admin")
    assert result["errors"] == {"base": "invalid_auth"}
    assert not marker.exists()
    assert not await auth.users.async_get_users()


async def test_username_with_equals_is_fine_when_meta_is_off(opp_auth_factory: Factory, tmp_path: Path) -> None:
    command = write_script(tmp_path, '[ "$username" = "a=b" ] && echo "group = system-admin"\n')
    auth = await make_auth(opp_auth_factory, command)
    user = await auth.users.async_get_or_create_user((await login(auth, "a=b"))["result"])
    assert user.group_ids == [UserMeta.GROUP_USER]


@pytest.mark.parametrize("username", ["Zoë", "名前", "José García", "user@example.org", "o'brien", "🙂", "עִברִית"])
async def test_ordinary_unicode_usernames_still_log_in(opp_auth_factory: Factory, tmp_path: Path, username: str) -> None:
    """The rule refuses only control, format and separator characters: letters, marks, symbols and spaces pass."""
    out = tmp_path / "seen"
    command = write_script(tmp_path, f'printf %s "$username" > {out}\n' + ECHO_NAME)
    auth = await make_auth(opp_auth_factory, command, meta=True)
    result = await login(auth, username)
    assert result["type"] == "create_entry", result
    assert out.read_text(encoding="utf-8") == username
    user = await auth.users.async_get_or_create_user(result["result"])
    assert user.name == username


@pytest.mark.parametrize(
    "output",
    [
        "echo 'group = system-users'\necho 'group = system-admin'\n",
        "echo 'group = system-admin'\necho 'group = system-admin'\n",
        "echo 'name = A'\necho '  name=B'\n",
        "echo 'local_only = false'\necho 'local_only = true'\n",
        "echo 'group = root'\necho 'group = system-admin'\n",
    ],
)
async def test_a_meta_key_printed_twice_denies_the_login(
    opp_auth_factory: Factory, tmp_path: Path, caplog: pytest.LogCaptureFixture, output: str
) -> None:
    """Ambiguous output fails closed: no credentials, no user, an error naming the key."""
    auth = await make_auth(opp_auth_factory, write_script(tmp_path, output + "exit 0\n"), meta=True)
    result = await login(auth)
    assert result["errors"] == {"base": "invalid_auth"}
    assert not await auth.users.async_get_users()
    assert any("more than once" in m for m in error_messages(caplog))


async def test_only_lf_and_cr_end_a_meta_line(opp_auth_factory: Factory, tmp_path: Path) -> None:
    """U+2028, NEL, VT and FF inside a line do not start a new one, so nothing after them is a key."""
    command = write_script(
        tmp_path,
        "import sys\nsys.stdout.buffer.write('name = Eve\\u2028group = system-admin\\x85local_only = true\\n'"
        ".encode() + b'x = 1\\x0bgroup = system-admin\\x0clocal_only = true\\r\\n')\n",
        python=True,
    )
    auth = await make_auth(opp_auth_factory, command, meta=True)
    user = await auth.users.async_get_or_create_user((await login(auth))["result"])
    assert user.group_ids == [UserMeta.GROUP_USER]
    assert user.local_only is False
    # The name holding a line separator is ignored rather than stored.
    assert user.name is None


async def test_unknown_keys_and_prose_are_ignored(opp_auth_factory: Factory, tmp_path: Path) -> None:
    command = write_script(
        tmp_path,
        "echo 'Hello alice'\necho 'role = admin'\necho 'groups = system-admin'\necho 'Group = system-admin'\n"
        "echo 'name = Alice = The Great'\n",
    )
    auth = await make_auth(opp_auth_factory, command, meta=True)
    user = await auth.users.async_get_or_create_user((await login(auth))["result"])
    assert user.group_ids == [UserMeta.GROUP_USER]
    assert user.name == "Alice = The Great"

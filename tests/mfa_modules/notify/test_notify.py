"""The notify module with the file and command_line platforms: setup flow, login, resend limits, configuration."""

from __future__ import annotations

import logging
import stat
import time
from pathlib import Path
from typing import Any

import opp_auth_notify
import pytest

from opp_auth.config import load_config
from opp_auth.plugins import make_plugin_manager
from opp_auth.testing import async_stored_document, run_login_flow
from opp_auth.yaml import ConfigError

LOGIN = [{"username": "mfa-user", "password": "mfa-pass"}]
PROVIDERS = [{"type": "insecure_example", "users": [{"username": "mfa-user", "password": "mfa-pass", "name": "Mia"}]}]
HANDLER = ("insecure_example", None)
FILE_SERVICE = {"name": "codes", "platform": "file", "filename": "codes.txt"}


@pytest.fixture
async def auth(opp_auth_factory: Any) -> Any:
    """Example provider plus notify over the file platform."""
    return await opp_auth_factory(
        providers=PROVIDERS, mfa_modules=[{"type": "notify"}], blocks={"notify": [FILE_SERVICE]}
    )


async def enrolled(auth: Any, make_user: Any, **setting: Any) -> Any:
    """A user enrolled in notify (file service unless told otherwise)."""
    user = await make_user(auth)
    await auth.users.async_enable_user_mfa(user, "notify", {"notify_service": "codes", **setting})
    return user


def wrong(code: str) -> str:
    """A code that is certainly not this one."""
    return f"{(int(code) + 1) % 1_000_000:06d}"


# ---- setup flow ---------------------------------------------------------------------------------


async def test_setup_wrong_code_sends_a_new_code_and_the_new_one_enrols(
    auth: Any, make_user: Any, codes_file: Any
) -> None:
    """invalid_code plus a fresh code; the fresh code enrols with the chosen target, stored as Open Peer Power does."""
    user = await make_user(auth)
    form = await auth.mfa_setup_flow.async_init("notify", context={"user_id": user.id})
    assert form["step_id"] == "init"
    form = await auth.mfa_setup_flow.async_configure(form["flow_id"], {"notify_service": "codes", "target": "dev"})
    assert form["step_id"] == "setup" and form["description_placeholders"] == {"notify_service": "codes"}
    first = codes_file()[-1]
    form = await auth.mfa_setup_flow.async_configure(form["flow_id"], {"code": wrong(first)})
    assert form["errors"] == {"base": "invalid_code"}
    assert len(codes_file()) == 2 and codes_file()[-1] != first
    done = await auth.mfa_setup_flow.async_configure(form["flow_id"], {"code": codes_file()[-1]})
    assert done["type"] == "create_entry" and done["data"] == {}
    stored = await async_stored_document(auth.config_dir, "auth_module.notify")
    assert stored == {"users": {user.id: {"notify_service": "codes", "target": "dev"}}}


async def test_file_platform_writes_target_and_message_to_a_private_file(
    auth: Any, make_user: Any, config_dir: Path
) -> None:
    """One line per code, prefixed with the target; only the owner can read the file."""
    user = await enrolled(auth, make_user, target="dev")
    await auth.registry.get_auth_mfa_module("notify").async_initialize_login_mfa_step(user.id)
    path = config_dir / "codes.txt"
    line = path.read_text()
    assert line.startswith("dev: ") and line.endswith(" is your Open Peer Power login code\n")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


async def test_setup_resubmitted_without_input_sends_no_new_code(auth: Any, make_user: Any, codes_file: Any) -> None:
    """Only the first display of the code form sends (no mail bomb by re-asking)."""
    user = await make_user(auth)
    form = await auth.mfa_setup_flow.async_init("notify", context={"user_id": user.id})
    form = await auth.mfa_setup_flow.async_configure(form["flow_id"], {"notify_service": "codes"})
    form = await auth.mfa_setup_flow.async_configure(form["flow_id"], None)
    assert form["step_id"] == "setup" and len(codes_file()) == 1


async def test_setup_without_services_aborts(opp_auth_factory: Any, make_user: Any) -> None:
    """No notify: block: no_available_service."""
    auth = await opp_auth_factory(providers=PROVIDERS, mfa_modules=[{"type": "notify"}])
    user = await make_user(auth)
    result = await auth.mfa_setup_flow.async_init("notify", context={"user_id": user.id})
    assert result["type"] == "abort" and result["reason"] == "no_available_service"


async def test_available_services_honour_include_and_exclude_sorted(opp_auth_factory: Any) -> None:
    """All configured minus exclude, within include, sorted."""
    services = [{"name": n, "platform": "file", "filename": f"{n}.txt"} for n in ("zeta", "alpha", "mid", "other")]
    auth = await opp_auth_factory(
        providers=PROVIDERS,
        mfa_modules=[{"type": "notify", "include": ["zeta", "mid", "alpha", "missing"], "exclude": ["mid"]}],
        blocks={"notify": services},
    )
    assert auth.registry.get_auth_mfa_module("notify").available_services == ["alpha", "zeta"]


# ---- login ---------------------------------------------------------------------------------------


async def test_code_logs_in_once(auth: Any, make_user: Any, codes_file: Any) -> None:
    """The delivered code finishes the login and is then spent."""
    user = await enrolled(auth, make_user)
    result = await run_login_flow(auth, HANDLER, LOGIN)
    assert result["step_id"] == "mfa"
    code = codes_file()[-1]
    result = await auth.login_flow.async_configure(result["flow_id"], {"code": code})
    assert result["type"] == "create_entry"
    assert await auth.registry.get_auth_mfa_module("notify").async_validate(user.id, {"code": code}) is False


async def test_user_not_set_up_is_a_clear_abort(opp_auth_factory: Any, make_user: Any) -> None:
    """A user deposed while choosing between modules gets abort user_not_setup, not an error."""
    auth = await opp_auth_factory(
        providers=PROVIDERS,
        mfa_modules=[{"type": "notify", "id": "first"}, {"type": "notify", "id": "second"}],
        blocks={"notify": [FILE_SERVICE]},
    )
    user = await make_user(auth)
    for module_id in ("first", "second"):
        await auth.users.async_enable_user_mfa(user, module_id, {"notify_service": "codes"})
    result = await run_login_flow(auth, HANDLER, LOGIN)
    assert result["step_id"] == "select_mfa_module"
    await auth.users.async_disable_user_mfa(user, "first")
    result = await auth.login_flow.async_configure(result["flow_id"], {"multi_factor_auth_module": "first"})
    assert result["type"] == "abort" and result["reason"] == "user_not_setup"


async def test_service_gone_since_enrolment_aborts_login(auth: Any, make_user: Any) -> None:
    """Enrolled with a service no longer configured: notify_service_not_exist."""
    await enrolled(auth, make_user, notify_service="removed")
    result = await run_login_flow(auth, HANDLER, LOGIN)
    assert result["type"] == "abort" and result["reason"] == "notify_service_not_exist"


async def test_third_wrong_code_ends_the_login_without_another_send(auth: Any, make_user: Any, codes_file: Any) -> None:
    """MAX_RETRY_TIME is 3; each of the first two wrong codes brings a new code, the third aborts."""
    await enrolled(auth, make_user)
    result = await run_login_flow(auth, HANDLER, LOGIN)
    for _ in range(2):
        result = await auth.login_flow.async_configure(result["flow_id"], {"code": wrong(codes_file()[-1])})
        assert result["errors"] == {"base": "invalid_code"}
    result = await auth.login_flow.async_configure(result["flow_id"], {"code": wrong(codes_file()[-1])})
    assert result["type"] == "abort" and result["reason"] == "too_many_retry"
    assert len(codes_file()) == 3


async def test_resent_code_replaces_the_old_one(auth: Any, make_user: Any, codes_file: Any) -> None:
    """After a resend only the new code works."""
    user = await enrolled(auth, make_user)
    module = auth.registry.get_auth_mfa_module("notify")
    await module.async_initialize_login_mfa_step(user.id)
    await module.async_after_failed_validation(user.id)
    old, new = codes_file()
    assert await module.async_validate(user.id, {"code": old}) is False
    assert await module.async_validate(user.id, {"code": new}) is True


async def test_resends_per_login_are_capped(
    auth: Any, make_user: Any, codes_file: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """At most three codes are resent for one login; the last one sent keeps working."""
    user = await enrolled(auth, make_user)
    module = auth.registry.get_auth_mfa_module("notify")
    await module.async_initialize_login_mfa_step(user.id)
    with caplog.at_level(logging.WARNING):
        for _ in range(4):
            await module.async_after_failed_validation(user.id)
    assert len(codes_file()) == 4
    assert "codes were resent already" in caplog.text
    assert await module.async_validate(user.id, {"code": codes_file()[-1]}) is True


async def test_resends_per_user_and_minute_are_capped(auth: Any, make_user: Any, codes_file: Any) -> None:
    """Five codes a minute: a second login's second resend is skipped and its last code still works."""
    await enrolled(auth, make_user)
    result = await run_login_flow(auth, HANDLER, LOGIN)
    for _ in range(2):
        await auth.login_flow.async_configure(result["flow_id"], {"code": wrong(codes_file()[-1])})
    result = await run_login_flow(auth, HANDLER, LOGIN)
    for _ in range(2):
        await auth.login_flow.async_configure(result["flow_id"], {"code": wrong(codes_file()[-1])})
    assert len(codes_file()) == 5
    result = await auth.login_flow.async_configure(result["flow_id"], {"code": codes_file()[-1]})
    assert result["type"] == "create_entry"


async def test_pending_codes_are_capped(
    auth: Any, make_user: Any, codes_file: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Codes live in memory only, and the oldest are evicted beyond the cap."""
    monkeypatch.setattr(opp_auth_notify, "MAX_PENDING", 2)
    module = auth.registry.get_auth_mfa_module("notify")
    users = [await auth.users.async_create_user(f"user {n}") for n in range(3)]
    for user in users:
        await module.async_setup_user(user.id, {"notify_service": "codes"})
        await module.async_initialize_login_mfa_step(user.id)
    codes = codes_file()
    assert await module.async_validate(users[0].id, {"code": codes[0]}) is False
    assert await module.async_validate(users[2].id, {"code": codes[2]}) is True
    stored = await async_stored_document(auth.config_dir, "auth_module.notify")
    assert all(set(entry) == {"notify_service", "target"} for entry in stored["users"].values())


# ---- command_line platform -----------------------------------------------------------------------


def script(tmp_path: Path, body: str) -> Path:
    """An executable shell script."""
    path = tmp_path / "notify.sh"
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(0o700)
    return path


async def command_auth(opp_auth_factory: Any, command: Path, **extra: Any) -> Any:
    """notify over one command_line service named sms."""
    service = {"name": "sms", "platform": "command_line", "command": str(command), **extra}
    return await opp_auth_factory(providers=PROVIDERS, mfa_modules=[{"type": "notify"}], blocks={"notify": [service]})


async def test_command_gets_the_message_on_stdin_and_the_target_in_its_environment(
    opp_auth_factory: Any, make_user: Any, tmp_path: Path
) -> None:
    """A real program receives the message and NOTIFY_TARGET; the code it got logs in."""
    out = tmp_path / "out"
    out.mkdir()
    command = script(tmp_path, 'cat > "$1/message"\nprintf %s "$NOTIFY_TARGET" > "$1/target"\n')
    auth = await command_auth(opp_auth_factory, command, args=[str(out)])
    await enrolled(auth, make_user, notify_service="sms", target="+15551234")
    result = await run_login_flow(auth, HANDLER, LOGIN)
    message = (out / "message").read_text()
    assert (out / "target").read_text() == "+15551234"
    code = message.split()[0]
    assert message == f"{code} is your Open Peer Power login code" and code.isdigit() and len(code) == 6
    result = await auth.login_flow.async_configure(result["flow_id"], {"code": code})
    assert result["type"] == "create_entry"


async def test_failing_command_aborts_the_login(
    opp_auth_factory: Any, make_user: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A non-zero exit is send_failed, logged with the program's complaint."""
    auth = await command_auth(opp_auth_factory, script(tmp_path, "echo 'no modem' >&2\nexit 3\n"))
    await enrolled(auth, make_user, notify_service="sms")
    with caplog.at_level(logging.ERROR):
        result = await run_login_flow(auth, HANDLER, LOGIN)
    assert result["type"] == "abort" and result["reason"] == "send_failed"
    assert "exited with code 3: no modem" in caplog.text


async def test_hanging_command_is_killed_at_the_timeout(opp_auth_factory: Any, make_user: Any, tmp_path: Path) -> None:
    """A program that never finishes is killed and the login aborts promptly."""
    auth = await command_auth(opp_auth_factory, script(tmp_path, "sleep 30\n"), timeout=0.3)
    await enrolled(auth, make_user, notify_service="sms")
    started = time.monotonic()
    result = await run_login_flow(auth, HANDLER, LOGIN)
    assert result["type"] == "abort" and result["reason"] == "send_failed"
    assert time.monotonic() - started < 5


# ---- configuration -------------------------------------------------------------------------------


# Appended after the block under test (so its line numbers stay put); names only the plugins this env has.
CORE_BLOCK = (
    "openpeerpower:\n  auth_providers:\n    - type: insecure_example\n      users: []\n"
    "  auth_mfa_modules:\n    - type: notify\n"
)


def config_error(config_dir: Path, yaml_text: str) -> ConfigError:
    """The error loading this configuration.yaml gives."""
    (config_dir / "configuration.yaml").write_text(yaml_text + CORE_BLOCK)
    with pytest.raises(ConfigError) as info:
        load_config(config_dir, make_plugin_manager(), allow_insecure_example=True)
    return info.value


def test_unknown_platform_is_named_with_the_installed_ones(config_dir: Path) -> None:
    """An unknown platform: its name, the installed platforms, file and line."""
    err = config_error(config_dir, "notify:\n  - name: sms\n    platform: twilio\n")
    assert err.filename.endswith("configuration.yaml") and err.line == 3
    assert err.key_path == ("notify", 0, "platform")
    assert "unknown notify platform 'twilio'. Installed platforms: command_line, file, smtp" in str(err)


def test_missing_smtp_key_names_file_line_and_key(config_dir: Path) -> None:
    """smtp without server: missing required key 'server' at the entry's line."""
    err = config_error(
        config_dir,
        "http: {}\nnotify:\n  - name: email\n    platform: smtp\n    sender: opp@example.org\n",
    )
    assert str(err) == "configuration.yaml, line 3, key notify -> 0 -> server: missing required key 'server'"


def test_bad_platform_value_points_at_its_line(config_dir: Path) -> None:
    """A wrong value inside a platform's keys is located at that key."""
    err = config_error(
        config_dir,
        "notify:\n  - name: email\n    platform: smtp\n    server: mail.example.org\n"
        "    sender: opp@example.org\n    encryption: ssl\n",
    )
    assert err.line == 6 and err.key_path == ("notify", 0, "encryption")


def test_command_must_be_an_absolute_path(config_dir: Path) -> None:
    """No shell and no PATH lookup: a relative command is refused."""
    err = config_error(config_dir, "notify:\n  - name: sms\n    platform: command_line\n    command: send-sms\n")
    assert err.line == 4 and "absolute path" in str(err)


def test_duplicate_service_names_are_refused(config_dir: Path) -> None:
    """Two services cannot share a name."""
    err = config_error(
        config_dir,
        "notify:\n  - name: a\n    platform: file\n    filename: a.txt\n  - name: a\n    platform: file\n    filename: b.txt\n",
    )
    assert err.line == 5 and "duplicate notify service name 'a'" in str(err)


def test_smtp_password_is_not_echoed_in_errors(config_dir: Path) -> None:
    """A bad password value is reported without showing it."""
    err = config_error(
        config_dir,
        "notify:\n  - name: email\n    platform: smtp\n    server: mail.example.org\n"
        "    sender: opp@example.org\n    username: opp\n    password: [hunter2]\n",
    )
    assert err.key_path[-1] == "password" and "hunter2" not in str(err)


async def test_message_needs_a_place_for_the_code(opp_auth_factory: Any) -> None:
    """A message without {} would send no code: configuration error."""
    with pytest.raises(ConfigError, match="must contain"):
        await opp_auth_factory(providers=PROVIDERS, mfa_modules=[{"type": "notify", "message": "Your code is ready"}])


def test_notify_block_is_validated_into_config_blocks(config_dir: Path) -> None:
    """A configuration.yaml notify: block comes out validated, defaults filled and the name made a slug."""
    (config_dir / "configuration.yaml").write_text(
        "notify:\n  - name: Dev Codes\n    platform: file\n    filename: dev.txt\n" + CORE_BLOCK
    )
    config = load_config(config_dir, make_plugin_manager(), allow_insecure_example=True)
    assert config.blocks["notify"] == [
        {"name": "dev_codes", "platform": "file", "filename": "dev.txt", "timestamp": False}
    ]

"""The htpasswd provider against files written by Apache's real htpasswd tool."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import voluptuous as vol
from opp_auth_htpasswd import HtpasswdAuthProvider

from opp_auth import UserMeta
from opp_auth.manager import AuthManager

HANDLER = ("htpasswd", None)
ONLY_BCRYPT = "only bcrypt entries (htpasswd -B) are supported"

Factory = Callable[..., Awaitable[AuthManager]]


async def make_auth(factory: Factory, path: Path, **options: Any) -> AuthManager:
    """A manager with only an htpasswd provider reading path."""
    return await factory(providers=[{"type": "htpasswd", "path": str(path), **options}], mfa_modules=[])


async def login(auth: AuthManager, username: str, password: str) -> dict[str, Any]:
    """Run the provider step of a login flow."""
    result = await auth.login_flow.async_init(HANDLER, context={"ip_address": "127.0.0.1"})
    assert result["type"] == "form" and result["step_id"] == "init", result
    return await auth.login_flow.async_configure(result["flow_id"], {"username": username, "password": password})


def logged(caplog: pytest.LogCaptureFixture, level: int) -> str:
    """Everything logged at exactly this level, one message a line."""
    return "\n".join(r.getMessage() for r in caplog.records if r.levelno == level)


# ---- logging in -------------------------------------------------------------------------------


async def test_bcrypt_entry_made_by_htpasswd_logs_in(opp_auth_factory: Factory, htpasswd: Any) -> None:
    htpasswd.add("alice", "s3cret pass")
    auth = await make_auth(opp_auth_factory, htpasswd.path)
    result = await login(auth, "alice", "s3cret pass")
    assert result["type"] == "create_entry", result
    assert result["result"].data == {"username": "alice"}


async def test_wrong_password_is_invalid_auth(opp_auth_factory: Factory, htpasswd: Any) -> None:
    htpasswd.add("alice", "s3cret pass")
    auth = await make_auth(opp_auth_factory, htpasswd.path)
    result = await login(auth, "alice", "s3cret pasS")
    assert result["type"] == "form"
    assert result["errors"] == {"base": "invalid_auth"}


@pytest.mark.parametrize("username", ["Alice", "ALICE", " alice", "alice "])
async def test_usernames_are_exact(opp_auth_factory: Factory, htpasswd: Any, username: str) -> None:
    htpasswd.add("alice", "s3cret pass")
    auth = await make_auth(opp_auth_factory, htpasswd.path)
    result = await login(auth, username, "s3cret pass")
    assert result["errors"] == {"base": "invalid_auth"}


async def test_password_longer_than_72_bytes_matches_as_htpasswd_hashed_it(opp_auth_factory: Factory, htpasswd: Any) -> None:
    password = "correct horse battery staple " * 4  # 116 bytes; bcrypt reads the first 72
    htpasswd.add("alice", password)
    auth = await make_auth(opp_auth_factory, htpasswd.path)
    result = await login(auth, "alice", password)
    assert result["type"] == "create_entry", result


async def test_unknown_user_costs_one_password_check(
    opp_auth_factory: Factory, htpasswd: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    htpasswd.add("alice", "s3cret pass")
    auth = await make_auth(opp_auth_factory, htpasswd.path)
    calls = []
    real_check = auth.executor.async_password_check

    async def counting_check(func: Any, *args: Any) -> Any:
        calls.append(func)
        return await real_check(func, *args)

    monkeypatch.setattr(auth.executor, "async_password_check", counting_check)
    result = await login(auth, "mallory", "s3cret pass")
    assert result["errors"] == {"base": "invalid_auth"}
    assert len(calls) == 1


@pytest.mark.parametrize(
    ("flag", "kind"),
    [("-m", "MD5 ($apr1$)"), ("-s", "SHA-1 ({SHA})"), ("-p", "plain-text"), ("-d", "crypt (DES)")],
)
async def test_non_bcrypt_entry_is_refused_naming_line_and_user(
    opp_auth_factory: Factory, htpasswd: Any, caplog: pytest.LogCaptureFixture, flag: str, kind: str
) -> None:
    htpasswd.add("alice", "s3cret pass")
    htpasswd.add("bob", "bobs-pass", flag)
    auth = await make_auth(opp_auth_factory, htpasswd.path)
    result = await login(auth, "bob", "bobs-pass")
    assert result["errors"] == {"base": "invalid_auth"}
    errors = logged(caplog, logging.ERROR)
    assert f"{htpasswd.path} line 2: user 'bob' has a {kind}" in errors
    assert ONLY_BCRYPT in errors


async def test_bcrypt_users_still_log_in_beside_refused_entries(opp_auth_factory: Factory, htpasswd: Any) -> None:
    htpasswd.add("bob", "bobs-pass", "-m")
    htpasswd.add("alice", "s3cret pass")
    auth = await make_auth(opp_auth_factory, htpasswd.path)
    assert (await login(auth, "alice", "s3cret pass"))["type"] == "create_entry"


# ---- the file ---------------------------------------------------------------------------------


async def test_malformed_line_is_skipped_with_a_warning_naming_it(
    opp_auth_factory: Factory, htpasswd: Any, caplog: pytest.LogCaptureFixture
) -> None:
    htpasswd.add("alice", "s3cret pass")
    # htpasswd itself refuses to edit a malformed file, so bob's line is appended by hand.
    with htpasswd.path.open("a") as file:
        file.write("this line has no colon\n" + htpasswd.line("bob", "bobs-pass") + "\n")
    auth = await make_auth(opp_auth_factory, htpasswd.path)
    assert (await login(auth, "bob", "bobs-pass"))["type"] == "create_entry"
    assert f"{htpasswd.path} line 2: not a 'user:hash' entry, skipped" in logged(caplog, logging.WARNING)


async def test_comments_and_blank_lines_are_ignored_silently(
    opp_auth_factory: Factory, htpasswd: Any, caplog: pytest.LogCaptureFixture
) -> None:
    htpasswd.path.write_text("# users of the house\n\n   \n")
    htpasswd.add("alice", "s3cret pass")
    auth = await make_auth(opp_auth_factory, htpasswd.path)
    assert (await login(auth, "alice", "s3cret pass"))["type"] == "create_entry"
    assert logged(caplog, logging.WARNING) == ""


async def test_first_entry_of_a_user_listed_twice_wins(
    opp_auth_factory: Factory, htpasswd: Any, caplog: pytest.LogCaptureFixture
) -> None:
    htpasswd.add("alice", "first-pass")
    with htpasswd.path.open("a") as file:
        file.write(htpasswd.line("alice", "second-pass") + "\n")
    auth = await make_auth(opp_auth_factory, htpasswd.path)
    assert (await login(auth, "alice", "second-pass"))["errors"] == {"base": "invalid_auth"}
    assert (await login(auth, "alice", "first-pass"))["type"] == "create_entry"
    assert "line 2: user 'alice' is already defined on line 1" in logged(caplog, logging.WARNING)


async def test_user_added_while_the_server_runs_logs_in_without_restart(
    opp_auth_factory: Factory, opp_auth_client: Any, htpasswd: Any
) -> None:
    htpasswd.add("alice", "s3cret pass")
    auth = await make_auth(opp_auth_factory, htpasswd.path)
    client = await opp_auth_client(auth)
    await client.login.tokens(list(HANDLER), [{"username": "alice", "password": "s3cret pass"}])
    htpasswd.add("carol", "carols-pass")
    tokens = await client.login.tokens(list(HANDLER), [{"username": "carol", "password": "carols-pass"}])
    async with client.request("GET", "/api/", headers={"Authorization": f"Bearer {tokens['access_token']}"}) as resp:
        assert resp.status == 200


async def test_password_changed_in_the_file_applies_at_once(opp_auth_factory: Factory, htpasswd: Any) -> None:
    htpasswd.add("alice", "old-pass")
    auth = await make_auth(opp_auth_factory, htpasswd.path)
    assert (await login(auth, "alice", "old-pass"))["type"] == "create_entry"
    htpasswd.add("alice", "new-pass")
    assert (await login(auth, "alice", "old-pass"))["errors"] == {"base": "invalid_auth"}
    assert (await login(auth, "alice", "new-pass"))["type"] == "create_entry"


async def test_user_removed_from_the_file_gets_no_new_access_token(
    opp_auth_factory: Factory, opp_auth_client: Any, htpasswd: Any
) -> None:
    htpasswd.add("alice", "s3cret pass")
    htpasswd.add("bob", "bobs-pass")
    auth = await make_auth(opp_auth_factory, htpasswd.path)
    client = await opp_auth_client(auth)
    tokens = await client.login.tokens(list(HANDLER), [{"username": "alice", "password": "s3cret pass"}])
    htpasswd.delete("alice")
    status, body = await client.login.token(
        grant_type="refresh_token", client_id="https://example.com/app", refresh_token=tokens["refresh_token"]
    )
    assert status == 403, body
    assert body["error"] == "access_denied"


async def test_missing_file_logs_an_error_at_startup_and_refuses_logins(
    opp_auth_factory: Factory, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "no-such-htpasswd"
    auth = await make_auth(opp_auth_factory, path)
    assert f"htpasswd file {path} cannot be read" in logged(caplog, logging.ERROR)
    assert (await login(auth, "alice", "s3cret pass"))["errors"] == {"base": "invalid_auth"}


async def test_file_created_after_startup_is_read_on_the_next_login(opp_auth_factory: Factory, htpasswd: Any) -> None:
    auth = await make_auth(opp_auth_factory, htpasswd.path)
    htpasswd.add("alice", "s3cret pass")
    assert (await login(auth, "alice", "s3cret pass"))["type"] == "create_entry"


async def test_deleted_file_locks_everyone_out(opp_auth_factory: Factory, htpasswd: Any) -> None:
    htpasswd.add("alice", "s3cret pass")
    auth = await make_auth(opp_auth_factory, htpasswd.path)
    assert (await login(auth, "alice", "s3cret pass"))["type"] == "create_entry"
    htpasswd.path.unlink()
    assert (await login(auth, "alice", "s3cret pass"))["errors"] == {"base": "invalid_auth"}


# ---- configuration ----------------------------------------------------------------------------


@pytest.mark.parametrize(("default_group", "group_id"), [(None, UserMeta.GROUP_USER), ("system-admin", UserMeta.GROUP_ADMIN),
                                                          ("system-read-only", UserMeta.GROUP_READ_ONLY)])
async def test_default_group_is_the_group_of_new_users(
    opp_auth_factory: Factory, htpasswd: Any, default_group: str | None, group_id: str
) -> None:
    htpasswd.add("alice", "s3cret pass")
    options = {"default_group": default_group} if default_group else {}
    auth = await make_auth(opp_auth_factory, htpasswd.path, **options)
    user = await auth.users.async_get_or_create_user((await login(auth, "alice", "s3cret pass"))["result"])
    assert user.group_ids == [group_id]
    assert user.name == "alice"


def test_relative_path_is_refused() -> None:
    with pytest.raises(vol.Invalid, match="absolute path"):
        HtpasswdAuthProvider.CONFIG_SCHEMA({"type": "htpasswd", "path": "htpasswd"})


def test_unknown_default_group_is_refused() -> None:
    with pytest.raises(vol.Invalid):
        HtpasswdAuthProvider.CONFIG_SCHEMA({"type": "htpasswd", "path": "/etc/htpasswd", "default_group": "wheel"})


def test_plugins_command_finds_the_distribution() -> None:
    done = subprocess.run(
        [str(Path(sys.executable).parent / "opp-auth"), "plugins", "--json"], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    rows = {row["name"]: row for row in json.loads(done.stdout)}
    assert rows["provider-htpasswd"]["distribution"] == "opp-auth-htpasswd"
    assert rows["provider-htpasswd"]["provider_types"] == ["htpasswd"]
    assert rows["provider-htpasswd"]["error"] is None

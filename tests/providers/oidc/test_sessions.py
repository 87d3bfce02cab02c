"""The re-check of a refresh token at the provider fails closed: across a real restart of `opp-auth serve`,
with the provider down past its grace, with the grant revoked there, and with no grant at all. The
provider's tokens are kept encrypted, go with their refresh token or user, and are bounded per user.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import stat
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from opp_auth_oidc import MAX_SESSIONS_PER_USER, OidcAuthProvider
from opp_auth_oidc.sessions import KEY_FILE

from opp_auth import InvalidAuthError
from opp_auth.manager import AuthManager

from .conftest import (
    ACCOUNTS,
    CLIENT_ID,
    CLIENT_SECRET,
    OpenIdProvider,
    Site,
    browser_login,
    client_of,
    free_port,
    onboard,
    provider_config,
    refresh,
    set_account,
    trade,
)

OPP_AUTH = shutil.which("opp-auth", path=str(Path(sys.executable).parent)) or shutil.which("opp-auth")
STRANGER = {"preferred_username": "alice", "name": "Alice", "groups": ["strangers"]}
FAMILY = {"preferred_username": "alice", "name": "Alice", "groups": ["family"]}


def storage_text(config_dir: Path, key: str = "auth_provider.oidc.default") -> str:
    """The provider's storage file and its journal, as text."""
    folder = config_dir / ".storage"
    return "".join(p.read_text() for p in (folder / key, folder / f".{key}.journal") if p.exists())


async def revoke_at_provider(op: OpenIdProvider, token: str) -> None:
    """The provider's own revocation endpoint (RFC 7009): revoking a refresh token ends its whole grant."""
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{op.issuer}/.well-known/openid-configuration") as resp:
            endpoint = (await resp.json())["revocation_endpoint"]
        headers = {"Authorization": aiohttp.encode_basic_auth(CLIENT_ID, CLIENT_SECRET)}
        form = {"token": token, "token_type_hint": "refresh_token"}
        async with session.post(endpoint, data=form, headers=headers) as resp:
            assert resp.status == 200, await resp.text()


# ---- a real restart ---------------------------------------------------------------------------


class Served:
    """`opp-auth serve` on a configuration directory with an oidc provider, on one port across restarts."""

    def __init__(self, config_dir: Path, op: OpenIdProvider, port: int) -> None:
        """Not started yet."""
        self.config_dir = config_dir
        self.op = op
        self.port = port
        self.base = f"http://127.0.0.1:{port}"
        self.client_id = f"{self.base}/"
        self.redirect_uri = f"{self.base}/static/i18n/en.json"
        self.log = config_dir.parent / "serve.log"
        self.proc: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        """Start the program and wait until it answers."""
        assert OPP_AUTH is not None, "the opp-auth program is not installed"
        with self.log.open("ab") as log:
            self.proc = await asyncio.create_subprocess_exec(
                OPP_AUTH,
                *("-c", str(self.config_dir), "serve", "--host", "127.0.0.1", "--port", str(self.port)),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=log,
                stderr=log,
            )
        deadline = time.monotonic() + 30
        async with aiohttp.ClientSession() as session:
            while True:
                assert self.proc.returncode is None, self.log.read_text()
                try:
                    async with session.get(f"{self.base}/api/onboarding") as resp:
                        if resp.status < 500:
                            return
                except aiohttp.ClientError:
                    pass
                assert time.monotonic() < deadline, self.log.read_text()
                await asyncio.sleep(0.1)

    async def stop(self) -> None:
        """SIGTERM, as a service manager stops it (it flushes its files)."""
        if self.proc is not None and self.proc.returncode is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                async with asyncio.timeout(15):
                    await self.proc.wait()
            except TimeoutError:
                self.proc.kill()
                await self.proc.wait()
                pytest.fail("opp-auth serve did not stop on SIGTERM:\n" + self.log.read_text())
            assert self.proc.returncode == 0, self.log.read_text()
        self.proc = None

    async def restart(self) -> None:
        """A new process on the same directory and port."""
        await self.stop()
        await self.start()


@pytest.fixture
async def served(op: Any, tmp_path: Path) -> AsyncIterator[Callable[..., Awaitable[Served]]]:
    """await served(**provider_config): the OP and `opp-auth serve` in front of it, with an owner."""
    running: list[Served] = []

    async def make(access_ttl: int = 3600, **extra: Any) -> Served:
        port = free_port()
        base = f"http://127.0.0.1:{port}"
        provider = await op(clients=[client_of(base)], accounts=json.loads(json.dumps(ACCOUNTS)), access_ttl=access_ttl)
        config_dir = tmp_path / "config"
        config_dir.mkdir()
        providers = [provider_config(provider, **extra), {"type": "openpeerpower"}]
        config = {"openpeerpower": {"auth_providers": providers}, "http": {}}
        (config_dir / "configuration.yaml").write_text(yaml.safe_dump(config))
        server = Served(config_dir, provider, port)
        running.append(server)
        await server.start()
        await onboard(base)
        return server

    yield make
    for server in running:
        await server.stop()


@pytest.mark.chromium
async def test_a_real_restart_keeps_every_session_checked(served: Any, page: Any) -> None:
    """Login, then `opp-auth serve` restarts before each step: the refresh still asks the provider (its
    rotated refresh token kept across restarts), refuses once alice left the required groups, and the
    provider's back-channel logout still finds the session. The provider's tokens are not readable at rest."""
    s: Served = await served(recheck_interval=0, access_ttl=2)
    status, tokens = await trade(s, await browser_login(page, s, "alice"))
    assert status == 200, tokens
    session_token = tokens["refresh_token"]
    await s.restart()
    # The access token of the login has expired by now: the provider's refresh token renews it.
    await asyncio.sleep(2.5)
    assert await refresh(s, session_token) == 200
    await asyncio.sleep(2.5)
    await s.restart()
    # The refresh token the provider rotated at the last renewal was kept (the old one would revoke the grant).
    assert await refresh(s, session_token) == 200

    await set_account(s.op, "alice", STRANGER)
    await s.restart()
    assert await refresh(s, session_token) == 403
    await set_account(s.op, "alice", FAMILY)
    assert await refresh(s, session_token) == 200

    text = storage_text(s.config_dir)
    assert '"grant"' in text and "access_token" not in text and "refresh_token" not in text, text
    key_file = s.config_dir / KEY_FILE
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    files = [
        s.config_dir / ".storage" / name
        for name in ("auth_provider.oidc.default", ".auth_provider.oidc.default.journal")
    ]
    assert any(f.exists() for f in files)
    assert all(stat.S_IMODE(f.stat().st_mode) == 0o600 for f in files if f.exists())
    assert not str(key_file.resolve()).startswith(str((s.config_dir / ".storage").resolve()))

    await s.restart()
    await page.goto(f"{s.op.issuer}/session/end")
    await page.click("button[name=logout][value=yes], button[autofocus]")
    for _ in range(100):
        if await refresh(s, session_token) != 200:
            break
        await asyncio.sleep(0.1)
    assert await refresh(s, session_token) == 400, s.op.output  # removed: invalid_grant


# ---- in one process -----------------------------------------------------------------------------


@pytest.mark.chromium
async def test_provider_down_keeps_the_last_answer_for_the_grace_only(site: Any, page: Any) -> None:
    """The provider down: its last good answer stands outage_grace seconds, then the refresh is refused."""
    grace = 8  # seconds; wide enough for a loaded machine to stop the provider and refresh within it
    s: Site = await site(recheck_interval=0, outage_grace=grace)
    status, tokens = await trade(s, await browser_login(page, s, "alice"))
    traded = time.monotonic()
    assert status == 200
    await s.op.stop()
    assert await refresh(s, tokens["refresh_token"]) == 200
    assert time.monotonic() - traded < grace, "too slow to test the grace: the refresh above may have been late"
    await asyncio.sleep(grace + 0.5 - (time.monotonic() - traded))
    assert await refresh(s, tokens["refresh_token"]) == 403


@pytest.mark.chromium
async def test_provider_down_with_no_grace_refuses_at_once(site: Any, page: Any) -> None:
    """outage_grace 0: a provider that cannot be reached refuses the refresh; it comes back, the grant is gone."""
    s: Site = await site(recheck_interval=0, outage_grace=0)
    status, tokens = await trade(s, await browser_login(page, s, "alice"))
    assert status == 200
    await s.op.stop()
    assert await refresh(s, tokens["refresh_token"]) == 403
    # The test provider keeps its grants in memory: restarted, it no longer knows this one.
    await s.op.start()
    assert await refresh(s, tokens["refresh_token"]) == 403
    assert not s.provider.sessions.has_grant(next(iter(s.provider.sessions.entries)))


@pytest.mark.chromium
async def test_grant_revoked_at_the_provider(site: Any, page: Any) -> None:
    """The provider revokes the login's grant: the refresh is refused, its tokens are forgotten (the sids stay
    for back-channel logout), and logging in again gives a session that works."""
    s: Site = await site(recheck_interval=0)
    status, tokens = await trade(s, await browser_login(page, s, "alice"))
    assert status == 200 and await refresh(s, tokens["refresh_token"]) == 200
    sessions = s.provider.sessions
    (token_id,) = sessions.entries
    grant = sessions.grant(token_id)
    assert grant is not None and grant["refresh_token"]
    await revoke_at_provider(s.op, grant["refresh_token"])
    assert await refresh(s, tokens["refresh_token"]) == 403
    assert not sessions.has_grant(token_id) and sessions.sids(token_id)
    assert grant["refresh_token"] not in storage_text(Path(s.auth.config_dir))
    assert await refresh(s, tokens["refresh_token"]) == 403
    await page.context.clear_cookies()
    status, again = await trade(s, await browser_login(page, s, "alice"))
    assert status == 200 and await refresh(s, again["refresh_token"]) == 200


async def alice(s: Site) -> tuple[Any, Any]:
    """A user with credentials of the provider, made without a login (no provider tokens)."""
    user = await s.auth.users.async_create_user("alice", ["system-users"])
    credentials = s.provider.async_create_credentials({"iss": s.op.issuer, "sub": "alice"})
    await s.auth.users.async_link_user(user, credentials)
    return user, credentials


async def session_of(s: Site, user: Any, credentials: Any, n: int = 1) -> Any:
    """A refresh token as a login's code makes it: the login's provider tokens wait, then the token is made."""
    s.provider.note_login_grant("alice", f"access-{n}", f"refresh-{n}")
    s.provider.note_login_sid("alice", f"sid-{n}")
    return await s.auth.refresh_tokens.async_create_refresh_token(user, s.client_id, credential=credentials)


async def test_a_token_without_a_grant_is_refused(site: Any) -> None:
    """A token of the provider's credentials with no provider tokens kept is refused (the user logs in again)."""
    s: Site = await site()
    user, credentials = await alice(s)
    token = await s.auth.refresh_tokens.async_create_refresh_token(user, s.client_id, credential=credentials)
    assert token.id not in s.provider.sessions
    with pytest.raises(InvalidAuthError):
        await s.auth.access_tokens.async_create_access_token(token)
    assert await refresh(s, token.token) == 403


async def test_long_lived_token_is_checked_with_a_session_of_its_user(site: Any) -> None:
    """A long-lived token is made from a session: that session's grant confirms it; with none, it is refused."""
    s: Site = await site()
    user, credentials = await alice(s)

    async def long_lived() -> Any:
        token = await s.auth.refresh_tokens.async_create_refresh_token(
            user,
            credential=credentials,
            client_name="script",
            token_type="long_lived_access_token",
            access_token_expiration=timedelta(days=1),
        )
        return token

    refused = await long_lived()
    assert refused.id not in s.provider.sessions
    with pytest.raises(InvalidAuthError):
        await s.auth.access_tokens.async_create_access_token(refused)
    await s.auth.refresh_tokens.async_remove_refresh_token(refused)  # as auth/long_lived_access_token does when refused
    session = await session_of(s, user, credentials)
    llat = await long_lived()
    assert llat.id not in s.provider.sessions  # no grant of its own
    assert await s.auth.access_tokens.async_create_access_token(llat)
    assert session.id in s.provider.sessions


async def test_provider_data_goes_with_its_token_credentials_and_user(site: Any) -> None:
    """Removing the token, the credentials or the user removes the provider's tokens kept for them, in memory
    and on disk."""
    s: Site = await site()
    sessions = s.provider.sessions
    user, credentials = await alice(s)
    first, second = await session_of(s, user, credentials, 1), await session_of(s, user, credentials, 2)
    assert first.id in sessions and second.id in sessions
    text = storage_text(Path(s.auth.config_dir))
    assert first.id in text and "access-1" not in text and "refresh-1" not in text
    assert sessions.grant(first.id) == {"access_token": "access-1", "refresh_token": "refresh-1"}
    await s.auth.refresh_tokens.async_remove_refresh_token(first)
    assert first.id not in sessions and first.id not in storage_text(Path(s.auth.config_dir))
    await s.auth.users.async_remove_credentials(credentials)
    assert second.id not in sessions and second.id not in storage_text(Path(s.auth.config_dir))

    user, credentials = await alice(s)
    third = await session_of(s, user, credentials, 3)
    await s.auth.users.async_remove_user(user)
    assert third.id not in sessions and not sessions.entries


async def test_sessions_per_user_are_bounded(site: Any) -> None:
    """Past MAX_SESSIONS_PER_USER sessions of one user, a new login revokes the oldest."""
    s: Site = await site()
    user, credentials = await alice(s)
    tokens = [await session_of(s, user, credentials, n) for n in range(MAX_SESSIONS_PER_USER + 2)]
    assert len(s.provider.sessions.entries) == MAX_SESSIONS_PER_USER
    for token in tokens[:2]:
        assert token.id not in s.provider.sessions and s.auth.store.get_refresh_token(token.id) is None
    assert all(s.auth.store.get_refresh_token(t.id) is not None for t in tokens[2:])


async def test_restart_forgets_dead_entries_and_a_lost_key_loses_the_grants(
    site: Any, opp_auth_factory: Callable[..., Awaitable[AuthManager]]
) -> None:
    """At start-up, entries of tokens that no longer exist are forgotten; without the key file the grants do
    not decrypt, so the sessions log in again (refused), while the back-channel sids still apply."""
    s: Site = await site()
    user, credentials = await alice(s)
    token = await session_of(s, user, credentials)
    await s.provider.sessions.async_add("gone-token", ["sid-x"], {"access_token": "a", "refresh_token": "r"}, None)
    await s.auth.async_shutdown()
    os.unlink(Path(s.auth.config_dir) / KEY_FILE)
    config = {"type": "oidc", "issuer": s.op.issuer, "client_id": CLIENT_ID, "client_secret": CLIENT_SECRET}
    config["recheck_interval"] = 0  # the login's answer is not cached: the grant is needed at once
    again = await opp_auth_factory(providers=[config])
    provider = next(p for p in again.auth_providers if isinstance(p, OidcAuthProvider))
    assert set(provider.sessions.entries) == {token.id}
    assert provider.sessions.sids(token.id) == ["sid-1"] and provider.sessions.grant(token.id) is None
    with pytest.raises(InvalidAuthError):
        await again.access_tokens.async_create_access_token(again.store.get_refresh_token(token.id))
    assert provider.sessions.sids(token.id) == ["sid-1"] and not provider.sessions.has_grant(token.id)


async def test_version_1_file_is_rewritten_without_plain_text_tokens(
    opp_auth_factory: Callable[..., Awaitable[AuthManager]], config_dir: Path
) -> None:
    """The first release kept the provider's tokens in plain text: they are dropped at once."""
    folder = config_dir / ".storage"
    folder.mkdir()
    data = {
        "token_sids": {"t1": ["sid-1"]},
        "token_grants": {"t1": {"access_token": "plain-at", "refresh_token": "plain-rt"}},
    }
    (folder / "auth_provider.oidc.default").write_text(
        json.dumps({"version": 1, "key": "auth_provider.oidc.default", "data": data})
    )
    await opp_auth_factory(
        providers=[{"type": "oidc", "issuer": f"http://127.0.0.1:{free_port()}", "client_id": CLIENT_ID}]
    )
    text = storage_text(config_dir)
    assert "plain-at" not in text and "plain-rt" not in text
    assert json.loads((folder / "auth_provider.oidc.default").read_text())["version"] == 2

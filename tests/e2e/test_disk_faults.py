"""A full disk and a read-only .storage: clear errors, no 500, the old files intact (issue 8).

The faults are real: .storage is a small tmpfs that the tests fill up or remount read-only.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import socket
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from opp_auth.manager import AuthManager
from opp_auth.storage import STORAGE_UNAVAILABLE_MESSAGE
from opp_auth.testing import CLIENT_ID, OppAuthClient

OPP_AUTH = shutil.which("opp-auth", path=str(Path(sys.executable).parent)) or shutil.which("opp-auth")
PROVIDERS = [{"type": "insecure_example", "users": [{"username": "alice", "password": "alice-pw", "name": "Alice"}]}]
HANDLER = ["insecure_example", None]
ALICE = [{"username": "alice", "password": "alice-pw"}]
FILLER = ".filler"


class StorageMount:
    """A 512 KiB tmpfs mounted on <config>/.storage."""

    def __init__(self, path: Path) -> None:
        """Remember the mount point."""
        self.path = path

    def fill(self) -> None:
        """Take every free block, so the next write fails with ENOSPC."""
        fd = os.open(self.path / FILLER, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        chunk = b"\0" * 4096
        try:
            while True:
                os.write(fd, chunk)
        except OSError as err:
            assert err.errno == errno.ENOSPC, err
        finally:
            os.close(fd)

    def free(self) -> None:
        """Give the space back."""
        (self.path / FILLER).unlink(missing_ok=True)

    def remount(self, mode: str) -> None:
        """Make the file system "ro" or "rw"."""
        subprocess.run(["mount", "-o", f"remount,{mode}", str(self.path)], check=True, capture_output=True)

    def files(self) -> dict[str, bytes]:
        """Every file (temporary ones included) with its content, the filler and lock aside.

        A background save (the login history's, in an executor thread) may remove its temporary
        file between the listing and the read: such a file was gone at the instant of the read,
        so it is left out rather than failing the listing.
        """
        found: dict[str, bytes] = {}
        for path in self.path.iterdir():
            if path.name in (FILLER, ".opp-auth.lock"):
                continue
            try:
                found[path.name] = path.read_bytes()
            except (FileNotFoundError, IsADirectoryError):
                continue
        return found


@pytest.fixture
def storage(config_dir: Path) -> Iterator[StorageMount]:
    """A real small file system on .storage (mounting needs root, as in CI)."""
    path = config_dir / ".storage"
    path.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=512k,mode=0700", "tmpfs", str(path)], capture_output=True, text=True
    )
    if mounted.returncode != 0:
        message = f"cannot mount a tmpfs on .storage (needs root): {mounted.stderr.strip()}"
        if os.environ.get("OPP_AUTH_REQUIRE_INTEGRATION") == "1":
            pytest.fail(f"{message}, and OPP_AUTH_REQUIRE_INTEGRATION=1 says integration tests must run")
        pytest.skip(message)
    mount = StorageMount(path)
    yield mount
    subprocess.run(["umount", str(path)], check=True)


@pytest.fixture
async def auth(storage: StorageMount, opp_auth_factory: Any) -> AsyncIterator[AuthManager]:
    """A manager whose .storage is the tmpfs; the space is given back before it flushes at shutdown."""
    manager = await opp_auth_factory(providers=PROVIDERS)
    yield manager
    storage.remount("rw")
    storage.free()


@pytest.fixture
async def client(auth: AuthManager, opp_auth_client: Any) -> OppAuthClient:
    """A live server for auth."""
    return await opp_auth_client(auth)


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def login(client: OppAuthClient) -> dict[str, Any]:
    """Log alice in: the token endpoint's answer."""
    return await client.login.tokens(HANDLER, ALICE)


async def grant(client: OppAuthClient) -> tuple[int, str, Any]:
    """A login whose code is traded while the fault is on: (status, content type, body)."""
    code = await client.login.code(HANDLER, ALICE)
    async with client.request(
        "POST", "/auth/token", data={"grant_type": "authorization_code", "client_id": CLIENT_ID, "code": code}
    ) as resp:
        return resp.status, resp.content_type, await resp.json(content_type=None)


# A change is appended to the journal (.storage/.auth.journal): on a full disk an append that
# fits in the room left in the file's last block is still written (and durable). These many
# grants are more than enough to use that room up, so the next write has to fail.
GRANTS_TO_FILL = 20


async def refused_grant(storage: StorageMount, client: OppAuthClient) -> tuple[int, str, Any, dict[str, bytes]]:
    """Fill the disk, then grant until a grant is refused: its answer and the files just before it."""
    storage.fill()
    for _ in range(GRANTS_TO_FILL):
        before = storage.files()
        status, content_type, body = await grant(client)
        if status != 200:
            return status, content_type, body, before
    pytest.fail(f"{GRANTS_TO_FILL} grants were saved on a full disk")


async def refresh(client: OppAuthClient, refresh_token: str) -> int:
    """Status of a refresh grant."""
    status, _ = await client.login.token(grant_type="refresh_token", client_id=CLIENT_ID, refresh_token=refresh_token)
    return status


# ---- full disk ------------------------------------------------------------------------------------


async def test_token_grant_on_a_full_disk_answers_503_with_a_message(
    storage: StorageMount, client: OppAuthClient
) -> None:
    await login(client)
    status, content_type, body, _ = await refused_grant(storage, client)
    assert (status, content_type) == (503, "application/json")
    assert body == {"message": STORAGE_UNAVAILABLE_MESSAGE}


async def test_first_login_of_a_new_user_on_a_full_disk_answers_503(
    storage: StorageMount, client: OppAuthClient
) -> None:
    storage.fill()
    status, _, body = await grant(client)
    assert status == 503
    assert body == {"message": STORAGE_UNAVAILABLE_MESSAGE}


async def test_failed_write_on_a_full_disk_leaves_the_files_intact_and_no_temporary_file(
    storage: StorageMount, client: OppAuthClient
) -> None:
    await login(client)
    status, _, _, before = await refused_grant(storage, client)
    assert status == 503
    # A write cut short by the full disk is cut off the journal again. The login history is
    # written in the background after the login, so its files may have grown meanwhile.
    def settled(files: dict[str, bytes]) -> dict[str, bytes]:
        return {name: data for name, data in files.items() if "login_history" not in name}

    assert settled(storage.files()) == settled(before)


async def test_revocation_on_a_full_disk_answers_503(storage: StorageMount, client: OppAuthClient) -> None:
    tokens = await login(client)
    await refused_grant(storage, client)
    async with client.request("POST", "/auth/token", data={"action": "revoke", "token": tokens["refresh_token"]}) as resp:
        assert resp.status == 503
        assert await resp.json() == {"message": STORAGE_UNAVAILABLE_MESSAGE}


async def revoke(client: OppAuthClient, refresh_token: str) -> int:
    """Status of a revocation."""
    async with client.request("POST", "/auth/token", data={"action": "revoke", "token": refresh_token}) as resp:
        return resp.status


async def test_retried_revocation_on_a_full_disk_is_not_acknowledged(
    storage: StorageMount, client: OppAuthClient
) -> None:
    tokens = await login(client)
    await refused_grant(storage, client)
    assert await revoke(client, tokens["refresh_token"]) == 503
    # The token is gone from memory but not from the file: a 200 now would be a promise not kept.
    assert await revoke(client, tokens["refresh_token"]) == 503


async def test_revocation_retried_once_space_is_freed_survives_a_restart(
    storage: StorageMount, client: OppAuthClient, opp_auth_factory: Any, opp_auth_client: Any
) -> None:
    tokens = await login(client)
    await refused_grant(storage, client)
    assert await revoke(client, tokens["refresh_token"]) == 503
    storage.free()
    assert await revoke(client, tokens["refresh_token"]) == 200
    reloaded = await opp_auth_client(await opp_auth_factory(providers=PROVIDERS))
    assert await refresh(reloaded, tokens["refresh_token"]) == 400


async def test_logins_are_saved_again_once_space_is_freed(
    storage: StorageMount, client: OppAuthClient, opp_auth_factory: Any, opp_auth_client: Any
) -> None:
    storage.fill()
    status, _, _ = await grant(client)
    assert status == 503
    storage.free()
    tokens = await login(client)
    # A second manager reads only what reached the disk.
    reloaded = await opp_auth_client(await opp_auth_factory(providers=PROVIDERS))
    assert await refresh(reloaded, tokens["refresh_token"]) == 200


async def test_long_lived_token_on_a_full_disk_gets_an_error_reply_and_the_socket_stays_open(
    storage: StorageMount, client: OppAuthClient
) -> None:
    tokens = await login(client)
    await refused_grant(storage, client)
    async with client.session.ws_connect(client.url("/api/websocket")) as ws:
        assert (await ws.receive_json(timeout=5))["type"] == "auth_required"
        await ws.send_json({"type": "auth", "access_token": tokens["access_token"]})
        assert (await ws.receive_json(timeout=5))["type"] == "auth_ok"
        await ws.send_json({"id": 1, "type": "auth/long_lived_access_token", "client_name": "Kiosk", "lifespan": 10})
        reply = await ws.receive_json(timeout=5)
        assert reply == {
            "id": 1, "type": "result", "success": False,
            "error": {"code": "unknown_error", "message": STORAGE_UNAVAILABLE_MESSAGE},
        }
        await ws.send_json({"id": 2, "type": "auth/current_user"})
        assert (await ws.receive_json(timeout=5))["success"] is True


# ---- onboarding on a full disk (the local provider's file and the auth file) ---------------------

OWNER = {"name": "Paulus", "username": "paulus", "password": "s3cret-pass", "client_id": CLIENT_ID, "language": "en"}


@pytest.fixture
async def local_client(storage: StorageMount, opp_auth_factory: Any, opp_auth_client: Any) -> AsyncIterator[OppAuthClient]:
    """A fresh installation with the local provider; the space is given back before shutdown."""
    manager = await opp_auth_factory(providers=[{"type": "openpeerpower"}], mfa_modules=[])
    yield await opp_auth_client(manager)
    storage.free()


async def onboard(client: OppAuthClient) -> tuple[int, Any]:
    """POST /api/onboarding/users: (status, JSON body)."""
    async with client.request("POST", "/api/onboarding/users", json=OWNER) as resp:
        return resp.status, await resp.json(content_type=None)


async def test_onboarding_on_a_full_disk_answers_503(storage: StorageMount, local_client: OppAuthClient) -> None:
    storage.fill()
    assert await onboard(local_client) == (503, {"message": STORAGE_UNAVAILABLE_MESSAGE})


async def test_onboarding_retried_once_space_is_freed_creates_the_owner(
    storage: StorageMount, local_client: OppAuthClient
) -> None:
    storage.fill()
    status, _ = await onboard(local_client)
    assert status == 503
    storage.free()
    status, body = await onboard(local_client)
    assert status == 200, body
    assert "auth_code" in body


# ---- read-only .storage ---------------------------------------------------------------------------


async def test_token_grant_on_read_only_storage_answers_503_and_changes_no_file(
    storage: StorageMount, auth: AuthManager, client: OppAuthClient
) -> None:
    await login(client)
    # The login history is written in the background after the login: let it land first, so
    # the snapshot below is what the disk holds when it turns read-only.
    await auth.login_history.async_flush()
    before = storage.files()
    storage.remount("ro")
    status, _, body = await grant(client)
    assert status == 503
    assert body == {"message": STORAGE_UNAVAILABLE_MESSAGE}
    assert storage.files() == before


def test_server_refuses_to_start_on_read_only_storage(config_dir: Path, storage: StorageMount) -> None:
    assert OPP_AUTH is not None, "the opp-auth program is not installed"
    envelope = {"version": 1, "key": "auth_provider.openpeerpower", "data": {"users": []}}
    (storage.path / "auth_provider.openpeerpower").write_text(json.dumps(envelope))
    before = storage.files()
    storage.remount("ro")
    try:
        result = subprocess.run(
            [OPP_AUTH, "-c", str(config_dir), "serve", "--host", "127.0.0.1", "--port", str(free_port())],
            stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=30,
        )
    finally:
        storage.remount("rw")
    assert result.returncode == 1, result.stderr
    last_line = result.stderr.splitlines()[-1]
    assert last_line.startswith("Error: ")
    assert str(storage.path) in last_line
    assert "Read-only file system" in last_line
    assert "Traceback" not in result.stderr
    assert storage.files() == before


"""The server secret: created on first start, kept apart from .storage, the root of every token's signing key."""

from __future__ import annotations

import contextlib
import os
import secrets
import tempfile
from pathlib import Path

from .journal import fsync_dir
from .storage import StorageError

SECRET_FILE = ".opp-auth-secret"
SECRET_BYTES = 32


def load_server_secret(config_dir: str) -> bytes:
    """The server secret, created on first start, kept apart from .storage (mode 0600); blocking.

    Servers sharing a directory (a shared storage) may start at the same instant: the secret is
    written whole to a private temporary file, then linked to its name, which fails if another
    server got there first; that one's secret is read instead. Nobody reads a half-written file.
    """
    path = os.path.join(config_dir, SECRET_FILE)
    existing = _read_secret(path)
    if existing is not None:
        return existing
    secret = secrets.token_bytes(SECRET_BYTES)
    os.makedirs(config_dir, exist_ok=True)
    fd, temporary = tempfile.mkstemp(prefix=f"{SECRET_FILE}.", suffix=".tmp", dir=config_dir)
    try:
        with os.fdopen(fd, "w") as handle:  # mkstemp: mode 0600
            handle.write(secret.hex())
            handle.flush()
            os.fsync(handle.fileno())
        try:
            os.link(temporary, path)
        except FileExistsError:
            existing = _read_secret(path)
            if existing is None:
                raise StorageError(f"{path} vanished while this server started; start it again") from None
            return existing
        fsync_dir(Path(config_dir))
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
    return secret


def _read_secret(path: str) -> bytes | None:
    """The secret in path; None when there is no file; StorageError when it is not a secret."""
    try:
        with open(path, "rb") as handle:
            secret = bytes.fromhex(handle.read().decode().strip())
        if len(secret) >= SECRET_BYTES:
            return secret
        raise ValueError("too short")
    except FileNotFoundError:
        return None
    except (ValueError, UnicodeDecodeError) as err:
        raise StorageError(f"{path} is not a valid opp-auth secret ({err}); restore it from a backup") from err

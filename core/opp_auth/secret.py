"""The server secret: created on first start, kept apart from .storage, the root of every token's signing key."""

from __future__ import annotations

import os
import secrets

from .storage import StorageError

SECRET_FILE = ".opp-auth-secret"
SECRET_BYTES = 32


def load_server_secret(config_dir: str) -> bytes:
    """The server secret, created on first start, kept apart from .storage (mode 0600); blocking."""
    path = os.path.join(config_dir, SECRET_FILE)
    try:
        with open(path, "rb") as handle:
            secret = bytes.fromhex(handle.read().decode().strip())
        if len(secret) >= SECRET_BYTES:
            return secret
        raise ValueError("too short")
    except FileNotFoundError:
        pass
    except (ValueError, UnicodeDecodeError) as err:
        raise StorageError(f"{path} is not a valid opp-auth secret ({err}); restore it from a backup") from err
    secret = secrets.token_bytes(SECRET_BYTES)
    os.makedirs(config_dir, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(secret.hex())
        handle.flush()
        os.fsync(handle.fileno())
    return secret

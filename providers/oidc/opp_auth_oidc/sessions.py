"""What the provider said about each refresh token, kept in ``.storage/auth_provider.oidc.<id>``.

One entry per refresh token made from a login through the provider, under the token's id:

- ``sids``: the provider session ids of that login (back-channel logout revokes by them);
- ``grant``: the provider's own tokens of the login (access and refresh token), what a refresh
  re-check asks the provider with; encrypted, see below;
- ``checked``: when the provider last confirmed the user (epoch seconds), for the re-check cache
  and the outage grace;
- ``created``: when the entry was made (the oldest go first past the per-user bound).

New and changed entries are journaled; forgetting one rewrites the file and cuts the journal, so a
removed token's grant is gone from the disk when the removal returns.

The grant is a credential: with a public client the provider's refresh token alone reads the
user's claims at the provider. It is encrypted with AES-256-GCM under a key kept apart from
``.storage``, in ``<config>/.opp-auth-oidc-key`` (mode 0600, made on first start), as opp-auth
keeps its own server secret apart: a copy of ``.storage`` alone yields no provider token. The
token id is the associated data, so a grant moved to another entry does not decrypt. A grant that
does not decrypt (the key file was lost) is no grant: the session must log in again.

The same key seals what several servers on one database share of a login in progress (the
pending entry with its PKCE verifier, the outcome with the provider's tokens, the proof a stored
flow gives of its user): Sessions.seal and Sessions.unseal, bound to what each value is for.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import secrets
import time
from collections.abc import Iterable
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

_LOGGER = logging.getLogger(__name__)

STORAGE_VERSION = 2
KEY_FILE = ".opp-auth-oidc-key"
KEY_BYTES = 32
NONCE_BYTES = 12


class SessionKeyError(Exception):
    """The key file cannot be used; str() says which and what to do."""


def load_key(config_dir: str) -> bytes:
    """The grant key, made on first start (runs in an executor)."""
    path = os.path.join(config_dir, KEY_FILE)
    try:
        with open(path, "rb") as handle:
            key = bytes.fromhex(handle.read().decode().strip())
        if len(key) != KEY_BYTES:
            raise ValueError(f"{len(key)} bytes, not {KEY_BYTES}")
        return key
    except FileNotFoundError:
        pass
    except (ValueError, UnicodeDecodeError) as err:
        raise SessionKeyError(
            f"{path} is not a valid key ({err}): restore it from a backup, or delete it "
            "(the sessions of OpenID providers then log in again)"
        ) from err
    key = secrets.token_bytes(KEY_BYTES)
    os.makedirs(config_dir, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(key.hex())
        handle.flush()
        os.fsync(handle.fileno())
    return key


def _migrate(version: int, data: Any) -> dict[str, Any]:
    """Version 1 kept the provider's tokens in plain text: only the sids are carried over."""
    sids = data.get("token_sids") if isinstance(data, dict) else None
    tokens: dict[str, Any] = {}
    if isinstance(sids, dict):
        tokens = {str(k): {"sids": [str(s) for s in v]} for k, v in sids.items() if isinstance(v, list)}
    return {"tokens": tokens, "migrated_from": version}


class Sessions:
    """The entries of one provider, in memory and in its journaled storage file."""

    def __init__(self, auth: Any, storage_key: str) -> None:
        """Nothing is read before async_load."""
        self._auth = auth
        self._store = auth.storage(storage_key, STORAGE_VERSION, private=True, migrate=_migrate, journal=True)
        self.entries: dict[str, dict[str, Any]] = {}
        self._aead: AESGCM | None = None

    async def async_load(self) -> None:
        """Read the key and the entries; a version-1 file is rewritten at once without its plain-text tokens."""
        self._aead = AESGCM(await self._auth.async_add_executor_job(load_key, self._auth.config_dir))
        data = await self._store.async_load()
        tokens = data.get("tokens") if isinstance(data, dict) else None
        self.entries = {str(k): v for k, v in tokens.items() if isinstance(v, dict)} if isinstance(tokens, dict) else {}
        if isinstance(data, dict) and "migrated_from" in data:
            await self._store.async_save(self._data())

    def _data(self) -> dict[str, Any]:
        return {"tokens": self.entries}

    async def _async_save(self, token_ids: Iterable[str]) -> None:
        """Journal the entries of token_ids (a record each)."""
        await self._store.async_save_changes(self._data(), [("tokens", token_id) for token_id in token_ids])

    async def _async_save_all(self) -> None:
        """Rewrite the file and cut the journal: no earlier record of a forgotten grant is left on disk."""
        await self._store.async_save(self._data())

    # ---- reading -----------------------------------------------------------------------------

    def __contains__(self, token_id: object) -> bool:
        """Whether the token has an entry."""
        return token_id in self.entries

    def sids(self, token_id: str) -> list[str]:
        """The provider sessions a token came from."""
        entry = self.entries.get(token_id) or {}
        sids = entry.get("sids")
        return [s for s in sids if isinstance(s, str)] if isinstance(sids, list) else []

    def has_grant(self, token_id: str) -> bool:
        """Whether the token has the provider's tokens of its login."""
        return isinstance((self.entries.get(token_id) or {}).get("grant"), str)

    def grant(self, token_id: str) -> dict[str, str | None] | None:
        """The provider's tokens of the login (decrypted); None when there are none or they do not decrypt."""
        sealed = (self.entries.get(token_id) or {}).get("grant")
        if not isinstance(sealed, str) or self._aead is None:
            return None
        try:
            raw = base64.urlsafe_b64decode(sealed.encode() + b"==")
            plain = self._aead.decrypt(raw[:NONCE_BYTES], raw[NONCE_BYTES:], token_id.encode())
            grant = json.loads(plain)
        except (InvalidTag, ValueError, UnicodeError):
            _LOGGER.warning(
                "The OpenID grant of refresh token %s does not decrypt (was %s replaced?)", token_id, KEY_FILE
            )
            return None
        if not isinstance(grant, dict):
            return None
        return {k: grant.get(k) if isinstance(grant.get(k), str) else None for k in ("access_token", "refresh_token")}

    def checked(self, token_id: str) -> float | None:
        """When the provider last confirmed the user of this token (epoch seconds)."""
        value = (self.entries.get(token_id) or {}).get("checked")
        return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None

    def created(self, token_id: str) -> float:
        """When the entry was made (0 when unknown, so it goes first)."""
        value = (self.entries.get(token_id) or {}).get("created")
        return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else 0.0

    # ---- sealing with the key (grants here; a login's pending secrets and outcome, shared) -------

    def seal(self, bound_to: str, value: dict[str, Any]) -> str:
        """value as JSON, encrypted with AES-256-GCM under the key, bound_to the associated data."""
        if self._aead is None:
            raise SessionKeyError(f"{KEY_FILE} is not loaded")
        nonce = secrets.token_bytes(NONCE_BYTES)
        sealed = self._aead.encrypt(nonce, json.dumps(value).encode(), bound_to.encode())
        return base64.urlsafe_b64encode(nonce + sealed).rstrip(b"=").decode()

    def unseal(self, bound_to: str, sealed: Any) -> dict[str, Any] | None:
        """What seal(bound_to, ...) made; None when it does not decrypt under the key and bound_to (or is no object)."""
        if not isinstance(sealed, str) or self._aead is None:
            return None
        try:
            raw = base64.urlsafe_b64decode(sealed.encode() + b"==")
            value = json.loads(self._aead.decrypt(raw[:NONCE_BYTES], raw[NONCE_BYTES:], bound_to.encode()))
        except (InvalidTag, ValueError, UnicodeError):
            return None
        return value if isinstance(value, dict) else None

    # ---- writing (each returns once the change is durable) -----------------------------------

    def _seal(self, token_id: str, grant: dict[str, str | None]) -> str:
        assert self._aead is not None, "not loaded"
        return self.seal(token_id, grant)

    async def async_add(
        self, token_id: str, sids: list[str], grant: dict[str, str | None] | None, checked: float | None
    ) -> None:
        """The entry of a new refresh token."""
        entry: dict[str, Any] = {"created": time.time(), "sids": sids}
        if grant is not None:
            entry["grant"] = self._seal(token_id, grant)
        if checked is not None:
            entry["checked"] = checked
        self.entries[token_id] = entry
        await self._async_save([token_id])

    async def async_set_grant(self, token_id: str, grant: dict[str, str | None], checked: float | None) -> None:
        """The provider renewed the grant (and confirmed the user at checked, when given)."""
        entry = self.entries.get(token_id)
        if entry is None:
            return
        entry["grant"] = self._seal(token_id, grant)
        if checked is not None:
            entry["checked"] = checked
        await self._async_save([token_id])

    async def async_set_checked(self, token_id: str, checked: float) -> None:
        """The provider confirmed the user."""
        entry = self.entries.get(token_id)
        if entry is not None:
            entry["checked"] = checked
            await self._async_save([token_id])

    async def async_drop_grant(self, token_id: str) -> None:
        """The provider will never accept this grant again: forget its tokens (the sids stay)."""
        entry = self.entries.get(token_id)
        if entry is not None and "grant" in entry:
            del entry["grant"]
            entry.pop("checked", None)
            await self._async_save_all()

    async def async_remove(self, token_ids: Iterable[str]) -> None:
        """Forget the entries of removed refresh tokens."""
        gone = [token_id for token_id in token_ids if self.entries.pop(token_id, None) is not None]
        if gone:
            await self._async_save_all()

    async def async_keep_only(self, token_ids: set[str]) -> int:
        """Forget every entry whose refresh token no longer exists; how many were forgotten."""
        gone = [token_id for token_id in self.entries if token_id not in token_ids]
        await self.async_remove(gone)
        return len(gone)

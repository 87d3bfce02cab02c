"""Per-user preferences that are not auth data (language, theme), kept on the server."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from .validation import check_storable

if TYPE_CHECKING:
    from .backend import DocumentStore

STORAGE_KEY = "opp_auth.user_data"
STORAGE_VERSION = 1
MAX_VALUE_BYTES = 64 * 1024
MAX_KEYS = 64


class UserSettings:
    """key -> JSON value per user, in .storage/opp_auth.user_data."""

    def __init__(self, store: DocumentStore) -> None:
        """Kept in store (``.storage/opp_auth.user_data``); nothing loaded yet."""
        self._store = store
        self._data: dict[str, dict[str, Any]] = {}

    async def async_load(self) -> None:
        """Read the file; follow changes other servers make (shared storage)."""
        self._use(await self._store.async_load())
        self._store.listen(self._use)

    def _use(self, data: Any) -> None:
        """Take the stored settings."""
        users = (data if isinstance(data, dict) else {}).get("users", {})
        self._data = {uid: dict(values) for uid, values in users.items() if isinstance(values, dict)}

    def get(self, user_id: str, key: str | None = None) -> Any:
        """One value (None if unset) or, without a key, all of the user's values."""
        values = self._data.get(user_id, {})
        return dict(values) if key is None else values.get(key)

    async def async_update(self, user_id: str, values: dict[str, Any]) -> None:
        """Set values (None removes a key) and save; refuses oversized or unstorable data with ValueError.

        Nothing changes in memory unless it is written: values are checked
        first (opp_auth.validation), and a failed save puts the old values back.
        """
        check_storable(values, "value")
        previous = self._data.get(user_id)
        current = dict(previous or {})
        for key, value in values.items():
            if value is None:
                current.pop(key, None)
                continue
            if len(json.dumps(value)) > MAX_VALUE_BYTES:
                raise ValueError(f"Value for {key} is larger than {MAX_VALUE_BYTES} bytes")
            current[key] = value
        if len(current) > MAX_KEYS:
            raise ValueError(f"At most {MAX_KEYS} settings per user")
        self._data[user_id] = current
        try:
            await self._save()
        except BaseException:
            if self._data.get(user_id) is current:
                if previous is None:
                    del self._data[user_id]
                else:
                    self._data[user_id] = previous
            raise

    async def async_remove_user(self, user_id: str) -> None:
        """Forget a removed user's settings."""
        if self._data.pop(user_id, None) is not None:
            await self._save()

    async def _save(self) -> None:
        """Write now."""
        await self._store.async_save({"users": self._data})

"""The store seam: where the auth data and the plugins' documents are kept.

A server keeps its users, groups, credentials and refresh tokens in memory
(:class:`opp_auth.store.AuthStore`, O(1) indexes) and every plugin keeps its own
documents (:meth:`opp_auth.PluginContext.storage`). *Where* those are persisted is
a :class:`StorageBackend`, chosen by ``openpeerpower: storage: type:`` in
configuration.yaml:

- ``json`` (the embedded default, :class:`JsonBackend`): ``.storage/`` files with
  their journals, one server per configuration directory (the directory lock);
- ``postgresql`` (the ``opp-auth-postgresql`` distribution): rows in a database
  that several servers share, each keeping its in-memory indexes as a cache that
  the others' committed changes update.

A backend class is registered by the ``opp_auth_register_stores`` hook and is
handed the validated ``storage:`` block. What it implements (docs/plugins.md,
"Storage backends"):

``auth_log()``
    The persistence of the auth store, a :class:`RecordLog`: the store loads
    ``(data, records)`` at start-up (data in the ``.storage/auth`` format, records
    replayed over it), then queues one change record per change *before* memory
    changes (``journal_append``; a change that cannot be stored raises
    ``StorageBackend.Error`` and nothing changes) and awaits
    ``async_commit`` before anyone is told. The record kinds are those of
    ``opp_auth.store`` (``user``, ``del_user``, ``group``, ``cred``,
    ``del_cred``, ``token``, ``del_token``, ``del_tokens``, ``usage``); each sets
    or deletes one whole entry by id, so replaying one twice is harmless.
``document(key, version, ...)``
    A plugin's document, a :class:`DocumentStore` (the API of
    :class:`opp_auth.storage.Store`): whole saves, path saves
    (``async_save_changes``) and, for a shared backend, ``listen(callback)``
    called with the new data when another server changed it.
``async_open()`` / ``async_close()``
    Connect (and migrate a schema) before anything loads; flush and disconnect
    at shutdown.
``async_check_secret(fingerprint)``
    A shared backend refuses a server whose ``.opp-auth-secret`` differs from the
    others' (their tokens would not verify on it).
``subscribe(callback)``
    The core's callback for auth change records that *other* servers committed,
    in commit order; a shared backend calls it as they arrive.
``fresh_until``
    A ``time.monotonic()`` instant: past it the in-memory cache may be stale
    (the backend lost contact with the shared database longer than its
    staleness window) and token checks are refused (fail closed) until contact
    returns. ``math.inf`` for a backend that is the only writer (JSON).
``always_fresh``
    True when ``fresh_until`` stays ``math.inf`` whatever happens (the only
    writer: JSON); the token check then skips asking it. Read from the
    backend's own class only (a subclass does not inherit it): a backend that
    does not declare it is asked on every check.
``shares_config_dir``
    True when several servers may use one configuration directory at once (the
    directory lock is then not taken).
``ephemeral_state()``
    Where flows in progress, authorization codes, failure counters and bans
    live (:mod:`opp_auth.ephemeral`): this process's memory by default, a shared
    :class:`StorageBackend.EphemeralState` subclass for a backend several
    servers share.
``async_export()`` / ``async_import()``
    What ``opp-auth storage copy`` moves: ``{"auth": data, "documents": {key:
    (version, data)}}``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any, ClassVar, Protocol

import voluptuous as vol

from . import docpaths
from .ephemeral import EphemeralState as MemoryState
from .journal import JOURNAL_SUFFIX, journal_path
from .storage import STORAGE_DIR, StorageError, Store, iter_store_keys, read_envelope

JSON_TYPE = "json"

# The .storage files that are opp-auth's (an Open Peer Power directory holds many others:
# the entity registry, dashboards...). A plugin's own document should use one of these forms.
COPIED_KEYS = ("auth", "onboarding")
COPIED_PREFIXES = ("auth_provider.", "auth_module.", "opp_auth.")


def is_auth_document(key: str) -> bool:
    """Whether a .storage file is opp-auth's (what ``opp-auth storage copy`` moves)."""
    return key in COPIED_KEYS or key.startswith(COPIED_PREFIXES)


BASE_STORAGE_SCHEMA = vol.Schema({vol.Required("type"): str}, extra=vol.ALLOW_EXTRA)
"""What every ``storage:`` block has; a backend's CONFIG_SCHEMA extends it."""


class RecordLog(Protocol):
    """The persistence of the auth store (see the module docstring)."""

    snapshot_func: Callable[[], Any] | None

    async def async_load_journaled(self) -> tuple[Any | None, list[dict[str, Any]]]:
        """The stored data (None: nothing stored yet) and the change records to replay over it."""

    def journal_append(self, record: dict[str, Any]) -> int:
        """Queue a change record before memory changes; raises StorageError when it cannot be stored."""

    async def async_commit(self) -> None:
        """Return once every queued record is durable (and, for a shared backend, published)."""

    async def async_compact(self) -> None:
        """Rewrite the whole data (a no-op where writes already cost what changed)."""

    async def async_flush(self) -> None:
        """Write everything pending (shutdown)."""


class DocumentStore(Protocol):
    """A plugin's document: the API of :class:`opp_auth.storage.Store`."""

    key: str
    version: int

    async def async_load(self) -> Any | None:
        """The document (None: none stored)."""

    async def async_save(self, data: Any) -> None:
        """Replace the whole document; returns once durable."""

    async def async_save_changes(self, data: Any, paths: Iterable[tuple[str, ...]]) -> None:
        """Make the entries of data at paths durable (cost: what changed)."""

    def async_delay_save(self, data_func: Callable[[], Any], delay: float = 1.0) -> None:
        """Save later, coalescing."""

    async def async_wait_saved(self) -> None:
        """Return once every asked-for save is durable."""

    async def async_flush(self) -> None:
        """Write what a delayed save holds (shutdown)."""

    async def async_remove(self) -> None:
        """Delete the document."""

    def listen(self, callback: Callable[[Any], None]) -> None:
        """Call callback(new data) when another server changed the document."""


class StorageBackend:
    """Base class of storage backends (the store seam; see the module docstring)."""

    TYPE: ClassVar[str] = ""
    CONFIG_SCHEMA: ClassVar[vol.Schema] = BASE_STORAGE_SCHEMA
    shares_config_dir: ClassVar[bool] = False
    always_fresh: ClassVar[bool] = False
    Error: ClassVar[type[StorageError]] = StorageError
    """What a backend raises when a change cannot be stored or data cannot be read (answered 503)."""
    EphemeralState: ClassVar[type[MemoryState]] = MemoryState
    """The base of a shared ephemeral state (opp_auth.ephemeral); the default keeps it in memory."""

    # Document paths (opp_auth.docpaths): every backend resolves and replays them by the same rules.
    check_path = staticmethod(docpaths.check_path)
    value_at = staticmethod(docpaths.value_at)
    apply_path_record = staticmethod(docpaths.apply_record)
    MISSING: ClassVar[Any] = docpaths.MISSING

    def __init__(self, config: dict[str, Any], config_dir: str) -> None:
        """Keep the validated ``storage:`` block; nothing is opened before async_open."""
        self.config = config
        self.config_dir = str(config_dir)
        self.fresh_until = math.inf
        self._subscribers: list[Callable[[list[dict[str, Any]]], None]] = []

    async def async_open(self) -> None:
        """Connect and prepare (migrations); called before anything loads."""

    async def async_check_secret(self, fingerprint: str) -> None:
        """Refuse to start (raise Error) when servers sharing this storage sign tokens with another secret.

        fingerprint: a one-way digest of this server's ``.opp-auth-secret``. Nothing to check for a
        storage one server owns.
        """

    async def async_close(self) -> None:
        """Write what is pending and disconnect (shutdown)."""

    def auth_log(self) -> RecordLog:
        """The persistence of the auth store."""
        raise NotImplementedError

    def document(
        self,
        key: str,
        version: int,
        *,
        private: bool = True,
        migrate: Callable[[int, Any], Any] | None = None,
        journal: bool = False,
    ) -> DocumentStore:
        """A plugin's document ``key`` at ``version`` (migrate(old_version, data) upgrades older ones)."""
        raise NotImplementedError

    def ephemeral_state(self) -> MemoryState:
        """Where flows in progress, codes, failure counters and bans live (default: this process's memory)."""
        return MemoryState()

    def subscribe(self, callback: Callable[[list[dict[str, Any]]], None]) -> None:
        """Have callback(records) called with the auth change records other servers commit."""
        self._subscribers.append(callback)

    def publish_remote(self, records: list[dict[str, Any]]) -> None:
        """Hand auth change records another server committed to the subscribers (a backend calls this)."""
        for callback in self._subscribers:
            callback(records)

    async def async_export(self) -> dict[str, Any]:
        """Everything stored: ``{"auth": data or None, "documents": {key: (version, data)}}``."""
        raise NotImplementedError

    async def async_import(self, exported: dict[str, Any]) -> None:
        """Store what async_export gave (the target must be empty)."""
        raise NotImplementedError

    def describe(self) -> str:
        """Where the data is, for messages (no secrets)."""
        return self.TYPE


class JsonBackend(StorageBackend):
    """The embedded default: ``.storage/`` files, one server per directory."""

    TYPE = JSON_TYPE
    CONFIG_SCHEMA = vol.Schema({vol.Required("type"): JSON_TYPE})
    always_fresh = True  # the only writer: its cache is the truth

    def __init__(self, config: dict[str, Any], config_dir: str) -> None:
        """Files under config_dir/.storage."""
        super().__init__(config, config_dir)
        self._journaled: list[Store] = []
        self._auth: Store | None = None

    def auth_log(self) -> RecordLog:
        """``.storage/auth`` and its journal."""
        if self._auth is None:
            from .store import STORAGE_KEY, STORAGE_VERSION, decode_auth_file

            self._auth = Store(
                self.config_dir, STORAGE_KEY, STORAGE_VERSION, private=True, journal=True, decode=decode_auth_file
            )
        return self._auth

    def document(
        self,
        key: str,
        version: int,
        *,
        private: bool = True,
        migrate: Callable[[int, Any], Any] | None = None,
        journal: bool = False,
    ) -> DocumentStore:
        """``.storage/<key>``."""
        store = Store(self.config_dir, key, version, private=private, migrate=migrate, journal=journal)
        if journal:
            # Flushed at shutdown, so a stopped server leaves whole files and no journal.
            self._journaled.append(store)
        return store

    async def async_close(self) -> None:
        """Compact the plugins' journaled documents (whole files, no journals)."""
        for store in self._journaled:
            try:
                await store.async_flush()
            except StorageError as err:
                import logging

                logging.getLogger(__name__).error("Changes not saved at shutdown: %s", err)

    async def async_export(self) -> dict[str, Any]:
        """Every .storage file, the auth store with its journal replayed."""
        import asyncio

        from .store import STORAGE_KEY, STORAGE_VERSION

        documents: dict[str, Any] = {}
        auth: Any = None
        loop = asyncio.get_running_loop()
        keys = await loop.run_in_executor(None, iter_store_keys, self.config_dir)
        orphans = [
            key
            for key in await loop.run_in_executor(None, _journaled_keys, self.config_dir)
            if is_auth_document(key) and key not in keys
        ]
        if orphans:
            # Journaled documents whose first whole write a crash (or a failure) prevented: their
            # version is in no file, and leaving them out would lose them silently.
            raise StorageError(
                f"{', '.join(orphans)}: only a journal holds them (left by a crash); start the server "
                "once and stop it (it writes the files), then copy"
            )
        for key in keys:
            if not is_auth_document(key):
                continue
            if key == STORAGE_KEY:
                store = Store(self.config_dir, key, STORAGE_VERSION, private=True, journal=True)
                auth = await _replayed_auth(store)
                continue
            path = _storage_path(self.config_dir, key)
            envelope = await loop.run_in_executor(None, read_envelope, path)
            if envelope is None:
                continue
            journal = Store(self.config_dir, key, envelope["version"], journal=True)
            data = await journal.async_load()
            documents[key] = (envelope["version"], data)
        return {"auth": auth, "documents": documents}

    async def async_import(self, exported: dict[str, Any]) -> None:
        """Write each document as a whole .storage file."""
        from .store import STORAGE_KEY, STORAGE_VERSION

        keys = ([STORAGE_KEY] if exported.get("auth") is not None else []) + list(exported.get("documents", {}))
        stale = [key for key in keys if journal_path(_storage_path(self.config_dir, key)).exists()]
        if stale:
            # A journal is replayed over the file beside it: over a copied file, every one of its records.
            raise StorageError(
                f"{self.describe()} holds the journals of {', '.join(stale)} (left by a crash): "
                "move them away with their files before copying here"
            )
        if exported.get("auth") is not None:
            await Store(self.config_dir, STORAGE_KEY, STORAGE_VERSION, private=True).async_save(exported["auth"])
        for key, (version, data) in exported.get("documents", {}).items():
            await Store(self.config_dir, key, version, private=True).async_save(data)

    def describe(self) -> str:
        """The folder."""
        return f"{self.config_dir}/{STORAGE_DIR}"


def _journaled_keys(config_dir: str) -> list[str]:
    """The keys of the journals in .storage (``.<key>.journal``), their files there or not."""
    from pathlib import Path

    folder = Path(config_dir) / STORAGE_DIR
    if not folder.is_dir():
        return []
    return sorted(
        p.name[1 : -len(JOURNAL_SUFFIX)]
        for p in folder.iterdir()
        if p.name.startswith(".") and p.name.endswith(JOURNAL_SUFFIX)
    )


def _storage_path(config_dir: str, key: str) -> Any:
    """The path of .storage/<key>."""
    from pathlib import Path

    return Path(config_dir) / STORAGE_DIR / key


async def _replayed_auth(store: Store) -> Any:
    """The auth data of a journaled store, with its journal applied."""
    data, records = await store.async_load_journaled()
    return replay_auth_records(data, records)


_AUTH_LISTS = ("users", "groups", "credentials", "refresh_tokens")


def replay_auth_records(data: dict[str, Any] | None, records: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The auth data (``.storage/auth`` format) with change records applied, entries kept as stored.

    Works on the stored dicts alone (no keys, no soft migrations), so a copy moves an Open
    Peer Power directory's entries unchanged; the server applies its migrations when it loads.
    """
    if data is None and not records:
        return None
    base = data or {}
    tables: dict[str, dict[str, dict[str, Any]]] = {
        name: {entry["id"]: entry for entry in base.get(name, []) if isinstance(entry, dict) and "id" in entry}
        for name in _AUTH_LISTS
    }
    users, groups, creds, tokens = (tables[name] for name in _AUTH_LISTS)
    for record in records:
        kind = record.get("t")
        if kind == "user":
            users[record["v"]["id"]] = record["v"]
        elif kind == "group":
            groups[record["v"]["id"]] = record["v"]
        elif kind == "cred":
            creds[record["v"]["id"]] = record["v"]
        elif kind == "token":
            tokens[record["v"]["id"]] = record["v"]
        elif kind == "del_token":
            tokens.pop(record["id"], None)
        elif kind == "del_tokens":
            for token_id in record["ids"]:
                tokens.pop(token_id, None)
        elif kind == "usage":
            token = tokens.get(record["id"])
            if token is not None:
                token.update({k: record.get(k) for k in ("last_used_at", "last_used_ip", "expire_at")})
        elif kind == "del_cred":
            creds.pop(record["id"], None)
            for token_id in [t for t, v in tokens.items() if v.get("credential_id") == record["id"]]:
                del tokens[token_id]
        elif kind == "del_user":
            users.pop(record["id"], None)
            for table in (creds, tokens):
                for entry_id in [e for e, v in table.items() if v.get("user_id") == record["id"]]:
                    del table[entry_id]
    result = dict(base)
    for name in _AUTH_LISTS:
        result[name] = list(tables[name].values())
    return result

"""The local username/password provider (type ``openpeerpower``, or ``homeassistant``).

Logins live in ``.storage/auth_provider.openpeerpower`` as Open Peer Power
keeps them: normalised usernames and base64-encoded bcrypt hashes (cost 12).
In a Home Assistant directory the same provider has Home Assistant's type,
``homeassistant``, and reads ``.storage/auth_provider.homeassistant``, whose
format is the same; its credentials in ``.storage/auth`` carry that type.
"""

from __future__ import annotations

import base64
import logging
from typing import Any

import bcrypt
import voluptuous as vol

from opp_auth import (
    AuthProvider,
    Credentials,
    InvalidAuthError,
    LoginFlow,
    UserMeta,
    UsernamePasswordLoginFlow,
    hookimpl,
    is_safe_username,
)

from .websocket import register_commands

_LOGGER = logging.getLogger(__name__)

STORAGE_KEY = "auth_provider.openpeerpower"
HA_TYPE = "homeassistant"
STORAGE_VERSION = 1
BCRYPT_ROUNDS = 12
BCRYPT_MAX_BYTES = 72


def _disallow_id(provider_type: str) -> Any:
    """At most one local provider: it has no id."""

    def check(conf: dict[str, Any]) -> dict[str, Any]:
        """Refuse an id."""
        if conf.get("id") is not None:
            raise vol.Invalid(f"ID is not allowed for the {provider_type} auth provider.")
        return conf

    return check


_BASE_SCHEMA = AuthProvider.CONFIG_SCHEMA.extend(
    {vol.Optional("min_password_length", default=8): vol.All(int, vol.Range(min=1, max=72))},
    extra=vol.PREVENT_EXTRA,
)
CONFIG_SCHEMA = vol.All(_BASE_SCHEMA, _disallow_id("openpeerpower"))

# A real bcrypt hash of a random password, so unknown users cost one check like known ones.
_DUMMY_HASH = b"$2b$12$CiuFGszHx9eNHxPuQcwBWez4CwDTOcLTX5CbOpV6gef2nYuXkY7BO"


class InvalidUser(Exception):
    """The username exists already, or does not exist (depending on the operation)."""


UNSAFE_USERNAME_MESSAGE = "Username must not contain control, format or line separator characters"


class InvalidUsername(ValueError):
    """A new username the login form would refuse (opp_auth.is_safe_username)."""


class PasswordTooLong(ValueError):
    """bcrypt reads only 72 bytes: a longer new password is refused instead of cut."""


def _secret_bytes(password: str) -> bytes:
    """Password bytes for bcrypt; Open Peer Power's bcrypt cut at 72 bytes, so checks do too."""
    return password.encode("utf-8")[:BCRYPT_MAX_BYTES]


def hash_password(password: str) -> str:
    """A new stored hash (base64 of the bcrypt hash), refusing what bcrypt would cut."""
    raw = password.encode("utf-8")
    if len(raw) > BCRYPT_MAX_BYTES:
        raise PasswordTooLong(f"Passwords can be at most {BCRYPT_MAX_BYTES} bytes long (this one is {len(raw)}).")
    hashed = bcrypt.hashpw(raw, bcrypt.gensalt(rounds=BCRYPT_ROUNDS))
    return base64.b64encode(hashed).decode()


def check_password(password: str, stored: str | None) -> bool:
    """Whether password matches a stored hash (runs one bcrypt check even without a hash)."""
    if stored is None:
        bcrypt.checkpw(b"dummy", _DUMMY_HASH)
        return False
    try:
        hashed = base64.b64decode(stored)
        return bcrypt.checkpw(_secret_bytes(password), hashed)
    except ValueError:
        _LOGGER.error("The stored password hash is not a valid bcrypt hash")
        return False


class Data:
    """The logins file: normalised usernames and password hashes."""

    def __init__(self, provider: LocalAuthProvider) -> None:
        """Name the file; call async_load next."""
        # Journaled: a change is written as the login it touches (a path save), not the whole file.
        self._store = provider.auth.storage(provider.STORAGE_KEY, STORAGE_VERSION, private=True, journal=True)
        self._users: list[dict[str, str]] = []
        self._doc: dict[str, Any] = {"users": self._users}
        self._by_name: dict[str, dict[str, str]] = {}
        self.is_legacy = False
        # The stored logins hold one username twice: a selector ({"username": name}) finds the first
        # of them, the index the last, so changes are saved as the whole list (legacy data only).
        self._save_whole = False

    def normalize_username(self, username: str) -> str:
        """Strip and casefold, unless legacy data forces exact comparison."""
        if self.is_legacy:
            return username
        return username.strip().casefold()

    async def async_load(self) -> None:
        """Read the logins and decide on legacy mode; follow changes other servers make (shared storage)."""
        self._use(await self._store.async_load())
        self._store.listen(self._use)

    def _use(self, data: Any) -> None:
        """Index the logins of the stored data (at load, and when another server changed them)."""
        self.is_legacy = False
        if data is None or not isinstance(data, dict):
            data = {"users": []}
        # The store's own object is the live one (its list filtered in place): a shared store applies
        # another server's change to the object it holds, which must be this one, or a change of ours
        # still being written would be undone in memory by a rebuild from an older copy.
        users = data.get("users")
        if not isinstance(users, list):
            users = data["users"] = []
        users[:] = [u for u in users if isinstance(u, dict) and "username" in u]
        # One pass (100,000 logins at start-up for a large installation): the index by folded
        # name, the first name folding onto an earlier one, the first with spaces around it.
        by_folded: dict[str, dict[str, str]] = {}
        duplicate: str | None = None
        spaced: str | None = None
        for user in users:
            username = user["username"]
            folded = username.casefold()
            if folded in by_folded and duplicate is None:
                duplicate = username
            by_folded[folded] = user
            if spaced is None and username != username.strip():
                spaced = username
        if duplicate is not None:
            _LOGGER.warning(
                "Open Peer Power auth provider is running in legacy mode because we detected "
                "usernames that are case-insensitive equivalent. Please change the username: '%s'.",
                duplicate,
            )
        if spaced is not None:
            _LOGGER.warning(
                "Open Peer Power auth provider is running in legacy mode because we detected "
                "usernames that start or end in a space. Please change the username: '%s'.",
                spaced,
            )
        self.is_legacy = duplicate is not None or spaced is not None
        self._save_whole = duplicate is not None and len({u["username"] for u in users}) != len(users)
        self._users = users
        self._doc = data
        # Not legacy: no name has spaces around it, so a normalised name is its folded one.
        self._by_name = {u["username"]: u for u in users} if self.is_legacy else by_folded

    @property
    def users(self) -> list[dict[str, str]]:
        """The stored logins."""
        return self._users

    def get(self, username: str) -> dict[str, str] | None:
        """A login by (normalised) username."""
        return self._by_name.get(self.normalize_username(username))

    def validate_login(self, username: str, password: str) -> None:
        """Raise InvalidAuthError unless the password is right (blocking: call in an executor)."""
        found = self.get(username)
        if not check_password(password, found["password"] if found else None):
            raise InvalidAuthError

    def add_auth(self, username: str, password: str) -> str:
        """Add a login (blocking: bcrypt); returns the stored username."""
        username = self.normalize_username(username)
        if not username:
            raise InvalidUser("Username must not be empty")
        if username in self._by_name:
            raise InvalidUser("Username already exists")
        entry = {"username": username, "password": hash_password(password)}
        # bcrypt ran outside the lock of the event loop: re-check before inserting.
        if username in self._by_name:
            raise InvalidUser("Username already exists")
        self._users.append(entry)
        self._by_name[username] = entry
        return username

    def remove_auth(self, username: str) -> str:
        """Remove a login; returns its stored username."""
        entry = self._by_name.pop(self.normalize_username(username), None)
        if entry is None:
            raise InvalidUser("User not found")
        index = next(i for i, u in enumerate(self._users) if u is entry)
        del self._users[index]
        return entry["username"]

    def change_username(self, username: str, new_username: str) -> str:
        """Rename a login; returns the stored (normalised) new name."""
        entry = self.get(username)
        if entry is None:
            raise InvalidUser("User not found")
        new = self.normalize_username(new_username)
        if not new:
            raise InvalidUser("Username must not be empty")
        found = self._by_name.get(new)
        if found is not None and found is not entry:
            raise InvalidUser("Username already exists")
        del self._by_name[self.normalize_username(entry["username"])]
        entry["username"] = new
        self._by_name[new] = entry
        return new

    def change_password(self, username: str, new_password: str) -> str:
        """Set a new password (blocking: bcrypt); returns the stored username."""
        entry = self.get(username)
        if entry is None:
            raise InvalidUser("User not found")
        entry["password"] = hash_password(new_password)
        return entry["username"]

    async def async_save(self, *names: str) -> None:
        """Make the logins stored under these usernames (as stored, after the change) durable.

        A login that is gone is deleted; each one is written alone, so the cost of a change does
        not grow with the number of logins.
        """
        if self._save_whole:
            await self._store.async_save_changes(self._doc, [("users",)])
            return
        await self._store.async_save_changes(self._doc, [("users", {"username": name}) for name in names])

    async def async_save_undone(self, *names: str) -> None:
        """After a failed save was undone in memory: record the undoing too.

        A journal keeps the records of a failed write and writes them with the next change, so
        without this a restart would find the change the caller was told failed.
        """
        if getattr(self._store, "journal", None) is None:
            return  # a store that writes nothing of a failed save (a file rewritten whole, a database)
        try:
            await self.async_save(*names)
        except Exception:  # noqa: BLE001 - queued all the same; the original error is what is raised
            _LOGGER.debug("Recording an undone change failed too (written with the next change)")


class LocalAuthProvider(AuthProvider):
    """Usernames and passwords stored by the server itself."""

    TYPE = "openpeerpower"
    DEFAULT_TITLE = "Open Peer Power Local"
    CONFIG_SCHEMA = CONFIG_SCHEMA
    STORAGE_KEY = STORAGE_KEY

    data: Data

    async def async_initialize(self) -> None:
        """Load the logins."""
        self.data = Data(self)
        await self.data.async_load()

    async def async_login_flow(self, context: dict[str, Any]) -> LoginFlow:
        """A username/password form."""
        return LocalLoginFlow(self)

    async def async_validate_login(self, username: str, password: str) -> None:
        """Check a password off the event loop (raises InvalidAuthError)."""
        await self.auth.async_password_check(self.data.validate_login, username, password)

    def check_password_policy(self, password: str, username: str | None = None) -> None:
        """Refuse weak or unusable new passwords with a ValueError saying why."""
        minimum = self.config.get("min_password_length", 8)
        if len(password) < minimum:
            raise ValueError(f"Passwords must be at least {minimum} characters long.")
        if len(password.encode("utf-8")) > BCRYPT_MAX_BYTES:
            raise PasswordTooLong(f"Passwords can be at most {BCRYPT_MAX_BYTES} bytes long.")
        if username is not None and password.strip().casefold() == username.strip().casefold():
            raise ValueError("The password must not be the username.")

    async def async_add_auth(self, username: str, password: str) -> None:
        """Add a login and save it (usernames the login form accepts; new passwords must pass the policy)."""
        if not is_safe_username(username):
            raise InvalidUsername(UNSAFE_USERNAME_MESSAGE)
        self.check_password_policy(password, username)
        stored = await self.auth.async_password_check(self.data.add_auth, username, password)
        try:
            await self.data.async_save(stored)
        except Exception:
            # Not on disk, so not added: a retry (after freeing space) must not find the name taken.
            self.data.remove_auth(username)
            await self.data.async_save_undone(stored)
            raise

    async def async_remove_auth(self, username: str) -> None:
        """Remove a login, and the credentials that use it."""
        await self.data.async_save(self.data.remove_auth(username))
        cred = self.async_find_credentials({"username": username})
        if cred is not None:
            await self.auth.async_forget_credentials(cred)

    async def async_change_password(self, username: str, new_password: str) -> None:
        """Set a new password and save it."""
        self.check_password_policy(new_password, username)
        stored = await self.auth.async_password_check(self.data.change_password, username, new_password)
        await self.data.async_save(stored)
        credentials = self.async_find_credentials({"username": username})
        self.auth.note_event(
            "password_changed",
            user_id=credentials.user_id if credentials is not None else None,
            username=username,
            provider=self.key,
        )

    async def async_change_username(self, credentials: Credentials, new_username: str) -> None:
        """Rename a login and the credentials that use it (sessions stay valid, as in Home Assistant)."""
        if not is_safe_username(new_username):
            raise InvalidUsername(UNSAFE_USERNAME_MESSAGE)
        old = credentials.data["username"]
        entry = self.data.get(old)
        old_stored = entry["username"] if entry is not None else old
        new = self.data.change_username(old, new_username)
        try:
            await self.data.async_save(old_stored, new)
        except Exception:
            restored = self.data.change_username(new, old)
            await self.data.async_save_undone(*dict.fromkeys((new, old_stored, restored)))
            raise
        await self.auth.async_update_credentials_data(credentials, {**credentials.data, "username": new})

    def credential_key(self, data: dict[str, Any]) -> str:
        """Credentials match on the normalised username."""
        return self.data.normalize_username(str(data.get("username", "")))

    def credential_data(self, flow_result: dict[str, Any]) -> dict[str, Any]:
        """Credentials carry the normalised username."""
        return {"username": self.data.normalize_username(flow_result["username"])}

    async def async_user_meta_for_credentials(self, credentials: Credentials) -> UserMeta:
        """New users are named after their username."""
        return UserMeta(name=credentials.data["username"], is_active=True)

    async def async_will_remove_credentials(self, credentials: Credentials) -> None:
        """Removing the credentials removes the login too."""
        try:
            stored = self.data.remove_auth(credentials.data["username"])
        except InvalidUser:
            return
        await self.data.async_save(stored)


class HomeAssistantAuthProvider(LocalAuthProvider):
    """The same provider in a Home Assistant directory: Home Assistant's type, title and file."""

    TYPE = HA_TYPE
    DEFAULT_TITLE = "Home Assistant Local"
    CONFIG_SCHEMA = vol.All(_BASE_SCHEMA, _disallow_id(HA_TYPE))
    STORAGE_KEY = "auth_provider.homeassistant"


class LocalLoginFlow(UsernamePasswordLoginFlow):
    """Ask for username and password; the result keeps the username as typed (credential_data normalises it)."""


@hookimpl
def opp_auth_register_auth_providers(register: Any) -> None:
    """Ship the openpeerpower provider and its Home Assistant twin."""
    register(LocalAuthProvider)
    register(HomeAssistantAuthProvider)


@hookimpl
def opp_auth_register_websocket_commands(register: Any) -> None:
    """The config/auth_provider/openpeerpower/* and config/auth_provider/homeassistant/* commands."""
    register_commands(register)

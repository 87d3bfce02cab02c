"""Apache htpasswd file provider (type ``htpasswd``): bcrypt entries only, re-read when the file changes.

Written only against opp_auth's public API, as any third-party plugin is.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import secrets
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import bcrypt
import voluptuous as vol

from opp_auth import (
    AuthProvider,
    Credentials,
    InvalidAuthError,
    LoginFlow,
    RefreshToken,
    UserMeta,
    UsernamePasswordLoginFlow,
    hookimpl,
)

_LOGGER = logging.getLogger(__name__)

ONLY_BCRYPT = "only bcrypt entries (htpasswd -B) are supported"
# bcrypt reads 72 bytes; Apache's check cuts longer passwords there, so ours does too.
BCRYPT_MAX_BYTES = 72
# htpasswd -B's default cost: the dummy check of an empty file costs what a fresh entry would.
DEFAULT_COST = 5
_BCRYPT = re.compile(r"\$2[aby]\$(\d\d)\$[./A-Za-z0-9]{53}")
_DES_CRYPT = re.compile(r"[./A-Za-z0-9]{13}")


def _absolute_path(value: Any) -> str:
    """The htpasswd file must be given as an absolute path."""
    if not isinstance(value, str) or not os.path.isabs(value):
        raise vol.Invalid("must be the absolute path of the htpasswd file, e.g. /etc/opp-auth/htpasswd")
    return os.path.normpath(value)


CONFIG_SCHEMA = AuthProvider.CONFIG_SCHEMA.extend(
    {
        vol.Required("path"): _absolute_path,
        vol.Optional("default_group"): vol.In([UserMeta.GROUP_ADMIN, UserMeta.GROUP_USER, UserMeta.GROUP_READ_ONLY]),
    },
    extra=vol.PREVENT_EXTRA,
)


def hash_kind(hashed: str) -> str:
    """Human name of a non-bcrypt htpasswd hash, for the refusal message."""
    for prefix, name in (
        ("$apr1$", "MD5 ($apr1$)"),
        ("{SHA}", "SHA-1 ({SHA})"),
        ("$1$", "MD5-crypt ($1$)"),
        ("$5$", "SHA-256-crypt ($5$)"),
        ("$6$", "SHA-512-crypt ($6$)"),
        ("$2", "malformed bcrypt"),
    ):
        if hashed.startswith(prefix):
            return name
    if _DES_CRYPT.fullmatch(hashed):
        return "crypt (DES)"
    return "plain-text or unknown"


@dataclass(frozen=True, slots=True)
class Entry:
    """One user line: its number and the bcrypt hash, or None with the kind of a refused hash."""

    line: int
    hashed: bytes | None
    kind: str = "bcrypt"


@dataclass(slots=True)
class HtpasswdFile:
    """The parsed file: entries by exact username, and the dummy hash for unknown users."""

    entries: dict[str, Entry] = field(default_factory=dict)
    cost: int = DEFAULT_COST


def parse(data: bytes, path: str) -> HtpasswdFile:
    """Parse htpasswd content; bad lines are skipped with a warning naming the line."""
    parsed = HtpasswdFile()
    costs: Counter[int] = Counter()
    for number, raw in enumerate(data.split(b"\n"), 1):
        try:
            line = raw.decode("utf-8").strip()
        except UnicodeDecodeError:
            _LOGGER.warning("%s line %d: not UTF-8 text, skipped", path, number)
            continue
        if not line or line.startswith("#"):
            continue
        username, sep, rest = line.partition(":")
        # Like Apache, the hash ends at the next colon; later fields are ignored.
        hashed = rest.split(":", 1)[0]
        if not sep or not username or not hashed:
            _LOGGER.warning("%s line %d: not a 'user:hash' entry, skipped", path, number)
            continue
        if username in parsed.entries:
            # Apache uses the first entry of a user.
            _LOGGER.warning(
                "%s line %d: user '%s' is already defined on line %d, this entry is ignored",
                path,
                number,
                username,
                parsed.entries[username].line,
            )
            continue
        match = _BCRYPT.fullmatch(hashed)
        if match is None or not 4 <= int(match.group(1)) <= 31:
            kind = hash_kind(hashed)
            _LOGGER.error(
                "%s line %d: user '%s' has a %s password hash and cannot log in: %s",
                path,
                number,
                username,
                kind,
                ONLY_BCRYPT,
            )
            parsed.entries[username] = Entry(number, None, kind)
            continue
        costs[int(match.group(1))] += 1
        # $2y$ (Apache's name) is the same algorithm as $2b$, which every bcrypt version accepts.
        if hashed.startswith("$2y$"):
            hashed = "$2b$" + hashed[4:]
        parsed.entries[username] = Entry(number, hashed.encode("ascii"))
    if costs:
        parsed.cost = costs.most_common(1)[0][0]
    return parsed


def check_password(password: str, hashed: bytes) -> bool:
    """Whether password matches a bcrypt hash (blocking: run it through async_password_check)."""
    try:
        return bcrypt.checkpw(password.encode("utf-8")[:BCRYPT_MAX_BYTES], hashed)
    except ValueError:  # a password that is not encodable, or bcrypt refusing its input
        return False


def _signature(stat: os.stat_result) -> tuple[int, int, int, int]:
    """What tells that the file changed: replaced, rewritten or touched."""
    return (stat.st_ino, stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns)


class HtpasswdAuthProvider(AuthProvider):
    """Users of an Apache htpasswd file."""

    TYPE = "htpasswd"
    DEFAULT_TITLE = "htpasswd"
    CONFIG_SCHEMA = CONFIG_SCHEMA

    def __init__(self, auth: Any, config: dict[str, Any]) -> None:
        """Nothing is read yet: async_initialize reads the file."""
        super().__init__(auth, config)
        self._path: str = config["path"]
        self._file = HtpasswdFile()
        self._signature: tuple[int, int, int, int] | None = None
        self._unreadable: str | None = None
        self._lock = asyncio.Lock()
        self._dummy_hashes: dict[int, bytes] = {}

    async def async_initialize(self) -> None:
        """Read the file once at start-up, so its problems are logged then."""
        users = await self.async_users()
        if self._unreadable is None:
            _LOGGER.info("htpasswd provider: %d user(s) in %s", len(users.entries), self._path)

    async def async_users(self) -> HtpasswdFile:
        """The current file content, re-read when the file changed (an unreadable file has no users)."""
        async with self._lock:
            try:
                signature = _signature(await self.auth.async_add_executor_job(os.stat, self._path))
                if signature != self._signature:
                    data = await self.auth.async_add_executor_job(_read_bytes, self._path)
                    parsed = await self.auth.async_add_executor_job(parse, data, self._path)
                    await self._async_dummy_hash(parsed.cost)
                    self._file, self._signature = parsed, signature
            except OSError as err:
                reason = f"{type(err).__name__}: {err.strerror or err}"
                if reason != self._unreadable:
                    _LOGGER.error("htpasswd file %s cannot be read (%s): nobody can log in with it", self._path, reason)
                self._unreadable = reason
                self._file, self._signature = HtpasswdFile(), None
                return self._file
            if self._unreadable is not None:
                _LOGGER.warning("htpasswd file %s is readable again", self._path)
                self._unreadable = None
            return self._file

    async def _async_dummy_hash(self, cost: int) -> bytes:
        """A bcrypt hash of a random secret at the file's usual cost (made once per cost)."""
        if cost not in self._dummy_hashes:
            secret = secrets.token_hex(16).encode()
            self._dummy_hashes[cost] = await self.auth.async_add_executor_job(
                bcrypt.hashpw, secret, bcrypt.gensalt(rounds=cost)
            )
        return self._dummy_hashes[cost]

    async def async_validate_login(self, username: str, password: str) -> None:
        """Raise InvalidAuthError unless the file has a bcrypt entry for username that password matches."""
        users = await self.async_users()
        entry = users.entries.get(username)
        hashed = entry.hashed if entry is not None else None
        if entry is not None and hashed is None:
            _LOGGER.warning(
                "htpasswd user '%s' (%s line %d) cannot log in: the %s entry is refused, %s",
                username,
                self._path,
                entry.line,
                entry.kind,
                ONLY_BCRYPT,
            )
        if hashed is None:
            # Unknown and refused users cost one check too, so timing does not tell who exists.
            await self.auth.async_password_check(check_password, password, await self._async_dummy_hash(users.cost))
            raise InvalidAuthError
        if not await self.auth.async_password_check(check_password, password, hashed):
            raise InvalidAuthError

    async def async_login_flow(self, context: dict[str, Any]) -> LoginFlow:
        """A username/password form."""
        return HtpasswdLoginFlow(self)

    def credential_data(self, flow_result: dict[str, Any]) -> dict[str, Any]:
        """Credentials carry the exact username (htpasswd names are case-sensitive)."""
        return {"username": flow_result["username"]}

    async def async_user_meta_for_credentials(self, credentials: Credentials) -> UserMeta:
        """New users are named after their username and join default_group (core default: system-users)."""
        return UserMeta(name=credentials.data["username"], is_active=True, group=self.config.get("default_group"))

    async def async_validate_refresh_token(self, refresh_token: RefreshToken, remote_ip: str | None = None) -> None:
        """A user removed from the file (or left with a refused entry) gets no new access tokens."""
        credential = refresh_token.credential
        if credential is None:
            return
        users = await self.async_users()
        entry = users.entries.get(str(credential.data.get("username")))
        if entry is None or entry.hashed is None:
            raise InvalidAuthError("The user has no bcrypt entry in the htpasswd file any more")


def _read_bytes(path: str) -> bytes:
    """The file's bytes (blocking)."""
    with open(path, "rb") as file:
        return file.read()


class HtpasswdLoginFlow(UsernamePasswordLoginFlow):
    """Ask for username and password; the result keeps the exact username (htpasswd names are case-sensitive)."""


@hookimpl
def opp_auth_register_auth_providers(register: Any) -> None:
    """Ship the htpasswd provider."""
    register(HtpasswdAuthProvider)

"""The command line provider (type ``command_line``): an external program decides logins.

The program is executed directly (no shell) with the username and password in
its environment; exit code 0 lets the user in. With ``meta: true`` its
standard output may name the user, choose the group of a user created on the
first login and make that user local-only.

Why a username can never inject meta (issue 11): meta is read from standard
output only, one ``key = value`` per line, where only LF, CR and CRLF end a
line (bytes, before decoding: U+2028, NEL, VT and FF do not). A username with
a control, format or separator character (``is_safe_username``) is refused
before the program runs, so an echoed username can never end a line; with
``meta: true`` a username holding ``=`` is refused too, so an echoed username
alone can never form a ``key = value`` line. Each known key may appear once: a
program that prints one twice is ambiguous and the login is denied.
"""

from __future__ import annotations

import asyncio
import logging
import os
import unicodedata
from typing import Any

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
    programs,
)

_LOGGER = logging.getLogger(__name__)

GROUPS = (UserMeta.GROUP_ADMIN, UserMeta.GROUP_USER, UserMeta.GROUP_READ_ONLY)
# Enough for `#!/usr/bin/env python3` helpers; nothing else of the server's environment leaks.
MAX_STDOUT = 64 * 1024
MAX_STDERR = 4 * 1024
# Meta of new credentials waits here between the login step and user creation.

CONF_COMMAND = "command"
CONF_ARGS = "args"
CONF_META = "meta"
CONF_TIMEOUT = "timeout"
CONF_DEFAULT_GROUP = "default_group"


def _absolute_path(value: Any) -> str:
    """A normalised absolute path."""
    path = os.path.normpath(str(value))
    if not os.path.isabs(path):
        raise vol.Invalid("must be an absolute path")
    return path


CONFIG_SCHEMA = AuthProvider.CONFIG_SCHEMA.extend(
    {
        vol.Required(CONF_COMMAND): vol.All(str, _absolute_path),
        vol.Optional(CONF_ARGS, default=None): vol.All(vol.Any(None, [str]), lambda v: list(v or [])),
        vol.Optional(CONF_META, default=False): bool,
        vol.Optional(CONF_TIMEOUT, default=10): vol.All(
            vol.Coerce(float), vol.Range(min=0, min_included=False, max=3600)
        ),
        vol.Optional(CONF_DEFAULT_GROUP, default=UserMeta.GROUP_USER): vol.In(GROUPS),
    },
    extra=vol.PREVENT_EXTRA,
)


def normalize_username(username: str) -> str:
    """How usernames compare: stripped and case-folded, like the local provider (G25)."""
    return username.strip().casefold()


META_KEYS = ("name", "group", "local_only")
# A name from the program may be shown anywhere; one that breaks lines is ignored.
_NAME_REFUSED_CATEGORIES = frozenset({"Cc", "Zl", "Zp", "Cs"})


class MetaError(ValueError):
    """The program's output is ambiguous (a meta key given twice)."""


def _acceptable_name(value: str) -> bool:
    """A name without control or line-breaking characters."""
    return not any(unicodedata.category(char) in _NAME_REFUSED_CATEGORIES for char in value)


def parse_meta(output: bytes) -> dict[str, Any]:
    """The accepted ``key = value`` lines of the program's output.

    Lines end only at LF, CR or CRLF (split as bytes, before decoding). Unknown
    keys, comments and lines without ``=`` are skipped; a known key given twice
    raises MetaError, whatever its values.
    """
    meta: dict[str, Any] = {}
    seen: set[str] = set()
    for raw in output.splitlines():
        line = raw.decode("utf-8", errors="replace").lstrip()
        if line.startswith("#") or "=" not in line:
            continue
        key, _, value = line.partition("=")
        key = key.strip()
        value = value.strip()
        if key not in META_KEYS:
            continue
        if key in seen:
            raise MetaError(f"the command printed {key!r} more than once")
        seen.add(key)
        if key == "name":
            if _acceptable_name(value):
                meta["name"] = value
            else:
                _LOGGER.warning("Ignoring a name with control characters in the command's output: %r", value)
        elif key == "group":
            if value in GROUPS:
                meta["group"] = value
            else:
                _LOGGER.warning("Ignoring unknown group %r in the command's output", value)
        elif value.lower() in ("true", "false"):
            meta["local_only"] = value.lower() == "true"
        else:
            _LOGGER.warning("Ignoring local_only = %r in the command's output (expected true or false)", value)
    return meta


class CommandLineAuthProvider(AuthProvider):
    """Logins decided by an external program's exit code."""

    TYPE = "command_line"
    DEFAULT_TITLE = "Command Line Authentication"
    CONFIG_SCHEMA = CONFIG_SCHEMA
    MAX_CONCURRENT = 4

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        """Bound the number of programs running at once."""
        super().__init__(*args, **kwargs)
        self._semaphore = asyncio.Semaphore(self.MAX_CONCURRENT)

    async def async_login_flow(self, context: dict[str, Any]) -> LoginFlow:
        """A username/password form."""
        return CommandLineLoginFlow(self)

    async def async_validate_login(self, username: str, password: str) -> dict[str, Any]:
        """Run the program; return the meta it printed (empty unless meta is on), or raise InvalidAuthError."""
        if not username or not is_safe_username(username) or "\x00" in password:
            # Nothing to identify, a name that could break the program's output
            # lines (or the log), or impossible to pass in an environment.
            raise InvalidAuthError
        if self.config[CONF_META] and "=" in username:
            # Echoed on a line of its own it would read as a meta line.
            _LOGGER.warning("Refused username %r: it contains '=' and meta is on", username)
            raise InvalidAuthError
        env = {"username": username, "password": password, "PATH": programs.SAFE_PATH}
        timeout = self.config[CONF_TIMEOUT]
        async with self._semaphore:
            try:
                result = await programs.async_run_program(
                    [self.config[CONF_COMMAND], *self.config[CONF_ARGS]],
                    env=env,
                    timeout=timeout,
                    max_stdout=MAX_STDOUT,
                    max_stderr=MAX_STDERR,
                )
            except programs.ProgramTimeout:
                _LOGGER.error(
                    "User %r failed to authenticate: the command did not finish within the %s s timeout and was killed",
                    username,
                    timeout,
                )
                raise InvalidAuthError from None
            except programs.ProgramError as err:
                _LOGGER.error("Error while authenticating %r: %s", username, err)
                raise InvalidAuthError from err
        stdout, stderr, code = result.stdout, result.stderr, result.returncode
        if stderr:
            _LOGGER.debug("Command stderr for %r: %s", username, stderr.decode("utf-8", errors="replace"))
        if code != 0:
            _LOGGER.error("User %r failed to authenticate, command exited with code %d", username, code)
            raise InvalidAuthError
        if not self.config[CONF_META]:
            return {}
        try:
            return parse_meta(stdout)
        except MetaError as err:
            _LOGGER.error("User %r failed to authenticate: %s", username, err)
            raise InvalidAuthError from None

    def credential_key(self, data: dict[str, Any]) -> str:
        """Credentials match on the case-folded username (G25)."""
        return normalize_username(str(data.get("username", "")))

    def credential_data(self, flow_result: dict[str, Any]) -> dict[str, Any]:
        """Credentials keep the username as first typed (stripped); matching ignores case."""
        return {"username": flow_result["username"]}

    async def async_user_meta_for_credentials(self, credentials: Credentials) -> UserMeta:
        """Name, group and local-only flag from the login's meta, else the configured default group (G19)."""
        meta = credentials.meta or {}
        return UserMeta(
            name=meta.get("name"),
            is_active=True,
            group=meta.get("group", self.config[CONF_DEFAULT_GROUP]),
            local_only=meta.get("local_only", False),
        )


class CommandLineLoginFlow(UsernamePasswordLoginFlow[CommandLineAuthProvider]):
    """Ask for username and password."""

    async def async_check_login(self, username: str, password: str) -> dict[str, Any]:
        """Run the program on the stripped username; the result carries that username and any meta (as the
        identity new credentials keep until the user is made)."""
        provider = self.provider
        username = username.strip()
        meta = await provider.async_validate_login(username, password)
        result: dict[str, Any] = {"username": username}
        if meta:
            result["identity"] = meta
        return result


@hookimpl
def opp_auth_register_auth_providers(register: Any) -> None:
    """Ship the command_line provider."""
    register(CommandLineAuthProvider)

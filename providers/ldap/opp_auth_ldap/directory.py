"""The blocking side of the LDAP provider: connections, fail-over, the pool and the directory questions.

Everything here runs in an executor thread; the provider never calls it on the event loop.
"""

from __future__ import annotations

import ipaddress
import logging
import math
import os
import re
import ssl
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import ldap3
from ldap3.core.exceptions import LDAPCommunicationError, LDAPException
from ldap3.utils.conv import escape_filter_chars
from ldap3.utils.dn import escape_rdn, parse_dn

from opp_auth import GroupMapping, InvalidAuthError, UserMeta

_LOGGER = logging.getLogger("opp_auth_ldap")

SCOPES = {"subtree": ldap3.SUBTREE, "one": ldap3.LEVEL, "onelevel": ldap3.LEVEL, "base": ldap3.BASE}
# Result codes that mean "the directory cannot answer now" rather than "no".
RESULT_SUCCESS = 0
RESULT_SIZE_LIMIT_EXCEEDED = 4
RESULT_NO_SUCH_OBJECT = 32
# A server that refused a connection is tried last for this long (all are still tried).
SERVER_BACKOFF = 30.0
MAX_GROUPS = 1000
# Never a real entry: the bind that keeps unknown users as slow as known ones.
DUMMY_RDN = "cn=opp-auth-no-such-user"


class DirectoryUnavailable(Exception):
    """No configured server could be reached, or the directory refused to answer a search."""


@dataclass
class Identity:
    """What the directory says about a person."""

    username: str
    dn: str
    name: str | None = None
    groups: set[str] = field(default_factory=set)
    group: str = UserMeta.GROUP_USER


def normalize_dn(dn: str) -> str:
    """A DN in a form to compare: attribute types and values case-folded, spaces around separators gone."""
    try:
        parts = parse_dn(dn, escape=False, strip=True)
    except (LDAPException, IndexError, ValueError):
        return dn.strip().casefold()
    return ",".join(f"{attr.strip().casefold()}={value.strip().casefold()}" for attr, value, _sep in parts)


def _is_ip(host: str) -> bool:
    """Whether a host is an address (no SNI for those)."""
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def is_loopback(host: str) -> bool:
    """Whether a host name is this machine (no cleartext warning for it)."""
    return host in ("localhost", "::1") or host.startswith("127.")


@dataclass
class ServerSpec:
    """One configured URL."""

    url: str
    host: str
    port: int
    use_ssl: bool
    down_until: float = 0.0


def parse_url(url: str) -> ServerSpec:
    """host, port and TLS of an ldap:// or ldaps:// URL (raises ValueError)."""
    parts = urlsplit(url.strip())
    scheme = parts.scheme.lower()
    if scheme not in ("ldap", "ldaps") or not parts.hostname:
        raise ValueError(f"{url!r} is not an ldap:// or ldaps:// URL")
    if parts.path not in ("", "/") or parts.query or parts.fragment or parts.username or parts.password:
        raise ValueError(f"{url!r} must name only a host and a port")
    port = parts.port or (636 if scheme == "ldaps" else 389)
    return ServerSpec(url=url.strip(), host=parts.hostname, port=port, use_ssl=scheme == "ldaps")


def _reason(err: Exception) -> str:
    """A readable, bounded reason from an ldap3 exception (which nests tuple reprs of the cause)."""
    text = re.sub(r"^[(\"',\s]+|[)\"',\s]+$", "", str(err)) or type(err).__name__
    return text if len(text) <= 300 else text[:300] + "..."


def _first(values: list[bytes] | None) -> str | None:
    """The first value of a raw attribute as text."""
    if not values:
        return None
    return values[0].decode("utf-8", errors="replace")


def _attribute(entry: dict[str, Any], name: str) -> list[bytes]:
    """Raw values of an attribute (names compare case-insensitively)."""
    wanted = name.casefold()
    for key, values in entry["raw_attributes"].items():
        if key.split(";", 1)[0].casefold() == wanted:
            return list(values)
    return []


class _Pool:
    """Idle connections of one kind, at most size kept; anything broken is dropped."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._idle: deque[ldap3.Connection] = deque()
        self._lock = threading.Lock()
        self.opened = 0

    def take(self) -> ldap3.Connection | None:
        """An idle connection that is still open, or None."""
        with self._lock:
            while self._idle:
                conn = self._idle.pop()
                if not conn.closed:
                    return conn
        return None

    def give_back(self, conn: ldap3.Connection) -> None:
        """Keep a healthy connection for the next caller, or close it."""
        if not conn.closed and self.size > 0:
            with self._lock:
                if len(self._idle) < self.size:
                    self._idle.append(conn)
                    return
        _close(conn)

    def close_all(self) -> None:
        """Close every idle connection."""
        with self._lock:
            idle, self._idle = list(self._idle), deque()
        for conn in idle:
            _close(conn)


def _close(conn: ldap3.Connection) -> None:
    """Unbind and close, ignoring a connection that is already gone."""
    try:
        conn.unbind()
    except Exception:  # noqa: BLE001 - closing a dead socket is not worth an error
        pass


class Directory:
    """The configured directory: answers login and re-check questions (blocking)."""

    def __init__(self, config: dict[str, Any]) -> None:
        """Read the validated provider configuration."""
        self.config = config
        self.servers = [parse_url(url) for url in config["url"]]
        self.timeout: float = config["timeout"]
        self.scope = SCOPES[config["search_scope"]]
        self.service = _Pool(config["pool_size"])
        self.auth = _Pool(config["pool_size"])
        self._servers_lock = threading.Lock()
        self.group_mapping = GroupMapping(config, normalize_dn)

    # ---- connections ------------------------------------------------------------------

    def _tls(self, spec: ServerSpec) -> ldap3.Tls:
        """TLS settings for one server (raises LDAPSSLConfigurationError when ca_file is missing)."""
        verify = self.config["verify_ssl"]
        ca_file = self.config.get("ca_file")
        if verify and ca_file and not os.path.isfile(ca_file):
            # ldap3 would only say "invalid CA public key file"; name it. Never fall back to no checks.
            raise ldap3.core.exceptions.LDAPSSLConfigurationError(f"the ca_file {ca_file} does not exist")
        return ldap3.Tls(
            validate=ssl.CERT_REQUIRED if verify else ssl.CERT_NONE,
            ca_certs_file=ca_file if verify else None,
            sni=None if _is_ip(spec.host) else spec.host,
        )

    def _ordered_servers(self) -> list[ServerSpec]:
        """Servers in configured order, those that failed recently last."""
        now = time.monotonic()
        with self._servers_lock:
            return sorted(self.servers, key=lambda s: s.down_until > now)

    def _open(self) -> ldap3.Connection:
        """An open (TLS-protected where configured) connection to the first server that answers."""
        failures: list[str] = []
        for spec in self._ordered_servers():
            try:
                tls = self._tls(spec) if spec.use_ssl or self.config["start_tls"] else None
                server = ldap3.Server(
                    spec.host,
                    port=spec.port,
                    use_ssl=spec.use_ssl,
                    tls=tls,
                    get_info=ldap3.NONE,
                    connect_timeout=self.timeout,
                )
                conn = ldap3.Connection(
                    server,
                    client_strategy=ldap3.SYNC,
                    raise_exceptions=False,
                    # ldap3 packs this into SO_RCVTIMEO as whole seconds; the exact value is set below.
                    receive_timeout=max(1, math.ceil(self.timeout)),
                    auto_referrals=False,
                    auto_escape=False,
                    auto_bind=ldap3.AUTO_BIND_NONE,
                    read_only=True,
                )
                conn.open(read_server_info=False)
                conn.socket.settimeout(self.timeout)
                if self.config["start_tls"] and not spec.use_ssl:
                    conn.start_tls(read_server_info=False)
                    conn.socket.settimeout(self.timeout)
            except LDAPException as err:
                reason = _reason(err)
                _LOGGER.warning("LDAP server %s cannot be used: %s", spec.url, reason)
                failures.append(f"{spec.url} ({reason})")
                with self._servers_lock:
                    spec.down_until = time.monotonic() + SERVER_BACKOFF
                continue
            with self._servers_lock:
                spec.down_until = 0.0
            return conn
        raise DirectoryUnavailable("no LDAP server could be reached: " + "; ".join(failures))

    def _new_service_connection(self) -> ldap3.Connection:
        """A connection bound as the service account (or anonymous without bind_dn)."""
        conn = self._open()
        bind_dn = self.config.get("bind_dn")
        if bind_dn:
            conn.user, conn.password, conn.authentication = bind_dn, self.config["bind_password"], ldap3.SIMPLE
            ok = conn.bind(read_server_info=False)
            conn.password = None
            if not ok:
                description = conn.result.get("description") if conn.result else "no answer"
                _close(conn)
                raise DirectoryUnavailable(f"the LDAP server refused the bind_dn {bind_dn}: {description}")
        self.service.opened += 1
        return conn

    def _new_auth_connection(self) -> ldap3.Connection:
        """A connection for binding as users."""
        conn = self._open()
        self.auth.opened += 1
        return conn

    def _with_service(self, operation: Any) -> Any:
        """Run operation(conn) on a service connection; a stale pooled connection is replaced once."""
        conn = self.service.take()
        pooled = conn is not None
        if conn is None:
            conn = self._new_service_connection()
        try:
            try:
                result = operation(conn)
            except LDAPCommunicationError:
                _close(conn)
                if not pooled:
                    raise
                # The server closed an idle pooled connection (restart, idle timeout): one fresh try.
                conn = self._new_service_connection()
                result = operation(conn)
        except LDAPCommunicationError as err:
            _close(conn)
            raise DirectoryUnavailable(f"the LDAP server stopped answering: {err}") from err
        except BaseException:
            _close(conn)
            raise
        self.service.give_back(conn)
        return result

    def _search(
        self, conn: ldap3.Connection, base: str, search_filter: str, scope: Any, attributes: list[str], size_limit: int
    ) -> list[dict[str, Any]]:
        """Entries of a search; no such base is no entries, a failure is DirectoryUnavailable."""
        conn.search(
            base,
            search_filter,
            search_scope=scope,
            attributes=attributes or [ldap3.NO_ATTRIBUTES],
            size_limit=size_limit,
            time_limit=max(1, int(self.timeout)),
            dereference_aliases=ldap3.DEREF_NEVER,
        )
        code = conn.result.get("result") if conn.result else None
        if code == RESULT_NO_SUCH_OBJECT:
            return []
        if code not in (RESULT_SUCCESS, RESULT_SIZE_LIMIT_EXCEEDED):
            description = conn.result.get("description") if conn.result else "no answer"
            raise DirectoryUnavailable(f"the LDAP search under {base} failed: {description}")
        return [e for e in conn.response or [] if e.get("type") == "searchResEntry"]

    def _bind_user(self, dn: str, password: str, keep: bool = False) -> tuple[bool, ldap3.Connection | None]:
        """Whether dn binds with password; with keep, the bound connection too (caller returns it)."""
        conn = self.auth.take()
        pooled = conn is not None
        if conn is None:
            conn = self._new_auth_connection()
        for attempt in (0, 1):
            try:
                conn.user, conn.password, conn.authentication = dn, password, ldap3.SIMPLE
                ok = bool(conn.bind(read_server_info=False)) and conn.result.get("result") == RESULT_SUCCESS
                conn.password = None
                break
            except LDAPCommunicationError as err:
                _close(conn)
                if attempt or not pooled:
                    raise DirectoryUnavailable(f"the LDAP server stopped answering: {err}") from err
                conn = self._new_auth_connection()
            except LDAPException as err:
                # ldap3 refusing to send the bind (e.g. a password that SASLprep maps to nothing) is a "no".
                _LOGGER.info("LDAP bind as %s not attempted: %s", dn, err)
                _close(conn)
                return False, None
            except BaseException:
                _close(conn)
                raise
        if keep and ok:
            return True, conn
        self.auth.give_back(conn)
        return ok, None

    def close(self) -> None:
        """Close every pooled connection."""
        self.service.close_all()
        self.auth.close_all()

    # ---- questions ----------------------------------------------------------------------

    def _user_attributes(self) -> list[str]:
        """Attributes read from a user's entry."""
        names = [self.config["username_attribute"], self.config["name_attribute"]]
        if self.config.get("group_attribute"):
            names.append(self.config["group_attribute"])
        return names

    def _identity(self, entry: dict[str, Any], fallback_username: str) -> Identity:
        """Username, name and (attribute-held) groups of an entry."""
        username = _first(_attribute(entry, self.config["username_attribute"]))
        if username is None:
            _LOGGER.warning(
                "The LDAP entry %s has no readable %s; using the typed username",
                entry["dn"],
                self.config["username_attribute"],
            )
            username = fallback_username
        identity = Identity(
            username=username, dn=entry["dn"], name=_first(_attribute(entry, self.config["name_attribute"]))
        )
        if self.config.get("group_attribute"):
            identity.groups = {
                normalize_dn(v.decode("utf-8", errors="replace"))
                for v in _attribute(entry, self.config["group_attribute"])
            }
        return identity

    def _group_filter(self, dn: str, username: str) -> str:
        """The group filter for one user, every value escaped (RFC 4515)."""
        return (
            self.config["group_filter"]
            .replace("{dn}", escape_filter_chars(dn))
            .replace("{username}", escape_filter_chars(username))
        )

    def _search_groups(self, conn: ldap3.Connection, dn: str, username: str) -> set[str]:
        """DNs of the groups under group_base_dn that list the user."""
        entries = self._search(
            conn, self.config["group_base_dn"], self._group_filter(dn, username), ldap3.SUBTREE, [], MAX_GROUPS
        )
        return {normalize_dn(e["dn"]) for e in entries}

    def _decide(self, identity: Identity) -> Identity:
        """Apply required_groups and the group mapping (raises InvalidAuthError)."""
        if not self.group_mapping.allows(identity.groups):
            _LOGGER.info("LDAP user %s is in none of the required_groups", identity.dn)
            raise InvalidAuthError
        identity.group = self.group_mapping.group_for(identity.groups)
        return identity

    def _user_filter(self, username: str) -> str:
        """user_filter with the username escaped (RFC 4515)."""
        return self.config["user_filter"].replace("{username}", escape_filter_chars(username))

    def _user_dn(self, username: str) -> str:
        """user_dn_template with the username escaped (RFC 4514)."""
        return self.config["user_dn_template"].replace("{username}", escape_rdn(username))

    def _dummy_dn(self) -> str:
        """A DN that names no entry, for binds that only keep timing even."""
        base = self.config.get("base_dn") or self.config.get("group_base_dn") or "dc=invalid"
        return f"{DUMMY_RDN},{base}"

    def authenticate(self, username: str, password: str) -> Identity:
        """The identity of a right login; InvalidAuthError for any wrong one; DirectoryUnavailable when down."""
        if self.config.get("user_dn_template"):
            return self._authenticate_direct(username, password)
        return self._authenticate_search(username, password)

    def _authenticate_search(self, username: str, password: str) -> Identity:
        """Search the entry with the service account, then bind as it."""
        group_base = self.config.get("group_base_dn")

        def find(conn: ldap3.Connection) -> tuple[list[dict[str, Any]], set[str]]:
            entries = self._search(
                conn, self.config["base_dn"], self._user_filter(username), self.scope, self._user_attributes(), 2
            )
            groups: set[str] = set()
            if group_base:
                # Run for unknown users too, so the answer takes as long either way.
                dn = entries[0]["dn"] if len(entries) == 1 else self._dummy_dn()
                name = _first(_attribute(entries[0], self.config["username_attribute"])) if len(entries) == 1 else None
                groups = self._search_groups(conn, dn, name or username)
            return entries, groups

        entries, groups = self._with_service(find)
        if len(entries) != 1:
            if entries:
                _LOGGER.warning("More than one LDAP entry matches the username %r; refusing the login", username)
            else:
                _LOGGER.info("No LDAP entry matches the username %r", username)
            self._bind_user(self._dummy_dn(), password)
            raise InvalidAuthError
        identity = self._identity(entries[0], username)
        if group_base:
            identity.groups = groups
        ok, _ = self._bind_user(identity.dn, password)
        if not ok:
            _LOGGER.info("Wrong password for the LDAP user %s", identity.dn)
            raise InvalidAuthError
        return self._decide(identity)

    def _authenticate_direct(self, username: str, password: str) -> Identity:
        """Bind as the templated DN, then read the entry and groups as that user."""
        dn = self._user_dn(username)
        ok, conn = self._bind_user(dn, password, keep=True)
        if not ok or conn is None:
            _LOGGER.info("The LDAP bind as %s failed", dn)
            raise InvalidAuthError
        try:
            entries = self._search(conn, dn, "(objectClass=*)", ldap3.BASE, self._user_attributes(), 1)
            if entries:
                identity = self._identity(entries[0], username)
            else:
                _LOGGER.warning("The LDAP user %s cannot read their own entry; using the typed username", dn)
                identity = Identity(username=username, dn=dn)
            if self.config.get("group_base_dn"):
                identity.groups = self._search_groups(conn, identity.dn, identity.username)
        except LDAPCommunicationError as err:
            _close(conn)
            raise DirectoryUnavailable(f"the LDAP server stopped answering: {err}") from err
        except BaseException:
            _close(conn)
            raise
        self.auth.give_back(conn)
        return self._decide(identity)

    def lookup(self, username: str) -> Identity:
        """The identity of an existing user, re-read with the service account (InvalidAuthError when gone)."""

        def find(conn: ldap3.Connection) -> Identity:
            if self.config.get("user_dn_template"):
                entries = self._search(
                    conn, self._user_dn(username), "(objectClass=*)", ldap3.BASE, self._user_attributes(), 1
                )
            else:
                search_filter = f"({self.config['username_attribute']}={escape_filter_chars(username)})"
                entries = self._search(
                    conn, self.config["base_dn"], search_filter, self.scope, self._user_attributes(), 2
                )
            if len(entries) != 1:
                _LOGGER.info("The LDAP user %r is gone (%d matching entries)", username, len(entries))
                raise InvalidAuthError
            identity = self._identity(entries[0], username)
            if self.config.get("group_base_dn"):
                identity.groups = self._search_groups(conn, identity.dn, identity.username)
            return identity

        return self._decide(self._with_service(find))

"""IndieAuth client id and redirect uri validation (SPEC 5.4, bugs G1 and G2 fixed).

A client id is a URL naming the application that asks for a login. A redirect
uri is accepted when it lives on the client id's scheme and host, for the two
mobile apps' custom callback, or when the page at the client id (a domain
name only) lists it in a ``<link rel="redirect_uri">`` tag or ``Link`` header.
That page fetch is made on behalf of anonymous callers, so it never reaches
non-public addresses, follows no redirects and is bounded in time and size.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import re
import socket
from collections.abc import Callable
from html.parser import HTMLParser
from urllib.parse import SplitResult, unquote, urljoin, urlsplit

import aiohttp
import aiohttp.client_exceptions
import yarl

from ..network import IPAddress, is_local_client_address, is_public_fetch_address

_LOGGER = logging.getLogger(__name__)


# Tests shrink these; read at call time, so patch the module attribute.
FETCH_TIMEOUT: float = 5.0
MAX_BODY_BYTES: int = 64 * 1024
# A name with more addresses than this is tried on its first few only.
MAX_ADDRESSES_TRIED: int = 4

MOBILE_CLIENT_IDS = frozenset({"https://openpeerpower.io/android", "https://openpeerpower.io/iOS"})
MOBILE_REDIRECT_URI = "openpeerpower://auth-callback"
# Home Assistant's companion apps, accepted next to Open Peer Power's: each client id with its
# own callbacks only (the Android app's watch companion logs in through Google's Wear OS relay).
HA_MOBILE_REDIRECT_URIS: dict[str, frozenset[str]] = {
    "https://home-assistant.io/iOS": frozenset({"homeassistant://auth-callback"}),
    "https://home-assistant.io/android": frozenset(
        {
            "homeassistant://auth-callback",
            "https://wear.googleapis.com/3p_auth/io.homeassistant.companion.android",
            "https://wear.googleapis-cn.com/3p_auth/io.homeassistant.companion.android",
        }
    ),
}

# urlsplit silently drops tabs and newlines and strips leading control
# characters, so "https://exa\nmple.com/" would validate as another URL than
# the string later compared and echoed; refuse such strings outright.
# Also outside ASCII: C1 controls (NEL...), no-break and other spaces, line and paragraph separators.
_UNSAFE_CHARS_RE = re.compile(r"[\x00-\x20\x7f-\x9f\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]")
_HOST_LABEL_RE = re.compile(r"^(?:[a-z0-9_-]|[^\x00-\x7f])+$")
_MAX_HOSTNAME_LENGTH = 253

_LINK_HEADER_SPLIT_RE = re.compile(r",(?=\s*<)")
_LINK_VALUE_RE = re.compile(r"\s*<([^>]*)>(.*)", re.DOTALL)


class _RefusedAddressError(Exception):
    """The client id's name resolves to an address the fetch must not reach."""


# The address rules live with every other IP helper (opp_auth.network).
is_local_address = is_local_client_address
_allow_address = is_public_fetch_address


def _parse_url(url: str) -> SplitResult:
    """Split a URL and canonicalize it as IndieAuth 3.2 says."""
    parts = urlsplit(url)
    parts = parts._replace(netloc=parts.netloc.lower())
    if parts.path == "":
        parts = parts._replace(path="/")
    return parts


def _check_hostname(parts: SplitResult) -> IPAddress | None:
    """Validate the host of a client id; return its address when it is an IP literal."""
    # parts.hostname, not the netloc: "8.8.8.8:8123" is no name (bug G1).
    host = parts.hostname
    if not host:
        raise ValueError("Client ID has no host")
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        address = None
    if address is not None:
        if not is_local_address(address):
            raise ValueError("Client ID IP address must be loopback or private")
        return address
    if parts.netloc.startswith("["):
        raise ValueError("Client ID has a bracketed host that is not an IPv6 address")
    name = host[:-1] if host.endswith(".") else host
    labels = name.split(".")
    if len(name) > _MAX_HOSTNAME_LENGTH or not all(_HOST_LABEL_RE.match(label) for label in labels):
        raise ValueError("Client ID host is not a valid domain name")
    # No top-level domain starts with a digit, while resolvers read
    # "134744072", "8.8.8.8." or "0x8.8.8.8" as IPv4 addresses; refusing them
    # keeps public IPs from passing as names.
    if labels[-1][0].isdigit():
        raise ValueError("Client ID host is neither a domain name nor an IP address")
    return None


def _parse_client_id(client_id: str) -> tuple[SplitResult, IPAddress | None]:
    """Validate a client id (IndieAuth 3.2, SPEC 5.4); ValueError if invalid."""
    if not client_id or _UNSAFE_CHARS_RE.search(client_id):
        raise ValueError("Client ID is empty or contains whitespace or control characters")
    parts = _parse_url(client_id)
    if parts.scheme not in ("http", "https"):
        raise ValueError("Client ID must use http or https")
    if any(unquote(segment) in (".", "..") for segment in parts.path.split("/")):
        raise ValueError("Client ID cannot contain single-dot or double-dot path segments")
    # An empty fragment ("…/#") is still a fragment component.
    if "#" in client_id:
        raise ValueError("Client ID cannot contain a fragment")
    # An empty userinfo ("http://@host/") is still a userinfo component.
    if "@" in parts.netloc:
        raise ValueError("Client ID cannot contain a username or password")
    # .port raises ValueError for a non-numeric or out-of-range port.
    _ = parts.port
    return parts, _check_hostname(parts)


def verify_client_id(client_id: str) -> bool:
    """Return True when client_id is a valid IndieAuth client id for this server."""
    try:
        _parse_client_id(client_id)
    except ValueError:
        return False
    return True


def verify_redirect_uri_sync(client_id: str, redirect_uri: str) -> bool | None:
    """Decide a redirect uri offline; None when the client page must be fetched."""
    try:
        client_parts, client_address = _parse_client_id(client_id)
    except ValueError:
        return False

    # The mobile apps must be linkable without the server reaching the internet.
    if client_id in MOBILE_CLIENT_IDS and redirect_uri == MOBILE_REDIRECT_URI:
        return True
    if redirect_uri in HA_MOBILE_REDIRECT_URIS.get(client_id, ()):
        return True

    if not redirect_uri or _UNSAFE_CHARS_RE.search(redirect_uri):
        return False
    try:
        redirect_parts = _parse_url(redirect_uri)
    except ValueError:
        return False
    # Any other scheme ("javascript:", custom app schemes) could run code or
    # hand the code to another app; only the mobile case above may use one.
    if redirect_parts.scheme not in ("http", "https"):
        return False

    if redirect_parts.scheme == client_parts.scheme and redirect_parts.netloc == client_parts.netloc:
        return True

    # Fetching pages at IP client ids would let anonymous callers probe the LAN.
    if client_address is not None:
        return False
    return None


async def verify_redirect_uri(session: aiohttp.ClientSession | None, client_id: str, redirect_uri: str) -> bool:
    """Return True when redirect_uri may receive client_id's authorization code."""
    decided = verify_redirect_uri_sync(client_id, redirect_uri)
    if decided is not None:
        return decided
    # IndieAuth 4.2.2: a redirect uri on another host must be published at the
    # client id and matched exactly after resolving relative URLs.
    return redirect_uri in await fetch_redirect_uris(session, client_id)


class _LinkTagParser(HTMLParser):
    """Collect the hrefs of <link> tags whose rel includes a given value."""

    def __init__(self, rel: str) -> None:
        """Start a parser looking for rel."""
        super().__init__()
        self.rel = rel
        self.found: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        """Record the href of a matching <link> tag."""
        if tag != "link":
            return
        attributes: dict[str, str | None] = {}
        for key, value in attrs:
            # HTML keeps the first of duplicated attributes.
            attributes.setdefault(key, value)
        rel = attributes.get("rel") or ""
        href = attributes.get("href")
        if href is not None and self.rel in rel.lower().split():
            self.found.append(href)


def _link_header_targets(values: list[str], rel: str) -> list[str]:
    """Return the targets of RFC 8288 Link header values whose rel includes rel."""
    targets: list[str] = []
    for value in values:
        for link in _LINK_HEADER_SPLIT_RE.split(value):
            match = _LINK_VALUE_RE.match(link)
            if match is None:
                continue
            target, params = match.groups()
            for param in params.split(";"):
                key, sep, param_value = param.partition("=")
                if sep and key.strip().lower() == "rel":
                    if rel in param_value.strip().strip('"').lower().split():
                        targets.append(target)
                    # RFC 8288 3.3: only the first rel parameter counts.
                    break
    return targets


async def _resolve(host: str, port: int) -> list[IPAddress]:
    """Look up the addresses of host with the running loop's resolver."""
    loop = asyncio.get_running_loop()
    infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP)
    addresses: list[IPAddress] = []
    for _family, _type, _proto, _canonname, sockaddr in infos:
        address = ipaddress.ip_address(sockaddr[0])
        if address not in addresses:
            addresses.append(address)
    return addresses


async def _read_bounded(response: aiohttp.ClientResponse, limit: int) -> bytes:
    """Read at most limit bytes of the response body."""
    chunks: list[bytes] = []
    remaining = limit
    while remaining > 0:
        chunk = await response.content.read(remaining)
        if not chunk:
            break
        chunks.append(chunk)
        remaining -= len(chunk)
    return b"".join(chunks)


async def _fetch_from(session: aiohttp.ClientSession, url: yarl.URL, address: IPAddress | None) -> list[str]:
    """GET url (from address when given); return the raw redirect_uri targets."""
    request_url = url
    headers = {"Accept": "text/html, */*;q=0.1"}
    server_hostname: str | None = None
    if address is not None:
        # Connect to the address that passed the check instead of letting the
        # client resolve the name again, so DNS rebinding cannot swap it.
        host = url.raw_host or ""
        request_url = url.with_host(str(address))
        headers["Host"] = host if url.is_default_port() else f"{host}:{url.port}"
        if url.scheme == "https":
            server_hostname = host
    async with session.get(
        request_url,
        headers=headers,
        allow_redirects=False,
        server_hostname=server_hostname,
        timeout=aiohttp.ClientTimeout(total=FETCH_TIMEOUT),
    ) as response:
        if not 200 <= response.status < 300:
            # A redirect is not followed: its target was never checked.
            _LOGGER.error(
                "Unexpected HTTP status %s while looking up redirect_uri %s",
                response.status,
                url,
            )
            return []
        targets = _link_header_targets(response.headers.getall(aiohttp.hdrs.LINK, []), "redirect_uri")
        body = await _read_bounded(response, MAX_BODY_BYTES)
    # Decoding once, after the cut, cannot fail on a multi-byte character
    # split between reads (bug G2); a character split by the cut is replaced.
    parser = _LinkTagParser("redirect_uri")
    parser.feed(body.decode("utf-8", errors="replace"))
    parser.close()
    return targets + parser.found


async def _fetch(
    session: aiohttp.ClientSession,
    url: str,
    literal_address: IPAddress | None,
    address_allowed: Callable[[IPAddress], bool],
) -> list[str]:
    """Resolve and check the host, then fetch from the first address answering."""
    yurl = yarl.URL(url)
    if literal_address is not None:
        # The client id names this (loopback or private) address itself.
        return await _fetch_from(session, yurl, None)
    if not yurl.raw_host or yurl.port is None:
        raise ValueError(f"no host or port in {url}")
    addresses = await _resolve(yurl.raw_host, yurl.port)
    if not addresses:
        raise OSError(f"no addresses for {yurl.raw_host}")
    for address in addresses:
        # One refused address refuses the name: the attacker owns its records.
        if not address_allowed(address):
            raise _RefusedAddressError(address)
    last_error: aiohttp.ClientConnectorError | None = None
    for address in addresses[:MAX_ADDRESSES_TRIED]:
        try:
            return await _fetch_from(session, yurl, address)
        except aiohttp.ClientSSLError:
            raise
        except aiohttp.ClientConnectorError as err:
            last_error = err
    raise last_error if last_error is not None else OSError("no address tried")


async def fetch_redirect_uris(
    session: aiohttp.ClientSession | None,
    url: str,
    *,
    address_allowed: Callable[[IPAddress], bool] | None = None,
) -> list[str]:
    """Return the redirect uris published at client id url; [] on any failure.

    ``address_allowed`` decides which resolved addresses of a domain-name
    client id may be contacted (default: public unicast only).
    """
    try:
        _parts, literal_address = _parse_client_id(url)
    except ValueError as err:
        _LOGGER.error("Not looking up redirect_uri at invalid client id %s: %s", url, err)
        return []
    allowed = address_allowed if address_allowed is not None else _allow_address
    try:
        async with asyncio.timeout(FETCH_TIMEOUT):
            if session is not None:
                targets = await _fetch(session, url, literal_address, allowed)
            else:
                async with aiohttp.ClientSession() as own_session:
                    targets = await _fetch(own_session, url, literal_address, allowed)
    except TimeoutError:
        _LOGGER.error("Timeout while looking up redirect_uri %s", url)
        return []
    except _RefusedAddressError as err:
        _LOGGER.error(
            "Refusing to look up redirect_uri %s: its host resolves to non-public address %s",
            url,
            err,
        )
        return []
    except aiohttp.client_exceptions.ClientSSLError:
        _LOGGER.error("SSL error while looking up redirect_uri %s", url)
        return []
    except aiohttp.client_exceptions.ClientOSError as err:
        _LOGGER.error("OS error while looking up redirect_uri %s: %s", url, err.strerror)
        return []
    except aiohttp.client_exceptions.ClientConnectionError:
        _LOGGER.error("Low level connection error while looking up redirect_uri %s", url)
        return []
    except aiohttp.client_exceptions.ClientError:
        _LOGGER.error("Unknown error while looking up redirect_uri %s", url)
        return []
    except OSError as err:
        # Name resolution failures (socket.gaierror) land here.
        _LOGGER.error("OS error while looking up redirect_uri %s: %s", url, err.strerror or err)
        return []
    except Exception:  # anonymous input must never become a 500
        _LOGGER.exception("Unknown error while looking up redirect_uri %s", url)
        return []

    uris: list[str] = []
    for target in targets:
        try:
            # Browsers strip surrounding whitespace from URL attributes.
            uri = urljoin(url, target.strip())
        except ValueError:
            continue
        if uri not in uris:
            uris.append(uri)
    return uris

"""Log in through an OpenID Connect provider (type ``oidc``): opp-auth as a relying party.

The login flow is an external step: the page sends the browser to the
provider's authorization endpoint (authorization code flow, PKCE S256, state
and nonce), the provider sends it back to ``GET /auth/oidc/callback``, which
trades the code for tokens, checks the ID token (signature against the
provider's JWKS, re-fetched once for an unknown ``kid``; ``iss``, ``aud``,
``azp``, ``exp``, ``iat`` with a small leeway; only asymmetric algorithms, so
``alg: none`` and HMAC keyed with a public key are refused), records the
outcome on the flow and sends the browser back to ``/auth/authorize?resume=<flow id>``.
The page then submits the flow again and the flow finishes (MFA still
applies). Users are keyed by issuer and ``sub``.

With several servers on one storage (``PluginContext.shared_state``) the flow is shared
(``SHARED_STATE``) and the callback and the wait step may reach any server: the pending entry of a
state and the outcome of a flow are shared values sealed with the key of sessions.py, the first
taken once by the server the callback reaches, the second by the flow's wait step. With the JSON
store both stay in this process's memory.

JOSE is joserfc's (the maintained successor of Authlib's jose module, with
no HTTP client of its own): the HTTP side is the server's own aiohttp, so
nothing blocks the event loop and no second HTTP stack is pulled in.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import ipaddress
import json
import logging
import secrets
import time
import weakref
from collections import OrderedDict
from typing import Any
from urllib.parse import quote, urlencode, urlsplit

import aiohttp
import voluptuous as vol
from aiohttp import web
from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import KeySet
from joserfc.jws import extract_compact
from joserfc.jwt import JWTClaimsRegistry

from opp_auth import (
    AuthProvider,
    Credentials,
    FlowResult,
    GroupMapping,
    InvalidAuthError,
    LoginFlow,
    RefreshToken,
    User,
    UserMeta,
    hookimpl,
    is_safe_username,
)

from .sessions import Sessions

_LOGGER = logging.getLogger(__name__)

CALLBACK_PATH = "/auth/oidc/callback"
RESUME_PATH = "/auth/authorize"
# Only asymmetric signatures: "none" and every HMAC algorithm are refused whatever the token says.
ASYMMETRIC_ALGORITHMS = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA")
LEEWAY = 60
MAX_BODY = 1024 * 1024
PENDING_TTL = 600.0
MAX_PENDING = 1000
JWKS_MIN_REFETCH = 10.0
MAX_USERNAME = 256
# Refresh tokens of one user tied to this provider's logins: past this, a new login revokes the oldest.
MAX_SESSIONS_PER_USER = 32
# Defaults: how long a good answer of the provider is cached (s), and how long it stands while the
# provider cannot be reached (s). A session in use refreshes every 30 minutes (the access token's
# lifetime), so its last answer is up to 30 minutes old: an hour lets it ride out a short outage.
RECHECK_INTERVAL = 300
OUTAGE_GRACE = 3600
# Grants of finished logins waiting for their code to be traded, per subject.
MAX_WAITING_GRANTS = 16
TOKEN_TYPE_LONG_LIVED = "long_lived_access_token"

# Flow abort reasons (the login page has a sentence for each).
CANNOT_CONNECT = "cannot_connect"
SSO_FAILED = "sso_failed"
SSO_DENIED = "sso_denied"
NOT_MEMBER = "sso_not_member"
LOGIN_EXPIRED = "login_expired"
# Not a flow reason: the provider will never accept this grant again (revoked, expired without a refresh token).
GRANT_GONE = "grant_gone"


class OidcError(Exception):
    """The provider's answer cannot be accepted; str() says why, for the log."""

    def __init__(self, message: str, reason: str = SSO_FAILED) -> None:
        """Keep the flow abort reason."""
        super().__init__(message)
        self.reason = reason


def _is_loopback_host(host: str | None) -> bool:
    """localhost or a loopback address (plain http is allowed only there, for tests and local providers)."""
    if host is None:
        return False
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _issuer(value: Any) -> str:
    """An https URL (http only on loopback), without query or fragment; a trailing slash is kept as given."""
    if not isinstance(value, str):
        raise vol.Invalid("issuer must be a URL such as https://auth.example.org/application/o/opp/")
    parts = urlsplit(value)
    if parts.scheme not in ("https", "http") or not parts.hostname:
        raise vol.Invalid(f"issuer {value!r} is not an https URL")
    if parts.scheme == "http" and not _is_loopback_host(parts.hostname):
        raise vol.Invalid(f"issuer {value!r} must use https (plain http only on a loopback address)")
    if parts.query or parts.fragment:
        raise vol.Invalid(f"issuer {value!r} must have no query or fragment")
    # A plain str: the issuer goes into credentials, and a YAML node's str subclass cannot be stored.
    return str(value)


def _redirect_uri(value: Any) -> str:
    """The callback URL as the provider knows it: https (http on loopback), ending in /auth/oidc/callback."""
    text = _issuer(value)
    if urlsplit(text).path != CALLBACK_PATH:
        raise vol.Invalid(f"redirect_uri must end in {CALLBACK_PATH}")
    return text


def _scopes(value: Any) -> list[str]:
    """A list of scopes (or one space-separated string) that includes openid."""
    items = value.split() if isinstance(value, str) else value
    if not isinstance(items, list) or not all(isinstance(s, str) and s and " " not in s for s in items):
        raise vol.Invalid("scopes must be a list of scope names")
    if "openid" not in items:
        raise vol.Invalid("scopes must include openid")
    return list(dict.fromkeys(items))


_CLAIM = vol.All(str, vol.Length(min=1, max=128))

CONFIG_SCHEMA = AuthProvider.CONFIG_SCHEMA.extend(
    {
        vol.Required("issuer"): _issuer,
        vol.Required("client_id"): vol.All(str, vol.Length(min=1, max=512)),
        vol.Optional("client_secret"): vol.All(str, vol.Length(min=1, max=4096)),
        vol.Optional("scopes", default=["openid", "profile", "email"]): _scopes,
        vol.Optional("username_claim", default="preferred_username"): _CLAIM,
        vol.Optional("name_claim", default="name"): _CLAIM,
        vol.Optional("groups_claim", default="groups"): _CLAIM,
        **GroupMapping.schema(),
        vol.Optional("title"): vol.All(str, vol.Length(min=1, max=200)),
        vol.Optional("create_users", default=True): bool,
        vol.Optional("redirect_uri"): _redirect_uri,
        vol.Optional("timeout", default=10): vol.All(vol.Coerce(float), vol.Range(min=0.1, max=120)),
        vol.Optional("recheck_interval", default=RECHECK_INTERVAL): vol.All(
            vol.Coerce(float), vol.Range(min=0, max=86400)
        ),
        vol.Optional("outage_grace", default=OUTAGE_GRACE): vol.All(vol.Coerce(float), vol.Range(min=0, max=86400)),
    },
    extra=vol.PREVENT_EXTRA,
)


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def pkce_pair() -> tuple[str, str]:
    """(code_verifier, S256 code_challenge)."""
    verifier = secrets.token_urlsafe(48)
    return verifier, _b64url(hashlib.sha256(verifier.encode()).digest())


class Identity:
    """What the provider said about the person (rides on new credentials as meta; never stored)."""

    def __init__(
        self,
        issuer: str,
        sub: str,
        username: str,
        name: str | None,
        groups: set[str],
        group: str,
        sid: str | None = None,
    ) -> None:
        """Keep the claims that matter."""
        self.sid = sid
        # The provider's own tokens of this login: what a refresh re-check asks userinfo with.
        self.access_token: str | None = None
        self.refresh_token: str | None = None
        self.issuer = issuer
        self.sub = sub
        self.username = username
        self.name = name
        self.groups = groups
        self.group = group


def identity_value(identity: Identity) -> dict[str, Any]:
    """An Identity as JSON (the provider's tokens included: seal it before it leaves the process)."""
    return {
        "iss": identity.issuer,
        "sub": identity.sub,
        "username": identity.username,
        "name": identity.name,
        "groups": sorted(identity.groups),
        "group": identity.group,
        "sid": identity.sid,
        "access_token": identity.access_token,
        "refresh_token": identity.refresh_token,
    }


def identity_of(value: Any) -> Identity | None:
    """The Identity identity_value gave; None for anything else."""
    if not isinstance(value, dict):
        return None
    iss, sub, username, group, groups = (value.get(k) for k in ("iss", "sub", "username", "group", "groups"))
    if not (
        all(isinstance(v, str) and v for v in (iss, sub, username, group))
        and isinstance(groups, list)
        and all(isinstance(g, str) for g in groups)
        and all(value.get(k) is None or isinstance(value.get(k), str) for k in ("name", "sid"))
        and all(value.get(k) is None or isinstance(value.get(k), str) for k in ("access_token", "refresh_token"))
    ):
        return None
    identity = Identity(str(iss), str(sub), str(username), value.get("name"), set(groups), str(group), value.get("sid"))
    identity.access_token = value.get("access_token")
    identity.refresh_token = value.get("refresh_token")
    return identity


class Pending:
    """A login waiting for the provider: its secrets and, once the callback ran, the outcome.

    flow is the flow object on one server (the JSON store); with a shared state it is None and the
    entry travels as a sealed shared value (see OidcAuthProvider.async_authorization_url).
    """

    def __init__(self, flow: OidcLoginFlow | None, redirect_uri: str, flow_id: str = "") -> None:
        """Fresh state, nonce and PKCE verifier."""
        self.flow = flow
        self.flow_id = flow.flow_id if flow is not None else flow_id
        self.redirect_uri = redirect_uri
        self.state = secrets.token_urlsafe(32)
        self.nonce = secrets.token_urlsafe(32)
        self.verifier, self.challenge = pkce_pair()
        self.expires = time.monotonic() + PENDING_TTL


PENDING_KEY = "oidc.pending."


def _pending_binding(provider_id: str, state: str) -> str:
    return f"oidc-pending:{provider_id}:{state}"


def _outcome_binding(provider_id: str, flow_id: str) -> str:
    return f"oidc-outcome:{provider_id}:{flow_id}"


def _flow_binding(provider_id: str, user_id: str, credentials_id: str) -> str:
    return f"oidc-flow:{provider_id}:{user_id}:{credentials_id}"


class OidcAuthProvider(AuthProvider):
    """A relying party of one OpenID provider."""

    TYPE = "oidc"
    DEFAULT_TITLE = "OpenID Connect"
    CONFIG_SCHEMA = CONFIG_SCHEMA

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        """Nothing is fetched before start-up."""
        super().__init__(*args, **kwargs)
        self.issuer: str = self.config["issuer"]
        self.group_mapping = GroupMapping(self.config)
        self._session: aiohttp.ClientSession | None = None
        self._metadata: dict[str, Any] | None = None
        self._keys: KeySet | None = None
        self._keys_refetched = -JWKS_MIN_REFETCH
        self._lock = asyncio.Lock()
        self.pending: OrderedDict[str, Pending] = OrderedDict()
        # Per refresh token: its provider sessions (sid), the provider's tokens of its login and when the
        # provider last confirmed the user, kept in .storage (sessions.py). Until a login's code is
        # traded for a refresh token, its sids and provider tokens wait here, by subject.
        self.sessions = Sessions(self.auth, f"auth_provider.oidc.{self.id or 'default'}")
        self._login_sids: dict[str, list[tuple[str, float]]] = {}
        self._login_grants: dict[str, list[tuple[dict[str, str | None], float]]] = {}
        # Refusals of the provider, cached recheck_interval seconds (monotonic expiry), by grant.
        self._refused: OrderedDict[str, float] = OrderedDict()
        # One re-check at a time per grant: two renewals with one provider refresh token look like a
        # replay to a provider that rotates them, and it would revoke the grant.
        self._recheck_locks: weakref.WeakValueDictionary[str, asyncio.Lock] = weakref.WeakValueDictionary()
        self._seen_jti: OrderedDict[str, float] = OrderedDict()

    @property
    def name(self) -> str:
        """title, else name, else the default."""
        return str(self.config.get("title") or self.config.get("name") or self.DEFAULT_TITLE)

    # ---- the provider's documents ----------------------------------------------------------

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self.config["timeout"]))
        return self._session

    async def _fetch_json(self, method: str, url: str, **kwargs: Any) -> tuple[int, Any]:
        """(status, JSON body) of a request to the provider; OidcError(cannot_connect) when it cannot be had."""
        try:
            async with self._http().request(method, url, allow_redirects=False, **kwargs) as resp:
                body = await resp.content.read(MAX_BODY + 1)
                if len(body) > MAX_BODY:
                    raise OidcError(f"{url} answered more than {MAX_BODY} bytes", CANNOT_CONNECT)
                try:
                    return resp.status, json.loads(body)
                except ValueError as err:
                    raise OidcError(f"{url} answered {resp.status} with no JSON", CANNOT_CONNECT) from err
        except (aiohttp.ClientError, TimeoutError, UnicodeError, ValueError) as err:
            if isinstance(err, OidcError):
                raise
            raise OidcError(f"{url} cannot be reached: {err!r}", CANNOT_CONNECT) from err

    async def async_metadata(self) -> dict[str, Any]:
        """The discovery document (fetched once, again after a failure)."""
        if self._metadata is not None:
            return self._metadata
        async with self._lock:
            if self._metadata is None:
                url = self.issuer.rstrip("/") + "/.well-known/openid-configuration"
                status, doc = await self._fetch_json("GET", url)
                if status != 200 or not isinstance(doc, dict):
                    raise OidcError(f"discovery {url} answered {status}", CANNOT_CONNECT)
                if doc.get("issuer") != self.issuer:
                    raise OidcError(
                        f"discovery names issuer {doc.get('issuer')!r}, not {self.issuer!r}", CANNOT_CONNECT
                    )
                for key in ("authorization_endpoint", "token_endpoint", "jwks_uri"):
                    if not isinstance(doc.get(key), str) or urlsplit(doc[key]).scheme not in ("https", "http"):
                        raise OidcError(f"discovery has no usable {key}", CANNOT_CONNECT)
                self._metadata = doc
        return self._metadata

    async def async_keys(self, refetch: bool = False) -> KeySet:
        """The provider's JWKS; refetch=True fetches again (at most every JWKS_MIN_REFETCH seconds)."""
        async with self._lock:
            # A token naming an unknown kid re-fetches, but not more often than every JWKS_MIN_REFETCH seconds,
            # so a stream of forged kids cannot make us hammer the provider.
            recent = time.monotonic() - self._keys_refetched < JWKS_MIN_REFETCH
            if self._keys is None or (refetch and not recent):
                if refetch:
                    self._keys_refetched = time.monotonic()
                metadata = self._metadata or {}
                status, doc = await self._fetch_json("GET", metadata["jwks_uri"])
                if status != 200 or not isinstance(doc, dict) or not isinstance(doc.get("keys"), list):
                    raise OidcError(f"jwks_uri answered {status} without keys", CANNOT_CONNECT)
                usable = [k for k in doc["keys"] if isinstance(k, dict) and k.get("kty") in ("RSA", "EC", "OKP")]
                try:
                    self._keys = KeySet.import_key_set({"keys": usable})
                except (JoseError, ValueError, TypeError) as err:
                    raise OidcError(f"jwks_uri holds unusable keys: {err}", CANNOT_CONNECT) from err
            return self._keys

    async def async_initialize(self) -> None:
        """Load the sessions; fetch discovery and keys so problems are logged early (a login retries)."""
        await self.sessions.async_load()
        try:
            await self.async_metadata()
            await self.async_keys()
        except OidcError as err:
            _LOGGER.error("OpenID provider %s: %s; logins with it fail until it answers", self.issuer, err)

    async def async_shutdown(self) -> None:
        """Close the HTTP session."""
        if self._session is not None:
            await self._session.close()

    # ---- the login -------------------------------------------------------------------------

    def _purge(self) -> None:
        now = time.monotonic()
        while self.pending:
            state, pending = next(iter(self.pending.items()))
            if pending.expires > now and len(self.pending) <= MAX_PENDING:
                break
            del self.pending[state]

    def redirect_uri_for(self, context: dict[str, Any]) -> str | None:
        """The configured redirect_uri, else the login page's own origin (its POST's Origin header)."""
        if self.config.get("redirect_uri"):
            return str(self.config["redirect_uri"])
        headers = context.get("headers") or {}
        origin = headers.get("Origin") if hasattr(headers, "get") else None
        if not isinstance(origin, str):
            return None
        parts = urlsplit(origin)
        if parts.scheme not in ("https", "http") or not parts.netloc or parts.path not in ("", "/"):
            return None
        return f"{parts.scheme}://{parts.netloc}{CALLBACK_PATH}"

    async def async_login_flow(self, context: dict[str, Any]) -> LoginFlow:
        """An external step to the provider."""
        return OidcLoginFlow(self, self.redirect_uri_for(context))

    async def async_authorization_url(self, flow: OidcLoginFlow, redirect_uri: str) -> str:
        """Register a pending login and return the provider URL to send the browser to.

        One server (the JSON store): the entry stays in memory with the flow object. Several
        servers on one storage: it is a shared value under ``oidc.pending.<state>`` that the
        callback takes once on whichever server it reaches: the provider id in the clear, the
        rest (flow id, nonce, PKCE verifier, redirect_uri, expiry) sealed with the key of
        .opp-auth-oidc-key, bound to the provider and the state.
        """
        metadata = await self.async_metadata()
        if self.auth.shared_state:
            pending = Pending(None, redirect_uri, flow.flow_id)
            secret = {
                "flow": pending.flow_id,
                "nonce": pending.nonce,
                "verifier": pending.verifier,
                "redirect_uri": redirect_uri,
                "expires": time.time() + PENDING_TTL,
            }
            provider_id = self.id or ""
            sealed = self.sessions.seal(_pending_binding(provider_id, pending.state), secret)
            await self.auth.async_put_shared(
                PENDING_KEY + pending.state, {"provider": provider_id, "sealed": sealed}, PENDING_TTL
            )
        else:
            self._purge()
            pending = Pending(flow, redirect_uri)
            self.pending[pending.state] = pending
        query = {
            "response_type": "code",
            "client_id": self.config["client_id"],
            "redirect_uri": redirect_uri,
            "scope": " ".join(self.config["scopes"]),
            "state": pending.state,
            "nonce": pending.nonce,
            "code_challenge": pending.challenge,
            "code_challenge_method": "S256",
        }
        endpoint = metadata["authorization_endpoint"]
        return endpoint + ("&" if "?" in endpoint else "?") + urlencode(query)

    def take_pending(self, state: str) -> Pending | None:
        """The pending login of a state, removed (a state works once)."""
        self._purge()
        return self.pending.pop(state, None)

    def pending_from(self, state: str, sealed: Any) -> Pending | None:
        """A shared pending entry taken for state, unsealed; None when it does not unseal or has expired."""
        secret = self.sessions.unseal(_pending_binding(self.id or "", state), sealed)
        if secret is None:
            _LOGGER.warning("OpenID login state of %s refused: its shared entry does not unseal", self.issuer)
            return None
        flow_id, nonce, verifier = secret.get("flow"), secret.get("nonce"), secret.get("verifier")
        redirect_uri, expires = secret.get("redirect_uri"), secret.get("expires")
        if not (
            all(isinstance(v, str) and v for v in (flow_id, nonce, verifier, redirect_uri))
            and isinstance(expires, (int, float))
            and not isinstance(expires, bool)
        ):
            return None
        if time.time() > expires + LEEWAY:  # the database's clock decides; this one too, with leeway
            return None
        pending = Pending(None, str(redirect_uri), str(flow_id))
        pending.state, pending.nonce, pending.verifier = state, str(nonce), str(verifier)
        return pending

    def _outcome_key(self, flow_id: str) -> str:
        return f"oidc.{self.id or ''}.outcome.{flow_id}"

    async def async_put_outcome(self, flow_id: str, outcome: Identity | OidcError) -> None:
        """Record a callback's outcome for the flow's wait step on any server: sealed, bound to provider and flow."""
        if isinstance(outcome, Identity):
            value: dict[str, Any] = {"flow": flow_id, "identity": identity_value(outcome)}
        else:
            value = {"flow": flow_id, "error": outcome.reason, "message": str(outcome)[:500]}
        sealed = self.sessions.seal(_outcome_binding(self.id or "", flow_id), value)
        await self.auth.async_put_shared(self._outcome_key(flow_id), {"sealed": sealed}, PENDING_TTL)

    async def async_take_outcome(self, flow_id: str) -> Identity | OidcError | None:
        """The outcome a callback recorded for this flow, taken (once, on any server); None when there is none."""
        taken = await self.auth.async_take_shared(self._outcome_key(flow_id))
        if taken is None:
            return None
        value = self.sessions.unseal(_outcome_binding(self.id or "", flow_id), taken.get("sealed"))
        if value is None or value.get("flow") != flow_id:
            _LOGGER.warning("OpenID login outcome of %s refused: it does not unseal for this flow", self.issuer)
            return None
        if "error" in value:
            reason = value.get("error")
            return OidcError(str(value.get("message")), reason if isinstance(reason, str) else SSO_FAILED)
        return identity_of(value.get("identity"))

    def flow_binding(self, flow_id: str, user_id: str, credentials_id: str) -> str:
        """Proof, for a flow's stored state, that this flow's wait step verified this user's login."""
        return self.sessions.seal(
            _flow_binding(self.id or "", user_id, credentials_id), {"flow": flow_id, "user": user_id}
        )

    def flow_bound(self, sealed: Any, user_id: str, credentials_id: str) -> str | None:
        """The flow id a flow_binding proves for this user and credentials; None when it proves nothing."""
        value = self.sessions.unseal(_flow_binding(self.id or "", user_id, credentials_id), sealed)
        flow_id = value.get("flow") if value is not None and value.get("user") == user_id else None
        return flow_id if isinstance(flow_id, str) else None

    async def async_complete(self, pending: Pending, code: str) -> Identity:
        """Trade the code, check the ID token, read the claims; OidcError when anything is wrong."""
        metadata = await self.async_metadata()
        form = {
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": pending.redirect_uri,
            "code_verifier": pending.verifier,
        }
        status, tokens = await self._async_token_request(form)
        if status != 200 or not isinstance(tokens, dict):
            raise OidcError(f"token endpoint answered {status}: {str(tokens)[:200]}")
        id_token = tokens.get("id_token")
        if not isinstance(id_token, str):
            raise OidcError("token response without id_token")
        claims = await self.async_verify_id_token(id_token, pending.nonce)
        access_token = tokens.get("access_token")
        userinfo_url = metadata.get("userinfo_endpoint")
        if isinstance(access_token, str) and isinstance(userinfo_url, str):
            status, info = await self._fetch_json(
                "GET", userinfo_url, headers={"Authorization": f"Bearer {access_token}"}
            )
            if status == 200 and isinstance(info, dict):
                if info.get("sub") != claims["sub"]:
                    raise OidcError("userinfo names another subject")
                claims = {**info, **claims}
        identity = self.identity_from(claims)
        identity.access_token = access_token if isinstance(access_token, str) else None
        refresh = tokens.get("refresh_token")
        identity.refresh_token = refresh if isinstance(refresh, str) else None
        return identity

    async def _async_token_request(self, form: dict[str, str]) -> tuple[int, Any]:
        """POST form to the token endpoint as this client: client_secret_basic, or client_id for a public one."""
        metadata = await self.async_metadata()
        kwargs: dict[str, Any] = {}
        if self.config.get("client_secret"):
            # client_secret_basic: each part form-urlencoded first (RFC 6749, 2.3.1).
            pair = f"{quote(self.config['client_id'], safe='')}:{quote(self.config['client_secret'], safe='')}"
            kwargs["headers"] = {"Authorization": "Basic " + base64.b64encode(pair.encode()).decode()}
        else:
            form = {**form, "client_id": self.config["client_id"]}
        return await self._fetch_json("POST", metadata["token_endpoint"], data=form, **kwargs)

    async def async_verify_id_token(self, id_token: str, nonce: str) -> dict[str, Any]:
        """Check signature and claims; return the claims."""
        try:
            header = extract_compact(id_token.encode()).protected
        except (JoseError, ValueError, TypeError) as err:
            raise OidcError(f"ID token is not a JWS: {err}") from err
        alg = header.get("alg")
        supported = (self._metadata or {}).get("id_token_signing_alg_values_supported") or ["RS256"]
        allowed = [a for a in ASYMMETRIC_ALGORITHMS if a in supported] or ["RS256"]
        if alg not in allowed:
            raise OidcError(f"ID token signed with {alg!r}; only {', '.join(allowed)} are accepted")
        keys = await self.async_keys()
        kid = header.get("kid")
        if kid is not None and not any(k.kid == kid for k in keys.keys):
            keys = await self.async_keys(refetch=True)  # the provider may have rotated its keys
            if not any(k.kid == kid for k in keys.keys):
                raise OidcError(f"ID token signed with unknown key {kid!r}")
        try:
            token = jwt.decode(id_token, keys, algorithms=allowed)
        except (JoseError, ValueError, TypeError) as err:
            raise OidcError(f"ID token signature refused: {err}") from err
        claims = dict(token.claims)
        registry = JWTClaimsRegistry(
            leeway=LEEWAY,
            iss={"essential": True, "value": self.issuer},
            sub={"essential": True},
            aud={"essential": True, "value": self.config["client_id"]},
            exp={"essential": True},
            iat={"essential": True},
            nonce={"essential": True, "value": nonce},
        )
        try:
            registry.validate(claims)
        except (JoseError, ValueError, TypeError) as err:
            raise OidcError(f"ID token claims refused: {err}") from err
        aud = claims["aud"]
        if isinstance(aud, list) and len(aud) > 1 and claims.get("azp") != self.config["client_id"]:
            raise OidcError("ID token for several audiences without this client as azp")
        if "azp" in claims and claims["azp"] != self.config["client_id"]:
            raise OidcError(f"ID token azp is {claims['azp']!r}")
        if not isinstance(claims["iat"], (int, float)) or claims["iat"] > time.time() + LEEWAY:
            raise OidcError("ID token issued in the future")
        if not isinstance(claims["sub"], str) or not claims["sub"] or len(claims["sub"]) > 255:
            raise OidcError("ID token sub is not a string of 1 to 255 characters")
        return claims

    def identity_from(self, claims: dict[str, Any]) -> Identity:
        """Username, name, groups and group from the claims (OidcError when a required group is missing)."""
        raw = claims.get(self.config["username_claim"])
        if not isinstance(raw, str) or not raw.strip():
            raw = claims["sub"]
        if not is_safe_username(raw) or len(raw) > MAX_USERNAME:
            raise OidcError(f"claim {self.config['username_claim']} holds an unsafe username")
        username = raw.strip().casefold()
        name = claims.get(self.config["name_claim"])
        if not isinstance(name, str) or not name.strip() or not is_safe_username(name):
            name = None
        raw_groups = claims.get(self.config["groups_claim"])
        groups = {g for g in raw_groups if isinstance(g, str)} if isinstance(raw_groups, list) else set()
        if not self.group_mapping.allows(groups):
            raise OidcError(f"{username!r} is in none of the required_groups", NOT_MEMBER)
        group = self.group_mapping.group_for(groups)
        sid = claims.get("sid") if isinstance(claims.get("sid"), str) and len(claims["sid"]) <= 255 else None
        return Identity(self.issuer, claims["sub"], username, name and name.strip(), groups, group, sid)

    # ---- back-channel logout ----------------------------------------------------------------------

    def note_login_sid(self, sub: str, sid: str | None) -> None:
        """A login of sub at provider session sid finished; its refresh token is created when the code is traded."""
        if sid is None:
            return
        now = time.monotonic()
        entries = [(s, t) for s, t in self._login_sids.get(sub, []) if t > now][-16:]
        entries.append((sid, now + PENDING_TTL))
        self._login_sids[sub] = entries
        if len(self._login_sids) > MAX_PENDING:
            self._login_sids.pop(next(iter(self._login_sids)))

    def _waiting_key(self, sub: str) -> str:
        return f"oidc.{self.id or ''}.waiting.{sub}"

    async def async_note_login(
        self, sub: str, sid: str | None, access_token: str | None, refresh_token: str | None
    ) -> None:
        """A login of sub finished: its sid and the provider's tokens wait for the refresh token its code makes.

        One server: in memory (note_login_sid, note_login_grant). Several: the code may be traded on
        another server, so they wait in a shared value per subject, sealed with the key.
        """
        if not self.auth.shared_state:
            self.note_login_sid(sub, sid)
            self.note_login_grant(sub, access_token, refresh_token)
            return
        if sid is None and access_token is None and refresh_token is None:
            return
        sids, grants = await self._async_take_waiting(sub)
        until = time.time() + PENDING_TTL
        if sid is not None:
            sids = [*sids[-15:], (sid, until)]
        if access_token is not None or refresh_token is not None:
            grant = {"access_token": access_token, "refresh_token": refresh_token}
            grants = [*grants[-(MAX_WAITING_GRANTS - 1) :], (grant, until)]
        await self._async_put_waiting(sub, sids, grants)

    async def _async_take_waiting(
        self, sub: str
    ) -> tuple[list[tuple[str, float]], list[tuple[dict[str, str | None], float]]]:
        """The shared waiting sids and grants of sub (taken; the live ones)."""
        taken = await self.auth.async_take_shared(self._waiting_key(sub))
        value = self.sessions.unseal(f"oidc-waiting:{self.id or ''}:{sub}", (taken or {}).get("sealed"))
        now = time.time()
        sids: list[tuple[str, float]] = []
        grants: list[tuple[dict[str, str | None], float]] = []
        for entry in (value or {}).get("sids") or []:
            if isinstance(entry, list) and len(entry) == 2 and isinstance(entry[0], str):
                if isinstance(entry[1], (int, float)) and entry[1] > now:
                    sids.append((entry[0], float(entry[1])))
        for entry in (value or {}).get("grants") or []:
            if isinstance(entry, list) and len(entry) == 2 and isinstance(entry[0], dict):
                if isinstance(entry[1], (int, float)) and entry[1] > now:
                    grant = {
                        k: v if isinstance(v := entry[0].get(k), str) else None
                        for k in ("access_token", "refresh_token")
                    }
                    grants.append((grant, float(entry[1])))
        return sids, grants

    async def _async_put_waiting(
        self, sub: str, sids: list[tuple[str, float]], grants: list[tuple[dict[str, str | None], float]]
    ) -> None:
        if not sids and not grants:
            return
        value = {"sids": [list(s) for s in sids], "grants": [list(g) for g in grants]}
        sealed = self.sessions.seal(f"oidc-waiting:{self.id or ''}:{sub}", value)
        await self.auth.async_put_shared(self._waiting_key(sub), {"sealed": sealed}, PENDING_TTL)

    def note_login_grant(self, sub: str, access_token: str | None, refresh_token: str | None) -> None:
        """The provider's tokens of a finished login, for the refresh token its code will make."""
        if access_token is None and refresh_token is None:
            return
        now = time.monotonic()
        waiting = [(g, t) for g, t in self._login_grants.pop(sub, []) if t > now][-(MAX_WAITING_GRANTS - 1) :]
        waiting.append(({"access_token": access_token, "refresh_token": refresh_token}, now + PENDING_TTL))
        self._login_grants[sub] = waiting
        while len(self._login_grants) > MAX_PENDING:
            self._login_grants.pop(next(iter(self._login_grants)))

    def _take_login_grant(self, sub: str) -> dict[str, str | None] | None:
        """The oldest waiting grant of a subject (any of them speaks for the same person at the provider)."""
        now = time.monotonic()
        waiting = [(g, t) for g, t in self._login_grants.pop(sub, []) if t > now]
        if not waiting:
            return None
        if len(waiting) > 1:
            self._login_grants[sub] = waiting[1:]
        return waiting[0][0]

    async def async_refresh_token_created(self, refresh_token: RefreshToken) -> None:
        """Tie a new session's refresh token to its login: the provider session(s) and the provider's tokens.

        Normally one login waits for its code to be traded. When several logins
        of one subject wait at once, the token cannot tell which one it is, so it
        is tied to all of their sids: a logout of any of those sessions revokes it
        (fail closed). Long-lived tokens get no entry: they are made from a
        session, not a login (see async_validate_refresh_token).
        """
        credential = refresh_token.credential
        if credential is None or credential.data.get("iss") != self.issuer:
            return
        if refresh_token.token_type != RefreshToken.TYPE_NORMAL:
            return
        sub = str(credential.data.get("sub"))
        if self.auth.shared_state:  # the login may have finished on another server
            waiting, grants = await self._async_take_waiting(sub)
            grant = grants[0][0] if grants else None
            await self._async_put_waiting(sub, waiting if len(waiting) > 1 else [], grants[1:])
        else:
            grant = self._take_login_grant(sub)
            now = time.monotonic()
            waiting = [(s, t) for s, t in self._login_sids.get(sub, []) if t > now]
            if len(waiting) <= 1:
                self._login_sids.pop(sub, None)
        sids = sorted({s for s, _ in waiting})
        if grant is None and not sids:
            return
        # The login that made the grant confirmed the user's groups a moment ago.
        await self.sessions.async_add(refresh_token.id, sids, grant, time.time() if grant is not None else None)
        await self._async_bound_sessions(refresh_token)

    async def _async_bound_sessions(self, newest: RefreshToken) -> None:
        """At most MAX_SESSIONS_PER_USER of a user's tokens hold provider data: the oldest are revoked."""
        mine = [t for t in newest.user.refresh_tokens.values() if t.id in self.sessions]
        if len(mine) <= MAX_SESSIONS_PER_USER:
            return
        mine.sort(key=lambda t: (self.sessions.created(t.id), t.id != newest.id))
        for token in mine[: len(mine) - MAX_SESSIONS_PER_USER]:
            _LOGGER.info("OpenID sessions of %s past %d: the oldest is revoked", newest.user.id, MAX_SESSIONS_PER_USER)
            await self.auth.async_remove_refresh_token(token)
            await self.sessions.async_remove([token.id])

    async def async_refresh_token_removed(self, refresh_token: RefreshToken) -> None:
        """Forget a removed token, and the provider's tokens of its login."""
        self._refused.pop(refresh_token.id, None)
        await self.sessions.async_remove([refresh_token.id])

    async def async_will_remove_credentials(self, credentials: Credentials) -> None:
        """Removing credentials removes their tokens without telling plugins: forget their entries first."""
        user = self.auth.user_for_credentials(credentials)
        if user is not None:
            await self.sessions.async_remove(
                [t.id for t in user.refresh_tokens.values() if t.credential is credentials]
            )

    async def async_forget_dead_sessions(self) -> int:
        """At start-up: forget the entries of tokens removed while this provider was not listening."""
        alive = {t.id for user in self.auth.users() for t in user.refresh_tokens.values()}
        forgotten = await self.sessions.async_keep_only(alive)
        if forgotten:
            _LOGGER.info("OpenID provider %s: data of %d removed refresh tokens forgotten", self.issuer, forgotten)
        return forgotten

    async def async_verify_logout_token(self, token: str) -> dict[str, Any]:
        """OpenID Connect Back-Channel Logout 1.0, section 2.6; OidcError when refused."""
        await self.async_metadata()
        try:
            header = extract_compact(token.encode()).protected
        except (JoseError, ValueError, TypeError) as err:
            raise OidcError(f"logout token is not a JWS: {err}") from err
        supported = (self._metadata or {}).get("id_token_signing_alg_values_supported") or ["RS256"]
        allowed = [a for a in ASYMMETRIC_ALGORITHMS if a in supported] or ["RS256"]
        if header.get("alg") not in allowed:
            raise OidcError(f"logout token signed with {header.get('alg')!r}")
        keys = await self.async_keys()
        kid = header.get("kid")
        if kid is not None and not any(k.kid == kid for k in keys.keys):
            keys = await self.async_keys(refetch=True)
        try:
            claims = dict(jwt.decode(token, keys, algorithms=allowed).claims)
            JWTClaimsRegistry(
                leeway=LEEWAY,
                iss={"essential": True, "value": self.issuer},
                aud={"essential": True, "value": self.config["client_id"]},
                iat={"essential": True},
                jti={"essential": True},
            ).validate(claims)
        except (JoseError, ValueError, TypeError) as err:
            raise OidcError(f"logout token refused: {err}") from err
        events = claims.get("events")
        if not isinstance(events, dict) or not isinstance(
            events.get("http://schemas.openid.net/event/backchannel-logout"), dict
        ):
            raise OidcError("logout token without the back-channel logout event")
        if "nonce" in claims:
            raise OidcError("logout token with a nonce")
        sub, sid = claims.get("sub"), claims.get("sid")
        if not isinstance(sub, str) and not isinstance(sid, str):
            raise OidcError("logout token with neither sub nor sid")
        now = time.monotonic()
        while self._seen_jti and (next(iter(self._seen_jti.values())) < now or len(self._seen_jti) > 10000):
            self._seen_jti.popitem(last=False)
        jti = str(claims["jti"])
        if jti in self._seen_jti:
            raise OidcError("logout token replayed")
        self._seen_jti[jti] = now + 600
        return claims

    async def async_back_channel_logout(self, claims: dict[str, Any]) -> int:
        """Revoke the refresh tokens of that provider session (sid), or all of the subject's; how many."""
        sub, sid = claims.get("sub"), claims.get("sid")
        victims = []
        for user in self.auth.users():
            for refresh_token in list(user.refresh_tokens.values()):
                credential = refresh_token.credential
                if credential is None or credential.provider_key != self.key:
                    continue
                if isinstance(sub, str) and credential.data.get("sub") != sub:
                    continue
                if isinstance(sid, str) and sid not in self.sessions.sids(refresh_token.id):
                    continue
                victims.append(refresh_token)
        for refresh_token in victims:
            await self.auth.async_remove_refresh_token(refresh_token)
        await self.sessions.async_remove([t.id for t in victims])
        if isinstance(sid, str) and isinstance(sub, str) and self.auth.shared_state:
            waiting, grants = await self._async_take_waiting(sub)
            await self._async_put_waiting(sub, [(s, t) for s, t in waiting if s != sid], grants)
        if isinstance(sid, str):
            for waiting_sub in [sub] if isinstance(sub, str) else list(self._login_sids):
                if waiting_sub in self._login_sids:
                    self._login_sids[waiting_sub] = [(s, t) for s, t in self._login_sids[waiting_sub] if s != sid]
        _LOGGER.info(
            "OpenID back-channel logout from %s (sub %r, sid %r): %d refresh tokens revoked",
            self.issuer,
            sub,
            sid,
            len(victims),
        )
        return len(victims)

    # ---- credentials and users -----------------------------------------------------------------

    def credential_data(self, flow_result: dict[str, Any]) -> dict[str, Any]:
        """Credentials are the issuer and the subject: never a name the provider lets people change."""
        return {"iss": flow_result["iss"], "sub": flow_result["sub"]}

    async def async_get_or_create_credentials(self, flow_result: dict[str, Any]) -> Credentials:
        """Existing credentials (name and group synced), or new ones carrying the identity (the base class)."""
        credentials = await super().async_get_or_create_credentials(flow_result)
        identity = flow_result.get("identity")
        if not credentials.is_new and isinstance(identity, Identity):
            await self.async_sync_user(credentials, identity)
        return credentials

    async def async_sync_user(self, credentials: Credentials, identity: Identity) -> None:
        """At every login: the name, and the group (never the owner's: the owner stays an administrator)."""
        user = self.auth.user_for_credentials(credentials)
        if user is None:
            return
        name = identity.name or identity.username
        group_ids = None if user.is_owner else [identity.group]
        if group_ids == [g.id for g in user.groups]:
            group_ids = None
        if name == user.name and group_ids is None:
            return
        _LOGGER.info("OpenID login of %r: name and group synced from %s", identity.username, self.issuer)
        await self.auth.async_update_user(user, name=None if name == user.name else name, group_ids=group_ids)

    async def async_user_meta_for_credentials(self, credentials: Credentials) -> UserMeta:
        """Name and group from the claims."""
        identity = credentials.meta if isinstance(credentials.meta, Identity) else None
        if identity is None:
            return UserMeta(name=str(credentials.data.get("sub")), is_active=True)
        return UserMeta(name=identity.name or identity.username, is_active=True, group=identity.group)

    async def async_validate_refresh_token(self, refresh_token: RefreshToken, remote_ip: str | None = None) -> None:
        """Ask the provider again whether the user may still log in (fail closed; see the README).

        With the provider's tokens of the login the session came from: userinfo
        with its access token, renewed once with its refresh token. A good answer
        is cached recheck_interval seconds (in .storage, so across restarts), a
        refusal as long in memory. Refused (InvalidAuthError): no usable grant
        (none kept, or the provider revoked or let it expire), the user out of
        every required group, the provider unreachable longer than outage_grace
        after its last good answer.
        """
        credential = refresh_token.credential
        if credential is None or credential.data.get("iss") != self.issuer:
            raise InvalidAuthError("not a session of this OpenID provider")
        key = self._grant_key(refresh_token)
        if key is None:
            _LOGGER.info(
                "OpenID session %s of %s refused: no provider grant kept for it; the user logs in again",
                refresh_token.id,
                self.issuer,
            )
            raise InvalidAuthError("the OpenID provider must confirm the user: log in again")
        lock = self._recheck_locks.get(key)
        if lock is None:
            lock = self._recheck_locks[key] = asyncio.Lock()
        async with lock:
            identity = await self._async_recheck(key, str(credential.data.get("sub")))
        if identity is not None:
            await self.async_sync_user(credential, identity)

    def _grant_key(self, refresh_token: RefreshToken) -> str | None:
        """Whose grant confirms this token: its own; for a long-lived token, its user's freshest session's."""
        if self.sessions.has_grant(refresh_token.id):
            return refresh_token.id
        if refresh_token.token_type != TOKEN_TYPE_LONG_LIVED:
            return None
        # A long-lived token is made from a session (and checked once, then); any session of the same
        # credentials speaks for the same person at the provider.
        candidates = [
            t.id
            for t in refresh_token.user.refresh_tokens.values()
            if t.credential is refresh_token.credential and self.sessions.has_grant(t.id)
        ]
        return max(candidates, key=lambda tid: self.sessions.checked(tid) or 0.0, default=None)

    async def _async_recheck(self, key: str, sub: str) -> Identity | None:
        """The provider's verdict on grant key: an Identity when asked and good, None when a cached or
        grace verdict is good; InvalidAuthError when refused."""
        refused = self._refused.get(key)
        if refused is not None:
            if refused > time.monotonic():
                raise InvalidAuthError("refused by the OpenID provider")
            del self._refused[key]
        now = time.time()
        checked = self.sessions.checked(key)
        since = None if checked is None else now - checked
        if since is not None and 0 <= since < self.config["recheck_interval"]:
            return None
        grant = self.sessions.grant(key)
        try:
            if grant is None:
                raise OidcError("the grant of the login cannot be read", GRANT_GONE)
            claims = await self._async_userinfo_for(key, grant, sub)
            identity = self.identity_from({**claims, "sub": sub})
        except OidcError as err:
            if err.reason == CANNOT_CONNECT:
                if since is not None and 0 <= since <= self.config["outage_grace"]:
                    _LOGGER.warning(
                        "OpenID provider %s cannot confirm a session (%s); its last answer, %d s ago, stands",
                        self.issuer,
                        err,
                        since,
                    )
                    return None
                _LOGGER.warning("OpenID provider %s cannot confirm a session: %s", self.issuer, err)
                raise InvalidAuthError("the OpenID provider cannot confirm the user") from err
            if err.reason == GRANT_GONE:
                _LOGGER.info("OpenID provider %s no longer honours a session's grant: %s", self.issuer, err)
                await self.sessions.async_drop_grant(key)
                raise InvalidAuthError("the OpenID provider ended this session: log in again") from err
            _LOGGER.info("OpenID provider %s refuses a session now: %s", self.issuer, err)
            self._refuse(key)
            raise InvalidAuthError(str(err)) from err
        await self.sessions.async_set_checked(key, now)
        return identity

    def _refuse(self, key: str) -> None:
        self._refused[key] = time.monotonic() + self.config["recheck_interval"]
        self._refused.move_to_end(key)
        while len(self._refused) > MAX_PENDING * 4:
            self._refused.popitem(last=False)

    async def _async_userinfo_for(self, key: str, grant: dict[str, str | None], sub: str) -> dict[str, Any]:
        """userinfo with the login's access token, renewed once with its refresh token (the renewal is kept).

        OidcError: GRANT_GONE when neither token is accepted any more, CANNOT_CONNECT when the provider
        cannot answer, another reason when it answers something else.
        """
        metadata = await self.async_metadata()
        url = metadata.get("userinfo_endpoint")
        if not isinstance(url, str):
            raise OidcError("the provider has no userinfo_endpoint to re-check a session with")
        for attempt in range(2):
            access = grant.get("access_token")
            if isinstance(access, str):
                status, info = await self._fetch_json("GET", url, headers={"Authorization": f"Bearer {access}"})
                if status == 200 and isinstance(info, dict):
                    if info.get("sub") != sub:
                        raise OidcError("userinfo names another subject")
                    return info
                if status >= 500:
                    raise OidcError(f"userinfo answered {status}", CANNOT_CONNECT)
                if status != 401:
                    raise OidcError(f"userinfo answered {status}")
            refresh = grant.get("refresh_token")
            if attempt or not isinstance(refresh, str):
                raise OidcError("the access token is refused and there is no refresh token to renew it", GRANT_GONE)
            status, tokens = await self._async_token_request({"grant_type": "refresh_token", "refresh_token": refresh})
            if status >= 500:
                raise OidcError(f"the token endpoint answered {status}", CANNOT_CONNECT)
            if status != 200 or not isinstance(tokens, dict) or not isinstance(tokens.get("access_token"), str):
                raise OidcError(f"the provider refused to renew the grant ({status})", GRANT_GONE)
            new_refresh = tokens.get("refresh_token")
            grant = {
                "access_token": tokens["access_token"],
                "refresh_token": new_refresh if isinstance(new_refresh, str) else refresh,
            }
            # Kept before it is used: a provider that rotates refresh tokens has consumed the old one.
            await self.sessions.async_set_grant(key, grant, None)
        raise AssertionError("unreachable")


class OidcLoginFlow(LoginFlow[OidcAuthProvider]):
    """init sends the browser to the provider; wait finishes with what the callback recorded.

    Shared (``SHARED_STATE``): with several servers on one storage the callback and each later
    step may reach any server. The stored state is the core's only: the identity is never read
    from it but taken by the wait step from the outcome the callback sealed for this flow id;
    past the wait step (MFA) the stored user must come with a proof, sealed with the key, that
    this flow's wait step verified that user's login (flow_binding).
    """

    SHARED_STATE = True

    def __init__(self, auth_provider: OidcAuthProvider, redirect_uri: str | None) -> None:
        """Remember where the provider must send the browser back."""
        super().__init__(auth_provider)
        self._redirect_uri = redirect_uri
        self.outcome: Identity | OidcError | None = None
        # The flow id whose wait step verified self.user's login (set by it, or by a proven stored state).
        self._verified_for: str | None = None

    def dump_state(self) -> dict[str, Any]:
        """The core's state and, past the wait step, the sealed proof of whose login this flow verified."""
        state = super().dump_state()
        user, credentials = self.user, self.credential
        if user is not None and credentials is not None and self._verified_for == self.flow_id:
            state["verified"] = self.provider.flow_binding(self.flow_id, user.id, credentials.id)
        return state

    def load_state(self, state: dict[str, Any], credentials: Credentials | None, user: User | None) -> None:
        """A stored flow: at the wait step (no user), or at an MFA step of a user this flow proved (ValueError: refused)."""
        provider = self.provider
        if user is not None or credentials is not None:
            linked = provider.auth.user_for_credentials(credentials) if credentials is not None else None
            if (
                user is None
                or credentials is None
                or credentials.provider_key != provider.key
                or linked is None
                or linked.id != user.id
            ):
                raise ValueError("oidc flow: not this provider's credentials of that user")
            verified = provider.flow_bound(state.get("verified"), user.id, credentials.id)
            if verified is None:
                raise ValueError("oidc flow: no proof that this flow verified that user's login")
            self._verified_for = verified
        super().load_state(state, credentials, user)

    def step_schema(self, step_id: str) -> vol.Schema | None:
        """The wait step takes no input (the outcome is the callback's); or an MFA step's form."""
        if step_id == "wait":
            return None
        return super().step_schema(step_id)

    def _unproven(self) -> bool:
        """Whether the flow names a user its own wait step did not verify (a stored state moved to another flow)."""
        return self.user is not None and self._verified_for != self.flow_id

    async def async_step_select_mfa_module(self, user_input: dict[str, str] | None = None) -> FlowResult:
        """The core's step, for the user this flow verified only."""
        if self._unproven():
            return self.async_abort(reason=LOGIN_EXPIRED)
        return await super().async_step_select_mfa_module(user_input)

    async def async_step_mfa(self, user_input: dict[str, str] | None = None) -> FlowResult:
        """The core's step, for the user this flow verified only."""
        if self._unproven():
            return self.async_abort(reason=LOGIN_EXPIRED)
        return await super().async_step_mfa(user_input)

    async def async_step_init(self, user_input: dict[str, Any] | None = None) -> FlowResult:
        """Send the browser to the provider."""
        provider = self.provider
        if self._redirect_uri is None:
            _LOGGER.error("OpenID login refused: no redirect_uri configured and the request has no Origin")
            return self.async_abort(reason=SSO_FAILED)
        try:
            url = await provider.async_authorization_url(self, self._redirect_uri)
        except OidcError as err:
            _LOGGER.error("OpenID provider %s: %s", provider.issuer, err)
            return self.async_abort(reason=err.reason)
        return self.async_external_step(step_id="wait", url=url)

    async def async_step_wait(self, user_input: dict[str, Any] | None = None) -> FlowResult:
        """The browser is back: finish with the recorded identity, or abort with the recorded error.

        Several servers: the outcome is the one the callback recorded for this flow id, taken
        here whichever server ran the callback; none (yet, or any more) ends the flow.
        """
        provider = self.provider
        if provider.auth.shared_state and self.user is None:
            self.outcome = await provider.async_take_outcome(self.flow_id)
        outcome = self.outcome
        if outcome is None:
            return self.async_abort(reason=LOGIN_EXPIRED)
        if isinstance(outcome, OidcError):
            return self.async_abort(reason=outcome.reason)
        if not provider.config["create_users"]:
            existing = provider.async_find_credentials({"iss": outcome.issuer, "sub": outcome.sub})
            if existing is None or provider.auth.user_for_credentials(existing) is None:
                _LOGGER.info("OpenID login of %r refused: no such user and create_users is false", outcome.username)
                return self.async_abort(reason=NOT_MEMBER)
        self._verified_for = self.flow_id
        result = await self.async_finish({"iss": outcome.issuer, "sub": outcome.sub, "identity": outcome})
        await provider.async_note_login(outcome.sub, outcome.sid, outcome.access_token, outcome.refresh_token)
        return result


def _error_page(message: str, status: int = 400) -> web.Response:
    """A plain-text page: the callback never answers 500 and never renders provider input as HTML."""
    return web.Response(text=message, status=status, content_type="text/plain")


async def callback_view(request: web.Request) -> web.StreamResponse:
    """GET /auth/oidc/callback: finish the provider's part of a login, then back to the login page."""
    context = request.app[CONTEXT_KEY]
    state = request.query.get("state")
    if not isinstance(state, str) or not state:
        return _error_page("This login link is not valid. Start the login again.")
    try:
        found = await _async_take_pending(context, state)
    except Exception:  # the shared state is away: fail closed, never a 500
        _LOGGER.exception("OpenID callback: the pending login cannot be read")
        return _error_page("The login cannot be finished now. Start the login again.", 503)
    if found is None:
        return _error_page("This login has expired or was already used. Start the login again.")
    provider, pending = found
    error = request.query.get("error")
    code = request.query.get("code")
    outcome: Identity | OidcError
    if error is not None:
        _LOGGER.info("OpenID provider %s refused the login: %s", provider.issuer, error[:200])
        outcome = OidcError(f"provider answered error {error[:100]!r}", SSO_DENIED)
    elif not code:
        outcome = OidcError("callback without code")
    else:
        try:
            outcome = await provider.async_complete(pending, code)
        except OidcError as err:
            _LOGGER.error("OpenID login with %s refused: %s", provider.issuer, err)
            outcome = err
        except Exception as err:  # fail closed: never a 500, never a login
            _LOGGER.exception("OpenID login with %s failed", provider.issuer)
            outcome = OidcError(f"unexpected error {err!r}")
    if pending.flow is not None:
        pending.flow.outcome = outcome
    else:
        try:
            await provider.async_put_outcome(pending.flow_id, outcome)
        except Exception:
            _LOGGER.exception("OpenID callback: the outcome of a login cannot be recorded")
            return _error_page("The login cannot be finished now. Start the login again.", 503)
    raise web.HTTPFound(f"{RESUME_PATH}?{urlencode({'resume': pending.flow_id})}")


MAX_STATE = 512


async def _async_take_pending(context: Any, state: str) -> tuple[OidcAuthProvider, Pending] | None:
    """The pending login of a state and its provider, taken (a state works once, on any server)."""
    providers = [p for p in context.get_auth_providers(OidcAuthProvider.TYPE) if isinstance(p, OidcAuthProvider)]
    if providers and providers[0].auth.shared_state:
        if len(state) > MAX_STATE:
            return None
        taken = await providers[0].auth.async_take_shared(PENDING_KEY + state)
        if taken is None:
            return None
        for provider in providers:
            if (provider.id or "") == taken.get("provider"):
                pending = provider.pending_from(state, taken.get("sealed"))
                return None if pending is None else (provider, pending)
        return None
    for provider in providers:
        pending = provider.take_pending(state)
        if pending is not None:
            return provider, pending
    return None


CONTEXT_KEY: web.AppKey[Any] = web.AppKey("opp_auth_oidc_context")
LOGOUT_PATH = "/auth/oidc/backchannel_logout"
MAX_LOGOUT_TOKEN = 16 * 1024


def _logout_answer(status: int, error: str | None = None, description: str | None = None) -> web.Response:
    body = {} if error is None else {"error": error, "error_description": description or error}
    return web.json_response(body, status=status, headers={"Cache-Control": "no-store"})


async def backchannel_logout_view(request: web.Request) -> web.StreamResponse:
    """POST /auth/oidc/backchannel_logout (form: logout_token): the provider ends a session."""
    context = request.app[CONTEXT_KEY]
    if request.content_length is not None and request.content_length > MAX_LOGOUT_TOKEN:
        return _logout_answer(400, "invalid_request", "body too large")
    try:
        form = await request.post()
    except (ValueError, UnicodeDecodeError, web.HTTPException):
        return _logout_answer(400, "invalid_request", "not a form")
    token = form.get("logout_token")
    if not isinstance(token, str) or not token or len(token) > MAX_LOGOUT_TOKEN:
        return _logout_answer(400, "invalid_request", "logout_token missing")
    try:
        issuer = json.loads(base64.urlsafe_b64decode(token.split(".")[1] + "==")).get("iss")
    except (ValueError, IndexError, AttributeError, UnicodeDecodeError):
        return _logout_answer(400, "invalid_request", "logout_token is not a JWT")
    for provider in context.get_auth_providers(OidcAuthProvider.TYPE):
        if provider.issuer != issuer:
            continue
        try:
            claims = await provider.async_verify_logout_token(token)
        except OidcError as err:
            _LOGGER.warning("Back-channel logout from %s refused: %s", provider.issuer, err)
            continue
        await provider.async_back_channel_logout(claims)
        return _logout_answer(200)
    return _logout_answer(400, "invalid_request", "logout_token refused")


@hookimpl
def opp_auth_register_auth_providers(register: Any) -> None:
    """Ship the oidc provider."""
    register(OidcAuthProvider)


@hookimpl
def opp_auth_register_routes(app: web.Application, auth: Any) -> None:
    """The callback route every oidc provider shares (the state says which one); none without one configured."""
    if not auth.get_auth_providers(OidcAuthProvider.TYPE):
        return
    app[CONTEXT_KEY] = auth
    app.router.add_get(CALLBACK_PATH, callback_view)
    app.router.add_post(LOGOUT_PATH, backchannel_logout_view)


def _provider_of(auth: Any, refresh_token: RefreshToken) -> OidcAuthProvider | None:
    credential = refresh_token.credential
    if credential is None or credential.auth_provider_type != OidcAuthProvider.TYPE:
        return None
    provider = auth.get_auth_provider(OidcAuthProvider.TYPE, credential.auth_provider_id)
    return provider if isinstance(provider, OidcAuthProvider) else None


@hookimpl
async def opp_auth_refresh_token_created(auth: Any, refresh_token: RefreshToken) -> None:
    """Tie a session's token to its login: provider sessions (back-channel logout) and tokens (re-checks)."""
    provider = _provider_of(auth, refresh_token)
    if provider is not None:
        await provider.async_refresh_token_created(refresh_token)


@hookimpl
async def opp_auth_refresh_token_removed(auth: Any, refresh_token: RefreshToken) -> None:
    """Forget a removed token and the provider's tokens kept for it."""
    provider = _provider_of(auth, refresh_token)
    if provider is not None:
        await provider.async_refresh_token_removed(refresh_token)


@hookimpl
async def opp_auth_startup(auth: Any) -> None:
    """The users and tokens are loaded now: forget what belongs to tokens removed meanwhile."""
    for provider in auth.get_auth_providers(OidcAuthProvider.TYPE):
        if isinstance(provider, OidcAuthProvider):
            await provider.async_forget_dead_sessions()

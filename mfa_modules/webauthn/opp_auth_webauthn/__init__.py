"""Passkeys and security keys (WebAuthn) as a second factor, built on py_webauthn.

The module (``type: webauthn``) keeps, per user, a random user handle and the
enrolled passkeys (credential id, COSE public key, sign counter, name, dates,
AAGUID) in ``.storage/auth_module.webauthn``. Every ceremony uses a challenge
that this module issued, that is used once (taken out of the table before it
is checked), expires after ``timeout`` seconds, and is bound to what it was
issued for: one login flow (``flow:<flow_id>``), one session's enrolment or
re-authentication (``register:<refresh token id>``, ``reauth:<refresh token
id>``), one passwordless login flow. Enrolment and management are websocket
commands (websocket.py); passwordless login is a provider (passwordless.py).

Login challenges (the MFA step's ``flow:<flow_id>`` and the passwordless flow's
``passwordless:<flow_id>``) must be found by whichever server receives the
assertion: with several servers on one storage (``PluginContext.shared_state``)
they are kept where every server sees them (``PluginContext.async_put_shared``,
under ``webauthn.<module id>.challenge.<binding>``: the 32 random bytes, the user
it was issued to, the user verification asked), expiring ``timeout`` seconds after
issue by the storage's clock and taken by one atomic delete, so an assertion
issued on one server verifies on another exactly once. Enrolment and
re-authentication ceremonies run over one websocket connection (one server) and
stay in this process's memory, as every challenge does on one server (JSON store).
"""

from __future__ import annotations

import hmac
import ipaddress
import json
import logging
import re
import secrets
import time
from collections import OrderedDict
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

import voluptuous as vol
from webauthn import (
    generate_authentication_options,
    generate_registration_options,
    options_to_json,
    verify_authentication_response,
    verify_registration_response,
)
from webauthn.helpers import base64url_to_bytes, bytes_to_base64url
from webauthn.helpers.exceptions import WebAuthnException
from webauthn.helpers.structs import (
    AttestationConveyancePreference,
    AuthenticatorSelectionCriteria,
    AuthenticatorTransport,
    PublicKeyCredentialDescriptor,
    ResidentKeyRequirement,
    UserVerificationRequirement,
)

from opp_auth import FlowResult, MfaModule, RefreshToken, SetupFlow, hookimpl

from .aaguids import model_for

_LOGGER = logging.getLogger(__name__)

STORAGE_KEY = "auth_module.webauthn"
STORAGE_VERSION = 1
INPUT_FIELD = "credential"
MAX_CREDENTIAL_JSON = 64 * 1024  # an assertion is about 1 KiB; attestation with certificates a few KiB
MAX_PASSKEYS_PER_USER = 32
MAX_PENDING_CHALLENGES = 10_000
MAX_NAME_LENGTH = 64
# Bindings of login ceremonies: the next step of a login may reach any server (shared challenges).
SHARED_BINDINGS = ("flow:", "passwordless:")
_USER_VERIFICATION = ("required", "preferred", "discouraged")
PROOF_WINDOW = 300.0  # seconds a password or factor proof lets a session add a passkey
_HOST_LABEL = re.compile(r"^(?!-)[a-z0-9-]{1,63}(?<!-)$")

RP_ID_HELP = (
    "the domain name the pages are served on, without scheme or port (e.g. opp.example.com, or "
    "localhost). Choose it once: passkeys are bound to it, and changing it later invalidates every "
    "enrolled passkey"
)
RP_ID_MESSAGE = f"rp_id is required: {RP_ID_HELP}"


def _rp_id(value: Any) -> str:
    """A registrable domain name (not an IP address, no scheme, port or path)."""
    if not isinstance(value, str) or not value.strip():
        raise vol.Invalid(RP_ID_MESSAGE)
    host = value.strip().lower().rstrip(".")
    try:
        ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        pass
    else:
        raise vol.Invalid(f"rp_id {value!r} is an IP address, which WebAuthn refuses; rp_id is {RP_ID_HELP}")
    if not all(_HOST_LABEL.match(label) for label in host.split(".")) or len(host) > 253:
        raise vol.Invalid(f"rp_id {value!r} is not a domain name; rp_id is {RP_ID_HELP}")
    return host


def _origin(value: Any) -> str:
    """scheme://host[:port], as a browser reports a page's origin."""
    if not isinstance(value, str):
        raise vol.Invalid("an origin is a string such as https://opp.example.com or http://localhost:8123")
    parts = urlsplit(value.strip())
    if parts.scheme not in ("https", "http") or not parts.hostname or parts.path not in ("", "/") or parts.query:
        raise vol.Invalid(f"{value!r} is not an origin such as https://opp.example.com or http://localhost:8123")
    if parts.scheme == "http" and parts.hostname != "localhost":
        raise vol.Invalid(f"{value!r}: browsers allow WebAuthn over plain http only on localhost; use https")
    return f"{parts.scheme}://{parts.netloc.lower()}"


def _check_origins(config: dict[str, Any]) -> dict[str, Any]:
    """Origins default to https://<rp_id>; each must be the rp_id or one of its subdomains."""
    rp_id = config["rp_id"]
    origins = config.get("origins") or [f"https://{rp_id}"]
    for origin in origins:
        host = urlsplit(origin).hostname or ""
        if host != rp_id and not host.endswith("." + rp_id):
            raise vol.Invalid(f"origin {origin} is not on rp_id {rp_id} or one of its subdomains", path=["origins"])
    config["origins"] = origins
    return config


CONFIG_SCHEMA = vol.All(
    MfaModule.CONFIG_SCHEMA.extend(
        {
            vol.Required("rp_id", msg=RP_ID_MESSAGE): _rp_id,
            vol.Optional("rp_name", default="Open Peer Power"): vol.All(str, vol.Length(min=1, max=64)),
            vol.Optional("origins"): vol.All([_origin], vol.Length(min=1)),
            vol.Optional("user_verification", default="preferred"): vol.In(["required", "preferred", "discouraged"]),
            vol.Optional("attestation", default="none"): vol.In(["none", "indirect", "direct", "enterprise"]),
            vol.Optional("timeout", default=60): vol.All(int, vol.Range(min=10, max=600)),
            vol.Optional("passwordless", default=True): bool,
        },
        extra=vol.PREVENT_EXTRA,
    ),
    _check_origins,
)


def _now_iso() -> str:
    """Now, as stored."""
    return datetime.now(UTC).isoformat()


def clean_name(value: Any) -> str:
    """A passkey name: trimmed, 1-64 characters, no control or format characters."""
    import unicodedata

    if not isinstance(value, str):
        raise ValueError("the name must be text")
    name = " ".join(value.split())
    if not name or len(name) > MAX_NAME_LENGTH:
        raise ValueError(f"the name must be 1 to {MAX_NAME_LENGTH} characters")
    if any(unicodedata.category(ch) in ("Cc", "Cf", "Cs", "Co", "Zl", "Zp") for ch in name):
        raise ValueError("the name contains control characters")
    return name


class CeremonyError(Exception):
    """A registration or assertion was refused; code and message are for the caller."""

    def __init__(self, code: str, message: str) -> None:
        """Keep the code (a websocket error code) and a sentence."""
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass
class Pending:
    """An issued challenge: for whom (None: anyone, passwordless), until when (monotonic)."""

    challenge: bytes
    user_id: str | None
    expires: float
    user_verification: str


@dataclass
class Assertion:
    """A verified assertion."""

    user_id: str
    passkey: dict[str, Any]
    user_verified: bool


class WebauthnAuthModule(MfaModule):
    """Passkeys and security keys."""

    TYPE = "webauthn"
    DEFAULT_TITLE = "Passkey"
    MAX_RETRY_TIME = 5
    CONFIG_SCHEMA = CONFIG_SCHEMA

    def __init__(self, auth: Any, config: dict[str, Any]) -> None:
        """Nothing loaded yet."""
        super().__init__(auth, config)
        # Journaled: a change writes the one user's entry (a path save), not every user's passkeys.
        self._store = auth.storage(STORAGE_KEY, STORAGE_VERSION, private=True, journal=True)
        self._users: dict[str, dict[str, Any]] = {}
        self._doc: dict[str, Any] = {"users": self._users}
        self._by_credential: dict[str, str] = {}  # credential id -> user id
        self._pending: OrderedDict[str, Pending] = OrderedDict()
        self._proofs: dict[str, float] = {}  # refresh token id -> monotonic time of the last proof
        self._pending_handles: dict[str, str] = {}  # user handle offered with a creation challenge, by binding

    # ---- configuration --------------------------------------------------------------------

    @property
    def rp_id(self) -> str:
        """The relying-party id."""
        return str(self.config["rp_id"])

    @property
    def origins(self) -> list[str]:
        """Page origins allowed in clientDataJSON."""
        return list(self.config["origins"])

    @property
    def passwordless(self) -> bool:
        """Whether passkeys may log in without a password."""
        return bool(self.config.get("passwordless", True))

    @property
    def timeout(self) -> float:
        """Seconds a challenge lives."""
        return float(self.config.get("timeout", 60))

    # ---- storage ----------------------------------------------------------------------------

    async def async_initialize(self) -> None:
        """Read the enrolled passkeys; follow changes other servers make (shared storage)."""
        self._use(await self._store.async_load())
        self._store.listen(self._use)

    def _use(self, data: Any) -> None:
        """Take the stored passkeys (at start, and when another server changed them)."""
        # The store's own object is kept as the live one (cleaned in place): a shared store applies
        # another server's change to the object it holds, and a rebuild from an older copy would undo
        # a change of ours still being written (a removed passkey enrolled again).
        if not isinstance(data, dict):
            data = {}
        users = data.get("users")
        if not isinstance(users, dict):
            users = data["users"] = {}
        for user_id in list(users):
            entry = users[user_id]
            if not (isinstance(entry, dict) and isinstance(entry.get("handle"), str)):
                del users[user_id]
                continue
            passkeys = entry.get("passkeys")
            if not isinstance(passkeys, list):
                passkeys = entry["passkeys"] = []
            passkeys[:] = [p for p in passkeys if isinstance(p, dict) and isinstance(p.get("id"), str)]
        self._doc = data
        self._users = users
        self._reindex()

    def _reindex(self) -> None:
        """credential id -> user id."""
        self._by_credential = {p["id"]: uid for uid, entry in self._users.items() for p in entry["passkeys"]}

    async def _async_save(self, user_id: str) -> None:
        """Make the user's entry (or its removal) durable now."""
        await self._store.async_save_changes(self._doc, [("users", user_id)])

    # ---- MfaModule ------------------------------------------------------------------------------

    @property
    def input_schema(self) -> vol.Schema:
        """The login form: the assertion (PublicKeyCredential JSON) the page gets from the browser."""
        return vol.Schema({vol.Required(INPUT_FIELD): str})

    async def async_setup_flow(self, user_id: str) -> SetupFlow:
        """Passkeys are added on the profile page (a browser ceremony after a recent proof), not by a form."""
        return ProfileOnlySetupFlow(self, self.input_schema, user_id)

    async def async_setup_user(self, user_id: str, setup_data: Any) -> dict[str, Any]:
        """Add a passkey from verified registration data (id, public_key, sign_count, name, aaguid...).

        The websocket enrolment verifies a browser's attestation and calls this;
        it never trusts a browser's word by itself.
        """
        data = dict(setup_data or {})
        for key in ("id", "public_key"):
            if not isinstance(data.get(key), str):
                raise ValueError(f"setup data needs {key}")
        if data["id"] in self._by_credential:
            raise CeremonyError("already_registered", "This passkey is already registered")
        entry = self._entry(user_id, create=True)
        if len(entry["passkeys"]) >= MAX_PASSKEYS_PER_USER:
            raise CeremonyError("too_many_passkeys", f"At most {MAX_PASSKEYS_PER_USER} passkeys per user")
        passkey = {
            "id": data["id"],
            "public_key": data["public_key"],
            "sign_count": int(data.get("sign_count") or 0),
            "name": clean_name(data.get("name") or "Passkey"),
            "created_at": _now_iso(),
            "last_used_at": None,
            "aaguid": str(data.get("aaguid") or ""),
            "transports": [t for t in data.get("transports") or [] if isinstance(t, str)][:8],
            "backed_up": bool(data.get("backed_up")),
            "discoverable": bool(data.get("discoverable", True)),
        }
        entry["passkeys"].append(passkey)
        self._by_credential[passkey["id"]] = user_id
        await self._async_save(user_id)
        return self.describe(passkey)

    async def async_depose_user(self, user_id: str) -> None:
        """Forget every passkey of the user."""
        if self._users.pop(user_id, None) is not None:
            self._reindex()
            await self._async_save(user_id)

    async def async_is_user_setup(self, user_id: str) -> bool:
        """Whether the user has at least one passkey."""
        entry = self._users.get(user_id)
        return bool(entry and entry["passkeys"])

    def login_provider(self) -> Any:
        """ "Log in with a passkey" on the login page, unless passwordless: false."""
        from .passwordless import PasskeyLoginProvider

        return PasskeyLoginProvider(self) if self.passwordless else None

    async def async_login_challenge(self, user_id: str, flow_id: str) -> dict[str, Any] | None:
        """Request options for this login flow: a fresh challenge bound to it, the user's passkeys allowed."""
        return {"webauthn": await self.async_request_options(f"flow:{flow_id}", user_id)}

    async def async_validate_in_flow(self, user_id: str, user_input: dict[str, Any], flow_id: str) -> bool:
        """The assertion answers the challenge of this flow, for one of this user's passkeys."""
        return await self._async_validate_binding(f"flow:{flow_id}", user_id, user_input)

    async def async_validate(self, user_id: str, user_input: dict[str, Any]) -> bool:
        """Outside a login flow: the assertion answers a challenge from request_options(f"user:{user_id}")."""
        return await self._async_validate_binding(f"user:{user_id}", user_id, user_input)

    async def _async_validate_binding(self, binding: str, user_id: str, user_input: dict[str, Any]) -> bool:
        """True for a valid assertion; False (logged) for anything else."""
        try:
            await self.async_verify_assertion(binding, user_input.get(INPUT_FIELD), user_id=user_id)
        except CeremonyError as err:
            _LOGGER.info("Passkey refused for user %s: %s", user_id, err.message)
            return False
        return True

    # ---- challenges ---------------------------------------------------------------------------------

    def _issue(self, binding: str, user_id: str | None, user_verification: str) -> bytes:
        """A new challenge for binding (replacing an older one for the same binding)."""
        now = time.monotonic()
        while self._pending:
            key, oldest = next(iter(self._pending.items()))
            if oldest.expires > now and len(self._pending) < MAX_PENDING_CHALLENGES:
                break
            del self._pending[key]
        challenge = secrets.token_bytes(32)
        self._pending.pop(binding, None)
        self._pending[binding] = Pending(challenge, user_id, now + self.timeout, user_verification)
        return challenge

    def _take(self, binding: str) -> Pending | None:
        """The challenge issued for binding, removed (single use); None when absent or expired."""
        pending = self._pending.pop(binding, None)
        if pending is None or time.monotonic() > pending.expires:
            return None
        return pending

    def cancel(self, binding: str) -> None:
        """Forget a challenge (of this server's memory)."""
        self._pending.pop(binding, None)

    # A login's challenges with several servers on one storage: kept for every server.

    def _shares(self, binding: str) -> bool:
        """Whether binding's challenge is kept for every server (a login's, with a shared storage)."""
        return binding.startswith(SHARED_BINDINGS) and self.auth.shared_state

    def _shared_key(self, binding: str) -> str:
        """Where binding's challenge is kept for every server (the store keys it by a digest)."""
        return f"webauthn.{self.id}.challenge.{binding}"

    async def _async_issue(self, binding: str, user_id: str | None, user_verification: str) -> bytes:
        """_issue, kept for every server when binding is a login's and the storage is shared."""
        if not self._shares(binding):
            return self._issue(binding, user_id, user_verification)
        challenge = secrets.token_bytes(32)
        value = {"challenge": bytes_to_base64url(challenge), "user_id": user_id, "uv": user_verification}
        await self.auth.async_put_shared(self._shared_key(binding), value, self.timeout)  # replaces an older one
        return challenge

    async def _async_take(self, binding: str) -> Pending | None:
        """_take, from where every server sees it: of several servers taking it at once, one gets it.

        The stored value is input: a malformed one is no challenge, and user verification is the
        stronger of the stored one and what this module's configuration asks now.
        """
        if not self._shares(binding):
            return self._take(binding)
        value = await self.auth.async_take_shared(self._shared_key(binding))  # expired: None (storage's clock)
        if value is None:
            return None
        challenge, user_id, uv = value.get("challenge"), value.get("user_id"), value.get("uv")
        if not isinstance(challenge, str) or not (user_id is None or isinstance(user_id, str)):
            return None
        try:
            raw = base64url_to_bytes(challenge)
        except (ValueError, TypeError):
            return None
        if len(raw) != 32 or uv not in _USER_VERIFICATION:
            return None
        if self.config["user_verification"] == "required" or binding.startswith("passwordless:"):
            uv = "required"
        return Pending(raw, user_id, float("inf"), str(uv))

    def request_options(
        self, binding: str, user_id: str | None, *, user_verification: str | None = None
    ) -> dict[str, Any]:
        """navigator.credentials.get() options (JSON form) with a new challenge bound to binding.

        user_id None asks for a discoverable credential (passwordless login). A login's binding
        (``flow:``, ``passwordless:``) with a shared storage needs :meth:`async_request_options`.
        """
        if self._shares(binding):
            raise RuntimeError(f"{binding.split(':')[0]} challenges are shared: use async_request_options")
        uv = user_verification or self.config["user_verification"]
        return self._request_options(self._issue(binding, user_id, uv), user_id, uv)

    async def async_request_options(
        self, binding: str, user_id: str | None, *, user_verification: str | None = None
    ) -> dict[str, Any]:
        """request_options for any binding: a login's challenge is kept for every server when they share the storage."""
        uv = user_verification or self.config["user_verification"]
        return self._request_options(await self._async_issue(binding, user_id, uv), user_id, uv)

    def _request_options(self, challenge: bytes, user_id: str | None, uv: str) -> dict[str, Any]:
        """The options carrying challenge: user_id's passkeys allowed (None: any discoverable one)."""
        allow = []
        if user_id is not None:
            for passkey in self._entry(user_id)["passkeys"]:
                transports = [AuthenticatorTransport(t) for t in passkey.get("transports", []) if t in _TRANSPORTS]
                allow.append(
                    PublicKeyCredentialDescriptor(id=base64url_to_bytes(passkey["id"]), transports=transports or None)
                )
        options = generate_authentication_options(
            rp_id=self.rp_id,
            challenge=challenge,
            timeout=int(self.timeout * 1000),
            allow_credentials=allow,
            user_verification=UserVerificationRequirement(uv),
        )
        result: dict[str, Any] = json.loads(options_to_json(options))
        return result

    def creation_options(self, binding: str, user_id: str, user_name: str) -> dict[str, Any]:
        """navigator.credentials.create() options (JSON form) with a new challenge bound to binding."""
        entry = self._entry(user_id)
        handle = base64url_to_bytes(entry["handle"]) if entry.get("handle") else secrets.token_bytes(32)
        if len(self._pending_handles) > MAX_PENDING_CHALLENGES:
            self._pending_handles.clear()
        self._pending_handles[binding] = bytes_to_base64url(handle)
        uv = self.config["user_verification"]
        options = generate_registration_options(
            rp_id=self.rp_id,
            rp_name=self.config["rp_name"],
            user_name=user_name,
            user_display_name=user_name,
            user_id=handle,
            challenge=self._issue(binding, user_id, uv),
            timeout=int(self.timeout * 1000),
            attestation=AttestationConveyancePreference(self.config["attestation"]),
            authenticator_selection=AuthenticatorSelectionCriteria(
                resident_key=ResidentKeyRequirement.REQUIRED if self.passwordless else ResidentKeyRequirement.PREFERRED,
                user_verification=UserVerificationRequirement(uv),
            ),
            exclude_credentials=[
                PublicKeyCredentialDescriptor(id=base64url_to_bytes(p["id"])) for p in entry["passkeys"]
            ],
        )
        result: dict[str, Any] = json.loads(options_to_json(options))
        return result

    # ---- ceremonies -----------------------------------------------------------------------------------

    def _entry(self, user_id: str, create: bool = False) -> dict[str, Any]:
        """The user's record (a new empty one, stored only when create)."""
        entry = self._users.get(user_id)
        if entry is None:
            entry = {"handle": bytes_to_base64url(secrets.token_bytes(32)), "passkeys": []}
            if create:
                self._users[user_id] = entry
        return entry

    @staticmethod
    def _parse(credential: Any) -> dict[str, Any]:
        """The browser's PublicKeyCredential JSON as a dict, or CeremonyError."""
        if isinstance(credential, str):
            if not credential or len(credential) > MAX_CREDENTIAL_JSON:
                raise CeremonyError("invalid_credential", "No passkey response, or one far too large")
            try:
                credential = json.loads(credential)
            except (ValueError, RecursionError) as err:
                raise CeremonyError("invalid_credential", "The passkey response is not JSON") from err
        if not isinstance(credential, dict) or not isinstance(credential.get("id"), str):
            raise CeremonyError("invalid_credential", "The passkey response has no credential id")
        return credential

    async def async_verify_assertion(self, binding: str, credential: Any, *, user_id: str | None) -> Assertion:
        """Check an assertion against the challenge issued for binding; update the passkey's counter and use.

        user_id None (passwordless) finds the user from the credential id and
        its user handle. Raises CeremonyError with the reason.
        """
        pending = await self._async_take(binding)  # taken first: a refused answer spends the challenge too
        parsed = self._parse(credential)
        if pending is None:
            raise CeremonyError("invalid_challenge", "The passkey challenge is unknown, used or expired")
        if user_id is not None and pending.user_id != user_id:
            raise CeremonyError("invalid_challenge", "The passkey challenge was issued to someone else")
        owner = self._by_credential.get(parsed["id"])
        if owner is None or (user_id is not None and owner != user_id):
            raise CeremonyError("unknown_passkey", "This passkey is not registered for this account")
        entry = self._users[owner]
        passkey = next(p for p in entry["passkeys"] if p["id"] == parsed["id"])
        if user_id is None:
            handle = (
                (parsed.get("response") or {}).get("userHandle") if isinstance(parsed.get("response"), dict) else None
            )
            if not isinstance(handle, str) or not hmac.compare_digest(handle, entry["handle"]):
                raise CeremonyError("unknown_passkey", "The passkey's user handle does not match its account")
        try:
            verified = verify_authentication_response(
                credential=parsed,
                expected_challenge=pending.challenge,
                expected_rp_id=self.rp_id,
                expected_origin=self.origins,
                credential_public_key=base64url_to_bytes(passkey["public_key"]),
                credential_current_sign_count=0,  # the counter is checked below, to log a possible clone
                require_user_verification=pending.user_verification == "required",
            )
        except (WebAuthnException, ValueError, TypeError, KeyError, IndexError) as err:
            raise CeremonyError("invalid_credential", f"The passkey response was refused: {err}") from err
        stored = int(passkey.get("sign_count") or 0)
        if (verified.new_sign_count or stored) and verified.new_sign_count <= stored:
            _LOGGER.warning(
                "Passkey %r of user %s sent sign counter %d, not above the stored %d: possibly a cloned "
                "authenticator; refused",
                passkey.get("name"),
                owner,
                verified.new_sign_count,
                stored,
            )
            raise CeremonyError("counter_error", "The passkey's counter went backwards (a cloned key?)")
        passkey["sign_count"] = verified.new_sign_count
        passkey["last_used_at"] = _now_iso()
        passkey["backed_up"] = verified.credential_backed_up
        await self._async_save(owner)
        return Assertion(owner, passkey, verified.user_verified)

    async def async_register(self, binding: str, user_id: str, credential: Any, name: Any) -> dict[str, Any]:
        """Verify a browser's attestation for the challenge issued for binding, then enrol it."""
        name = clean_name(name)
        pending = self._take(binding)
        handle = self._pending_handles.pop(binding, None)
        parsed = self._parse(credential)
        if pending is None or pending.user_id != user_id or handle is None:
            raise CeremonyError("invalid_challenge", "The passkey challenge is unknown, used or expired")
        try:
            verified = verify_registration_response(
                credential=parsed,
                expected_challenge=pending.challenge,
                expected_rp_id=self.rp_id,
                expected_origin=self.origins,
                require_user_verification=pending.user_verification == "required",
            )
        except (WebAuthnException, ValueError, TypeError, KeyError, IndexError) as err:
            raise CeremonyError("invalid_credential", f"The passkey was refused: {err}") from err
        entry = self._entry(user_id, create=True)
        entry["handle"] = handle
        transports = (
            (parsed.get("response") or {}).get("transports") if isinstance(parsed.get("response"), dict) else None
        )
        return await self.async_setup_user(
            user_id,
            {
                "id": bytes_to_base64url(verified.credential_id),
                "public_key": bytes_to_base64url(verified.credential_public_key),
                "sign_count": verified.sign_count,
                "name": name,
                "aaguid": verified.aaguid,
                "transports": transports if isinstance(transports, list) else [],
                "backed_up": verified.credential_backed_up,
            },
        )

    # ---- management ---------------------------------------------------------------------------------

    @staticmethod
    def describe(passkey: dict[str, Any]) -> dict[str, Any]:
        """What a list shows of a passkey (never the key)."""
        return {
            "id": passkey["id"],
            "name": passkey.get("name"),
            "created_at": passkey.get("created_at"),
            "last_used_at": passkey.get("last_used_at"),
            "model": model_for(passkey.get("aaguid")),
            "backed_up": bool(passkey.get("backed_up")),
        }

    def passkeys(self, user_id: str) -> list[dict[str, Any]]:
        """The user's passkeys as listed."""
        entry = self._users.get(user_id)
        return [self.describe(p) for p in entry["passkeys"]] if entry else []

    async def async_rename(self, user_id: str, passkey_id: str, name: Any) -> dict[str, Any]:
        """Rename one of the user's passkeys."""
        passkey = self._find(user_id, passkey_id)
        passkey["name"] = clean_name(name)
        await self._async_save(user_id)
        return self.describe(passkey)

    async def async_remove(self, user_id: str, passkey_id: str) -> None:
        """Remove one of the user's passkeys (the last one leaves the user unenrolled)."""
        passkey = self._find(user_id, passkey_id)
        entry = self._users[user_id]
        entry["passkeys"] = [p for p in entry["passkeys"] if p is not passkey]
        if not entry["passkeys"]:
            del self._users[user_id]
        self._reindex()
        await self._async_save(user_id)

    def _find(self, user_id: str, passkey_id: Any) -> dict[str, Any]:
        """One passkey of the user, or CeremonyError not_found."""
        entry = self._users.get(user_id)
        for passkey in entry["passkeys"] if entry else []:
            if passkey["id"] == passkey_id:
                return passkey
        raise CeremonyError("not_found", "No such passkey")

    # ---- recent proof (for enrolment) -------------------------------------------------------------

    def note_proof(self, refresh_token_id: str) -> None:
        """The session of refresh_token_id just proved a password or factor."""
        now = time.monotonic()
        self._proofs = {k: v for k, v in self._proofs.items() if now - v < PROOF_WINDOW}
        self._proofs[refresh_token_id] = now

    def proof_left(self, refresh_token: Any) -> float:
        """Seconds the session may still add passkeys: a login (token) or a re-authentication under 5 minutes old.

        A login through a provider that checks every request (trusted networks) is no proof.
        """
        left = 0.0
        proved = self._proofs.get(refresh_token.id)
        if proved is not None:
            left = PROOF_WINDOW - (time.monotonic() - proved)
        if refresh_token.token_type == RefreshToken.TYPE_NORMAL and self._login_proves_the_person(refresh_token):
            age = (datetime.now(UTC) - refresh_token.created_at).total_seconds()
            left = max(left, PROOF_WINDOW - age)
        return max(0.0, left)

    def _login_proves_the_person(self, refresh_token: Any) -> bool:
        """Whether the session's login is a proof: not one a provider confines to its networks (trusted networks).

        Such a login proves where the client is, not who; a passkey added on its strength would log in
        from anywhere.
        """
        credential = refresh_token.credential
        if credential is None:
            return True
        provider = self.auth.get_auth_provider(credential.auth_provider_type, credential.auth_provider_id)
        return provider is not None and not provider.CHECKS_EVERY_REQUEST


_TRANSPORTS = frozenset(t.value for t in AuthenticatorTransport)


class ProfileOnlySetupFlow(SetupFlow):
    """auth/setup_mfa cannot run a browser ceremony: it points to the profile page's passkey commands."""

    async def async_step_init(self, user_input: dict[str, Any] | None = None) -> FlowResult:
        """Abort with the reason."""
        return self.async_abort(reason="passkey_setup_on_profile")


@hookimpl
def opp_auth_register_mfa_modules(register: Any) -> None:
    """Ship the webauthn module."""
    register(WebauthnAuthModule)


from . import websocket  # noqa: E402  (registers the commands through its own hooks)


@hookimpl
def opp_auth_register_websocket_commands(register: Any) -> None:
    """Passkey management commands."""
    websocket.register_commands(register)

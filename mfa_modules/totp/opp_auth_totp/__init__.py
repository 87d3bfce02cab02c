"""Time-based one-time passwords (authenticator apps), with replay protection and recovery codes."""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import secrets
import time
from typing import Any

import pyotp
import segno
import voluptuous as vol

from opp_auth import FlowResult, MfaModule, SetupFlow, hookimpl, websocket

_LOGGER = logging.getLogger(__name__)

STORAGE_KEY = "auth_module.totp"
STORAGE_VERSION = 1
ISSUER = "Open Peer Power"
SECRET_LENGTH = 32  # base32 characters: 160 bits
INPUT_FIELD_CODE = "code"
RECOVERY_ALPHABET = "abcdefghjkmnpqrstuvwxyz23456789"
DUMMY_SECRET = "JBSWY3DPEHPK3PXPJBSWY3DPEHPK3PXP"
STEP_SECONDS = 30

CONFIG_SCHEMA = MfaModule.CONFIG_SCHEMA.extend(
    {vol.Optional("recovery_codes", default=10): vol.All(int, vol.Range(min=0, max=50))},
    extra=vol.PREVENT_EXTRA,
)


def _new_recovery_code() -> str:
    """A code like 'k7mq-2xw9-hd4c' (about 70 bits)."""
    chars = "".join(secrets.choice(RECOVERY_ALPHABET) for _ in range(12))
    return f"{chars[0:4]}-{chars[4:8]}-{chars[8:12]}"


def _normalize_recovery(code: str) -> str:
    """Recovery codes compare without dashes, spaces or case."""
    return "".join(ch for ch in code.lower() if ch.isalnum())


def _hash_recovery(salt: str, code: str) -> str:
    """Stored form of a recovery code."""
    return hashlib.sha256(f"{salt}:{_normalize_recovery(code)}".encode()).hexdigest()


def _secret_bytes(secret: str) -> bytes:
    """Decode a base32 secret of any length (Open Peer Power's are 80 bits, below pyotp's minimum)."""
    cleaned = secret.replace(" ", "").upper()
    return base64.b32decode(cleaned + "=" * (-len(cleaned) % 8))


def _code_at(key: bytes, counter: int) -> str:
    """The RFC 4226 six-digit code for a counter (HMAC-SHA1, dynamic truncation)."""
    digest = hmac.digest(key, counter.to_bytes(8, "big"), "sha1")
    offset = digest[-1] & 0x0F
    return f"{(int.from_bytes(digest[offset : offset + 4], 'big') & 0x7FFFFFFF) % 1_000_000:06d}"


def _matching_timecode(secret: str, code: str, now: float, window: int = 1) -> int | None:
    """The 30-second time step whose code equals code, within window steps; else None."""
    key = _secret_bytes(secret)
    current = int(now // STEP_SECONDS)
    found = None
    for offset in range(-window, window + 1):
        # Compare every candidate so timing does not reveal which step matched.
        if hmac.compare_digest(_code_at(key, current + offset), code):
            found = current + offset
    return found


class TotpAuthModule(MfaModule):
    """Authenticator-app codes."""

    TYPE = "totp"
    DEFAULT_TITLE = "Time-based One Time Password"
    MAX_RETRY_TIME = 5
    CONFIG_SCHEMA = CONFIG_SCHEMA

    def __init__(self, auth: Any, config: dict[str, Any]) -> None:
        """Nothing loaded yet."""
        super().__init__(auth, config)
        # Journaled: a login writes its user's replay counter, not every user's secret.
        self._store = auth.storage(STORAGE_KEY, STORAGE_VERSION, private=True, journal=True)
        self._users: dict[str, str] = {}
        self._recovery: dict[str, dict[str, Any]] = {}
        self._last_used: dict[str, int] = {}
        self._doc: dict[str, Any] = {
            "users": self._users,
            "recovery_codes": self._recovery,
            "last_used": self._last_used,
        }

    @property
    def input_schema(self) -> vol.Schema:
        """The login form: one code."""
        return vol.Schema({vol.Required(INPUT_FIELD_CODE): str})

    async def async_initialize(self) -> None:
        """Read the secrets; follow changes other servers make (shared storage)."""
        self._use(await self._store.async_load())
        self._store.listen(self._use)

    def _use(self, data: Any) -> None:
        """Take the stored secrets (at start, and when another server changed them)."""
        # The store's own object is kept as the live one (cleaned in place): a shared store applies
        # another server's change to the object it holds, and a rebuild from an older copy would undo
        # a change of ours still being written (an enrolment lost in memory: a login without TOTP).
        data = data if isinstance(data, dict) else {}
        sections: list[dict[str, Any]] = []
        for name, kind in (("users", str), ("recovery_codes", dict), ("last_used", int)):
            section = data.get(name)
            if not isinstance(section, dict):
                section = data[name] = {}
            for uid in [uid for uid, value in section.items() if not isinstance(value, kind)]:
                del section[uid]
            sections.append(section)
        self._users, self._recovery, self._last_used = sections
        self._doc = data

    async def _async_save(self, user_id: str, *sections: str) -> None:
        """Make the user's entries in sections durable (Open Peer Power's format plus our extra keys)."""
        await self._store.async_save_changes(
            self._doc, [(section, user_id) for section in sections or ("users", "recovery_codes", "last_used")]
        )

    async def async_setup_flow(self, user_id: str) -> SetupFlow:
        """Enrolment: secret, URI and QR code, confirmed with a code."""
        user = self.auth.get_user(user_id)
        return TotpSetupFlow(self, self.input_schema, user_id, user.name if user else None)

    async def async_setup_user(self, user_id: str, setup_data: Any) -> str:
        """Enrol with the given secret (or a new one); returns the secret."""
        secret = (setup_data or {}).get("secret") or pyotp.random_base32(SECRET_LENGTH)
        self._users[user_id] = secret
        self._last_used.pop(user_id, None)
        await self._async_save(user_id, "users", "last_used")
        return secret

    async def async_new_recovery_codes(self, user_id: str) -> list[str]:
        """Replace the user's recovery codes; the plain codes are returned once, only hashes are kept."""
        count = self.config.get("recovery_codes", 10)
        codes = [_new_recovery_code() for _ in range(count)]
        salt = secrets.token_hex(8)
        self._recovery[user_id] = {"salt": salt, "hashes": [_hash_recovery(salt, c) for c in codes]}
        await self._async_save(user_id, "recovery_codes")
        return codes

    def recovery_codes_left(self, user_id: str) -> int:
        """How many unused recovery codes the user has."""
        return len(self._recovery.get(user_id, {}).get("hashes", []))

    async def async_depose_user(self, user_id: str) -> None:
        """Forget the user's secret and recovery codes."""
        changed = self._users.pop(user_id, None) is not None
        changed |= self._recovery.pop(user_id, None) is not None
        changed |= self._last_used.pop(user_id, None) is not None
        if changed:
            await self._async_save(user_id)

    async def async_is_user_setup(self, user_id: str) -> bool:
        """Whether the user has a secret."""
        return user_id in self._users

    async def async_validate(self, user_id: str, user_input: dict[str, Any]) -> bool:
        """A fresh code (never one used before), or an unused recovery code."""
        code = str(user_input.get(INPUT_FIELD_CODE, "")).strip()
        secret = self._users.get(user_id)
        if secret is None:
            _matching_timecode(DUMMY_SECRET, code, time.time())
            return False
        if len(code) == 6 and code.isdigit():
            timecode = _matching_timecode(secret, code, time.time())
            if timecode is None or timecode <= self._last_used.get(user_id, -1):
                return False
            self._last_used[user_id] = timecode
            await self._async_save(user_id, "last_used")
            return True
        return await self._async_use_recovery_code(user_id, code)

    async def _async_use_recovery_code(self, user_id: str, code: str) -> bool:
        """Spend a recovery code."""
        entry = self._recovery.get(user_id)
        if not entry or not _normalize_recovery(code):
            return False
        wanted = _hash_recovery(entry["salt"], code)
        match = None
        for stored in entry["hashes"]:
            if hmac.compare_digest(stored, wanted):
                match = stored
        if match is None:
            return False
        entry["hashes"] = [h for h in entry["hashes"] if h != match]
        await self._async_save(user_id, "recovery_codes")
        _LOGGER.info("User %s logged in with a recovery code (%d left)", user_id, len(entry["hashes"]))
        return True

    def is_current_code(self, user_id: str, code: str) -> bool:
        """Whether code is valid now for the user (no replay bookkeeping; for re-authentication)."""
        secret = self._users.get(user_id)
        return secret is not None and _matching_timecode(secret, code.strip(), time.time()) is not None


class TotpSetupFlow(SetupFlow):
    """Show the secret and QR code; confirm with a code."""

    def __init__(
        self, auth_module: TotpAuthModule, setup_schema: vol.Schema, user_id: str, user_name: str | None
    ) -> None:
        """A new secret for this enrolment."""
        super().__init__(auth_module, setup_schema, user_id)
        self._module = auth_module
        self._user_name = user_name or user_id
        self._secret = pyotp.random_base32(SECRET_LENGTH)
        self._url = pyotp.TOTP(self._secret).provisioning_uri(name=self._user_name, issuer_name=ISSUER)
        qr = segno.make(self._url, error="m")
        self._svg = qr.svg_inline(scale=4)

    async def async_step_init(self, user_input: dict[str, str] | None = None) -> FlowResult:
        """Check the code against the pending secret; on success enrol and hand out recovery codes."""
        errors: dict[str, str] = {}
        if user_input:
            code = str(user_input.get(INPUT_FIELD_CODE, "")).strip()
            timecode = _matching_timecode(self._secret, code, time.time())
            if timecode is not None:
                await self._module.async_setup_user(self.user_id, {"secret": self._secret})
                # The code just shown to the server must not work again at login.
                self._module._last_used[self.user_id] = timecode
                codes = await self._module.async_new_recovery_codes(self.user_id)
                return self.async_create_entry(title=self._module.name, data={"recovery_codes": codes})
            errors["base"] = "invalid_code"
        return self.async_show_form(
            step_id="init",
            data_schema=self.setup_schema,
            description_placeholders={"code": self._secret, "url": self._url, "qr_code": self._svg},
            errors=errors,
        )


@websocket.require_user(allow_system_user=False)
@websocket.command(
    {
        vol.Required("type"): "auth/totp/recovery_codes",
        vol.Required("code"): str,
        vol.Optional("mfa_module_id", default="totp"): str,
    }
)
async def recovery_codes_command(conn: websocket.ActiveConnection, msg: dict[str, Any]) -> None:
    """A new set of recovery codes, after proving possession with a current code."""
    module = conn.context.get_auth_mfa_module(msg["mfa_module_id"])
    if not isinstance(module, TotpAuthModule):
        raise websocket.CommandError("no_module", f"MFA module {msg['mfa_module_id']} is not found")
    if not await module.async_is_user_setup(conn.user.id):
        raise websocket.CommandError("not_set_up", "Two-factor authentication is not set up")
    wait = await conn.context.async_login_retry_after(conn.remote, conn.user.name)
    if wait > 0:
        raise websocket.CommandError("too_many_attempts", conn.context.too_many_attempts_message(wait))
    if not module.is_current_code(conn.user.id, msg["code"]):
        conn.context.note_login_failure(conn.remote, None, conn.user.name, "invalid_code")
        raise websocket.CommandError("invalid_code", "Invalid code")
    conn.send_result(msg["id"], {"recovery_codes": await module.async_new_recovery_codes(conn.user.id)})


@websocket.require_user(allow_system_user=False)
@websocket.command({vol.Required("type"): "auth/totp/info"})
async def info_command(conn: websocket.ActiveConnection, msg: dict[str, Any]) -> None:
    """The caller's enrolments in totp modules and how many recovery codes each has left."""
    modules = {}
    for module in conn.context.auth_mfa_modules:
        if isinstance(module, TotpAuthModule) and await module.async_is_user_setup(conn.user.id):
            modules[module.id] = {"recovery_codes_left": module.recovery_codes_left(conn.user.id)}
    conn.send_result(msg["id"], {"modules": modules})


@hookimpl
def opp_auth_register_mfa_modules(register: Any) -> None:
    """Ship the totp module."""
    register(TotpAuthModule)


@hookimpl
def opp_auth_register_websocket_commands(register: Any) -> None:
    """The recovery-code commands."""
    register(recovery_codes_command)
    register(info_command)

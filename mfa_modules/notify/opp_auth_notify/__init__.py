"""One-time codes sent through notify services (e-mail, a program, a file).

The code sent for a login is pending until it is used, replaced (a new login of the
same user, or the fresh code after a wrong one) or PENDING_TTL after the first send.
On one server it stays in memory (the HOTP key and counter). With several servers on
one storage (``PluginContext.shared_state``) it is kept where every server sees it
(``PluginContext.async_put_shared``): an HMAC of the six digits under a key derived
from the server secret (``PluginContext.derive_key``), never the code or the HOTP key, under
``notify.<module id>.pending.<user id>``, expiring by the storage's clock and taken
at most once, so a code sent by one server is accepted by another exactly once.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import re
import secrets
import time
from collections import OrderedDict, deque
from dataclasses import dataclass
from typing import Any

import voluptuous as vol

from opp_auth import FlowResult, MfaAbort, MfaModule, SetupFlow, hookimpl

from . import hookspecs
from .platforms import BUILTIN_PLATFORMS, NotifyError, NotifyPlatform

__all__ = ["NotifyAuthModule", "NotifyError", "NotifyPlatform", "installed_platforms"]

_LOGGER = logging.getLogger(__name__)

STORAGE_KEY = "auth_module.notify"
STORAGE_VERSION = 1
CONFIG_BLOCK = "notify"
DEFAULT_SERVICE_NAME = "notify"
DEFAULT_MESSAGE = "{} is your Open Peer Power login code"
INPUT_FIELD_CODE = "code"
KEY_BYTES = 20  # 160-bit HOTP key
MAX_COUNTER = 10**8
PENDING_TTL = 600.0  # a login flow lives at most this long
MAX_PENDING = 1000
RESENDS_PER_LOGIN = 3
SENDS_PER_MINUTE = 5
DUMMY_KEY = b"\x00" * KEY_BYTES
NEW_DEVICE_LOGIN = "new_device_login"
DEFAULT_NEW_DEVICE_MESSAGE = (
    "New sign-in to Open Peer Power as {user} at {time} from {address} ({client}; {device}). "
    "If this was not you, change your password and end that session on your profile page."
)
NEW_DEVICE_FIELDS = ("user", "time", "address", "network", "client", "device")
ALERTS_PER_HOUR = 3
MAX_ALERT_FIELD = 120
# Controls (ANSI escapes start with one), bidi and invisible format characters, lone surrogates.
_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u061c\u180e\u200b-\u200f\u2028-\u202e\u2060-\u206f\ufeff\ud800-\udfff]")


def _message_template(value: Any) -> str:
    """A message with one {} where the code goes."""
    if not isinstance(value, str):
        raise vol.Invalid("expected a string")
    try:
        formatted = value.format("000000")
    except (IndexError, KeyError, ValueError) as err:
        raise vol.Invalid(f"must contain {{}} where the code goes and no other {{...}} fields ({err})") from None
    if "000000" not in formatted:
        raise vol.Invalid("must contain {} where the code goes")
    return value


def _new_device_template(value: Any) -> str:
    """A message whose {fields} are among NEW_DEVICE_FIELDS."""
    if not isinstance(value, str):
        raise vol.Invalid("expected a string")
    try:
        value.format(**dict.fromkeys(NEW_DEVICE_FIELDS, "x"))
    except (IndexError, KeyError, ValueError) as err:
        raise vol.Invalid(
            f"may use only the fields {{{'}, {'.join(NEW_DEVICE_FIELDS)}}} ({type(err).__name__}: {err})"
        ) from None
    return value


def _alert_text(value: Any) -> str:
    """A client-supplied value fit for a message: controls replaced, clipped."""
    text = _UNSAFE.sub("\ufffd", str(value)) if value not in (None, "") else "?"
    return text if len(text) <= MAX_ALERT_FIELD else text[: MAX_ALERT_FIELD - 1] + "\u2026"


CONFIG_SCHEMA = MfaModule.CONFIG_SCHEMA.extend(
    {
        vol.Optional("include"): [str],
        vol.Optional("exclude"): [str],
        vol.Optional("message", default=DEFAULT_MESSAGE): _message_template,
        vol.Optional("new_device_alerts", default=True): bool,
        vol.Optional("new_device_message", default=DEFAULT_NEW_DEVICE_MESSAGE): _new_device_template,
    },
    extra=vol.PREVENT_EXTRA,
)


def _code_at(key: bytes, counter: int) -> str:
    """The RFC 4226 six-digit code for a counter (HMAC-SHA1, dynamic truncation)."""
    digest = hmac.digest(key, counter.to_bytes(8, "big"), "sha1")
    offset = digest[-1] & 0x0F
    return f"{(int.from_bytes(digest[offset : offset + 4], 'big') & 0x7FFFFFFF) % 1_000_000:06d}"


def _slug(value: str) -> str:
    """A service name as Open Peer Power makes it (notify.<slug>)."""
    return re.sub(r"[^a-z0-9_]+", "_", value.strip().lower()).strip("_")


def installed_platforms(pm: Any) -> dict[str, type[NotifyPlatform]]:
    """Platform classes registered through opp_auth_notify_register_platforms, by name.

    ``pm`` is anything with pluggy's ``hook`` relay: the plugin manager (config time) or the PluginContext.
    """
    platforms: dict[str, type[NotifyPlatform]] = {}
    caller = getattr(pm.hook, "opp_auth_notify_register_platforms", None)
    if caller is None:
        return platforms

    def register(cls: Any) -> None:
        """Record one platform class."""
        if not (
            isinstance(cls, type)
            and issubclass(cls, NotifyPlatform)
            and isinstance(getattr(cls, "PLATFORM", None), str)
        ):
            raise TypeError(f"{cls!r} is not a NotifyPlatform subclass with a PLATFORM name")
        if platforms.get(cls.PLATFORM, cls) is not cls:
            raise ValueError(f"notify platform '{cls.PLATFORM}' is registered twice")
        platforms[cls.PLATFORM] = cls

    caller(register=register)
    return platforms


def notify_block_schema(platforms: dict[str, type[NotifyPlatform]]) -> Any:
    """Validator of the top-level notify: block (each entry checked by its platform's SCHEMA)."""

    def validate(value: Any) -> list[dict[str, Any]]:
        if value is None:
            return []
        if not isinstance(value, list):
            raise vol.Invalid("expected a list of notify services (- name: ..., platform: ...)")
        services: list[dict[str, Any]] = []
        seen: set[str] = set()
        for index, entry in enumerate(value):
            if not isinstance(entry, dict):
                raise vol.Invalid("expected a mapping with name, platform and the platform's keys", path=[index])
            platform = entry.get("platform")
            if platform is None:
                raise vol.Invalid("required key not provided", path=[index, "platform"])
            if not isinstance(platform, str) or platform not in platforms:
                installed = ", ".join(sorted(platforms)) or "none"
                raise vol.Invalid(
                    f"unknown notify platform '{platform}'. Installed platforms: {installed}", path=[index, "platform"]
                )
            raw_name = entry.get("name", DEFAULT_SERVICE_NAME)
            name = _slug(raw_name) if isinstance(raw_name, str) else ""
            if not name:
                raise vol.Invalid("expected a service name (letters, digits, _)", path=[index, "name"])
            if name in seen:
                raise vol.Invalid(f"duplicate notify service name '{name}'", path=[index, "name"])
            seen.add(name)
            own = {key: val for key, val in entry.items() if key not in ("name", "platform")}
            try:
                conf = platforms[platform].SCHEMA(own)
            except vol.Invalid as err:
                first = err
                while isinstance(first, vol.MultipleInvalid) and first.errors:
                    first = first.errors[0]
                # Re-rooted at this entry so the core's error names the file, line and key.
                raise vol.Invalid(first.error_message, path=[index, *first.path]) from None
            services.append({**conf, "name": name, "platform": platform})
        return services

    return validate


@dataclass
class _Pending:
    """A code sent for one login: HOTP key and counter, kept in memory only."""

    key: bytes
    counter: int
    created: float
    resends: int = 0


class NotifyAuthModule(MfaModule):
    """Codes delivered by a notify service the user picked."""

    TYPE = "notify"
    DEFAULT_TITLE = "Notify One-Time Password"
    MAX_RETRY_TIME = 3
    CONFIG_SCHEMA = CONFIG_SCHEMA

    def __init__(self, auth: Any, config: dict[str, Any]) -> None:
        """Build the configured services; nothing loaded yet."""
        super().__init__(auth, config)
        # Journaled: a change writes the one user's settings (a path save), not every user's.
        self._store = auth.storage(STORAGE_KEY, STORAGE_VERSION, private=True, journal=True)
        self._users: dict[str, dict[str, Any]] = {}
        self._doc: dict[str, Any] = {"users": self._users}
        self._pending: OrderedDict[str, _Pending] = OrderedDict()
        self._send_times: OrderedDict[str, deque[float]] = OrderedDict()
        self._alert_times: OrderedDict[str, deque[float]] = OrderedDict()
        platforms = installed_platforms(auth)
        self.services: dict[str, NotifyPlatform] = {}
        for entry in auth.config_blocks.get(CONFIG_BLOCK) or []:
            cls = platforms.get(entry["platform"])
            if cls is None:
                _LOGGER.error("Notify service %s: platform %s is not installed", entry["name"], entry["platform"])
                continue
            self.services[entry["name"]] = cls(auth, entry["name"], entry)

    @property
    def input_schema(self) -> vol.Schema:
        """The login form: one code."""
        return vol.Schema({vol.Required(INPUT_FIELD_CODE): str})

    @property
    def available_services(self) -> list[str]:
        """Configured services minus exclude, within include if given, sorted."""
        names = set(self.services) - set(self.config.get("exclude") or [])
        if self.config.get("include") is not None:
            names &= set(self.config["include"])
        return sorted(names)

    async def async_initialize(self) -> None:
        """Read the users' chosen services; follow changes other servers make (shared storage)."""
        self._use(await self._store.async_load())
        self._store.listen(self._use)

    def _use(self, data: Any) -> None:
        """Take the stored settings (at start, and when another server changed them)."""
        # The store's own object is kept as the live one (cleaned in place): a shared store applies
        # another server's change to the object it holds, and a rebuild from an older copy would undo
        # a change of ours still being written.
        if not isinstance(data, dict):
            data = {}
        users = data.get("users")
        if not isinstance(users, dict):
            users = data["users"] = {}
        for uid in list(users):
            setting = users[uid]
            if not (isinstance(setting, dict) and isinstance(setting.get("notify_service"), str)):
                del users[uid]
            else:
                setting.setdefault("target", None)
        self._doc = data
        self._users = users

    async def _async_save(self, user_id: str) -> None:
        """Make the user's settings (or their removal) durable now (Open Peer Power's format when compacted)."""
        await self._store.async_save_changes(self._doc, [("users", user_id)])

    async def async_setup_flow(self, user_id: str) -> SetupFlow:
        """Enrolment: pick a service and target, confirm with the code it delivers."""
        return NotifySetupFlow(self, user_id)

    async def async_setup_user(self, user_id: str, setup_data: Any) -> None:
        """Enrol with {notify_service, target}."""
        service = (setup_data or {}).get("notify_service")
        if not isinstance(service, str) or not service:
            raise ValueError("notify_service is required")
        target = (setup_data or {}).get("target")
        self._users[user_id] = {
            "notify_service": service,
            "target": target if isinstance(target, str) and target else None,
        }
        await self._async_save(user_id)

    async def async_depose_user(self, user_id: str) -> None:
        """Forget the user's service and any pending code."""
        self._pending.pop(user_id, None)
        if self.auth.shared_state:
            await self.auth.async_take_shared(self._shared_key(user_id))
        if self._users.pop(user_id, None) is not None:
            await self._async_save(user_id)

    async def async_is_user_setup(self, user_id: str) -> bool:
        """Whether the user chose a service."""
        return user_id in self._users

    # ---- codes --------------------------------------------------------------------------

    def _recent_sends(self, user_id: str) -> int:
        """Codes sent to the user in the last minute."""
        times = self._send_times.get(user_id)
        if not times:
            return 0
        now = time.monotonic()
        while times and now - times[0] >= 60:
            times.popleft()
        return len(times)

    def _note_send(self, user_id: str) -> None:
        """Count a send against the user's per-minute limit."""
        times = self._send_times.setdefault(user_id, deque(maxlen=SENDS_PER_MINUTE))
        times.append(time.monotonic())
        self._send_times.move_to_end(user_id)
        while len(self._send_times) > MAX_PENDING:
            self._send_times.popitem(last=False)

    def may_resend(self, user_id: str, resends_so_far: int) -> bool:
        """Whether another code may be sent after a wrong one (logs why not)."""
        if resends_so_far >= RESENDS_PER_LOGIN:
            _LOGGER.warning(
                "Not sending another code to user %s: %d codes were resent already", user_id, resends_so_far
            )
            return False
        if self._recent_sends(user_id) >= SENDS_PER_MINUTE:
            _LOGGER.warning(
                "Not sending another code to user %s: %d codes sent in the last minute", user_id, SENDS_PER_MINUTE
            )
            return False
        return True

    async def async_deliver(
        self, user_id: str, service_name: str, target: str | None, key: bytes, counter: int
    ) -> str | None:
        """Send the code for (key, counter); None when sent, else an abort reason (the error is logged)."""
        service = self.services.get(service_name)
        if service is None:
            _LOGGER.error(
                "Cannot send a login code to user %s: notify service %s does not exist", user_id, service_name
            )
            return "notify_service_not_exist"
        message = self.config["message"].format(_code_at(key, counter))
        try:
            await service.async_send(message, target)
        except Exception as err:  # noqa: BLE001 - any delivery failure ends in a clear abort
            _LOGGER.error(
                "Could not send a login code to user %s through notify service %s (%s): %s: %s",
                user_id,
                service_name,
                service.PLATFORM,
                type(err).__name__,
                err,
            )
            return "send_failed"
        self._note_send(user_id)
        if self.auth.shared_state:
            await self._async_note_shared_send(user_id)
        return None

    # ---- new-device alerts ------------------------------------------------------------------

    async def async_alert_new_device(self, event: Any) -> bool:
        """Tell an enrolled user of a sign-in from a new client or network; whether a message went out.

        At most ALERTS_PER_HOUR per user (a stolen password tried from many networks
        must not become a mail bomb); a delivery failure is logged, never raised.
        """
        setting = self._users.get(event.user_id)
        if setting is None or not self.config["new_device_alerts"]:
            return False
        now = time.monotonic()
        times = self._alert_times.get(event.user_id)
        while times and now - times[0] >= 3600:
            times.popleft()
        if times is not None and len(times) >= ALERTS_PER_HOUR:
            _LOGGER.warning(
                "Not sending a new-device alert to user %s: %d sent in the last hour", event.user_id, ALERTS_PER_HOUR
            )
            return False
        service = self.services.get(setting["notify_service"])
        if service is None:
            _LOGGER.error(
                "Cannot alert user %s of a new device: notify service %s does not exist",
                event.user_id,
                setting["notify_service"],
            )
            return False
        user = self.auth.get_user(event.user_id)
        details = event.details or {}
        message = self.config["new_device_message"].format(
            user=_alert_text(user.name if user is not None and user.name else event.username),
            time=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(event.time)),
            address=_alert_text(event.remote_address),
            network=_alert_text(details.get("network")),
            client=_alert_text(event.client_id),
            device=_alert_text(event.user_agent),
        )
        times = self._alert_times.setdefault(event.user_id, deque(maxlen=ALERTS_PER_HOUR))
        times.append(now)
        self._alert_times.move_to_end(event.user_id)
        while len(self._alert_times) > MAX_PENDING:
            self._alert_times.popitem(last=False)
        try:
            await service.async_send(message, setting["target"])
        except Exception as err:  # noqa: BLE001 - an alert that cannot go out is logged, the sign-in stands
            _LOGGER.error(
                "Could not send a new-device alert to user %s through notify service %s (%s): %s: %s",
                event.user_id,
                setting["notify_service"],
                service.PLATFORM,
                type(err).__name__,
                err,
            )
            return False
        return True

    def _live_pending(self, user_id: str) -> _Pending | None:
        """The user's current code, unless it has expired."""
        pending = self._pending.get(user_id)
        if pending is not None and time.monotonic() - pending.created > PENDING_TTL:
            del self._pending[user_id]
            return None
        return pending

    def _remember(self, user_id: str, pending: _Pending) -> None:
        """Keep the code in memory, evicting the oldest beyond the cap."""
        self._pending[user_id] = pending
        self._pending.move_to_end(user_id)
        while len(self._pending) > MAX_PENDING:
            self._pending.popitem(last=False)

    # ---- the pending code when several servers share the storage ------------------------------

    def _shared_key(self, user_id: str) -> str:
        """Where the user's pending code of this module is kept for every server."""
        return f"notify.{self.id}.pending.{user_id}"

    def _sends_key(self, user_id: str) -> str:
        """Where the times of the codes sent to the user in the last minute are kept for every server."""
        return f"notify.{self.id}.sends.{user_id}"

    async def _async_shared_sends(self, user_id: str) -> list[float]:
        """Times (epoch seconds) of the codes any server sent the user in the last minute."""
        current = await self.auth.async_get_shared(self._sends_key(user_id))
        times = current[0].get("times") if current is not None else None
        if not isinstance(times, list):
            return []
        now = time.time()
        return [t for t in times if type(t) in (int, float) and 0 <= now - t < 60]

    async def _async_note_shared_send(self, user_id: str) -> None:
        """Count a send against the user's per-minute limit on every server (read, then written: the
        login steps of one account run one at a time on every server, so two do not interleave)."""
        times = await self._async_shared_sends(user_id)
        times.append(time.time())
        await self.auth.async_put_shared(self._sends_key(user_id), {"times": times[-SENDS_PER_MINUTE:]}, 60.0)

    async def _async_share(self, user_id: str, pending: _Pending, ttl: float) -> None:
        """Keep the code every server must accept (its six digits, not the key) for ttl seconds."""
        mac = self._code_mac(user_id, _code_at(pending.key, pending.counter))
        await self.auth.async_put_shared(self._shared_key(user_id), {"mac": mac, "resends": pending.resends}, ttl)

    def _code_mac(self, user_id: str, code: str) -> str:
        """What the storage keeps of a code: an HMAC under a key derived from the server secret, so a reader
        of the database (a backup, a replica) cannot use the code, nor find it among a million."""
        key = self.auth.derive_key(f"notify.{self.id}.pending")
        message = f"{user_id}\x00{code}".encode("utf-8", "surrogatepass")
        return hmac.new(key, message, hashlib.sha256).hexdigest()

    async def async_initialize_login_mfa_step(self, user_id: str) -> None:
        """A fresh code for this login, sent through the user's service."""
        setting = self._users.get(user_id)
        if setting is None:
            raise MfaAbort("user_not_setup")
        shared = self.auth.shared_state
        self._pending.pop(user_id, None)
        if shared:  # the previous code ends everywhere before the new one goes out
            await self.auth.async_take_shared(self._shared_key(user_id))
        pending = _Pending(secrets.token_bytes(KEY_BYTES), secrets.randbelow(MAX_COUNTER), time.monotonic())
        reason = await self.async_deliver(
            user_id, setting["notify_service"], setting["target"], pending.key, pending.counter
        )
        if reason is not None:
            raise MfaAbort(reason)
        if shared:
            await self._async_share(user_id, pending, PENDING_TTL)
        else:
            self._remember(user_id, pending)

    async def async_after_failed_validation(self, user_id: str) -> None:
        """After a wrong code, send a fresh one (within limits); the old one stays valid if sending fails."""
        if self.auth.shared_state:
            await self._async_resend_shared(user_id)
            return
        setting = self._users.get(user_id)
        pending = self._live_pending(user_id)
        if setting is None or pending is None or not self.may_resend(user_id, pending.resends):
            return
        fresh = _Pending(
            secrets.token_bytes(KEY_BYTES), secrets.randbelow(MAX_COUNTER), pending.created, pending.resends + 1
        )
        if (
            await self.async_deliver(user_id, setting["notify_service"], setting["target"], fresh.key, fresh.counter)
            is None
        ):
            self._remember(user_id, fresh)

    async def _async_resend_shared(self, user_id: str) -> None:
        """async_after_failed_validation with the pending code kept for every server: replaced there."""
        setting = self._users.get(user_id)
        current = await self.auth.async_get_shared(self._shared_key(user_id))
        resends = current[0].get("resends") if current is not None else None
        if not isinstance(resends, int) or isinstance(resends, bool):
            return
        if setting is None or current is None or not self.may_resend(user_id, resends):
            return
        if len(await self._async_shared_sends(user_id)) >= SENDS_PER_MINUTE:
            _LOGGER.warning(
                "Not sending another code to user %s: %d codes sent in the last minute", user_id, SENDS_PER_MINUTE
            )
            return
        # The first send's expiry stays: the fresh code lives what the old one had left.
        fresh = _Pending(secrets.token_bytes(KEY_BYTES), secrets.randbelow(MAX_COUNTER), 0.0, resends + 1)
        if (
            await self.async_deliver(user_id, setting["notify_service"], setting["target"], fresh.key, fresh.counter)
            is None
        ):
            await self._async_share(user_id, fresh, current[1])

    async def async_validate(self, user_id: str, user_input: dict[str, Any]) -> bool:
        """The code of the user's current login (used once)."""
        code = str(user_input.get(INPUT_FIELD_CODE, "")).strip()
        if self.auth.shared_state:
            return await self._async_validate_shared(user_id, code)
        pending = self._live_pending(user_id)
        if pending is None:
            hmac.compare_digest(_code_at(DUMMY_KEY, 0), code)
            return False
        if not hmac.compare_digest(_code_at(pending.key, pending.counter), code):
            return False
        del self._pending[user_id]
        return True

    async def _async_validate_shared(self, user_id: str, code: str) -> bool:
        """The code every server sees; used once: of two servers checking it at once, one takes it."""
        key = self._shared_key(user_id)
        current = await self.auth.async_get_shared(key)
        expected = current[0].get("mac") if current is not None else None
        typed = self._code_mac(user_id, code)
        if current is None or not isinstance(expected, str):
            hmac.compare_digest(typed, typed)
            return False
        if not hmac.compare_digest(expected.encode(), typed.encode()):
            return False
        # Taken only if it is still the code just checked (not replaced, not used elsewhere meanwhile).
        return await self.auth.async_take_shared(key, current[0]) is not None


class NotifySetupFlow(SetupFlow):
    """Pick a service and target, then type the code it delivered."""

    def __init__(self, auth_module: NotifyAuthModule, user_id: str) -> None:
        """Nothing chosen yet."""
        super().__init__(auth_module, auth_module.input_schema, user_id)
        self._module = auth_module
        self._service: str | None = None
        self._target: str | None = None
        self._key = secrets.token_bytes(KEY_BYTES)
        self._counter = 0
        self._resends = 0
        self._sent = False

    async def async_step_init(self, user_input: dict[str, Any] | None = None) -> FlowResult:
        """Choose the service and (optionally) the target."""
        services = self._module.available_services
        if not services:
            return self.async_abort(reason="no_available_service")
        errors: dict[str, str] = {}
        if user_input is not None:
            service = user_input.get("notify_service")
            target = str(user_input.get("target") or "").strip() or None
            if service not in services:
                errors["notify_service"] = "notify_service_not_exist"
            else:
                try:
                    self._module.services[service].check_target(target)
                except ValueError:
                    errors["target"] = "invalid_target"
            if not errors:
                self._service, self._target = service, target
                self._counter = secrets.randbelow(MAX_COUNTER)
                return await self.async_step_setup()
        return self.async_show_form(
            step_id="init",
            data_schema=vol.Schema({vol.Required("notify_service"): vol.In(services), vol.Optional("target"): str}),
            errors=errors,
        )

    async def async_step_setup(self, user_input: dict[str, Any] | None = None) -> FlowResult:
        """Send the code; check what the user typed, sending a new code after a wrong one."""
        assert self._service is not None
        errors: dict[str, str] = {}
        if user_input is None:
            # Only the first display sends: an empty resubmission must not become a mail bomb.
            if not self._sent:
                reason = await self._module.async_deliver(
                    self.user_id, self._service, self._target, self._key, self._counter
                )
                if reason is not None:
                    return self.async_abort(reason=reason, description_placeholders={"notify_service": self._service})
                self._sent = True
        else:
            code = str(user_input.get(INPUT_FIELD_CODE, "")).strip()
            if hmac.compare_digest(_code_at(self._key, self._counter), code):
                await self._module.async_setup_user(
                    self.user_id, {"notify_service": self._service, "target": self._target}
                )
                return self.async_create_entry(title=self._module.name, data={})
            errors["base"] = "invalid_code"
            if self._module.may_resend(self.user_id, self._resends):
                counter = secrets.randbelow(MAX_COUNTER)
                if (
                    await self._module.async_deliver(self.user_id, self._service, self._target, self._key, counter)
                    is None
                ):
                    self._counter = counter
                    self._resends += 1
        return self.async_show_form(
            step_id="setup",
            data_schema=self.setup_schema,
            description_placeholders={"notify_service": self._service},
            errors=errors,
        )


@hookimpl
def opp_auth_add_hookspecs(pm: Any) -> None:
    """Add the platform hook (once per plugin manager)."""
    caller = getattr(pm.hook, "opp_auth_notify_register_platforms", None)
    if caller is None or caller.spec is None:
        pm.add_hookspecs(hookspecs)


@hookimpl
def opp_auth_notify_register_platforms(register: Any) -> None:
    """Ship smtp, command_line and file."""
    for cls in BUILTIN_PLATFORMS:
        register(cls)


@hookimpl
def opp_auth_register_config(register: Any, pm: Any) -> None:
    """Own the notify: block of configuration.yaml."""
    register(CONFIG_BLOCK, notify_block_schema(installed_platforms(pm)))


@hookimpl
async def opp_auth_new_device_login(auth: Any, event: Any) -> None:
    """Alert the user through the first notify module they are enrolled in."""
    if event.type != NEW_DEVICE_LOGIN or not event.user_id:
        return
    for module in auth.auth_mfa_modules:
        if isinstance(module, NotifyAuthModule) and await module.async_is_user_setup(event.user_id):
            await module.async_alert_new_device(event)
            return


@hookimpl
def opp_auth_register_mfa_modules(register: Any) -> None:
    """Ship the notify module."""
    register(NotifyAuthModule)

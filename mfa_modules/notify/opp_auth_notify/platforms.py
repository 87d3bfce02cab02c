"""Delivery platforms shipped with the notify module: smtp, command_line and file."""

from __future__ import annotations

import os
import ssl
import time
from email.message import EmailMessage
from email.utils import formataddr, formatdate, make_msgid
from typing import Any, ClassVar

import aiosmtplib
import voluptuous as vol

from opp_auth import programs

MAX_STDERR = 4096
TARGET_ENV = "NOTIFY_TARGET"
EMAIL_SUBJECT = "Open Peer Power"


class NotifyError(Exception):
    """A message could not be delivered; str() says why (without the message)."""


class NotifyPlatform:
    """A way of delivering a message; one instance per configured service.

    Subclass it, set ``PLATFORM`` and ``SCHEMA`` (the platform's own keys;
    ``name`` and ``platform`` are handled by the notify module) and implement
    :meth:`async_send`, which raises on failure.
    """

    PLATFORM: ClassVar[str]
    SCHEMA: ClassVar[vol.Schema] = vol.Schema({}, extra=vol.PREVENT_EXTRA)

    def __init__(self, auth: Any, name: str, config: dict[str, Any]) -> None:
        """Keep the manager, the service name and the validated configuration."""
        self.auth = auth
        self.name = name
        self.config = config

    @property
    def default_target(self) -> str | None:
        """Where messages go when the user gave no target."""
        return None

    def check_target(self, target: str | None) -> None:
        """Raise ValueError if messages cannot go to target (None: the default target)."""
        if target is not None and (
            not target or len(target) > 254 or any(ord(ch) < 32 or ord(ch) == 127 for ch in target)
        ):
            raise ValueError("invalid target")

    async def async_send(self, message: str, target: str | None) -> None:
        """Deliver message to target (None: the default); raise on failure."""
        raise NotImplementedError


def _absolute_path(value: Any) -> str:
    """An absolute program path (no shell, so no PATH lookup either)."""
    value = vol.Coerce(str)(value)
    if not os.path.isabs(value):
        raise vol.Invalid("must be an absolute path to a program")
    return value


def _address(value: Any) -> str:
    """A bare e-mail address (user@domain)."""
    if not isinstance(value, str):
        raise vol.Invalid("expected an e-mail address")
    value = value.strip()
    local, at, domain = value.rpartition("@")
    if not at or not local or not domain or any(ch.isspace() or ord(ch) < 32 or ch in '<>,;"' for ch in value):
        raise vol.Invalid("expected an e-mail address like someone@example.org")
    return value


class SmtpPlatform(NotifyPlatform):
    """E-mail through an SMTP server (aiosmtplib)."""

    PLATFORM = "smtp"
    SCHEMA = vol.Schema(
        {
            vol.Required("server"): str,
            vol.Optional("port"): vol.All(int, vol.Range(min=1, max=65535)),
            vol.Optional("encryption", default="starttls"): vol.In(["starttls", "tls", "none"]),
            vol.Inclusive("username", "credentials"): str,
            vol.Inclusive("password", "credentials"): str,
            vol.Required("sender"): _address,
            vol.Optional("sender_name"): str,
            vol.Optional("recipient"): vol.Any(_address, [_address]),
            vol.Optional("timeout", default=5): vol.All(vol.Coerce(float), vol.Range(min=0.1, max=300)),
            vol.Optional("verify_ssl", default=True): bool,
        },
        extra=vol.PREVENT_EXTRA,
    )

    @property
    def default_target(self) -> str | None:
        """The configured recipient(s)."""
        recipient = self.config.get("recipient")
        if isinstance(recipient, list):
            return ", ".join(recipient) or None
        return recipient

    def check_target(self, target: str | None) -> None:
        """A target must be one address; without one the service needs a recipient."""
        if target is None:
            if self.default_target is None:
                raise ValueError("no recipient configured and no target given")
            return
        try:
            _address(target)
        except vol.Invalid as err:
            raise ValueError(str(err)) from None

    async def async_send(self, message: str, target: str | None) -> None:
        """One plain-text e-mail to the target (else the configured recipients)."""
        if target is not None:
            recipients = [_address(target)]
        else:
            recipient = self.config.get("recipient")
            recipients = recipient if isinstance(recipient, list) else [recipient] if recipient else []
        if not recipients:
            raise NotifyError("no recipient: configure recipient or give a target")
        sender = self.config["sender"]
        mail = EmailMessage()
        mail["Subject"] = EMAIL_SUBJECT
        sender_name = self.config.get("sender_name")
        mail["From"] = formataddr((sender_name, sender)) if sender_name else sender
        mail["To"] = ", ".join(recipients)
        mail["Date"] = formatdate(time.time(), localtime=True)
        # An explicit domain: make_msgid would otherwise look up this host's FQDN (slow without DNS).
        mail["Message-ID"] = make_msgid(domain=sender.rpartition("@")[2])
        mail.set_content(message)
        encryption = self.config["encryption"]
        tls_context = None
        if encryption != "none":
            tls_context = ssl.create_default_context()
            if not self.config["verify_ssl"]:
                tls_context.check_hostname = False
                tls_context.verify_mode = ssl.CERT_NONE
        port = self.config.get("port") or (465 if encryption == "tls" else 587)
        await aiosmtplib.send(
            mail,
            sender=sender,
            recipients=recipients,
            hostname=self.config["server"],
            port=port,
            username=self.config.get("username"),
            password=self.config.get("password"),
            use_tls=encryption == "tls",
            start_tls=encryption == "starttls",
            tls_context=tls_context,
            timeout=self.config["timeout"],
        )


class CommandLinePlatform(NotifyPlatform):
    """A program (no shell) gets the message on standard input and the target in NOTIFY_TARGET."""

    PLATFORM = "command_line"
    SCHEMA = vol.Schema(
        {
            vol.Required("command"): _absolute_path,
            vol.Optional("args", default=list): [vol.Coerce(str)],
            vol.Optional("timeout", default=15): vol.All(vol.Coerce(float), vol.Range(min=0.1, max=300)),
        },
        extra=vol.PREVENT_EXTRA,
    )

    async def async_send(self, message: str, target: str | None) -> None:
        """Run the program; a non-zero exit or a time-out is a failure."""
        env = {"PATH": programs.SAFE_PATH, TARGET_ENV: target or ""}
        try:
            result = await programs.async_run_program(
                [self.config["command"], *self.config["args"]],
                env=env,
                timeout=self.config["timeout"],
                stdin=message.encode("utf-8"),
                max_stdout=0,
                max_stderr=MAX_STDERR,
            )
        except programs.ProgramTimeout as err:
            raise NotifyError(str(err)) from None
        except programs.ProgramError as err:
            raise NotifyError(f"cannot run {self.config['command']}: {err}") from err
        stderr, code = result.stderr, result.returncode
        if code != 0:
            detail = stderr.decode("utf-8", errors="replace").strip().splitlines()
            raise NotifyError(
                f"{self.config['command']} exited with code {code}" + (f": {detail[0][:200]}" if detail else "")
            )


class FilePlatform(NotifyPlatform):
    """Append each message to a file (for development and tests)."""

    PLATFORM = "file"
    SCHEMA = vol.Schema(
        {
            vol.Required("filename"): vol.All(str, vol.Length(min=1)),
            vol.Optional("timestamp", default=False): bool,
        },
        extra=vol.PREVENT_EXTRA,
    )

    @property
    def path(self) -> str:
        """The file; a relative name is inside the configuration directory."""
        return os.path.join(self.auth.config_dir, self.config["filename"])

    async def async_send(self, message: str, target: str | None) -> None:
        """One line per message: [timestamp] [target: ]message."""
        line = (f"{target}: " if target else "") + message
        if self.config["timestamp"]:
            line = f"{formatdate(time.time(), localtime=True)} {line}"
        await self.auth.async_add_executor_job(self._append, line + "\n")

    def _append(self, text: str) -> None:
        """Append, creating the file readable by its owner only (it holds login codes)."""
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        with os.fdopen(fd, "a", encoding="utf-8") as handle:
            handle.write(text)


BUILTIN_PLATFORMS = (SmtpPlatform, CommandLinePlatform, FilePlatform)

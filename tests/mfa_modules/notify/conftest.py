"""Fixtures for the notify module: a real SMTP server (aiosmtpd) on 127.0.0.1, users, codes out of files."""

from __future__ import annotations

import asyncio
import re
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from email import message_from_bytes, policy
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, Session

from opp_auth.testing import run_login_flow

LOGIN = [{"username": "mfa-user", "password": "mfa-pass"}]
HANDLER = ("insecure_example", None)
CODE = re.compile(r"\b(\d{6})\b")


def code_in(text: str) -> str:
    """The six-digit code in a message."""
    found = CODE.findall(text)
    assert len(found) == 1, text
    return found[0]


class Mailbox:
    """aiosmtpd handler keeping every accepted mail."""

    def __init__(self) -> None:
        """No mail yet."""
        self.mails: list[EmailMessage] = []
        self.envelopes: list[Envelope] = []
        self._arrived = asyncio.Event()

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        """Accept and keep the mail."""
        self.envelopes.append(envelope)
        self.mails.append(message_from_bytes(envelope.original_content or b"", policy=policy.default))  # type: ignore[arg-type]
        self._arrived.set()
        return "250 OK"

    def code(self, index: int = -1) -> str:
        """The code in a received mail (the last by default)."""
        body = self.mails[index].get_body(preferencelist=("plain",))
        assert body is not None
        return code_in(body.get_content())


class RefusingMailbox(Mailbox):
    """A server that refuses every recipient."""

    async def handle_RCPT(self, server: SMTP, session: Session, envelope: Envelope, address: str, rcpt_options: list[str]) -> str:
        """550 for everyone."""
        return "550 5.1.1 No such user here"


class SmtpServer:
    """A running aiosmtpd server."""

    def __init__(self, server: asyncio.Server, mailbox: Mailbox) -> None:
        """Keep the server and its mailbox."""
        self.server = server
        self.mailbox = mailbox
        self.port = server.sockets[0].getsockname()[1]


@pytest.fixture
async def smtp_server() -> AsyncIterator[Callable[..., Awaitable[SmtpServer]]]:
    """Start aiosmtpd servers on 127.0.0.1 (same loop); closed after the test."""
    servers: list[asyncio.Server] = []

    async def start(
        *, refuse: bool = False, login: tuple[str, str] | None = None, implicit_tls: Any = None, **smtp_kwargs: Any
    ) -> SmtpServer:
        mailbox = RefusingMailbox() if refuse else Mailbox()
        if login is not None:
            smtp_kwargs.update(authenticator=authenticator(*login), auth_required=True, auth_require_tls=False)
        server = await asyncio.get_running_loop().create_server(
            lambda: SMTP(mailbox, hostname="mail.test", **smtp_kwargs), "127.0.0.1", 0, ssl=implicit_tls
        )
        servers.append(server)
        return SmtpServer(server, mailbox)

    yield start
    for server in servers:
        server.close()
        await server.wait_closed()


def authenticator(username: str, password: str) -> Callable[..., AuthResult]:
    """An aiosmtpd authenticator accepting exactly one login."""

    def check(server: SMTP, session: Session, envelope: Envelope, mechanism: str, auth_data: Any) -> AuthResult:
        ok = getattr(auth_data, "login", None) == username.encode() and getattr(auth_data, "password", None) == password.encode()
        return AuthResult(success=ok, handled=False)

    return check


@pytest.fixture
def closed_port() -> int:
    """A 127.0.0.1 port nothing listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def make_user() -> Callable[[Any], Awaitable[Any]]:
    """A user with example-provider credentials (so later logins ask for MFA)."""

    async def make(auth: Any) -> Any:
        result = await run_login_flow(auth, HANDLER, LOGIN)
        return await auth.users.async_get_or_create_user(result["result"])

    return make


@pytest.fixture
def codes_file(config_dir: Path) -> Callable[[], list[str]]:
    """Codes written by the file platform to codes.txt (oldest first)."""

    def read() -> list[str]:
        path = config_dir / "codes.txt"
        if not path.exists():
            return []
        return [code_in(line) for line in path.read_text().splitlines()]

    return read


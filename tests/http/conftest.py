"""Shared fixtures of the HTTP tests: an onboarded configuration directory; websocket connections."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from opp_auth import RefreshToken, User
from opp_auth.manager import AuthManager
from opp_auth.testing import CLIENT_ID, OppAuthClient, async_seed_documents

WS_REPLY_TIMEOUT = 5.0
WS_CLOSED = (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSING, aiohttp.WSMsgType.CLOSED)


@pytest.fixture
async def onboarded(config_dir: Path, opp_auth_storage: dict[str, Any]) -> Path:
    """A configuration directory whose onboarding says every step is done (SPEC 1.10), in its storage."""
    done = {"done": ["user", "core_config", "analytics", "integration"]}
    await async_seed_documents(config_dir, opp_auth_storage, {"onboarding": (4, done)})
    return config_dir


# ---- websocket (tests/http/test_websocket*.py) ---------------------------------------------------


class WsSession:
    """An authenticated websocket that numbers its commands 1, 2, 3, ..."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        """Wrap a socket that passed the auth phase."""
        self.ws = ws
        self.last_id = 0

    async def send(self, command: str, **fields: Any) -> int:
        """Send a command with the next id; return the id."""
        self.last_id += 1
        await self.ws.send_json({"id": self.last_id, "type": command, **fields})
        return self.last_id

    async def receive(self, timeout: float = WS_REPLY_TIMEOUT) -> dict[str, Any]:
        """The next text message as JSON."""
        msg = await self.ws.receive(timeout=timeout)
        assert msg.type == aiohttp.WSMsgType.TEXT, msg
        return dict(json.loads(msg.data))

    async def call(self, command: str, **fields: Any) -> dict[str, Any]:
        """Send a command and return its whole result message."""
        msg_id = await self.send(command, **fields)
        reply = await self.receive()
        assert reply["id"] == msg_id and reply["type"] == "result", reply
        return reply

    async def result(self, command: str, **fields: Any) -> Any:
        """The result of a command that must succeed."""
        reply = await self.call(command, **fields)
        assert reply["success"] is True, reply
        assert set(reply) == {"id", "type", "success", "result"}
        return reply["result"]

    async def error(self, command: str, **fields: Any) -> dict[str, Any]:
        """The error object of a command that must fail."""
        reply = await self.call(command, **fields)
        assert reply["success"] is False, reply
        assert set(reply) == {"id", "type", "success", "error"}
        assert set(reply["error"]) == {"code", "message"}
        return dict(reply["error"])

    async def closed_within(self, seconds: float) -> float:
        """Assert the server closes the socket within seconds (sending nothing first); return the delay."""
        start = time.monotonic()
        msg = await self.ws.receive(timeout=seconds)
        assert msg.type in WS_CLOSED, msg
        return time.monotonic() - start


class WsConnector:
    """Opens websockets to a test server and closes them at teardown."""

    def __init__(self, client: OppAuthClient) -> None:
        """Bind to a server."""
        self.client = client
        self.sockets: list[aiohttp.ClientWebSocketResponse] = []

    @staticmethod
    async def mint(auth: AuthManager, user: User, client_id: str | None = CLIENT_ID) -> tuple[RefreshToken, str]:
        """A new refresh token of user and an access token from it."""
        refresh_token = await auth.refresh_tokens.async_create_refresh_token(user, client_id)
        return refresh_token, await auth.access_tokens.async_create_access_token(refresh_token)

    async def open(self) -> aiohttp.ClientWebSocketResponse:
        """A raw socket to /api/websocket (auth phase not done)."""
        ws = await self.client.session.ws_connect(self.client.url("/api/websocket"))
        self.sockets.append(ws)
        return ws

    async def auth(self, access_token: str) -> WsSession:
        """A socket that passed the auth phase with access_token."""
        ws = await self.open()
        required = await ws.receive_json(timeout=WS_REPLY_TIMEOUT)
        assert required["type"] == "auth_required", required
        await ws.send_json({"type": "auth", "access_token": access_token})
        reply = await ws.receive_json(timeout=WS_REPLY_TIMEOUT)
        assert reply["type"] == "auth_ok", reply
        return WsSession(ws)

    async def user(self, auth: AuthManager, user: User) -> WsSession:
        """A socket authenticated as user with a fresh token."""
        _, access_token = await self.mint(auth, user, None if user.system_generated else CLIENT_ID)
        return await self.auth(access_token)

    async def close(self) -> None:
        """Close every socket this connector opened."""
        for ws in self.sockets:
            await ws.close()


@pytest.fixture
async def ws_connector() -> AsyncIterator[Callable[[OppAuthClient], WsConnector]]:
    """``ws_connector(client)``: a WsConnector for a test server; its sockets are closed after the test."""
    made: list[WsConnector] = []

    def factory(client: OppAuthClient) -> WsConnector:
        connector = WsConnector(client)
        made.append(connector)
        return connector

    yield factory
    for connector in made:
        await connector.close()

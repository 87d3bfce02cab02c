"""A real OpenID provider (npm oidc-provider under Node.js) on a free loopback port, and test keys.

``op(clients=..., accounts=..., keys=...)`` starts it (``npm ci`` in op/ first: .ci/run does it);
``op.restart(keys=...)`` starts it again on the same port with other keys (JWKS rotation);
``op.stop()`` takes it down (provider down). The private keys stay with the test, so tests can
forge ID tokens signed by the provider's own key or by a stranger's.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import socket
import subprocess
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from joserfc.jwk import RSAKey

OP_DIR = Path(__file__).parent / "op"
REQUIRE_INTEGRATION_ENV = "OPP_AUTH_REQUIRE_INTEGRATION"


def unavailable(message: str) -> None:
    """Skip, or fail where OPP_AUTH_REQUIRE_INTEGRATION=1 (CI) says integration tests must run."""
    if os.environ.get(REQUIRE_INTEGRATION_ENV) == "1":
        pytest.fail(f"{message}, and {REQUIRE_INTEGRATION_ENV}=1 says integration tests must run", pytrace=False)
    pytest.skip(message)


def free_port() -> int:
    """A free TCP port on loopback."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def make_key(kid: str) -> RSAKey:
    """A fresh RSA signing key."""
    return RSAKey.generate_key(2048, parameters={"kid": kid, "use": "sig", "alg": "RS256"}, private=True)


class OpenIdProvider:
    """One oidc-provider process."""

    def __init__(self, node: str, clients: list[dict[str, Any]], accounts: dict[str, Any], keys: list[RSAKey]) -> None:
        """Not started yet."""
        self.node = node
        self.clients = clients
        self.accounts = accounts
        self.keys = keys
        self.port = free_port()
        self.issuer = f"http://127.0.0.1:{self.port}"
        self.proc: asyncio.subprocess.Process | None = None
        self.output: list[str] = []

    async def start(self) -> None:
        """Run node op.mjs and wait for it to listen."""
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "PORT": str(self.port),
            "KEYS": json.dumps({"keys": [k.as_dict(private=True) for k in self.keys]}),
            "CLIENTS": json.dumps(self.clients),
            "ACCOUNTS": json.dumps(self.accounts),
            "NODE_ENV": "test",
        }
        self.proc = await asyncio.create_subprocess_exec(
            self.node,
            str(OP_DIR / "op.mjs"),
            cwd=str(OP_DIR),
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        assert self.proc.stdout is not None
        try:
            async with asyncio.timeout(30):
                while True:
                    line = (await self.proc.stdout.readline()).decode(errors="replace")
                    if not line:
                        raise RuntimeError("oidc-provider exited:\n" + "".join(self.output))
                    self.output.append(line)
                    if line.startswith("listening"):
                        break
        except TimeoutError as err:
            raise RuntimeError("oidc-provider did not start:\n" + "".join(self.output)) from err
        asyncio.get_running_loop().create_task(self._drain())

    async def _drain(self) -> None:
        proc = self.proc
        while proc is not None and proc.stdout is not None:
            line = await proc.stdout.readline()
            if not line:
                return
            self.output.append(line.decode(errors="replace"))

    async def stop(self) -> None:
        """Stop the process (the provider is down)."""
        if self.proc is not None and self.proc.returncode is None:
            self.proc.terminate()
            try:
                async with asyncio.timeout(3):
                    await self.proc.wait()
            except TimeoutError:
                self.proc.kill()
                await self.proc.wait()
        self.proc = None

    async def restart(self, keys: list[RSAKey] | None = None) -> None:
        """Start again on the same port, optionally with other keys (the first one signs)."""
        await self.stop()
        if keys is not None:
            self.keys = keys
        await self.start()


@pytest.fixture
async def op() -> AsyncIterator[Callable[..., Any]]:
    """await op(clients=[...], accounts={...}, keys=[...]): a running OpenID provider, stopped after the test."""
    node = shutil.which("node")
    if node is None:
        unavailable("node is not installed (Debian package nodejs)")
    if not (OP_DIR / "node_modules" / "oidc-provider").is_dir():
        unavailable(f"oidc-provider is not installed: run npm ci in {OP_DIR}")
    started: list[OpenIdProvider] = []

    async def start(
        clients: list[dict[str, Any]], accounts: dict[str, Any], keys: list[RSAKey] | None = None
    ) -> OpenIdProvider:
        provider = OpenIdProvider(node, clients, accounts, keys or [make_key("key-1")])
        await provider.start()
        started.append(provider)
        return provider

    yield start
    for provider in started:
        await provider.stop()

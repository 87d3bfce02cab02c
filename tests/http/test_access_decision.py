"""One access decision for every way in: the same table of cases through each (issue 11 item 7, issue 12).

Ways in: an HTTP bearer token, the websocket auth phase, a later websocket
message, a signed path (``authSig``) and a plugin's request authenticator.
Cases: an active user, an inactive one, a ``local_only`` user from a public and
from a local address, a session whose provider checks every request (like
trusted networks) from inside and outside its network, and a refresh token past
its idle expiry. Each case is a change applied to a session that was good when
it was made, so a refusal can only come from the access decision.

The client's address is set with X-Forwarded-For through a trusted proxy
(127.0.0.1), the way a reverse proxy would.
"""

from __future__ import annotations

import ipaddress
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from opp_auth import AuthProvider, PluginContext, RefreshToken, User, hookimpl
from opp_auth.manager import AuthManager
from opp_auth.testing import CLIENT_ID

PUBLIC = "203.0.113.7"
LOCAL = "10.0.0.5"
HTTP = {"use_x_forwarded_for": True, "trusted_proxies": ["127.0.0.1"]}
EXAMPLE = {"type": "insecure_example", "users": [{"username": "ann", "password": "pw", "name": "Ann"}]}


class PerRequestProvider(AuthProvider):
    """A provider that checks every request, like trusted networks: only its networks may use its tokens."""

    TYPE = "access_test_per_request"
    CHECKS_EVERY_REQUEST = True

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.networks: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = [ipaddress.ip_network("0.0.0.0/0")]

    def validate_access(self, refresh_token: RefreshToken, remote_ip: str | None) -> bool:
        """Whether remote_ip is in one of the networks."""
        return remote_ip is not None and any(ipaddress.ip_address(remote_ip) in net for net in self.networks)


class Plugin:
    """Registers the provider and authenticates requests that name a user in X-Test-User."""

    @hookimpl
    def opp_auth_register_auth_providers(self, register: Any) -> None:
        register(PerRequestProvider)

    @hookimpl
    def opp_auth_authenticate_request(self, request: web.Request, auth: PluginContext) -> Any:
        user_id = request.headers.get("X-Test-User")
        return None if user_id is None else auth.get_user(user_id)


@dataclass
class Session:
    """A user's session through the per-request provider, good when made."""

    auth: AuthManager
    user: User
    refresh_token: RefreshToken
    provider: PerRequestProvider
    access_token: str
    signed_path: str


def _inactive(s: Session) -> None:
    s.user.is_active = False


def _local_only(s: Session) -> None:
    s.user.local_only = True


def _provider_narrowed(s: Session) -> None:
    s.provider.networks = [ipaddress.ip_network("10.0.0.0/8")]


def _expired(s: Session) -> None:
    s.refresh_token.expire_at = time.time() - 1


def _nothing(s: Session) -> None:
    pass


# (name, change, client address, allowed, needs a refresh token)
CASES: list[tuple[str, Callable[[Session], None], str, bool, bool]] = [
    ("active user, public address", _nothing, PUBLIC, True, False),
    ("inactive user", _inactive, LOCAL, False, False),
    ("local_only user from a public address", _local_only, PUBLIC, False, False),
    ("local_only user from a local address", _local_only, LOCAL, True, False),
    ("per-request provider refuses the address", _provider_narrowed, PUBLIC, False, True),
    ("per-request provider accepts the address", _provider_narrowed, LOCAL, True, True),
    ("refresh token past its idle expiry", _expired, LOCAL, False, True),
]
WAYS = ["bearer", "websocket_auth", "websocket_message", "signed_path", "plugin_authenticator"]
PARAMS = [
    pytest.param(way, *case, id=f"{way}: {case[0]}")
    for way in WAYS
    for case in CASES
    # A plugin authenticator vouches for a user, not a refresh token: token cases do not apply.
    if not (way == "plugin_authenticator" and case[4])
]


@pytest.fixture
async def served(onboarded: Path, opp_auth_factory: Any, opp_auth_client: Any) -> tuple[Session, Any]:
    """A server with the per-request provider and a session of a fresh user through it."""
    auth = await opp_auth_factory(
        providers=[EXAMPLE, {"type": PerRequestProvider.TYPE}],
        mfa_modules=[],
        http=HTTP,
        plugins=[("access", Plugin())],
    )
    provider = auth.registry.get_auth_provider(PerRequestProvider.TYPE, None)
    provider.networks = [ipaddress.ip_network("0.0.0.0/0")]
    user = await auth.users.async_create_user("Pat", ["system-admin"])
    credentials = provider.async_create_credentials({"user": user.id})
    await auth.users.async_link_user(user, credentials)
    refresh_token = await auth.refresh_tokens.async_create_refresh_token(user, CLIENT_ID, credential=credentials)
    await auth.refresh_tokens.async_set_expiry(refresh_token, True)
    access_token = await auth.access_tokens.async_create_access_token(refresh_token, LOCAL)
    signed = auth.access_tokens.sign_path("/api/", timedelta(minutes=5), refresh_token.id)
    client = await opp_auth_client(auth)
    return Session(auth, user, refresh_token, provider, access_token, signed), client


async def _ws_auth(client: Any, token: str, address: str) -> tuple[aiohttp.ClientWebSocketResponse, str]:
    """Open a websocket from address and run the auth phase; (socket, answer type)."""
    ws = await client.session.ws_connect(client.url("/api/websocket"), headers={"X-Forwarded-For": address})
    assert (await ws.receive_json(timeout=5))["type"] == "auth_required"
    await ws.send_json({"type": "auth", "access_token": token})
    return ws, (await ws.receive_json(timeout=5))["type"]


@pytest.mark.parametrize(("way", "name", "change", "address", "allowed", "token_case"), PARAMS)
async def test_every_way_in_asks_the_same_access_decision(
    served: tuple[Session, Any],
    way: str,
    name: str,
    change: Callable[[Session], None],
    address: str,
    allowed: bool,
    token_case: bool,
) -> None:
    """The case's change lets the session in, or keeps it out, the same way through every way in."""
    session, client = served
    headers = {"X-Forwarded-For": address}
    if way == "websocket_message":
        # Authenticated while the session was good; the change comes before the next message.
        ws, answer = await _ws_auth(client, session.access_token, address)
        assert answer == "auth_ok"
        await ws.send_json({"id": 1, "type": "auth/current_user"})
        assert (await ws.receive_json(timeout=5))["success"] is True
        change(session)
        await ws.send_json({"id": 2, "type": "auth/current_user"})
        reply = await ws.receive_json(timeout=5)
        assert reply["success"] is allowed, reply
        if not allowed:
            assert reply["error"]["code"] == "unauthorized"
            closing = await ws.receive(timeout=5)
            assert closing.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSING, aiohttp.WSMsgType.CLOSED)
        await ws.close()
        return
    change(session)
    if way == "websocket_auth":
        ws, answer = await _ws_auth(client, session.access_token, address)
        await ws.close()
        assert answer == ("auth_ok" if allowed else "auth_invalid")
        return
    if way == "bearer":
        headers["Authorization"] = f"Bearer {session.access_token}"
        target = "/api/"
    elif way == "signed_path":
        target = session.signed_path
    else:
        headers["X-Test-User"] = session.user.id
        target = "/api/"
    async with client.request("GET", target, headers=headers) as resp:
        assert resp.status == (200 if allowed else 401), name


async def test_signed_path_of_a_trusted_network_session_is_refused_from_outside(served: tuple[Session, Any]) -> None:
    """Issue 11 item 7: the signed path works where the session's bearer token works, and nowhere else."""
    session, client = served
    _provider_narrowed(session)
    for address, status in ((LOCAL, 200), (PUBLIC, 401)):
        for headers in (
            {"Authorization": f"Bearer {session.access_token}"},
            {},
        ):
            target = "/api/" if headers else session.signed_path
            async with client.request("GET", target, headers={**headers, "X-Forwarded-For": address}) as resp:
                assert resp.status == status, (address, target)


async def test_refreshing_from_a_refused_address_mints_nothing(served: tuple[Session, Any]) -> None:
    """The token endpoint asks the same decision before minting an access token."""
    session, client = served
    _local_only(session)
    form = {"grant_type": "refresh_token", "client_id": CLIENT_ID, "refresh_token": session.refresh_token.token}
    async with client.request("POST", "/auth/token", data=form, headers={"X-Forwarded-For": PUBLIC}) as resp:
        assert resp.status in (400, 403), await resp.text()
    async with client.request("POST", "/auth/token", data=form, headers={"X-Forwarded-For": LOCAL}) as resp:
        assert resp.status == 200


async def test_refused_code_exchange_leaves_no_refresh_token(served: tuple[Session, Any]) -> None:
    """Red team: a local_only user's code redeemed from a public address answered 403 but kept the new
    refresh token in .storage/auth (one more per try, never handed out, never cleaned up)."""
    session, client = served
    auth = session.auth
    ann_tokens = await client.login.tokens(["insecure_example", None], [{"username": "ann", "password": "pw"}])
    ann = (await auth.refresh_tokens.async_get_refresh_token_by_token(ann_tokens["refresh_token"])).user
    ann.local_only = True
    before = {t.id for t in ann.token_list}
    async with client.session.post(
        client.url("/auth/login_flow"),
        json={"client_id": CLIENT_ID, "handler": ["insecure_example", None], "redirect_uri": CLIENT_ID},
        headers={"X-Forwarded-For": PUBLIC},
    ) as resp:
        flow = await resp.json()
    async with client.session.post(
        client.url(f"/auth/login_flow/{flow['flow_id']}"),
        json={"client_id": CLIENT_ID, "username": "ann", "password": "pw"},
        headers={"X-Forwarded-For": PUBLIC},
    ) as resp:
        done = await resp.json()
    assert done["type"] == "create_entry", done
    form = {"grant_type": "authorization_code", "client_id": CLIENT_ID, "code": done["result"]}
    async with client.request("POST", "/auth/token", data=form, headers={"X-Forwarded-For": PUBLIC}) as resp:
        assert resp.status == 403, await resp.text()
    assert {t.id for t in ann.token_list} == before


async def test_long_lived_token_of_a_confined_session_stays_confined(served: tuple[Session, Any]) -> None:
    """Red team: a session whose provider checks every request (trusted networks) made a long-lived
    access token with no credentials, so the per-request check never applied to it: a token confined to
    the network minted one that worked from anywhere for up to 100 years (the signed-path hole of
    issue 11 item 7, through another command)."""
    session, client = served
    _provider_narrowed(session)
    ws, answer = await _ws_auth(client, session.access_token, LOCAL)
    assert answer == "auth_ok"
    await ws.send_json({"id": 1, "type": "auth/long_lived_access_token", "lifespan": 10, "client_name": "x"})
    reply = await ws.receive_json(timeout=5)
    await ws.close()
    assert reply["success"], reply
    for address, status in ((LOCAL, 200), (PUBLIC, 401)):
        headers = {"Authorization": f"Bearer {reply['result']}", "X-Forwarded-For": address}
        async with client.request("GET", "/api/", headers=headers) as resp:
            assert resp.status == status, address

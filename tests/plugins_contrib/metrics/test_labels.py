"""Labels carry only closed, documented vocabularies; nothing secret or personal reaches /metrics."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import opp_auth_metrics

from opp_auth import UserMeta
from opp_auth.testing import CLIENT_ID, OppAuthClient

from .conftest import HANDLER, PASSWORDS, PROXIED, scrape
from .test_values import api, settle, ws_auth

ODD_USERNAMES = ["mallory-\u00fc\u540d\u524d\U0001f642", "x" * 3000, "eve\u202e\u200bcontrol", "trudy\x00nul"]
ADDRESSES = [f"198.51.100.{n}" for n in range(1, 40)] + ["2001:db8::beef:1", "::ffff:192.0.2.33"]
CLIENT_IDS = [f"https://client-{n}.example.net/app" for n in range(5)]
ODD_PATHS = ["/api/states/light.kitchen_99", "/auth/login_flow/0123456789abcdef", "/x/%F0%9F%99%82", "/api/9f8e7d"]
ODD_METHODS = ["PROPFIND", "FOO", "PATCH", "PUT"]


def allowed_values(client: OppAuthClient) -> dict[str, set[str]]:
    """Every label's closed set for this server: the documented vocabularies plus its configured types and routes."""
    routes = {r.canonical for r in client.app.router.resources()}
    buckets = {*opp_auth_metrics.REQUEST_BUCKETS, *opp_auth_metrics.LOGIN_BUCKETS}
    return {
        **{label: set(values) for label, values in opp_auth_metrics.LABEL_VALUES.items()},
        "provider_type": {"insecure_example", "none", "other"},
        "mfa_module_type": {"insecure_example", "other"},
        "route": routes | {"unmatched", "other"},
        "le": {str(float(b)) for b in buckets} | {"+Inf"},
    }


async def drive_varied_traffic(auth: Any, client: OppAuthClient) -> list[str]:
    """Logins, failures, odd input, many addresses and clients, tokens, a ban; the secrets it used."""
    secrets = list(PASSWORDS.values())
    for index, username in enumerate(ODD_USERNAMES):
        address, client_id = ADDRESSES[index], CLIENT_IDS[index % len(CLIENT_IDS)]
        forwarded = {"X-Forwarded-For": address}
        body = {"client_id": client_id, "handler": HANDLER, "redirect_uri": f"{client_id}/callback"}
        async with client.request("POST", "/auth/login_flow", json=body, headers=forwarded) as resp:
            result = await resp.json()
        assert result["type"] == "form", result
        step = {"client_id": client_id, "username": username, "password": "pw-guess-1"}
        async with client.request(
            "POST", f"/auth/login_flow/{result['flow_id']}", json=step, headers=forwarded
        ) as resp:
            assert resp.status == 200
            assert (await resp.json())["errors"]["base"] in ("invalid_auth", "invalid_username")
        secrets += [username, result["flow_id"]]
        async with client.request("GET", "/api/", headers={"X-Forwarded-For": ADDRESSES[-1 - index]}) as resp:
            assert resp.status == 401
    tokens = await client.login.tokens(HANDLER, [{"username": "alice", "password": PASSWORDS["alice"]}])
    secrets += [tokens["access_token"], tokens["refresh_token"]]
    status, refreshed = await client.login.token(
        grant_type="refresh_token", refresh_token=tokens["refresh_token"], client_id=CLIENT_ID
    )
    secrets.append(refreshed["access_token"])
    for address in ADDRESSES:
        assert await api(client, tokens["access_token"], **{"X-Forwarded-For": address}) == 200
    code = await client.login.code(HANDLER, [{"username": "bob", "password": PASSWORDS["bob"]}])
    secrets.append(code)
    for path in ODD_PATHS:
        for method in ODD_METHODS:
            async with client.request(method, path, headers={"X-Forwarded-For": ADDRESSES[5]}) as resp:
                assert resp.status < 500
    ws, reply = await ws_auth(client, tokens["access_token"])
    assert reply["type"] == "auth_ok"
    bad, reply = await ws_auth(client, "forged.token.value")
    await bad.close()
    refresh_token = next(t for t in auth.store.refresh_tokens() if t.user.name == "Alice")
    signed = auth.access_tokens.sign_path("/api/", timedelta(minutes=1), refresh_token.id)
    secrets.append(signed.split("authSig=")[1])
    async with client.request("GET", signed) as resp:
        assert resp.status == 200
    async with client.request("GET", signed.replace("/api/", "/api/x")) as resp:
        assert resp.status in (401, 404)
    # Enough refusals from one address to ban it, then a request while banned.
    for _ in range(3):
        async with client.request("GET", "/api/", headers={"X-Forwarded-For": "192.0.2.200"}) as resp:
            assert resp.status in (401, 403)
    assert resp.status == 403
    await ws.close()
    return secrets


async def test_every_label_value_is_from_a_closed_set_and_no_secret_is_exposed(metrics_server: Any) -> None:
    auth, client = await metrics_server(http={**PROXIED, "login_attempts_threshold": 2})
    secrets = await drive_varied_traffic(auth, client)
    admin = await auth.users.async_create_user("Scraper", [UserMeta.GROUP_ADMIN])
    refresh_token = await auth.refresh_tokens.async_create_refresh_token(admin, CLIENT_ID)
    scraper_token = await auth.access_tokens.async_create_access_token(refresh_token)
    await settle(auth)
    result = await scrape(client, {"Authorization": f"Bearer {scraper_token}", "X-Forwarded-For": "203.0.113.250"})

    allowed = allowed_values(client)
    seen_labels: set[str] = set()
    for sample in result.samples:
        for label, value in sample.labels.items():
            seen_labels.add(label)
            assert label in allowed, (sample.name, label)
            assert value in allowed[label], (sample.name, label, value)
    assert seen_labels == set(allowed) - {"mfa_module_type"} or seen_labels == set(allowed)
    # The traffic did reach the counters it should have.
    assert (
        result.total("opp_auth_logins_total", result="invalid_auth")
        + result.total("opp_auth_logins_total", result="invalid_username")
        >= 2
    )
    assert result.value("opp_auth_token_checks_total", kind="signed_path", outcome="valid") == 1
    assert result.total("opp_auth_http_request_duration_seconds_count", method="other") >= 2

    text = result.text
    for secret in [*secrets, scraper_token, *ADDRESSES, "192.0.2.200", "203.0.113.250", *CLIENT_IDS, CLIENT_ID]:
        assert secret not in text, secret[:40]
    for user in auth.store.users():
        assert user.id not in text
    for token in auth.store.refresh_tokens():
        assert token.id not in text

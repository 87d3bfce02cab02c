"""Who may read /metrics: off by default, allowed networks as the core resolves the client, else an admin."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from opp_auth import UserMeta
from opp_auth.manager import AuthManager
from opp_auth.plugins import make_plugin_manager
from opp_auth.testing import CLIENT_ID, OppAuthClient

from .conftest import PROVIDER, PROXIED, scrape

UNAUTHORIZED = {"message": "Unauthorized"}


async def get(client: OppAuthClient, headers: dict[str, str] | None = None) -> tuple[int, Any]:
    """GET /metrics: (status, JSON body for a refusal / text for an answer)."""
    async with client.request("GET", "/metrics", headers=headers or {}) as resp:
        if resp.content_type == "application/json":
            return resp.status, await resp.json()
        return resp.status, await resp.text()


async def bearer(auth: AuthManager, *groups: str) -> str:
    """An access token of a new user in groups."""
    user = await auth.users.async_create_user("Someone", list(groups))
    refresh_token = await auth.refresh_tokens.async_create_refresh_token(user, CLIENT_ID)
    return await auth.access_tokens.async_create_access_token(refresh_token)


# ---- off by default ---------------------------------------------------------------------------


async def test_metrics_are_off_by_default(onboarded: Path, opp_auth_factory: Any, opp_auth_client: Any) -> None:
    """No http: metrics: the path is not served at all (the API's JSON 404), even to an admin."""
    auth = await opp_auth_factory(providers=[PROVIDER], mfa_modules=[])
    assert auth.http_config["metrics"] == {
        "enabled": False,
        "allowed_networks": auth.http_config["metrics"]["allowed_networks"],
    }
    client = await opp_auth_client(auth)
    token = await bearer(auth, UserMeta.GROUP_ADMIN)
    assert await get(client) == (404, {"message": "Not found"})
    assert await get(client, {"Authorization": f"Bearer {token}"}) == (404, {"message": "Not found"})


async def test_enabled_false_is_off(metrics_server: Any) -> None:
    _, client = await metrics_server(metrics={"enabled": False})
    assert await get(client) == (404, {"message": "Not found"})


# ---- networks -------------------------------------------------------------------------------


async def test_loopback_reads_metrics_by_default(metrics_server: Any) -> None:
    _, client = await metrics_server()
    result = await scrape(client)
    assert "opp_auth_token_checks" in result.families


async def test_address_outside_the_networks_is_refused_behind_a_trusted_proxy(metrics_server: Any) -> None:
    """The client address the core resolves (X-Forwarded-For from a trusted proxy) is the one that counts."""
    _, client = await metrics_server(http=PROXIED)
    assert await get(client, {"X-Forwarded-For": "203.0.113.9"}) == (401, UNAUTHORIZED)


async def test_address_inside_configured_networks_is_allowed_behind_a_trusted_proxy(metrics_server: Any) -> None:
    _, client = await metrics_server(metrics={"allowed_networks": ["10.0.0.0/8"]}, http=PROXIED)
    await scrape(client, {"X-Forwarded-For": "10.20.30.40"})
    assert await get(client, {"X-Forwarded-For": "11.0.0.1"}) == (401, UNAUTHORIZED)
    # Loopback is no longer in the list once the list is given.
    assert await get(client) == (401, UNAUTHORIZED)


async def test_spoofed_forwarded_for_cannot_claim_an_allowed_network(metrics_server: Any) -> None:
    """A client putting an allowed address left of its own in X-Forwarded-For is still itself."""
    _, client = await metrics_server(metrics={"allowed_networks": ["10.0.0.0/8"]}, http=PROXIED)
    assert await get(client, {"X-Forwarded-For": "10.0.0.1, 203.0.113.9"}) == (401, UNAUTHORIZED)


@pytest.mark.parametrize(
    "header",
    [{"X-Forwarded-For": "203.0.113.9"}, {"X-Real-IP": "203.0.113.9"}, {"Forwarded": "for=203.0.113.9"}],
    ids=["x-forwarded-for", "x-real-ip", "forwarded"],
)
async def test_a_proxy_the_server_was_not_told_about_gets_no_network_allowance(
    metrics_server: Any, header: dict[str, str]
) -> None:
    """Loopback peer, proxy headers the core does not apply: every client behind it would look local."""
    auth, client = await metrics_server()
    assert await get(client, header) == (401, UNAUTHORIZED)
    token = await bearer(auth, UserMeta.GROUP_ADMIN)
    await scrape(client, {**header, "Authorization": f"Bearer {token}"})


async def test_empty_network_list_means_tokens_only(metrics_server: Any) -> None:
    auth, client = await metrics_server(metrics={"allowed_networks": []})
    assert await get(client) == (401, UNAUTHORIZED)
    token = await bearer(auth, UserMeta.GROUP_ADMIN)
    await scrape(client, {"Authorization": f"Bearer {token}"})


# ---- tokens ---------------------------------------------------------------------------------


async def test_admin_bearer_token_reads_metrics_from_anywhere(metrics_server: Any) -> None:
    auth, client = await metrics_server(http=PROXIED)
    token = await bearer(auth, UserMeta.GROUP_ADMIN)
    result = await scrape(client, {"X-Forwarded-For": "203.0.113.9", "Authorization": f"Bearer {token}"})
    assert result.value("opp_auth_token_checks_total", kind="access_token", outcome="valid") >= 1


async def test_non_admin_bearer_token_is_refused(metrics_server: Any) -> None:
    auth, client = await metrics_server(http=PROXIED)
    token = await bearer(auth, UserMeta.GROUP_USER)
    assert await get(client, {"X-Forwarded-For": "203.0.113.9", "Authorization": f"Bearer {token}"}) == (
        401,
        UNAUTHORIZED,
    )


async def test_deactivated_admin_is_refused(metrics_server: Any) -> None:
    """The admin's token passes the one access decision first (active user)."""
    auth, client = await metrics_server(http=PROXIED)
    token = await bearer(auth, UserMeta.GROUP_ADMIN)
    user = next(u for u in auth.store.users() if u.name == "Someone")
    await auth.users.async_update_user(user, is_active=False)
    assert await get(client, {"X-Forwarded-For": "203.0.113.9", "Authorization": f"Bearer {token}"}) == (
        401,
        UNAUTHORIZED,
    )


async def test_signed_path_of_a_non_admin_is_refused(metrics_server: Any) -> None:
    auth, client = await metrics_server(http=PROXIED)
    user = await auth.users.async_create_user("Bob", [UserMeta.GROUP_USER])
    refresh_token = await auth.refresh_tokens.async_create_refresh_token(user, CLIENT_ID)
    from datetime import timedelta

    path = auth.access_tokens.sign_path("/metrics", timedelta(minutes=1), refresh_token.id)
    async with client.request("GET", path, headers={"X-Forwarded-For": "203.0.113.9"}) as resp:
        assert (resp.status, await resp.json()) == (401, UNAUTHORIZED)


@pytest.mark.parametrize("path", ["/metrics/", "/METRICS", "/metrics%2F", "//metrics"])
async def test_other_spellings_of_the_path_serve_nothing(metrics_server: Any, path: str) -> None:
    _, client = await metrics_server(http=PROXIED)
    async with client.request("GET", path, headers={"X-Forwarded-For": "203.0.113.9"}) as resp:
        assert resp.status in (400, 404)
        assert "opp_auth_" not in await resp.text()


async def test_post_is_not_allowed(metrics_server: Any) -> None:
    _, client = await metrics_server()
    async with client.request("POST", "/metrics") as resp:
        assert resp.status == 405
        assert await resp.json() == {"message": "Method not allowed"}


async def test_head_is_served_to_allowed_networks(metrics_server: Any) -> None:
    _, client = await metrics_server()
    async with client.request("HEAD", "/metrics") as resp:
        assert resp.status == 200


# ---- configuration --------------------------------------------------------------------------


def test_enabling_metrics_without_the_plugin_names_the_key_and_the_distribution(config_dir: Path) -> None:
    from opp_auth.config import load_config
    from opp_auth.yaml import ConfigError

    (config_dir / "configuration.yaml").write_text(
        "openpeerpower:\n  name: Home\nhttp:\n  server_port: 8123\n  metrics:\n    enabled: true\n", encoding="utf-8"
    )
    pm = make_plugin_manager(blocked=("opp-auth-metrics",))
    with pytest.raises(ConfigError) as info:
        load_config(config_dir, pm)
    err = info.value
    assert (err.line, err.key_path) == (6, ("http", "metrics", "enabled"))
    assert "pip install opp-auth-metrics" in err.message
    assert "configuration.yaml" in str(err)


@pytest.mark.parametrize(
    ("block", "line", "key_path", "words"),
    [
        ("  metrics:\n    enabled: maybe\n", 5, ("http", "metrics", "enabled"), "expected bool"),
        (
            "  metrics:\n    allowed_networks:\n      - 10.0.0.0/8\n      - not-a-net\n",
            7,
            ("http", "metrics", "allowed_networks", 1),
            "not an IP",
        ),
        ("  metrics:\n    allowed_network: 10.0.0.0/8\n", 5, ("http", "metrics", "allowed_network"), "unknown key"),
        ("  metrics: yes\n", 4, ("http", "metrics"), "dictionary"),
    ],
    ids=["enabled-not-bool", "bad-network", "misspelt-key", "not-a-mapping"],
)
def test_bad_metrics_settings_name_file_line_and_key(
    config_dir: Path, block: str, line: int, key_path: tuple[Any, ...], words: str
) -> None:
    from opp_auth.config import load_config
    from opp_auth.yaml import ConfigError

    (config_dir / "configuration.yaml").write_text("openpeerpower:\n  name: Home\nhttp:\n" + block, encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load_config(config_dir, make_plugin_manager())
    err = info.value
    assert (err.line, err.key_path) == (line, key_path), err
    assert words in err.message, err.message


def test_allowed_networks_default_to_loopback(config_dir: Path) -> None:
    from opp_auth.config import load_config

    (config_dir / "configuration.yaml").write_text("http:\n  metrics:\n    enabled: true\n", encoding="utf-8")
    metrics = load_config(config_dir, make_plugin_manager()).http["metrics"]
    assert metrics["enabled"] is True
    assert [str(net) for net in metrics["allowed_networks"]] == ["127.0.0.0/8", "::1/128"]

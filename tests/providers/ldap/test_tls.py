"""TLS of the LDAP provider: StartTLS and ldaps with a CA made by the test, wrong and missing CAs."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest

from .conftest import Pki, Slapd
from .test_provider import HANDLER, Factory, login, login_user, make_auth, messages


async def test_start_tls_with_the_right_ca_logs_in(opp_auth_factory: Factory, ldap_server: Slapd, pki: Pki) -> None:
    auth = await make_auth(opp_auth_factory, ldap_server.starttls_url, start_tls=True, ca_file=str(pki.ca_file))
    await login_user(auth, "alice", "alice-pass")


async def test_ldaps_with_the_right_ca_logs_in(opp_auth_factory: Factory, ldap_server: Slapd, pki: Pki) -> None:
    auth = await make_auth(opp_auth_factory, ldap_server.ldaps_url, ca_file=str(pki.ca_file))
    await login_user(auth, "alice", "alice-pass")


@pytest.mark.parametrize("mode", ["ldaps", "start_tls"])
async def test_wrong_ca_is_cannot_connect(opp_auth_factory: Factory, ldap_server: Slapd, pki: Pki, mode: str) -> None:
    url = ldap_server.ldaps_url if mode == "ldaps" else ldap_server.starttls_url
    auth = await make_auth(opp_auth_factory, url, start_tls=mode == "start_tls", ca_file=str(pki.wrong_ca_file))
    result = await login(auth, "alice", "alice-pass")
    assert result["errors"] == {"base": "cannot_connect"}


async def test_certificate_for_another_host_name_is_refused(opp_auth_factory: Factory, ldap_server: Slapd, pki: Pki) -> None:
    """The certificate names localhost; the same server reached as 127.0.0.1 is not trusted."""
    assert ldap_server.tls_port is not None
    auth = await make_auth(opp_auth_factory, f"ldaps://127.0.0.1:{ldap_server.tls_port}", ca_file=str(pki.ca_file))
    result = await login(auth, "alice", "alice-pass")
    assert result["errors"] == {"base": "cannot_connect"}


@pytest.mark.parametrize("password", ["alice-pass", "wrong-pass"])
async def test_missing_ca_file_never_grants_access(
    opp_auth_factory: Factory, ldap_server: Slapd, tmp_path: Path, caplog: pytest.LogCaptureFixture, password: str
) -> None:
    """The rejected Home Assistant LDAP provider let anyone in when its CA file was missing."""
    missing = str(tmp_path / "no-such-ca.pem")
    auth = await make_auth(opp_auth_factory, ldap_server.ldaps_url, ca_file=missing)
    result = await login(auth, "alice", password)
    assert result["type"] == "form" and result["errors"] == {"base": "cannot_connect"}
    assert any(missing in m for m in messages(caplog, logging.ERROR))


async def test_missing_ca_file_over_http_is_a_form_error(
    opp_auth_factory: Factory, opp_auth_client: Any, ldap_server: Slapd, tmp_path: Path
) -> None:
    auth = await make_auth(opp_auth_factory, ldap_server.starttls_url, start_tls=True, ca_file=str(tmp_path / "gone.pem"))
    client = await opp_auth_client(auth)
    _, flow = await client.login.start(HANDLER)
    status, result = await client.login.step(flow["flow_id"], username="alice", password="alice-pass")
    assert status == 200
    assert result["type"] == "form" and result["errors"] == {"base": "cannot_connect"}


async def test_verify_ssl_false_connects_without_checking(opp_auth_factory: Factory, ldap_server: Slapd, pki: Pki) -> None:
    auth = await make_auth(opp_auth_factory, ldap_server.ldaps_url, verify_ssl=False, ca_file=str(pki.wrong_ca_file))
    await login_user(auth, "alice", "alice-pass")


async def test_verify_ssl_false_warns_at_every_start(
    opp_auth_factory: Factory, ldap_server: Slapd, caplog: pytest.LogCaptureFixture
) -> None:
    for _ in range(2):
        await make_auth(opp_auth_factory, ldap_server.ldaps_url, verify_ssl=False)
    assert sum("verify_ssl is false" in m for m in messages(caplog, logging.WARNING)) == 2

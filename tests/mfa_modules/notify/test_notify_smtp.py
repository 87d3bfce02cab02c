"""notify over e-mail, end to end: a real SMTP server (aiosmtpd), the websocket setup flow and the HTTP login flow."""

from __future__ import annotations

import json
import logging
import ssl
import subprocess
from pathlib import Path
from typing import Any

import pytest

from opp_auth.testing import async_stored_document

LOGIN = {"username": "mfa-user", "password": "mfa-pass"}
PROVIDERS = [{"type": "insecure_example", "users": [{"username": "mfa-user", "password": "mfa-pass", "name": "Mia"}]}]
HANDLER = ["insecure_example", None]


def smtp_service(port: int, **extra: Any) -> dict[str, Any]:
    """A notify: entry for the test server."""
    return {
        "name": "email",
        "platform": "smtp",
        "server": "127.0.0.1",
        "port": port,
        "encryption": "none",
        "sender": "opp@example.org",
        "recipient": "owner@example.org",
        "timeout": 5,
        **extra,
    }


async def notify_auth(opp_auth_factory: Any, *services: dict[str, Any]) -> Any:
    """Example provider plus the notify module over the given services."""
    return await opp_auth_factory(
        providers=PROVIDERS, mfa_modules=[{"type": "notify", "include": ["email"]}], blocks={"notify": list(services)}
    )


async def ws_session(client: Any, auth: Any, user: Any) -> Any:
    """An authenticated websocket for the user (caller closes it)."""
    refresh = await auth.refresh_tokens.async_create_refresh_token(user, "https://example.com/app")
    ws = await client.session.ws_connect(client.url("/api/websocket"))
    await ws.receive_json()
    await ws.send_json({"type": "auth", "access_token": await auth.access_tokens.async_create_access_token(refresh)})
    assert (await ws.receive_json())["type"] == "auth_ok"
    return ws


async def ws_call(ws: Any, msg_id: int, **msg: Any) -> Any:
    """One command and its result."""
    await ws.send_json({"id": msg_id, **msg})
    reply = await ws.receive_json()
    assert reply["success"] is True, reply
    return reply["result"]


async def start_login(client: Any) -> dict[str, Any]:
    """Password step over HTTP; returns the next result (the code form, or an abort)."""
    status, result = await client.login.start(HANDLER)
    assert status == 200, result
    status, result = await client.login.step(result["flow_id"], **LOGIN)
    assert status == 200, result
    return result


async def test_enrol_over_websocket_then_log_in_with_the_mailed_code(
    opp_auth_factory: Any, opp_auth_client: Any, smtp_server: Any, make_user: Any
) -> None:
    """The whole path: choose e-mail, confirm the mailed code, later log in over HTTP with a mailed code."""
    smtp = await smtp_server()
    auth = await notify_auth(opp_auth_factory, smtp_service(smtp.port))
    user = await make_user(auth)
    client = await opp_auth_client(auth)
    ws = await ws_session(client, auth, user)
    try:
        form = await ws_call(ws, 1, type="auth/setup_mfa", mfa_module_id="notify")
        assert form["step_id"] == "init"
        assert [f["name"] for f in form["data_schema"]] == ["notify_service", "target"]
        form = await ws_call(
            ws,
            2,
            type="auth/setup_mfa",
            flow_id=form["flow_id"],
            user_input={"notify_service": "email", "target": "mia@example.org"},
        )
        assert form["step_id"] == "setup" and form["description_placeholders"] == {"notify_service": "email"}
        assert smtp.mailbox.envelopes[-1].rcpt_tos == ["mia@example.org"]
        done = await ws_call(
            ws, 3, type="auth/setup_mfa", flow_id=form["flow_id"], user_input={"code": smtp.mailbox.code()}
        )
        assert done["type"] == "create_entry" and done["data"] == {}
    finally:
        await ws.close()
    expected = {"users": {user.id: {"notify_service": "email", "target": "mia@example.org"}}}
    assert await async_stored_document(auth.config_dir, "auth_module.notify") == expected
    await auth.async_shutdown()  # the journal compacted: Open Peer Power's file
    stored = json.loads(Path(auth.config_dir, ".storage", "auth_module.notify").read_text())
    assert stored["version"] == 1
    assert stored["data"] == expected

    result = await start_login(client)
    assert result["type"] == "form" and result["step_id"] == "mfa", result
    assert len(smtp.mailbox.mails) == 2 and smtp.mailbox.envelopes[-1].rcpt_tos == ["mia@example.org"]
    status, result = await client.login.step(result["flow_id"], code=smtp.mailbox.code())
    assert status == 200 and result["type"] == "create_entry", result
    status, tokens = await client.login.token(
        grant_type="authorization_code", client_id="https://example.com/app", code=result["result"]
    )
    assert status == 200 and tokens["access_token"]


async def test_mail_says_the_configured_message_from_the_sender(
    opp_auth_factory: Any, smtp_server: Any, make_user: Any
) -> None:
    """The mail comes from sender (with sender_name) to the default recipient and carries the message."""
    smtp = await smtp_server()
    auth = await opp_auth_factory(
        providers=PROVIDERS,
        mfa_modules=[{"type": "notify", "message": "Code: {} (Open Peer Power)"}],
        blocks={"notify": [smtp_service(smtp.port, sender_name="Open Peer Power")]},
    )
    user = await make_user(auth)
    await auth.users.async_enable_user_mfa(user, "notify", {"notify_service": "email"})
    await auth.registry.get_auth_mfa_module("notify").async_initialize_login_mfa_step(user.id)
    mail = smtp.mailbox.mails[-1]
    assert mail["From"] == "Open Peer Power <opp@example.org>" and mail["To"] == "owner@example.org"
    assert mail.get_body().get_content().strip() == f"Code: {smtp.mailbox.code()} (Open Peer Power)"


async def test_wrong_code_mails_a_different_code_which_works(
    opp_auth_factory: Any, opp_auth_client: Any, smtp_server: Any, make_user: Any
) -> None:
    """After a wrong code a second mail arrives with a new code; that one logs in."""
    smtp = await smtp_server()
    auth = await notify_auth(opp_auth_factory, smtp_service(smtp.port))
    user = await make_user(auth)
    await auth.users.async_enable_user_mfa(user, "notify", {"notify_service": "email"})
    client = await opp_auth_client(auth)
    result = await start_login(client)
    first = smtp.mailbox.code()
    wrong = f"{(int(first) + 1) % 1_000_000:06d}"
    status, result = await client.login.step(result["flow_id"], code=wrong)
    assert status == 200 and result["errors"] == {"base": "invalid_code"}
    assert len(smtp.mailbox.mails) == 2
    second = smtp.mailbox.code()
    assert second != first
    status, result = await client.login.step(result["flow_id"], code=second)
    assert status == 200 and result["type"] == "create_entry", result


async def test_server_refusing_the_recipient_aborts_the_login(
    opp_auth_factory: Any, opp_auth_client: Any, smtp_server: Any, make_user: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """A 550 from the server ends the login with send_failed (logged with the service name), not a 500."""
    smtp = await smtp_server(refuse=True)
    auth = await notify_auth(opp_auth_factory, smtp_service(smtp.port))
    user = await make_user(auth)
    await auth.users.async_enable_user_mfa(user, "notify", {"notify_service": "email"})
    client = await opp_auth_client(auth)
    with caplog.at_level(logging.ERROR):
        result = await start_login(client)
    assert result["type"] == "abort" and result["reason"] == "send_failed"
    assert "notify service email" in caplog.text and "550" in caplog.text


# aiosmtpd warns about AUTH without TLS; plain SMTP keeps these tests about the credentials alone.
AUTH_WITHOUT_TLS = pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS:UserWarning")


@AUTH_WITHOUT_TLS
async def test_failed_smtp_login_aborts_the_login(
    opp_auth_factory: Any, opp_auth_client: Any, smtp_server: Any, make_user: Any
) -> None:
    """Wrong SMTP credentials: send_failed."""
    smtp = await smtp_server(login=("opp", "right"))
    auth = await notify_auth(opp_auth_factory, smtp_service(smtp.port, username="opp", password="wrong"))
    user = await make_user(auth)
    await auth.users.async_enable_user_mfa(user, "notify", {"notify_service": "email"})
    client = await opp_auth_client(auth)
    result = await start_login(client)
    assert result["type"] == "abort" and result["reason"] == "send_failed"


@AUTH_WITHOUT_TLS
async def test_smtp_login_with_the_right_password_delivers(
    opp_auth_factory: Any, smtp_server: Any, make_user: Any
) -> None:
    """The same server with the right credentials accepts the mail."""
    smtp = await smtp_server(login=("opp", "right"))
    auth = await notify_auth(opp_auth_factory, smtp_service(smtp.port, username="opp", password="right"))
    user = await make_user(auth)
    await auth.users.async_enable_user_mfa(user, "notify", {"notify_service": "email"})
    await auth.registry.get_auth_mfa_module("notify").async_initialize_login_mfa_step(user.id)
    assert len(smtp.mailbox.mails) == 1


async def test_server_down_aborts_the_login(
    opp_auth_factory: Any, opp_auth_client: Any, closed_port: int, make_user: Any
) -> None:
    """Nothing listening: send_failed, and the flow cannot be continued."""
    auth = await notify_auth(opp_auth_factory, smtp_service(closed_port))
    user = await make_user(auth)
    await auth.users.async_enable_user_mfa(user, "notify", {"notify_service": "email"})
    client = await opp_auth_client(auth)
    result = await start_login(client)
    assert result["type"] == "abort" and result["reason"] == "send_failed"
    status, _ = await client.login.step(result["flow_id"], code="000000")
    assert status == 404


async def test_setup_with_a_refusing_server_aborts(
    opp_auth_factory: Any, opp_auth_client: Any, smtp_server: Any, make_user: Any
) -> None:
    """Enrolment whose first mail is refused ends with send_failed and enrols nobody."""
    smtp = await smtp_server(refuse=True)
    auth = await notify_auth(opp_auth_factory, smtp_service(smtp.port))
    user = await make_user(auth)
    client = await opp_auth_client(auth)
    ws = await ws_session(client, auth, user)
    try:
        form = await ws_call(ws, 1, type="auth/setup_mfa", mfa_module_id="notify")
        result = await ws_call(
            ws, 2, type="auth/setup_mfa", flow_id=form["flow_id"], user_input={"notify_service": "email"}
        )
    finally:
        await ws.close()
    assert result["type"] == "abort" and result["reason"] == "send_failed"
    assert not await auth.registry.get_auth_mfa_module("notify").async_is_user_setup(user.id)


@pytest.mark.parametrize("target", ["not an address", "mia@example.org\r\nBcc: spy@example.org", "a@b,c@d"])
async def test_setup_refuses_a_target_that_is_not_one_address(
    opp_auth_factory: Any, smtp_server: Any, make_user: Any, target: str
) -> None:
    """The target field is checked before anything is sent (no header injection, no extra recipients)."""
    smtp = await smtp_server()
    auth = await notify_auth(opp_auth_factory, smtp_service(smtp.port))
    user = await make_user(auth)
    form = await auth.mfa_setup_flow.async_init("notify", context={"user_id": user.id})
    form = await auth.mfa_setup_flow.async_configure(form["flow_id"], {"notify_service": "email", "target": target})
    assert form["step_id"] == "init" and form["errors"] == {"target": "invalid_target"}
    assert smtp.mailbox.mails == []


# ---- TLS ----------------------------------------------------------------------------------------


@pytest.fixture
def server_cert(tmp_path: Path, require_binary: Any) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 made with openssl: (certificate, key)."""
    openssl = require_binary("openssl", "openssl")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        [
            openssl,
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            str(key),
            "-out",
            str(cert),
            "-days",
            "1",
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
        ],
        check=True,
        capture_output=True,
    )
    return cert, key


def server_context(cert: Path, key: Path) -> ssl.SSLContext:
    """The server side of TLS."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    return context


@pytest.mark.parametrize("encryption", ["tls", "starttls"])
async def test_encrypted_delivery_to_a_trusted_server(
    opp_auth_factory: Any,
    smtp_server: Any,
    make_user: Any,
    server_cert: tuple[Path, Path],
    monkeypatch: pytest.MonkeyPatch,
    encryption: str,
) -> None:
    """Implicit TLS and STARTTLS deliver when the certificate is trusted (SSL_CERT_FILE names the test CA)."""
    context = server_context(*server_cert)
    if encryption == "tls":
        smtp = await smtp_server(implicit_tls=context)
    else:
        smtp = await smtp_server(tls_context=context, require_starttls=True)
    monkeypatch.setenv("SSL_CERT_FILE", str(server_cert[0]))
    auth = await notify_auth(opp_auth_factory, smtp_service(smtp.port, encryption=encryption))
    user = await make_user(auth)
    await auth.users.async_enable_user_mfa(user, "notify", {"notify_service": "email"})
    await auth.registry.get_auth_mfa_module("notify").async_initialize_login_mfa_step(user.id)
    assert len(smtp.mailbox.mails) == 1


async def test_untrusted_certificate_aborts_the_login(
    opp_auth_factory: Any,
    opp_auth_client: Any,
    smtp_server: Any,
    make_user: Any,
    server_cert: tuple[Path, Path],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    """STARTTLS to a server whose certificate nobody vouches for fails closed."""
    smtp = await smtp_server(tls_context=server_context(*server_cert), require_starttls=True)
    empty = tmp_path / "no-cas.pem"
    empty.write_text("")
    monkeypatch.setenv("SSL_CERT_FILE", str(empty))
    monkeypatch.setenv("SSL_CERT_DIR", str(tmp_path / "no-such-dir"))
    auth = await notify_auth(opp_auth_factory, smtp_service(smtp.port, encryption="starttls"))
    user = await make_user(auth)
    await auth.users.async_enable_user_mfa(user, "notify", {"notify_service": "email"})
    client = await opp_auth_client(auth)
    result = await start_login(client)
    assert result["type"] == "abort" and result["reason"] == "send_failed"
    assert smtp.mailbox.mails == []

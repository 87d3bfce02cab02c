"""Real slapd servers for the LDAP provider tests: a throwaway configuration, directory and CA per run."""

from __future__ import annotations

import datetime
import os
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from ldap3.utils.dn import escape_rdn

from tests.conftest import REQUIRE_INTEGRATION_ENV, require_binary

SUFFIX = "dc=example,dc=org"
ROOT_DN = f"cn=admin,{SUFFIX}"
ROOT_PW = "root-secret"
READER_DN = f"cn=reader,{SUFFIX}"
READER_PW = "reader-secret"
PEOPLE = f"ou=people,{SUFFIX}"
GROUPS = f"ou=groups,{SUFFIX}"
ADMINS = f"cn=admins,{GROUPS}"
STAFF = f"cn=staff,{GROUPS}"
READERS = f"cn=readers,{GROUPS}"

WEIRD = "we(ir)d*\\"

# username: (ou below people or "hidden", cn, password)
USERS = {
    "alice": ("", "Alice Liddell", "alice-pass"),
    "bob": ("", "Bob Builder", "bob-pass"),
    "carol": ("", "Carol Reader", "carol-pass"),
    "dave": ("", "Dave Nogroup", "dave-pass"),
    "zoe": ("", "Zoë Ünïcødé", "pässwörd-ü"),
    "erin": ("ou=engineering", "Erin Deep", "erin-pass"),
    "dup": ("", "Dup One", "dup-pass"),
    "hank": ("hidden", "Hank Hidden", "hank-pass"),
    # Filter-special characters in a real uid: found and grouped only when values are escaped.
    WEIRD: ("", "Weird Name", "weird-pass"),
}
DUPLICATE_DN = f"uid=dup,ou=engineering,{PEOPLE}"


def user_dn(username: str) -> str:
    """The DN of a test user."""
    where = USERS[username][0]
    rdn = f"uid={escape_rdn(username)}"
    if where == "hidden":
        return f"{rdn},ou=hidden,{SUFFIX}"
    return f"{rdn},{where + ',' if where else ''}{PEOPLE}"


def _ldif() -> str:
    """The test directory."""
    blocks = [
        f"dn: {SUFFIX}\nobjectClass: dcObject\nobjectClass: organization\ndc: example\no: Example",
        f"dn: {READER_DN}\nobjectClass: organizationalRole\nobjectClass: simpleSecurityObject\ncn: reader\nuserPassword: {READER_PW}",
        f"dn: {PEOPLE}\nobjectClass: organizationalUnit\nou: people",
        f"dn: ou=engineering,{PEOPLE}\nobjectClass: organizationalUnit\nou: engineering",
        f"dn: ou=hidden,{SUFFIX}\nobjectClass: organizationalUnit\nou: hidden",
        f"dn: {GROUPS}\nobjectClass: organizationalUnit\nou: groups",
    ]
    # seeAlso stands in for memberOf (a DN-valued attribute on the user's entry).
    see_also = {"alice": [ADMINS, STAFF], "bob": [STAFF], "erin": [STAFF], "carol": [READERS]}
    for username, (_where, cn, password) in USERS.items():
        lines = [
            f"dn: {user_dn(username)}",
            "objectClass: inetOrgPerson",
            f"uid: {username}",
            f"cn:: {_b64(cn)}",
            "sn: Person",
            f"userPassword:: {_b64(password)}",
        ]
        lines += [f"seeAlso: {dn}" for dn in see_also.get(username, [])]
        blocks.append("\n".join(lines))
    blocks.append(
        "\n".join([f"dn: {DUPLICATE_DN}", "objectClass: inetOrgPerson", "uid: dup", "cn: Dup Two", "sn: Two",
                   "userPassword: dup-pass"])
    )
    blocks.append(f"dn: {ADMINS}\nobjectClass: groupOfNames\ncn: admins\nmember: {user_dn('alice')}")
    blocks.append(
        f"dn: {STAFF}\nobjectClass: groupOfUniqueNames\ncn: staff\n"
        f"uniqueMember: {user_dn('alice')}\nuniqueMember: {user_dn('bob')}\nuniqueMember: {user_dn('erin')}\n"
        f"uniqueMember: {user_dn(WEIRD)}"
    )
    blocks.append(f"dn: {READERS}\nobjectClass: posixGroup\ncn: readers\ngidNumber: 1000\nmemberUid: carol")
    return "\n\n".join(blocks) + "\n"


def _b64(text: str) -> str:
    """base64 of UTF-8 text, for LDIF values that are not plain ASCII."""
    import base64

    return base64.b64encode(text.encode()).decode()


def free_port() -> int:
    """A TCP port on 127.0.0.1 nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# ---- a CA and a server certificate --------------------------------------------------------------


@dataclass
class Pki:
    """Files of a test CA and the server certificate it signed."""

    ca_file: Path
    cert_file: Path
    key_file: Path
    wrong_ca_file: Path


def _name(common_name: str) -> Any:
    from cryptography import x509
    from cryptography.x509.oid import NameOID

    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _ca(common_name: str) -> tuple[Any, Any]:
    """A self-signed CA."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec

    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(_name(common_name))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True, content_commitment=False,
                                     key_encipherment=False, data_encipherment=False, key_agreement=False,
                                     encipher_only=False, decipher_only=False), critical=True)
        .sign(key, hashes.SHA256())
    )
    return key, cert


def make_pki(directory: Path) -> Pki:
    """A CA, a server certificate for localhost, and an unrelated CA."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    ca_key, ca_cert = _ca("opp-auth test CA")
    _, wrong_cert = _ca("opp-auth wrong CA")
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name("localhost"))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        # Only the name: ldaps://127.0.0.1 then shows that a certificate for another host is refused.
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    pki = Pki(directory / "ca.pem", directory / "server.pem", directory / "server.key", directory / "wrong-ca.pem")
    pki.ca_file.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    pki.wrong_ca_file.write_bytes(wrong_cert.public_bytes(serialization.Encoding.PEM))
    pki.cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    pki.key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                               serialization.NoEncryption()))
    return pki


# ---- slapd ------------------------------------------------------------------------------------------


@dataclass
class Slapd:
    """A running slapd: its URLs and how to stop or restart it."""

    slapd: str
    folder: Path
    port: int
    tls_port: int | None
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"ldap://127.0.0.1:{self.port}"

    @property
    def ldaps_url(self) -> str:
        """ldaps:// by the name in the server certificate."""
        assert self.tls_port is not None
        return f"ldaps://localhost:{self.tls_port}"

    @property
    def starttls_url(self) -> str:
        """ldap:// by the name in the server certificate (for start_tls)."""
        return f"ldap://localhost:{self.port}"

    def start(self) -> None:
        """Start slapd in the foreground and wait until it accepts connections."""
        urls = self.url + "/" + (f" ldaps://127.0.0.1:{self.tls_port}/" if self.tls_port else "")
        log = open(self.folder / "slapd.log", "ab")
        self.process = subprocess.Popen(
            [self.slapd, "-f", str(self.folder / "slapd.conf"), "-h", urls, "-d", "0"],
            stdout=log, stderr=log, stdin=subprocess.DEVNULL,
        )
        log.close()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"slapd exited: {(self.folder / 'slapd.log').read_text(errors='replace')[-2000:]}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return
            except OSError:
                time.sleep(0.02)
        raise RuntimeError("slapd did not start within 10 s")

    def stop(self) -> None:
        """Stop slapd and wait for it."""
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None


def _slapd_conf(folder: Path, pki: Pki | None, extra_global: str = "") -> str:
    """A minimal slapd.conf: one mdb database under folder."""
    tls = (
        f"TLSCACertificateFile {pki.ca_file}\nTLSCertificateFile {pki.cert_file}\nTLSCertificateKeyFile {pki.key_file}\n"
        if pki else ""
    )
    return f"""\
include /etc/ldap/schema/core.schema
include /etc/ldap/schema/cosine.schema
include /etc/ldap/schema/nis.schema
include /etc/ldap/schema/inetorgperson.schema
pidfile {folder}/slapd.pid
argsfile {folder}/slapd.args
modulepath /usr/lib/ldap
moduleload back_mdb
{tls}{extra_global}
database mdb
maxsize 16777216
suffix "{SUFFIX}"
rootdn "{ROOT_DN}"
rootpw {ROOT_PW}
directory {folder}/db
access to attrs=userPassword
    by anonymous auth
    by * none
access to dn.subtree="ou=hidden,{SUFFIX}"
    by dn.exact="{READER_DN}" read
    by self read
    by anonymous auth
    by * none
access to * by * read
"""


def make_slapd(slapd: str, folder: Path, pki: Pki | None, *, tls: bool = False, extra_global: str = "") -> Slapd:
    """Write a configuration and load the test directory with slapadd (the server is not started)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "db").mkdir()
    (folder / "slapd.conf").write_text(_slapd_conf(folder, pki, extra_global))
    (folder / "data.ldif").write_text(_ldif(), encoding="utf-8")
    slapadd = os.path.join(os.path.dirname(slapd), "slapadd")
    subprocess.run([slapadd, "-q", "-f", str(folder / "slapd.conf"), "-l", str(folder / "data.ldif")],
                   check=True, capture_output=True)
    return Slapd(slapd, folder, free_port(), free_port() if tls else None)


@pytest.fixture(scope="session")
def slapd_binary() -> str:
    """Path of slapd (skips, or fails with OPP_AUTH_REQUIRE_INTEGRATION=1, when it is not installed)."""
    path = require_binary("slapd", "slapd")
    slapadd = os.path.join(os.path.dirname(path), "slapadd")
    if not os.path.exists(slapadd) or not os.path.exists("/usr/lib/ldap/back_mdb.la"):
        require_binary("slapadd-with-back_mdb", "slapd")
    return path


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    """The test CA, server certificate and an unrelated CA."""
    try:
        import cryptography  # noqa: F401
    except ImportError:
        message = "the cryptography package is needed to make the test CA (pip install cryptography)"
        if os.environ.get(REQUIRE_INTEGRATION_ENV) == "1":
            pytest.fail(message, pytrace=False)
        pytest.skip(message)
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="session")
def ldap_server(slapd_binary: str, pki: Pki, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Slapd]:
    """The main directory, with StartTLS and ldaps (shared by the session)."""
    server = make_slapd(slapd_binary, tmp_path_factory.mktemp("slapd"), pki, tls=True)
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def unsafe_ldap_server(slapd_binary: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Slapd]:
    """A directory that accepts unauthenticated binds (a DN with an empty password succeeds anonymously)."""
    server = make_slapd(slapd_binary, tmp_path_factory.mktemp("slapd-unsafe"), None, extra_global="allow bind_anon_dn")
    server.start()
    yield server
    server.stop()


@pytest.fixture
def own_ldap_server(slapd_binary: str, tmp_path: Path) -> Iterator[Slapd]:
    """A directory for one test (to stop, restart or change)."""
    server = make_slapd(slapd_binary, tmp_path / "slapd", None)
    server.start()
    yield server
    server.stop()


@pytest.fixture
def down_url() -> str:
    """An ldap:// URL where nothing listens."""
    return f"ldap://127.0.0.1:{free_port()}"


@pytest.fixture
def silent_url() -> Iterator[str]:
    """An ldap:// URL that accepts TCP connections and never answers."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(16)
        yield f"ldap://127.0.0.1:{sock.getsockname()[1]}"

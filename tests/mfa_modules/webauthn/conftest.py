"""A small software authenticator: real EC P-256 keys, real attestation and assertion objects.

It answers creation and request options exactly as a browser hands them to a
page (PublicKeyCredential JSON, base64url fields), and can be told to do what a
browser never does on demand: sign for another origin or rp_id, send a bad
signature, a fixed or backwards counter.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import struct
from dataclasses import dataclass, field
from typing import Any

import cbor2
import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

UP, UV, BE, BS, AT = 0x01, 0x04, 0x08, 0x10, 0x40
SOFT_AAGUID = bytes.fromhex("fbfc3007154e4ecc8c0b6e020557d7bd")  # shows as "iCloud Keychain" in lists


def b64url(data: bytes) -> str:
    """base64url without padding, as WebAuthn JSON has it."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unb64url(text: str) -> bytes:
    """Inverse of b64url."""
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


@dataclass
class SoftCredential:
    """One key pair held by the authenticator."""

    credential_id: bytes
    private_key: ec.EllipticCurvePrivateKey
    rp_id: str
    user_handle: bytes
    counter: int = 0


@dataclass
class SoftAuthenticator:
    """Creates and uses credentials; every knob defaults to an honest authenticator."""

    origin: str = "https://opp.example.com"
    counting: bool = True  # False: sign counter always 0, as synced passkeys do
    user_verified: bool = True
    aaguid: bytes = SOFT_AAGUID
    credentials: list[SoftCredential] = field(default_factory=list)

    def create(self, options: dict[str, Any], *, origin: str | None = None, rp_id: str | None = None) -> str:
        """navigator.credentials.create(): the registration JSON for creation options."""
        rp = rp_id or options["rp"]["id"]
        key = ec.generate_private_key(ec.SECP256R1())
        cred = SoftCredential(os.urandom(32), key, rp, unb64url(options["user"]["id"]))
        self.credentials.append(cred)
        numbers = key.public_key().public_numbers()
        cose = cbor2.dumps({1: 2, 3: -7, -1: 1, -2: numbers.x.to_bytes(32, "big"), -3: numbers.y.to_bytes(32, "big")})
        flags = UP | AT | BE | BS | (UV if self.user_verified else 0)
        auth_data = (
            hashlib.sha256(rp.encode()).digest()
            + bytes([flags])
            + struct.pack(">I", 0)
            + self.aaguid
            + struct.pack(">H", len(cred.credential_id))
            + cred.credential_id
            + cose
        )
        client_data = self._client_data("webauthn.create", options["challenge"], origin)
        attestation = cbor2.dumps({"fmt": "none", "attStmt": {}, "authData": auth_data})
        return json.dumps(
            {
                "id": b64url(cred.credential_id),
                "rawId": b64url(cred.credential_id),
                "type": "public-key",
                "response": {
                    "clientDataJSON": b64url(client_data),
                    "attestationObject": b64url(attestation),
                    "transports": ["internal", "hybrid"],
                },
                "clientExtensionResults": {},
                "authenticatorAttachment": "platform",
            }
        )

    def get(
        self,
        options: dict[str, Any],
        *,
        credential: SoftCredential | None = None,
        origin: str | None = None,
        rp_id: str | None = None,
        counter: int | None = None,
        bad_signature: bool = False,
        challenge: str | None = None,
    ) -> str:
        """navigator.credentials.get(): an assertion JSON for request options."""
        allowed = {c["id"] for c in options.get("allowCredentials") or []}
        if credential is None:
            usable = [c for c in self.credentials if not allowed or b64url(c.credential_id) in allowed]
            credential = usable[-1]
        if counter is None:
            if self.counting:
                credential.counter += 1
            counter = credential.counter
        flags = UP | BE | BS | (UV if self.user_verified else 0)
        auth_data = (
            hashlib.sha256((rp_id or credential.rp_id).encode()).digest() + bytes([flags]) + struct.pack(">I", counter)
        )
        client_data = self._client_data("webauthn.get", challenge or options["challenge"], origin)
        signature = credential.private_key.sign(
            auth_data + hashlib.sha256(client_data).digest(), ec.ECDSA(hashes.SHA256())
        )
        if bad_signature:
            other = ec.generate_private_key(ec.SECP256R1())
            signature = other.sign(auth_data + hashlib.sha256(client_data).digest(), ec.ECDSA(hashes.SHA256()))
        return json.dumps(
            {
                "id": b64url(credential.credential_id),
                "rawId": b64url(credential.credential_id),
                "type": "public-key",
                "response": {
                    "clientDataJSON": b64url(client_data),
                    "authenticatorData": b64url(auth_data),
                    "signature": b64url(signature),
                    "userHandle": b64url(credential.user_handle),
                },
                "clientExtensionResults": {},
                "authenticatorAttachment": "platform",
            }
        )

    def _client_data(self, kind: str, challenge: str, origin: str | None) -> bytes:
        """clientDataJSON as a browser serialises it."""
        return json.dumps(
            {"type": kind, "challenge": challenge, "origin": origin or self.origin, "crossOrigin": False},
            separators=(",", ":"),
        ).encode()


@pytest.fixture
def authenticator() -> SoftAuthenticator:
    """An honest software authenticator for https://opp.example.com."""
    return SoftAuthenticator()

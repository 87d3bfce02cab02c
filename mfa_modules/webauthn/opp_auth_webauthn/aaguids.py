"""Authenticator models by AAGUID, for the passkey list: only widely used, publicly documented ones.

An AAGUID names the make of an authenticator (not the device). Most passkey
managers send theirs even with ``attestation: none``; security keys and some
browsers send zeros, which names nothing. Unknown AAGUIDs show no model.
"""

from __future__ import annotations

ZERO_AAGUID = "00000000-0000-0000-0000-000000000000"

MODELS: dict[str, str] = {
    "ea9b8d66-4d01-1d21-3ce4-b6b48cb575d4": "Google Password Manager",
    "adce0002-35bc-c60a-648b-0b25f1f05503": "Chrome on Mac",
    "fbfc3007-154e-4ecc-8c0b-6e020557d7bd": "iCloud Keychain",
    "dd4ec289-e01d-41c9-bb89-70fa845d4bf2": "iCloud Keychain (managed)",
    "08987058-cadc-4b81-b6e1-30de50dcbe96": "Windows Hello",
    "9ddd1817-af5a-4672-a2b9-3e3dd95000a9": "Windows Hello",
    "6028b017-b1d4-4c02-b4b3-afcdafc96bb2": "Windows Hello",
    "bada5566-a7aa-401f-bd96-45619a55120d": "1Password",
    "d548826e-79b4-db40-a3d8-11116f7e8349": "Bitwarden",
    "b84e4048-15dc-4dd0-8640-f4f60813c8af": "NordPass",
    "531126d6-e717-415c-9320-3d9aa6981239": "Dashlane",
    "cb69481e-8ff7-4039-93ec-0a2729a154a8": "YubiKey 5 Series",
    "ee882879-721c-4913-9775-3dfcce97072a": "YubiKey 5 Series",
    # Chromium's DevTools virtual authenticator (what the browser tests enrol).
    "01020304-0506-0708-0102-030405060708": "Chromium virtual authenticator",
}


def model_for(aaguid: str | None) -> str | None:
    """The authenticator model an AAGUID names, or None."""
    if not aaguid or aaguid == ZERO_AAGUID:
        return None
    return MODELS.get(aaguid.lower())

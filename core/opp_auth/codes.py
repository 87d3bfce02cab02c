"""Bounded one-time authorization codes, each bound to a client id and a purpose.

A code is issued only by the login engine (``login_flow.py``) after the one MFA
decision, for one purpose: ``authorize`` codes are redeemed by ``/auth/token``,
``link_user`` codes by ``/auth/link_user``. Redeeming checks the client id and
the purpose; a code presented for the wrong purpose is used up. Codes live ten
minutes and at most ``MAX_CODES`` are kept (the oldest is dropped first).
"""

from __future__ import annotations

import secrets
import time
from collections import OrderedDict
from typing import NamedTuple

from .models import Credentials

AUTHORIZE = "authorize"
LINK_USER = "link_user"
PURPOSES = frozenset({AUTHORIZE, LINK_USER})
CODE_TTL = 600.0
MAX_CODES = 10000


class _Entry(NamedTuple):
    created: float
    purpose: str
    credentials: Credentials


class AuthorizationCodes:
    """The codes waiting to be redeemed (in memory only, like Open Peer Power's)."""

    def __init__(self, *, ttl: float = CODE_TTL, max_codes: int = MAX_CODES) -> None:
        """Codes live ttl seconds; at most max_codes at once."""
        self.ttl = ttl
        self.max_codes = max_codes
        self._codes: OrderedDict[tuple[str, str], _Entry] = OrderedDict()

    def __len__(self) -> int:
        """How many codes are waiting (expired ones included until the next issue)."""
        return len(self._codes)

    def issue(self, client_id: str, credentials: Credentials, purpose: str) -> str:
        """A new code for credentials, redeemable once by client_id for purpose."""
        if purpose not in PURPOSES:
            raise ValueError(f"unknown authorization code purpose {purpose!r}")
        if not isinstance(credentials, Credentials):
            raise TypeError("an authorization code carries Credentials")
        self._purge()
        while len(self._codes) >= self.max_codes:
            self._codes.popitem(last=False)
        code = secrets.token_hex(16)
        self._codes[(client_id, code)] = _Entry(time.monotonic(), purpose, credentials)
        return code

    def redeem(self, client_id: object, code: object, purpose: str) -> Credentials | None:
        """The credentials of a live code issued to client_id for purpose, once; else None."""
        if not isinstance(client_id, str) or not isinstance(code, str):
            return None
        entry = self._codes.pop((client_id, code), None)
        if entry is None or time.monotonic() - entry.created > self.ttl or entry.purpose != purpose:
            return None
        return entry.credentials

    def _purge(self) -> None:
        """Forget expired codes (they are in creation order)."""
        now = time.monotonic()
        while self._codes:
            entry = next(iter(self._codes.values()))
            if now - entry.created <= self.ttl:
                break
            self._codes.popitem(last=False)


__all__ = ["AUTHORIZE", "CODE_TTL", "LINK_USER", "MAX_CODES", "PURPOSES", "AuthorizationCodes"]

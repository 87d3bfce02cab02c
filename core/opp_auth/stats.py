"""Runtime figures the core keeps for monitoring, read through ``PluginContext.runtime_stats()``.

The core does not depend on a metrics library: it counts token checks with
plain integers in the access decision path (a dict increment on a constant
key) and refresh grants at /auth/token, and answers gauges by asking their owners at read time (open websocket
connections, login flows in progress), so reading costs nothing until a
monitoring plugin (opp-auth-metrics) asks. Every label value here is from a
closed set named in this module.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .sessions import REFUSED_EXPIRED, REFUSED_INACTIVE, REFUSED_LOCAL_ONLY, REFUSED_NO_PROVIDER, REFUSED_PROVIDER

# What carried the credential.
CHECK_ACCESS_TOKEN = "access_token"  # Authorization: Bearer, and the websocket auth message
CHECK_SIGNED_PATH = "signed_path"  # ?authSig=
CHECK_KINDS = (CHECK_ACCESS_TOKEN, CHECK_SIGNED_PATH)

# How a check ended.
OUTCOME_VALID = "valid"
OUTCOME_INVALID = "invalid"  # malformed, unknown or revoked session, bad signature, expired access token
OUTCOME_INACTIVE = "user_inactive"
OUTCOME_LOCAL_ONLY = "local_only"
OUTCOME_SESSION_EXPIRED = "session_expired"
OUTCOME_PROVIDER_REFUSED = "provider_refused"
OUTCOMES = (
    OUTCOME_VALID,
    OUTCOME_INVALID,
    OUTCOME_INACTIVE,
    OUTCOME_LOCAL_ONLY,
    OUTCOME_SESSION_EXPIRED,
    OUTCOME_PROVIDER_REFUSED,
)
# The access decision's refusals (sessions.AccessPolicy.refusal) by outcome.
REFUSAL_OUTCOMES = {
    REFUSED_INACTIVE: OUTCOME_INACTIVE,
    REFUSED_LOCAL_ONLY: OUTCOME_LOCAL_ONLY,
    REFUSED_EXPIRED: OUTCOME_SESSION_EXPIRED,
    REFUSED_PROVIDER: OUTCOME_PROVIDER_REFUSED,
    REFUSED_NO_PROVIDER: OUTCOME_PROVIDER_REFUSED,
}

# How a grant_type=refresh_token exchange at /auth/token ended (the OAuth error it answered).
REFRESH_SUCCESS = "success"
REFRESH_INVALID_GRANT = "invalid_grant"  # unknown, revoked or expired refresh token
REFRESH_INVALID_REQUEST = "invalid_request"  # no token, or a client id that is not the token's
REFRESH_ACCESS_DENIED = "access_denied"  # the access decision or the provider refused the session
REFRESH_RESULTS = (REFRESH_SUCCESS, REFRESH_INVALID_GRANT, REFRESH_INVALID_REQUEST, REFRESH_ACCESS_DENIED)

GAUGE_WEBSOCKET_CONNECTIONS = "websocket_connections"
GAUGE_LOGIN_FLOWS = "login_flows_in_progress"
GAUGE_MFA_SETUP_FLOWS = "mfa_setup_flows_in_progress"


class RuntimeStats:
    """Counters of token checks and the sources of the gauges, for one server."""

    def __init__(self) -> None:
        """Every counter at zero, no gauge source yet."""
        # One dict per kind, keyed by outcome: the hot path increments a constant key.
        self.access_token_checks: dict[str, int] = dict.fromkeys(OUTCOMES, 0)
        self.signed_path_checks: dict[str, int] = dict.fromkeys(OUTCOMES, 0)
        self.refresh_grants: dict[str, int] = dict.fromkeys(REFRESH_RESULTS, 0)
        self._gauges: dict[str, Callable[[], int]] = {}
        # Called after each HTTP request the server answered (PluginContext.observe_requests); the
        # pipeline reads the clock only while one is registered. Replaced, never changed in place: a
        # request is observed by those registered when its route's handling began, whatever they do.
        self.request_observers: tuple[Callable[[Any, int, float], None], ...] = ()

    def refused(self, counts: dict[str, int], refusal: str) -> None:
        """Count a refusal of the access decision under its outcome."""
        counts[REFUSAL_OUTCOMES.get(refusal, OUTCOME_PROVIDER_REFUSED)] += 1

    def add_gauge(self, name: str, source: Callable[[], int]) -> None:
        """Answer the gauge name by calling source() when the figures are read."""
        self._gauges[name] = source

    def snapshot(self) -> dict[str, Any]:
        """The figures now: ``token_checks`` {(kind, outcome): n}, ``refresh_grants`` {result: n}, ``gauges`` {name: n}."""
        checks = {(CHECK_ACCESS_TOKEN, o): n for o, n in self.access_token_checks.items()}
        checks.update({(CHECK_SIGNED_PATH, o): n for o, n in self.signed_path_checks.items()})
        return {
            "token_checks": checks,
            "refresh_grants": dict(self.refresh_grants),
            "gauges": {name: int(source()) for name, source in self._gauges.items()},
        }

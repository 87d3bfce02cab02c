"""opp-auth-metrics: Prometheus metrics at ``/metrics``, off until ``http: metrics: enabled: true``.

Written only against opp-auth's public API, as a third party would: the
counters of logins, MFA results, refresh grants, throttled and banned
requests come from the core's events (hooks), the token checks and the
gauges from ``PluginContext.runtime_stats()`` read at scrape time, and the
request latency from ``PluginContext.observe_requests`` (the core times each
answered request only while someone observes). Reading ``/metrics`` is allowed from ``allowed_networks`` (the
client address as the core resolves it behind trusted proxies) or with the
bearer token of an administrator (``opp_auth.http_require_admin``).

Every label value is from a closed set named in :data:`LABEL_VALUES` (or, for
``provider_type`` / ``mfa_module_type`` / ``route``, from the configured
providers, modules and registered routes): never a username, an address, a
client id, a token or a path with ids in it.
"""

from __future__ import annotations

import ipaddress
import math
from bisect import bisect_left
from collections.abc import Awaitable, Callable, Iterator, Mapping
from typing import Any

from aiohttp import hdrs, web
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from opp_auth import AuthEvent, PluginContext, client_ip, hookimpl, http_require_admin

PATH = "/metrics"
# The classic text format every Prometheus reads (every name here is a legacy-safe one).
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
PREFIX = "opp_auth"

OTHER = "other"
NONE = "none"
UNMATCHED = "unmatched"

# Login results: a success, or the failure reason the core or a plugin reported, folded into this set.
LOGIN_RESULTS = (
    "success",
    "invalid_auth",
    "invalid_username",
    "mfa_failed",
    "provider_unavailable",
    "user_inactive",
    "invalid_client",
    "invalid_flow",
    "invalid_handler",
    "ip_changed",
    OTHER,
)
# Refusals of the event stream that are not login attempts: a bad token is a token check
# (opp_auth_token_checks_total), a refused /auth/token request a refresh grant or a code exchange,
# a throttled or banned request has a counter of its own.
NOT_LOGINS = frozenset({"unauthorized", "invalid_token", "invalid_request", "throttled", "banned"})
MFA_RESULTS = ("success", "failure")
REFRESH_RESULTS = ("success", "invalid_grant", "invalid_request", "access_denied")
HTTP_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", OTHER)
STATUS_CLASSES = ("1xx", "2xx", "3xx", "4xx", "5xx", OTHER)
TOKEN_CHECK_KINDS = ("access_token", "signed_path")
TOKEN_CHECK_OUTCOMES = (
    "valid",
    "invalid",
    "user_inactive",
    "local_only",
    "session_expired",
    "provider_refused",
)
GAUGES = {
    "websocket_connections": "Open websocket connections that passed the auth phase.",
    "login_flows_in_progress": "Login flows started and not yet finished or expired.",
    "mfa_setup_flows_in_progress": "MFA enrolment flows started and not yet finished or expired.",
}

LABEL_VALUES: dict[str, tuple[str, ...]] = {
    "result": tuple(dict.fromkeys(LOGIN_RESULTS + MFA_RESULTS + REFRESH_RESULTS)),
    "method": HTTP_METHODS,
    "status_class": STATUS_CLASSES,
    "kind": TOKEN_CHECK_KINDS,
    "outcome": TOKEN_CHECK_OUTCOMES,
}
"""The closed set of values of each label with a fixed vocabulary (the rest are named in the module docstring)."""

# Distinct routes a scrape may name before further ones are folded into "other" (a plugin adding
# routes at run time could otherwise grow the series without bound).
MAX_ROUTES = 256
# Label children cached by (route resource, raw method, status), and as many by (route, status) for the
# request observer; past this, looked up uncached.
MAX_CACHED_CHILDREN = 1024

REQUEST_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
LOGIN_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)

# Headers a reverse proxy adds. When one is present but the core did not take the client address from
# it (no use_x_forwarded_for / trusted_proxies for that peer), the peer is a proxy the server was not
# told about: every client behind it would look local, so the network allowance is not given.
_FORWARDING_HEADERS = (hdrs.X_FORWARDED_FOR, "Forwarded", "X-Real-IP")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


class Metrics:
    """The metrics of one server: a registry of its own, the /metrics view and the request observer."""

    def __init__(self, auth: PluginContext, allowed_networks: list[IPNetwork]) -> None:
        """Create every metric (at zero) in a fresh registry."""
        self.auth = auth
        self.allowed_networks = list(allowed_networks)
        self.registry = CollectorRegistry(auto_describe=True)
        registry = self.registry
        self.logins = Counter(
            f"{PREFIX}_logins",
            "Login steps that ended a login or failed it, by provider type and result (websocket auth is a token check).",
            ["provider_type", "result"],
            registry=registry,
        )
        self.mfa_results = Counter(
            f"{PREFIX}_mfa_results",
            "Second-factor checks at login by module type and result.",
            ["mfa_module_type", "result"],
            registry=registry,
        )
        self.throttled = Counter(
            f"{PREFIX}_throttled_requests",
            "Login steps and websocket auth messages refused by the login throttle.",
            registry=registry,
        )
        self.banned = Counter(
            f"{PREFIX}_banned_requests", "Requests refused because the client address is banned.", registry=registry
        )
        self.login_duration = Histogram(
            f"{PREFIX}_login_duration_seconds",
            "Server time on the login step whose result is counted (the provider's or MFA module's check).",
            ["provider_type", "result"],
            buckets=LOGIN_BUCKETS,
            registry=registry,
        )
        # Observed on every request: kept lock-free (the event loop is its only writer and reader).
        self.request_duration = LoopHistogram(
            f"{PREFIX}_http_request_duration_seconds",
            "Time the server spent answering an HTTP request (websocket connections are not timed).",
            ("route", "method", "status_class"),
            REQUEST_BUCKETS,
        )
        registry.register(_RuntimeCollector(auth, self.request_duration))
        self._children: dict[tuple[Any, str, int], _Series] = {}
        # The same series by route object, then status (filled with _children, within its bound).
        self._by_route: dict[Any, dict[int, _Series]] = {}
        self._by_route_size = 0
        self._routes: set[str] = set()

    # ---- the endpoint -----------------------------------------------------------------------------

    def allowed_by_network(self, request: web.Request) -> bool:
        """Whether the client address (as the core resolved it) is in allowed_networks, through no unknown proxy."""
        address = _ip(client_ip(request))
        if address is None or not any(address in network for network in self.allowed_networks):
            return False
        if any(name in request.headers for name in _FORWARDING_HEADERS):
            peer = request.transport.get_extra_info("peername") if request.transport is not None else None
            peer_address = _ip(peer[0]) if isinstance(peer, tuple) and peer else None
            if peer_address is None or peer_address == address:
                return False
        return True

    def render(self) -> bytes:
        """The Prometheus text exposition of every metric."""
        return generate_latest(self.registry)

    def view(self) -> Handler:
        """GET /metrics: served to allowed networks, else to an administrator's bearer token (else 401)."""

        async def serve(request: web.Request) -> web.StreamResponse:
            """The exposition, uncached (no store may keep it)."""
            return web.Response(
                body=self.render(), headers={hdrs.CONTENT_TYPE: CONTENT_TYPE, hdrs.CACHE_CONTROL: "no-store"}
            )

        admin_only = http_require_admin(serve)

        async def metrics_view(request: web.Request) -> web.StreamResponse:
            """Network allowance first, then the core's admin guard (the one access decision)."""
            if self.allowed_by_network(request):
                return await serve(request)
            return await admin_only(request)

        return metrics_view

    # ---- request latency --------------------------------------------------------------------------

    def observer(self) -> Callable[[web.Request, int, float], None]:
        """The request observer (``PluginContext.observe_requests``): each answer's time into its series."""
        by_route = self._by_route
        series_for = self._series
        upper = self.request_duration.upper
        first = upper[0]

        def observe(request: web.Request, status: int, seconds: float) -> None:
            """Observe seconds under (route, method, status class); the core never passes a websocket's 101."""
            # The series of a route and status seen before, without building a label (most requests).
            by_status = by_route.get(request.match_info.route)
            series = by_status.get(status) if by_status is not None else None
            if series is None:
                series = series_for(request, status)
            # le is inclusive, as Prometheus means it: bisect_left; the first bucket is the usual one.
            series.counts[0 if seconds <= first else bisect_left(upper, seconds)] += 1
            series.total += seconds

        return observe

    def _series(self, request: web.Request, status: int) -> _Series:
        """The series of (route, method, status class), cached for the methods of the closed set."""
        route_object = request.match_info.route
        resource = route_object.resource
        method = request.method
        key = (resource, method, status)
        series = self._children.get(key)
        if series is None:
            route = UNMATCHED if resource is None else resource.canonical
            if route not in self._routes:
                if len(self._routes) >= MAX_ROUTES:
                    route = OTHER
                else:
                    self._routes.add(route)
            method_label = method if method in HTTP_METHODS else OTHER
            status_class = f"{status // 100}xx" if 100 <= status <= 599 else OTHER
            series = self.request_duration.series((route, method_label, status_class))
            # Only well-known methods are cached: a client inventing methods cannot fill the cache.
            if method_label == OTHER or len(self._children) >= MAX_CACHED_CHILDREN:
                return series
            self._children[key] = series
        # By route object too, for the observer's lookup without labels, when the route alone gives
        # the method: a route of one method (aiohttp resolves a request only to a route of its method or
        # to one of any method, "*") that matched a path (not the route of an unmatched path, made anew
        # for each request).
        if resource is not None and route_object.method == method and self._by_route_size < MAX_CACHED_CHILDREN:
            by_status = self._by_route.setdefault(route_object, {})
            if status not in by_status:
                by_status[status] = series
                self._by_route_size += 1
        return series

    # ---- events -----------------------------------------------------------------------------------

    def provider_type(self, provider: Any) -> str:
        """The type of a configured provider given as (type, id), else 'none' / 'other'."""
        if provider is None:
            return NONE
        if isinstance(provider, (tuple, list)) and len(provider) == 2:
            provider_type, provider_id = provider
            if (
                isinstance(provider_type, str)
                and (provider_id is None or isinstance(provider_id, str))
                and self.auth.get_auth_provider(provider_type, provider_id) is not None
            ):
                return provider_type
        return OTHER

    def mfa_module_type(self, module_id: Any) -> str:
        """The type of a configured MFA module given by id, else 'other'."""
        module = self.auth.get_auth_mfa_module(module_id) if isinstance(module_id, str) else None
        return module.type if module is not None else OTHER

    def record(self, event: AuthEvent) -> None:
        """Count one event of the core's stream (types this plugin does not count are ignored)."""
        if event.type == "login_failed":
            reason = event.reason
            if reason == "banned":
                self.banned.inc()
            elif reason == "throttled":
                self.throttled.inc()
            elif reason not in NOT_LOGINS:
                result = reason if isinstance(reason, str) and reason in LOGIN_RESULTS else OTHER
                self._login(event, result)
                if reason == "mfa_failed":
                    self.mfa_results.labels(self.mfa_module_type(event.mfa_module), "failure").inc()
        elif event.type == "login_succeeded":
            self._login(event, "success")
        elif event.type == "mfa_used":
            self.mfa_results.labels(self.mfa_module_type(event.mfa_module), "success").inc()

    def _login(self, event: AuthEvent, result: str) -> None:
        """Count a login attempt and observe the server's time on its step, when the event says it."""
        provider_type = self.provider_type(event.provider)
        self.logins.labels(provider_type, result).inc()
        seconds = event.details.get("step_seconds")
        if isinstance(seconds, (int, float)) and not isinstance(seconds, bool) and 0 <= seconds < math.inf:
            self.login_duration.labels(provider_type, result).observe(seconds)


class _Series:
    """The bucket counts (the last is +Inf) and sum of one labelled series."""

    __slots__ = ("counts", "total", "upper")

    def __init__(self, upper: tuple[float, ...]) -> None:
        """Empty."""
        self.upper = upper
        self.counts = [0] * (len(upper) + 1)
        self.total = 0.0

    def observe(self, seconds: float) -> None:
        """Count one observation (le is inclusive, as Prometheus means it)."""
        self.counts[bisect_left(self.upper, seconds)] += 1
        self.total += seconds


class LoopHistogram:
    """A Prometheus histogram written and read on the event loop only, so without prometheus-client's locks.

    prometheus-client's ``Histogram.observe`` takes a lock per bucket and per sum (about 2 us on
    the benchmark machine, 9 us with ``labels()``); this is a list increment and a float add.
    """

    def __init__(self, name: str, documentation: str, labelnames: tuple[str, ...], buckets: tuple[float, ...]) -> None:
        """A histogram with these label names and upper bounds (+Inf added)."""
        self.name = name
        self.documentation = documentation
        self.labelnames = labelnames
        self.upper = tuple(float(b) for b in buckets)
        self._series: dict[tuple[str, ...], _Series] = {}

    def series(self, labelvalues: tuple[str, ...]) -> _Series:
        """The series of these label values (created empty)."""
        series = self._series.get(labelvalues)
        if series is None:
            series = self._series[labelvalues] = _Series(self.upper)
        return series

    def family(self) -> HistogramMetricFamily:
        """Every series as cumulative buckets, for exposition."""
        family = HistogramMetricFamily(self.name, self.documentation, labels=list(self.labelnames))
        for values, series in sorted(self._series.items()):
            cumulative, buckets = 0, []
            for bound, count in zip((*self.upper, math.inf), series.counts, strict=True):
                cumulative += count
                buckets.append((floatToGoString(bound), cumulative))
            family.add_metric(list(values), buckets, series.total)
        return family


class _RuntimeCollector(Collector):
    """Token checks and gauges, read from the core when scraped (nothing on the hot path but an int)."""

    def __init__(self, auth: PluginContext, request_duration: LoopHistogram) -> None:
        """Read auth.runtime_stats() at each collect."""
        self.auth = auth
        self.request_duration = request_duration

    def describe(self) -> list[Metric]:
        """Nothing to check for duplicates (names are this plugin's own)."""
        return []

    def collect(self) -> Iterator[Metric]:
        """The counters and gauges now."""
        stats = self.auth.runtime_stats()
        checks = CounterMetricFamily(
            f"{PREFIX}_token_checks",
            "Access-token and signed-path checks by the one access decision, by what carried them and the outcome.",
            labels=["kind", "outcome"],
        )
        counts: Mapping[tuple[str, str], int] = stats.get("token_checks", {})
        for kind in TOKEN_CHECK_KINDS:
            for outcome in TOKEN_CHECK_OUTCOMES:
                checks.add_metric([kind, outcome], counts.get((kind, outcome), 0))
        yield checks
        grants = CounterMetricFamily(
            f"{PREFIX}_refresh_grants",
            "grant_type=refresh_token exchanges at /auth/token by result (success or the OAuth error answered).",
            labels=["result"],
        )
        grant_counts: Mapping[str, int] = stats.get("refresh_grants", {})
        for result in REFRESH_RESULTS:
            grants.add_metric([result], grant_counts.get(result, 0))
        yield grants
        gauges: Mapping[str, int] = stats.get("gauges", {})
        for name, documentation in GAUGES.items():
            yield GaugeMetricFamily(f"{PREFIX}_{name}", documentation, value=gauges.get(name, 0))
        yield self.request_duration.family()


def _ip(value: Any) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """An IP address (IPv4-mapped IPv6 unmapped, scope dropped), or None."""
    if not isinstance(value, str):
        return None
    try:
        address = ipaddress.ip_address(value.split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


# ---- hooks ------------------------------------------------------------------------------------------


@hookimpl
def opp_auth_register_routes(app: web.Application, auth: PluginContext) -> None:
    """With http: metrics: enabled, serve /metrics and time requests; otherwise add nothing."""
    conf = auth.http_config.get("metrics") or {}
    if not conf.get("enabled"):
        return
    metrics = Metrics(auth, list(conf.get("allowed_networks") or ()))
    app.router.add_get(PATH, metrics.view())
    # In line, counting only: no background task per event or request, and nothing at all while metrics
    # are off (no middleware either: a request's time comes from the core, which reads no clock unobserved).
    unsubscribe = auth.subscribe_events(metrics.record)
    unobserve = auth.observe_requests(metrics.observer())

    async def forget(_app: web.Application) -> None:
        """Stop counting for this server."""
        unsubscribe()
        unobserve()

    app.on_cleanup.append(forget)

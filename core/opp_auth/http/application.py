"""The aiohttp Application whose request handler is the pipeline, right after routing.

aiohttp offers middlewares for this, but any middleware at all makes every
request also pass through a per-application layer of aiohttp's (it sets
``current_app``), and the security headers' ``on_response_prepare`` signal is a
coroutine call per response. On the authenticated GET path those cost about as
much as the whole pipeline (bench/http_instructions.py). This application instead:

- handles each request as aiohttp does (route it, then the Expect handling, the
  middlewares of its applications and the route's handler), with the pipeline
  (http/middleware.py) run right after routing: every route, whenever it was
  added, and every path no route serves pass it. When no application has a
  middleware and the request expects nothing, the route's handler is called
  directly, as aiohttp does too;
- makes its requests :class:`OppRequest`, which carry what the pipeline found
  out as attributes and add the security headers in the hook aiohttp calls as
  each response is prepared, before the ``on_response_prepare`` receivers of
  the request's applications (which still run, so a plugin may change them).

This uses aiohttp API that is not public (``Application._handle``,
``_make_request``, ``_run_middlewares`` and ``_middlewares_handlers``,
``Request._match_info`` and ``_prepare_hook``; in that hook ``StreamResponse._headers``
and ``Application._on_response_prepare``, what the public properties return, without
their two calls on every response), all of it in this module but for four reads on
the pipeline's hottest lines (http/middleware.py: the route given to the request,
the peer's address, ``Request._transport_peername``, the raw path and headers,
``Request._message``, and the answer's ``StreamResponse._status``).
core/setup.cfg pins the aiohttp range it was checked against, and
tests/http/test_application.py drives each behaviour the pipeline relies on, so
an aiohttp release that changes one fails there first.
"""

from __future__ import annotations

import functools
import types
import warnings
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import hdrs, web
from aiohttp.abc import AbstractMatchInfo
from aiohttp.web_app import _cached_build_middleware
from aiohttp.web_urldispatcher import SystemRoute

from .pages import API_SECURITY_ITEMS, JSON_TYPE, SECURITY_HEADER_NAMES, add_security_headers_to
from .view import REQUEST_ATTRS, Handler

_UNSET = object()
_CONTENT_TYPE = hdrs.CONTENT_TYPE


class OppRequest(web.Request):
    """A request of opp_auth's application (view.py's helpers read what the pipeline set on it)."""

    # aiohttp warns (in debug mode) when an attribute it does not list is set on a request.
    ATTRS = web.Request.ATTRS | frozenset(REQUEST_ATTRS)
    # Slots, not the instance's dict: a request's dict already holds aiohttp's own attributes, and five
    # more made CPython rebuild it as a plain dict on every request (bench/http_instructions.py).
    __slots__ = REQUEST_ATTRS

    def clone(self, **changes: Any) -> web.Request:
        """aiohttp's clone (the route included), keeping what the pipeline found out."""
        copy = super().clone(**changes)
        for name in REQUEST_ATTRS:
            value = getattr(self, name, _UNSET)
            if value is not _UNSET:
                setattr(copy, name, value)
        return copy

    async def _prepare_hook(self, response: web.StreamResponse) -> None:
        """As aiohttp prepares a response: the security headers, then the apps' on_response_prepare receivers."""
        headers = response._headers  # response.headers, without the property's call
        # The API's answers (JSON, none of the security headers set by the handler) get them all in one
        # call, as add_security_headers_to would give them: a call fewer on every API response.
        if headers.get(_CONTENT_TYPE) == JSON_TYPE and headers.keys().isdisjoint(SECURITY_HEADER_NAMES):
            headers.extend(API_SECURITY_ITEMS)
        else:
            add_security_headers_to(self, response)
        # What aiohttp's own hook does (it runs for every response: no call to it).
        match_info = self._match_info
        if match_info is not None:
            for app in match_info._apps:
                if app._on_response_prepare:
                    await app._on_response_prepare.send(self, response)


# Chains kept (one per route handler; aiohttp keeps as many).
_MAX_CHAINS = 1024


def _bound(middleware: Any, handler: Handler) -> Handler:
    """middleware around handler: what aiohttp's ``update_wrapper(partial(middleware, handler=handler), handler)`` is.

    A function rather than the partial: a call through a partial with a keyword copies its keywords
    into a new dict per request, a plain function passes them as they are (about 800 fewer
    instructions per request, bench/metrics_overhead.py --callgrind).
    """

    def call(request: web.Request) -> Awaitable[web.StreamResponse]:
        return middleware(request, handler=handler)  # type: ignore[no-any-return]

    return functools.update_wrapper(call, handler)


class Routing:
    """aiohttp's handling of a request (Application._handle), in the pieces the pipeline calls."""

    def __init__(self, app: web.Application) -> None:
        """Routing for app; direct stays False until app is frozen (then: no middleware anywhere).

        The pipeline gives each request its route itself, as Application._handle does (the route's
        ``add_app(app)`` and ``freeze()``, then ``request._match_info``): a call here cost more than
        those three lines.
        """
        self.app = app
        self.resolve = app.router.resolve
        self.direct = False
        # The middleware chains built (_built), by route handler: the pipeline reads them before it calls
        # chain() (no call per request); a route of an unmatched path never has one (its handler is new).
        self.chains: dict[Any, Handler] = {}

    def chain(self, match_info: AbstractMatchInfo) -> Handler:
        """The route's handler inside the applications' middlewares, for a request that expects nothing.

        For a route of this application alone (no sub-application) the chain is its middlewares
        around the handler, built once per handler: what aiohttp builds, without the layer that
        sets ``current_app`` (it is this application already). Otherwise aiohttp's own chain, or
        dispatch() for old-style middlewares and the routes of unmatched paths, as aiohttp does.
        """
        if self.app._has_legacy_middlewares or isinstance(match_info.route, SystemRoute):  # type: ignore[attr-defined]
            return self.dispatch
        return self._built(match_info)

    def _built(self, match_info: AbstractMatchInfo) -> Handler:
        """The middleware chain around the route's handler (new-style middlewares, a route that matched)."""
        handler = match_info.handler
        if len(match_info.apps) != 1:
            return _cached_build_middleware(handler, match_info.apps)
        built = self.chains.get(handler)
        if built is None:
            built = handler
            for middleware in reversed(self.app.middlewares):
                built = _bound(middleware, built)
            if len(self.chains) >= _MAX_CHAINS:
                self.chains.clear()
            self.chains[handler] = built
        return built

    async def dispatch(self, request: web.Request) -> web.StreamResponse:
        """After the pipeline: the Expect handling, the applications' middlewares, the route's handler."""
        match_info = request.match_info
        if request.headers.get(hdrs.EXPECT):
            response = await match_info.expect_handler(request)
            await request.writer.drain()
            if response is not None:
                return response
        handler: Any = match_info.handler
        if self.app._run_middlewares:
            if self.app._has_legacy_middlewares or isinstance(match_info.route, SystemRoute):
                # As Application._handle: the chain built for each request (old-style factories are awaited).
                for each in match_info.apps[::-1]:
                    for middleware, new_style in each._middlewares_handlers:  # type: ignore[union-attr]
                        if new_style:
                            handler = functools.update_wrapper(functools.partial(middleware, handler=handler), handler)
                        else:  # an old-style middleware factory (aiohttp still calls them)
                            handler = await middleware(each, handler)  # type: ignore[arg-type]
            else:
                handler = self._built(match_info)
        response = await handler(request)
        return response  # type: ignore[no-any-return]


def _with_default_class(make_request: Any, cls: type[web.Request]) -> Any:
    """A copy of aiohttp's ``Application._make_request`` whose ``_cls`` defaults to cls."""
    if make_request.__defaults__ != (web.Request,):
        raise RuntimeError(f"aiohttp's Application._make_request changed: {make_request.__defaults__!r}")
    copy = types.FunctionType(
        make_request.__code__, make_request.__globals__, make_request.__name__, (cls,), make_request.__closure__
    )
    copy.__qualname__ = make_request.__qualname__
    copy.__doc__ = make_request.__doc__
    return copy


with warnings.catch_warnings():
    # aiohttp discourages subclassing Application (it warns on any subclass); this one is deliberate.
    warnings.simplefilter("ignore", DeprecationWarning)

    class PipelineApplication(web.Application):
        """web.Application whose every request is routed, then passes the pipeline, then aiohttp's handling."""

        # aiohttp's request factory, making OppRequest: the same function with OppRequest as its class's
        # default (no frame of ours per request, and no keyword dict per call as a partial would make).
        _make_request = _with_default_class(web.Application._make_request, OppRequest)

        def set_pipeline(self, pipeline: Callable[[Routing], Handler]) -> None:
            """Serve every request with pipeline(routing) (http/middleware.py build_pipeline).

            The server aiohttp builds calls ``app._handle``: this instance's is the pipeline's handler.
            Mounted in another application (``add_subapp``), the parent's would be called instead and
            the pipeline never: pre_freeze refuses that.
            """
            routing = Routing(self)
            self.__dict__["_opp_routing"] = routing
            self.__dict__["_handle"] = pipeline(routing)

        def freeze(self) -> None:
            """aiohttp's freeze, which the server it is served by calls (pre_freeze below tells)."""
            self.__dict__["_opp_freezing"] = True
            super().freeze()

        def pre_freeze(self) -> None:
            """aiohttp's pre-freeze (middlewares fixed from here on), then whether any application has one.

            Refused when not called through freeze(): a parent application's add_subapp or add_domain
            mounting this one (the parent's handler would serve its routes, and the pipeline never run).
            """
            if not self._pre_frozen and not self.__dict__.get("_opp_freezing"):
                raise RuntimeError(
                    "opp_auth's application must be served itself (web.AppRunner, web.run_app), not "
                    "mounted in another one with add_subapp or add_domain: its request pipeline (filter, "
                    "proxies, bans, authentication) would not run. Serve it on its own port or behind a "
                    "reverse proxy."
                )
            super().pre_freeze()
            routing = self.__dict__.get("_opp_routing")
            if routing is not None:
                routing.direct = not self._run_middlewares

"""The aiohttp Application that runs the request pipeline before aiohttp's own handling.

aiohttp offers middlewares for this, but any middleware at all makes every
request also pass through a per-application layer of aiohttp's (it sets
``current_app``), and the security headers' ``on_response_prepare`` signal is a
coroutine call per response. On the authenticated GET path those cost about as
much as the whole pipeline (bench/http_instructions.py). This application instead:

- calls the pipeline first for every request, whatever route serves it and
  whenever that route was added, with the rest of aiohttp's handling (routing,
  then any plugin's middlewares, then the handler) as its ``handler``;
- makes its requests :class:`OppRequest`, which carry what the pipeline found
  out as attributes and add the security headers in the hook aiohttp calls as
  each response is prepared, before any ``on_response_prepare`` receiver a
  plugin added (which still runs, so a plugin may change them).

Both override aiohttp methods that are not public API (``Application._handle``,
``Application._make_request`` and ``Request._prepare_hook``). setup.cfg pins the
aiohttp range they were checked against, and tests/http/test_application.py
checks each behaviour the pipeline relies on, so an aiohttp release that changes
them fails there first. Each override adds no Python frame of its own to a
request: the hottest path pays only for the pipeline.
"""

from __future__ import annotations

import functools
import types
import warnings
from collections.abc import Callable
from typing import Any

from aiohttp import web

from .pages import add_security_headers_to
from .view import REQUEST_ATTRS, Handler


class OppRequest(web.Request):
    """A request of opp_auth's application (view.py's helpers read what the pipeline set on it)."""

    opp_authenticated: bool = False
    opp_user: Any = None
    opp_refresh_token_id: str | None = None

    def clone(self, **changes: Any) -> web.Request:
        """aiohttp's clone, keeping what the pipeline found out."""
        copy = super().clone(**changes)
        for name in REQUEST_ATTRS:
            if name in self.__dict__:
                setattr(copy, name, self.__dict__[name])
        return copy

    async def _prepare_hook(self, response: web.StreamResponse) -> None:
        """As aiohttp prepares a response: the security headers, then the apps' on_response_prepare receivers."""
        add_security_headers_to(self, response)
        # What aiohttp's own hook does (private attributes: this runs for every response).
        match_info = self._match_info
        if match_info is not None:
            for app in match_info._apps:
                if app.on_response_prepare:
                    await app.on_response_prepare.send(self, response)


with warnings.catch_warnings():
    # aiohttp discourages subclassing Application (it warns on any subclass); this one is deliberate.
    warnings.simplefilter("ignore", DeprecationWarning)

    class PipelineApplication(web.Application):
        """web.Application whose every request passes through the pipeline before aiohttp's own handling."""

        # aiohttp's request factory, making OppRequest (a partial: no frame of ours per request).
        _make_request = functools.partialmethod(web.Application._make_request, _cls=OppRequest)

        def set_pipeline(self, pipeline: Callable[[Handler], Handler]) -> None:
            """Serve every request through pipeline(handler), handler being aiohttp's own handling.

            The server aiohttp builds calls ``app._handle``: this instance's is the pipeline in front of
            Application._handle (routing, middlewares, the route's handler).
            """
            self.__dict__["_handle"] = pipeline(types.MethodType(web.Application._handle, self))

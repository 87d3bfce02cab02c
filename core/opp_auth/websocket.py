"""Websocket commands for plugins, one public namespace: ``from opp_auth import websocket``.

A command is a handler ``(conn, msg)`` decorated with :func:`command` (its
schema, with ``vol.Required("type"): "<name>"``) and guarded with
:func:`require_admin` or :func:`require_user` (``require_user()`` is a factory,
as in ``@websocket.require_user(allow_system_user=False)``). It answers with
``conn.send_result(msg["id"], result)`` or by raising :class:`CommandError`
(``code``, ``message``) or :class:`Unauthorized`. The guards refuse (TypeError)
to decorate an HTTP handler ``(request)``; HTTP routes use
``opp_auth.http_require_auth`` / ``opp_auth.http_require_admin``.
"""

from __future__ import annotations

from .http.websocket_api import ActiveConnection, CommandError, Unauthorized
from .http.websocket_api import websocket_command as command
from .http.websocket_api import ws_require_admin as require_admin
from .http.websocket_api import ws_require_user as require_user

__all__ = ["ActiveConnection", "CommandError", "Unauthorized", "command", "require_admin", "require_user"]

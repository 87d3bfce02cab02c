"""opp-auth: the authentication core. What this module exports is the whole plugin API.

A plugin imports only these names (a meta-test holds every distribution of the
repository to it) and is handed a :class:`PluginContext`, never the core's
manager. A tutorial, from nothing to a working provider:

1. **A provider** checks who someone is. Subclass :class:`AuthProvider`, give
   it a ``TYPE`` (the ``type:`` of configuration.yaml) and a ``CONFIG_SCHEMA``
   extending the base class's (``type``, ``name``, ``id``)::

       import voluptuous as vol
       from opp_auth import AuthProvider, InvalidAuthError, UsernamePasswordLoginFlow, UserMeta, hookimpl

       class MyProvider(AuthProvider):
           TYPE = "my_provider"
           DEFAULT_TITLE = "My provider"
           CONFIG_SCHEMA = AuthProvider.CONFIG_SCHEMA.extend(
               {vol.Required("users"): {str: str}}, extra=vol.PREVENT_EXTRA)

           async def async_login_flow(self, context):
               return UsernamePasswordLoginFlow(self)

           async def async_validate_login(self, username, password):
               if self.config["users"].get(username) != password:   # use a hash in real life
                   raise InvalidAuthError
               # blocking work goes off the loop: await self.auth.async_add_executor_job(...)

           def credential_data(self, flow_result):
               return {"username": flow_result["username"]}

           async def async_user_meta_for_credentials(self, credentials):
               return UserMeta(name=credentials.data["username"], group=UserMeta.GROUP_USER)

2. **Register it** from a hook, and name the module in your distribution's
   ``opp_auth`` entry-point group as ``provider-my_provider``::

       @hookimpl
       def opp_auth_register_auth_providers(register):
           register(MyProvider)

   Hooks are called through pluggy: an implementation takes any subset of the
   hook's arguments, ``@hookimpl(wrapper=True)`` works on every hook, and an
   awaitable you return is awaited by the core. An implementation of a hook
   that does not exist stops start-up with the closest real name.

3. **What a plugin may ask of the server** is ``self.auth``, a
   :class:`PluginContext`: ``storage(key, version)`` for a file of your own,
   ``async_add_executor_job`` / ``async_password_check`` for blocking work,
   users, credentials and sessions, the other configured providers and
   modules, and the login throttle. Helper programs run through the
   :mod:`programs` namespace (``programs.async_run_program``: no shell, a clean
   environment, a time-out).

4. **A second factor** is an :class:`MfaModule` (``input_schema``,
   ``async_setup_flow`` returning a :class:`SetupFlow`, ``async_setup_user``,
   ``async_is_user_setup``, ``async_validate``, ``async_depose_user``; the
   optional steps ``async_initialize_login_mfa_step`` and
   ``async_after_failed_validation`` may raise :class:`MfaAbort`), registered
   from ``opp_auth_register_mfa_modules`` with entry point ``mfa-<type>``; its
   ``CONFIG_SCHEMA`` extends ``MfaModule.CONFIG_SCHEMA``.

5. **HTTP routes** come from ``opp_auth_register_routes(app, auth)`` and run
   behind the core's pipeline; guard a handler ``(request)`` with
   :func:`http_require_auth` or :func:`http_require_admin`, read the caller with
   :func:`request_user` and :func:`client_ip`.
   **Websocket commands** come from ``opp_auth_register_websocket_commands``
   and use the :mod:`websocket` namespace (``from opp_auth import websocket``):
   a handler ``(conn: websocket.ActiveConnection, msg)`` decorated with
   ``websocket.command``, guarded with ``websocket.require_admin`` or
   ``websocket.require_user()``, answering with ``conn.send_result`` or by
   raising ``websocket.CommandError`` / ``websocket.Unauthorized``. Each guard
   refuses (TypeError) to decorate the other kind of handler.

6. **Fail closed**: an exception in a provider or MFA check denies the login
   and is logged; an exception in an event hook is logged with your plugin's
   name and distribution and the other plugins still run.

Test it with the pytest plugin ``opp_auth.testing`` (fixtures and the
provider and MFA contract suites). docs/plugins.md is the long version.

Names of earlier releases (``PROVIDER_CONFIG_SCHEMA``, ``ws_require_admin``,
``GROUP_ID_ADMIN``...) still import for one release with a DeprecationWarning
naming the new spelling; they are not part of ``__all__``.
"""

from __future__ import annotations

__version__ = "0.1.0"

import sys
import warnings
from functools import reduce
from typing import Any

from . import programs, websocket
from .backend import StorageBackend
from .context import PluginContext
from .events import AuthEvent
from .flow import FlowResult
from .hookspecs import hookspec
from .http.view import client_ip, http_require_admin, http_require_auth, request_user
from .login_flow import LoginFlow, UsernamePasswordLoginFlow, is_safe_username
from .mfa import MfaAbort, MfaModule, SetupFlow
from .models import Credentials, RefreshToken, User, UserMeta
from .plugins import hookimpl
from .providers import AuthProvider, GroupMapping, InvalidAuthError, ProviderUnavailableError

__all__ = [  # noqa: RUF022 - grouped by what a plugin writes, as in the docstring
    # plugins and hooks
    "hookimpl",
    "hookspec",
    "PluginContext",
    "AuthEvent",
    # providers (AuthProvider.CONFIG_SCHEMA is the base schema)
    "AuthProvider",
    "LoginFlow",
    "UsernamePasswordLoginFlow",
    "is_safe_username",
    "GroupMapping",
    "FlowResult",
    "InvalidAuthError",
    "ProviderUnavailableError",
    # MFA modules (MfaModule.CONFIG_SCHEMA is the base schema)
    "MfaModule",
    "SetupFlow",
    "MfaAbort",
    # what providers and modules handle (UserMeta.GROUP_*, RefreshToken.TYPE_NORMAL)
    "User",
    "UserMeta",
    "Credentials",
    "RefreshToken",
    # HTTP routes
    "http_require_auth",
    "http_require_admin",
    "request_user",
    "client_ip",
    # websocket commands: websocket.command, .require_admin, .require_user, .ActiveConnection...
    "websocket",
    # storage backends (the store seam, opp_auth.backend)
    "StorageBackend",
    # helper programs: programs.async_run_program, .ProgramError, .ProgramTimeout, .SAFE_PATH
    "programs",
]

DEPRECATED_ALIASES: dict[str, str] = {
    "PROVIDER_CONFIG_SCHEMA": "AuthProvider.CONFIG_SCHEMA",
    "MFA_CONFIG_SCHEMA": "MfaModule.CONFIG_SCHEMA",
    "GROUP_ID_ADMIN": "UserMeta.GROUP_ADMIN",
    "GROUP_ID_USER": "UserMeta.GROUP_USER",
    "GROUP_ID_READ_ONLY": "UserMeta.GROUP_READ_ONLY",
    "TOKEN_TYPE_NORMAL": "RefreshToken.TYPE_NORMAL",
    "websocket_command": "websocket.command",
    "ws_require_admin": "websocket.require_admin",
    "ws_require_user": "websocket.require_user",
    "ActiveConnection": "websocket.ActiveConnection",
    "CommandError": "websocket.CommandError",
    "Unauthorized": "websocket.Unauthorized",
    "async_run_program": "programs.async_run_program",
    "ProgramError": "programs.ProgramError",
    "ProgramTimeout": "programs.ProgramTimeout",
    "SAFE_PATH": "programs.SAFE_PATH",
}
"""Top-level names of the previous release (not in ``__all__``): old name -> new spelling under ``opp_auth``."""


def __getattr__(name: str) -> Any:
    """A deprecated top-level name: its new spelling's value, with a DeprecationWarning naming it."""
    new = DEPRECATED_ALIASES.get(name)
    if new is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    warnings.warn(
        f"opp_auth.{name} is deprecated and goes away in the next release; use opp_auth.{new}",
        DeprecationWarning,
        stacklevel=2,
    )
    return reduce(getattr, new.split("."), sys.modules[__name__])

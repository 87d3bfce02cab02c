"""opp-auth: the authentication core. What this module exports is the whole plugin API.

A plugin imports only these names (a meta-test holds every distribution of the
repository to it) and is handed a :class:`PluginContext`, never the core's
manager. A tutorial, from nothing to a working provider:

1. **A provider** checks who someone is. Subclass :class:`AuthProvider`, give
   it a ``TYPE`` (the ``type:`` of configuration.yaml) and a ``CONFIG_SCHEMA``
   extending :data:`PROVIDER_CONFIG_SCHEMA`::

       import voluptuous as vol
       from opp_auth import (PROVIDER_CONFIG_SCHEMA, AuthProvider, InvalidAuthError,
                             UsernamePasswordLoginFlow, UserMeta, hookimpl)

       class MyProvider(AuthProvider):
           TYPE = "my_provider"
           DEFAULT_TITLE = "My provider"
           CONFIG_SCHEMA = PROVIDER_CONFIG_SCHEMA.extend(
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
               return UserMeta(name=credentials.data["username"], is_active=True)

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
   modules, and the login throttle.

4. **A second factor** is an :class:`MfaModule` (``input_schema``,
   ``async_setup_flow`` returning a :class:`SetupFlow`, ``async_setup_user``,
   ``async_is_user_setup``, ``async_validate``, ``async_depose_user``; the
   optional steps ``async_initialize_login_mfa_step`` and
   ``async_after_failed_validation`` may raise :class:`MfaAbort`), registered
   from ``opp_auth_register_mfa_modules`` with entry point ``mfa-<type>``.

5. **HTTP routes** come from ``opp_auth_register_routes(app, auth)`` and run
   behind the core's pipeline; guard a handler ``(request)`` with
   :func:`http_require_auth` or :func:`http_require_admin`, read the caller with
   :func:`request_user` and :func:`client_ip`.
   **Websocket commands** come from ``opp_auth_register_websocket_commands``:
   a handler ``(conn: ActiveConnection, msg)`` decorated with
   :func:`websocket_command`, guarded with :func:`ws_require_admin` or
   :func:`ws_require_user`, answering with ``conn.send_result`` or by raising
   :class:`CommandError` / :class:`Unauthorized`. Each guard refuses (TypeError)
   to decorate the other kind of handler.

6. **Fail closed**: an exception in a provider or MFA check denies the login
   and is logged; an exception in an event hook is logged with your plugin's
   name and distribution and the other plugins still run.

Test it with the pytest plugin ``opp_auth.testing`` (fixtures and the
provider and MFA contract suites). docs/plugins.md is the long version.
"""

from __future__ import annotations

__version__ = "0.1.0"

from .backend import StorageBackend
from .context import PluginContext
from .events import AuthEvent
from .flow import FlowResult
from .hookspecs import hookspec
from .http.view import client_ip, http_require_admin, http_require_auth, request_user
from .http.websocket_api import (
    ActiveConnection,
    CommandError,
    Unauthorized,
    websocket_command,
    ws_require_admin,
    ws_require_user,
)
from .login_flow import LoginFlow, UsernamePasswordLoginFlow, is_safe_username
from .mfa import MFA_CONFIG_SCHEMA, MfaAbort, MfaModule, SetupFlow
from .models import (
    GROUP_ID_ADMIN,
    GROUP_ID_READ_ONLY,
    GROUP_ID_USER,
    TOKEN_TYPE_NORMAL,
    Credentials,
    RefreshToken,
    User,
    UserMeta,
)
from .plugins import hookimpl
from .programs import SAFE_PATH, ProgramError, ProgramTimeout, async_run_program
from .providers import PROVIDER_CONFIG_SCHEMA, AuthProvider, GroupMapping, InvalidAuthError, ProviderUnavailableError

__all__ = [  # noqa: RUF022 - grouped by what a plugin writes, as in the docstring
    # plugins and hooks
    "hookimpl",
    "hookspec",
    "PluginContext",
    "AuthEvent",
    # providers
    "AuthProvider",
    "PROVIDER_CONFIG_SCHEMA",
    "LoginFlow",
    "UsernamePasswordLoginFlow",
    "is_safe_username",
    "GroupMapping",
    "FlowResult",
    "InvalidAuthError",
    "ProviderUnavailableError",
    # MFA modules
    "MfaModule",
    "MFA_CONFIG_SCHEMA",
    "SetupFlow",
    "MfaAbort",
    # what providers and modules handle
    "User",
    "UserMeta",
    "Credentials",
    "RefreshToken",
    "GROUP_ID_ADMIN",
    "GROUP_ID_USER",
    "GROUP_ID_READ_ONLY",
    "TOKEN_TYPE_NORMAL",
    # HTTP routes
    "http_require_auth",
    "http_require_admin",
    "request_user",
    "client_ip",
    # websocket commands
    "websocket_command",
    "ws_require_admin",
    "ws_require_user",
    "ActiveConnection",
    "CommandError",
    "Unauthorized",
    # storage backends (the store seam, opp_auth.backend)
    "StorageBackend",
    # helper programs
    "async_run_program",
    "ProgramError",
    "ProgramTimeout",
    "SAFE_PATH",
    "__version__",
]

"""opp-auth: the authentication core. What this module exports is the plugin API.

A provider plugin is a module with a hook implementation::

    import voluptuous as vol
    from opp_auth import (PROVIDER_CONFIG_SCHEMA, AuthProvider, LoginFlow,
                          UserMeta, hookimpl)

    class MyProvider(AuthProvider):
        TYPE = "my_provider"
        DEFAULT_TITLE = "My provider"
        CONFIG_SCHEMA = PROVIDER_CONFIG_SCHEMA.extend({...}, extra=vol.PREVENT_EXTRA)

        async def async_login_flow(self, context):
            return MyLoginFlow(self)
        ...

    @hookimpl
    def opp_auth_register_auth_providers(register):
        register(MyProvider)

and an entry point in the ``opp_auth`` group named ``provider-my_provider``
pointing at that module. MFA modules work the same way with ``MfaModule`` and
``opp_auth_register_mfa_modules`` (entry point ``mfa-<type>``). See
docs/plugins.md.
"""

from __future__ import annotations

__version__ = "0.1.0"

from .flow import FlowHandler, FlowResult
from .hookspecs import hookspec
from .http.view import client_ip, request_user
from .http.websocket_api import (
    ActiveConnection,
    CommandError,
    Unauthorized,
    require_admin,
    require_user,
    websocket_command,
)
from .login_flow import LoginFlow, UsernamePasswordLoginFlow, is_safe_username
from .manager import AuthManager, AuthManagerError
from .mfa import MFA_CONFIG_SCHEMA, MfaAbort, MfaModule, SetupFlow
from .models import (
    GROUP_ID_ADMIN,
    GROUP_ID_READ_ONLY,
    GROUP_ID_USER,
    TOKEN_TYPE_LONG_LIVED_ACCESS_TOKEN,
    TOKEN_TYPE_NORMAL,
    TOKEN_TYPE_SYSTEM,
    Credentials,
    Group,
    RefreshToken,
    User,
    UserMeta,
)
from .plugins import hookimpl
from .programs import SAFE_PATH, ProgramError, ProgramResult, ProgramTimeout, async_run_program
from .providers import PROVIDER_CONFIG_SCHEMA, AuthProvider, InvalidAuthError, ProviderUnavailableError
from .storage import StorageError, Store

__all__ = [
    "GROUP_ID_ADMIN",
    "GROUP_ID_READ_ONLY",
    "GROUP_ID_USER",
    "MFA_CONFIG_SCHEMA",
    "PROVIDER_CONFIG_SCHEMA",
    "SAFE_PATH",
    "TOKEN_TYPE_LONG_LIVED_ACCESS_TOKEN",
    "TOKEN_TYPE_NORMAL",
    "TOKEN_TYPE_SYSTEM",
    "ActiveConnection",
    "AuthManager",
    "AuthManagerError",
    "AuthProvider",
    "CommandError",
    "Credentials",
    "FlowHandler",
    "FlowResult",
    "Group",
    "InvalidAuthError",
    "LoginFlow",
    "MfaAbort",
    "MfaModule",
    "ProgramError",
    "ProgramResult",
    "ProgramTimeout",
    "ProviderUnavailableError",
    "RefreshToken",
    "SetupFlow",
    "StorageError",
    "Store",
    "Unauthorized",
    "User",
    "UserMeta",
    "UsernamePasswordLoginFlow",
    "__version__",
    "async_run_program",
    "client_ip",
    "hookimpl",
    "hookspec",
    "is_safe_username",
    "request_user",
    "require_admin",
    "require_user",
    "websocket_command",
]

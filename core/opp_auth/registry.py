"""Registry: the configured auth providers and MFA modules of one server, found by key."""

from __future__ import annotations

import ipaddress
import logging
from collections import OrderedDict
from typing import TYPE_CHECKING, Any

from .models import Credentials, credential_lookup_key
from .network import IPNetwork
from .providers import LOCAL_PROVIDER_TYPES, AuthProvider

if TYPE_CHECKING:
    from .context import PluginContext
    from .mfa import MfaModule

_LOGGER = logging.getLogger(__name__)

ProviderKey = tuple[str, str | None]


class Registry:
    """Providers (by (type, id)) and MFA modules (by id), in configuration order."""

    def __init__(
        self,
        context: PluginContext,
        provider_configs: list[tuple[type[AuthProvider], dict[str, Any]]],
        mfa_configs: list[tuple[type[MfaModule], dict[str, Any]]],
    ) -> None:
        """Build every provider and module from its validated configuration, handing each the plugin context."""
        self.providers: OrderedDict[ProviderKey, AuthProvider] = OrderedDict()
        for cls, conf in provider_configs:
            provider = cls(context, conf)
            self.providers[provider.key] = provider
        self.mfa_modules: OrderedDict[str, MfaModule] = OrderedDict()
        for mcls, conf in mfa_configs:
            module = mcls(context, conf)
            self.mfa_modules[module.id] = module
        # Providers an MFA module adds (a passkey login): key -> the module, whose factor their flow proves.
        self._offered_by: dict[ProviderKey, str] = {}
        for module in self.mfa_modules.values():
            extra = module.login_provider()
            if extra is not None and extra.key in self.providers:
                _LOGGER.error(
                    "MFA module %s offers login provider %s, which is already configured", module.id, extra.key
                )
            elif extra is not None:
                self.providers[extra.key] = extra
                self._offered_by[extra.key] = module.id

    @property
    def auth_providers(self) -> list[AuthProvider]:
        """Providers in configuration order."""
        return list(self.providers.values())

    def get_auth_provider(self, provider_type: str, provider_id: str | None) -> AuthProvider | None:
        """A provider by (type, id)."""
        if not isinstance(provider_type, str) or not (provider_id is None or isinstance(provider_id, str)):
            return None
        return self.providers.get((provider_type, provider_id))

    def get_auth_providers(self, provider_type: str) -> list[AuthProvider]:
        """Every configured provider of a type."""
        return [p for p in self.providers.values() if p.type == provider_type]

    def local_provider(self) -> AuthProvider | None:
        """The local username/password provider: type openpeerpower, or homeassistant in a Home Assistant directory."""
        for provider_type in LOCAL_PROVIDER_TYPES:
            provider = self.providers.get((provider_type, None))
            if provider is not None:
                return provider
        return None

    def mfa_module_offering(self, provider: AuthProvider) -> str | None:
        """The id of the MFA module that added this login provider (its flow proves that factor), or None."""
        if self.providers.get(provider.key) is not provider:
            return None
        return self._offered_by.get(provider.key)

    def provider_for(self, credentials: Credentials) -> AuthProvider | None:
        """The configured provider that issued credentials."""
        return self.providers.get(credentials.provider_key)

    def credential_key(self, provider_type: str, provider_id: str | None, data: dict[str, Any]) -> str:
        """Index key of credential data as the issuing provider normalises it."""
        provider = self.providers.get((provider_type, provider_id))
        if provider is None:
            return credential_lookup_key(data)
        return provider.credential_key(data)

    def trusted_networks(self) -> list[IPNetwork]:
        """The networks providers trust (trusted_networks), whose share of anonymous pools strangers cannot take."""
        return [
            net
            for p in self.providers.values()
            for net in (getattr(p, "trusted_networks", None) or ())
            if isinstance(net, (ipaddress.IPv4Network, ipaddress.IPv6Network))
        ]

    @property
    def auth_mfa_modules(self) -> list[MfaModule]:
        """MFA modules in configuration order."""
        return list(self.mfa_modules.values())

    def get_auth_mfa_module(self, module_id: str) -> MfaModule | None:
        """An MFA module by id."""
        return self.mfa_modules.get(module_id)

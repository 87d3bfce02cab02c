"""The plugin manager: entry-point discovery, load errors and the type registries."""

from __future__ import annotations

import difflib
import importlib.metadata
import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Generic, TypeVar

import pluggy

from . import hookspecs
from .hookspecs import PROJECT

if TYPE_CHECKING:
    from .mfa import MfaModule
    from .providers import AuthProvider

_LOGGER = logging.getLogger(__name__)

hookimpl = pluggy.HookimplMarker(PROJECT)

ENTRY_POINT_GROUP = "opp_auth"

# First-party types and where they come from, so a missing plugin gets a useful hint.
KNOWN_DISTRIBUTIONS: dict[str, str] = {
    "provider-openpeerpower": "opp-auth-local",
    "provider-homeassistant": "opp-auth-local",
    "provider-legacy_api_password": "opp-auth-legacy-api-password",
    "provider-trusted_networks": "opp-auth-trusted-networks",
    "provider-ldap": "opp-auth-ldap",
    "provider-command_line": "opp-auth-command-line",
    "provider-insecure_example": "opp-auth-insecure-example",
    "mfa-totp": "opp-auth-totp",
    "mfa-notify": "opp-auth-notify",
    "mfa-webauthn": "opp-auth-webauthn",
    "mfa-insecure_example": "opp-auth-insecure-example",
}


class PluginError(Exception):
    """A plugin problem a person must act on; str() says which plugin and what to do."""


@dataclass
class PluginInfo:
    """One loaded (or failed) plugin, for listings and error messages."""

    name: str
    distribution: str | None
    version: str | None
    module: str | None
    error: str | None = None
    provider_types: list[str] = field(default_factory=list)
    mfa_types: list[str] = field(default_factory=list)
    hooks: list[str] = field(default_factory=list)


_T = TypeVar("_T")


class _Registry(Generic[_T]):
    """Validated register() callable handed to the register_* hooks."""

    def __init__(self, kind: str, base: type[_T], pm: OppAuthPluginManager) -> None:
        """Remember what we accept."""
        self.kind = kind
        self.base = base
        self.pm = pm
        self.classes: dict[str, type[_T]] = {}
        self.owners: dict[str, str] = {}
        self.current_plugin: str = "?"

    def __call__(self, cls: type) -> type:
        """Register cls under cls.TYPE; a mistake fails at start-up naming the plugin."""
        if not isinstance(cls, type) or not issubclass(cls, self.base):
            raise PluginError(
                f"Plugin {self.current_plugin} registered {cls!r} as an {self.kind}, "
                f"but it is not a subclass of opp_auth.{self.base.__name__}."
            )
        type_name = getattr(cls, "TYPE", None)
        if not isinstance(type_name, str) or not type_name:
            raise PluginError(f"Plugin {self.current_plugin}: {cls.__name__} has no TYPE string.")
        if type_name in self.classes and self.classes[type_name] is not cls:
            raise PluginError(
                f"{self.kind} type '{type_name}' is provided twice: by {self.owners[type_name]} "
                f"and by {self.current_plugin}. Uninstall one of them."
            )
        self.classes[type_name] = cls
        self.owners[type_name] = self.current_plugin
        return cls


class OppAuthPluginManager(pluggy.PluginManager):
    """pluggy's manager plus load-error bookkeeping and provider/MFA registries."""

    def __init__(self) -> None:
        """Create the manager with opp-auth's hook specifications."""
        super().__init__(PROJECT)
        self.add_hookspecs(hookspecs)
        self.infos: dict[str, PluginInfo] = {}
        self.entry_infos: dict[str, PluginInfo] = {}
        self._provider_registry: _Registry[AuthProvider] | None = None
        self._mfa_registry: _Registry[MfaModule] | None = None

    def load_entrypoints(self, blocked: Iterable[str] = ()) -> None:
        """Import every plugin of the opp_auth entry-point group, recording failures."""
        blocked = set(blocked)
        seen: set[str] = set()
        for dist in importlib.metadata.distributions():
            for ep in dist.entry_points:
                if ep.group != ENTRY_POINT_GROUP or ep.name in seen:
                    continue
                seen.add(ep.name)
                dist_name = dist.metadata["Name"]
                if ep.name in blocked or dist_name in blocked:
                    continue
                try:
                    plugin = ep.load()
                except Exception as err:  # noqa: BLE001 - any import failure is reported, not fatal
                    info = PluginInfo(ep.name, dist_name, dist.version, ep.value)
                    info.error = f"{type(err).__name__}: {err}"
                    self.infos[ep.name] = self.entry_infos[ep.name] = info
                    _LOGGER.warning(
                        "Plugin %s from %s %s failed to load: %s", ep.name, dist_name, dist.version, info.error
                    )
                    continue
                registered_as = self.get_name(plugin)
                if registered_as is not None:
                    # Several entry points (provider-x, mfa-x) may name one module.
                    self.entry_infos[ep.name] = self.infos[registered_as]
                    continue
                info = PluginInfo(ep.name, dist_name, dist.version, ep.value)
                self.entry_infos[ep.name] = info
                self.register_plugin(plugin, ep.name, info)

    def register_plugin(self, plugin: Any, name: str, info: PluginInfo | None = None) -> None:
        """Register a module or object as a plugin (tests and built-ins use this directly)."""
        if info is None:
            info = PluginInfo(name, None, None, getattr(plugin, "__name__", repr(plugin)))
        self.infos[name] = info
        try:
            self.register(plugin, name=name)
        except Exception as err:  # noqa: BLE001 - a broken plugin must not take the others down
            info.error = f"{type(err).__name__}: {err}"
            return
        info.hooks = sorted(h.name for h in self.get_hookcallers(plugin) or [])

    def _collect(self, kind: str, base: type[_T], hookname: str) -> _Registry[_T]:
        """Ask every plugin's register hook, one at a time so errors name the plugin."""
        registry = _Registry(kind, base, self)
        caller = getattr(self.hook, hookname)
        for impl in reversed(caller.get_hookimpls()):
            registry.current_plugin = self._describe(impl.plugin_name)
            before = set(registry.classes)
            try:
                impl.function(register=registry)
            except PluginError:
                raise
            except Exception as err:
                raise PluginError(f"Plugin {registry.current_plugin} failed in {hookname}: {err}") from err
            info = self.infos.get(impl.plugin_name)
            if info is not None:
                added = sorted(set(registry.classes) - before)
                target = info.provider_types if kind == "auth provider" else info.mfa_types
                target.extend(t for t in added if t not in target)
        return registry

    def _describe(self, plugin_name: str) -> str:
        """'name (distribution version)' for messages."""
        info = self.infos.get(plugin_name)
        if info is None or info.distribution is None:
            return plugin_name
        return f"{plugin_name} ({info.distribution} {info.version})"

    @property
    def provider_classes(self) -> dict[str, type[AuthProvider]]:
        """Auth provider classes by YAML type."""
        if self._provider_registry is None:
            from .providers import AuthProvider

            self._provider_registry = self._collect("auth provider", AuthProvider, "opp_auth_register_auth_providers")
        return self._provider_registry.classes

    @property
    def mfa_classes(self) -> dict[str, type[MfaModule]]:
        """MFA module classes by YAML type."""
        if self._mfa_registry is None:
            from .mfa import MfaModule

            self._mfa_registry = self._collect("MFA module", MfaModule, "opp_auth_register_mfa_modules")
        return self._mfa_registry.classes

    def unknown_type_message(self, kind: str, type_name: str) -> str:
        """Explain an unknown type: what is installed, the closest match, what to install."""
        prefix = "provider" if kind == "auth provider" else "mfa"
        classes = self.provider_classes if prefix == "provider" else self.mfa_classes
        registry = self._provider_registry if prefix == "provider" else self._mfa_registry
        entry = f"{prefix}-{type_name}"
        failed = self.entry_infos.get(entry)
        if failed is not None and failed.error:
            return (
                f"{kind} type '{type_name}' is provided by {failed.distribution} {failed.version}, "
                f"which failed to load: {failed.error}"
            )
        installed = (
            ", ".join(f"{name} ({registry.owners[name] if registry else '?'})" for name in sorted(classes)) or "none"
        )
        msg = f"Unknown {kind} type '{type_name}'. Installed types: {installed}."
        close = difflib.get_close_matches(
            type_name,
            list(classes) + [k.split("-", 1)[1] for k in KNOWN_DISTRIBUTIONS if k.startswith(prefix + "-")],
            n=1,
        )
        if close and close[0] != type_name:
            msg += f" Did you mean '{close[0]}'?"
        dist = KNOWN_DISTRIBUTIONS.get(entry)
        if dist is not None:
            msg += f" Type '{type_name}' comes with the {dist} distribution: pip install {dist}"
        elif close and f"{prefix}-{close[0]}" in KNOWN_DISTRIBUTIONS and close[0] not in classes:
            msg += f" ('{close[0]}' comes with {KNOWN_DISTRIBUTIONS[prefix + '-' + close[0]]})"
        return msg

    def failed_plugin_for(self, kind_prefix: str, type_name: str) -> PluginInfo | None:
        """The failed plugin whose entry point would provide this type, if any."""
        info = self.entry_infos.get(f"{kind_prefix}-{type_name}")
        return info if info is not None and info.error else None


def make_plugin_manager(
    load_entrypoints: bool = True, plugins: Iterable[tuple[str, Any]] = (), blocked: Iterable[str] = ()
) -> OppAuthPluginManager:
    """Build a plugin manager: installed plugins (unless told not to) plus the given ones."""
    pm = OppAuthPluginManager()
    if load_entrypoints:
        pm.load_entrypoints(blocked)
    for name, plugin in plugins:
        pm.register_plugin(plugin, name)
    pm.hook.opp_auth_add_hookspecs.call_historic(kwargs={"pm": pm})
    return pm


async def async_call_awaited(hook_caller: Any, **kwargs: Any) -> list[Any]:
    """Call a collect hook and await the awaitables its implementations returned."""
    import inspect

    results = []
    for result in hook_caller(**kwargs):
        if inspect.isawaitable(result):
            result = await result
        results.append(result)
    return results

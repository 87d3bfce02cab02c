"""The plugin manager: entry-point discovery, load errors, type registries, and calls through pluggy.

Every hook is called through pluggy (``pm.hook.<name>(...)``), so an
implementation may accept any subset of the spec's arguments and hook wrappers
(``wrapper=True``) work on every hook. What makes one plugin's failure its own:
when a plugin is registered, each of its (non-wrapper) implementations is put
behind a guard that catches its exception -- raised at once or by the awaitable
it returned -- logs it naming the plugin and its distribution, and answers
what the hook's kind says (``hookspecs.HOOK_FAILURE``): nothing for events, a
refusal for login decisions, a start-up error naming the plugin for
registrations.
"""

from __future__ import annotations

import difflib
import functools
import importlib.metadata
import inspect
import logging
import os
import sys
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

import pluggy

from . import hookspecs
from .backend import JsonBackend, StorageBackend
from .hookspecs import HOOK_FAILURE, PROJECT, RAISE
from .mfa import MfaModule
from .providers import AuthProvider
from .yaml import ConfigError

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
    "store-postgresql": "opp-auth-postgresql",
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
    store_types: list[str] = field(default_factory=list)
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

    @property
    def current_plugin(self) -> str:
        """'name (distribution version)' of the plugin whose hook is calling register()."""
        return self.pm.describe(self.pm.current_plugin or "?")

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
        info = self.pm.infos.get(self.pm.current_plugin or "")
        if info is not None:
            target = {"auth provider": info.provider_types, "storage backend": info.store_types}.get(
                self.kind, info.mfa_types
            )
            if type_name not in target:
                target.append(type_name)
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
        self._store_registry: _Registry[StorageBackend] | None = None
        self.current_plugin: str | None = None
        """Name of the plugin whose implementation is running (set by the guard)."""

    # ---- registration: every implementation behind its guard ------------------------------

    def register(self, plugin: Any, name: str | None = None) -> str | None:
        """pluggy's register, then put each of the plugin's implementations behind a guard."""
        plugin_name = super().register(plugin, name)
        if plugin_name is None:
            return None
        for caller in self.get_hookcallers(plugin) or []:
            for impl in caller.get_hookimpls():
                if impl.plugin is plugin and not (impl.wrapper or impl.hookwrapper):
                    if not getattr(impl.function, "_opp_auth_guarded", False):
                        # pluggy keeps the argument names it read from the original (impl.argnames),
                        # so the guard passes on exactly what pluggy hands it: subsets still work.
                        impl.function = self._guard(  # type: ignore[misc]  # Final in pluggy's stubs only
                            caller.name, plugin_name, impl.function
                        )
        return plugin_name

    def _guard(self, hookname: str, plugin_name: str, func: Callable[..., Any]) -> Callable[..., Any]:
        """func, with its exceptions (and those of the awaitable it returns) handled per the hook's kind."""

        @functools.wraps(func)
        def guarded(*args: Any) -> Any:
            previous = self.current_plugin
            self.current_plugin = plugin_name
            try:
                result = func(*args)
            except Exception as err:  # noqa: BLE001 - isolated per plugin; see _failed
                return self._failed(hookname, plugin_name, err)
            finally:
                self.current_plugin = previous
            if inspect.isawaitable(result):
                return self._guard_awaitable(hookname, plugin_name, result)
            return result

        guarded._opp_auth_guarded = True  # type: ignore[attr-defined]
        return guarded

    async def _guard_awaitable(self, hookname: str, plugin_name: str, awaitable: Awaitable[Any]) -> Any:
        """Await a plugin's awaitable with the same isolation as the call that returned it."""
        try:
            return await awaitable
        except Exception as err:  # noqa: BLE001 - isolated per plugin; see _failed
            return self._failed(hookname, plugin_name, err)

    def _failed(self, hookname: str, plugin_name: str, err: Exception) -> Any:
        """Log a plugin's failure naming plugin and distribution; answer the hook's failure value or raise."""
        failure = HOOK_FAILURE.get(hookname, RAISE)
        if failure is RAISE or isinstance(err, (PluginError, ConfigError)):
            if isinstance(err, (PluginError, ConfigError)):
                raise err  # already says what is wrong and where
            raise PluginError(f"Plugin {self.describe(plugin_name)} failed in {hookname}: {err}") from err
        _LOGGER.error(
            "Plugin %s failed in %s (%s)",
            self.describe(plugin_name),
            hookname,
            "refused" if failure is not None else "ignored",
            exc_info=err,
        )
        return failure

    # ---- calling hooks ----------------------------------------------------------------------

    def call(self, hookname: str, **kwargs: Any) -> Any:
        """Call a hook that is not awaited; an awaitable an implementation returns is refused and logged."""
        result = self._call(hookname, kwargs)
        if isinstance(result, list):
            kept = []
            for item in result:
                if inspect.isawaitable(item):
                    _close(item)
                    _LOGGER.error("A plugin returned an awaitable from %s, which is not awaited", hookname)
                    item = HOOK_FAILURE.get(hookname)
                    if item is None or item is RAISE:
                        continue
                kept.append(item)
            return kept
        if inspect.isawaitable(result):
            _close(result)
            _LOGGER.error("A plugin returned an awaitable from %s, which is not awaited", hookname)
            failure = HOOK_FAILURE.get(hookname)
            return None if failure is RAISE else failure
        return result

    async def acall(self, hookname: str, **kwargs: Any) -> Any:
        """Call a hook and await what its implementations returned (a list, or the first result)."""
        result = self._call(hookname, kwargs)
        if isinstance(result, list) and not self._firstresult(hookname):
            return [await item if inspect.isawaitable(item) else item for item in result]
        if inspect.isawaitable(result):
            result = await result
        return result

    def _call(self, hookname: str, kwargs: dict[str, Any]) -> Any:
        """pm.hook.<hookname>(**kwargs); a hook wrapper's exception is logged and answered like a plugin's."""
        caller = getattr(self.hook, hookname)
        try:
            return caller(**kwargs)
        except (PluginError, ConfigError):
            raise
        except Exception as err:
            failure = HOOK_FAILURE.get(hookname, RAISE)
            if failure is RAISE:
                raise PluginError(f"A hook wrapper failed in {hookname}: {err}") from err
            _LOGGER.error("A hook wrapper failed in %s", hookname, exc_info=err)
            return failure if self._firstresult(hookname) else ([failure] if failure is not None else [])

    def _firstresult(self, hookname: str) -> bool:
        """Whether the hook's spec says the first non-None result wins."""
        caller = getattr(self.hook, hookname)
        return bool(caller.spec is not None and caller.spec.opts.get("firstresult"))

    def check_pending(self) -> None:
        """Refuse an implementation of a hook nobody specified, naming the plugin and the closest real hook."""
        relay = vars(self.hook)
        known = sorted(name for name, caller in relay.items() if getattr(caller, "spec", None) is not None)
        for name, caller in sorted(relay.items()):
            if not isinstance(caller, pluggy.HookCaller) or caller.spec is not None:
                continue
            for impl in caller.get_hookimpls():
                if impl.optionalhook:
                    continue
                close = difflib.get_close_matches(name, known, n=1, cutoff=0.6)
                hint = f" Did you mean '{close[0]}'?" if close else ""
                raise PluginError(
                    f"Plugin {self.describe(impl.plugin_name)} implements '{name}', which is not an opp-auth "
                    f"hook.{hint} (Mark an implementation of another plugin's optional hook "
                    f"@hookimpl(optionalhook=True).)"
                )

    def load_entrypoints(self, blocked: Iterable[str] = ()) -> None:
        """Import every plugin of the opp_auth entry-point group, recording failures."""
        blocked = set(blocked)
        for ep, dist_name, dist_version in _installed_entry_points():
            if ep.name in blocked or dist_name in blocked:
                continue
            try:
                plugin = ep.load()
            except Exception as err:  # noqa: BLE001 - any import failure is reported, not fatal
                info = PluginInfo(ep.name, dist_name, dist_version, ep.value)
                info.error = f"{type(err).__name__}: {err}"
                self.infos[ep.name] = self.entry_infos[ep.name] = info
                _LOGGER.warning("Plugin %s from %s %s failed to load: %s", ep.name, dist_name, dist_version, info.error)
                continue
            registered_as = self.get_name(plugin)
            if registered_as is not None:
                # Several entry points (provider-x, mfa-x) may name one module.
                self.entry_infos[ep.name] = self.infos[registered_as]
                continue
            info = PluginInfo(ep.name, dist_name, dist_version, ep.value)
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
        """Ask every plugin's register hook (through pluggy); the guard names a failing plugin."""
        registry = _Registry(kind, base, self)
        self.call(hookname, register=registry)
        return registry

    def describe(self, plugin_name: str) -> str:
        """'name (distribution version)' for messages; the distribution is found from the module when unknown."""
        info = self.infos.get(plugin_name)
        if info is not None and info.distribution is not None:
            return f"{plugin_name} (distribution {info.distribution} {info.version})"
        plugin = self.get_plugin(plugin_name)
        module = getattr(plugin, "__name__", None) if inspect.ismodule(plugin) else type(plugin).__module__
        dist = _distribution_of(module or "")
        if dist is None:
            return f"{plugin_name} (module {module}, no installed distribution)"
        return f"{plugin_name} (distribution {dist[0]} {dist[1]})"

    @property
    def provider_classes(self) -> dict[str, type[AuthProvider]]:
        """Auth provider classes by YAML type."""
        if self._provider_registry is None:
            self._provider_registry = self._collect("auth provider", AuthProvider, "opp_auth_register_auth_providers")
        return self._provider_registry.classes

    @property
    def mfa_classes(self) -> dict[str, type[MfaModule]]:
        """MFA module classes by YAML type."""
        if self._mfa_registry is None:
            self._mfa_registry = self._collect("MFA module", MfaModule, "opp_auth_register_mfa_modules")
        return self._mfa_registry.classes

    @property
    def store_classes(self) -> dict[str, type[StorageBackend]]:
        """Storage backend classes by ``storage: type`` (json is the core's own)."""
        if self._store_registry is None:
            registry = self._collect("storage backend", StorageBackend, "opp_auth_register_stores")
            registry.classes.setdefault(JsonBackend.TYPE, JsonBackend)
            registry.owners.setdefault(JsonBackend.TYPE, "opp-auth (core)")
            self._store_registry = registry
        return self._store_registry.classes

    def unknown_type_message(self, kind: str, type_name: str) -> str:
        """Explain an unknown type: what is installed, the closest match, what to install."""
        prefix = {"auth provider": "provider", "storage": "store"}.get(kind, "mfa")
        all_classes: dict[str, dict[str, Any]] = {
            "provider": self.provider_classes,
            "store": self.store_classes,
            "mfa": self.mfa_classes,
        }
        classes = all_classes[prefix]
        registry: Any = {
            "provider": self._provider_registry,
            "store": self._store_registry,
            "mfa": self._mfa_registry,
        }[prefix]
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


_EntryPointScan = list[tuple[importlib.metadata.EntryPoint, str, str]]
_scan_cache: dict[tuple[tuple[str, int], ...], _EntryPointScan] = {}


def _path_state() -> tuple[tuple[str, int], ...]:
    """sys.path with each folder's modification time: installing or removing a distribution changes it."""
    state = []
    for entry in sys.path:
        try:
            state.append((entry, os.stat(entry or ".").st_mtime_ns))
        except OSError:
            state.append((entry, -1))
    return tuple(state)


def _installed_entry_points() -> _EntryPointScan:
    """(entry point, distribution, version) of the opp_auth group, the first of each name on sys.path.

    Reading every distribution's metadata costs tens of milliseconds; the answer is kept for as
    long as sys.path and its folders' modification times stay the same (a process that builds
    many plugin managers, such as the test suite, scans once).
    """
    key = _path_state()
    found = _scan_cache.get(key)
    if found is None:
        found = []
        seen: set[str] = set()
        for dist in importlib.metadata.distributions():
            for ep in dist.entry_points:
                if ep.group != ENTRY_POINT_GROUP or ep.name in seen:
                    continue
                seen.add(ep.name)
                found.append((ep, dist.metadata["Name"], dist.version))
        _scan_cache.clear()
        _scan_cache[key] = found
    return found


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
    pm.check_pending()
    return pm


def _close(awaitable: Any) -> None:
    """Close an awaitable that will not be awaited (no 'never awaited' warning)."""
    close = getattr(awaitable, "close", None)
    if callable(close):
        close()


@functools.lru_cache(maxsize=1)
def _packages() -> dict[str, list[str]]:
    """Top-level import name -> distributions (cached: scanning is slow)."""
    return dict(importlib.metadata.packages_distributions())


def _distribution_of(module: str) -> tuple[str, str] | None:
    """(distribution, version) that installed a module, if any."""
    names = _packages().get(module.split(".")[0])
    if not names:
        return None
    try:
        return names[0], importlib.metadata.version(names[0])
    except importlib.metadata.PackageNotFoundError:
        return names[0], "?"

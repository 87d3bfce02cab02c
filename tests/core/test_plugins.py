"""Plugin loading: import failures, unknown types, registration mistakes, plugin-owned config blocks."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest
import voluptuous as vol

from opp_auth import AuthProvider, MfaModule, hookimpl
from opp_auth.config import load_config, validate_config
from opp_auth.plugins import PluginError, make_plugin_manager
from opp_auth.yaml import ConfigError


@pytest.fixture
def broken_distribution(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An installed distribution 'fakeplug 1.2' whose opp_auth plugin fails to import."""
    site = tmp_path / "site"
    info = site / "fakeplug-1.2.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: fakeplug\nVersion: 1.2\n", encoding="utf-8")
    (info / "entry_points.txt").write_text("[opp_auth]\nprovider-fake = fakeplug_mod\n", encoding="utf-8")
    (site / "fakeplug_mod.py").write_text('raise ImportError("boom")\n', encoding="utf-8")
    # syspath_prepend also invalidates importlib's caches.
    monkeypatch.syspath_prepend(str(site))
    return site


def validate(pm: Any, tmp_path: Path, core: dict[str, Any], **raw: Any) -> Any:
    """validate_config on an in-memory configuration."""
    return validate_config({"openpeerpower": core, **raw}, pm, config_dir=tmp_path)


def test_failed_import_is_recorded_with_distribution_version_and_cause(broken_distribution: Path) -> None:
    """The plugin listing knows who failed and why."""
    pm = make_plugin_manager()
    info = pm.infos["provider-fake"]
    assert (info.distribution, info.version, info.error) == ("fakeplug", "1.2", "ImportError: boom")


def test_failed_import_is_logged(broken_distribution: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A warning names the entry point, distribution, version and cause."""
    with caplog.at_level(logging.WARNING, logger="opp_auth.plugins"):
        make_plugin_manager()
    assert "Plugin provider-fake from fakeplug 1.2 failed to load: ImportError: boom" in caplog.messages


def test_configured_type_of_failed_plugin_refuses_to_start(broken_distribution: Path, tmp_path: Path) -> None:
    """Configuring the broken plugin's type is a ConfigError saying what failed."""
    pm = make_plugin_manager()
    with pytest.raises(ConfigError) as info:
        validate(pm, tmp_path, {"auth_providers": [{"type": "fake"}]})
    message = str(info.value)
    assert "cannot start" in message
    assert "fakeplug 1.2" in message
    assert "ImportError: boom" in message


def test_other_plugins_keep_working_after_a_failed_import(broken_distribution: Path, tmp_path: Path) -> None:
    """The broken plugin does not take the others down."""
    pm = make_plugin_manager()
    assert {"openpeerpower", "insecure_example"} <= set(pm.provider_classes)
    config = validate(pm, tmp_path, {"auth_providers": [{"type": "openpeerpower"}]})
    assert [cls.TYPE for cls, _ in config.providers] == ["openpeerpower"]


def test_blocked_plugin_is_not_loaded(broken_distribution: Path) -> None:
    """A blocked distribution is skipped entirely."""
    pm = make_plugin_manager(blocked=["fakeplug"])
    assert "provider-fake" not in pm.infos


def unknown_type_error(tmp_path: Path, type_name: str, blocked: tuple[str, ...] = ()) -> str:
    """The message for an unknown provider type (blocked distributions count as not installed)."""
    with pytest.raises(ConfigError) as info:
        validate(make_plugin_manager(blocked=blocked), tmp_path, {"auth_providers": [{"type": type_name}]})
    return str(info.value)


def test_unknown_type_lists_installed_types(tmp_path: Path) -> None:
    """The message names what is installed."""
    message = unknown_type_error(tmp_path, "kerberos")
    assert "Unknown auth provider type 'kerberos'" in message
    assert "Installed types:" in message
    assert "openpeerpower" in message and "insecure_example" in message


def test_unknown_first_party_type_names_its_distribution(tmp_path: Path) -> None:
    """ldap -> pip install opp-auth-ldap."""
    message = unknown_type_error(tmp_path, "ldap", ("opp-auth-ldap",))
    assert "opp-auth-ldap" in message
    assert "pip install opp-auth-ldap" in message


def test_unknown_type_suggests_the_closest_installed_match(tmp_path: Path) -> None:
    """A typo gets a 'did you mean'."""
    message = unknown_type_error(tmp_path, "openpeerpowr")
    assert "Did you mean 'openpeerpower'?" in message


def test_typo_of_first_party_type_suggests_it_and_its_distribution(tmp_path: Path) -> None:
    """trusted_network -> trusted_networks from opp-auth-trusted-networks."""
    message = unknown_type_error(tmp_path, "trusted_network", ("opp-auth-trusted-networks",))
    assert "Did you mean 'trusted_networks'?" in message
    assert "opp-auth-trusted-networks" in message


def test_unknown_mfa_type_names_its_distribution(tmp_path: Path) -> None:
    """MFA modules get the same help (totp -> opp-auth-totp)."""
    pm = make_plugin_manager(blocked=["opp-auth-totp"])
    with pytest.raises(ConfigError) as info:
        validate(pm, tmp_path, {"auth_mfa_modules": [{"type": "totp"}]})
    assert "pip install opp-auth-totp" in str(info.value)


class NotAProvider:
    """Something that is not an AuthProvider."""

    TYPE = "impostor"


class NoTypeProvider(AuthProvider):
    """A provider that forgot its TYPE."""


def provider_of(type_name: str) -> type[AuthProvider]:
    """A fresh minimal provider class with the given TYPE."""
    return type(f"Provider_{type_name}", (AuthProvider,), {"TYPE": type_name, "CONFIG_SCHEMA": AuthProvider.CONFIG_SCHEMA})


class Registers:
    """A plugin registering the given classes as providers."""

    def __init__(self, *classes: type) -> None:
        """Remember what to register."""
        self.classes = classes

    @hookimpl
    def opp_auth_register_auth_providers(self, register: Any) -> None:
        """Register each class."""
        for cls in self.classes:
            register(cls)


def test_registering_a_non_provider_names_the_plugin() -> None:
    """A class that does not subclass AuthProvider fails at start-up naming the plugin."""
    pm = make_plugin_manager(load_entrypoints=False, plugins=[("badplug", Registers(NotAProvider))])
    with pytest.raises(PluginError, match="badplug") as info:
        _ = pm.provider_classes
    assert "AuthProvider" in str(info.value)


def test_registering_a_class_without_type_names_the_plugin() -> None:
    """TYPE is required."""
    pm = make_plugin_manager(load_entrypoints=False, plugins=[("notype", Registers(NoTypeProvider))])
    with pytest.raises(PluginError, match="notype") as info:
        _ = pm.provider_classes
    assert "TYPE" in str(info.value)


def test_same_type_from_two_plugins_names_both() -> None:
    """Two plugins providing one type is an error naming both."""
    pm = make_plugin_manager(
        load_entrypoints=False,
        plugins=[("firstplug", Registers(provider_of("dup"))), ("secondplug", Registers(provider_of("dup")))],
    )
    with pytest.raises(PluginError) as info:
        _ = pm.provider_classes
    assert "firstplug" in str(info.value) and "secondplug" in str(info.value)
    assert "'dup'" in str(info.value)


def test_registering_a_non_mfa_module_names_the_plugin() -> None:
    """The MFA registry checks its base class too."""

    class Plugin:
        @hookimpl
        def opp_auth_register_mfa_modules(self, register: Any) -> None:
            register(provider_of("oops"))

    pm = make_plugin_manager(load_entrypoints=False, plugins=[("mfaplug", Plugin())])
    with pytest.raises(PluginError, match="mfaplug") as info:
        _ = pm.mfa_classes
    assert MfaModule.__name__ in str(info.value)


def test_exception_inside_register_hook_names_the_plugin() -> None:
    """A plugin crashing in its register hook is reported by name."""

    class Plugin:
        @hookimpl
        def opp_auth_register_auth_providers(self, register: Any) -> None:
            raise RuntimeError("kaput")

    pm = make_plugin_manager(load_entrypoints=False, plugins=[("crashplug", Plugin())])
    with pytest.raises(PluginError, match="crashplug.*kaput"):
        _ = pm.provider_classes


def test_registered_provider_type_is_usable(tmp_path: Path) -> None:
    """A plugin's provider class is selected by its type."""
    cls = provider_of("custom")
    pm = make_plugin_manager(load_entrypoints=False, plugins=[("customplug", Registers(cls))])
    config = validate(pm, tmp_path, {"auth_providers": [{"type": "custom", "name": "Mine"}]})
    assert config.providers == [(cls, {"type": "custom", "name": "Mine"})]
    assert pm.infos["customplug"].provider_types == ["custom"]


class OwnsBlock:
    """A plugin owning the top-level `fancy:` block."""

    @hookimpl
    def opp_auth_register_config(self, register: Any) -> None:
        """Register the block's schema."""
        register("fancy", vol.Schema({vol.Optional("level", default=1): vol.Coerce(int)}))


def test_plugin_owned_block_is_validated_with_its_schema(config_dir: Path) -> None:
    """The block's validated value is available in config.blocks."""
    (config_dir / "configuration.yaml").write_text("fancy:\n  level: '3'\n", encoding="utf-8")
    pm = make_plugin_manager(plugins=[("fancy", OwnsBlock())])
    # Installed plugins (e.g. opp-auth-notify) may own blocks of their own.
    assert load_config(config_dir, pm).blocks["fancy"] == {"level": 3}


def test_plugin_owned_block_error_names_file_line_and_key(config_dir: Path) -> None:
    """A bad value in the plugin's block is located like any other error."""
    (config_dir / "configuration.yaml").write_text("http: {}\nfancy:\n  level: high\n", encoding="utf-8")
    pm = make_plugin_manager(plugins=[("fancy", OwnsBlock())])
    with pytest.raises(ConfigError) as info:
        load_config(config_dir, pm)
    assert (info.value.filename, info.value.line, info.value.key_path) == ("configuration.yaml", 3, ("fancy", "level"))


def test_plugin_cannot_own_a_core_block(tmp_path: Path) -> None:
    """http: belongs to the core."""

    class Greedy:
        @hookimpl
        def opp_auth_register_config(self, register: Any) -> None:
            register("http", vol.Schema({}))

    pm = make_plugin_manager(plugins=[("greedy", Greedy())])
    with pytest.raises(ConfigError, match="'http:' block"):
        validate(pm, tmp_path, {})


def test_core_without_plugins_says_no_provider_is_installed() -> None:
    """With no provider plugin at all, the server explains what to install instead of starting."""
    from opp_auth.server import no_provider_installed_message

    message = no_provider_installed_message(make_plugin_manager(load_entrypoints=False))
    assert message is not None
    assert "No auth provider is installed" in message and "pip install opp-auth-local" in message
    assert no_provider_installed_message(make_plugin_manager()) is None

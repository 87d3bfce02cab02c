"""opp_auth.config.load_config on real configuration.yaml files."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import voluptuous as vol

from opp_auth import MfaModule, hookimpl
from opp_auth.config import Config, load_config
from opp_auth.plugins import OppAuthPluginManager, make_plugin_manager
from opp_auth.yaml import ConfigError

# Distributions that, when installed, would change what "not installed" means in these tests.
NOT_INSTALLED = ("opp-auth-totp", "opp-auth-legacy-api-password")


def plugin_manager(*plugins: tuple[str, Any]) -> OppAuthPluginManager:
    """Installed plugins (minus NOT_INSTALLED) plus the given ones."""
    return make_plugin_manager(plugins=plugins, blocked=NOT_INSTALLED)


def load(config_dir: Path, text: str, *, insecure: bool = False, pm: OppAuthPluginManager | None = None) -> Config:
    """Write configuration.yaml and load it."""
    (config_dir / "configuration.yaml").write_text(text, encoding="utf-8")
    return load_config(config_dir, pm or plugin_manager(), allow_insecure_example=insecure)


def load_error(config_dir: Path, text: str, *, insecure: bool = False) -> ConfigError:
    """Write configuration.yaml and return the ConfigError loading it raises."""
    with pytest.raises(ConfigError) as info:
        load(config_dir, text, insecure=insecure)
    return info.value


def types(entries: list[tuple[type, dict[str, Any]]]) -> list[str]:
    """The TYPE of each configured class (the local provider adds its own defaults to the config)."""
    return [cls.TYPE for cls, _ in entries]  # type: ignore[attr-defined]


# ---- defaults ---------------------------------------------------------------------------


def test_absent_auth_providers_defaults_to_local_provider(config_dir: Path) -> None:
    """No auth_providers: the openpeerpower provider alone."""
    config = load(config_dir, "openpeerpower:\n  name: Home\n")
    assert types(config.providers) == ["openpeerpower"]


def test_empty_file_gets_the_defaults(config_dir: Path) -> None:
    """No openpeerpower block at all is fine."""
    config = load(config_dir, "# nothing here\n")
    assert types(config.providers) == ["openpeerpower"]
    assert config.http["server_port"] == 8123


def test_absent_mfa_modules_without_totp_installed_is_empty(config_dir: Path) -> None:
    """The totp default applies only when opp-auth-totp is installed."""
    assert load(config_dir, "openpeerpower:\n  name: Home\n").mfa_modules == []


class FakeTotp(MfaModule):
    """Stands in for an installed totp module."""

    TYPE = "totp"
    CONFIG_SCHEMA = MfaModule.CONFIG_SCHEMA.extend({}, extra=vol.PREVENT_EXTRA)


class ShipsTotp:
    """A plugin registering FakeTotp."""

    @hookimpl
    def opp_auth_register_mfa_modules(self, register: Any) -> None:
        """Register the module."""
        register(FakeTotp)


def test_absent_mfa_modules_defaults_to_totp_when_installed(config_dir: Path) -> None:
    """With a totp module installed the Open Peer Power default applies."""
    config = load(config_dir, "openpeerpower:\n  name: Home\n", pm=plugin_manager(("totp", ShipsTotp())))
    assert config.mfa_modules == [(FakeTotp, {"type": "totp", "id": "totp", "name": "Authenticator app"})]


def test_explicit_empty_mfa_list_disables_mfa(config_dir: Path) -> None:
    """auth_mfa_modules: [] means no MFA even when totp is installed."""
    config = load(config_dir, "openpeerpower:\n  auth_mfa_modules: []\n", pm=plugin_manager(("totp", ShipsTotp())))
    assert config.mfa_modules == []


def test_single_provider_mapping_is_wrapped_in_a_list(config_dir: Path) -> None:
    """A mapping instead of a list is accepted as one entry."""
    config = load(config_dir, "openpeerpower:\n  auth_providers:\n    type: openpeerpower\n    name: Local\n")
    assert types(config.providers) == ["openpeerpower"]
    assert config.providers[0][1]["name"] == "Local"


# ---- auth_providers / auth_mfa_modules errors -------------------------------------------


def test_empty_auth_providers_is_an_error_naming_file_and_line(config_dir: Path) -> None:
    """`auth_providers:` with no value would lock everybody out (G27)."""
    err = load_error(config_dir, "openpeerpower:\n  name: Home\n  auth_providers:\n")
    assert (err.filename, err.line, err.key_path) == ("configuration.yaml", 3, ("openpeerpower", "auth_providers"))
    assert "is empty" in err.message


def test_empty_auth_providers_list_is_an_error(config_dir: Path) -> None:
    """`auth_providers: []` too."""
    err = load_error(config_dir, "openpeerpower:\n  auth_providers: []\n")
    assert (err.filename, err.line) == ("configuration.yaml", 2)
    assert "is empty" in err.message


def test_duplicate_providers_message(config_dir: Path) -> None:
    """SPEC 10.1 wording, located at the second entry."""
    err = load_error(config_dir, "openpeerpower:\n  auth_providers:\n    - type: openpeerpower\n    - type: openpeerpower\n")
    assert err.message == (
        "Duplicate auth provider openpeerpower found. "
        "Please add unique IDs if you want to have the same auth provider twice"
    )
    assert (err.filename, err.line, err.key_path) == ("configuration.yaml", 4, ("openpeerpower", "auth_providers", 1))


def test_same_provider_type_with_distinct_ids_is_allowed(config_dir: Path) -> None:
    """Unique ids make two providers of one type possible."""
    text = (
        "openpeerpower:\n  auth_providers:\n"
        "    - type: insecure_example\n      id: a\n      users: []\n"
        "    - type: insecure_example\n      id: b\n      users: []\n"
    )
    config = load(config_dir, text, insecure=True)
    assert [conf["id"] for _, conf in config.providers] == ["a", "b"]


def test_duplicate_mfa_modules_message(config_dir: Path) -> None:
    """SPEC 10.1 wording for MFA modules."""
    text = (
        "openpeerpower:\n  auth_mfa_modules:\n"
        "    - type: insecure_example\n      data: []\n"
        "    - type: insecure_example\n      data: []\n"
    )
    err = load_error(config_dir, text, insecure=True)
    assert err.message == (
        "Duplicate mfa module insecure_example found. "
        "Please add unique IDs if you want to have the same mfa module twice"
    )
    assert err.line == 5


def test_mfa_module_id_clashing_with_a_type_is_a_duplicate(config_dir: Path) -> None:
    """Module ids are global: an id equal to another module's default id clashes."""
    text = (
        "openpeerpower:\n  auth_mfa_modules:\n"
        "    - type: insecure_example\n      data: []\n"
        "    - type: totp\n      id: insecure_example\n"
    )
    with pytest.raises(ConfigError, match="Duplicate mfa module totp found"):
        load(config_dir, text, insecure=True, pm=plugin_manager(("totp", ShipsTotp())))


def test_insecure_example_provider_is_rejected(config_dir: Path) -> None:
    """Only tests may use it."""
    err = load_error(config_dir, "openpeerpower:\n  auth_providers:\n    - type: insecure_example\n      users: []\n")
    assert err.message == "The insecure_example auth provider is for testing only."
    assert (err.filename, err.line) == ("configuration.yaml", 3)


def test_insecure_example_mfa_module_is_rejected(config_dir: Path) -> None:
    """Only tests may use it."""
    err = load_error(config_dir, "openpeerpower:\n  auth_mfa_modules:\n    - type: insecure_example\n      data: []\n")
    assert err.message == "The insecure_example mfa module is for testing only."
    assert (err.filename, err.line) == ("configuration.yaml", 3)


def test_provider_schema_error_names_file_line_and_key_path(config_dir: Path) -> None:
    """id on the openpeerpower provider: its own message, located at the entry."""
    err = load_error(config_dir, "openpeerpower:\n  name: Home\n  auth_providers:\n    - type: openpeerpower\n      id: second\n")
    assert err.message == "ID is not allowed for the openpeerpower auth provider."
    assert (err.filename, err.line, err.key_path) == ("configuration.yaml", 4, ("openpeerpower", "auth_providers", 0))
    assert str(err).startswith("configuration.yaml, line 4, key openpeerpower -> auth_providers -> 0: ")


def test_unknown_key_in_a_provider_names_it_and_its_line(config_dir: Path) -> None:
    """Providers forbid keys their schema does not know."""
    err = load_error(
        config_dir,
        "openpeerpower:\n  auth_providers:\n    - type: insecure_example\n      users: []\n      colour: blue\n",
        insecure=True,
    )
    assert err.message == "unknown key 'colour'"
    assert (err.line, err.key_path) == (5, ("openpeerpower", "auth_providers", 0, "colour"))


def test_provider_entry_without_type_is_an_error(config_dir: Path) -> None:
    """type is required."""
    err = load_error(config_dir, "openpeerpower:\n  auth_providers:\n    - name: Nameless\n")
    assert "type" in err.message
    assert err.filename == "configuration.yaml"


def test_secret_works_for_a_provider_key(config_dir: Path) -> None:
    """!secret values reach the provider's configuration."""
    (config_dir / "secrets.yaml").write_text("example_password: s3cr3t-value\n", encoding="utf-8")
    text = (
        "openpeerpower:\n  auth_providers:\n    - type: insecure_example\n      users:\n"
        "        - username: alice\n          password: !secret example_password\n"
    )
    config = load(config_dir, text, insecure=True)
    assert config.providers[0][1]["users"] == [{"username": "alice", "password": "s3cr3t-value"}]


def test_missing_secret_is_an_error_at_its_line(config_dir: Path) -> None:
    """An undefined secret is reported where it is used."""
    (config_dir / "secrets.yaml").write_text("other: x\n", encoding="utf-8")
    text = "openpeerpower:\n  auth_providers:\n    - type: legacy_api_password\n      api_password: !secret nope\n"
    err = load_error(config_dir, text)
    assert (err.filename, err.line) == ("configuration.yaml", 4)
    assert "Secret nope not defined" in err.message


# ---- the openpeerpower block ------------------------------------------------------------


def test_unknown_key_under_openpeerpower_is_named(config_dir: Path) -> None:
    """Unknown core keys fail with their name and line."""
    err = load_error(config_dir, "openpeerpower:\n  name: Home\n  auth_provider:\n    - type: openpeerpower\n")
    assert err.message == "unknown key 'auth_provider'"
    assert (err.filename, err.line, err.key_path) == ("configuration.yaml", 3, ("openpeerpower", "auth_provider"))


def test_open_peer_power_core_keys_are_accepted(config_dir: Path) -> None:
    """An existing Open Peer Power core block loads unchanged."""
    text = """\
openpeerpower:
  name: Home
  latitude: 52.37
  longitude: 4.89
  elevation: 2
  unit_system: metric
  time_zone: Europe/Amsterdam
  temperature_unit: C
  internal_url: http://192.168.1.2:8123
  external_url: https://home.example.org
  customize:
    light.kitchen:
      friendly_name: Kitchen
  customize_glob:
    "light.*":
      icon: mdi:lamp
  allowlist_external_dirs:
    - /tmp
  packages: {}
"""
    config = load(config_dir, text)
    assert types(config.providers) == ["openpeerpower"]


def test_missing_configuration_file_is_named(config_dir: Path) -> None:
    """No configuration.yaml: the error names the path."""
    with pytest.raises(ConfigError, match="configuration.yaml"):
        load_config(config_dir, plugin_manager())


# ---- the http block ---------------------------------------------------------------------


def test_http_defaults(config_dir: Path) -> None:
    """Port 8123, the cast CORS origin, bans enabled with no threshold, no proxies."""
    http = load(config_dir, "http:\n").http
    assert http["server_port"] == 8123
    assert http["cors_allowed_origins"] == ["https://cast.openpeerpower.io"]
    assert http["ip_ban_enabled"] is True
    assert http["login_attempts_threshold"] == -1
    assert http["use_x_forwarded_for"] is False
    assert http["trusted_proxies"] == []


def test_http_reverse_proxy_settings(config_dir: Path) -> None:
    """use_x_forwarded_for with trusted_proxies parses the networks."""
    http = load(config_dir, "http:\n  use_x_forwarded_for: true\n  trusted_proxies:\n    - 172.30.33.0/24\n    - ::1\n").http
    assert [str(net) for net in http["trusted_proxies"]] == ["172.30.33.0/24", "::1/128"]


def test_forwarded_for_without_trusted_proxies_is_an_error(config_dir: Path) -> None:
    """Trusting X-Forwarded-For from anyone would let clients spoof their address."""
    err = load_error(config_dir, "http:\n  use_x_forwarded_for: true\n")
    assert err.filename == "configuration.yaml"
    assert err.key_path[0] == "http"
    assert "trusted_proxies" in err.message


def test_bad_trusted_proxy_network_names_the_value(config_dir: Path) -> None:
    """The offending entry is quoted and located."""
    err = load_error(
        config_dir, "http:\n  use_x_forwarded_for: true\n  trusted_proxies:\n    - 10.0.0.0/8\n    - not-a-net\n"
    )
    assert "'not-a-net'" in err.message
    assert (err.line, err.key_path) == (5, ("http", "trusted_proxies", 1))


def test_unknown_http_key_is_named(config_dir: Path) -> None:
    """http forbids keys it does not know."""
    err = load_error(config_dir, "http:\n  server_prot: 80\n")
    assert err.message == "unknown key 'server_prot'"
    assert err.line == 2


def test_api_password_without_legacy_plugin_names_its_distribution(config_dir: Path) -> None:
    """http: api_password turns on legacy_api_password, which must be installed."""
    err = load_error(config_dir, "http:\n  api_password: hunter2\n")
    assert "legacy_api_password" in err.message
    assert "opp-auth-legacy-api-password" in err.message
    assert err.filename == "configuration.yaml"
    assert (err.line, err.key_path) == (2, ("http", "api_password"))
    assert "hunter2" not in str(err)

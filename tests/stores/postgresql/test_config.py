"""openpeerpower: storage: in configuration.yaml: defaults, the backend's schema, errors with file, line and key."""

from __future__ import annotations

from pathlib import Path

import pytest
from opp_auth_postgresql import PostgresBackend

from opp_auth.backend import JsonBackend
from opp_auth.config import Config, load_config
from opp_auth.plugins import make_plugin_manager
from opp_auth.yaml import ConfigError


def load(config_dir: Path, text: str) -> Config:
    """Write configuration.yaml and load it."""
    (config_dir / "configuration.yaml").write_text(text, encoding="utf-8")
    return load_config(config_dir, make_plugin_manager())


def load_error(config_dir: Path, text: str) -> ConfigError:
    """The ConfigError loading text raises."""
    with pytest.raises(ConfigError) as info:
        load(config_dir, text)
    return info.value


def test_default_is_json(config_dir: Path) -> None:
    """No storage: block: the .storage files."""
    config = load(config_dir, "openpeerpower:\n")
    assert config.storage_class is JsonBackend and config.storage == {"type": "json"}


def test_postgresql_with_defaults_and_a_secret(config_dir: Path) -> None:
    """url from secrets.yaml; pool_size, staleness and timeouts get their defaults."""
    (config_dir / "secrets.yaml").write_text("db: postgresql://auth:pw@db.example:5432/auth\n", encoding="utf-8")
    config = load(config_dir, "openpeerpower:\n  storage:\n    type: postgresql\n    url: !secret db\n")
    assert config.storage_class is PostgresBackend
    assert config.storage == {
        "type": "postgresql",
        "url": "postgresql://auth:pw@db.example:5432/auth",
        "pool_size": 10,
        "staleness_seconds": 30.0,
        "connect_timeout": 5.0,
        "change_retention_hours": 24.0,
    }


def test_bad_pool_size_names_file_line_and_key(config_dir: Path) -> None:
    """The backend's own schema error, located."""
    err = load_error(
        config_dir, "openpeerpower:\n  storage:\n    type: postgresql\n    url: postgresql://h/d\n    pool_size: 0\n"
    )
    assert (err.filename, err.line) == ("configuration.yaml", 5)
    assert err.key_path[-1] == "pool_size"


def test_url_that_is_not_postgresql(config_dir: Path) -> None:
    """mysql://... is refused at its line."""
    err = load_error(config_dir, "openpeerpower:\n  storage:\n    type: postgresql\n    url: mysql://h/d\n")
    assert err.line == 4 and "postgresql://" in err.message


def test_unknown_key(config_dir: Path) -> None:
    """A typo is named."""
    err = load_error(
        config_dir, "openpeerpower:\n  storage:\n    type: postgresql\n    url: postgresql://h/d\n    poolsize: 3\n"
    )
    assert err.line == 5 and "poolsize" in str(err)


def test_unknown_type_suggests_the_closest(config_dir: Path) -> None:
    """type: postgres -> did you mean postgresql, and which distribution ships it."""
    err = load_error(config_dir, "openpeerpower:\n  storage:\n    type: postgres\n")
    assert err.line == 3 and err.key_path == ("openpeerpower", "storage", "type")
    assert "Did you mean 'postgresql'" in err.message


def test_storage_must_be_a_mapping(config_dir: Path) -> None:
    """storage: postgresql (a string) is refused with what to write."""
    err = load_error(config_dir, "openpeerpower:\n  storage: postgresql\n")
    assert err.line == 2 and "mapping" in err.message

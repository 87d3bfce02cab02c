"""Property tests of the configuration loader: any configuration.yaml loads or raises ConfigError, located when it can be."""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from opp_auth.config import Config, load_config
from opp_auth.plugins import OppAuthPluginManager, make_plugin_manager
from opp_auth.yaml import ConfigError

FAST = settings(max_examples=150, deadline=None)

_scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.floats(allow_nan=True), st.text(max_size=12),
    st.sampled_from(["openpeerpower", "insecure_example", "trusted_networks", "127.0.0.1", "10.0.0.0/8", "::1", "abc/99"]),
)
_keys = st.one_of(
    st.sampled_from([
        "type", "id", "name", "users", "username", "password", "auth_providers", "auth_mfa_modules",
        "trusted_networks", "trusted_users", "allow_bypass_login", "use_x_forwarded_for", "trusted_proxies",
        "server_port", "ip_ban_enabled", "login_attempts_threshold", "cors_allowed_origins", "api_password",
    ]),
    st.text(max_size=8),
)
_values = st.recursive(_scalars, lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(_keys, inner, max_size=4)), max_leaves=12)
_provider = st.fixed_dictionaries(
    {"type": st.sampled_from(["openpeerpower", "insecure_example", "trusted_networks", "nope", ""])},
    optional={"id": _scalars, "users": _values, "trusted_networks": _values, "name": _scalars, "extra": _values},
)
documents = st.fixed_dictionaries(
    {},
    optional={
        "openpeerpower": st.one_of(
            _values,
            st.fixed_dictionaries({}, optional={"auth_providers": st.one_of(st.lists(_provider, max_size=3), _values),
                                                "auth_mfa_modules": st.one_of(st.lists(_provider, max_size=2), _values),
                                                "name": _scalars}),
        ),
        "http": st.one_of(_values, st.dictionaries(_keys, _values, max_size=4)),
        "notify": _values,
    },
)
_fragments = st.sampled_from([
    "openpeerpower:\n", "  auth_providers:\n", "    - type: insecure_example\n", "http:\n", "  server_port: x\n",
    "!secret nope\n", "!include missing.yaml\n", "!env_var NOPE\n", "&a [*a]\n", "key: [\n", "\t", ": :\n", "- - -\n",
    "? complex\n", "!!python/object:os.system ls\n", "\ufeff", "\x00", "\ud7ff", "%YAML 1.1\n---\n", "...\n", "<<: *x\n",
])
texts = st.one_of(st.lists(_fragments, max_size=8).map("".join), st.text(max_size=80))


@pytest.fixture(scope="module")
def pm() -> OppAuthPluginManager:
    """The installed plugins, built once for the module."""
    return make_plugin_manager()


@pytest.fixture(scope="module")
def config_path() -> Iterator[Path]:
    """One configuration directory reused by every example."""
    with tempfile.TemporaryDirectory() as directory:
        yield Path(directory)


def load(config_dir: Path, text: str | bytes, pm: OppAuthPluginManager) -> Config:
    """Write configuration.yaml and load it."""
    path = config_dir / "configuration.yaml"
    path.write_bytes(text if isinstance(text, bytes) else text.encode("utf-8", "surrogatepass"))
    return load_config(config_dir, pm, allow_insecure_example=True)


@FAST
@given(text=texts)
def test_any_text_loads_or_raises_config_error(config_path: Path, pm: OppAuthPluginManager, text: str) -> None:
    """Broken YAML, unknown tags, odd characters: a Config or a ConfigError with a message, nothing else."""
    try:
        config = load(config_path, text, pm)
    except ConfigError as err:
        assert err.message and str(err)
        return
    assert isinstance(config, Config)


@FAST
@given(data=st.binary(max_size=60))
def test_any_bytes_load_or_raise_config_error(config_path: Path, pm: OppAuthPluginManager, data: bytes) -> None:
    """Bytes that are not UTF-8 are a ConfigError too."""
    try:
        load(config_path, data, pm)
    except ConfigError as err:
        assert str(err)


@FAST
@given(document=documents)
def test_generated_configurations_validate_or_raise_a_located_config_error(
    config_path: Path, pm: OppAuthPluginManager, document: dict
) -> None:
    """Well-formed YAML with wrong contents is refused with the file and line of the culprit."""
    try:
        config = load(config_path, yaml.safe_dump(document, allow_unicode=True), pm)
    except ConfigError as err:
        assert err.message
        assert err.line is not None, str(err)
        assert err.filename is not None and err.filename.endswith("configuration.yaml"), str(err)
        return
    assert config.providers, "a valid configuration always has at least one auth provider"


@pytest.mark.parametrize("block", ["openpeerpower", "http"])
def test_scalar_block_error_names_the_line_of_its_key(config_path: Path, pm: OppAuthPluginManager, block: str) -> None:
    """'http: 1.5' cannot carry a line itself; the error points at the key's line instead (found by the fuzzer)."""
    with pytest.raises(ConfigError) as info:
        load(config_path, f"# a comment\n{block}: 1.5\n", pm)
    assert (info.value.line, info.value.key_path) == (2, (block,))

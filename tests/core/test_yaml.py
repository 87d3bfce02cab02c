"""Tests for opp_auth.yaml (run with PYTHONPATH=core)."""
from __future__ import annotations

import logging
from pathlib import Path

import pytest
import voluptuous as vol
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from opp_auth.yaml import ConfigError, Secrets, config_error, load_yaml, where

SECRET_VALUE = "hunter2-very-secret"


def write(path: Path, text: str) -> Path:
    """Write `text` to `path` (creating folders) and return the path."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def load_error(path: Path) -> ConfigError:
    """Load `path`, expecting a ConfigError, and return it."""
    with pytest.raises(ConfigError) as info:
        load_yaml(path)
    return info.value


CONFIG = """\
# leading comment
openpeerpower:
  name: Home
  auth_providers:
    - type: openpeerpower
    - type: trusted_networks
      trusted_networks:
        - 192.168.0.0/24
        - 12
      allow_bypass_login: true
  port: 8123
"""


def test_nested_lines(tmp_path: Path) -> None:
    """Mappings, sequences and strings remember file and 1-based line; scalars via the parent."""
    data = load_yaml(write(tmp_path / "configuration.yaml", CONFIG))
    core = data["openpeerpower"]
    providers = core["auth_providers"]
    assert where(data) == ("configuration.yaml", 2)
    assert where(core) == ("configuration.yaml", 3)
    assert where(core["name"]) == ("configuration.yaml", 3)
    assert where(providers) == ("configuration.yaml", 5)
    assert where(providers[1]) == ("configuration.yaml", 6)
    assert where(providers[1]["trusted_networks"][0]) == ("configuration.yaml", 8)
    assert where(core["port"]) == (None, None)
    assert core._key_lines["port"] == 11
    assert providers[1]["trusted_networks"]._key_lines[1] == 9
    assert providers[1]["allow_bypass_login"] is True
    assert data == {"openpeerpower": {"name": "Home", "port": 8123, "auth_providers": [
        {"type": "openpeerpower"},
        {"type": "trusted_networks", "trusted_networks": ["192.168.0.0/24", 12],
         "allow_bypass_login": True}]}}


def test_duplicate_key(tmp_path: Path) -> None:
    """A repeated key names the file and the line of the repeat."""
    err = load_error(write(tmp_path / "configuration.yaml", "a: 1\nb:\n  c: 1\n  c: 2\n"))
    assert (err.filename, err.line) == ("configuration.yaml", 4)
    assert "duplicate key 'c'" in str(err) and "line 3" in err.message


def test_merge_keys_may_override(tmp_path: Path) -> None:
    """Keys brought in with `<<:` can be overridden without a duplicate-key error."""
    data = load_yaml(write(tmp_path / "c.yaml", "base: &b {x: 1, y: 2}\nuse:\n  <<: *b\n  y: 3\n"))
    assert data["use"] == {"x": 1, "y": 3}


def test_empty_file(tmp_path: Path) -> None:
    """An empty or comment-only file loads as an empty mapping."""
    assert load_yaml(write(tmp_path / "a.yaml", "")) == {}
    assert load_yaml(write(tmp_path / "b.yaml", "# nothing\n")) == {}


def test_syntax_error(tmp_path: Path) -> None:
    """A YAML syntax error gives file, line, column and the parser's problem text."""
    err = load_error(write(tmp_path / "configuration.yaml", "a: 1\nb: [1, 2\nc: 3\n"))
    assert err.filename == "configuration.yaml" and err.line == 3 and err.column is not None
    assert "flow sequence" in err.message
    assert str(err).startswith(f"configuration.yaml, line 3, column {err.column}: ")


def test_unreadable_and_not_utf8(tmp_path: Path) -> None:
    """Missing files and bad encodings are ConfigErrors naming the file."""
    err = load_error(tmp_path / "missing.yaml")
    assert "missing.yaml" in str(err) and "not found" in str(err)
    bad = tmp_path / "bad.yaml"
    bad.write_bytes(b"a: 1\nb: \xff\xfe\n")
    err = load_error(bad)
    assert (err.filename, err.line) == ("bad.yaml", 2) and "UTF-8" in err.message


def test_unknown_tag(tmp_path: Path) -> None:
    """Tags we do not support, including Python ones, are rejected with a location."""
    err = load_error(write(tmp_path / "c.yaml", "a:\n  b: !foo bar\n"))
    assert (err.filename, err.line) == ("c.yaml", 2) and "unknown tag !foo" in err.message
    err = load_error(write(tmp_path / "d.yaml", "x: !!python/object:os.system {}\n"))
    assert err.line == 1 and "!!python/object" in err.message


def test_secret_found_and_parent_dir(tmp_path: Path) -> None:
    """!secret looks in the including file's folder, then parents up to the config dir."""
    write(tmp_path / "secrets.yaml", f"logger: debug\npw: {SECRET_VALUE}\nport: 5\nshared: top\n")
    write(tmp_path / "pkg" / "secrets.yaml", "shared: inner\n")
    write(tmp_path / "pkg" / "deep" / "x.yaml", "a: !secret pw\nb: !secret shared\nc: !secret port\n")
    data = load_yaml(write(tmp_path / "configuration.yaml",
                           "p: !secret pw\nsub: !include pkg/deep/x.yaml\n"))
    assert data["p"] == SECRET_VALUE and where(data["p"]) == ("configuration.yaml", 1)
    assert data["sub"] == {"a": SECRET_VALUE, "b": "inner", "c": 5}
    assert where(data["sub"]["a"]) == ("pkg/deep/x.yaml", 1)


def test_secret_missing(tmp_path: Path) -> None:
    """An undefined secret names file, line and the secret's name."""
    write(tmp_path / "secrets.yaml", f"pw: {SECRET_VALUE}\n")
    err = load_error(write(tmp_path / "configuration.yaml", "a: 1\nb: !secret nope\n"))
    assert (err.filename, err.line) == ("configuration.yaml", 2)
    assert "Secret nope not defined" in str(err)


def test_secrets_file_missing(tmp_path: Path) -> None:
    """With no secrets.yaml anywhere the error says so."""
    err = load_error(write(tmp_path / "configuration.yaml", "b: !secret nope\n"))
    assert err.line == 1 and "secrets.yaml not found" in str(err)


def test_secrets_file_not_mapping(tmp_path: Path) -> None:
    """secrets.yaml must be a mapping and cannot use !secret itself."""
    write(tmp_path / "secrets.yaml", "- a\n")
    err = load_error(write(tmp_path / "configuration.yaml", "b: !secret a\n"))
    assert err.filename == "secrets.yaml" and "mapping" in err.message
    write(tmp_path / "secrets.yaml", "5\n")
    assert load_error(tmp_path / "configuration.yaml").filename == "secrets.yaml"
    write(tmp_path / "secrets.yaml", "a: !secret b\n")
    assert "cannot be used" in load_error(tmp_path / "configuration.yaml").message


def test_secrets_stay_in_config_dir(tmp_path: Path) -> None:
    """A secrets.yaml above the config dir is never consulted."""
    write(tmp_path / "secrets.yaml", "a: outside\n")
    config = write(tmp_path / "config" / "configuration.yaml", "b: !secret a\n")
    with pytest.raises(ConfigError, match="secrets.yaml not found"):
        load_yaml(config, Secrets(tmp_path / "config"))


def test_include_relative(tmp_path: Path) -> None:
    """!include resolves relative to the including file; errors point at the right file."""
    write(tmp_path / "pkg" / "b.yaml", "value: 1\nmore: !include c.yaml\n")
    write(tmp_path / "pkg" / "c.yaml", "- x\n")
    data = load_yaml(write(tmp_path / "configuration.yaml", "inc: !include pkg/b.yaml\n"))
    assert data == {"inc": {"value": 1, "more": ["x"]}}
    assert where(data["inc"]["more"]) == ("pkg/c.yaml", 1)
    write(tmp_path / "pkg" / "c.yaml", "a: [\n")
    assert load_error(tmp_path / "configuration.yaml").filename == "pkg/c.yaml"


def test_include_missing_and_loop(tmp_path: Path) -> None:
    """A missing include points at the !include line; include loops are reported."""
    err = load_error(write(tmp_path / "configuration.yaml", "a: 1\nb: !include nope.yaml\n"))
    assert (err.filename, err.line) == ("configuration.yaml", 2) and "nope.yaml" in err.message
    write(tmp_path / "loop.yaml", "again: !include configuration.yaml\n")
    write(tmp_path / "configuration.yaml", "x: !include loop.yaml\n")
    err = load_error(tmp_path / "configuration.yaml")
    assert (err.filename, err.line) == ("loop.yaml", 1) and "include loop" in err.message


def test_include_dirs(tmp_path: Path) -> None:
    """The four !include_dir_* tags: recursive, sorted, hidden files and secrets.yaml skipped."""
    write(tmp_path / "d" / "b.yaml", "b: 2\n")
    write(tmp_path / "d" / "a.yaml", "a: 1\n")
    write(tmp_path / "d" / "sub" / "c.yaml", "c: 3\n")
    write(tmp_path / "d" / ".hidden.yaml", "h: 0\n")
    write(tmp_path / "d" / ".git" / "x.yaml", "h: 0\n")
    write(tmp_path / "d" / "secrets.yaml", "s: 0\n")
    write(tmp_path / "d" / "notes.txt", "ignored")
    write(tmp_path / "l" / "1.yaml", "- one\n- two\n")
    write(tmp_path / "l" / "2.yaml", "- three\n")
    write(tmp_path / "l" / "3.yaml", "")
    data = load_yaml(write(tmp_path / "configuration.yaml", (
        "list: !include_dir_list d\nnamed: !include_dir_named d\n"
        "mnamed: !include_dir_merge_named d\nmlist: !include_dir_merge_list l\n")))
    assert data["list"] == [{"a": 1}, {"b": 2}, {"c": 3}]
    assert data["named"] == {"a": {"a": 1}, "b": {"b": 2}, "c": {"c": 3}}
    assert data["mnamed"] == {"a": 1, "b": 2, "c": 3}
    assert data["mlist"] == ["one", "two", "three"]
    assert data["mnamed"]._files["c"] == "d/sub/c.yaml" and data["mnamed"]._key_lines["c"] == 1
    err = load_error(write(tmp_path / "e.yaml", "x: !include_dir_list nowhere\n"))
    assert err.line == 1 and "nowhere" in err.message


def test_env_var(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """!env_var NAME [DEFAULT]; a missing variable without default is an error."""
    monkeypatch.setenv("OPP_TEST_VAR", "from-env")
    monkeypatch.delenv("OPP_TEST_MISSING", raising=False)
    data = load_yaml(write(tmp_path / "c.yaml", (
        "a: !env_var OPP_TEST_VAR\nb: !env_var OPP_TEST_MISSING some default\n")))
    assert data == {"a": "from-env", "b": "some default"}
    err = load_error(write(tmp_path / "d.yaml", "\nb: !env_var OPP_TEST_MISSING\n"))
    assert err.line == 2 and "OPP_TEST_MISSING" in err.message


PROVIDER = vol.Schema({vol.Required("type"): str, vol.Optional("port"): int,
                       vol.Optional("api_password"): vol.All(str, vol.Length(min=20))})
SCHEMA = vol.Schema({"openpeerpower": {
    vol.Optional("name"): str, vol.Optional("port"): int,
    vol.Optional("auth_providers"): [PROVIDER]}})


def validate(data: object, schema: vol.Schema = SCHEMA, prefix: tuple = ()) -> ConfigError:
    """Validate and convert the voluptuous failure to a ConfigError."""
    with pytest.raises(vol.Invalid) as info:
        schema(data)
    return config_error(info.value, data, prefix)


def test_schema_error_nested_list_item(tmp_path: Path) -> None:
    """A bad value in a list item names the value's line and full key path."""
    data = load_yaml(write(tmp_path / "configuration.yaml", (
        "openpeerpower:\n  auth_providers:\n    - type: openpeerpower\n"
        "    - type: command_line\n      port: abc\n")))
    err = validate(data)
    assert (err.filename, err.line) == ("configuration.yaml", 5)
    assert err.key_path == ("openpeerpower", "auth_providers", 1, "port")
    assert type(err.key_path[0]) is str
    assert str(err) == ("configuration.yaml, line 5, key openpeerpower -> auth_providers -> 1 "
                        "-> port: expected int. Got 'abc'")


def test_schema_error_unknown_and_missing_keys(tmp_path: Path) -> None:
    """Extra and missing keys get friendly messages; non-string scalars use per-key lines."""
    data = load_yaml(write(tmp_path / "c.yaml", "openpeerpower:\n  name: 5\n  bogus: 1\n"))
    err = validate(data)
    assert (err.line, err.message) == (2, "expected str. Got 5 (and 1 more error)")
    del data["openpeerpower"]["name"]
    err = validate(data)
    assert (err.line, err.message) == (3, "unknown key 'bogus'")
    data = load_yaml(write(tmp_path / "d.yaml", "openpeerpower:\n  auth_providers:\n\n    - port: 1\n"))
    err = validate(data)
    assert (err.line, err.message) == (4, "missing required key 'type'")
    assert err.key_path == ("openpeerpower", "auth_providers", 0, "type")


def test_schema_error_prefix_and_plain_data() -> None:
    """prefix_path is prepended; plain (not loaded) data still yields a message without a line."""
    err = validate({"type": 5}, PROVIDER, ("openpeerpower", "auth_providers", 0))
    assert str(err) == "key openpeerpower -> auth_providers -> 0 -> type: expected str. Got 5"


def test_secret_values_never_in_messages(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Neither errors nor logs contain a secret's value, whatever key it sits under."""
    caplog.set_level(logging.DEBUG)
    write(tmp_path / "secrets.yaml", f"short: {SECRET_VALUE}\n")
    data = load_yaml(write(tmp_path / "configuration.yaml", (
        "openpeerpower:\n  auth_providers:\n    - type: legacy_api_password\n"
        "      api_password: !secret short\n")))
    err = validate(data)
    assert err.line == 4 and SECRET_VALUE not in str(err)
    # A secret under an innocent-looking key, with a validator that echoes the value.
    data = load_yaml(write(tmp_path / "c.yaml", "name: !secret short\n"))
    echo = vol.Schema({"name": vol.All(str, lambda v: (_ for _ in ()).throw(vol.Invalid(f"bad {v}")))})
    err = validate(data, echo)
    assert SECRET_VALUE not in str(err) and "<hidden>" in str(err)
    # Secret-looking key names hide plain values too.
    err = validate({"type": "x", "api_password": "plain-short"}, PROVIDER)
    assert "plain-short" not in str(err)
    with pytest.raises(ConfigError) as info:
        load_yaml(write(tmp_path / "d.yaml", "a: !secret short\nb: !secret nope\n"))
    assert SECRET_VALUE not in str(info.value)
    assert SECRET_VALUE not in caplog.text and "short" in caplog.text


def test_config_error_str_parts() -> None:
    """str() omits unknown parts."""
    assert str(ConfigError("boom")) == "boom"
    assert str(ConfigError("boom", "a.yaml")) == "a.yaml: boom"
    assert str(ConfigError("boom", None, 3, ("a", 0))) == "line 3, key a -> 0: boom"


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.text() | st.text(alphabet="[]{}:,-!&*?|>'\"#% \n\tab1").map(lambda t: "a:\n  " + t))
def test_arbitrary_text_only_config_error(tmp_path: Path, text: str) -> None:
    """Whatever the text, load_yaml either returns or raises ConfigError."""
    path = tmp_path / "fuzz.yaml"
    path.write_bytes(text.encode("utf-8", "surrogatepass"))
    try:
        load_yaml(path)
    except ConfigError as err:
        assert str(err)

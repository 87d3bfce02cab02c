"""configuration.yaml: the core block, the http: block, plugin blocks, and their validation.

The core block is ``openpeerpower:`` (an Open Peer Power directory) or
``homeassistant:`` (a Home Assistant directory, read the same way, with the
local provider's type ``homeassistant``). Which one is present also picks the
wire generation of the HTTP API (``http: auth_api`` overrides it, see
API_GENERATIONS). Every error names the file, the line, the key and what to do
(ConfigError).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import voluptuous as vol

from .audit import AUDIT_BLOCK, AUDIT_SCHEMA
from .backend import BASE_STORAGE_SCHEMA, JSON_TYPE, JsonBackend, StorageBackend
from .network import IPNetwork, parse_network
from .plugins import OppAuthPluginManager
from .yaml import ConfigError, Secrets, config_error, load_yaml, where

if TYPE_CHECKING:
    from .mfa import MfaModule
    from .providers import AuthProvider

_LOGGER = logging.getLogger(__name__)

CONFIG_FILE = "configuration.yaml"
DEFAULT_PORT = 8123
DEFAULT_CORS = ["https://cast.openpeerpower.io"]
DEFAULT_PROVIDERS = [{"type": "openpeerpower"}]
# The two core blocks: the Open Peer Power one, and Home Assistant's, which it forked from.
CORE_BLOCK_OPP = "openpeerpower"
CORE_BLOCK_HA = "homeassistant"
CORE_BLOCKS = (CORE_BLOCK_OPP, CORE_BLOCK_HA)
# The wire generations of the HTTP API (http: auth_api): Open Peer Power 2021, or today's Home Assistant.
API_OPP = "openpeerpower"
API_HA = "homeassistant"
API_GENERATIONS = (API_OPP, API_HA)
DEFAULT_MFA_MODULES = [{"type": "totp", "id": "totp", "name": "Authenticator app"}]
INSECURE_EXAMPLE = "insecure_example"

DEFAULT_CONFIGURATION = """\
# opp-auth configuration (the same format as Open Peer Power's).
openpeerpower:
  name: Home
  # auth_providers:
  #   - type: openpeerpower

http:
  server_host: 127.0.0.1
  server_port: 8123
"""

# Keys of Open Peer Power's core block that opp-auth accepts and does not use, so an
# existing configuration.yaml loads unchanged.
_CORE_PASSTHROUGH = (
    "name",
    "latitude",
    "longitude",
    "elevation",
    "unit_system",
    "time_zone",
    "temperature_unit",
    "customize",
    "customize_domain",
    "customize_glob",
    "packages",
    "whitelist_external_dirs",
    "allowlist_external_dirs",
    "allowlist_external_urls",
    "media_dirs",
    "internal_url",
    "external_url",
    "currency",
    "legacy_templates",
    "country",
    "language",
    "radius",
    "debug",
)


def _list_of_dicts(value: Any) -> list[Any]:
    """A list of mappings (a single mapping is wrapped, as Open Peer Power does)."""
    if value is None:
        raise vol.Invalid(
            "is empty: list at least one provider, or remove the key to use the default "
            "(an empty list would lock everybody out)"
        )
    if isinstance(value, dict):
        value = [value]
    if not isinstance(value, list):
        raise vol.Invalid("expected a list of entries, each with a 'type'")
    return value


def _check_providers(value: list[Any]) -> list[Any]:
    """An explicit list must not be empty: that is a lock-out, not a choice (G27)."""
    if not value:
        raise vol.Invalid(
            "is empty: list at least one provider, or remove the key to use the default "
            "(an empty list would lock everybody out)"
        )
    return value


# When a user with a second factor enrolled must pass it at login (openpeerpower: mfa_required:).
MFA_EVERYWHERE = "everywhere"
MFA_OUTSIDE_LOCAL_NETWORK = "outside_local_network"
MFA_NEVER = "never"
MFA_POLICIES = (MFA_EVERYWHERE, MFA_OUTSIDE_LOCAL_NETWORK, MFA_NEVER)

_ENTRY = vol.Schema(
    {vol.Required("type"): str, vol.Optional("id"): vol.Any(str, None), vol.Optional("name"): vol.Any(str, None)},
    extra=vol.ALLOW_EXTRA,
)

CORE_SCHEMA = vol.Schema(
    {
        vol.Optional("auth_providers"): vol.All(_list_of_dicts, _check_providers, [_ENTRY]),
        vol.Optional("auth_mfa_modules"): vol.All(
            lambda v: [] if v is None else v, lambda v: [v] if isinstance(v, dict) else v, [_ENTRY]
        ),
        vol.Optional("mfa_required", default=MFA_EVERYWHERE): vol.In(
            MFA_POLICIES, msg=f"must be one of {', '.join(MFA_POLICIES)}"
        ),
        vol.Optional("refresh_token_expiry_days", default=90): vol.Any(
            None, vol.All(vol.Coerce(int), vol.Range(min=1, max=36500))
        ),
        vol.Optional("storage"): vol.All(
            vol.Schema(dict), BASE_STORAGE_SCHEMA, msg="must be a mapping such as {type: json}"
        ),
        **{vol.Optional(key): object for key in _CORE_PASSTHROUGH},
    }
)


def _network(value: Any) -> IPNetwork:
    """An IP address or CIDR network."""
    try:
        return parse_network(value)
    except ValueError as err:
        raise vol.Invalid(f"'{value}' is not an IP address or network") from err


def _threshold(value: Any) -> int:
    """A positive attempt count, or -1 for never."""
    count: int = vol.Coerce(int)(value)
    if count != -1 and count < 1:
        raise vol.Invalid("must be a positive number of attempts, or -1 to never ban")
    return count


def _proxies_pair(conf: dict[str, Any]) -> dict[str, Any]:
    """use_x_forwarded_for and trusted_proxies go together."""
    if conf.get("use_x_forwarded_for") and not conf.get("trusted_proxies"):
        raise vol.Invalid("use_x_forwarded_for needs trusted_proxies: list the addresses of your proxies")
    if conf.get("trusted_proxies") and not conf.get("use_x_forwarded_for"):
        raise vol.Invalid("trusted_proxies needs use_x_forwarded_for: true")
    return conf


_ATTEMPTS = vol.All(vol.Coerce(int), vol.Range(min=1, msg="must be a positive number of attempts"))
_SECONDS = vol.All(vol.Coerce(int), vol.Range(min=1, msg="must be a positive number of seconds"))

# Defaults in opp_auth.throttle.DEFAULTS; see that module for what each key does.
LOGIN_THROTTLE_SCHEMA = vol.Schema(
    {
        vol.Optional("enabled", default=True): bool,
        vol.Optional("attempts_per_address_and_user", default=5): _ATTEMPTS,
        vol.Optional("attempts_per_user", default=10): _ATTEMPTS,
        vol.Optional("attempts_per_address", default=20): _ATTEMPTS,
        vol.Optional("attempts_per_prefix", default=100): _ATTEMPTS,
        vol.Optional("max_lock_seconds", default=900): _SECONDS,
        vol.Optional("reset_after_seconds", default=3600): _SECONDS,
    }
)

# http: metrics: the Prometheus endpoint /metrics, served by the opp-auth-metrics plugin (entry point
# METRICS_PLUGIN). Off by default; when on, only these networks may read it without an admin's token.
METRICS_PLUGIN = "metrics"
METRICS_DISTRIBUTION = "opp-auth-metrics"
DEFAULT_METRICS_NETWORKS = ["127.0.0.0/8", "::1/128"]

METRICS_SCHEMA = vol.Schema(
    {
        vol.Optional("enabled", default=False): bool,
        vol.Optional("allowed_networks", default=list(DEFAULT_METRICS_NETWORKS)): vol.All(
            lambda v: [] if v is None else [v] if not isinstance(v, list) else v, [_network]
        ),
    }
)

HTTP_SCHEMA = vol.All(
    vol.Schema(
        {
            vol.Optional("server_host", default="0.0.0.0"): vol.Any(str, [str]),
            vol.Optional("server_port", default=DEFAULT_PORT): vol.All(vol.Coerce(int), vol.Range(min=1, max=65535)),
            vol.Optional("base_url"): str,
            vol.Optional("ssl_certificate"): str,
            vol.Optional("ssl_peer_certificate"): str,
            vol.Optional("ssl_key"): str,
            vol.Optional("ssl_profile", default="modern"): vol.In(["modern", "intermediate"]),
            vol.Optional("cors_allowed_origins", default=DEFAULT_CORS): vol.All(
                lambda v: [v] if isinstance(v, str) else v, [str]
            ),
            vol.Optional("use_x_forwarded_for", default=False): bool,
            vol.Optional("trusted_proxies", default=[]): vol.All(
                lambda v: [v] if not isinstance(v, list) else v, [_network]
            ),
            vol.Optional("ip_ban_enabled", default=True): bool,
            # Home Assistant's (2023.5+): accepted so its http: block loads; pages here are never framed anyway.
            vol.Optional("use_x_frame_options"): bool,
            vol.Optional("login_attempts_threshold", default=-1): _threshold,
            vol.Optional("login_throttle", default=dict): LOGIN_THROTTLE_SCHEMA,
            vol.Optional("ban_allowlist", default=[]): vol.All(
                lambda v: [v] if not isinstance(v, list) else v, [_network]
            ),
            vol.Optional("api_password"): vol.All(vol.Coerce(str), vol.Length(min=1)),
            # Default: the generation of the directory's core block (filled in by validate_config).
            vol.Optional("auth_api"): vol.In(API_GENERATIONS, msg=f"must be one of {', '.join(API_GENERATIONS)}"),
            vol.Optional("metrics", default=dict): vol.All(lambda v: {} if v is None else v, METRICS_SCHEMA),
        }
    ),
    _proxies_pair,
)


@dataclass
class Config:
    """The validated configuration of one server."""

    config_dir: Path
    providers: list[tuple[type[AuthProvider], dict[str, Any]]] = field(default_factory=list)
    mfa_modules: list[tuple[type[MfaModule], dict[str, Any]]] = field(default_factory=list)
    http: dict[str, Any] = field(default_factory=dict)
    blocks: dict[str, Any] = field(default_factory=dict)
    filename: str = CONFIG_FILE
    refresh_token_expiry_days: int | None = 90
    mfa_required: str = MFA_EVERYWHERE
    # openpeerpower or homeassistant: the core block this directory uses.
    core_block: str = CORE_BLOCK_OPP
    # openpeerpower: storage: (validated by its backend's schema) and the backend class.
    storage: dict[str, Any] = field(default_factory=lambda: {"type": JSON_TYPE})
    storage_class: type[StorageBackend] = JsonBackend
    # Top-level blocks nothing here reads (automation:, sensor: ...), for check-config to name.
    unused_blocks: list[str] = field(default_factory=list)
    # The validated audit: block (audit.AUDIT_SCHEMA), every default filled in.
    audit: dict[str, Any] = field(default_factory=lambda: AUDIT_SCHEMA({}))


def ensure_config_dir(config_dir: Path) -> None:
    """Create a configuration directory with a default configuration.yaml when there is none."""
    config_dir.mkdir(parents=True, exist_ok=True)
    path = config_dir / CONFIG_FILE
    if not path.exists():
        path.write_text(DEFAULT_CONFIGURATION, encoding="utf-8")
        _LOGGER.info("Created %s", path)


def load_config(config_dir: str | Path, pm: OppAuthPluginManager, *, allow_insecure_example: bool = False) -> Config:
    """Read and validate configuration.yaml (raises ConfigError naming file, line and key)."""
    config_dir = Path(config_dir)
    path = config_dir / CONFIG_FILE
    if not path.exists():
        raise ConfigError(
            "not found. Create it (opp-auth serve creates a default one) or pass -c CONFIG_DIR.",
            filename=str(path),
        )
    raw = load_yaml(path, Secrets(config_dir))
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError("must be a mapping of blocks (openpeerpower:, http:, ...)", filename=CONFIG_FILE, line=1)
    return validate_config(raw, pm, config_dir=config_dir, allow_insecure_example=allow_insecure_example)


def validate_config(
    raw: dict[str, Any], pm: OppAuthPluginManager, *, config_dir: Path, allow_insecure_example: bool = False
) -> Config:
    """Validate loaded YAML: core block, http block, plugin blocks, then each provider and module."""
    block = _core_block(raw)
    core_raw = raw.get(block)
    if core_raw is None:
        core_raw = {}
    try:
        core = CORE_SCHEMA(core_raw)
    except vol.Invalid as err:
        raise _block_error(err, raw, block, core_raw) from None
    http_raw = raw.get("http") or {}
    try:
        http = HTTP_SCHEMA(http_raw)
    except vol.Invalid as err:
        raise _block_error(err, raw, "http", http_raw) from None
    http.setdefault("auth_api", API_HA if block == CORE_BLOCK_HA else API_OPP)
    audit_raw = raw.get(AUDIT_BLOCK)
    try:
        audit = AUDIT_SCHEMA({} if audit_raw is None else audit_raw)
    except vol.Invalid as err:
        raise _block_error(err, raw, AUDIT_BLOCK, audit_raw) from None
    if http["metrics"]["enabled"]:
        _check_metrics_plugin(pm, http_raw)

    config = Config(
        config_dir=config_dir,
        http=http,
        refresh_token_expiry_days=core["refresh_token_expiry_days"],
        mfa_required=core["mfa_required"],
        core_block=block,
        audit=audit,
    )
    config.storage_class, config.storage = _resolve_storage(
        pm, core.get("storage") or {"type": JSON_TYPE}, core_raw, block
    )
    provider_entries = core.get("auth_providers")
    providers_raw = core_raw.get("auth_providers") if isinstance(core_raw, dict) else None
    if provider_entries is None:
        # Home Assistant's default is its own local provider, over .storage/auth_provider.homeassistant.
        local = CORE_BLOCK_HA if block == CORE_BLOCK_HA else "openpeerpower"
        provider_entries, providers_raw = [{"type": local}], None
    if "api_password" in http and not any(p["type"] == "legacy_api_password" for p in provider_entries):
        _LOGGER.warning(
            "http: api_password is deprecated; it turns on the legacy_api_password auth provider. "
            f"Configure that provider under {block}: auth_providers instead."
        )
        provider_entries = [*provider_entries, {"type": "legacy_api_password", "api_password": http["api_password"]}]
    if "auth_mfa_modules" in core:
        mfa_entries, mfa_raw = core["auth_mfa_modules"], core_raw.get("auth_mfa_modules")
    else:
        installed = pm.mfa_classes
        mfa_entries = [dict(m) for m in DEFAULT_MFA_MODULES if m["type"] in installed]
        mfa_raw = None
    config.mfa_modules = _resolve(
        pm,
        "mfa module",
        pm.mfa_classes,
        mfa_entries,
        mfa_raw,
        (block, "auth_mfa_modules"),
        allow_insecure_example,
        None,
    )
    config.providers = _resolve(
        pm,
        "auth provider",
        pm.provider_classes,
        provider_entries,
        providers_raw,
        (block, "auth_providers"),
        allow_insecure_example,
        raw.get("http"),
    )
    config.blocks = _plugin_blocks(pm, raw)
    used = {block, "http", AUDIT_BLOCK, *config.blocks}
    config.unused_blocks = [str(key) for key in raw if key not in used]
    return config


def _check_metrics_plugin(pm: OppAuthPluginManager, http_raw: Any) -> None:
    """http: metrics: enabled needs the plugin that serves /metrics; say which, and why it is missing."""
    if pm.get_plugin(METRICS_PLUGIN) is not None:
        return
    failed = pm.entry_infos.get(METRICS_PLUGIN)
    if failed is not None and failed.error:
        why = f"{failed.distribution} {failed.version} is installed but failed to load: {failed.error}"
    else:
        why = f"it is served by the {METRICS_DISTRIBUTION} distribution, which is not installed: pip install {METRICS_DISTRIBUTION}"
    metrics_raw = http_raw.get("metrics") if isinstance(http_raw, dict) else None
    raise _located(f"Metrics are enabled but {why}", metrics_raw, ("http", "metrics", "enabled"))


def _resolve_storage(
    pm: OppAuthPluginManager, entry: dict[str, Any], core_raw: Any, block: str
) -> tuple[type[StorageBackend], dict[str, Any]]:
    """The backend class of ``storage: type:`` and the block as its schema validates it."""
    node = core_raw.get("storage") if isinstance(core_raw, dict) else None
    cls = pm.store_classes.get(entry["type"])
    if cls is None:
        raise _located(pm.unknown_type_message("storage", entry["type"]), node, (block, "storage", "type"))
    try:
        conf = cls.CONFIG_SCHEMA(entry)
    except vol.Invalid as err:
        raise config_error(err, node, (block, "storage")) from None
    return cls, conf


def _core_block(raw: dict[str, Any]) -> str:
    """Which core block the directory uses; both at once would leave one silently ignored."""
    present = [block for block in CORE_BLOCKS if block in raw]
    if len(present) == 2:
        raise _located(
            "Both openpeerpower: and homeassistant: are present; opp-auth reads one core block. "
            "Keep the one whose auth_providers and auth_mfa_modules you mean and remove the other.",
            raw,
            (CORE_BLOCK_HA,),
        )
    return present[0] if present else CORE_BLOCK_OPP


_PluginClass = TypeVar("_PluginClass", bound="AuthProvider | MfaModule")


def _resolve(
    pm: OppAuthPluginManager,
    kind: str,
    classes: dict[str, type[_PluginClass]],
    entries: list[dict[str, Any]],
    raw_entries: Any,
    path: tuple[Any, ...],
    allow_insecure_example: bool,
    http_raw: Any,
) -> list[tuple[type[_PluginClass], dict[str, Any]]]:
    """Find each entry's class (from `classes`), validate it with the class's schema, reject duplicates."""
    prefix = "provider" if kind == "auth provider" else "mfa"
    resolved: list[tuple[type[_PluginClass], dict[str, Any]]] = []
    seen: set[Any] = set()
    for index, entry in enumerate(entries):
        type_name = entry["type"]
        where_type: tuple[Any, ...] = (*path, index, "type")
        if isinstance(raw_entries, list) and index < len(raw_entries):
            node = raw_entries[index]
        elif type_name == "legacy_api_password" and http_raw is not None:
            # Added by http: api_password: errors point there, where the user wrote it.
            node, where_type = http_raw, ("http", "api_password")
        else:
            node = raw_entries
        if type_name == INSECURE_EXAMPLE and not allow_insecure_example:
            what = "auth provider" if prefix == "provider" else "mfa module"
            raise _located(f"The insecure_example {what} is for testing only.", node, where_type)
        cls = classes.get(type_name)
        if cls is None:
            failed = pm.failed_plugin_for(prefix, type_name)
            message = pm.unknown_type_message(kind if prefix == "provider" else "MFA module", type_name)
            if failed is not None:
                message = f"cannot start: {message}"
            raise _located(message, node, where_type)
        try:
            conf = cls.CONFIG_SCHEMA(entry)
        except vol.Invalid as err:
            raise config_error(err, node, (*path, index)) from None
        key = (type_name, conf.get("id")) if prefix == "provider" else (conf.get("id") or type_name)
        if key in seen:
            if prefix == "provider":
                msg = (
                    f"Duplicate auth provider {type_name} found. "
                    "Please add unique IDs if you want to have the same auth provider twice"
                )
            else:
                msg = (
                    f"Duplicate mfa module {type_name} found. "
                    "Please add unique IDs if you want to have the same mfa module twice"
                )
            raise _located(msg, node, (*path, index))
        seen.add(key)
        resolved.append((cls, conf))
    return resolved


def _block_error(err: vol.Invalid, raw: Any, block: str, value: Any) -> ConfigError:
    """config_error for a top-level block's value; a scalar value ("http: 1") has no line, so use its key's."""
    error = config_error(err, value, (block,))
    if error.line is None:
        err.prepend([block])
        error = config_error(err, raw)
    return error


def _located(message: str, node: Any, path: tuple[Any, ...]) -> ConfigError:
    """A ConfigError at the line of the path's last key in node, else at the node's line."""
    filename, line = where(node)
    key_line = getattr(node, "_key_lines", {}).get(path[-1]) if path else None
    return ConfigError(message, filename=filename or CONFIG_FILE, line=key_line or line, key_path=path)


def _plugin_blocks(pm: OppAuthPluginManager, raw: dict[str, Any]) -> dict[str, Any]:
    """Validate the top-level blocks that plugins registered (notify: and the like)."""
    schemas: dict[str, Any] = {}

    def register(block: str, schema: Any) -> None:
        """Record a plugin's block schema."""
        if block in (*CORE_BLOCKS, "http", AUDIT_BLOCK) or block in schemas:
            raise ConfigError(f"A plugin tried to own the '{block}:' block, which is already taken.")
        schemas[block] = schema

    pm.hook.opp_auth_register_config(register=register, pm=pm)
    blocks: dict[str, Any] = {}
    for block, schema in schemas.items():
        value = raw.get(block)
        try:
            blocks[block] = schema(value)
        except vol.Invalid as err:
            raise _block_error(err, raw, block, value) from None
    return blocks

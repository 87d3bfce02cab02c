"""YAML loading for configuration files, with secrets, includes and line tracking."""

from __future__ import annotations

import fnmatch
import logging
import os
import re
from collections.abc import Hashable
from typing import Any, TypeVar

import voluptuous as vol
import yaml

_LOGGER = logging.getLogger(__name__)

SECRET_YAML = "secrets.yaml"
# The C loader is much faster and still reports node marks; fall back when libyaml is absent.
_BaseLoader: type = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_SENSITIVE_KEY = re.compile(r"password|passwd|secret|token|api_?key|credential", re.IGNORECASE)


class ConfigError(Exception):
    """A configuration problem a person must fix; str() is the full human message."""

    def __init__(
        self,
        message: str,
        filename: str | None = None,
        line: int | None = None,
        key_path: tuple[Any, ...] = (),
        column: int | None = None,
    ) -> None:
        """Store the bare reason plus whatever location is known."""
        super().__init__(message)
        self.message, self.filename, self.line = message, filename, line
        self.key_path, self.column = tuple(key_path), column

    def __str__(self) -> str:
        """Render 'file, line N, column C, key a -> b: message', omitting unknown parts."""
        parts = [self.filename] if self.filename else []
        parts += [f"{k} {v}" for k, v in (("line", self.line), ("column", self.column)) if v is not None]
        if self.key_path:
            parts.append("key " + " -> ".join(str(k) for k in self.key_path))
        return f"{', '.join(parts)}: {self.message}" if parts else self.message


class _Located:
    """Per-key locations for a loaded container, since ints/bools/None cannot carry attributes."""

    __config_file__: str | None = None
    __line__: int | None = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        """Build like the underlying dict/list; location tables start empty."""
        super().__init__(*args, **kwargs)
        self._key_lines: dict[Any, int | None] = {}  # lists key these by index
        self._value_lines: dict[Any, int | None] = {}
        self._files: dict[Any, str | None] = {}  # only for entries merged from another file
        self._sensitive: set[Any] = set()  # entries that came from !secret / !env_var

    def _record(
        self,
        key: Any,
        key_line: int | None,
        value_line: int | None,
        filename: str | None = None,
        sensitive: bool = False,
    ) -> None:
        """Remember where one entry was written."""
        self._key_lines[key], self._value_lines[key] = key_line, value_line
        if filename is not None and filename != self.__config_file__:
            self._files[key] = filename
        if sensitive:
            self._sensitive.add(key)


class NodeDict(_Located, dict[Any, Any]):
    """A loaded mapping that knows its file and line and those of its keys."""


class NodeList(_Located, list[Any]):
    """A loaded sequence that knows its file and line and those of its items (keyed by index)."""


class NodeStr(str):
    """A loaded string that knows its file and line."""

    __config_file__: str | None = None
    __line__: int | None = None
    _is_secret: bool = False  # came from !secret / !env_var: never echo it


def where(value: Any) -> tuple[str | None, int | None]:
    """File name and 1-based line of a loaded node (None, None if unknown)."""
    return getattr(value, "__config_file__", None), getattr(value, "__line__", None)


_NodeT = TypeVar("_NodeT", bound="_Located | NodeStr")


def _mark(obj: _NodeT, filename: str | None, line: int | None) -> _NodeT:
    """Attach a location to a node object and return it."""
    obj.__config_file__, obj.__line__ = filename, line
    return obj


class Secrets:
    """Resolves !secret NAME by reading secrets.yaml in the including file's folder, then parent folders up to the config dir (like Home Assistant)."""

    def __init__(self, config_dir: str | os.PathLike[str]) -> None:
        """Remember the config dir; secrets files are read lazily and cached."""
        self.config_dir = os.path.abspath(config_dir)
        self._cache: dict[str, dict[Any, Any] | None] = {}

    def display(self, path: str) -> str:
        """Path relative to the config dir when inside it, else the absolute path."""
        path = os.path.abspath(path)
        return os.path.relpath(path, self.config_dir) if self._inside(path) else path

    def get(self, requester: str, name: str) -> Any:
        """Value of secret `name` for the file `requester`; ConfigError (without location) if absent."""
        folders, folder = [], os.path.dirname(os.path.abspath(requester))
        # Like HA, only folders inside the config dir are searched, nearest first.
        while self._inside(folder) and folder not in folders:
            folders.append(folder)
            folder = os.path.dirname(folder)
        files = [os.path.join(f, SECRET_YAML) for f in folders]
        for path in files:
            secrets = self._load(path)
            if secrets is not None and name in secrets:
                _LOGGER.debug("Secret %s retrieved from %s", name, self.display(path))
                return secrets[name]
        if all(self._cache.get(p) is None for p in files):
            looked = ", ".join(self.display(p) for p in files) or "nowhere inside the config dir"
            raise ConfigError(f"{SECRET_YAML} not found (looked for {looked}), so Secret {name} not defined")
        raise ConfigError(f"Secret {name} not defined")

    def _inside(self, path: str) -> bool:
        """Whether an absolute path is the config dir or below it."""
        return os.path.commonpath([path, self.config_dir]) == self.config_dir

    def _load(self, path: str) -> dict[Any, Any] | None:
        """Secrets in one secrets.yaml, or None if there is no such file."""
        if path not in self._cache:
            if not os.path.isfile(path):
                self._cache[path] = None
            else:
                data = _load_file(path, self, allow_secrets=False, stack=())
                if not isinstance(data, dict):
                    raise ConfigError(
                        "secrets file must be a mapping of name: value", self.display(path), where(data)[1]
                    )
                # HA lets secrets.yaml switch on debug logging; we accept and ignore it.
                self._cache[path] = {k: v for k, v in data.items() if k != "logger"}
        return self._cache[path]


def _find_yaml_files(directory: str) -> list[str]:
    """All *.yaml files below `directory`, sorted, skipping hidden files/folders and secrets.yaml."""
    found = []
    for root, dirs, files in os.walk(directory):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        found += [
            os.path.join(root, f)
            for f in sorted(files)
            if not f.startswith(".") and f != SECRET_YAML and fnmatch.fnmatch(f, "*.yaml")
        ]
    return found


class _Loader(_BaseLoader):  # type: ignore[misc]
    """SafeLoader that builds Node* objects and understands the Home Assistant tags."""

    def __init__(self, text: str, path: str, secrets: Secrets, allow_secrets: bool, stack: tuple[str, ...]) -> None:
        """Prepare to load `text`, which was read from `path`."""
        super().__init__(text)
        self.path, self.secrets, self.allow_secrets, self.stack = path, secrets, allow_secrets, stack
        self.display = secrets.display(path)

    def error(self, node: yaml.Node, message: str) -> ConfigError:
        """A ConfigError located at `node` in this file."""
        return ConfigError(message, self.display, node.start_mark.line + 1)

    def construct_object(self, node: yaml.Node, deep: bool = False) -> Any:
        """Construct a node, turning stray exceptions (e.g. a bad date) into located ConfigErrors."""
        try:
            return super().construct_object(node, deep=True)
        except (ConfigError, yaml.YAMLError, RecursionError):
            raise
        except Exception as exc:  # noqa: BLE001 - e.g. ValueError from `2021-13-45`
            raise self.error(node, f"invalid value: {exc}") from None

    def scalar_arg(self, node: yaml.Node) -> str:
        """The non-empty scalar argument of a tag like !include."""
        if not isinstance(node, yaml.ScalarNode) or not str(node.value).strip():
            raise self.error(node, f"{node.tag} needs a single non-empty value")
        return str(node.value).strip()

    def relative(self, node: yaml.Node) -> str:
        """Path named by a tag argument, relative to the including file's folder."""
        return os.path.join(os.path.dirname(self.path), self.scalar_arg(node))

    def load_other(self, path: str, node: yaml.Node) -> Any:
        """Load an included file with the same secrets, refusing include loops."""
        if os.path.realpath(path) in self.stack:
            raise self.error(node, f"include loop: {self.secrets.display(path)} is already being loaded")
        return _load_file(path, self.secrets, self.allow_secrets, self.stack)


def _construct_map(loader: _Loader, node: yaml.Node) -> NodeDict:
    """Build a NodeDict, rejecting duplicate keys and recording per-key lines."""
    if not isinstance(node, yaml.MappingNode):
        raise loader.error(node, "expected a mapping")
    seen: dict[Any, int] = {}
    for key_node, _ in node.value:
        if key_node.tag == "tag:yaml.org,2002:merge":
            continue  # keys from `<<:` may legitimately be overridden
        key = loader.construct_object(key_node)
        try:
            first = seen.get(key)
        except TypeError:
            raise loader.error(key_node, "a mapping key must be a plain value") from None
        if first is not None:
            raise loader.error(key_node, f"duplicate key '{key}' (first defined on line {first})")
        seen[key] = key_node.start_mark.line + 1
    loader.flatten_mapping(node)
    result = _mark(NodeDict(), loader.display, node.start_mark.line + 1)
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node)
        result[key] = loader.construct_object(value_node)
        result._record(
            key,
            key_node.start_mark.line + 1,
            value_node.start_mark.line + 1,
            sensitive=value_node.tag in ("!secret", "!env_var"),
        )
    return result


def _construct_seq(loader: _Loader, node: yaml.Node) -> NodeList:
    """Build a NodeList recording each item's line."""
    if not isinstance(node, yaml.SequenceNode):
        raise loader.error(node, "expected a sequence")
    result = _mark(NodeList(), loader.display, node.start_mark.line + 1)
    for index, item in enumerate(node.value):
        result.append(loader.construct_object(item))
        line = item.start_mark.line + 1
        result._record(index, line, line, sensitive=item.tag in ("!secret", "!env_var"))
    return result


def _construct_str(loader: _Loader, node: yaml.Node) -> NodeStr:
    """Build a NodeStr carrying its location."""
    return _mark(NodeStr(loader.construct_scalar(node)), loader.display, node.start_mark.line + 1)


def _secret(loader: _Loader, node: yaml.Node) -> Any:
    """Resolve !secret NAME; the value itself is never logged or put in a message."""
    name = loader.scalar_arg(node)
    if not loader.allow_secrets:
        raise loader.error(node, f"!secret cannot be used in {SECRET_YAML}")
    try:
        value = loader.secrets.get(loader.path, name)
    except ConfigError as err:
        if err.filename is None:  # locate "not defined" at the reference, not in secrets.yaml
            raise loader.error(node, err.message) from None
        raise
    if isinstance(value, str):
        value = _mark(NodeStr(value), loader.display, node.start_mark.line + 1)
        value._is_secret = True
    return value


def _env_var(loader: _Loader, node: yaml.Node) -> NodeStr:
    """Resolve !env_var NAME [DEFAULT]; values are treated as sensitive like secrets."""
    name, *default = loader.scalar_arg(node).split()
    if name not in os.environ and not default:
        raise loader.error(node, f"Environment variable {name} not defined")
    value = _mark(NodeStr(os.environ.get(name, " ".join(default))), loader.display, node.start_mark.line + 1)
    value._is_secret = True
    return value


def _include(loader: _Loader, node: yaml.Node) -> Any:
    """Resolve !include FILE relative to the including file."""
    path = loader.relative(node)
    if not os.path.isfile(path):
        raise loader.error(node, f"included file '{loader.scalar_arg(node)}' not found")
    return loader.load_other(path, node)


def _include_dir(loader: _Loader, node: yaml.Node) -> Any:
    """Resolve the four !include_dir_* tags the way Home Assistant does."""
    directory = loader.relative(node)
    if not os.path.isdir(directory):
        raise loader.error(node, f"included directory '{loader.scalar_arg(node)}' not found")
    kind, is_list = node.tag[len("!include_dir_") :], node.tag.endswith("list")
    result: Any = _mark(NodeList() if is_list else NodeDict(), loader.display, node.start_mark.line + 1)
    for path in _find_yaml_files(directory):
        data, shown = loader.load_other(path, node), loader.secrets.display(path)
        if kind in ("list", "named"):
            key = len(result) if is_list else os.path.splitext(os.path.basename(path))[0]
            if not is_list and key in result:
                raise loader.error(node, f"two files named '{key}' in '{loader.scalar_arg(node)}'")
            if is_list:
                result.append(data)
            else:
                result[key] = data
            result._record(key, where(data)[1], where(data)[1], shown)
            continue
        if data == {}:
            continue  # an empty file loads as {}; HA skips it silently
        if not isinstance(data, NodeList if is_list else NodeDict):
            raise ConfigError(f"expected a {'list' if is_list else 'mapping'} to merge", shown, where(data)[1])
        for src_key in range(len(data)) if is_list else list(data):
            key = len(result) if is_list else src_key
            if not is_list and key in result:
                raise ConfigError(
                    f"duplicate key '{key}' (also defined in {result._files.get(key)})", shown, data._key_lines.get(key)
                )
            if is_list:
                result.append(data[src_key])
            else:
                result[key] = data[src_key]
            result._record(
                key,
                data._key_lines.get(src_key),
                data._value_lines.get(src_key),
                data._files.get(src_key, data.__config_file__),
                src_key in data._sensitive,
            )
    return result


_TAGS = {
    "tag:yaml.org,2002:map": _construct_map,
    "tag:yaml.org,2002:seq": _construct_seq,
    "tag:yaml.org,2002:str": _construct_str,
    "!secret": _secret,
    "!env_var": _env_var,
    "!include": _include,
    **{f"!include_dir_{kind}": _include_dir for kind in ("list", "named", "merge_list", "merge_named")},
}
for _tag, _constructor in _TAGS.items():
    _Loader.add_constructor(_tag, _constructor)


def _unknown_tag(loader: _Loader, node: yaml.Node) -> Any:
    """Reject any tag we do not understand (the None key catches every unregistered tag)."""
    raise loader.error(node, f"unknown tag {node.tag.replace('tag:yaml.org,2002:', '!!')}")


_Loader.add_constructor(None, _unknown_tag)


def _load_file(path: str, secrets: Secrets, allow_secrets: bool, stack: tuple[str, ...]) -> Any:
    """Read, decode and construct one YAML file; every failure becomes a ConfigError."""
    shown = secrets.display(path)
    try:
        with open(path, "rb") as handle:
            raw = handle.read()
        text = raw.decode("utf-8-sig")
    except FileNotFoundError:
        raise ConfigError("file not found", shown) from None
    except OSError as exc:
        raise ConfigError(f"cannot read file: {exc.strerror or exc}", shown) from None
    except UnicodeDecodeError as exc:
        raise ConfigError("file is not valid UTF-8", shown, raw[: exc.start].count(b"\n") + 1) from None
    try:
        # The pure-Python reader already rejects bad characters while being constructed.
        loader = _Loader(text, path, secrets, allow_secrets, (*stack, os.path.realpath(path)))
        data = loader.get_single_data()
    except ConfigError:
        raise
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        problem = ": ".join(p for p in (exc.context, exc.problem) if p) or "invalid YAML"
        raise ConfigError(problem, shown, mark and mark.line + 1, column=mark and mark.column + 1) from None
    except yaml.reader.ReaderError as exc:
        raise ConfigError(exc.reason, shown, text[: exc.position].count("\n") + 1) from None
    except RecursionError:
        raise ConfigError("YAML is nested too deeply", shown) from None
    except Exception as exc:
        _LOGGER.debug("Unexpected error loading %s", shown, exc_info=True)
        raise ConfigError(f"cannot load YAML: {type(exc).__name__}", shown) from None
    # HA treats an empty (or comment-only) file as an empty mapping.
    return _mark(NodeDict(), shown, 1) if data is None else data


def load_yaml(path: str | os.PathLike[str], secrets: Secrets | None = None) -> Any:
    """Load a YAML file with !secret, !include (and friends) resolved; every mapping/sequence/scalar remembers file and line."""
    path = os.fspath(path)
    if secrets is None:
        secrets = Secrets(os.path.dirname(os.path.abspath(path)))
    return _load_file(path, secrets, allow_secrets=True, stack=())


def config_error(err: vol.Invalid | vol.MultipleInvalid, config: Any, prefix_path: tuple[Any, ...] = ()) -> ConfigError:
    """Turn a voluptuous error raised while validating `config` (a loaded node) into a ConfigError that names file, line, key path and what is wrong."""
    errors = list(getattr(err, "errors", None) or [err])
    first = errors[0]
    while isinstance(first, vol.MultipleInvalid) and first.errors:
        first = first.errors[0]
    path = [k.schema if isinstance(k, vol.Marker) else k for k in getattr(first, "path", [])]
    filename, line = where(config)
    node, found, secret = config, True, getattr(config, "_is_secret", False) is True
    for key in path:
        # Only descend into containers: indexing a string would "find" a character.
        if isinstance(node, list):
            found = type(key) is int and 0 <= key < len(node)
        else:
            found = isinstance(node, dict) and isinstance(key, Hashable) and key in node
        if not found:
            break
        child = node[key]
        loc: tuple[str | None, int | None] = (None, None)
        if isinstance(node, _Located) and node._key_lines.get(key) is not None:
            loc = (node._files.get(key, node.__config_file__), node._key_lines[key])
        if loc[1] is None:
            loc = where(child)
        if loc[1] is not None:
            filename, line = loc
        secret = (isinstance(node, _Located) and key in node._sensitive) or getattr(child, "_is_secret", False) is True
        node = child
    names = [k for k in (*prefix_path, *path) if isinstance(k, str)]
    secret = secret or bool(names and _SENSITIVE_KEY.search(names[-1]))
    msg, last = str(getattr(first, "msg", first)), path[-1] if path else None
    if msg == "extra keys not allowed" and path:
        msg = f"unknown key '{last}'"
    elif msg == "required key not provided" and path:
        msg = f"missing required key '{last}'"
    elif found and secret:
        if node is not None and str(node):  # a validator may have echoed the value itself
            msg = msg.replace(str(node), "<hidden>")
    elif found and node is not None and not isinstance(node, (dict, list)):
        shown = repr(str(node) if isinstance(node, str) else node)  # NodeStr -> plain repr
        msg += f". Got {shown if len(shown) <= 80 else shown[:77] + '...'}"
    if len(errors) > 1:
        msg += f" (and {len(errors) - 1} more error{'s' if len(errors) > 2 else ''})"
    key_path = tuple(str(k) if isinstance(k, str) else k for k in (*prefix_path, *path))
    return ConfigError(msg, filename, line, key_path)

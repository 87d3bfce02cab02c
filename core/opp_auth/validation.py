"""What may reach the store or a JSON answer: valid Unicode, bounded strings, bounded nesting.

Every way in calls this module before acting: HTTP JSON bodies
(``http/view.py`` ``read_json``), form posts (``read_form``) and websocket
messages (``http/websocket_api.py``) are checked here, so a value that could
not be written to ``.storage`` (a lone surrogate such as ``"\\ud800"``, a
float that JSON cannot spell) or could not be encoded at all (nesting that
overflows the stack) is refused with a 4xx / ``invalid_format`` instead of
poisoning memory and failing every later save.

The store calls :func:`check_storable` on a record *before* it changes memory,
so a value that slipped past an edge (a provider's user meta, a plugin) is
refused there too, and memory never holds what the disk cannot.

Limits (docs/security.md quotes these names and numbers):

- :data:`MAX_JSON_DEPTH`: arrays and objects nested at most 32 deep, checked
  on the raw text before parsing (:func:`check_json_text`) and on values.
- :data:`MAX_STRING_LENGTH`: any one string (or object key) at most 65,536
  characters; fields with a meaning have tighter limits in their schemas.
- :data:`MAX_JSON_BODY_BYTES`: an HTTP JSON body at most 1 MiB (413 above).
- :data:`MAX_FORM_FIELDS` / :data:`MAX_FORM_BYTES`: a form post has at most 64
  fields and 64 KiB (413 above); every part must be UTF-8 (or ASCII).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable
from itertools import accumulate
from typing import Any

from .storage import StorageError

MAX_JSON_DEPTH = 32
MAX_STRING_LENGTH = 65536
MAX_JSON_BODY_BYTES = 1024 * 1024
MAX_FORM_FIELDS = 64
MAX_FORM_BYTES = 64 * 1024
# Character sets a form part may declare: UTF-8 and its subset ASCII, under their common names.
FORM_CHARSETS = frozenset({"utf-8", "utf8", "us-ascii", "ascii"})

CODE_INVALID_FORMAT = "invalid_format"


class InvalidData(StorageError, ValueError):
    """A value that may not be stored or answered; str() says what and where (a JSON path).

    A StorageError too (the change cannot be stored), so callers that handle those refuse
    it as well; the HTTP pipeline and the websocket answer it 400 / ``invalid_format``,
    never 503, by catching it first.
    """

    code = CODE_INVALID_FORMAT


# A JSON string literal (escapes included), or an unterminated one running to the end of the text.
# Every quote is consumed by one of the two, so the scan is linear: there is no restart per quote.
_JSON_STRING = re.compile(rb'"(?:[^"\\]*+(?:\\.[^"\\]*+)*+"|.*)', re.DOTALL)
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")
_BRACKET_STEPS = bytes.maketrans(b"[{]}", b"\x01\x01\xff\xff")


def json_depth(text: bytes | str) -> int:
    """How deeply arrays and objects nest in JSON text, found without parsing (brackets in strings do not count).

    A few C-speed passes over the text (about 0.1 s for 4 MiB of brackets);
    malformed text gets a number too, and the parser refuses it afterwards.
    """
    data = text.encode("utf-8", "surrogatepass") if isinstance(text, str) else text
    brackets = _JSON_STRING.sub(b"", data).translate(_BRACKET_STEPS, _NOT_BRACKETS)
    if not brackets:
        return 0
    return max(0, max(accumulate(memoryview(brackets).cast("b"))))


def check_json_text(text: bytes | str, *, max_bytes: int | None = None, max_depth: int = MAX_JSON_DEPTH) -> None:
    """Refuse JSON text that is too large or nests too deeply, before any parser sees it."""
    if max_bytes is not None and len(text) > max_bytes:
        raise InvalidData(f"JSON text is larger than {max_bytes} bytes")
    # Fewer opening brackets than the limit cannot nest deeper: most messages stop here.
    if isinstance(text, str):
        opening = text.count("[") + text.count("{")
    else:
        opening = text.count(b"[") + text.count(b"{")
    if opening <= max_depth:
        return
    if json_depth(text) > max_depth:
        raise InvalidData(f"JSON nested deeper than {max_depth} levels")


def _refuse_constant(name: str) -> Any:
    """NaN and Infinity are not JSON: no client could read them back."""
    raise InvalidData(f"{name} is not a valid JSON number")


def loads(
    text: bytes | str,
    *,
    max_bytes: int | None = None,
    max_depth: int = MAX_JSON_DEPTH,
    max_length: int = MAX_STRING_LENGTH,
    what: str = "value",
) -> Any:
    """Parse JSON text that passes every limit; InvalidData (a ValueError) otherwise.

    Bytes must be UTF-8 (a byte order mark is allowed). Malformed JSON raises
    json.JSONDecodeError, also a ValueError.
    """
    check_json_text(text, max_bytes=max_bytes, max_depth=max_depth)
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8-sig")
        except UnicodeDecodeError as err:
            raise InvalidData(f"JSON text is not UTF-8 (byte {err.start})") from None
    try:
        value = json.loads(text, parse_constant=_refuse_constant)
    except RecursionError:  # the pre-scan makes this unreachable; kept so no input can raise it
        raise InvalidData(f"JSON nested deeper than {max_depth} levels") from None
    check_value(value, max_depth=max_depth, max_length=max_length, what=what)
    return value


def check_string(value: str, *, max_length: int = MAX_STRING_LENGTH, what: str = "value") -> None:
    """Refuse a string that is too long or is not a sequence of Unicode scalar values (lone surrogates)."""
    problem = _string_problem(value, max_length)
    if problem is not None:
        raise InvalidData(f"{what} {problem}")


def _string_problem(value: str, max_length: int) -> str | None:
    """What is wrong with a string, or None."""
    if len(value) > max_length:
        return f"is longer than {max_length} characters"
    if not value.isascii():
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as err:
            return f"is not valid Unicode (a lone surrogate U+{ord(value[err.start]):04X} at {err.start})"
    return None


def _problem(value: Any, depth: int, max_depth: int, max_length: int) -> str | None:
    """What is wrong with one node itself (not its children), or None."""
    kind = type(value)
    if kind is str:
        return _string_problem(value, max_length)
    if kind is dict or kind is list or kind is tuple:
        if depth >= max_depth:
            return f"is nested deeper than {max_depth} levels"
        return None
    if value is None or kind is bool or kind is int:
        return None
    if kind is float:
        return None if math.isfinite(value) else "is not a finite number"
    return f"is a {kind.__name__}, which JSON cannot hold"


def _children(value: Any) -> Iterable[tuple[Any, Any, bool]]:
    """(key or index, child, child-is-a-key) of a container."""
    if type(value) is dict:
        for key, item in value.items():
            yield key, key, True
            yield key, item, False
    elif type(value) is list or type(value) is tuple:
        for index, item in enumerate(value):
            yield index, item, False


def _path_text(path: list[Any]) -> str:
    """A JSON path such as value['a'][0] for a message (keys shown safely escaped)."""
    return "".join(f"[{json.dumps(p) if isinstance(p, str) else p}]" for p in path)


def check_value(
    value: Any, *, max_depth: int = MAX_JSON_DEPTH, max_length: int = MAX_STRING_LENGTH, what: str = "value"
) -> None:
    """Refuse a value that JSON storage or a JSON answer could not hold exactly.

    Allowed: None, bool, int, finite float, str of Unicode scalar values at
    most max_length long, and lists/tuples/dicts (string keys) nested at most
    max_depth deep. The walk is iterative, so no value can overflow the stack.
    """
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        kind = type(item)
        if kind is str:
            if len(item) > max_length or not item.isascii():
                if _string_problem(item, max_length) is not None:
                    _raise_located(value, max_depth, max_length, what)
            continue
        if kind is dict:
            if depth >= max_depth:
                _raise_located(value, max_depth, max_length, what)
            for key, child in item.items():
                if type(key) is not str:
                    _raise_located(value, max_depth, max_length, what)
                stack.append((key, depth + 1))
                stack.append((child, depth + 1))
            continue
        if kind is list or kind is tuple:
            if depth >= max_depth:
                _raise_located(value, max_depth, max_length, what)
            stack.extend((child, depth + 1) for child in item)
            continue
        if _problem(item, depth, max_depth, max_length) is not None:
            _raise_located(value, max_depth, max_length, what)


def _raise_located(value: Any, max_depth: int, max_length: int, what: str) -> None:
    """Walk again, this time keeping paths, and raise InvalidData naming the first bad place."""
    stack: list[tuple[Any, int, list[Any], bool]] = [(value, 0, [], False)]
    while stack:
        item, depth, path, is_key = stack.pop()
        if is_key and type(item) is not str:
            raise InvalidData(f"{what}{_path_text(path[:-1])} has a key that is not a string")
        problem = _problem(item, depth, max_depth, max_length)
        if problem is not None:
            where = f"{what}{_path_text(path[:-1])} has a key that" if is_key else f"{what}{_path_text(path)}"
            raise InvalidData(f"{where} {problem}")
        for key, child, child_is_key in reversed(list(_children(item))):
            stack.append((child, depth + 1, [*path, key], child_is_key))
    raise InvalidData(f"{what} cannot be stored")  # pragma: no cover - the fast walk found a problem


def check_storable(record: Any, what: str = "record") -> None:
    """The store's guard, called before memory changes: refuse what the file could not hold."""
    check_value(record, what=what)

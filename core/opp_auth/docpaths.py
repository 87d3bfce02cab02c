"""Paths into a plugin's document: what ``async_save_changes`` writes and a store replays.

A path is a chain of steps from the document's root, each one of:

- a string: the entry of that key in a dict;
- a one-item dict ``{field: value}``: the first item of a list whose ``field`` equals
  ``value``. A document kept as a list of records (the local provider's logins, in
  Open Peer Power's format) is saved item by item this way:
  ``("users", {"username": "paulus"})``.

Setting a path creates the levels it passes through (a dict for a string step, a list
item ``{field: value}`` for a selector); setting a selector that matches nothing
appends the value. Deleting a path that is not there does nothing. Every store applies
the same rules, so a document replayed from a journal or from database rows is the
one its server had in memory.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Sequence
from typing import Any

MISSING: Any = object()
"""What :func:`value_at` returns for a path with nothing at its end."""

Step = str | dict[str, Any]


def is_step(step: Any) -> bool:
    """Whether step is a string key or a one-item selector with a string field and a string or int value."""
    if isinstance(step, str):
        return True
    if isinstance(step, dict) and len(step) == 1:
        ((field, value),) = step.items()
        # A string or a whole number: values that JSON and Python compare alike (1, 1.0 and true are
        # one value to Python, three to a database row's text; NaN equals nothing).
        return isinstance(field, str) and (isinstance(value, str) or (type(value) is int))
    return False


def check_path(path: Iterable[Any]) -> list[Step]:
    """The path as a list of steps; ValueError naming the first step that is neither kind."""
    steps = list(path)
    if not steps:
        raise ValueError("a document path needs at least one step")
    for i, step in enumerate(steps):
        if not is_step(step):
            raise ValueError(f"not a document path step: {step!r} (a key, or a one-item {{field: value}} selector)")
        if i and not isinstance(step, str) and not isinstance(steps[i - 1], str):
            raise ValueError("a selector must follow a key (the items a selector finds are records, not lists)")
    return steps


def _index(items: list[Any], selector: dict[str, Any]) -> int:
    """The index of the first dict item matching selector, or -1."""
    ((field, value),) = selector.items()
    for i, item in enumerate(items):
        if isinstance(item, dict) and field in item and type(item[field]) is type(value) and item[field] == value:
            return i
    return -1


def value_at(data: Any, path: Sequence[Step]) -> Any:
    """What is at path in data, or MISSING."""
    node = data
    for step in path:
        if isinstance(step, str):
            node = node.get(step, MISSING) if isinstance(node, dict) else MISSING
        else:
            i = _index(node, step) if isinstance(node, list) else -1
            node = node[i] if i >= 0 else MISSING
        if node is MISSING:
            return MISSING
    return node


def _empty_for(step: Step) -> Any:
    """The container a step reads from."""
    return {} if isinstance(step, str) else []


def set_at(data: Any, path: Sequence[Step], value: Any) -> Any:
    """data with value at path (levels created, containers of the wrong kind replaced); the new root.

    path must have passed check_path.
    """
    root: Any = data if isinstance(data, dict if isinstance(path[0], str) else list) else _empty_for(path[0])
    node: Any = root
    for step, following in itertools.pairwise(path):
        kind = dict if isinstance(following, str) else list
        if isinstance(step, str):
            child = node.get(step)
            if not isinstance(child, kind):
                child = node[step] = kind()
        else:
            i = _index(node, step)
            if i < 0:
                node.append(dict(step))
                i = len(node) - 1
            # The item found is the record the next step (a key: check_path) reads from.
            child = node[i]
        node = child
    last = path[-1]
    if isinstance(last, str):
        node[last] = value
    else:
        i = _index(node, last)
        if i >= 0:
            node[i] = value
        else:
            node.append(value)
    return root


def delete_at(data: Any, path: Sequence[Step]) -> Any:
    """data without the entry at path (nothing happens when it is not there); the root."""
    parent = value_at(data, path[:-1]) if len(path) > 1 else data
    last = path[-1]
    if isinstance(last, str):
        if isinstance(parent, dict):
            parent.pop(last, None)
    elif isinstance(parent, list):
        i = _index(parent, last)
        if i >= 0:
            del parent[i]
    return data


def apply_record(data: Any, record: dict[str, Any]) -> Any:
    """Apply one ``{"t": "set" | "del", "p": path, "v": value}`` record; the new root.

    ValueError when the record is not one (a store logs and skips it).
    """
    kind = record.get("t")
    keys = record.get("p")
    if kind not in ("set", "del") or not isinstance(keys, list):
        raise ValueError("not a set or del record")
    path = check_path(keys)
    if kind == "set":
        return set_at(data, path, record.get("v"))
    return delete_at(data, path)

"""Document paths: the rules every store replays a plugin's path saves by (opp_auth.docpaths)."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from opp_auth import StorageBackend
from opp_auth.docpaths import MISSING, apply_record, check_path, delete_at, set_at, value_at

ALICE = {"username": "alice"}


def test_keys_and_selectors_find_values() -> None:
    data = {"users": [{"username": "alice", "password": "a"}, {"username": "bob", "password": "b"}], "n": {"x": 1}}
    assert value_at(data, ["users", {"username": "bob"}]) == {"username": "bob", "password": "b"}
    assert value_at(data, ["users", {"username": "bob"}, "password"]) == "b"
    assert value_at(data, ["n", "x"]) == 1
    assert value_at(data, ["users", {"username": "carol"}]) is MISSING
    assert value_at(data, ["n", {"username": "bob"}]) is MISSING  # a selector on a dict finds nothing
    assert value_at(data, ["users", "0"]) is MISSING  # a key on a list finds nothing
    assert value_at(None, ["users"]) is MISSING


def test_setting_a_selector_replaces_the_match_or_appends() -> None:
    data: Any = {"users": [{"username": "alice", "password": "a"}]}
    data = set_at(data, ["users", ALICE], {"username": "alice", "password": "A"})
    data = set_at(data, ["users", {"username": "bob"}], {"username": "bob", "password": "b"})
    assert data == {"users": [{"username": "alice", "password": "A"}, {"username": "bob", "password": "b"}]}
    data = set_at(data, ["users", {"username": "carol"}, "password"], "c")  # the item is created
    assert data["users"][-1] == {"username": "carol", "password": "c"}


def test_setting_creates_levels_and_replaces_containers_of_the_wrong_kind() -> None:
    assert set_at(None, ["a", "b"], 1) == {"a": {"b": 1}}
    assert set_at({"a": 5}, ["a", "b"], 1) == {"a": {"b": 1}}
    assert set_at({"a": {"b": 1}}, ["a", ALICE], ALICE) == {"a": [ALICE]}
    assert set_at(None, [ALICE], ALICE) == [ALICE]  # a document that is itself a list of records


def test_deleting_removes_only_the_match_and_tolerates_absence() -> None:
    data: Any = {"users": [{"username": "alice"}, {"username": "bob"}, {"username": "alice"}]}
    delete_at(data, ["users", ALICE])
    assert data == {"users": [{"username": "bob"}, {"username": "alice"}]}  # the first match only
    delete_at(data, ["users", {"username": "nobody"}])
    delete_at(data, ["missing", "deeper"])
    delete_at(data, ["users", {"username": "bob"}, "password"])
    assert data == {"users": [{"username": "bob"}, {"username": "alice"}]}
    assert delete_at(None, ["x"]) is None


@pytest.mark.parametrize(
    "path",
    [
        [],
        [1],
        [None],
        [["users"]],
        [{}],
        [{"a": 1, "b": 2}],
        [{1: "a"}],
        [{"a": {"nested": 1}}],
        ["users", {"n": True}],  # true, 1 and 1.0 are one value to Python, three as stored text
        ["users", {"n": 1.0}],
        ["users", {"n": float("nan")}],
        ["users", {"n": None}],
        ["users", ALICE, ALICE],  # a selector's item is a record: the next step is a key
    ],
)
def test_malformed_paths_are_refused(path: list[Any]) -> None:
    with pytest.raises(ValueError):
        check_path(path)
    with pytest.raises(ValueError):
        apply_record({}, {"t": "set", "p": path, "v": 1})


def test_records_that_are_not_set_or_del_are_refused() -> None:
    for record in ({"t": "put", "p": ["a"]}, {"t": "set", "p": "a"}, {"p": ["a"]}):
        with pytest.raises(ValueError):
            apply_record({}, record)


def test_the_public_seam_exposes_the_same_rules() -> None:
    """Store plugins reach the rules through StorageBackend (the public API), not the core's modules."""
    assert StorageBackend.check_path(["users", ALICE]) == ["users", ALICE]
    assert StorageBackend.value_at({"users": [ALICE]}, ["users", ALICE]) == ALICE
    assert StorageBackend.value_at({}, ["x"]) is StorageBackend.MISSING
    assert StorageBackend.apply_path_record(None, {"t": "set", "p": ["users", ALICE], "v": ALICE}) == {"users": [ALICE]}


NAMES = st.sampled_from(["alice", "bob", "carol", "Dave", "émile", " spaced "])
OPS = st.lists(
    st.tuples(st.sampled_from(["add", "password", "remove", "rename"]), NAMES, NAMES, st.integers(0, 9)),
    max_size=40,
)


@settings(max_examples=200, deadline=None)
@given(OPS)
def test_replaying_the_saved_paths_gives_what_memory_holds(ops: list[tuple[str, str, str, int]]) -> None:
    """A list-of-records document changed in memory (as the local provider does) and saved path by path:
    the records replayed over the document as it was give the same logins."""
    live: dict[str, Any] = {"users": [{"username": "alice", "password": "0"}]}
    start = copy.deepcopy(live)
    journal: list[dict[str, Any]] = []

    def save(*names: str) -> None:
        for name in names:
            path = check_path(["users", {"username": name}])
            node = value_at(live, path)
            journal.append(
                {"t": "del", "p": path} if node is MISSING else {"t": "set", "p": path, "v": copy.deepcopy(node)}
            )

    def find(name: str) -> dict[str, Any] | None:
        return next((u for u in live["users"] if u["username"] == name), None)

    for op, name, other, n in ops:
        entry = find(name)
        if op == "add" and entry is None:
            live["users"].append({"username": name, "password": str(n)})
            save(name)
        elif op == "password" and entry is not None:
            entry["password"] = str(n)
            save(name)
        elif op == "remove" and entry is not None:
            live["users"].remove(entry)
            save(name)
        elif op == "rename" and entry is not None and find(other) is None:
            entry["username"] = other
            save(name, other)
    replayed: Any = copy.deepcopy(start)
    for record in journal:
        replayed = apply_record(replayed, record)

    def logins(data: Any) -> list[tuple[str, str]]:
        return sorted((u["username"], u["password"]) for u in data["users"])

    assert logins(replayed) == logins(live)


def test_a_selector_matches_its_own_type_only() -> None:
    data = {"users": [{"n": True}, {"n": "1"}, {"n": 1}]}
    assert value_at(data, ["users", {"n": 1}]) == {"n": 1}
    assert value_at(data, ["users", {"n": "1"}]) == {"n": "1"}

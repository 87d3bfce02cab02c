"""opp_auth.validation: what it accepts can be stored and read back exactly; the rest is refused, never raised past it."""

from __future__ import annotations

import json
import math
import time
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from opp_auth import validation
from opp_auth.storage import encode_envelope
from opp_auth.validation import MAX_JSON_DEPTH, MAX_STRING_LENGTH, InvalidData, check_value, json_depth

FAST = settings(max_examples=100, deadline=None)

# Every code point, lone surrogates included (Hypothesis leaves them out of st.text() by default).
any_char = st.characters(exclude_categories=())
hostile_text = st.one_of(
    st.text(any_char, max_size=20),
    st.sampled_from(["\ud800", "abc\udfff", "\x00", "\ufeff", "\U0010ffff", "\ud83d\ude00", "\\ud800"]),
    st.integers(MAX_STRING_LENGTH - 2, MAX_STRING_LENGTH + 2).map(lambda n: "x" * n),
)
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(10**30), 10**30),
    st.floats(allow_nan=True, allow_infinity=True),
    hostile_text,
)
values = st.recursive(
    scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(hostile_text, inner, max_size=4)),
    max_leaves=12,
)


def nest(depth: int, leaf: Any = 0) -> Any:
    """leaf inside depth alternating lists and dicts."""
    value = leaf
    for level in range(depth):
        value = [value] if level % 2 else {"k": value}
    return value


def real_depth(value: Any) -> int:
    """Nesting depth of a parsed value (recursion is fine: test values are shallow)."""
    if isinstance(value, dict):
        return 1 + max((real_depth(v) for v in value.values()), default=0)
    if isinstance(value, list):
        return 1 + max((real_depth(v) for v in value), default=0)
    return 0


@FAST
@given(value=values)
def test_accepted_values_are_stored_and_read_back_exactly(value: Any) -> None:
    """check_value passes a value only if the storage encoder writes it and a strict parser reads the same back."""
    try:
        check_value(value)
    except InvalidData as err:
        assert str(err).startswith("value")
        return
    text = encode_envelope("k", 1, {"v": value})
    back = json.loads(text.decode("utf-8"), parse_constant=lambda c: pytest.fail(f"{c} written"))
    assert back["data"]["v"] == value


@FAST
@given(value=values)
def test_refused_values_are_the_ones_storage_or_a_client_cannot_take(value: Any) -> None:
    """Whatever check_value refuses has a lone surrogate, a non-finite number or an over-long string."""
    try:
        check_value(value)
        return
    except InvalidData:
        pass
    text = json.dumps(value, ensure_ascii=True)  # escapes surrogates, so this never fails
    bad_number = "NaN" in text or "Infinity" in text
    try:
        json.dumps(value, ensure_ascii=False).encode("utf-8")
        bad_unicode = False
    except UnicodeEncodeError:
        bad_unicode = True
    too_long = any(len(s) > MAX_STRING_LENGTH for s in _strings(value))
    assert bad_number or bad_unicode or too_long


def _strings(value: Any) -> list[str]:
    """Every string (keys included) in a value."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [s for k, v in value.items() for s in [k, *_strings(v)]]
    if isinstance(value, list):
        return [s for v in value for s in _strings(v)]
    return []


@FAST
@given(value=values, depth=st.integers(0, 40))
def test_json_depth_of_text_equals_the_parsed_depth(value: Any, depth: int) -> None:
    """The pre-scan counts nesting exactly as the parser would, brackets inside strings ignored."""
    nested = nest(depth, value)
    text = json.dumps(nested)
    assert json_depth(text) == real_depth(nested)
    assert json_depth(text.encode()) == real_depth(nested)


@pytest.mark.parametrize("depth", [MAX_JSON_DEPTH - 1, MAX_JSON_DEPTH])
def test_nesting_up_to_the_limit_is_accepted(depth: int) -> None:
    """32 levels pass both the text pre-scan and the value walk."""
    assert real_depth(validation.loads(json.dumps(nest(depth)))) == depth


@pytest.mark.parametrize("depth", [MAX_JSON_DEPTH + 1, 600, 200_000])
def test_nesting_over_the_limit_is_refused_before_parsing(depth: int) -> None:
    """Deeper text is InvalidData (never RecursionError), and so is a deeper value built in memory."""
    text = "[" * depth + "]" * depth
    with pytest.raises(InvalidData, match="nested deeper than 32 levels"):
        validation.loads(text)
    if depth < 1000:
        with pytest.raises(InvalidData, match="nested deeper than 32 levels"):
            check_value(nest(depth))


def test_value_walk_is_iterative() -> None:
    """A value nested far past the interpreter's recursion limit is refused, not a RecursionError."""
    with pytest.raises(InvalidData):
        check_value(nest(100_000))


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('{"a": "\\ud800"}', 'value["a"] is not valid Unicode (a lone surrogate U+D800 at 0)'),
        ('{"\\udfff": 1}', "value has a key that is not valid Unicode"),
        ("[NaN]", "NaN is not a valid JSON number"),
        ('{"a": -Infinity}', "-Infinity is not a valid JSON number"),
        ('["' + "x" * (MAX_STRING_LENGTH + 1) + '"]', "value[0] is longer than 65536 characters"),
    ],
)
def test_refusals_name_the_place(text: str, message: str) -> None:
    """The message says where in the value the problem is."""
    with pytest.raises(InvalidData) as err:
        validation.loads(text)
    assert str(err.value).startswith(message)


def test_bytes_must_be_utf8() -> None:
    """UTF-8-encoded surrogates (which json.loads would let through from bytes) and other encodings are refused."""
    with pytest.raises(InvalidData, match="not UTF-8"):
        validation.loads(b'["\xed\xa0\x80"]')
    with pytest.raises(InvalidData, match="not UTF-8"):
        validation.loads('["é"]'.encode("utf-16"))
    assert validation.loads(b'\xef\xbb\xbf{"a": "\xc3\xa9"}') == {"a": "é"}


def test_size_limit() -> None:
    """max_bytes bounds the text."""
    with pytest.raises(InvalidData, match="larger than 10 bytes"):
        validation.loads(b"[1,2,3,4,5,6]", max_bytes=10)


@pytest.mark.parametrize(
    "text",
    [
        b'"' + b'\\"' * 1_000_000,  # one unterminated string of escapes: a naive string regex is quadratic
        b'"a' * 1_000_000,
        b"[" + b",".join([b"[1]"] * 500_000) + b"]",
        b"[" * 2_000_000,
    ],
)
def test_pre_scan_is_linear_on_hostile_text(text: bytes) -> None:
    """2 MB of the worst shapes for the pre-scan take well under a second (quadratic ones would take minutes)."""
    start = time.perf_counter()
    try:
        validation.check_json_text(text)
    except InvalidData:
        pass
    assert time.perf_counter() - start < 1.0


def test_non_json_types_are_refused() -> None:
    """Objects, bytes and non-string keys cannot be written as JSON."""
    for value in (object(), b"bytes", {1: "a"}, {"a": {2.0: 1}}, math.nan):
        with pytest.raises(InvalidData):
            check_value(value)

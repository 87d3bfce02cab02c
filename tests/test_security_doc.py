"""docs/security.md says exactly what the code does: every number it states is checked here.

The "Limits" table of docs/security.md has one row per number: ``| what | value
| source |``, the source in backticks (``module:attr.path``, ``config:path`` or
``auth:path``; see the page). Each row's value is compared with its source,
and every number written in the rest of the page must be the value of some
row, so a number added to the text without a row fails too. Rows may be added
anywhere in the table by anyone: nothing here counts or orders them.
"""

from __future__ import annotations

import importlib
import math
import re
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from opp_auth.config import validate_config
from opp_auth.manager import AuthManager
from opp_auth.plugins import make_plugin_manager

DOC = Path(__file__).resolve().parents[1] / "docs" / "security.md"
UNITS = {
    "": 1.0,
    "s": 1.0,
    "second": 1.0,
    "seconds": 1.0,
    "ms": 0.001,
    "min": 60.0,
    "minute": 60.0,
    "minutes": 60.0,
    "h": 3600.0,
    "hour": 3600.0,
    "hours": 3600.0,
    "day": 86400.0,
    "days": 86400.0,
    "KiB": 1024.0,
    "MiB": 1024.0**2,
}
WORDS = {
    "one": 1,
    "two": 2,
    "three": 3,
    "four": 4,
    "five": 5,
    "six": 6,
    "seven": 7,
    "eight": 8,
    "nine": 9,
    "ten": 10,
    "twenty": 20,
    "thirty": 30,
    "sixty": 60,
    "ninety": 90,
    "hundred": 100,
}
ROW = re.compile(r"^\|(?P<what>[^|]+)\|(?P<value>[^|]+)\|\s*`(?P<source>[^`]+)`\s*\|\s*$")
VALUE = re.compile(r"^\s*(?P<number>-?\d+(?:\.\d+)?)\s*(?P<unit>[A-Za-z]*)\s*$")
# Digits that are names, not limits: SPEC/RFC sections, SPEC bug numbers, algorithm names, HTTP statuses,
# octal file modes (0600), Unicode code points, and the 2^(n-5) formula (its numbers are rows of their own).
NOT_LIMITS = re.compile(
    r"SPEC \d+(?:\.\d+)*|RFC \d+(?: section [\d.]+)?|\bG\d+\b|SHA-\d+|HMAC-SHA\d+|\b0[0-7]{3}\b|\d+\^\([^)]*\)"
    r"|\bU\+[0-9A-Fa-f]{4,6}\b"
    r"|\b(?:200|400|401|403|404|405|413|429|500|503)s?\b"
)
NUMBER = re.compile(
    r"(?<![\w.^-])(?P<number>\d+(?:\.\d+)?)\s*(?P<unit>[A-Za-z]+)?"
    r"|\b(?P<word>" + "|".join(WORDS) + r")\s+(?P<word_unit>[A-Za-z]+)",
    re.IGNORECASE,
)


def limit_rows() -> list[tuple[str, str, str]]:
    """(what, value, source) of every row of the Limits table."""
    text = DOC.read_text(encoding="utf-8")
    section = text.split("\n## Limits\n", 1)[1].split("\n## ", 1)[0]
    rows = [ROW.match(line) for line in section.splitlines() if line.startswith("|")]
    return [(m["what"].strip(), m["value"].strip(), m["source"].strip()) for m in rows if m is not None]


def normalise(value: str) -> float:
    """A value cell as a number in base units (seconds, bytes)."""
    match = VALUE.match(value)
    assert match is not None and match["unit"] in UNITS, f"value {value!r} is not a number with a known unit"
    return float(match["number"]) * UNITS[match["unit"]]


def has_unit(value: str) -> bool:
    """Whether a value cell has a unit."""
    match = VALUE.match(value)
    return match is not None and bool(match["unit"])


def walk(obj: Any, path: str) -> Any:
    """Follow a dotted path through attributes and mapping keys."""
    for name in path.split("."):
        obj = obj[name] if isinstance(obj, dict) else getattr(obj, name)
    return obj


@pytest.fixture(scope="module")
def defaults(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The validated empty configuration, and an AuthManager built from it (not set up)."""
    config_dir = tmp_path_factory.mktemp("config")
    pm = make_plugin_manager()
    config = validate_config({}, pm, config_dir=config_dir)
    auth = AuthManager(
        str(config_dir), pm, provider_configs=config.providers, mfa_configs=config.mfa_modules, http_config=config.http
    )
    return {"config": config, "auth": auth}


def resolve(source: str, defaults: dict[str, Any]) -> Any:
    """The value a source names."""
    kind, _, path = source.partition(":")
    assert path, f"source {source!r} is not module:path, config:path or auth:path"
    if kind in defaults:
        return walk(defaults[kind], path)
    return walk(importlib.import_module(kind), path)


def as_number(value: Any) -> float:
    """A source value in base units."""
    if isinstance(value, timedelta):
        return value.total_seconds()
    assert isinstance(value, (int, float)) and not isinstance(value, bool), f"{value!r} is not a number"
    return float(value)


def test_the_limits_table_is_there_and_well_formed() -> None:
    rows = limit_rows()
    assert len(rows) >= 30
    sources = [source for _, _, source in rows]
    assert len(sources) == len(set(sources)), "a source is listed twice"
    for _, value, _ in rows:
        normalise(value)


@pytest.mark.bcrypt_cost  # the documented cost is the shipped one, not the suite's cheaper one
@pytest.mark.parametrize(("what", "value", "source"), limit_rows(), ids=[row[2] for row in limit_rows()])
def test_each_limit_is_what_the_code_does(what: str, value: str, source: str, defaults: dict[str, Any]) -> None:
    actual = as_number(resolve(source, defaults))
    assert math.isclose(actual, normalise(value)), f"docs/security.md says {what} is {value}; {source} is {actual}"


def test_every_number_in_the_text_is_a_limit_of_the_table() -> None:
    """Numbers outside the table (in digits, or a number word before a unit) must be the value of some row."""
    values = [value for _, value, _ in limit_rows()]
    counts = {normalise(value) for value in values if not has_unit(value)}
    measures = {normalise(value) for value in values if has_unit(value)}
    unknown = []
    in_limits = False
    for line_no, line in enumerate(DOC.read_text(encoding="utf-8").splitlines(), 1):
        if line.startswith("## "):  # the Limits table itself, and the list of tests (counts of test cases)
            in_limits = line == "## Limits" or line.startswith("## Defence → tests")
        if in_limits:
            continue
        line = NOT_LIMITS.sub(" ", re.sub(r"`[^`]*`|\[[^\]]*\]\([^)]*\)", " ", line))
        for match in NUMBER.finditer(line):
            if match["word"]:
                unit = match["word_unit"]
                if unit not in UNITS or unit in ("", "s", "h"):
                    continue
                number = float(WORDS[match["word"].lower()])
            else:
                number, unit = float(match["number"]), match["unit"] or ""
            if unit and unit in UNITS:  # a duration or a size: the same quantity as a row with a unit
                found = number * UNITS[unit] in measures
            else:  # a count: the same number as a row without a unit
                found = number in counts
            if not found:
                unknown.append(f"line {line_no}: {match.group(0).strip()!r} in {line.strip()!r}")
    assert not unknown, "numbers in docs/security.md with no row in its Limits table:\n" + "\n".join(unknown)


def test_the_throttle_defaults_are_the_configuration_defaults(defaults: dict[str, Any]) -> None:
    """The table checks config: defaults; the throttle's own DEFAULTS must be the same numbers."""
    from opp_auth.throttle import DEFAULTS

    assert defaults["config"].http["login_throttle"] == DEFAULTS

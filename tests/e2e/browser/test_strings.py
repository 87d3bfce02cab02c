"""The pages' strings files: every language has every English key and the same placeholders (no browser needed)."""

from __future__ import annotations

import json
import re

import pytest

from opp_auth.http.pages import STATIC_DIR

I18N = STATIC_DIR / "i18n"
LANGUAGES = sorted(p.stem for p in I18N.glob("*.json"))


def strings(lang: str) -> dict[str, str]:
    """One language file."""
    return dict(json.loads((I18N / f"{lang}.json").read_text(encoding="utf-8")))


def test_english_and_at_least_two_more_languages() -> None:
    """en plus two others ship with the package."""
    assert "en" in LANGUAGES and len(LANGUAGES) >= 3


@pytest.mark.parametrize("lang", [lang for lang in LANGUAGES if lang != "en"])
def test_language_has_every_key_with_the_same_placeholders(lang: str) -> None:
    """No missing or extra keys; {name} placeholders match English."""
    english, other = strings("en"), strings(lang)
    assert set(other) == set(english)
    for key, text in english.items():
        assert set(re.findall(r"\{\w+\}", other[key])) == set(re.findall(r"\{\w+\}", text)), key


def test_invalid_client_sentence_is_the_seeds() -> None:
    """The seed pictures this exact English sentence."""
    assert strings("en")["error.invalid_client"] == "Error: invalid client id or redirect url"


def test_languages_offered_by_the_pages_have_files() -> None:
    """i18n.js's LANGUAGES list and the files agree."""
    source = (STATIC_DIR / "i18n.js").read_text(encoding="utf-8")
    offered = re.search(r"LANGUAGES = \{(.*?)\}", source).group(1)  # type: ignore[union-attr]
    assert sorted(re.findall(r"(\w+):", offered)) == LANGUAGES

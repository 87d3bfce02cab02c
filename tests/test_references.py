"""Every "SPEC n.m" and "Gn" that the code, tests and docs cite names a section or gap of docs/spec/SPEC.md."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SPEC = ROOT / "docs" / "spec" / "SPEC.md"
SOURCES = ("core", "providers", "mfa_modules", "plugins_contrib", "tests", "docs", "bench", "README.md")
SUFFIXES = {".py", ".md", ".js", ".json", ".html", ".cfg", ".ini"}
SPEC_REF = re.compile(r"\bSPEC (\d+(?:\.\d+)?)")
GAP_REF = re.compile(r"\b(G\d{1,2})\b")


def cited_files() -> list[Path]:
    """The repository's own text files (no virtualenv, no node_modules, not the spec itself)."""
    files: list[Path] = []
    for name in SOURCES:
        path = ROOT / name
        candidates = [path] if path.is_file() else path.rglob("*")
        for file in candidates:
            parts = set(file.parts)
            if file.suffix in SUFFIXES and file != SPEC and not parts & {"node_modules", ".venv", "spec"}:
                files.append(file)
    return files


def spec_sections() -> tuple[set[str], set[str]]:
    """Section numbers (5, 5.4) and gap names (G8) the spec defines."""
    text = SPEC.read_text(encoding="utf-8")
    sections = set(re.findall(r"^#{2,4} (\d+(?:\.\d+)?)[. ]", text, flags=re.MULTILINE))
    gaps = set(re.findall(r"^- (G\d+)\b", text, flags=re.MULTILINE))
    return sections, gaps


def test_the_spec_is_in_the_repository() -> None:
    """docs/security.md and the code cite it, so it must be here, with the seed it cites."""
    assert SPEC.is_file()
    assert (SPEC.parent / "seed" / "authentication.md").is_file()
    assert "spec/SPEC.md" in (ROOT / "docs" / "security.md").read_text(encoding="utf-8")


def test_every_spec_and_gap_reference_resolves() -> None:
    """A citation of a section or gap that the spec lacks is a broken reference."""
    sections, gaps = spec_sections()
    assert {"5.4", "6.6", "11"} <= sections and {"G1", "G8"} <= gaps
    broken = []
    for file in cited_files():
        text = file.read_text(encoding="utf-8", errors="replace")
        for ref in SPEC_REF.findall(text):
            if ref not in sections:
                broken.append(f"{file.relative_to(ROOT)}: SPEC {ref}")
        for ref in GAP_REF.findall(text):
            if ref not in gaps:
                broken.append(f"{file.relative_to(ROOT)}: {ref}")
    assert not broken, broken

"""Runs the template's own tests (plugins_contrib/_template/tests), so the copy-me skeleton keeps working."""

from __future__ import annotations

import importlib.util
from pathlib import Path

TEMPLATE_TESTS = Path(__file__).resolve().parents[3] / "plugins_contrib" / "_template" / "tests" / "test_contract.py"

_spec = importlib.util.spec_from_file_location("opp_auth_myprovider_template_tests", TEMPLATE_TESTS)
assert _spec is not None and _spec.loader is not None, TEMPLATE_TESTS
_module = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_module)

# pytest collects what this module's namespace holds: the template's test classes and functions.
globals().update({name: value for name, value in vars(_module).items() if name.startswith(("test_", "Test"))})

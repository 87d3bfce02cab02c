"""Shared test configuration."""

from __future__ import annotations

import contextlib
import importlib.util
import os
import shutil
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

pytest_plugins = ["opp_auth.testing"]


# ---- external programs (htpasswd, slapd, chromium) ---------------------------------------------

REQUIRE_INTEGRATION_ENV = "OPP_AUTH_REQUIRE_INTEGRATION"
# Daemons such as slapd live in sbin, which is not on every user's PATH.
_SBIN_DIRS = ("/usr/local/sbin", "/usr/sbin", "/sbin")


def find_binary(name: str) -> str | None:
    """Path of an installed program, looking in the sbin directories too."""
    found = shutil.which(name)
    if found:
        return found
    for directory in _SBIN_DIRS:
        candidate = os.path.join(directory, name)
        if os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return candidate
    return None


def unavailable(message: str) -> None:
    """A part the test needs is missing: skip, or fail when OPP_AUTH_REQUIRE_INTEGRATION=1 (CI)."""
    if os.environ.get(REQUIRE_INTEGRATION_ENV) == "1":
        pytest.fail(f"{message}, and {REQUIRE_INTEGRATION_ENV}=1 says integration tests must run", pytrace=False)
    pytest.skip(message)


def require_binary(name: str, package: str | None = None) -> str:
    """Path of a program a test needs; without it skip, or fail when OPP_AUTH_REQUIRE_INTEGRATION=1 (CI)."""
    path = find_binary(name)
    if path is not None:
        return path
    hint = f" (Debian package {package}: apt-get install {package})" if package else ""
    unavailable(f"{name} is not installed{hint}")
    raise AssertionError("unreachable")


CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


@contextlib.asynccontextmanager
async def launch_chromium() -> AsyncIterator[Any]:
    """Debian's Chromium, headless, through Playwright (unavailable() says what is missing)."""
    executable = find_binary("chromium")
    if executable is None:
        unavailable("chromium is not installed (Debian package chromium: apt-get install chromium)")
    try:
        from playwright.async_api import async_playwright
    except ImportError:
        unavailable("the playwright package is not installed (pip install -r requirements-test.txt)")
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=executable, headless=True, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            await browser.close()


@pytest.fixture(name="require_binary")
def require_binary_fixture() -> Callable[..., str]:
    """require_binary as a fixture, so test modules need not import conftest: require_binary("slapd", "slapd")."""
    return require_binary


# ---- bcrypt: cost 4 for new hashes unless a test is about the cost --------------------------------

_CHEAP_DUMMY_HASH: bytes | None = None


@pytest.fixture(autouse=True)
def _cheap_bcrypt(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """The local provider hashes new passwords at cost 4 in tests, and its unknown-user check runs at cost 4.

    Cost 12 takes ~0.25 s of CPU a hash: the suite creates and checks thousands of passwords.
    Stored hashes are checked at their own cost, so tests that write cost-12 logins still run
    cost-12 checks. A test about the cost itself says @pytest.mark.bcrypt_cost (cost 12 kept).
    """
    global _CHEAP_DUMMY_HASH
    if request.node.get_closest_marker("bcrypt_cost") is not None:
        return
    try:
        import bcrypt
        import opp_auth_local
    except ImportError:
        return
    if _CHEAP_DUMMY_HASH is None:
        _CHEAP_DUMMY_HASH = bcrypt.hashpw(os.urandom(16).hex().encode(), bcrypt.gensalt(rounds=4))
    monkeypatch.setattr(opp_auth_local, "BCRYPT_ROUNDS", 4)
    monkeypatch.setattr(opp_auth_local, "_DUMMY_HASH", _CHEAP_DUMMY_HASH)


# ---- storage backends: the core's suites run on every installed one (the devpi way) -------------

# Suites whose tests run once per storage type: what they build through opp_auth_factory is
# stored in .storage files, then in PostgreSQL (a fresh database per test).
_BOTH_STORES = ("core", "http")
_TESTS = Path(__file__).resolve().parent


def installed_storage_types() -> list[str]:
    """json, and postgresql when opp-auth-postgresql is installed."""
    types = ["json"]
    if importlib.util.find_spec("opp_auth_postgresql") is not None:
        types.append("postgresql")
    return types


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Parametrise opp_auth_storage_type over the installed stores in tests/core and tests/http.

    A test that inspects the JSON files themselves says so with @pytest.mark.storage_types("json").
    """
    if "opp_auth_storage_type" not in metafunc.fixturenames:
        return
    try:
        suite = Path(str(metafunc.definition.path)).resolve().relative_to(_TESTS).parts[0]
    except ValueError:
        return
    if suite not in _BOTH_STORES:
        return
    marker = metafunc.definition.get_closest_marker("storage_types")
    wanted = list(marker.args) if marker else installed_storage_types()
    types = [t for t in wanted if t in installed_storage_types()]
    if types != ["json"]:
        metafunc.parametrize("opp_auth_storage_type", types, ids=[f"store={t}" for t in types])

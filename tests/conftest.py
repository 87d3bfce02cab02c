"""Shared test configuration."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable

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


def require_binary(name: str, package: str | None = None) -> str:
    """Path of a program a test needs; without it skip, or fail when OPP_AUTH_REQUIRE_INTEGRATION=1 (CI)."""
    path = find_binary(name)
    if path is not None:
        return path
    hint = f" (Debian package {package}: apt-get install {package})" if package else ""
    message = f"{name} is not installed{hint}"
    if os.environ.get(REQUIRE_INTEGRATION_ENV) == "1":
        pytest.fail(f"{message}, and {REQUIRE_INTEGRATION_ENV}=1 says integration tests must run", pytrace=False)
    pytest.skip(message)


@pytest.fixture(name="require_binary")
def require_binary_fixture() -> Callable[..., str]:
    """require_binary as a fixture, so test modules need not import conftest: require_binary("slapd", "slapd")."""
    return require_binary

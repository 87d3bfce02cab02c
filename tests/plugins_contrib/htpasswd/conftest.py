"""Fixtures of the htpasswd provider tests: files written by Apache's real htpasswd tool."""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest


class Htpasswd:
    """Runs the real htpasswd program on one file."""

    def __init__(self, binary: str, path: Path) -> None:
        """Bind to a file (created by the first add)."""
        self.binary = binary
        self.path = path

    def run(self, *args: str) -> None:
        """htpasswd with these arguments, failing loudly."""
        done = subprocess.run([self.binary, *args], capture_output=True, text=True, timeout=30)
        assert done.returncode == 0, done.stderr

    def add(self, user: str, password: str, *flags: str) -> None:
        """Add or replace a user; bcrypt at cost 4 (fast) unless other flags are given."""
        create = () if self.path.exists() else ("-c",)
        self.run(*create, *(flags or ("-B", "-C", "4")), "-b", str(self.path), user, password)

    def delete(self, user: str) -> None:
        """Remove a user."""
        self.run("-D", str(self.path), user)

    def line(self, user: str, password: str) -> str:
        """A bcrypt 'user:hash' line, printed by htpasswd -n (no file touched)."""
        done = subprocess.run(
            [self.binary, "-n", "-B", "-C", "4", "-b", user, password], capture_output=True, text=True, timeout=30
        )
        assert done.returncode == 0, done.stderr
        return done.stdout.strip()


@pytest.fixture
def htpasswd(require_binary: Callable[..., str], tmp_path: Path) -> Htpasswd:
    """The htpasswd tool on tmp_path/htpasswd (not created yet)."""
    return Htpasswd(require_binary("htpasswd", "apache2-utils"), tmp_path / "htpasswd")

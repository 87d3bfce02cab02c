"""Fetch Home Assistant's web frontend from PyPI into a cache, for the login-page test.

    python tests/homeassistant/fetch_ha_frontend.py     # prints the folder of hass_frontend/

The wheel (home-assistant-frontend, about 110 MB) is downloaded once with pip
and only the parts the login page loads are unpacked (authorize.html,
frontend_latest/, static/): about 150 MB, kept in
$OPP_AUTH_CACHE (default ~/.cache/opp-auth)/home-assistant-frontend-<version>/.
Its releases from 2025 on declare Python 3.13, which Home Assistant needs;
the wheel holds only static files, so it is fetched for 3.13 whatever runs this.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

VERSION = "20260128.6"
PACKAGE = "home-assistant-frontend"
WANTED = ("hass_frontend/authorize.html", "hass_frontend/frontend_latest/", "hass_frontend/static/")


def cache_dir() -> Path:
    """Where the unpacked frontend lives."""
    base = Path(os.environ.get("OPP_AUTH_CACHE") or Path.home() / ".cache" / "opp-auth")
    return base / f"{PACKAGE}-{VERSION}"


def frontend_root(fetch: bool = True) -> Path | None:
    """The unpacked hass_frontend folder; downloaded and unpacked first when fetch (None when absent)."""
    target = cache_dir()
    root = target / "hass_frontend"
    if (target / ".complete").exists():
        return root
    if not fetch:
        return None
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:",
             "--python-version", "3.13", "--dest", tmp, f"{PACKAGE}=={VERSION}"],
            check=True, stdout=subprocess.DEVNULL,
        )
        wheel = next(Path(tmp).glob("*.whl"))
        partial = target.with_name(target.name + ".partial")
        shutil.rmtree(partial, ignore_errors=True)
        with zipfile.ZipFile(wheel) as archive:
            names = [n for n in archive.namelist() if n.startswith(WANTED) and not n.endswith("/")]
            for name in names:
                archive.extract(name, partial)
        shutil.rmtree(target, ignore_errors=True)
        partial.rename(target)
    (target / ".complete").write_text(VERSION, encoding="utf-8")
    return root


if __name__ == "__main__":
    started = time.monotonic()
    found = frontend_root()
    print(f"{found} ({time.monotonic() - started:.1f} s)")

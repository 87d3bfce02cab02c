"""Loads opp-auth's pytest plugin: the fixtures and the contract suites."""

from __future__ import annotations

pytest_plugins = ["opp_auth.testing"]

"""Errors the core's operations raise to their callers (HTTP views, websocket commands, the CLI)."""

from __future__ import annotations


class AuthManagerError(Exception):
    """An operation was refused; str() is the reason shown to the caller."""

"""The notify module's own hook: delivery platforms are plugins of this plugin."""

from __future__ import annotations

from typing import Any

from opp_auth import hookspec


@hookspec
def opp_auth_notify_register_platforms(register: Any) -> None:
    """Register notify delivery platforms.

    :param register: call ``register(PlatformClass)`` once per class. The class
        subclasses :class:`opp_auth_notify.NotifyPlatform`, sets ``PLATFORM``
        (the ``platform:`` value in the ``notify:`` block) and ``SCHEMA`` (its
        own keys), and implements ``async_send(message, target)``.
    """

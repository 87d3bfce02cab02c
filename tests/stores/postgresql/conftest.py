"""Fixtures of the PostgreSQL store's tests (the server itself: opp_auth.testing's postgresql_server)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from opp_auth.testing import PostgresServer


@pytest.fixture
def database(postgresql_server: PostgresServer) -> Iterator[str]:
    """A fresh, empty database of its own (dropped after the test); its URL."""
    name = postgresql_server.create_database()
    yield postgresql_server.url(name)
    if postgresql_server.running:
        postgresql_server.drop_database(name)

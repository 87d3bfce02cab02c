"""opp-auth-postgresql: storage type ``postgresql``, one database shared by several opp-auth servers.

```yaml
openpeerpower:
  storage:
    type: postgresql
    url: !secret auth_database_url
    pool_size: 10
```

See README.md for every key, and :mod:`opp_auth_postgresql.backend` for how changes
reach the other servers.
"""

from __future__ import annotations

from typing import Any

from opp_auth import hookimpl

from .backend import PostgresBackend

__all__ = ["PostgresBackend"]


@hookimpl
def opp_auth_register_stores(register: Any) -> None:
    """Storage type postgresql."""
    register(PostgresBackend)

"""opp-auth-postgresql: storage type ``postgresql``, one database shared by several opp-auth servers.

```yaml
openpeerpower:
  storage:
    type: postgresql
    url: !secret auth_database_url
    pool_size: 10
```

See README.md for every key, :mod:`opp_auth_postgresql.backend` for how changes
reach the other servers, and :mod:`opp_auth_postgresql.audit` for the audit log,
which goes to the same database.
"""

from __future__ import annotations

from typing import Any

from opp_auth import hookimpl

from .audit import PgAuditSink
from .backend import PostgresBackend

__all__ = ["PgAuditSink", "PostgresBackend"]


@hookimpl
def opp_auth_register_stores(register: Any) -> None:
    """Storage type postgresql."""
    register(PostgresBackend)


@hookimpl
def opp_auth_audit_sink(config: dict[str, Any], storage: Any) -> Any:
    """With storage type postgresql the audit log goes to the same database (table opp_auth_audit)."""
    if not isinstance(storage, PostgresBackend):
        return None
    return PgAuditSink(storage.url, connect_timeout=storage.connect_timeout, keep_days=config["keep_days"])

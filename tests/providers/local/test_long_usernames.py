"""A login whose path text is longer than PostgreSQL's index allows (a btree row is ~2,700 bytes)."""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import bcrypt
import pytest
from opp_auth_local import STORAGE_KEY

from opp_auth.testing import async_seed_documents

from .test_provider import Factory, local, make_auth


@pytest.mark.parametrize("opp_auth_storage_type", ["json", "postgresql"])
async def test_a_long_username_can_change_its_password(
    opp_auth_factory: Factory, opp_auth_storage: dict[str, Any], config_dir: Path
) -> None:
    """A copied logins file may hold a long username (Open Peer Power and the CLI set no limit); stored
    whole (one row) it worked; saved by path its row's path text (ASCII-escaped: 12 bytes an emoji) must
    still be writable."""
    import random

    rng = random.Random(1)
    name = "".join(chr(rng.randrange(0x4E00, 0x9FFF)) for _ in range(1200))  # 7,200 bytes of path text
    hashed = base64.b64encode(bcrypt.hashpw(b"old-password", bcrypt.gensalt(4))).decode()
    await async_seed_documents(
        config_dir, opp_auth_storage, {STORAGE_KEY: (1, {"users": [{"username": name, "password": hashed}]})}
    )
    provider = local(await make_auth(opp_auth_factory))
    await provider.async_change_password(name, "new-password")
    again = local(await make_auth(opp_auth_factory))
    again.data.validate_login(name, "new-password")

"""A process that changes an AuthStore at random until it is killed (tests/core/test_journal.py).

Usage: python journal_worker.py CONFIG_DIR SEED. Prints one JSON line per event, flushed:
``{"begin": op}`` before a change, ``{"ack": n}`` once it is durable (async_save returned),
``{"compact": "start" | "end"}`` around compactions. The test kills it with SIGKILL, loads
the directory itself and compares with the acknowledged changes.
"""

from __future__ import annotations

import asyncio
import json
import random
import sys
import uuid
from datetime import timedelta
from typing import Any

from opp_auth.models import GROUP_ID_USER, Credentials, KeyRing, RefreshToken, User
from opp_auth.store import AuthStore

KEYRING = KeyRing(b"journal worker secret, 32 bytes!")
CLIENT_ID = "https://example.com/app"
SEED_USERS = 1500


def say(event: dict[str, Any]) -> None:
    """One line to the test, flushed before going on."""
    sys.stdout.write(json.dumps(event) + "\n")
    sys.stdout.flush()


async def main(config_dir: str, seed: int) -> None:
    """Load, seed a base the first time, then change at random forever."""
    rng = random.Random(seed)
    store = AuthStore(config_dir)
    store.keyring = KEYRING
    await store.async_load()
    real_compact = store._store.async_compact

    async def compact(data_func: Any = None) -> None:
        say({"compact": "start"})
        await real_compact(data_func)
        say({"compact": "end"})

    store._store.async_compact = compact  # type: ignore[method-assign]
    if not store.users():
        # A base big enough that a compaction takes a while, so kills land inside some.
        group = store.shared_groups([store.get_group(GROUP_ID_USER)])
        with store.unjournaled():
            for i in range(SEED_USERS):
                store.add_user(User(name=f"seed {i}", is_active=True, groups=group))
        await store.async_compact()
    say({"ready": len(store.users())})
    # The test reads the directory before any change is made: changes acknowledged before its read
    # would otherwise be counted twice (a removal applied to a model that already lacks the user).
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
    counter = 0
    while True:
        counter += 1
        users = store.users()
        tokens = store.refresh_tokens()
        roll = rng.random()
        op: dict[str, Any]
        if roll < 0.25 or not users:
            op = {"op": "add_user", "id": uuid.uuid4().hex, "name": f"u{counter}", "cred": uuid.uuid4().hex}
        elif roll < 0.55:
            user = rng.choice(users)
            cred = user.credentials[0].id if user.credentials and rng.random() < 0.5 else None
            op = {"op": "add_token", "id": uuid.uuid4().hex, "user": user.id, "cred": cred}
        elif roll < 0.7 and tokens:
            op = {"op": "remove_token", "id": rng.choice(tokens).id}
        elif roll < 0.8:
            op = {"op": "rename", "id": rng.choice(users).id, "name": f"renamed {counter}"}
        elif roll < 0.88:
            op = {"op": "remove_user", "id": rng.choice(users).id}
        elif roll < 0.94:
            with_creds = [u for u in users[-50:] if u.credentials]
            if not with_creds:
                continue
            op = {"op": "remove_cred", "id": rng.choice(with_creds).credentials[0].id}
        else:
            op = {"op": "compact"}
        say({"begin": op})
        await apply(store, op)
        say({"ack": counter})


async def apply(store: AuthStore, op: dict[str, Any]) -> None:
    """Make one change durable."""
    kind = op["op"]
    if kind == "compact":
        await store.async_compact()
        return
    if kind == "add_user":
        user = User(name=op["name"], id=op["id"], is_active=True, groups=[store.get_group(GROUP_ID_USER)])
        store.add_user(user)
        cred = Credentials("openpeerpower", None, {"username": op["name"]}, id=op["cred"])
        store.link_credentials(user, cred)
    elif kind == "add_token":
        user = store.get_user(op["user"])
        assert user is not None
        cred = store.get_credentials(op["cred"]) if op["cred"] else None
        token = RefreshToken(
            user=user, client_id=CLIENT_ID, access_token_expiration=timedelta(minutes=30),
            id=op["id"], keyring=KEYRING, credential=cred,
        )
        store.add_refresh_token(token)
    elif kind == "remove_token":
        token = store.get_refresh_token(op["id"])
        assert token is not None
        store.remove_refresh_token(token)
    elif kind == "rename":
        user = store.get_user(op["id"])
        assert user is not None
        store.update_user(user, name=op["name"])
    elif kind == "remove_user":
        user = store.get_user(op["id"])
        assert user is not None
        store.remove_user(user)
    elif kind == "remove_cred":
        cred = store.get_credentials(op["id"])
        assert cred is not None
        store.remove_credentials(cred)
    await store.async_save()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], int(sys.argv[2])))

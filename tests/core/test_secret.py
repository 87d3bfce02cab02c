"""The server secret: created once, whole, even when servers sharing a directory start at the same instant."""

from __future__ import annotations

import os
import stat
import threading
from pathlib import Path

import pytest

from opp_auth.secret import SECRET_FILE, load_server_secret
from opp_auth.storage import StorageError


def test_servers_starting_at_once_share_one_whole_secret(tmp_path: Path) -> None:
    """Twelve starts racing on a new directory: one secret for all, mode 0600, no temporary left."""
    for attempt in range(20):
        folder = tmp_path / f"dir{attempt}"
        barrier = threading.Barrier(12)
        results: list[bytes | BaseException] = []

        def start(
            folder: Path = folder, barrier: threading.Barrier = barrier, results: list[bytes | BaseException] = results
        ) -> None:
            barrier.wait()
            try:
                results.append(load_server_secret(str(folder)))
            except BaseException as err:  # noqa: BLE001 - the test reports any failure
                results.append(err)

        threads = [threading.Thread(target=start) for _ in range(12)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert all(isinstance(r, bytes) for r in results), results
        assert len(set(results)) == 1
        path = folder / SECRET_FILE
        assert bytes.fromhex(path.read_text()) == results[0]
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        assert sorted(os.listdir(folder)) == [SECRET_FILE]


def test_a_damaged_secret_is_refused_not_replaced(tmp_path: Path) -> None:
    (tmp_path / SECRET_FILE).write_text("not hex")
    with pytest.raises(StorageError, match="not a valid opp-auth secret"):
        load_server_secret(str(tmp_path))
    assert (tmp_path / SECRET_FILE).read_text() == "not hex"

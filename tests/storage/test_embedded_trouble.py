"""The embedded store names why it cannot go on: the process holding its write lock (and
that it is stopped), a read-only file, a folder it cannot write in."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from storage import EmbeddedStore, RunRecord, StorageError
from storage.errors import StoreUnavailable

HOLD = """
import os, signal, sqlite3, sys
db = sqlite3.connect(sys.argv[1], isolation_level=None)
db.execute("BEGIN IMMEDIATE")
db.execute("UPDATE runs SET seq = seq")
print("holding", flush=True)
os.kill(os.getpid(), signal.SIGSTOP)
"""


def record(run_id: str) -> RunRecord:
    return RunRecord(run_id=run_id, agent="a", version=1, state="s", seq=0, status="running",
                     memory={}, created_at=1.0, updated_at=1.0)  # fmt: skip


def test_a_stopped_process_holding_the_write_lock_is_named(tmp_path: Path) -> None:
    path = tmp_path / "store.db"
    store = EmbeddedStore(path)
    asyncio.run(store.create(record("before")))
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(path)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "holding\n"
        with pytest.raises(StoreUnavailable) as caught:
            asyncio.run(store.create(record("blocked")))
        message = str(caught.value)
        assert f"pid {holder.pid}" in message and "is stopped" in message, message
        assert "write lock" in message
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
        if holder.stdout is not None:
            holder.stdout.close()
    assert [r.run_id for r in asyncio.run(store.list_runs())] == ["before"]
    asyncio.run(store.close())


@contextmanager
def read_only(path: Path) -> Iterator[None]:
    """`path` made unwritable, even for root (an immutable flag), then writable again."""
    if os.geteuid() != 0:
        mode = path.stat().st_mode
        path.chmod(0o555 if path.is_dir() else 0o444)
        try:
            yield
        finally:
            path.chmod(mode)
        return
    chattr = shutil.which("chattr")
    if chattr is None or subprocess.run([chattr, "+i", str(path)]).returncode != 0:
        pytest.skip("root, and no chattr +i here: nothing is read-only to root")
    try:
        yield
    finally:
        subprocess.run([chattr, "-i", str(path)], check=True)


async def test_a_read_only_file_says_so_and_nothing_changes(tmp_path: Path) -> None:
    path = tmp_path / "store.db"
    store = EmbeddedStore(path)
    await store.create(record("kept"))
    await store.close()
    with read_only(path):
        with pytest.raises(StorageError, match="is read-only") as caught:
            reopened = EmbeddedStore(path)
            try:
                await reopened.create(record("new"))
            finally:
                await reopened.close()
        assert str(path) in str(caught.value)
    store = EmbeddedStore(path)
    assert [r.run_id for r in await store.list_runs()] == ["kept"]
    await store.close()


async def test_a_folder_it_cannot_write_in_says_so(tmp_path: Path) -> None:
    folder = tmp_path / "locked"
    folder.mkdir()
    with read_only(folder), pytest.raises(StorageError, match="must exist and be writable"):
        EmbeddedStore(folder / "store.db")

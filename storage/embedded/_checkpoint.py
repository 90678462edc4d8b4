"""WAL checkpoints of the embedded store, on a thread of their own.

SQLite checkpoints a WAL file inside whichever COMMIT pushes it past 1,000 pages: that commit
then copies the pages into the database and syncs it, milliseconds in which the event loop
that called it stands still. The store turns that off on its connection
(`PRAGMA wal_autocheckpoint=0`) and asks this thread, every `every` commits, for a PASSIVE
checkpoint on a connection of its own: it never waits for writers, and sqlite3 lets go of the
GIL while it runs, so commits go on meanwhile.
"""

from __future__ import annotations

import logging
import sqlite3
import threading

__all__ = ["Checkpointer"]

log = logging.getLogger("agentfsm.storage")


class Checkpointer:
    """Checkpoints the WAL of the database at `path` when `due()` has been called `every`
    times since the last one."""

    def __init__(self, path: str, *, every: int = 200, timeout: float = 5.0) -> None:
        self._path = path
        self._every = every
        self._timeout = timeout
        self._count = 0
        self.done = 0
        """Checkpoints run so far."""
        self._wake = threading.Event()
        self._stopping = False
        self._thread = threading.Thread(
            target=self._loop, name=f"agentfsm-checkpoint:{path}", daemon=True
        )
        self._thread.start()

    def due(self) -> None:
        """One more commit; every `every`-th wakes the thread."""
        self._count += 1
        if self._count >= self._every:
            self._count = 0
            self._wake.set()

    def stop(self) -> None:
        """Stop the thread (after the checkpoint it may be running)."""
        self._stopping = True
        self._wake.set()
        self._thread.join()

    def _loop(self) -> None:
        db: sqlite3.Connection | None = None
        try:
            while True:
                self._wake.wait()
                self._wake.clear()
                if self._stopping:
                    return
                try:
                    if db is None:
                        db = sqlite3.connect(self._path, timeout=self._timeout)
                    db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
                    self.done += 1
                except sqlite3.Error as exc:  # the next commit that wakes us tries again
                    log.debug("checkpoint of %s failed: %s", self._path, exc)
        finally:
            if db is not None:
                db.close()

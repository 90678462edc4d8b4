"""WAL checkpoints of the embedded store, on a thread of their own.

SQLite checkpoints a WAL file inside whichever COMMIT pushes it past 1,000 pages: that commit
then copies the pages into the database and syncs it, milliseconds in which the event loop
that called it stands still. The store turns that off on its connection
(`PRAGMA wal_autocheckpoint=0`) and asks this thread, every `every` commits, for a PASSIVE
checkpoint on a connection of its own: it never waits for writers, and sqlite3 lets go of the
GIL while it runs, so commits go on meanwhile.

A PASSIVE checkpoint never catches up with a writer that does not pause: the frames committed
while it ran are left, and SQLite starts the WAL file over only when a write begins with none
left. Commits that never pause then append to the file forever (30 KB a commit of a run's
step), and appending to a growing file costs each commit more than writing over one that is
there (measured: +6-11 µs a commit). So when a checkpoint finds more than `restart_frames`
frames in the file, the thread asks for a RESTART checkpoint: it copies what is left and has
the next commit write the file from its start. That one holds writers back while it copies and syncs
(a few ms, once per `restart_frames` frames), and gives up at once when a reader or writer
is in its way (it is tried again with the next checkpoint).
"""

from __future__ import annotations

import logging
import sqlite3
import threading

__all__ = ["Checkpointer"]

log = logging.getLogger("agentfsm.storage")

RESTART_FRAMES = 8192
"""WAL frames (pages: 32 MB at SQLite's 4 KB) past which the WAL file is started over."""
_RESTART_WAIT_MS = 5
"""How long a RESTART checkpoint waits for readers and writers in its way before it gives up."""


class Checkpointer:
    """Checkpoints the WAL of the database at `path` when `due()` has been called `every`
    times since the last one."""

    def __init__(
        self, path: str, *, every: int = 200, timeout: float = 5.0,
        restart_frames: int = RESTART_FRAMES,
    ) -> None:  # fmt: skip
        self._path = path
        self._every = every
        self._restart_frames = restart_frames
        self._timeout = timeout
        self._count = 0
        self.done = 0
        """Checkpoints run so far."""
        self.restarts = 0
        """Times the WAL file was started over."""
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
                    _, frames, _ = db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
                    self.done += 1
                    if frames > self._restart_frames:
                        self._restart(db)
                except sqlite3.Error as exc:  # the next commit that wakes us tries again
                    log.debug("checkpoint of %s failed: %s", self._path, exc)
        finally:
            if db is not None:
                db.close()

    def _restart(self, db: sqlite3.Connection) -> None:
        """A RESTART checkpoint that waits for nobody long (busy: tried again next time)."""
        db.execute(f"PRAGMA busy_timeout={_RESTART_WAIT_MS}")
        try:
            busy, _, _ = db.execute("PRAGMA wal_checkpoint(RESTART)").fetchone()
            self.restarts += busy == 0
        finally:
            db.execute(f"PRAGMA busy_timeout={int(self._timeout * 1000)}")

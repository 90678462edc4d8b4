"""What a store acknowledged, remembered outside it: a server that loses commits (a restart
without its last writes, a failover to a replica that lagged, a restored backup) loses any
record of them it kept itself, since they are later in the same history. So each process
notes, per run, the last seq its store acknowledged in a small SQLite file on this host
(`ACKNOWLEDGED_FILE`, `$AGENTFSM_ACKNOWLEDGED` moves it, "off" turns it off), and a later
process that takes the run's lease compares: a stored seq below the one noted is a loss
(`Lease.acknowledged`), named by the runner, never resumed silently.

Runs are told apart by id and nonce (random per run), so runs of one id in two stores or
tests never mix. Notes are kept in memory and written about every 50 ms, off the commit's
path, and when the store closes or the process exits: a process SIGKILLed loses its last
50 ms of notes (their loss can then go unnoticed by a later process on the same host), and
processes on other hosts do not see them. Where a loss must be impossible rather than
detected, choose a durability level that waits (`replicas:N`).
"""

from __future__ import annotations

import asyncio
import atexit
import os
import sqlite3
import threading
import time
from pathlib import Path

__all__ = ["ACKNOWLEDGED_FILE", "Acknowledged", "acknowledged"]

ACKNOWLEDGED_FILE = (
    Path(os.environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state")
    / "agentfsm"
    / "acknowledged.db"
)
"""Where notes are kept unless `$AGENTFSM_ACKNOWLEDGED` names another file (or "off")."""
_FLUSH_EVERY = 0.05
_KEEP_FOR = 30 * 24 * 3600.0
"""Seconds a note outlives its last update (a run not driven for a month is forgotten)."""


class Acknowledged:
    """The notes file of this host (one per process and path: see `acknowledged`)."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._pending: dict[tuple[str, str], int] = {}
        self._lock = threading.Lock()
        self._db: sqlite3.Connection | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._timer_loop: asyncio.AbstractEventLoop | None = None
        self._broken = False

    def _open(self) -> sqlite3.Connection | None:
        if self._db is None and not self._broken:
            try:
                self._path.parent.mkdir(parents=True, exist_ok=True)
                db = sqlite3.connect(self._path, timeout=2, isolation_level=None,
                                     check_same_thread=False)  # fmt: skip
                db.execute("PRAGMA journal_mode=WAL")
                db.execute("PRAGMA synchronous=NORMAL")
                db.execute(
                    "CREATE TABLE IF NOT EXISTS acked (run TEXT, nonce TEXT, seq INTEGER NOT"
                    " NULL, at REAL NOT NULL, PRIMARY KEY (run, nonce)) WITHOUT ROWID"
                )
                db.execute("DELETE FROM acked WHERE at < ?", (time.time() - _KEEP_FOR,))
                self._db = db
            except (OSError, sqlite3.Error):
                self._broken = True  # a read-only home, say: detection in process only
        return self._db

    def note(self, run_id: str, nonce: str, seq: int) -> None:
        """The store acknowledged `seq` of the run: kept, written within about 50 ms."""
        if not nonce:
            return
        with self._lock:
            self._pending[(run_id, nonce)] = seq
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            self.flush()
            return
        if self._timer is None or self._timer_loop is not loop:  # (an earlier loop ended)
            self._timer_loop = loop
            self._timer = loop.call_later(_FLUSH_EVERY, self._flush_soon)

    def _flush_soon(self) -> None:
        self._timer = None
        self.flush()

    def flush(self) -> None:
        """Write the notes kept in memory (the last seq noted per run wins)."""
        with self._lock:
            pending, self._pending = self._pending, {}
        if not pending:
            return
        db = self._open()
        if db is None:
            return
        now = time.time()
        try:
            with db:
                db.executemany(
                    "INSERT INTO acked VALUES (?, ?, ?, ?) ON CONFLICT(run, nonce)"
                    " DO UPDATE SET seq = excluded.seq, at = excluded.at",
                    [(run, nonce, seq, now) for (run, nonce), seq in pending.items()],
                )
        except sqlite3.Error:  # busy beyond its timeout: keep them for the next flush
            with self._lock:
                self._pending = {**pending, **self._pending}

    def last(self, run_id: str, nonce: str) -> int | None:
        """The last seq noted for the run on this host (None: none noted)."""
        if not nonce:
            return None
        with self._lock:
            pending = self._pending.get((run_id, nonce))
        if pending is not None:
            return pending
        db = self._open()
        if db is None:
            return None
        try:
            row = db.execute(
                "SELECT seq FROM acked WHERE run = ? AND nonce = ?", (run_id, nonce)
            ).fetchone()
        except sqlite3.Error:
            return None
        return None if row is None else int(row[0])


_journals: dict[Path, Acknowledged] = {}


def acknowledged() -> Acknowledged | None:
    """This process's notes (None when `$AGENTFSM_ACKNOWLEDGED` is "off")."""
    setting = os.environ.get("AGENTFSM_ACKNOWLEDGED", "")
    if setting.lower() == "off":
        return None
    path = Path(setting) if setting else ACKNOWLEDGED_FILE
    found = _journals.get(path)
    if found is None:
        found = _journals[path] = Acknowledged(path)
    return found


@atexit.register
def _flush_all() -> None:
    for journal in _journals.values():
        journal.flush()

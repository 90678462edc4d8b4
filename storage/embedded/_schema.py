"""The embedded store's schema: its tables, the upgrades of older files, and the statements
a commit runs (see `store.py` for what each table holds)."""

from __future__ import annotations

import sqlite3

from ..errors import StorageError
from .live import TABLE as LIVE_TABLE
from .live import prune

__all__ = [
    "INSERT_RUN",
    "RUN_COLUMNS",
    "SCHEMA_VERSION",
    "SELECT_RUN",
    "UPDATE_RUN",
    "UPDATE_RUN_ENDED",
    "UPDATE_RUN_IF_AT",
    "UPDATE_RUN_STATUS",
    "UPDATE_RUN_STATUS_ENDED",
    "UPDATE_RUN_STATUS_ENDED_IF_AT",
    "create_schema",
    "foreign",
    "upgradable",
]

SCHEMA_VERSION = 7
QUERY_INDEXES = [
    # On columns a commit rarely changes, so that most commits write no index page: the
    # status index only when the status changes (the commit leaves `status` out of its
    # UPDATE otherwise), the agent index never. Listings sort what they pick by updated_at.
    "CREATE INDEX runs_by_agent ON runs (agent)",
    "CREATE INDEX runs_by_status ON runs (status)",
    "CREATE INDEX runs_by_expiry ON runs (expires_at) WHERE expires_at IS NOT NULL",
]
SCHEMA = [
    """CREATE TABLE runs (
        run_id TEXT PRIMARY KEY, agent TEXT NOT NULL, version INTEGER NOT NULL,
        state TEXT NOT NULL, seq INTEGER NOT NULL, status TEXT NOT NULL,
        created_at REAL NOT NULL, updated_at REAL NOT NULL, fence INTEGER NOT NULL DEFAULT 0,
        holder TEXT NOT NULL DEFAULT '', crashes INTEGER NOT NULL DEFAULT 0,
        lease_owner TEXT NOT NULL DEFAULT '', lease_expires REAL NOT NULL DEFAULT 0,
        deadline REAL, expires_at REAL, nonce TEXT NOT NULL DEFAULT '',
        lease_boot TEXT NOT NULL DEFAULT '', trace TEXT NOT NULL DEFAULT ''
    )""",
    "CREATE INDEX runs_by_deadline ON runs (deadline) WHERE deadline IS NOT NULL",
    *QUERY_INDEXES,
    """CREATE TABLE memory (
        run_id TEXT NOT NULL, name TEXT NOT NULL, json TEXT NOT NULL, PRIMARY KEY (run_id, name)
    ) WITHOUT ROWID""",
    """CREATE TABLE events (
        run_id TEXT NOT NULL, seq INTEGER NOT NULL, json TEXT NOT NULL, PRIMARY KEY (run_id, seq)
    ) WITHOUT ROWID""",
    """CREATE TABLE keys (
        run_id TEXT NOT NULL, key TEXT NOT NULL, seq INTEGER NOT NULL, PRIMARY KEY (run_id, key)
    ) WITHOUT ROWID""",
]
RUN_COLUMNS = ("agent", "version", "state", "seq", "status", "created_at", "updated_at",
                "holder", "crashes", "deadline", "nonce", "expires_at", "trace")  # fmt: skip
UPGRADES = {
    1: [  # version 2: deadlines of waiting runs
        "ALTER TABLE runs ADD COLUMN deadline REAL",
        "CREATE INDEX runs_by_deadline ON runs (deadline) WHERE deadline IS NOT NULL",
    ],
    2: [  # version 3: retention, queries
        "ALTER TABLE runs ADD COLUMN expires_at REAL",
        "CREATE INDEX runs_by_agent ON runs (agent, updated_at)",
        "CREATE INDEX runs_by_status ON runs (status, updated_at)",
        "CREATE INDEX runs_by_expiry ON runs (expires_at) WHERE expires_at IS NOT NULL",
    ],
    3: [  # version 4: run nonces; leases on the monotonic clock (wall-clock ones lapse)
        "ALTER TABLE runs ADD COLUMN nonce TEXT NOT NULL DEFAULT ''",
        "ALTER TABLE runs ADD COLUMN lease_boot TEXT NOT NULL DEFAULT ''",
        "UPDATE runs SET lease_expires = 0",
    ],
    4: [  # version 5: no index on updated_at, which every commit changes
        "DROP INDEX runs_by_update",
        "DROP INDEX runs_by_agent",
        "DROP INDEX runs_by_status",
        "CREATE INDEX runs_by_agent ON runs (agent)",
        "CREATE INDEX runs_by_status ON runs (status)",
    ],
    5: [  # version 6: each run's trace context (its W3C traceparent)
        "ALTER TABLE runs ADD COLUMN trace TEXT NOT NULL DEFAULT ''",
    ],
    6: [  # version 7: live items numbered per run, one B-tree (see `live.py`); ids kept
        "CREATE TABLE IF NOT EXISTS live (id INTEGER PRIMARY KEY AUTOINCREMENT,"
        " run_id TEXT NOT NULL, base INTEGER NOT NULL, item TEXT NOT NULL, at REAL NOT NULL)",
        "ALTER TABLE live RENAME TO live_v6",
        "DROP INDEX IF EXISTS live_by_run",
        LIVE_TABLE,
        "INSERT INTO live (run_id, id, base, item, at)"
        " SELECT run_id, id, base, item, at FROM live_v6",
        "DROP TABLE live_v6",
    ],
}
"""Statements that take a file of schema version N to N + 1."""
SET_RUN = ("seq = ?, state = ?, updated_at = ?, crashes = 0, deadline = ?,"
            " version = coalesce(?, version), expires_at = coalesce(?, expires_at)")  # fmt: skip
UPDATE_RUN = f"UPDATE runs SET {SET_RUN} WHERE run_id = ?"
"""A commit that leaves the status as it is (so the status index is not touched)."""
UPDATE_RUN_STATUS = f"UPDATE runs SET status = ?, {SET_RUN} WHERE run_id = ?"
RELEASE = "holder = '', lease_owner = '', lease_expires = 0"
UPDATE_RUN_ENDED = f"UPDATE runs SET {RELEASE}, {SET_RUN} WHERE run_id = ?"
"""A commit that leaves the run not running gives the lease back too (status unchanged)."""
UPDATE_RUN_STATUS_ENDED = f"UPDATE runs SET status = ?, {RELEASE}, {SET_RUN} WHERE run_id = ?"
_AT = " AND seq = ? AND fence = ?"
UPDATE_RUN_IF_AT = f"{UPDATE_RUN}{_AT} AND status = ?"
"""`UPDATE_RUN` only while the run is at the expected seq and fence and has the commit's
status: a compare and set, the commit's check and its write in one statement (no row: a
refusal, or the status changes, as when `send` or `retry` set a run running)."""
UPDATE_RUN_STATUS_ENDED_IF_AT = f"{UPDATE_RUN_STATUS_ENDED}{_AT} AND status != ?"
"""`UPDATE_RUN_STATUS_ENDED` only while the run is at the expected seq and fence and the
commit changes its status (no row: a refusal, or it keeps it, as waiting -> waiting)."""
SELECT_RUN = f"SELECT run_id, {', '.join(RUN_COLUMNS)} FROM runs"
INSERT_RUN = (
    f"INSERT INTO runs (run_id, {', '.join(RUN_COLUMNS)})"
    f" VALUES ({', '.join('?' * (len(RUN_COLUMNS) + 1))}) ON CONFLICT (run_id) DO NOTHING"
)


def create_schema(db: sqlite3.Connection, path: str) -> None:
    """Create the schema in an empty file, or upgrade an older agentfsm's file in place
    (inside the caller's write transaction)."""
    (version,) = db.execute("PRAGMA user_version").fetchone()
    if version == SCHEMA_VERSION:  # another process set it up since we looked
        return
    if version in UPGRADES:
        while version < SCHEMA_VERSION:
            for statement in UPGRADES[version]:
                db.execute(statement)
            version += 1
        db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
        return
    if version != 0:
        raise foreign(path, version)
    if db.execute("SELECT 1 FROM sqlite_master").fetchone():
        raise StorageError(
            f"{path} is an SQLite database of something else (it has tables but no"
            " agentfsm schema version): give the store a file of its own"
        )
    for statement in SCHEMA:
        db.execute(statement)
    db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")  # rolled back with the rest


def foreign(path: str, version: int) -> StorageError:
    return StorageError(
        f"{path} has store schema version {version}; this agentfsm reads version"
        f" {SCHEMA_VERSION} (upgrade agentfsm, or use another file)"
    )


def upgradable(version: int) -> bool:
    """Whether a file of schema `version` is ours to open (maybe after an upgrade)."""
    return version in (0, SCHEMA_VERSION) or version in UPGRADES


def collect(db: sqlite3.Connection, now: float, live_ttl: float) -> int:
    """Delete the runs whose retention ran out by `now`, and old live items (inside the
    caller's write transaction); how many runs."""
    ids = [r for (r,) in db.execute("SELECT run_id FROM runs WHERE expires_at <= ?", (now,))]
    for table in ("memory", "events", "keys", "run_usage", "live", "runs"):
        db.executemany(f"DELETE FROM {table} WHERE run_id = ?", [(r,) for r in ids])
    prune(db, now, live_ttl)
    return len(ids)


def check_indexes(db: sqlite3.Connection) -> int:
    """`REINDEX` the runs; how many there are."""
    db.execute("REINDEX runs")
    (count,) = db.execute("SELECT count(*) FROM runs").fetchone()
    return int(count)

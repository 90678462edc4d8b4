"""The Postgres backend: `PostgresStore`, the Store contract in a schema of a PostgreSQL
database, everything the contract asks beside runs in a module of its own:

    store.py        PostgresStore: runs, events, leases, listings, upkeep, the live channel
    ledger.py       scope ledgers and set limits
    limiter.py      rate limits               queue.py     the run queue and worker heartbeats
    live.py         waiting readers (LISTEN/NOTIFY, polling behind a pooler)
    _connections.py connections per event loop, errors, retries
    _schema.py      schema versions and migrations (sql/NNN_*.sql)
"""

from ._schema import SCHEMA_VERSION
from .store import PostgresStore

__all__ = ["SCHEMA_VERSION", "PostgresStore"]

PostgresStore.__module__ = __name__  # reprs read storage.postgres.PostgresStore

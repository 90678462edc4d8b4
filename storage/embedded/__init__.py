"""The embedded backend: `EmbeddedStore`, one SQLite file (or process memory), with
everything the Store contract asks beside runs, each in a module of its own:

    store.py        EmbeddedStore: runs, events, leases, schema and its upgrades
    paging.py       keyset pages of run listings
    live.py         the live channel          usage.py     the runs' usage totals
    ledger.py       scope ledgers and set limits
    limiter.py      rate limits               queue.py     the run queue and worker heartbeats
    _checkpoint.py  WAL checkpoints off the event loop
    _trouble.py     why a file cannot be used (who holds its lock, what is read-only)
"""

from ._schema import SCHEMA_VERSION
from .store import EmbeddedStore

__all__ = ["SCHEMA_VERSION", "EmbeddedStore"]

EmbeddedStore.__module__ = "storage"  # reprs read storage.EmbeddedStore, where it is exported

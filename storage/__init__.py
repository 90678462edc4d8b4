"""The Store contract and its backends: Redis, and an embedded store that needs no server.

    storage/
      base.py, _capabilities.py   the contract: records, `Store` and its ledger, limiter, queue
      _codec.py, _json.py, usage.py, _paging.py, process.py   shared by every backend
      redis/      the Redis backend (Cluster is a mode of it)
      embedded/   the embedded backend (SQLite, or memory://)

Backends are imported lazily by `open_store(url)` (`import storage` loads neither redis nor
sqlite3); `RedisStore` and `EmbeddedStore` are also importable from here. The contract's
other records (`ScopeCharge`, `LiveEntry`, the run queue's `RunQueue`, `Job`, `WorkerBeat`)
are in `storage.base`, the rarer errors in `storage.errors`.
"""

import inspect
from typing import TYPE_CHECKING, Any

from ._open import open_store
from ._paging import cursor_of
from .base import (
    CommitOutcome,
    Committed,
    Conflict,
    Duplicate,
    Event,
    Lease,
    LeaseHeld,
    LeaseLost,
    RunRecord,
    RunStatus,
    Store,
)
from .errors import StorageError

if TYPE_CHECKING:
    from .embedded import EmbeddedStore
    from .redis import RedisStore

__all__ = [
    "CommitOutcome",
    "Committed",
    "Conflict",
    "Duplicate",
    "EmbeddedStore",
    "Event",
    "Lease",
    "LeaseHeld",
    "LeaseLost",
    "RedisStore",
    "RunRecord",
    "RunStatus",
    "StorageError",
    "Store",
    "cursor_of",
    "open_store",
]


def __getattr__(name: str) -> Any:
    if name == "RedisStore":
        from .redis import RedisStore

        return RedisStore
    if name == "EmbeddedStore":
        from .embedded import EmbeddedStore

        return EmbeddedStore
    raise AttributeError(f"module 'storage' has no attribute {name!r}")


for _name in __all__:
    _obj = globals().get(_name)  # the lazily imported backends are not here yet
    if isinstance(_obj, type) or inspect.isfunction(_obj):
        _obj.__module__ = __name__  # reprs read storage.Event
del _name, _obj

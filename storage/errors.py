"""Errors raised by stores.

    RuntimeError
     └── StorageError            anything a store cannot do
          ├── StoreUnavailable   the server cannot be reached (after retries)
          └── CorruptData        stored bytes that are not what we wrote; names the key
               └── HistoryLost   a run whose stored history is incomplete: refused
    ValueError
     └── Unstorable              a value that would not read back equal (NaN, too deep, ...)

Expected commit outcomes (duplicate key, seq conflict, stale lease) are *values*
(`storage.Committed | Duplicate | Conflict | LeaseLost`), never exceptions.
"""

from __future__ import annotations

__all__ = ["CorruptData", "HistoryLost", "StorageError", "StoreUnavailable", "Unstorable"]


class StorageError(RuntimeError):
    """A store could not do what was asked; nothing was written."""


class StoreUnavailable(StorageError):
    """The store's server could not be reached, even after retrying with backoff."""


class CorruptData(StorageError):
    """Data read back from the store is not valid; `key` names where it was found.

    Nothing is overwritten: the run stays as it is for a person to inspect.
    """

    def __init__(self, key: str, problem: str) -> None:
        super().__init__(f"corrupt data in {key}: {problem}")
        self.key = key
        self.problem = problem


class HistoryLost(CorruptData):
    """A run's record says more was committed than its stored history holds (events or
    idempotency records evicted, or rolled back by a failover or a restart). The run is
    refused, never resumed on a partial history: its committed steps could run again (a
    worker parks its job, as for any `CorruptData`)."""

    def __init__(self, run_id: str, key: str, missing: str) -> None:
        StorageError.__init__(
            self,
            f"run {run_id!r} ({key}) is incomplete: {missing}. It is not resumed on a partial"
            " history. Restore it from a backup (`agentfsm export` taken before the loss, then"
            " `agentfsm import` into a store without this run), and keep the server from"
            " losing data again (maxmemory-policy noeviction, appendonly yes)",
        )
        self.run_id = run_id
        self.key = key
        self.problem = self.missing = missing


class Unstorable(ValueError):
    """A value a store would not read back equal: refused before anything is written.

    `where` names the value (a memory field, an event's output), `problem` what is wrong and
    where inside it.
    """

    def __init__(self, where: str, problem: str) -> None:
        super().__init__(f"cannot store {where}: {problem}; nothing was written")
        self.where = where
        self.problem = problem

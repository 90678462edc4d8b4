"""Errors raised by stores.

    RuntimeError
     └── StorageError            anything a store cannot do
          ├── StoreUnavailable   the server cannot be reached (after retries)
          ├── OutcomeUnknown     a commit not confirmed at the store's durability level:
          │                      maybe applied, maybe not; retry it under the same key
          ├── DurabilityUnavailable  the server cannot give the level the store was opened at
          └── CorruptData        stored bytes that are not what we wrote; names the key
               └── HistoryLost   a run whose stored history is incomplete: refused
    ValueError
     └── Unstorable              a value that would not read back equal (NaN, too deep, ...)

Expected commit outcomes (duplicate key, seq conflict, stale lease) are *values*
(`storage.Committed | Duplicate | Conflict | LeaseLost`), never exceptions.
"""

from __future__ import annotations

__all__ = [
    "CorruptData",
    "DurabilityUnavailable",
    "HistoryLost",
    "OutcomeUnknown",
    "StorageError",
    "StoreUnavailable",
    "Unstorable",
]


class StorageError(RuntimeError):
    """A store could not do what was asked; nothing was written."""


class StoreUnavailable(StorageError):
    """The store's server could not be reached, even after retrying with backoff."""


class OutcomeUnknown(StorageError):
    """A write the server applied, or may have, that did not reach the store's durability
    level within its timeout: a failover or crash now could still lose it. Never a success.
    Retrying under the same idempotency key is safe: the store answers that the key was
    committed (and waits for the level again) if it landed, or applies it once if not."""

    def __init__(self, what: str, level: str, reached: str, timeout: float) -> None:
        super().__init__(
            f"{what}: applied by the primary, but {reached} within {timeout:g} s, not"
            f" {level!r}: its outcome is unknown (a failover or crash now could lose it)."
            " Retrying under the same idempotency key is safe (resume the run, or step it"
            " again): a commit that landed is answered as already committed, not applied"
            " twice. Check the replicas (INFO replication) or raise ?durability_timeout="
        )
        self.what = what
        self.level = level


class DurabilityUnavailable(StorageError):
    """The store was opened at a durability level its server cannot give (too old for
    `WAITAOF`, no append-only file, a Cluster, no replicas at all): refused at open, before
    anything is written."""


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

"""The Store contract: records, commit outcomes, and the `Store` protocol.

Every backend (`storage/redis/`, `storage/embedded/`) meets the guarantees written in the
docstrings of `Store` and of its capabilities (`storage._capabilities`: ledger, limiter,
queue); one conformance suite (`tests/storage/conformance/`) proves them for each. Callers
never ask which backend they hold: a backend that cannot do something refuses in its own
method, with an error naming the problem and the way out.
"""

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal, Protocol, TypeAlias, runtime_checkable

from pydantic import JsonValue

from ._capabilities import Bucket, Job, Ledger, Limiter, RunQueue, ScopeCharge, WorkerBeat
from ._durability import Durability
from ._json import MAX_DEPTH, json_bytes

__all__ = [
    "LIVE_MAXLEN",
    "LIVE_TTL",
    "MAX_DEPTH",
    "Bucket",
    "CommitOutcome",
    "Committed",
    "Conflict",
    "Duplicate",
    "Durability",
    "Event",
    "Job",
    "Lease",
    "LeaseHeld",
    "LeaseLost",
    "LiveEntry",
    "RunQueue",
    "RunRecord",
    "RunStatus",
    "ScopeCharge",
    "Store",
    "WorkerBeat",
    "check_history",
    "check_run_id",
    "creation_event",
    "json_bytes",
    "live_order",
    "run_key",
]

RunStatus: TypeAlias = Literal["running", "waiting", "done", "failed", "cancelled"]
"""`running`: can advance (a process may be driving it or it awaits one). `waiting`: parked
until an event arrives. `done`: reached a final state. `failed`: a step gave up; `resume`
retries it. `cancelled`: stopped by a person."""

_RUN_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:@-]{0,199}")


def run_key(run: "RunRecord", *parts: object) -> str:
    """An idempotency key of `run`: its id and nonce (runs stored before nonces have none),
    then `parts`, colon-separated. The creation event's key is `run_key(run, "start")`; the
    keys of steps are built on it by `statemachine._keys`."""
    base = f"{run.run_id}:{run.nonce}" if run.nonce else run.run_id
    return ":".join([base, *map(str, parts)])


def creation_event(run: "RunRecord", origin: JsonValue = None) -> "Event":
    """Event 0 of `run`, as `Store.create` and `Store.start` write it: the whole initial
    memory as its patch, `origin` as its output."""
    return Event(
        seq=0, trigger="start", kind="start", source="", dest=run.state, status=run.status,
        key=run_key(run, "start"), patch=run.memory, started_at=run.created_at,
        ended_at=run.created_at, deadline=run.deadline, output=origin,
    )  # fmt: skip


def check_run_id(run_id: str) -> str:
    """Return `run_id` if it is usable as a key part, else raise `ValueError` saying why.

    Braces are refused because they would break the per-run Redis Cluster hash tag.
    """
    if not isinstance(run_id, str) or not _RUN_ID.fullmatch(run_id):
        raise ValueError(
            f"invalid run id {run_id!r}: use 1-200 characters from letters, digits and . _ : @ -,"
            " starting with a letter or digit"
        )
    return run_id


@dataclass(frozen=True, kw_only=True, slots=True)
class RunRecord:
    """One run as stored: where it is, and its memory as JSON fields."""

    run_id: str
    agent: str
    version: int
    state: str
    seq: int
    status: RunStatus
    memory: dict[str, JsonValue]
    created_at: float
    updated_at: float
    holder: str = ""
    """Owner of the current lease, "" when no process holds the run."""
    crashes: int = 0
    """Lease holders that died since the last commit (a takeover found them gone)."""
    deadline: float | None = None
    """When a waiting run times out (unix seconds), if its state has a timeout."""
    nonce: str = ""
    """Random, made when the run is created and kept with it (exports included): part of
    every idempotency key of the run, so no two runs anywhere share a key, even runs of one
    id in two stores, or an id used again after the first run was deleted. "" for runs
    stored before nonces existed."""
    expires_at: float | None = None
    """Retention: when the store may delete the run (set by the commit that ended it)."""
    trace: str = ""
    """The W3C `traceparent` of the run's trace (made at `start`, kept with the run, exports
    included): every process that drives the run parents its transition spans to it
    (`statemachine._tracing`). "" for runs stored before traces existed."""
    usage: dict[str, int] = field(default_factory=dict)
    """The usage ledger: the sums of the committed events' `usage` figures (requests,
    tokens, tool calls, `cost_nusd`), kept by the commits themselves (see `storage.usage`)."""


@dataclass(frozen=True, kw_only=True, slots=True)
class Event:
    """One committed transition: the audit log entry, and the memory patch it applied.

    `seq` 0 is the run's creation (its patch is the whole initial memory); each commit adds one.
    Replaying the patches of events 0..n rebuilds the memory as it was after commit n.
    """

    seq: int
    trigger: str
    kind: str
    """The step kind: "tool", "llm", "wait", "move" (no step), or the runner's own: "start",
    "error", "control", "timeout"."""
    source: str
    dest: str
    status: RunStatus
    key: str
    """The idempotency key the step ran under (`statemachine` builds it; see
    `Run.idempotency_key`); with a suffix for the runner's own events."""
    patch: dict[str, JsonValue] = field(default_factory=dict)
    output: JsonValue = None
    attempt: int = 1
    started_at: float = 0.0
    ended_at: float = 0.0
    worker: str = ""
    error: dict[str, JsonValue] | None = None
    usage: dict[str, int] | None = None
    messages: list[JsonValue] = field(default_factory=list)
    """Model messages this step appended to the run's conversation (pydantic-ai JSON form)."""
    deadline: float | None = None
    """The run's deadline from this commit on: set when `dest` waits with a timeout."""
    step: str = ""
    """What ran: the tool function's name, the llm step's model ("" for none)."""
    version: int | None = None
    """A schema migration: the run's version from this commit on (None: unchanged)."""
    dropped: list[str] = field(default_factory=list)
    """A schema migration: memory fields this commit removes."""
    expires_at: float | None = None
    """Retention: the run may be deleted from this time on (unix seconds; set when it ends)."""
    snapshot: dict[str, JsonValue] | None = None
    """The whole memory after this commit, written now and then so that rebuilding the memory
    at a seq replays the events after a snapshot, not the whole history."""


@dataclass(frozen=True, kw_only=True, slots=True)
class Lease:
    """A held lease on one run. `token` is the fencing token: strictly increasing per run."""

    run_id: str
    owner: str
    token: int
    ttl: float
    crashes: int
    """How many holders died holding this run since its last commit, this takeover included."""
    seq: int | None = None
    """The run's seq when the lease was taken (None if the store does not say): a holder
    whose copy of the run is at this seq need not read it again."""
    acknowledged: int | None = None
    """Set when the store once acknowledged a later seq of the run than `seq` (remembered
    where the store's own loss cannot reach it: `storage._acked`): commits `seq + 1` to
    `acknowledged` were lost. Said once: the next lease taken does not say it again."""


@dataclass(frozen=True, kw_only=True, slots=True)
class LeaseHeld:
    """The lease is held by someone else; it expires in `expires_in` seconds unless renewed."""

    run_id: str
    owner: str
    expires_in: float


@dataclass(frozen=True, kw_only=True, slots=True)
class Committed:
    seq: int


@dataclass(frozen=True, kw_only=True, slots=True)
class Duplicate:
    """The idempotency key was already committed, at `seq`. Nothing was written."""

    seq: int


@dataclass(frozen=True, kw_only=True, slots=True)
class Conflict:
    """The run moved on: its seq is `current_seq`, not the expected one. Nothing was written."""

    current_seq: int


@dataclass(frozen=True, kw_only=True, slots=True)
class LeaseLost:
    """The fencing token is stale: another process took the run over. Nothing was written."""


CommitOutcome: TypeAlias = Committed | Duplicate | Conflict | LeaseLost

LIVE_MAXLEN = 10_000
"""Entries a run's live channel keeps (about: Redis trims whole stream nodes)."""
LIVE_TTL = 24 * 3600.0
"""Seconds a run's live channel outlives its last publish."""


@dataclass(frozen=True, kw_only=True, slots=True)
class LiveEntry:
    """One item on a run's live channel (progress beside the durable history, best effort).

    `id` is the channel's own: it increases with every publish to the run, whichever
    process publishes ("ms-n" on Redis, a row number embedded; compare with `live_order`).
    `base` is the run's seq when the item was published: the item comes after committed
    event `base` and before event `base + 1`."""

    id: str
    base: int
    item: dict[str, JsonValue]


def live_order(entry_id: str) -> tuple[int, ...]:
    """The sort key of a live entry id: ids of one run's channel compare by it."""
    return tuple(int(part) for part in entry_id.split("-"))


@runtime_checkable
class Store(Protocol):
    """Where runs live. All methods are coroutines; all data is JSON.

    Guarantees every backend gives:
    - `commit` is all-or-nothing and one round trip to the server; refused commits write nothing.
    - A commit (and a `create`/`start`) is acknowledged only once it reached the store's
      `durability` level; when the level is not reached in time, the call raises
      `storage.errors.OutcomeUnknown` (the write may stand: retry it under the same key,
      which answers `Duplicate` once the level is reached). A level the backend or its
      server cannot give is refused when the store is opened or first used
      (`storage.errors.DurabilityUnavailable`), before anything is written.
    - What a commit writes is proportional to its event (the memory patch and new messages),
      not to the size of the memory or the length of the history.
    - Everything read back is validated; bytes that are not what we wrote raise
      `storage.errors.CorruptData` naming the key, and nothing is overwritten.
    """

    async def create(self, run: RunRecord, *, origin: JsonValue = None) -> RunRecord:
        """Store a new run at seq 0 with its creation event, or return the one already stored
        under `run.run_id` unchanged (creating is safe to retry). `origin` is recorded as the
        creation event's output (where a fork came from, say)."""
        ...

    async def start(
        self,
        run: RunRecord,
        *,
        owner: str,
        ttl: float,
        origin: JsonValue = None,
        live: Sequence[tuple[int, JsonValue]] = (),
    ) -> tuple[RunRecord, "Lease | LeaseHeld"]:
        """`create` and `acquire_lease(run.run_id, owner, ttl)` in one round trip (one
        transaction): store `run` as `create` does, or find the run stored under its id
        (returned as stored, unchanged but for the lease), and take its lease. A lease held
        by another live process is `LeaseHeld` (the run is returned all the same); one held
        by a provably dead process is taken over, as `acquire_lease` does.

        `live` (optional): `(base, item)` pairs appended to the run's live channel in the same
        round trip, as `commit(live=...)` appends them, and only when this call creates the
        run (none when it finds the run stored). `agent.run` sends its first step's "started"
        item this way: stored before the step runs, as crash accounting needs, at no round
        trip of its own."""
        ...

    async def restore(self, run: RunRecord, events: Sequence[Event]) -> bool:
        """Write a run and its whole history as they are (an import, a copy between stores),
        all or nothing; False, writing nothing, when a run with that id exists. The events
        must be the run's seqs 0..`run.seq` in order (`ValueError` otherwise)."""
        ...

    async def load(self, run_id: str) -> RunRecord | None:
        """The run as last committed, or None when there is no such run."""
        ...

    async def commit(
        self,
        run_id: str,
        *,
        expected_seq: int,
        token: int,
        event: Event,
        scope_charge: ScopeCharge | None = None,
        live: Sequence[tuple[int, JsonValue]] = (),
    ) -> "CommitOutcome":
        """Atomically apply `event` (whose seq must be `expected_seq + 1`): set the run's
        state, status and patched memory fields, append the event, record its key.

        Checks, before any write, in this order: the key was not committed before
        (`Duplicate`), the run's fencing token is `token` (`LeaseLost`), the run is at
        `expected_seq` (`Conflict`). A commit also clears the run's crash count, sets its
        deadline to `event.deadline` (None clears it), and for a migration sets the run's
        version (`event.version`) and removes the `event.dropped` memory fields.

        A commit whose `event.status` is not "running" (done, failed, waiting, cancelled) also
        gives the lease back, as `release_lease` would, in the same round trip: the run's
        holder cannot run anything more without a new lease. A renewal of that lease is then
        refused (`renew_lease` is False).

        `scope_charge` (optional) also adds the event's usage to a budget scope's ledger
        (`ledger`), once per `event.key`: in the same atomic write where the backend can
        (embedded, standalone Redis); on Redis Cluster, where the scope is in another slot,
        the commit records the charge in the run's own slot and the backend applies it
        after, or at the next load, lease, listing or `gc` after a crash: it lands once.

        `live` (optional): `(base, item)` pairs appended to the run's live channel by the
        same round trip, as `publish` would append them, and only when the commit is applied
        (a refused commit writes none of them); an item no store would read back equal is
        dropped, never failing the commit. The runner sends the progress items queued
        since the last publish this way, and the commit's own notice, so a run of quick steps
        needs no publish of its own.
        """
        ...

    async def due(self, now: float, *, limit: int = 100) -> list[str]:
        """Ids of runs whose deadline is at or before `now`, earliest first."""
        ...

    async def history(
        self, run_id: str, from_seq: int = 0, to_seq: int | None = None
    ) -> list[Event]:
        """Events with `from_seq <= seq <= to_seq`, in order; [] for an unknown run."""
        ...

    async def acquire_lease(self, run_id: str, owner: str, ttl: float) -> Lease | LeaseHeld:
        """Take the run's lease for `ttl` seconds with a new, larger fencing token.

        When the previous holder never released it (it died), this is a takeover and the
        run's crash count goes up by one. A lease that has not expired is taken over at once
        when its holder is provably dead (`owner` ids carry the proof: same host, boot and
        pid namespace, and the process is gone; see `storage.process`); any other live
        lease is `LeaseHeld`. Raises `KeyError` for an unknown run.
        """
        ...

    async def renew_lease(self, lease: Lease) -> bool:
        """Extend the lease by its ttl; False when its token is no longer the run's."""
        ...

    async def release_lease(self, lease: Lease) -> None:
        """Give the lease up (a no-op when it was already taken over)."""
        ...

    async def list_runs(
        self,
        *,
        agent: str | None = None,
        status: RunStatus | None = None,
        state: str | None = None,
        since: float | None = None,
        until: float | None = None,
        limit: int = 100,
        before: tuple[float, str] | None = None,
        id_contains: str | None = None,
    ) -> list[RunRecord]:
        """Runs, most recently updated first, filtered by agent, status, state and the time
        of their last commit (`since <= updated_at < until`).

        With `before`, a page of a keyset walk instead: the runs whose `(created_at, run_id)`
        is below `before`, in that order, newest first (`(math.inf, "")` starts at the top;
        the next page starts below the last run listed: `storage.cursor_of(run)`). Its
        order never changes as runs commit, so pages neither skip nor repeat a run, and
        each page reads the store's indexes from the cursor on: no page costs a scan of the
        runs before it. `id_contains` (paged walks only) keeps the runs whose id holds that
        text, checked on the index's ids before any run is read."""
        ...

    async def publish(self, run_id: str, entries: Sequence[tuple[int, JsonValue]]) -> None:
        """Append `(base, item)` pairs to the run's live channel in one round trip, trimming
        it to about `LIVE_MAXLEN` entries and keeping it `LIVE_TTL` seconds after this
        publish (an item is a JSON object; `LiveEntry` says what `base` is). Best effort:
        nothing about a run's durability depends on it."""
        ...

    async def live(
        self, run_id: str, after: str | None = None, *, wait: float = 0.0, limit: int = 1000
    ) -> list[LiveEntry]:
        """Up to `limit` entries of the run's live channel with ids after `after` (None: from
        the oldest still kept), oldest first; when there are none, waits up to `wait`
        seconds for one to be published. [] for a run without a channel."""
        ...

    async def gc(self, now: float) -> int:
        """Delete the runs whose retention ran out by `now` (where the store does not expire
        them itself) and clean the indexes of runs that are gone; how many were removed."""
        ...

    async def reindex(self) -> int:
        """Rebuild the indexes (runs by agent, status, time) from the runs; how many runs."""
        ...

    async def ping(self, within: float) -> None:
        """Return when the store answers within `within` seconds, else raise
        `StoreUnavailable` whose message says why (refused, silent, refused credentials) and
        nothing else. A store in a file or in memory answers at once."""
        ...

    async def close(self) -> None:
        """Release connections and files. The store is unusable afterwards."""
        ...

    @property
    def ledger(self) -> Ledger:
        """Usage per budget scope and the limits people set, kept in this store."""
        ...

    durability: Durability
    """What every acknowledged commit reached (`storage._durability`: primary, fsync,
    replicas:N, replicas-fsync:N): chosen when the store is opened."""

    @property
    def limiter(self) -> Limiter:
        """Rate limits shared by every process on this store."""
        ...

    @property
    def queue(self) -> RunQueue:
        """The run queue the workers on this store share."""
        ...


def check_history(run: RunRecord, events: Sequence[Event]) -> None:
    """`ValueError` naming the problem unless `events` are `run`'s seqs 0..run.seq."""
    check_run_id(run.run_id)
    seqs = [e.seq for e in events]
    if seqs != list(range(run.seq + 1)):
        raise ValueError(
            f"run {run.run_id!r}: the events must be seqs 0..{run.seq} in order, not"
            f" {seqs[:5]}{'...' if len(seqs) > 5 else ''}"
        )
    if events[-1].dest != run.state:
        raise ValueError(
            f"run {run.run_id!r}: its last event goes to {events[-1].dest!r}, but the run is in"
            f" {run.state!r}"
        )

"""The contract's capabilities beside runs: usage ledgers and set limits, rate limits, the run
queue. Records and protocols only; every backend implements each in its own folder
(`storage/redis/`, `storage/embedded/`) and hands it out as `Store.ledger`, `Store.limiter`
and `Store.queue`.

Liveness of what a process holds (a lease, a rate-limit slot, a queue job) follows one rule
(`storage.process.expired_or_dead`): freed at once when its holder is provably dead on this
host, else when its TTL runs out.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, TypeAlias

from pydantic import JsonValue

__all__ = [
    "Bucket",
    "Job",
    "JobKind",
    "Ledger",
    "Limiter",
    "Reservation",
    "RunQueue",
    "ScopeCharge",
    "ScopeLedger",
    "WorkerBeat",
    "check_scope",
    "dump_beat",
    "load_beat",
    "prune_silent",
    "scope_ledgers_of",
]

_SCOPE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:@/-]{0,199}")


def check_scope(scope: str) -> str:
    """`scope` if usable as a ledger name, else `ValueError` saying why."""
    if not isinstance(scope, str) or not _SCOPE.fullmatch(scope):
        raise ValueError(
            f"invalid budget scope {scope!r}: use 1-200 characters from letters, digits and"
            " . _ : @ / -, starting with a letter or digit"
        )
    return scope


@dataclass(frozen=True, kw_only=True, slots=True)
class ScopeCharge:
    """What a commit also adds to a budget scope's ledger: the committed event's usage
    increments, to `scope`'s totals for `period`, once per event key (a key charged before,
    after a commit or by another commit, is not charged again); it also ends the request
    the committing run holds in flight there (`Ledger.reserve`). The ledger may forget the
    period after `expires_at` (unix seconds; 0 for never). Not stored in the history."""

    scope: str
    period: str
    expires_at: float = 0.0

    def __post_init__(self) -> None:
        check_scope(self.scope)


@dataclass(frozen=True, kw_only=True, slots=True)
class ScopeLedger:
    """One scope's ledger for one period, whole: what a backup carries."""

    scope: str
    period: str
    usage: dict[str, int] = field(default_factory=dict)
    charged: frozenset[str] = frozenset()
    """The event keys charged so far (each once)."""
    expires_at: float = 0.0


@dataclass(frozen=True, kw_only=True, slots=True)
class Reservation:
    """What `Ledger.reserve` answered: whether the request may go, with the figures it was
    judged on (what a budget error shows)."""

    admitted: bool
    used: dict[str, int]
    """The scope's committed totals, plus the requests other keys hold in flight, plus what
    the key's transition spent and has not committed (`spent`); with `total_tokens` (input
    plus output tokens, `storage.usage.with_total`)."""
    limits: dict[str, int]
    """The limits in force: those given, each replaced by the one people set for the scope
    (`limits("scope/<scope>")`), lower or higher."""


def scope_ledgers_of(
    usage: Iterable[Sequence[Any]], charges: Iterable[Sequence[Any]]
) -> list[ScopeLedger]:
    """Whole scope ledgers from table rows, for backends that keep them in tables: `usage` rows
    (scope, period, name, value) and `charges` rows (scope, period, key, expires_at); sorted
    by scope and period."""
    found: dict[tuple[str, str], dict[str, Any]] = {}
    for scope, period, name, value in usage:
        item = found.setdefault((scope, period), {"usage": {}, "charged": set(), "at": 0.0})
        item["usage"][str(name)] = int(value)
    for scope, period, key, expires_at in charges:
        item = found.setdefault((scope, period), {"usage": {}, "charged": set(), "at": 0.0})
        item["charged"].add(str(key))
        item["at"] = max(item["at"], float(expires_at))
    return [
        ScopeLedger(scope=scope, period=period, usage=item["usage"],
                    charged=frozenset(item["charged"]), expires_at=item["at"])
        for (scope, period), item in sorted(found.items())
    ]  # fmt: skip


class Ledger(Protocol):
    """Usage per budget scope and period (shared by many runs), the requests in flight
    there (`reserve`), and limits people set.

    A scope charge is idempotent by the committed event's key: `Store.commit(...,
    scope_charge=)` makes it in the commit's own atomic write, or, where one write cannot
    hold both (Redis Cluster), crash-safely inside the backend, so every charge lands once."""

    async def scope_usage(self, scope: str, period: str) -> dict[str, int]:
        """The scope's totals for `period` ({} when nothing was charged)."""
        ...

    async def reserve(
        self,
        scope: str,
        period: str,
        holder: str,
        limits: Mapping[str, int],
        ttl: float,
        *,
        spent: Mapping[str, int] | None = None,
    ) -> Reservation:
        """Admit one model request of run `holder` (a run id) against the scope's limits
        for `period`, and hold it in flight until the run's next commit charges the scope,
        atomically, in one round trip on a networked store (Redis Cluster: three, the set
        limits and the charges a crash left pending being in other slots). A run makes one
        request at a time, from one transition at a time; the event that transition commits
        has a key of its own per outcome (done, error, halt), so the reservation is the
        run's, not the event's.

        The limits in force are `limits` (the declared ones), each replaced by the one
        people set for `"scope/<scope>"`. `used` is the scope's committed totals, plus the
        requests the other runs hold (each live reservation counts what its transition
        made and has not committed, the one in flight included), plus `spent`: what this
        run's transition made and has not committed (its answered requests, their tokens
        and cost). The request is admitted iff every limit in force is above its `used`
        figure: so concurrent runs overshoot a `requests` limit by nothing, and a token or
        cost limit by what the requests in flight will use.

        When admitted, `holder` holds `spent["requests"] + 1` requests for `ttl` seconds
        (on the server's clock): a reservation whose process dies lapses then, unless the
        run's next holder takes it over. Reserving again with what `holder` holds already is
        admitted whatever the others hold (the same answer: it only renews the TTL; a run
        resumed after a crash goes on with its reservation). A scope charge of the run's
        commit (`Store.commit(run_id, ..., scope_charge=)`; `charge_scope(...,
        holder=run_id)`) drops the reservation in the same atomic write (Redis Cluster:
        when it settles the charge, the reservation counting until then); `release` drops
        it for a request that got no answer. Backups carry no reservations: they are
        transient."""
        ...

    async def release(self, scope: str, period: str, holder: str, *, keep: int = 0) -> None:
        """A request of run `holder` got no answer (nothing to charge): hold `keep` requests
        for it (its transition's answered ones, not committed yet), none with 0."""
        ...

    async def charge_scope(
        self,
        scope: str,
        period: str,
        key: str,
        usage: Mapping[str, int],
        expires_at: float,
        *,
        holder: str = "",
    ) -> bool:
        """Add `usage` to the scope's totals for `period` unless `key` was charged there
        before, and drop the reservation of run `holder` (`reserve`), atomically; True when
        charged. The ledger may forget the period after `expires_at`."""
        ...

    async def limits(self, subject: str) -> dict[str, int]:
        """Limits people set for `subject` ("run/<id>", "scope/<name>")."""
        ...

    async def set_limits(self, subject: str, limits: Mapping[str, int | None]) -> None:
        """Set (or with None remove) limits of `subject`."""
        ...

    async def all_limits(self) -> dict[str, dict[str, int]]:
        """Every subject's set limits (for backups)."""
        ...

    async def scope_ledgers(self) -> list[ScopeLedger]:
        """Every scope ledger the store keeps, whole (for backups)."""
        ...

    async def put_scope_ledger(self, ledger: ScopeLedger) -> None:
        """Replace the scope's ledger for its period by `ledger`, atomically (restores)."""
        ...


@dataclass(frozen=True, kw_only=True, slots=True)
class Bucket:
    """One rate limit's settings (0: no limit of that kind)."""

    rate: float = 0.0
    """Requests per second."""
    burst: float = 1.0
    token_rate: float = 0.0
    """Model tokens per second."""
    token_burst: float = 0.0
    concurrency: int = 0
    slot_ttl: float = 300.0
    """Seconds after which a slot a holder never gave back lapses (sooner when its holder is
    provably dead on this host: `storage.process`)."""


class Limiter(Protocol):
    """Rate limits shared by every process on the store.

    One limit (a key) has a token bucket of requests (`rate` per second, holding at most
    `burst`), one of model tokens (charged after each request with what it used), a cap on
    requests at once (slots held by a lease owner id, `storage.process.owner_id`), and a
    pause (a provider's 429 with Retry-After stops the key for everyone until then)."""

    async def acquire(self, key: str, bucket: Bucket, holder: str) -> tuple[float, str]:
        """Take a request slot: (0, "") when taken, else (seconds to wait, why). A slot whose
        holder is provably dead is freed first."""
        ...

    async def release(self, key: str, holder: str, tokens: int) -> None:
        """Give the slot back and charge the model tokens the request used."""
        ...

    async def pause(self, key: str, seconds: float) -> None:
        """Let no request of `key` start, in any process, for `seconds` from now."""
        ...


JobKind: TypeAlias = Literal["run", "event", "timeout"]


@dataclass(frozen=True, kw_only=True, slots=True)
class Job:
    """One queue entry: drive run `run_id` of `agent` (after delivering `event`, or firing a
    due timeout, for those kinds)."""

    id: str
    agent: str
    run_id: str
    kind: JobKind = "run"
    event: str = ""
    payload: JsonValue = None


@dataclass(frozen=True, kw_only=True, slots=True)
class WorkerBeat:
    """What a worker last said about itself."""

    name: str
    host: str
    pid: int
    agents: tuple[str, ...]
    concurrency: int
    started_at: float
    beat_at: float
    holding: tuple[str, ...]
    """Run ids it is driving."""
    stopping: bool = False

    def alive(self, now: float, interval: float) -> bool:
        return now - self.beat_at < 3 * interval


def dump_beat(beat: WorkerBeat) -> str:
    """A heartbeat as the queues store it (JSON; the name is the key)."""
    return json.dumps(
        {"host": beat.host, "pid": beat.pid, "agents": list(beat.agents),
         "concurrency": beat.concurrency, "started_at": beat.started_at,
         "beat_at": beat.beat_at, "holding": list(beat.holding), "stopping": beat.stopping}
    )  # fmt: skip


def load_beat(name: str, text: str) -> WorkerBeat | None:
    """The heartbeat `dump_beat` wrote, None for text that is not one (not ours to judge)."""
    try:
        d = json.loads(text)
        return WorkerBeat(
            name=name, host=str(d["host"]), pid=int(d["pid"]), agents=tuple(d["agents"]),
            concurrency=int(d["concurrency"]), started_at=float(d["started_at"]),
            beat_at=float(d["beat_at"]), holding=tuple(d["holding"]),
            stopping=bool(d.get("stopping", False)),
        )  # fmt: skip
    except (ValueError, KeyError, TypeError):
        return None


async def prune_silent(queue: RunQueue, interval: float) -> list[str]:
    """`RunQueue.prune` for every backend: forget the workers silent for 30 intervals."""
    now = time.time()
    gone = [b.name for b in await queue.workers() if now - b.beat_at > 30 * interval]
    for name in gone:
        await queue.forget(name)
    return gone


class RunQueue(Protocol):
    """The queue of runs to drive, shared by every worker on the store; one queue per agent.

    Delivery is at least once; exactly-once *execution* comes from the runs themselves
    (leases with fencing, idempotency keys), so a job seen twice costs a lookup, never a step
    run twice: a worker acknowledges a job only when the run no longer needs driving, or when
    it hands it back (`requeue`); while it drives a run it `touch`es the job; a job idle
    longer than `reclaim`'s `idle` belonged to a worker that died, and any worker takes it."""

    async def ensure_group(self, agents: Sequence[str]) -> None:
        """Make the queues of `agents` ready (idempotent)."""
        ...

    async def enqueue(
        self,
        agent: str,
        run_id: str,
        kind: JobKind = "run",
        *,
        event: str = "",
        payload: JsonValue = None,
    ) -> str:
        """Add a job; returns its id."""
        ...

    async def claim(
        self, consumer: str, agents: Sequence[str], count: int, block: float
    ) -> list[Job]:
        """New jobs for `consumer`, waiting up to `block` seconds for one to come."""
        ...

    async def reclaim(
        self, consumer: str, agents: Sequence[str], idle: float, count: int
    ) -> list[Job]:
        """Jobs whose worker stopped touching them `idle` seconds ago: it died."""
        ...

    async def touch(self, consumer: str, jobs: Sequence[Job]) -> None:
        """Tell the queue these jobs are alive (resets their idle time)."""
        ...

    async def ack(self, job: Job) -> None:
        """The job is done with: drop it."""
        ...

    async def requeue(self, job: Job) -> None:
        """Hand a run back to the queue for another worker (a graceful stop)."""
        ...

    async def dead_letter(self, job: Job, reason: str) -> None:
        """Park a job no worker can carry out, with why, and drop it from its queue."""
        ...

    async def pending(self, agents: Sequence[str]) -> dict[str, int]:
        """Jobs claimed and not yet acknowledged, by agent."""
        ...

    async def waiting(self, agents: Sequence[str]) -> dict[str, int]:
        """Jobs not claimed yet, by agent."""
        ...

    async def beat(self, beat: WorkerBeat) -> None:
        """Record a worker's heartbeat."""
        ...

    async def forget(self, name: str) -> None:
        """Drop a worker's heartbeat."""
        ...

    async def workers(self) -> list[WorkerBeat]:
        """The workers' last heartbeats, by name."""
        ...

    async def prune(self, interval: float) -> list[str]:
        """Drop the heartbeats of workers silent for more than 30 intervals."""
        ...

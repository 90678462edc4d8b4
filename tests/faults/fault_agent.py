"""The agent the fault tests drive, and a child process that drives it.

Every step appends one line to a side-effect log before it returns:
`"{idempotency_key}\t{pid}\t{started}\t{ended}\n"` (one `write` on an `O_APPEND` file, so
lines from concurrent processes never interleave). A test counts executions per key from it.

    python -m tests.faults.fault_agent share URL PREFIX RUN_ID LOG STEPS LEASE_TTL TURN
    python -m tests.faults.fault_agent hold URL PREFIX RUN_ID LOG STEPS LEASE_TTL PAUSE_AT

`share`: prints "ready", waits for a line on stdin, then takes turns with other processes:
takes the lease, commits up to TURN steps, releases it, again, until the run is done. Prints
"commits N locked N taken N" and exits 0.

`hold`: drives the run to its end; in step PAUSE_AT (a trigger) it prints "in TRIGGER" and
waits for a line on stdin (the parent may SIGSTOP it there). Exits 0 after "done ..." when it
finished, 3 after "taken-over ..." when a commit was refused (`RunTakenOver`).
"""

from __future__ import annotations

import asyncio
import os
import random
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence

import redis.asyncio as aioredis
from pydantic import BaseModel, JsonValue

from agents import Agent, tool
from statemachine import RunLocked, StepContext
from statemachine.errors import RunTakenOver
from storage import CommitOutcome, Committed, Duplicate, Event, RedisStore, open_store
from storage.base import ScopeCharge

EXIT_TAKEN_OVER = 3


class Progress(BaseModel):
    done: list[str] = []


class CountingStore(RedisStore):
    """A `RedisStore` that counts the outcomes of its commits and remembers the keys of those
    the server acknowledged (`Committed`, or `Duplicate`: applied on an earlier send)."""

    def __init__(
        self, client: aioredis.Redis, *, prefix: str = "agentfsm", where: str = "redis"
    ) -> None:
        super().__init__(client, prefix=prefix, where=where)
        self.outcomes: Counter[str] = Counter()
        self.acknowledged: set[str] = set()

    @classmethod
    def connect(cls, url: str, *, prefix: str) -> CountingStore:
        """`RedisStore.from_url`, typed as this class."""
        store = cls.from_url(url, prefix=prefix)
        assert isinstance(store, CountingStore)
        return store

    async def commit(
        self,
        run_id: str,
        *,
        expected_seq: int,
        token: int,
        event: Event,
        scope_charge: ScopeCharge | None = None,
        live: Sequence[tuple[int, JsonValue]] = (),
    ) -> CommitOutcome:
        outcome = await super().commit(
            run_id, expected_seq=expected_seq, token=token, event=event,
            scope_charge=scope_charge, live=live,
        )  # fmt: skip
        self.outcomes[type(outcome).__name__] += 1
        if isinstance(outcome, Committed | Duplicate):
            self.acknowledged.add(event.key)
        return outcome


def log_effect(log_path: str, key: str, started: float) -> None:
    line = f"{key}\t{os.getpid()}\t{started:.6f}\t{time.time():.6f}\n"
    fd = os.open(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)


def make_agent(
    steps: int,
    lease_ttl: float,
    effect: Callable[[StepContext], None],
    *,
    delay: tuple[float, float] = (0.0, 0.0),
    pause: Callable[[StepContext], Awaitable[None]] | None = None,
    name: str = "fault_steps",
) -> Agent[Progress]:
    """`steps` tool steps t0..t{steps-1} from s0 to s{steps}; each sleeps a random time in
    `delay`, awaits `pause(ctx)`, calls `effect(ctx)`, then appends its trigger to
    `memory.done`."""

    async def step(memory: Progress, ctx: StepContext) -> list[str]:
        if delay[1] > 0:
            await asyncio.sleep(random.uniform(*delay))
        if pause is not None:
            await pause(ctx)
        effect(ctx)
        return [*memory.done, ctx.trigger]

    return Agent(
        name=name,
        memory=Progress,
        initial="s0",
        final=[f"s{steps}"],
        lease_ttl=lease_ttl,
        transitions=[
            tool(f"t{i}", f"s{i}", f"s{i + 1}", step, into="done", retries=3) for i in range(steps)
        ],
    )


async def share(
    url: str, prefix: str, run_id: str, log: str, steps: int, ttl: float, turn: int
) -> None:
    def effect(ctx: StepContext) -> None:
        log_effect(log, ctx.idempotency_key, time.time())

    store = open_store(url, prefix=prefix)
    machine = make_agent(steps, ttl, effect, delay=(0.005, 0.02))
    print("ready", flush=True)
    await asyncio.to_thread(sys.stdin.readline)  # the parent releases all children at once
    run = await machine.start(store, Progress(), run_id=run_id, lease_wait=20 * ttl)
    commits = locked = taken = 0
    finished = False
    while not finished:
        try:
            for _ in range(turn):
                event = await run.step()
                if event is None:
                    finished = True
                    break
                if event.worker == run.owner:
                    commits += 1
            await run.release()
        except RunLocked:
            locked += 1
        except RunTakenOver:
            taken += 1
        # Step aside longer than a waiting process polls (0.25 s), so the lease changes hands.
        await asyncio.sleep(random.uniform(0.25, 0.4))
    await store.close()
    print(f"commits {commits} locked {locked} taken {taken}", flush=True)


async def hold(
    url: str, prefix: str, run_id: str, log: str, steps: int, ttl: float, pause_at: str
) -> int:
    def effect(ctx: StepContext) -> None:
        log_effect(log, ctx.idempotency_key, time.time())

    async def pause(ctx: StepContext) -> None:
        if ctx.trigger == pause_at:
            print(f"in {ctx.trigger}", flush=True)
            # The parent may SIGSTOP the process in here; it says when to go on.
            await asyncio.to_thread(sys.stdin.readline)

    store = open_store(url, prefix=prefix)
    machine = make_agent(steps, ttl, effect, delay=(0.01, 0.02), pause=pause)
    run = await machine.start(store, Progress(), run_id=run_id, lease_wait=20 * ttl)
    try:
        await run.until_done()
    except RunTakenOver as exc:
        print(f"taken-over {exc}", flush=True)
        return EXIT_TAKEN_OVER
    finally:
        await store.close()
    print(f"done {run.status} {run.seq}", flush=True)
    return 0


def main(argv: list[str]) -> int:
    mode, url, prefix, run_id, log, steps, ttl, last = argv
    if mode == "share":
        asyncio.run(share(url, prefix, run_id, log, int(steps), float(ttl), int(last)))
        return 0
    if mode == "hold":
        return asyncio.run(hold(url, prefix, run_id, log, int(steps), float(ttl), last))
    raise SystemExit(f"unknown mode {mode!r}")


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

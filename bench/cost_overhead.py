"""What cost control adds per step: the usage ledger in the commit, budgets, an unlimited
shared rate limit (µs per step and round trips per step).

Rows, on Redis (a server of our own, or `--url`) and on the embedded store, measured
interleaved round by round (one warm-up round first), medians over the rounds:

1. `commit, no usage` vs `commit, 4 usage figures`: `Store.commit` of one event, seq after
   seq, without and with `usage` (what the ledger's HINCRBYs / upserts add to the commit);
2. `llm step, plain`: one `await run.step()` of an agent whose table is a chain of `llm()`
   steps on an offline `FunctionModel` (pydantic-ai's own cost included);
3. `+ run budget`: the same with `Budget(requests=10**9)` (checked, never reached);
4. `+ scope budget`: with a scope budget (a scope read before; the charge is in the commit);
5. `+ rate limit (unlimited)`: with `RateLimit(requests_per_second=1e9, burst=1e9)`;
6. the added store calls alone, without pydantic-ai's noise around them: a scope's read and
   charge, a rate limit's acquire and release.

The llm-step rows carry pydantic-ai's own milliseconds per request; on a busy machine their
differences drown in its noise: read the round trips, and the rows of the calls alone.

    python3 bench/cost_overhead.py [--steps 200] [--repeat 3] [--url redis://127.0.0.1:PORT]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as `python3 bench/cost_overhead.py`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pydantic import BaseModel
from pydantic_ai.messages import ModelMessage, ModelResponse, TextPart
from pydantic_ai.models.function import AgentInfo, FunctionModel
from pydantic_ai.usage import RequestUsage

from agents import Agent, Budget, RateLimit, llm
from bench._counting import Wire, count_wire
from bench._redis import markdown_table, redis_for
from storage import Event, Lease, RedisStore, RunRecord, Store, open_store
from storage._capabilities import Bucket

USAGE = {"requests": 1, "input_tokens": 120, "output_tokens": 40, "cost_nusd": 5200}


class Memory(BaseModel):
    tenant: str = "acme"
    text: str = ""


def _model(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
    return ModelResponse(
        parts=[TextPart("ok")], usage=RequestUsage(input_tokens=120, output_tokens=40)
    )


def make_agent(steps: int, variant: str) -> Agent[Memory]:
    states = [f"s{i}" for i in range(steps)] + ["done"]
    extra: dict[str, Any] = {}
    if variant == "run budget":
        extra["budget"] = Budget(requests=10**9)
    elif variant == "scope budget":
        extra |= {"scope_budget": Budget(requests=10**9, per="day"),
                  "budget_scope": lambda m: m.tenant}  # fmt: skip
    elif variant == "rate limit":
        extra["rate_limits"] = [RateLimit(requests_per_second=1e9, burst=1e9)]
    return Agent(
        name=f"bench-{variant.replace(' ', '-')}", memory=Memory, model=FunctionModel(_model),
        initial="s0", final=["done"], lease_ttl=60, **extra,
        transitions=[
            llm(f"t{i}", states[i], states[i + 1], prompt="p", into="text", history=False)
            for i in range(steps)
        ],
    )  # fmt: skip


async def time_commits(store: Store, n: int, usage: dict[str, int] | None) -> list[float]:
    t = time.time()
    run_id = f"c{time.monotonic_ns()}"
    run = RunRecord(run_id=run_id, agent="bench", version=1, state="a", seq=0,
                    status="running", memory={}, created_at=t, updated_at=t)  # fmt: skip
    await store.create(run)
    lease = await store.acquire_lease(run_id, "bench", 60)
    assert isinstance(lease, Lease)
    token = lease.token
    out = []
    for seq in range(1, n + 1):
        event = Event(seq=seq, trigger="go", kind="llm", source="a", dest="a",
                      status="running", key=f"{run_id}:{seq}", usage=usage,
                      ended_at=time.time())  # fmt: skip
        start = time.perf_counter_ns()
        await store.commit(run_id, expected_seq=seq - 1, token=token, event=event)
        out.append((time.perf_counter_ns() - start) / 1000)
    return out


async def time_limiter(store: Store, n: int) -> list[float]:
    """One unlimited rate limit's acquire + release, as an llm step does them."""
    limiter = store.limiter
    bucket = Bucket(rate=1e9, burst=1e9)
    out = []
    for i in range(n):
        start = time.perf_counter_ns()
        await limiter.acquire("bench", bucket, f"h{i}")
        await limiter.release("bench", f"h{i}", 160)
        out.append((time.perf_counter_ns() - start) / 1000)
    return out


async def time_scope(store: Store, n: int) -> list[float]:
    """A scope budget's read before a request and its charge after the commit."""
    ledger = store.ledger
    scope = f"s{time.monotonic_ns()}"
    out = []
    for i in range(n):
        start = time.perf_counter_ns()
        await ledger.scope_usage(scope, "2026-12-02")
        await ledger.charge_scope(scope, "2026-12-02", f"k{i}", USAGE, 0)
        out.append((time.perf_counter_ns() - start) / 1000)
    return out


async def time_steps(
    store: Store, agent: Agent[Memory], wire: Wire | None
) -> tuple[list[float], float]:
    run = await agent.start(store, Memory(), run_id=f"r{time.monotonic_ns()}")
    await run.step()  # takes the lease: left out
    out = []
    if wire is not None:
        wire.reset()
    while run.status == "running":
        start = time.perf_counter_ns()
        await run.step()
        out.append((time.perf_counter_ns() - start) / 1000)
    await run.release()
    trips = wire.round_trips / len(out) if wire is not None else float("nan")
    return out, trips


VARIANTS = ["plain", "run budget", "scope budget", "rate limit"]


async def bench_store(
    name: str, store: Store, wire: Wire | None, args: argparse.Namespace,
    progress: Callable[[str], None],
) -> list[list[str]]:  # fmt: skip
    agents = {v: make_agent(args.steps, v) for v in VARIANTS}
    samples: dict[str, list[float]] = {}
    trips: dict[str, list[float]] = {}
    for round_ in range(args.repeat + 1):
        for label, usage in (("commit, no usage", None), ("commit, 4 usage figures", USAGE)):
            if wire is not None:
                wire.reset()
            got = await time_commits(store, args.steps, usage)
            if round_:
                samples.setdefault(label, []).append(statistics.median(got))
                if wire is not None:
                    trips.setdefault(label, []).append(wire.round_trips / args.steps)
        for label, timer in (
            ("scope read + charge (alone)", time_scope),
            ("rate limit acquire + release (alone)", time_limiter),
        ):
            if wire is not None:
                wire.reset()
            got = await timer(store, args.steps)
            if round_:
                samples.setdefault(label, []).append(statistics.median(got))
                if wire is not None:
                    trips.setdefault(label, []).append(wire.round_trips / args.steps)
        for variant in VARIANTS:
            got, per_step = await time_steps(store, agents[variant], wire)
            if round_:
                label = f"llm step, {variant}" if variant == "plain" else f"+ {variant}"
                samples.setdefault(label, []).append(statistics.median(got))
                trips.setdefault(label, []).append(per_step)
        progress(f"{name}: round {round_} done")
    rows = []
    base = statistics.median(samples["llm step, plain"])
    for label, values in samples.items():
        med = statistics.median(values)
        added = "" if not label.startswith("+") else f"{med - base:+.0f}"
        rt = f"{statistics.median(trips[label]):.2f}" if label in trips else "-"
        rows.append([f"{name}: {label}", f"{med:.0f}", added, rt])
    return rows


async def bench(url: str, args: argparse.Namespace) -> None:
    def progress(text: str) -> None:
        print(text, file=sys.stderr, flush=True)

    redis = RedisStore.from_url(url, prefix=f"bench{time.monotonic_ns()}")
    wire = count_wire(redis.client.connection_pool)  # standalone
    rows = await bench_store("redis", redis, wire, args, progress)
    await redis.close()
    with tempfile.TemporaryDirectory() as tmp:
        embedded = open_store(f"sqlite:///{tmp}/bench.db")
        rows += await bench_store("embedded", embedded, None, args, progress)
        await embedded.close()
    print(markdown_table(["row", "µs per step (median)", "added µs", "round trips/step"], rows))


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--steps", type=int, default=200, help="steps per measured run")
    parser.add_argument("--repeat", type=int, default=3, help="measured rounds")
    parser.add_argument("--url", help="use this redis-server (redis://127.0.0.1:PORT)")
    args = parser.parse_args(argv)
    with redis_for(args.url, parser) as (url, _own):
        asyncio.run(bench(url, args))


if __name__ == "__main__":
    main()

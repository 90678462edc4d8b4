"""The Postgres store against the raw Postgres floor (and, when installed, LangGraph's
`AsyncPostgresSaver`), every row in one run, on one server.

    python3 bench/postgres.py                       # the machine's server, database test
    python3 bench/postgres.py --url postgresql://127.0.0.1:5432/test --rounds 5

Rows (p50 over the samples of all rounds; rows interleaved round by round so drift hits them
alike; a schema of the script's own, dropped at the end):

- `floor: statements` — asyncpg (the store's driver, settings as the store's default: no named
  prepared statements), one transaction per step holding the statements a commit needs: the
  idempotency lookup, the fenced UPDATE of the run row, the INSERT of the event, the upsert
  of the patched memory field. A run: one transaction creating the run (row, memory, event 0),
  then its steps.
- `floor: statements, prepared` — the same with asyncpg's named statement cache.
- `floor: commit function` — one raw call of the store's own `commit()` function: what the
  server does for a commit, without the store's Python.
- `agentfsm Store.commit` — `PostgresStore.commit` per step (a run: `Store.start` + commits).
- `agentfsm agent` — a table agent of no-op async tool steps: *per step* is the gap from one
  step body's end to the next one's start in a run of `--long` steps; *per run* is
  `await agent.run(store, memory, run_id=...)` of a 5-step agent, call to return.
- `LangGraph AsyncPostgresSaver` (if `langgraph` and `langgraph-checkpoint-postgres` are
  installed; bench-only, not a project dependency) — a `StateGraph` node looping on itself,
  `ainvoke(..., durability="sync")`: per step the same gap, per run a 5-step graph.
- `DBOS` (if `dbos` is installed; bench-only) — an async `@DBOS.workflow` calling an async
  `@DBOS.step` in a loop, its system database in a schema of its own on the same server.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import json
import os
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypedDict
from urllib.parse import parse_qsl, quote, urlencode, urlsplit, urlunsplit

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import asyncpg
from pydantic import BaseModel

from agents import Agent, tool
from storage import Committed, Event, Lease, RunRecord
from storage.postgres import PostgresStore

RUN_STEPS = 5


class Memory(BaseModel):
    note: str = ""


def stamped_agent(name: str, steps: int, stamps: list[int]) -> Agent[Memory]:
    async def body(m: Memory) -> None:
        stamps.append(time.perf_counter_ns())
        stamps.append(time.perf_counter_ns())

    return Agent(
        name=name, memory=Memory, initial="s0", final=f"s{steps}", lease_ttl=600,
        transitions=[tool(f"t{i}", f"s{i}", f"s{i + 1}", body) for i in range(steps)],
    )  # fmt: skip


def gaps(stamps: list[int]) -> list[int]:
    """End of one body to the start of the next (stamps come in pairs: start, end)."""
    return [stamps[i + 1] - stamps[i] for i in range(1, len(stamps) - 1, 2)]


def p50(samples: list[int]) -> float:
    return statistics.median(samples) / 1000 if samples else float("nan")


class Floor:
    """The statements a commit needs, from the client, one transaction per step."""

    def __init__(self, conn: Any, schema: str) -> None:
        self.c, self.s = conn, schema

    async def create(self, run_id: str) -> None:
        s = self.s
        async with self.c.transaction():
            await self.c.execute(
                f"INSERT INTO {s}.runs (run_id, agent, version, state, seq, status, created_at,"
                " updated_at, fence, holder) VALUES ($1, 'floor', 1, 's0', 0, 'running', $2, $2,"
                " 1, 'me')",
                run_id, time.time(),
            )  # fmt: skip
            await self.c.execute(f"INSERT INTO {s}.memory VALUES ($1, 'note', $2)", run_id, b'""')
            await self.c.execute(
                f"INSERT INTO {s}.events VALUES ($1, 0, $2, $3)", run_id, f"{run_id}:start",
                b'{"seq":0}',
            )  # fmt: skip

    async def step(self, run_id: str, seq: int) -> None:
        s, key = self.s, f"{run_id}:{seq}:t"
        async with self.c.transaction():
            done = await self.c.fetchval(
                f"SELECT seq FROM {s}.events WHERE run_id = $1 AND key = $2", run_id, key
            )
            assert done is None
            moved = await self.c.fetchval(
                f"UPDATE {s}.runs SET seq = $3, state = $4, updated_at = $5, crashes = 0,"
                " deadline = NULL WHERE run_id = $1 AND fence = 1 AND seq = $2 RETURNING seq",
                run_id, seq - 1, seq, f"s{seq}", time.time(),
            )  # fmt: skip
            assert moved == seq
            await self.c.execute(
                f"INSERT INTO {s}.events VALUES ($1, $2, $3, $4)", run_id, seq, key,
                b'{"seq":1,"trigger":"t","kind":"tool"}',
            )  # fmt: skip
            await self.c.execute(
                f"INSERT INTO {s}.memory VALUES ($1, 'note', $2) ON CONFLICT (run_id, name)"
                " DO UPDATE SET json = excluded.json",
                run_id, b'"x"',
            )  # fmt: skip


def event(run_id: str, seq: int) -> Event:
    return Event(
        seq=seq, trigger="t", kind="tool", source=f"s{seq - 1}", dest=f"s{seq}",
        status="running", key=f"{run_id}:{seq - 1}:t", patch={"note": "x"}, ended_at=time.time(),
    )  # fmt: skip


def record(run_id: str) -> RunRecord:
    t = time.time()
    return RunRecord(
        run_id=run_id, agent="bench", version=1, state="s0", seq=0, status="running",
        memory={"note": ""}, created_at=t, updated_at=t,
    )  # fmt: skip


async def timed(op: Callable[[], Awaitable[Any]]) -> int:
    t0 = time.perf_counter_ns()
    await op()
    return time.perf_counter_ns() - t0


async def measure(url: str, schema: str, rounds: int, long: int, runs: int) -> dict[str, Any]:
    base = url
    store = PostgresStore(f"{url}{'&' if '?' in url else '?'}schema={schema}")
    await store.ping(5)
    await store.list_runs(limit=1)  # makes the schema
    plain = await asyncpg.connect(base, statement_cache_size=0)
    prepared = await asyncpg.connect(base)
    step: dict[str, list[int]] = {}
    run: dict[str, list[int]] = {}
    n = 0

    def new_id(tag: str) -> str:
        nonlocal n
        n += 1
        return f"{tag}-{n}"

    for row in ("floor: statements", "floor: statements, prepared", "floor: commit function",
                "agentfsm Store.commit", "agentfsm agent"):  # fmt: skip
        step[row], run[row] = [], []
    commit_sql = (
        f"SELECT {schema}.commit($1, $2, 1, $3, $4, 'running', $5, NULL, NULL, NULL, $6,"
        " ARRAY['note'], ARRAY[$7::bytea], ARRAY[]::text[], NULL, NULL, NULL, NULL)"
    )
    stamps: list[int] = []
    long_agent = stamped_agent("bench_long", long, stamps)
    short_agent = stamped_agent("bench_short", RUN_STEPS, [])
    peers = await langgraph_rows(url, schema, step, run) + dbos_rows(url, schema, step, run)
    for _ in range(rounds):
        for conn, row in ((plain, "floor: statements"), (prepared, "floor: statements, prepared")):
            floor = Floor(conn, schema)
            rid = new_id("f")
            await floor.create(rid)
            for seq in range(1, long + 1):
                step[row].append(await timed(lambda: floor.step(rid, seq)))  # noqa: B023
            for _ in range(runs):
                rid = new_id("fr")

                async def whole() -> None:
                    await floor.create(rid)  # noqa: B023
                    for seq in range(1, RUN_STEPS + 1):
                        await floor.step(rid, seq)  # noqa: B023

                run[row].append(await timed(whole))
        rid = new_id("c")
        await store.create(record(rid))
        lease = await store.acquire_lease(rid, "me", 600)
        assert isinstance(lease, Lease)
        for seq in range(1, long + 1):
            payload = json.dumps({"seq": seq, "trigger": "t", "kind": "tool"}).encode()
            step["floor: commit function"].append(
                await timed(
                    lambda: plain.fetchval(
                        commit_sql, rid, seq - 1, f"{rid}:{seq}", f"s{seq}", time.time(),  # noqa: B023
                        payload, b'"x"',  # noqa: B023
                    )
                )
            )  # fmt: skip
        rid = new_id("s")
        await store.create(record(rid))
        lease = await store.acquire_lease(rid, "me", 600)
        assert isinstance(lease, Lease)
        for seq in range(1, long + 1):
            ev = event(rid, seq)
            t0 = time.perf_counter_ns()
            out = await store.commit(rid, expected_seq=seq - 1, token=lease.token, event=ev)
            step["agentfsm Store.commit"].append(time.perf_counter_ns() - t0)
            assert isinstance(out, Committed)
        for _ in range(runs):
            rid = new_id("sr")

            async def whole_store() -> None:
                _, held = await store.start(record(rid), owner="me", ttl=600)  # noqa: B023
                assert isinstance(held, Lease)
                for seq in range(1, RUN_STEPS + 1):
                    ev = event(rid, seq)  # noqa: B023
                    await store.commit(rid, expected_seq=seq - 1, token=held.token, event=ev)  # noqa: B023

            run["agentfsm Store.commit"].append(await timed(whole_store))
        stamps.clear()
        await long_agent.run(store, Memory(), run_id=new_id("a"))
        step["agentfsm agent"].extend(gaps(stamps))
        for _ in range(runs):
            rid = new_id("ar")
            run["agentfsm agent"].append(
                await timed(lambda: short_agent.run(store, Memory(), run_id=rid))  # noqa: B023
            )
        for peer in peers:
            await peer()
    await plain.close()
    await prepared.close()
    await store.close()
    conn = await asyncpg.connect(base)
    await conn.execute(f"DROP SCHEMA {schema} CASCADE")
    await conn.execute(f"DROP SCHEMA IF EXISTS {schema}_dbos CASCADE")
    await conn.execute(f"DROP SCHEMA IF EXISTS {schema}_lg CASCADE")
    await conn.close()
    if "dbos" in sys.modules:
        sys.modules["dbos"].DBOS.destroy()
    return {"step": step, "run": run}


async def langgraph_rows(
    url: str, schema: str, step: dict[str, list[int]], run: dict[str, list[int]]
) -> list[Callable[[], Awaitable[None]]]:
    """LangGraph with its Postgres saver, when installed: a round of it per call."""
    try:  # imported by name: bench-only peers, not project dependencies
        saver_module = importlib.import_module("langgraph.checkpoint.postgres.aio")
        graph_module = importlib.import_module("langgraph.graph")
    except ImportError as exc:
        print(
            f"(LangGraph row skipped: {exc}; pip install langgraph langgraph-checkpoint-postgres)"
        )
        return []
    row = "LangGraph AsyncPostgresSaver"
    step[row], run[row] = [], []
    stamps: list[int] = []

    class State(TypedDict):
        n: int
        limit: int

    END, START = graph_module.END, graph_module.START

    def node(state: State) -> dict[str, int]:
        stamps.append(time.perf_counter_ns())
        stamps.append(time.perf_counter_ns())
        return {"n": state["n"] + 1}

    graph = graph_module.StateGraph(State)
    graph.add_node("work", node)
    graph.add_edge(START, "work")
    graph.add_conditional_edges("work", lambda s: END if s["n"] >= s["limit"] else "work")
    # Its tables in a schema of their own (search_path), dropped with the script's others.
    parts = urlsplit(url)
    query = dict(parse_qsl(parts.query))
    query["options"] = f"{query.get('options', '')} -c search_path={schema}_lg".strip()
    conn = await asyncpg.connect(url)
    await conn.execute(f"CREATE SCHEMA IF NOT EXISTS {schema}_lg")
    await conn.close()
    saver_cm = saver_module.AsyncPostgresSaver.from_conn_string(
        urlunsplit(parts._replace(query=urlencode(query, quote_via=quote)))
    )
    saver = await saver_cm.__aenter__()
    await saver.setup()
    app = graph.compile(checkpointer=saver)
    count = 0

    async def one_round() -> None:
        nonlocal count
        assert saver_cm is not None  # held: dropping it would close the saver's connection
        stamps.clear()
        count += 1
        config = {"configurable": {"thread_id": f"long-{os.getpid()}-{count}"},
                  "recursion_limit": 10_000}  # fmt: skip
        await app.ainvoke({"n": 0, "limit": LONG}, config, durability="sync")
        step[row].extend(gaps(stamps))
        for i in range(RUNS):
            config = {"configurable": {"thread_id": f"run-{os.getpid()}-{count}-{i}"}}
            t0 = time.perf_counter_ns()
            await app.ainvoke({"n": 0, "limit": RUN_STEPS}, config, durability="sync")
            run[row].append(time.perf_counter_ns() - t0)

    return [one_round]


def dbos_rows(
    url: str, schema: str, step: dict[str, list[int]], run: dict[str, list[int]]
) -> list[Callable[[], Awaitable[None]]]:
    """DBOS with its Postgres system database (a schema of its own), when installed."""
    try:  # imported by name: a bench-only peer, not a project dependency
        dbos = importlib.import_module("dbos")
    except ImportError as exc:
        print(f"(DBOS row skipped: {exc}; pip install dbos)")
        return []
    row = "DBOS"
    step[row], run[row] = [], []
    stamps: list[int] = []
    DBOS = dbos.DBOS
    DBOS(config={"name": "bench", "system_database_url": url, "log_level": "WARNING",
                 "dbos_system_schema": f"{schema}_dbos", "enable_otlp": False})  # fmt: skip

    @DBOS.step()  # type: ignore[untyped-decorator]
    async def body(i: int) -> int:
        stamps.append(time.perf_counter_ns())
        stamps.append(time.perf_counter_ns())
        return i

    @DBOS.workflow()  # type: ignore[untyped-decorator]
    async def flow(n: int) -> int:
        for i in range(n):
            await body(i)
        return n

    DBOS.launch()
    count = 0

    async def one_round() -> None:
        nonlocal count
        count += 1
        stamps.clear()
        with dbos.SetWorkflowID(f"long-{os.getpid()}-{count}"):
            await flow(LONG)
        step[row].extend(gaps(stamps))
        for i in range(RUNS):
            t0 = time.perf_counter_ns()
            with dbos.SetWorkflowID(f"run-{os.getpid()}-{count}-{i}"):
                await flow(RUN_STEPS)
            run[row].append(time.perf_counter_ns() - t0)

    return [one_round]


LONG = 200
RUNS = 30


def table(results: dict[str, Any]) -> str:
    step, run = results["step"], results["run"]
    floor_step = p50(step["floor: statements"])
    floor_run = p50(run["floor: statements"])
    lines = [
        f"| row | per step p50 (µs) | x floor | per {RUN_STEPS}-step run p50 (µs) | x floor |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for row in step:
        s, r = p50(step[row]), p50(run[row])
        lines.append(
            f"| {row} | {s:,.0f} | {s / floor_step:.2f} | "
            + (f"{r:,.0f} | {r / floor_run:.2f} |" if run[row] else "- | - |")
        )
    return "\n".join(lines)


def main() -> None:
    global LONG, RUNS
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="postgresql://127.0.0.1:5432/test")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--long", type=int, default=200, help="steps of each long run")
    parser.add_argument("--runs", type=int, default=30, help="short runs per row and round")
    args = parser.parse_args()
    LONG, RUNS = args.long, args.runs
    schema = f"bench_{os.getpid()}"
    results = asyncio.run(measure(args.url, schema, args.rounds, args.long, args.runs))
    print(table(results))


if __name__ == "__main__":
    main()

"""What a user of `agent.run` sees, against the floors and the peers, in one run (issue 30).

Every timing is taken the way a user would take it: one process, `await agent.run(store,
memory, run_id=...)` on a chain of trivial tool steps, the step bodies stamping
`time.perf_counter_ns()` when they start and when they end. The floors and the peers run the
same trivial bodies, stamped the same way.

1. Per step, on long runs (`--steps`, default 1,000 steps each): the gap between one step
   body's end and the next one's start, p50 and p99, and both against the asyncio EVALSHA
   floor's (the embedded store's against a raw SQLite WAL floor's).
2. Whole runs (`--runs` runs of `--run-steps`, default 150 x 5): from the call to its return,
   split into *start* (call -> first step body starts) and *end* (last step body ends ->
   return), p50 and p99.
3. Peak RSS (`ru_maxrss`) of a fresh process that runs a 5-step table agent (no LLM step) to
   its end on Redis, for agentfsm and Burr, and whether `pydantic_ai` got imported there.
4. `--callgrind`: instructions per step (valgrind's callgrind) of `agent.run` on the no-I/O
   stub store (`bench.commit_overhead.StubStore`): a count the machine's load cannot move.
   Run twice, both shown.

Rows (both tables): raw `EVALSHA` of storage/create.lua once then of storage/commit.lua per step
with redis-py's sync and asyncio clients (the floor: the round trips the design cannot avoid,
the keys and args the store sends); agentfsm with an async tool, a sync tool run inline
(`in_thread=False`) and a sync tool with the default placement; Burr with its async Redis
persister; LangGraph with a minimal plain-Redis checkpointer and with its in-memory saver
(bench/_peers.py says why and what they send); a raw SQLite WAL floor (one `BEGIN IMMEDIATE`
transaction per step: a compare-and-set `UPDATE` of the run row and an `INSERT` of the
event; the run created by one transaction of two `INSERT`s) and agentfsm on the embedded store
at the same setting (`sqlite:///`, WAL, `synchronous=NORMAL`).

The machine is shared and drifts: each process measures the rows round by round (`--rounds`;
a long run of every row per round, then a share of the short runs, one run of each row in
turn), and `--processes` fresh processes run one after another; the tables give the median
over processes of each process's figures. One private redis-server (no persistence) serves them all.

    python3 bench/user_cost.py [--processes 3] [--steps 1000] [--runs 150] [--run-steps 5]
                               [--rounds 3] [--callgrind | --callgrind-only] [--no-rss]

Peers are optional: `pip install burr langgraph` (not in pyproject.toml); a missing one's rows
are skipped with the reason.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import platform
import re
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field, replace
from importlib.resources import files
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as `python3 bench/user_cost.py`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import redis
import redis.asyncio as aioredis
from pydantic import BaseModel

from agents import Agent, tool
from bench._floors import LEASE_TTL, event_json, pct
from bench._peers import BurrRows, LangGraphRows, missing, plain_redis_saver
from bench._redis import markdown_table, redis_for
from bench.commit_overhead import StubStore, machine
from storage import RedisStore, RunRecord, Store, open_store

ROOT = Path(__file__).resolve().parents[1]
_COMMIT_LUA = files("storage.redis").joinpath("scripts", "commit.lua").read_text(encoding="utf-8")
_CREATE_LUA = files("storage.redis").joinpath("scripts", "create.lua").read_text(encoding="utf-8")

ASYNC_FLOOR = "EVALSHA floor, asyncio client"
SQLITE_FLOOR = "SQLite WAL floor"


# ------------------------------------------------------------------------- step bodies


class Marks:
    """Start and end stamps of the step bodies of the run being measured."""

    def __init__(self) -> None:
        self.starts: list[int] = []
        self.ends: list[int] = []

    def reset(self) -> None:
        self.starts = []
        self.ends = []

    def body(self) -> None:
        """A trivial step body: stamps its start and its end."""
        self.starts.append(time.perf_counter_ns())
        self.ends.append(time.perf_counter_ns())

    def gaps(self) -> list[int]:
        """Nanoseconds from each body's end to the next one's start."""
        return [b - a for a, b in zip(self.ends, self.starts[1:], strict=False)]


MARKS = Marks()


class Memory(BaseModel):
    note: str = ""


async def async_tool(m: Memory) -> None:
    MARKS.body()


def sync_tool(m: Memory) -> None:
    MARKS.body()


def chain(name: str, steps: int, fn: Callable[[Memory], Any], **options: Any) -> Agent[Memory]:
    """A table agent of `steps` trivial tool steps: s0 -> s1 -> ... -> s{steps}."""
    return Agent(
        name=name,
        memory=Memory,
        initial="s0",
        final=f"s{steps}",
        transitions=[tool(f"t{i}", f"s{i}", f"s{i + 1}", fn, **options) for i in range(steps)],
        lease_ttl=LEASE_TTL,
    )


# ------------------------------------------------------------------------------- rows

RunFn = Callable[[int, str], Awaitable[None]]
"""`await run(n, run_id)`: a new run of n step bodies, from the call to its end."""


@dataclass(kw_only=True)
class Row:
    name: str
    run: RunFn
    floor: str
    gaps: list[int] = field(default_factory=list)
    runs: list[tuple[int, int, int, int]] = field(default_factory=list)
    """(whole run, start, end, this process's CPU time in it) in ns."""
    step_cpu: list[tuple[int, int]] = field(default_factory=list)
    """(steps, this process's CPU ns) of each long run."""

    async def long(self, n: int, run_id: str) -> None:
        MARKS.reset()
        cpu = time.process_time_ns
        c0 = cpu()
        await self.run(n, run_id)
        self.step_cpu.append((n, cpu() - c0))
        if len(MARKS.starts) != n:
            raise RuntimeError(f"{self.name}: {len(MARKS.starts)} step bodies ran, not {n}")
        self.gaps += MARKS.gaps()

    async def short(self, n: int, run_id: str) -> None:
        MARKS.reset()
        clock, cpu = time.perf_counter_ns, time.process_time_ns
        c0 = cpu()
        t0 = clock()
        await self.run(n, run_id)
        t1 = clock()
        c1 = cpu()
        if len(MARKS.starts) != n:
            raise RuntimeError(f"{self.name}: {len(MARKS.starts)} step bodies ran, not {n}")
        self.runs.append((t1 - t0, MARKS.starts[0] - t0, t1 - MARKS.ends[-1], c1 - c0))

    def result(self) -> dict[str, float]:
        out: dict[str, float] = {}
        if self.gaps:
            out |= {"step_p50": pct(self.gaps, 50), "step_p99": pct(self.gaps, 99)}
        if self.step_cpu:
            steps = sum(n for n, _ in self.step_cpu)
            out["step_cpu"] = sum(c for _, c in self.step_cpu) / steps / 1000
        for i, part in enumerate(("run", "start", "end")):
            if self.runs:
                values = [r[i] for r in self.runs]
                out |= {f"{part}_p50": pct(values, 50), f"{part}_p99": pct(values, 99)}
        if self.runs:
            out["run_cpu"] = pct([r[3] for r in self.runs], 50)
        return out


def agentfsm_run(store: Store, fn: Callable[[Memory], Any], name: str, **options: Any) -> RunFn:
    agents: dict[int, Agent[Memory]] = {}

    async def run(n: int, run_id: str) -> None:
        if n not in agents:
            agents[n] = chain(f"{name}{n}", n, fn, **options)
        done = await agents[n].run(store, Memory(), run_id=run_id)
        if done.status != "done":
            raise RuntimeError(f"{run_id}: {done.status} ({done.error})")

    return run


class RedisFloor:
    """Raw EVALSHAs: create.lua with the run and its lease (as `Store.start` sends it), then
    commit.lua per step (as `RedisStore.commit` sends it); args built before the clock runs
    from a template run, the run id put in by string replacement."""

    TEMPLATE = "floor-template-run-0000"

    def __init__(self, store: RedisStore, client: Any) -> None:
        self.store = store
        self.client = client
        self.create_script = client.register_script(_CREATE_LUA)
        self.commit_script = client.register_script(_COMMIT_LUA)
        self.is_async = isinstance(client, aioredis.Redis)
        self.owner = f"bench:{os.getpid()}"
        self._keys, self._args = self._template()
        self._commit_keys = store.commit_keys(self.TEMPLATE)
        self._event = event_json(self.TEMPLATE)

    def _template(self) -> tuple[list[str], list[Any]]:
        # The store's own encoders (private, as bench/_floors.py uses its commit keys): the
        # floor sends exactly the bytes Store.start would.
        from storage._codec import dump_event
        from storage.base import creation_event
        from storage.redis._bound import run_fields

        at = time.time()
        record = RunRecord(
            run_id=self.TEMPLATE, agent="floor", version=1, state="s0", seq=0,
            status="running", memory={"note": ""}, created_at=at, updated_at=at,
            nonce="0123456789abcdef",
        )  # fmt: skip
        event = creation_event(record)
        s: Any = self.store
        keys = [s.key(self.TEMPLATE, p) for p in ("run", "events", "keys", "lease", "live")]
        if getattr(s, "_indexes", None):
            keys += [f"{s.prefix}:runs", s._by_agent("floor"), s._by_status("running")]
            keys += [s._deadlines]
        fields = run_fields(replace(record, holder=""))
        no_live = [0, s.live_maxlen, int(s.live_ttl * 1000)]  # a bare create: no live item
        args = [dump_event(event), event.key, "", self.owner, int(LEASE_TTL * 1000), "",
                repr(at), repr(at), *no_live, *fields]  # fmt: skip
        return keys, args

    def _for(self, run_id: str) -> tuple[list[str], list[Any]]:
        t = self.TEMPLATE
        keys = [k.replace(t, run_id) for k in self._keys]
        args = [a.replace(t, run_id) if isinstance(a, str) else a for a in self._args]
        return keys, args

    @staticmethod
    def _token(reply: Any) -> int:
        created, got, _ = reply
        if int(created) != 1 or int(got[0]) < 0:
            raise RuntimeError(f"raw create answered {reply!r}")
        return int(got[0])

    def _commit_args(self, run_id: str, token: int, seq: int) -> list[Any]:
        """commit.lua's args for step `seq` (as bench/_floors.py's `Floor.args`)."""
        return [seq, token, f"{run_id}:{seq}:t{seq}", f"s{seq + 1}", "running",
                repr(time.time()), "", "", "", self._event.replace(self.TEMPLATE, run_id),
                "", ""]  # fmt: skip

    async def run(self, n: int, run_id: str) -> None:
        keys, args = self._for(run_id)
        commit_keys = [k.replace(self.TEMPLATE, run_id) for k in self._commit_keys]
        body, commit_args = MARKS.body, self._commit_args
        if self.is_async:
            token = self._token(await self.create_script(keys, args))
            for seq in range(n):
                body()
                reply = await self.commit_script(commit_keys, commit_args(run_id, token, seq))
                if reply[0] != "ok":
                    raise RuntimeError(f"raw commit answered {reply!r}")
        else:
            c = self.client
            token = self._token(self.create_script(keys, args, c))
            for seq in range(n):
                body()
                reply = self.commit_script(commit_keys, commit_args(run_id, token, seq), c)
                if reply[0] != "ok":
                    raise RuntimeError(f"raw commit answered {reply!r}")


class SQLiteFloor:
    """A raw SQLite WAL floor (synchronous=NORMAL, statements cached by sqlite3): a run is
    created by one transaction (INSERT run row, INSERT event 0); a step is one `BEGIN
    IMMEDIATE` transaction of a compare-and-set UPDATE of the run row and an INSERT of the
    event."""

    def __init__(self, path: str) -> None:
        db = sqlite3.connect(path, isolation_level=None)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")
        db.execute("CREATE TABLE runs (run_id TEXT PRIMARY KEY, seq INTEGER, state TEXT,"
                   " updated_at REAL, memory TEXT)")  # fmt: skip
        db.execute("CREATE TABLE events (run_id TEXT, seq INTEGER, json TEXT,"
                   " PRIMARY KEY (run_id, seq)) WITHOUT ROWID")  # fmt: skip
        self.db = db
        self.payload = event_json("floor")

    async def run(self, n: int, run_id: str) -> None:
        db, payload, body = self.db, self.payload, MARKS.body
        db.execute("BEGIN IMMEDIATE")
        db.execute("INSERT INTO runs VALUES (?, 0, 's0', ?, '{}')", (run_id, time.time()))
        db.execute("INSERT INTO events VALUES (?, 0, ?)", (run_id, payload))
        db.execute("COMMIT")
        for seq in range(n):
            body()
            db.execute("BEGIN IMMEDIATE")
            cur = db.execute(
                "UPDATE runs SET seq = ?, state = ?, updated_at = ? WHERE run_id = ? AND seq = ?",
                (seq + 1, f"s{seq + 1}", time.time(), run_id, seq),
            )
            if cur.rowcount != 1:
                db.execute("ROLLBACK")
                raise RuntimeError(f"raw SQLite commit of {run_id} at {seq} found no row")
            db.execute("INSERT INTO events VALUES (?, ?, ?)", (run_id, seq + 1, payload))
            db.execute("COMMIT")


# ------------------------------------------------------------------------ one process


async def child(args: argparse.Namespace) -> dict[str, Any]:
    url: str = args.url
    pid = os.getpid()
    prefix = f"uc{pid}"
    store = RedisStore.from_url(url, prefix=prefix)
    sync_client = redis.Redis.from_url(url, decode_responses=True)
    async_floor = RedisFloor(store, store.client)
    sync_floor = RedisFloor(store, sync_client)
    skipped: dict[str, str] = {}
    closers: list[Callable[[], Awaitable[None]]] = []
    rows = [
        Row(name="EVALSHA floor, sync client", run=sync_floor.run, floor=ASYNC_FLOOR),
        Row(name=ASYNC_FLOOR, run=async_floor.run, floor=ASYNC_FLOOR),
        Row(name="agentfsm, async tool", floor=ASYNC_FLOOR,
            run=agentfsm_run(store, async_tool, "a")),
        Row(name="agentfsm, sync tool inline", floor=ASYNC_FLOOR,
            run=agentfsm_run(store, sync_tool, "i", in_thread=False)),
        Row(name="agentfsm, sync tool default", floor=ASYNC_FLOOR,
            run=agentfsm_run(store, sync_tool, "d")),
    ]  # fmt: skip
    why = missing("burr")
    if why is None:
        burr = BurrRows(url, f"{prefix}b", MARKS.body)
        closers.append(burr.close)
        rows.append(Row(name="Burr + Redis persister", run=burr.run, floor=ASYNC_FLOOR))
    else:
        skipped["Burr + Redis persister"] = why
    why = missing("langgraph")
    if why is None:
        lg_client = aioredis.Redis.from_url(url, decode_responses=False)
        closers.append(lg_client.aclose)
        lg_redis = LangGraphRows(plain_redis_saver(lg_client, f"{prefix}lg"), MARKS.body)
        memory_mod: Any = __import__("langgraph.checkpoint.memory", fromlist=["InMemorySaver"])
        lg_memory = LangGraphRows(memory_mod.InMemorySaver(), MARKS.body)
        rows.append(Row(name="LangGraph + Redis (plain-Redis saver)", run=lg_redis.run,
                        floor=ASYNC_FLOOR))  # fmt: skip
        rows.append(Row(name="LangGraph + in-memory saver (no I/O)", run=lg_memory.run,
                        floor=ASYNC_FLOOR))  # fmt: skip
    else:
        skipped["LangGraph rows"] = why
    with tempfile.TemporaryDirectory(prefix="agentfsm-user-cost-") as tmp:
        sqlite_floor = SQLiteFloor(f"{tmp}/floor.db")
        embedded = open_store(f"sqlite:///{tmp}/store.db")
        rows.append(Row(name=SQLITE_FLOOR, run=sqlite_floor.run, floor=SQLITE_FLOOR))
        rows.append(Row(name="agentfsm embedded, async tool", floor=SQLITE_FLOOR,
                        run=agentfsm_run(embedded, async_tool, "e")))  # fmt: skip
        counter = iter(range(10**9))

        def rid(kind: str) -> str:
            return f"{kind}-{pid}-{next(counter)}"

        try:
            for row in rows:  # warm: connections, scripts, imports, the sync tool's placement
                for _ in range(5):
                    await row.short(args.run_steps, rid("warm"))
                await row.run(50, rid("warm"))
            for r in range(args.rounds):
                n_runs = args.runs // args.rounds + (1 if r < args.runs % args.rounds else 0)
                for row in rows:
                    gc.collect()
                    await row.long(args.steps, rid("long"))
                gc.collect()
                for _ in range(n_runs):  # a run of each row in turn: drift hits all alike
                    for row in rows:
                        await row.short(args.run_steps, rid("short"))
        finally:
            await embedded.close()
            sqlite_floor.db.close()
            for close in closers:
                await close()
    await store.close()
    forget(sync_client, prefix)
    sync_client.close()
    return {
        "rows": {row.name: row.result() for row in rows},
        "floors": {row.name: row.floor for row in rows},
        "skipped": skipped,
    }


def forget(client: redis.Redis, prefix: str) -> None:
    """Delete the keys written under `prefix` (every row's keys start with it)."""
    batch: list[str] = []
    for key in client.scan_iter(match=f"{prefix}*", count=1000):
        batch.append(key)
        if len(batch) >= 1000:
            client.unlink(*batch)
            batch = []
    if batch:
        client.unlink(*batch)


# ------------------------------------------------------------------------ peak RSS

_RSS_AGENTFSM = """
import asyncio, json, resource, sys
from bench._noop_agent import Memory, noop
from storage import open_store
async def main():
    store = open_store(sys.argv[1], prefix=sys.argv[2])
    run = await noop.run(store, Memory(), run_id="rss-agentfsm")
    assert run.status == "done", run.status
    await store.close()
asyncio.run(main())
"""

_RSS_BURR = """
import asyncio, json, resource, sys
import redis.asyncio as aioredis
from burr.core import ApplicationBuilder, State, action, default, expr
from burr.integrations.persisters.b_redis import AsyncRedisBasePersister
@action(reads=["count"], writes=["count"])
async def step(state: State) -> State:
    return state.update(count=state["count"] + 1)
async def main():
    client = aioredis.Redis.from_url(sys.argv[1])
    persister = AsyncRedisBasePersister(client, namespace=sys.argv[2])
    app = await (ApplicationBuilder().with_actions(step=step, last=step)
        .with_transitions(("step", "step", expr("count < 4")), ("step", "last", default))
        .initialize_from(persister, resume_at_next_action=True, default_state={"count": 0},
                         default_entrypoint="step")
        .with_state_persister(persister)
        .with_identifiers(app_id="rss-burr", partition_key="rss").abuild())
    await app.arun(halt_after=["last"])
    await client.aclose()
asyncio.run(main())
"""

_RSS_BASE = """
import asyncio, sys
import redis.asyncio as aioredis
import pydantic
async def main():
    client = aioredis.Redis.from_url(sys.argv[1])
    await client.ping()
    await client.aclose()
asyncio.run(main())
"""

_RSS_TAIL = """
import resource as _r, sys as _s, json as _j, re as _re
_hwm = _re.search(r"VmHWM:\\s+(\\d+)", open("/proc/self/status").read())
print(_j.dumps({"rss_kb": _r.getrusage(_r.RUSAGE_SELF).ru_maxrss,
    "hwm_kb": int(_hwm.group(1)) if _hwm else None,
    "pydantic_ai": "pydantic_ai" in _s.modules, "modules": len(_s.modules)}))
"""
_SPAWN = ["/bin/sh", "-c", '"$@"; exit $?', "sh"]
"""Started by a small shell's fork: Linux carries a process's peak RSS across fork and exec
(ru_maxrss), so a child forked straight from this big process would report this one's."""


def peak_rss(url: str) -> list[list[str]]:
    prefix = f"ucrss{os.getpid()}"
    cases = [("python + redis-py asyncio + pydantic (baseline)", _RSS_BASE, None),
             ("agentfsm: 5-step table agent, agent.run on Redis", _RSS_AGENTFSM, None),
             ("Burr: 5-step app, Redis persister", _RSS_BURR, missing("burr"))]  # fmt: skip
    body = []
    for name, code, why in cases:
        if why is not None:
            body.append([name, "skipped", "", why, ""])
            continue
        done = subprocess.run(
            [*_SPAWN, sys.executable, "-c", code + _RSS_TAIL, url, prefix], cwd=ROOT, env=_env(),
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        if done.returncode != 0:
            body.append([name, "failed", "", done.stderr.strip().splitlines()[-1], ""])
            continue
        got = json.loads(done.stdout.strip().splitlines()[-1])
        hwm = "-" if got["hwm_kb"] is None else f"{got['hwm_kb'] / 1024:.1f}"
        body.append([name, f"{got['rss_kb'] / 1024:.1f}", hwm,
                     "yes" if got["pydantic_ai"] else "no", str(got["modules"])])  # fmt: skip
    client = redis.Redis.from_url(url, decode_responses=True)
    forget(client, prefix)
    client.close()
    return body


# ------------------------------------------------------------------------ callgrind

_CG_C = """
#include <valgrind/callgrind.h>
void uc_start(void) { CALLGRIND_START_INSTRUMENTATION; CALLGRIND_ZERO_STATS; }
void uc_zero(void) { CALLGRIND_ZERO_STATS; }
void uc_dump(const char *name) { CALLGRIND_DUMP_STATS_AT(name); }
"""


def _build_cg_helper(workdir: str) -> str:
    """A tiny shared library of callgrind client requests (valgrind's callgrind.h, gcc)."""
    header = Path("/usr/include/valgrind/callgrind.h")
    gcc = shutil.which("gcc") or shutil.which("cc")
    if gcc is None or not header.exists():
        raise SystemExit(
            "--callgrind needs valgrind (with its callgrind.h) and a C compiler:"
            " apt-get install -y valgrind gcc"
        )
    src, lib = Path(workdir, "uc_cg.c"), Path(workdir, "uc_cg.so")
    src.write_text(_CG_C)
    subprocess.run([gcc, "-shared", "-fPIC", "-O1", "-o", str(lib), str(src)], check=True)
    return str(lib)


SHORT_STEPS, SHORT_RUNS = 5, 100
"""Callgrind's third count: this many runs of this many steps, counted together."""


async def cg_child(steps: int, lib_path: str, silent: bool) -> None:
    """Under callgrind (instrumentation off at start): run A of `steps` steps and run B of
    2 x `steps`, then SHORT_RUNS runs of SHORT_STEPS, all `agent.run` on the no-I/O stub
    store, each counted on its own.
    `silent`: every run's live publisher drops what it is given (to count what it costs)."""
    import ctypes

    if silent:
        import statemachine._run_core as runner
        from statemachine._live import Publisher

        class Silent(Publisher):
            def emit(self, base: int, item: dict[str, Any]) -> None:
                return None

        setattr(runner, "Publisher", Silent)  # noqa: B010 (the runner builds it by this name)
    lib = ctypes.CDLL(lib_path)
    store = StubStore()
    short, long = chain("cga", steps, async_tool), chain("cgb", 2 * steps, async_tool)
    await short.run(store, Memory(), run_id="warm-a")
    await long.run(store, Memory(), run_id="warm-b")
    gc.collect()
    gc.freeze()  # what exists now (imports, this script) is never traversed in the counts
    lib.uc_start()
    for name, agent in ((b"runA", short), (b"runB", long)):
        MARKS.reset()
        gc.collect()
        lib.uc_zero()
        await agent.run(store, Memory(), run_id=name.decode())
        lib.uc_dump(name)
    five = chain("cgc", SHORT_STEPS, async_tool)
    for i in range(3):
        await five.run(store, Memory(), run_id=f"warm-c{i}")
    MARKS.reset()
    gc.collect()
    lib.uc_zero()
    for i in range(SHORT_RUNS):
        await five.run(store, Memory(), run_id=f"runC-{i}")
    lib.uc_dump(b"runC")


def callgrind_count(steps: int, *, silent: bool = False) -> dict[str, float]:
    """Instructions of agent.run on the stub store: per step (I(run of 2n) - I(run of n)) / n;
    per SHORT_STEPS-step run, the mean of SHORT_RUNS; and that run's besides its steps."""
    if shutil.which("valgrind") is None:
        raise SystemExit("--callgrind needs valgrind: apt-get install -y valgrind")
    with tempfile.TemporaryDirectory(prefix="agentfsm-cg-") as tmp:
        lib = _build_cg_helper(tmp)
        out = Path(tmp, "cg.out")
        cmd = ["valgrind", "--tool=callgrind", "--instr-atstart=no",
               f"--callgrind-out-file={out}", sys.executable, "-m", "bench.user_cost",
               "--cg-child", "--cg-steps", str(steps), "--cg-lib", lib,
               *(["--cg-silent"] if silent else [])]  # fmt: skip
        env = {**_env(), "PYTHONHASHSEED": "0"}
        done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
        if done.returncode != 0:
            raise SystemExit(f"callgrind run failed:\n{done.stderr[-3000:]}")
        counts: dict[str, int] = {}
        for part in Path(tmp).glob("cg.out.*"):
            text = part.read_text(errors="replace")
            trigger = re.search(r"^desc: Trigger: Client Request: (\w+)", text, re.M)
            total = re.search(r"^(?:summary|totals): (\d+)", text, re.M)
            if trigger and total:
                counts[trigger.group(1)] = int(total.group(1))
        if set(counts) != {"runA", "runB", "runC"}:
            raise SystemExit(f"callgrind dumps not found: {counts}\n{done.stderr[-2000:]}")
    per_step = (counts["runB"] - counts["runA"]) / steps
    per_short = counts["runC"] / SHORT_RUNS
    return {"per_step": per_step, "per_short_run": per_short,
            "per_run_fixed": per_short - SHORT_STEPS * per_step,
            "runA": counts["runA"], "runB": counts["runB"]}  # fmt: skip


# ------------------------------------------------------------------------------ report


def _env() -> dict[str, str]:
    paths = [str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]
    return {**os.environ, "PYTHONPATH": os.pathsep.join(paths)}


def _median(results: list[dict[str, Any]], row: str, key: str) -> float | None:
    values = [r["rows"][row][key] for r in results if key in r["rows"].get(row, {})]
    return statistics.median(values) if values else None


def tables(results: list[dict[str, Any]], args: argparse.Namespace) -> str:
    rows = list(results[0]["rows"])
    floors: dict[str, str] = results[0]["floors"]

    def num(v: float | None, fmt: str = "{:,.0f}") -> str:
        return "-" if v is None else fmt.format(v)

    def ratio(row: str, key: str) -> str:
        v, ref = _median(results, row, key), _median(results, floors[row], key)
        return "-" if v is None or not ref else f"{v / ref:.2f}"

    head = ["per step, between step bodies", "p50 µs", "p99 µs", "p50 x floor", "p99 x floor",
            "CPU µs", "CPU x floor"]  # fmt: skip
    body = [[row, num(_median(results, row, "step_p50")), num(_median(results, row, "step_p99")),
             ratio(row, "step_p50"), ratio(row, "step_p99"),
             num(_median(results, row, "step_cpu")), ratio(row, "step_cpu")]
            for row in rows]  # fmt: skip
    out = [f"Per step: runs of {args.steps:,} steps, {args.rounds} per row and process;"
           " floor = the asyncio EVALSHA floor (embedded: the SQLite WAL floor)", "",
           markdown_table(head, body), ""]  # fmt: skip
    head = ["whole run", "µs p50", "µs p99", "x floor", "start p50", "start p99",
            "end p50", "end p99", "start x floor", "end x floor", "CPU µs",
            "CPU x floor"]  # fmt: skip
    body = []
    for row in rows:
        cells = [row]
        cells += [num(_median(results, row, k)) for k in ("run_p50", "run_p99")]
        cells += [ratio(row, "run_p50")]
        cells += [num(_median(results, row, k))
                  for k in ("start_p50", "start_p99", "end_p50", "end_p99")]  # fmt: skip
        cells += [ratio(row, "start_p50"), ratio(row, "end_p50")]
        cells += [num(_median(results, row, "run_cpu")), ratio(row, "run_cpu")]
        body.append(cells)
    out += [f"Whole runs: {args.runs} runs x {args.run_steps} steps per row and process, from"
            " the call to its return; start = call -> first step body starts, end = last step"
            " body ends -> return", "", markdown_table(head, body)]  # fmt: skip
    return "\n".join(out)


def targets(results: list[dict[str, Any]]) -> list[str]:
    def m(row: str, key: str) -> float:
        v = _median(results, row, key)
        return float("nan") if v is None else v

    def line(what: str, value: float, limit: float) -> str:
        verdict = "met" if value <= limit else "MISSED"
        return f"{what}: {value:.2f}x (target <= {limit}x) -> {verdict}"

    fl = ASYNC_FLOOR
    out = []
    for row in ("agentfsm, async tool", "agentfsm, sync tool default"):
        out.append(line(f"per step p50, {row}", m(row, "step_p50") / m(fl, "step_p50"), 1.3))
        out.append(line(f"per step p99, {row}", m(row, "step_p99") / m(fl, "step_p99"), 2))
    a = "agentfsm, async tool"
    for key in ("run_p50", "start_p50", "end_p50"):
        out.append(line(f"5-step run {key}, async tool", m(a, key) / m(fl, key), 1.5))
    burr = "Burr + Redis persister"
    if burr in results[0]["rows"]:
        for key in ("step_p50", "run_p50"):
            out.append(line(f"{key} vs Burr (ours / Burr)", m(a, key) / m(burr, key), 0.5))
    e = "agentfsm embedded, async tool"
    out.append(line("embedded per step p50", m(e, "step_p50") / m(SQLITE_FLOOR, "step_p50"), 2))
    out.append(line("embedded per run p50", m(e, "run_p50") / m(SQLITE_FLOOR, "run_p50"), 3))
    return out


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--processes", type=int, default=3, help="fresh processes, in turn")
    parser.add_argument("--steps", type=int, default=1000, help="steps of each long run")
    parser.add_argument("--runs", type=int, default=150, help="short runs per row and process")
    parser.add_argument("--run-steps", type=int, default=5, help="steps per short run")
    parser.add_argument("--rounds", type=int, default=3, help="rounds per process")
    parser.add_argument("--url", help="a redis-server of yours (loopback only)")
    parser.add_argument("--no-rss", action="store_true", help="skip the peak RSS processes")
    parser.add_argument("--callgrind", action="store_true",
                        help="also count instructions per step with callgrind (twice)")  # fmt: skip
    parser.add_argument("--callgrind-only", action="store_true", help="only that")
    parser.add_argument("--cg-steps", type=int, default=300, help="steps of callgrind's run A")
    parser.add_argument("--json", help="also write the per-process results to this file")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--cg-child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--cg-lib", help=argparse.SUPPRESS)
    parser.add_argument("--cg-silent", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.steps < 2 or args.run_steps < 2 or args.runs < 1 or args.processes < 1:
        parser.error("--steps and --run-steps must be at least 2, --runs and --processes 1")
    if args.cg_child:
        asyncio.run(cg_child(args.cg_steps, args.cg_lib, args.cg_silent))
        return
    if args.child:
        print(json.dumps(asyncio.run(child(args))))
        return
    t_start = time.perf_counter()
    for line in machine():
        print(line)
    print(f"load average: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    if not args.callgrind_only:
        results = []
        with redis_for(args.url, parser) as (url, own):
            version = redis.Redis.from_url(url).info("server")["redis_version"]
            print(f"redis-server {version} at {url}"
                  f" ({'ours, no persistence' if own else 'given'})")  # fmt: skip
            for i in range(args.processes):
                cmd = [sys.executable, "-m", "bench.user_cost", "--child", "--url", url,
                       "--steps", str(args.steps), "--runs", str(args.runs),
                       "--run-steps", str(args.run_steps),
                       "--rounds", str(args.rounds)]  # fmt: skip
                done = subprocess.run(cmd, cwd=ROOT, env=_env(), capture_output=True, text=True)
                if done.returncode != 0:
                    sys.exit(f"process {i + 1} failed:\n{done.stderr}")
                results.append(json.loads(done.stdout.strip().splitlines()[-1]))
                print(f"process {i + 1}/{args.processes} done"
                      f" ({time.perf_counter() - t_start:.0f} s)", flush=True)  # fmt: skip
            rss = None if args.no_rss else peak_rss(url)
        print(f"load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}\n")
        for row, why in results[0]["skipped"].items():
            print(f"skipped {row}: {why}")
        print(f"medians of {len(results)} processes\n")
        print(tables(results, args))
        print()
        for line in targets(results):
            print(line)
        if rss is not None:
            print()
            head = [
                "peak RSS, fresh process",
                "ru_maxrss MB",
                "VmHWM MB",
                "pydantic_ai imported",
                "modules",
            ]
            print(markdown_table(head, rss))
        if args.json:
            Path(args.json).write_text(json.dumps(results, indent=1))
    if args.callgrind or args.callgrind_only:
        print(f"\ncallgrind: agent.run on the no-I/O stub store, async tool steps,"
              f" {platform.python_implementation()} {platform.python_version()}")  # fmt: skip
        for label, silent in (("count 1", False), ("count 2", False),
                              ("live publisher dropping every item", True)):  # fmt: skip
            got = callgrind_count(args.cg_steps, silent=silent)
            print(
                f"  {label}: {got['per_step']:,.0f} instructions per step;"
                f" {got['per_short_run']:,.0f} per {SHORT_STEPS}-step run, of which"
                f" {got['per_run_fixed']:,.0f} besides its steps (start + end)",
                flush=True,
            )
    print(f"\ntotal {time.perf_counter() - t_start:.0f} s")


if __name__ == "__main__":
    main()

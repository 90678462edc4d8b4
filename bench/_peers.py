"""The peers `bench/user_cost.py` measures next to agentfsm: Apache Burr and LangGraph.

Neither is a dependency of agentfsm (nor in pyproject.toml's extras); install them into the
benchmark's environment only: `pip install burr langgraph`. Each is imported here on first use
with `importlib`, so this module imports without them, mypy needs no stubs for them, and a
missing peer is reported as a skipped row (`missing()`).

- Burr: an application of one trivial async action looping on itself, `last` after it, with
  Burr's own `AsyncRedisBasePersister` (redis-py asyncio; per step it sends EXISTS, HSET,
  ZADD: three round trips, not atomic) as its state persister and initializer.
- LangGraph: a `StateGraph` of one trivial async node looping on itself, invoked with
  `durability="sync"` (each super-step's checkpoint is written before the next starts), with
  one of two checkpointers: LangGraph's `InMemorySaver` (no I/O: LangGraph's own CPU), or
  `plain_redis_saver` below. LangGraph's published Redis checkpointer (`langgraph-checkpoint-
  redis`) needs the RedisJSON and RediSearch modules, which plain Redis 7 lacks, so this file
  carries a minimal one on plain commands: per step one pipelined MULTI/HSET/SET/EXEC for the
  checkpoint (`aput`) and one pipelined RPUSH for the node's writes (`aput_writes`), i.e. two
  round trips, the least LangGraph's checkpointer contract allows with `durability="sync"`.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence
from typing import Any

__all__ = ["BurrRows", "LangGraphRows", "missing", "plain_redis_saver"]

INSTALL = {"burr": "pip install burr", "langgraph": "pip install langgraph"}


def missing(peer: str) -> str | None:
    """None when `peer` ("burr", "langgraph") imports, else why it is skipped."""
    try:
        importlib.import_module(peer)
    except ImportError as exc:
        return f"{peer} is not installed ({exc}); to measure it: {INSTALL[peer]}"
    return None


Body = Callable[[], None]
"""What a step body does: records its start and end (see user_cost.Marks)."""


# ------------------------------------------------------------------------------- Burr


class BurrRows:
    """Burr applications of `n` trivial async steps on Redis: `await run(n, app_id)`."""

    def __init__(self, url: str, prefix: str, body: Body) -> None:
        core = importlib.import_module("burr.core")
        persisters = importlib.import_module("burr.integrations.persisters.b_redis")
        aioredis = importlib.import_module("redis.asyncio")
        self._core = core
        self.client = aioredis.Redis.from_url(url, decode_responses=False)
        self.persister = persisters.AsyncRedisBasePersister(self.client, namespace=prefix)
        self._graphs: dict[int, Any] = {}
        self._body = body

    def _graph(self, n: int) -> Any:
        if n not in self._graphs:
            core = self._core
            body = self._body

            async def trivial(state: Any) -> Any:
                body()
                return state.update(count=state["count"] + 1)

            step = core.action(reads=["count"], writes=["count"])(trivial)
            last = core.action(reads=["count"], writes=["count"])(trivial)

            self._graphs[n] = (
                core.GraphBuilder()
                .with_actions(step=step, last=last)
                .with_transitions(
                    ("step", "step", core.expr(f"count < {n - 1}")),
                    ("step", "last", core.default),
                )
                .build()
            )
        return self._graphs[n]

    async def run(self, n: int, app_id: str) -> None:
        """A new application `app_id` (loaded from the persister first, as a resumable one
        is) driven through its `n` steps, each saved by the persister."""
        core = self._core
        app = await (
            core.ApplicationBuilder()
            .with_graph(self._graph(n))
            .initialize_from(
                self.persister,
                resume_at_next_action=True,
                default_state={"count": 0},
                default_entrypoint="step",
            )
            .with_state_persister(self.persister)
            .with_identifiers(app_id=app_id, partition_key="bench")
            .abuild()
        )
        _, _, state = await app.arun(halt_after=["last"])
        if state["count"] != n:
            raise RuntimeError(f"Burr app {app_id} made {state['count']} steps, not {n}")

    async def close(self) -> None:
        await self.client.aclose()


# -------------------------------------------------------------------------- LangGraph


def plain_redis_saver(client: Any, prefix: str) -> Any:
    """A LangGraph checkpointer on plain Redis commands (async methods only), `client` a
    `redis.asyncio.Redis` with `decode_responses=False`. Whole checkpoints, serialized by
    LangGraph's own serde; enough for `ainvoke` of new threads and resuming the latest one."""
    base = importlib.import_module("langgraph.checkpoint.base")
    saver: Any = base.BaseCheckpointSaver

    class PlainRedisSaver(saver):  # type: ignore[misc]
        def _key(self, config: Any, *parts: str) -> str:
            c = config["configurable"]
            return ":".join([prefix, c["thread_id"], c.get("checkpoint_ns", ""), *parts])

        async def aget_tuple(self, config: Any) -> Any:
            cid = base.get_checkpoint_id(config)
            if cid is None:
                latest = await client.get(self._key(config, "latest"))
                if latest is None:
                    return None
                cid = latest.decode()
            pipe = client.pipeline(transaction=False)
            pipe.hgetall(self._key(config, "cp", cid))
            pipe.lrange(self._key(config, "w", cid), 0, -1)
            saved, writes = await pipe.execute()
            if not saved:
                return None
            c = config["configurable"]
            here = {"thread_id": c["thread_id"], "checkpoint_ns": c.get("checkpoint_ns", "")}
            parent = saved.get(b"parent", b"").decode()
            pending = []
            for raw in writes:
                typ, blob = raw.split(b"\0", 1)
                pending += self.serde.loads_typed((typ.decode(), blob))
            return base.CheckpointTuple(
                config={"configurable": {**here, "checkpoint_id": cid}},
                checkpoint=self.serde.loads_typed((saved[b"ct"].decode(), saved[b"c"])),
                metadata=self.serde.loads_typed((saved[b"mt"].decode(), saved[b"m"])),
                parent_config=(
                    {"configurable": {**here, "checkpoint_id": parent}} if parent else None
                ),
                pending_writes=pending,
            )

        async def aput(self, config: Any, checkpoint: Any, metadata: Any, new_versions: Any) -> Any:
            ct, c = self.serde.dumps_typed(checkpoint)
            mt, m = self.serde.dumps_typed(base.get_checkpoint_metadata(config, metadata))
            cid = checkpoint["id"]
            parent = config["configurable"].get("checkpoint_id") or ""
            pipe = client.pipeline(transaction=True)
            pipe.hset(
                self._key(config, "cp", cid),
                mapping={"ct": ct, "c": c, "mt": mt, "m": m, "parent": parent},
            )
            pipe.set(self._key(config, "latest"), cid)
            await pipe.execute()
            cf = config["configurable"]
            return {
                "configurable": {
                    "thread_id": cf["thread_id"],
                    "checkpoint_ns": cf.get("checkpoint_ns", ""),
                    "checkpoint_id": cid,
                }
            }

        async def aput_writes(
            self,
            config: Any,
            writes: Sequence[tuple[str, Any]],
            task_id: str,
            task_path: str = "",
        ) -> None:
            typ, blob = self.serde.dumps_typed([(task_id, c, v) for c, v in writes])
            cid = config["configurable"]["checkpoint_id"]
            await client.rpush(self._key(config, "w", cid), typ.encode() + b"\0" + blob)

        async def alist(self, config: Any, **kwargs: Any) -> Any:
            raise NotImplementedError("the benchmark's checkpointer does not list")
            yield  # an async generator

    return PlainRedisSaver()


class LangGraphRows:
    """LangGraph graphs of `n` trivial async node runs: `await run(n, thread_id)`."""

    def __init__(self, saver: Any, body: Body) -> None:
        self._graph_mod = importlib.import_module("langgraph.graph")
        self.saver = saver
        self._graphs: dict[int, Any] = {}
        self._body = body

    def _graph(self, n: int) -> Any:
        if n not in self._graphs:
            g = self._graph_mod
            body = self._body

            async def step(state: dict[str, int]) -> dict[str, int]:
                body()
                return {"count": state["count"] + 1}

            def route(state: dict[str, int]) -> str:
                return "step" if state["count"] < n else str(g.END)

            builder = g.StateGraph(_lg_state())
            builder.add_node("step", step)
            builder.add_edge(g.START, "step")
            builder.add_conditional_edges("step", route)
            self._graphs[n] = builder.compile(checkpointer=self.saver)
        return self._graphs[n]

    async def run(self, n: int, thread_id: str) -> None:
        config = {"configurable": {"thread_id": thread_id}, "recursion_limit": n + 10}
        out = await self._graph(n).ainvoke({"count": 0}, config, durability="sync")
        if out["count"] != n:
            raise RuntimeError(f"LangGraph thread {thread_id} made {out['count']} steps, not {n}")


def _lg_state() -> Any:
    """The graph's state schema: {"count": int}."""
    from typing import TypedDict

    class State(TypedDict):
        count: int

    return State

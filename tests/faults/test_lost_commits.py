"""A Redis that restarts without its last writes (no AOF here; `appendfsync everysec` loses up
to a second the same way): the driving process names the lost commits instead of taking the
loss for a takeover, the run stays resumable, and the lost steps run again under their same
idempotency keys."""

from __future__ import annotations

from pathlib import Path

import pytest
import redis
from pydantic import BaseModel

from agents import Agent, tool
from statemachine import StepContext
from statemachine.errors import CommitsLost
from storage import RedisStore, open_store

from ..redis_server import RedisServer

pytestmark = pytest.mark.redis


class Count(BaseModel):
    n: int = 0


def make_agent(keys: list[str]) -> Agent[Count]:
    def bump(memory: Count, ctx: StepContext) -> int:
        keys.append(ctx.idempotency_key)
        return memory.n + 1

    states = ["s0", "s1", "s2", "s3", "s4"]
    return Agent(
        name="lossy", memory=Count, initial="s0", final=["s4"],
        transitions=[tool(f"t{i}", states[i], states[i + 1], bump, into="n") for i in range(4)],
    )  # fmt: skip


async def test_commits_the_store_lost_are_named_and_run_again_on_resume(
    redis_factory: type[RedisServer], tmp_path: Path
) -> None:
    server = redis_factory(tmp_path / "redis").start()  # no AOF: a restart keeps the last SAVE
    keys: list[str] = []
    agent = make_agent(keys)
    store = open_store(server.url, prefix="lossy")
    assert isinstance(store, RedisStore)
    try:
        run = await agent.start(store, Count(), run_id="r")
        await run.step()  # seq 1
        redis.Redis.from_url(server.url).save()  # what the restart keeps
        await run.step()  # seq 2
        await run.step()  # seq 3: acknowledged, then lost
        server.kill()
        server.start()
        with pytest.raises(CommitsLost, match=r"lost commits 2\.\.3, which it had acknowledged"):
            await run.step()
        stored = await store.load("r")
        assert stored is not None and (stored.seq, stored.state, stored.status) == (
            1, "s1", "running",
        )  # fmt: skip
        resumed = await agent.resume(store, "r")
        await resumed.until_done()
        assert (resumed.status, resumed.memory.n) == ("done", 4)
        # Steps 2 and 3 (and 4, whose commit found the loss) ran again under their keys.
        assert keys[1:4] == keys[4:7] and len(keys) == 7 and len(set(keys)) == 4
    finally:
        await store.close()

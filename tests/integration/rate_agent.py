"""A child process for the shared rate limit test: runs whose offline model logs call times.

    python -m tests.integration.rate_agent STORE_URL WORKDIR NAME RUNS [429 | follow]

Starts RUNS runs, prints "ready", reads a line from stdin, then drives them all at once.
Each model call appends "call NAME <monotonic>" to WORKDIR/calls.log; each wait for the
limit "wait NAME <why>"; each pause the process sets "paused NAME <monotonic>". With 429,
the process's first call answers 429 with Retry-After PAUSE seconds. With follow, the
process drives its first run at once and the others once some process has logged a pause,
so that each of them asks for a slot while the pause holds, however the machine schedules
the processes.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
from pathlib import Path
from typing import Any

from pydantic import BaseModel
from pydantic_ai.exceptions import ModelHTTPError
from pydantic_ai.messages import ModelMessage, ModelResponse, TextPart
from pydantic_ai.models.function import AgentInfo, FunctionModel

from agents import Agent, RateLimit, llm
from agents.spending._ratelimit import on_wait
from storage import open_store
from storage.embedded.limiter import EmbeddedLimiter
from storage.redis.limiter import RedisLimiter

RATE = 5.0
"""Requests per second, shared by every process."""
BURST = 1.0
PAUSE = 2.0


class Note(BaseModel):
    text: str = ""


def _log(workdir: Path, *words: object) -> None:
    fd = os.open(workdir / "calls.log", os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    try:
        os.write(fd, (" ".join(map(str, words)) + "\n").encode())
    finally:
        os.close(fd)


def make_agent(workdir: Path, name: str, fail_first: bool) -> Agent[Note]:
    calls = 0

    async def model(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        nonlocal calls
        calls += 1
        _log(workdir, "call", name, time.monotonic())
        if fail_first and calls == 1:
            raise ModelHTTPError(429, "offline", "slow down", retry_after=PAUSE)
        return ModelResponse(parts=[TextPart("ok")])

    key = f"offline-{workdir.name}"  # a key of this test's own, on a shared server
    limit = RateLimit(key=key, requests_per_second=RATE, burst=BURST)
    return Agent(
        name="rated", memory=Note, model=FunctionModel(model), initial="new", final=["done"],
        rate_limits=[limit],
        transitions=[
            llm("one", "new", "half", prompt="1", into="text", backoff=0.01),
            llm("two", "half", "done", prompt="2", into="text", backoff=0.01),
        ],
    )  # fmt: skip


def _log_pauses(workdir: Path, name: str) -> None:
    """Log each pause ("pausing" before it is set, "paused" after) and each try for a slot
    ("slot NAME <start> <end> <1 if granted>"): a try that began after a pause was set and
    was granted must end after that pause ran out, however late any line is written."""
    for cls in (RedisLimiter, EmbeddedLimiter):
        original, acquire = cls.pause, cls.acquire

        async def pause(self: Any, key: str, seconds: float, original: Any = original) -> None:
            _log(workdir, "pausing", name, time.monotonic())
            await original(self, key, seconds)
            _log(workdir, "paused", name, time.monotonic())

        async def tried(
            self: Any, key: str, bucket: Any, holder: str, acquire: Any = acquire
        ) -> tuple[float, str]:
            start = time.monotonic()
            wait, why = await acquire(self, key, bucket, holder)
            _log(workdir, "slot", name, start, time.monotonic(), int(wait <= 0))
            return wait, why

        cls.pause = pause  # type: ignore[method-assign]
        cls.acquire = tried  # type: ignore[method-assign]


async def _paused_logged(workdir: Path) -> None:
    """Wait until some process logged that it set a pause (60 s at most)."""
    log = workdir / "calls.log"
    for _ in range(6000):
        lines = log.read_text().splitlines() if log.exists() else []
        if any(line.startswith("paused ") for line in lines):
            return
        await asyncio.sleep(0.01)
    raise TimeoutError("no process logged a pause within 60 s")


async def main(url: str, workdir: Path, name: str, count: int, mode: str) -> None:
    fail_first = mode == "429"
    _log_pauses(workdir, name)
    on_wait.append(lambda key, seconds, why: _log(workdir, "wait", name, why))
    store = open_store(url)
    agent = make_agent(workdir, name, fail_first)
    runs = [
        await agent.start(store, Note(), run_id=f"{workdir.name}-{name}-{i}") for i in range(count)
    ]
    print("ready", flush=True)
    sys.stdin.readline()
    if mode == "follow":
        first = asyncio.ensure_future(runs[0].until_done())
        await _paused_logged(workdir)
        await asyncio.gather(first, *(r.until_done() for r in runs[1:]))
    else:
        await asyncio.gather(*(r.until_done() for r in runs))
    await store.close()
    print(" ".join(r.status for r in runs), flush=True)


if __name__ == "__main__":
    asyncio.run(
        main(sys.argv[1], Path(sys.argv[2]), sys.argv[3], int(sys.argv[4]), "".join(sys.argv[5:]))
    )

"""The agent of the crash storm (`test_crash_storm.py`), served by `agentfsm worker` processes.

    python -m agents worker --agents tests.faults.storm_agent:storm --store URL ...

`storm`: STEPS transitions that alternate tool steps (t0, t2, ...) and LLM steps (l1, l3, ...;
an offline `FunctionModel` answers). Each step applies one side effect to an outside system,
a Redis database named by $AGENTFSM_STORM_FX (e.g. `redis://127.0.0.1:PORT/1`, beside the
store's db 0), deduplicated by the step's idempotency key the way a careful outside system
would: one Lua script, atomically,

- `SET {ns}:fx:{key} pid NX`, then `INCR {ns}:applied` if it was set, else `INCR {ns}:absorbed`
  (a duplicate the key absorbed);
- `HINCRBY {ns}:execs key 1` and `RPUSH {ns}:pids:{key} pid` (who ran it, in order).

`{ns}` is $AGENTFSM_STORM_NS. A tool step sleeps a little before and after its side effect, so
a SIGKILL lands before it (the step runs again, first time applied) or after it, before the
commit (the step runs again and the key absorbs the duplicate). An LLM step's side effect is
the model request itself: the prompt is the step's idempotency key,
`f"{run_id}:{seq}:{trigger}"`, and the offline model records it before it answers.
"""

from __future__ import annotations

import asyncio
import os
import random
import time
from functools import cache
from typing import Any

import redis
from pydantic import BaseModel

from agents import Agent, llm, tool
from agents.examples._offline import offline_model
from statemachine import StepContext
from statemachine.engine import Transition

STEPS = 6
LEASE_TTL = 2.0
RETRIES = 9
CRASH_RETRIES = 9
"""Deaths during a step are counted (a guard against steps that kill their process every
time): under a storm one step can be cut short by several kills in a row, so allow 9, not 3."""
PAUSE = (0.03, 0.2)
"""Seconds a step sleeps before, and again after, its side effect."""

TRIGGERS = [f"{'t' if i % 2 == 0 else 'l'}{i}" for i in range(STEPS)]

_APPLY = """
local applied = redis.call('SET', KEYS[1], ARGV[2], 'NX')
redis.call('HINCRBY', KEYS[2], ARGV[1], 1)
redis.call('RPUSH', KEYS[3], ARGV[2])
if applied then return redis.call('INCR', KEYS[4]) end
redis.call('INCR', KEYS[5])
return 0
"""


class Storm(BaseModel):
    run_id: str
    done: list[str] = []


@cache
def _outside() -> tuple[Any, str]:
    """The outside system's client (one per process; thread-safe) and its key namespace."""
    client = redis.Redis.from_url(os.environ["AGENTFSM_STORM_FX"], decode_responses=True)
    return client.register_script(_APPLY), os.environ.get("AGENTFSM_STORM_NS", "storm")


def apply_effect(key: str) -> bool:
    """Apply the side effect of the step with idempotency key `key`; False: a duplicate."""
    script, ns = _outside()
    keys = [f"{ns}:fx:{key}", f"{ns}:execs", f"{ns}:pids:{key}", f"{ns}:applied", f"{ns}:absorbed"]
    return bool(script(keys=keys, args=[key, os.getpid()]))


async def act(memory: Storm, ctx: StepContext) -> list[str]:
    await asyncio.sleep(random.uniform(*PAUSE))
    apply_effect(ctx.idempotency_key)
    await asyncio.sleep(random.uniform(*PAUSE))
    return [*memory.done, ctx.trigger]


def answer(prompt: str) -> str:
    """The offline model: record the request (its prompt is the key), answer the trigger."""
    time.sleep(random.uniform(*PAUSE))
    apply_effect(prompt)
    time.sleep(random.uniform(*PAUSE))
    return prompt.rsplit(":", 1)[1]


def _key_prompt(trigger: str) -> Any:
    return lambda m: f"{m.run_id}:{len(m.done)}:{trigger}"


def _append(memory: Storm, value: str) -> dict[str, list[str]]:
    return {"done": [*memory.done, value]}


def _step(i: int) -> Transition:
    trigger, source, dest = TRIGGERS[i], f"s{i}", f"s{i + 1}"
    if trigger.startswith("t"):
        return tool(
            trigger, source, dest, act, into="done", retries=RETRIES, crash_retries=CRASH_RETRIES
        )
    return llm(
        trigger, source, dest, prompt=_key_prompt(trigger), update=_append, retries=RETRIES,
        crash_retries=CRASH_RETRIES,
    )  # fmt: skip


storm = Agent(
    name="storm",
    memory=Storm,
    model=offline_model("storm", answer),
    initial="s0",
    final=[f"s{STEPS}"],
    lease_ttl=LEASE_TTL,
    transitions=[_step(i) for i in range(STEPS)],
)

"""A child process running a plain pydantic-ai agent through `DurableAgent`.

    python -m tests.integration.durable_agent STORE_URL RUN_ID WORKDIR MODE [VIA]

The agent's `FunctionModel` asks for two tool calls in one response (`lookup`, then
`convert`), then answers with what they returned. Every model request appends "request" to
WORKDIR/effects.log, every tool call "{tool}\t{idempotency_key}". Modes:

- `normal`: run to the end; prints the output.
- `crash`: `convert` SIGKILLs its own process after logging, before it returns.
- `gated`: `convert` needs approval; prints "deferred CALL_IDS" when the run parks.
- `approve`: approves `call-convert` from this process without the agent (as a CLI would).
- `handled` / `crash-handled`: `convert` needs approval, a `HandleDeferredToolCalls` handler
  of the agent approves it in the run (appending "handler"), and the output type is plain `str`;
  with `crash-handled`, `convert` SIGKILLs its own process after logging.
- `report`: the answer goes through an output function `report` (which appends "report");
  `crash-report`: the same, and `report` SIGKILLs its own process after logging.
- VIA is how the run is driven: `run` (the default), `iter` (node by node), `run_stream`, or
  `run_stream_events`; the model streams its responses when asked to. `capability` runs the
  plain agent with `AgentfsmDurability` among its capabilities instead of `DurableAgent`.
- `delegate` / `crash-delegate`: `lookup` also runs a helper agent with the run's usage
  (`usage=ctx.usage`, pydantic-ai's delegation), and the process prints the output, then
  " | N requests" (the run's usage); with `crash-delegate`, `convert` SIGKILLs its own process
  after logging.
- `hang`: like `gated`, but the approved `convert` writes its key to WORKDIR/in-call when it
  starts (atomically: a temporary file renamed) and then never returns (the parent kills
  the process).
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

from pydantic_ai import Agent, DeferredToolRequests, DeferredToolResults, RunContext
from pydantic_ai.capabilities import HandleDeferredToolCalls
from pydantic_ai.messages import (
    ModelMessage,
    ModelRequest,
    ModelResponse,
    TextPart,
    ToolCallPart,
    ToolReturnPart,
)
from pydantic_ai.models.function import AgentInfo, DeltaToolCall, DeltaToolCalls, FunctionModel
from pydantic_ai.models.test import TestModel
from pydantic_ai.run import AgentRunResultEvent

from agents import DurableAgent, idempotency_key
from agents._operations import approve_tool_call
from agents.durable import AgentfsmDurability
from storage import open_store

LEASE_TTL = 0.5
RATES = {"EUR": 1.1, "GBP": 1.25}
PREFIX = "durablecrash"


def make_agent(
    workdir: Path, mode: str, capabilities: Sequence[Any] = ()
) -> Agent[str, str | DeferredToolRequests]:
    log = workdir / "effects.log"

    def note(line: str) -> None:
        with open(log, "a") as f:
            f.write(line + "\n")
            f.flush()
            os.fsync(f.fileno())

    def brain(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        note("request")
        done = [
            p for m in messages if isinstance(m, ModelRequest) for p in m.parts
            if isinstance(p, ToolReturnPart)
        ]  # fmt: skip
        if not done:
            return ModelResponse(parts=[
                ToolCallPart("lookup", {"item": "book"}, tool_call_id="call-lookup"),
                ToolCallPart("convert", {"amount": 20, "currency": "GBP"},
                             tool_call_id="call-convert"),
            ])  # fmt: skip
        answer = "; ".join(f"{p.tool_name}: {p.content}" for p in done)
        if info.output_tools:  # the output function's tool
            return ModelResponse(parts=[ToolCallPart(info.output_tools[0].name, {"text": answer})])
        return ModelResponse(parts=[TextPart(answer)])

    async def streamed(
        messages: list[ModelMessage], info: AgentInfo
    ) -> AsyncIterator[str | DeltaToolCalls]:
        response = brain(messages, info)
        for i, part in enumerate(response.parts):
            if isinstance(part, ToolCallPart):
                yield {i: DeltaToolCall(name=part.tool_name, json_args=part.args_as_json_str(),
                                        tool_call_id=part.tool_call_id)}  # fmt: skip
            elif isinstance(part, TextPart):
                for word in part.content.split(" "):
                    yield word + " "

    def report(text: str) -> str:
        """Report the answer."""
        note("report")
        if mode == "crash-report":
            os.kill(os.getpid(), signal.SIGKILL)
        return text

    def handler(ctx: RunContext[str], requests: DeferredToolRequests) -> DeferredToolResults:
        note("handler")
        return requests.build_results(approve_all=True)

    handled = mode in ("handled", "crash-handled")
    output: Any = str if mode not in ("report", "crash-report") else report
    agent = Agent(
        FunctionModel(brain, stream_function=streamed), deps_type=str,
        instructions="Answer in USD.",
        output_type=str if handled else [output, DeferredToolRequests],
        capabilities=[*capabilities, *([HandleDeferredToolCalls(handler)] if handled else [])],
    )  # fmt: skip

    @agent.tool
    async def lookup(ctx: RunContext[str], item: str) -> str:
        """Look an item up in the shop's catalogue."""
        note(f"lookup\t{idempotency_key()}")
        if mode in ("delegate", "crash-delegate"):
            helper = Agent(TestModel(custom_output_text=ctx.deps))
            return f"{item} sold by {(await helper.run(item, usage=ctx.usage)).output}"
        return f"{item} sold by {ctx.deps}"

    @agent.tool_plain(requires_approval=mode in ("gated", "hang") or handled)
    async def convert(amount: float, currency: str) -> float:
        """Convert an amount to USD."""
        note(f"convert\t{idempotency_key()}")
        if mode in ("crash", "crash-handled", "crash-delegate"):
            os.kill(os.getpid(), signal.SIGKILL)
        if mode == "hang":
            # Written whole, then renamed: the parent never reads it half-written.
            (workdir / "in-call.tmp").write_text(idempotency_key())
            os.replace(workdir / "in-call.tmp", workdir / "in-call")
            await asyncio.Event().wait()
        return round(amount * RATES[currency], 2)

    return agent


async def drive(durable: DurableAgent[str, Any], run_id: str, via: str) -> Any:
    """The run's output, driven the way `via` names."""
    prompt = "What does the book cost in USD?"
    kw: dict[str, Any] = dict(run_id=run_id, deps="Acme", lease_wait=10 * LEASE_TTL)
    if via == "iter":
        async with durable.iter(prompt, **kw) as agent_run:
            async for _ in agent_run:
                pass
        assert agent_run.result is not None
        return agent_run.result.output
    if via == "run_stream":
        async with durable.run_stream(prompt, **kw) as streamed:
            return await streamed.get_output()
    if via == "run_stream_events":
        async with durable.run_stream_events(prompt, **kw) as events:
            last = [e async for e in events][-1]
        assert isinstance(last, AgentRunResultEvent)
        return last.result.output
    return (await durable.run(prompt, **kw)).output


async def answer(url: str, run_id: str, workdir: str, mode: str, via: str = "run") -> str:
    """What the process prints, one line: the run's output, "deferred ...", or "approved"."""
    store = open_store(url, prefix=PREFIX)
    try:
        if mode == "approve":
            await approve_tool_call(store, run_id, "call-convert")
            return "approved"
        if via == "capability":
            engine = AgentfsmDurability(store, name="shop", lease_ttl=LEASE_TTL)
            agent = make_agent(Path(workdir), mode, [engine])
            result = await agent.run("What does the book cost in USD?", run_id=run_id, deps="Acme")
            return str(result.output).strip()
        durable = DurableAgent(
            make_agent(Path(workdir), mode), store=store, name="shop", lease_ttl=LEASE_TTL,
        )  # fmt: skip
        if mode in ("delegate", "crash-delegate"):
            result = await durable.run("What does the book cost in USD?", run_id=run_id,
                                       deps="Acme", lease_wait=10 * LEASE_TTL)  # fmt: skip
            return f"{result.output} | {result.usage.requests} requests"
        output = await drive(durable, run_id, via)
    finally:
        await store.close()
    if isinstance(output, DeferredToolRequests):
        return " ".join(["deferred", *(c.tool_call_id for c in output.approvals)])
    return str(output).strip()


async def main(url: str, run_id: str, workdir: str, mode: str, via: str = "run") -> None:
    print(await answer(url, run_id, workdir, mode, via), flush=True)


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:6]))

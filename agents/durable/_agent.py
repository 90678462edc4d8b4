"""`DurableAgent`: any pydantic-ai agent, durable in one line.

    durable = DurableAgent(agent, store=open_store())
    result = await durable.run("Analyse these numbers", run_id="job-42", deps=deps)
    result.output, result.usage, result.all_messages()     # what Agent.run returns

`run` is `Agent.run` with a capability of ours inside: every model request and every tool call
is committed as a transition of its own (see `_durable_steps`), and everything between them is
pydantic-ai's own code. Running the same `run_id` again, in any process, replays the run: a
committed model request is not sent again, a finished tool call is not run again, and a call
cut short by a crash runs once more with the same idempotency key (`idempotency_key()` inside
the tool). The result is the `AgentRunResult` of that replayed run.

`iter` and `run_stream` are `Agent.iter` and `Agent.run_stream` the same way; `_capability.py`
has the same journal as a capability of the agent itself (`AgentfsmDurability`).

Approvals are pydantic-ai's: a call that needs approval (`requires_approval=True`, or a tool
raising `ApprovalRequired`) and calls deferred to outside (`CallDeferred`, `ExternalToolset`)
end the run with `DeferredToolRequests` as its output, and nothing runs. The durable run then
waits (status `waiting`) until every deferred call has an answer: given the pydantic-ai way,
`durable.run(run_id=..., deferred_tool_results=DeferredToolResults(...))`, or one by one from
any process, `await durable.approve(run_id, tool_call_id)` (with `args=` to approve other
arguments, `deny="why"` to deny). Each answer is committed; an approval carries the sha256 of
the exact arguments it approves, and the call runs only with those.
"""

from __future__ import annotations

import asyncio
import contextlib
import typing
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from typing import Any, Generic, TypeVar

from pydantic import JsonValue
from pydantic_ai import Agent as PydanticAgent
from pydantic_ai import DeferredToolRequests, DeferredToolResults
from pydantic_ai.agent import AgentRun, AgentRunEvents, AgentRunResult, EventStreamHandler
from pydantic_ai.capabilities import AbstractCapability
from pydantic_ai.durable_exec import BaseDurabilityCapability
from pydantic_ai.messages import (
    ModelMessage,
    ModelMessagesTypeAdapter,
    ModelResponse,
    UserContent,
)
from pydantic_ai.result import StreamedRunResult
from pydantic_ai.settings import ModelSettings
from pydantic_ai.toolsets import AbstractToolset, FunctionToolset
from pydantic_ai.usage import UsageLimits

from statemachine import DefinitionError, RunError
from statemachine.engine import Graph, WatchItem, attached
from storage import Event, Store

from .._operations import approve_tool_call
from .._report import render_report
from ..spending._budget import Budget, BudgetGate, halted, set_limits
from ..spending._paid import Spending
from ..spending._ratelimit import RateLimit
from ..steps._llm import ModelSpec
from ..steps._tool_engine import MODEL_POLICY, TOOL_POLICY, StepPolicy
from ._approvals import answers_to
from ._capability import AgentfsmDurability
from ._events import stream_events
from ._journal import Journal, idempotency_key
from ._outputs import allows_deferred, answers_in_run, fingerprint, output_functions
from ._segments import failing, first_segment, replay_to_live, replaying, settle
from ._steps import (
    ANSWER,
    APPROVAL,
    DurableMemory,
    DurableRunFailed,
    RunMoved,
    dump_prompt,
    durable_machine,
    rounds_of,
)

__all__ = [
    "DurableAgent",
    "DurableRunFailed",
    "StepPolicy",
    "approve_tool_call",
    "idempotency_key",
]

AgentDepsT = TypeVar("AgentDepsT")
OutputT = TypeVar("OutputT")
H = TypeVar("H")
"""What `_live` hands the caller: an `AgentRun`, a `StreamedRunResult`."""


def _check_agent(agent: PydanticAgent[Any, Any], name: str) -> None:
    """Refuse at construction what cannot be made durable, naming the alternative."""
    where = f"DurableAgent {name!r}"
    ours: list[AbstractCapability[Any]] = []
    agent.root_capability.apply(ours.append)
    if BaseDurabilityCapability.from_agent(agent) is not None or any(
        isinstance(c, AgentfsmDurability) for c in ours
    ):
        raise DefinitionError(
            f"{where}: the agent already has a durable-execution capability (AgentfsmDurability,"
            " Temporal, DBOS, Prefect); use one engine: remove it, or do not wrap the agent in"
            " DurableAgent"
        )
    if allows_deferred(agent.output_type) or answers_in_run(agent.root_capability):
        return  # the calls come back as output, or a handler answers them in the run
    gated: list[str] = []

    def visit(ts: AbstractToolset[Any]) -> None:
        if isinstance(ts, FunctionToolset):
            gated.extend(n for n, t in ts.tools.items() if t.requires_approval)

    for toolset in agent.toolsets:
        toolset.apply(visit)
    if gated:
        raise DefinitionError(
            f"{where}: the tools {sorted(gated)} need approval, but the output type has no"
            " DeferredToolRequests to hand the calls back with: use"
            " output_type=[YourOutput, DeferredToolRequests], or answer them in the run"
            " (capabilities=[HandleDeferredToolCalls(handler)])"
        )


class DurableAgent(Generic[AgentDepsT, OutputT]):
    """An unmodified `pydantic_ai.Agent`, run as a durable agentfsm machine.

    Args:
        agent: the pydantic-ai agent, with its model, tools, instructions and output type.
        store: where runs commit (`storage.open_store(...)`).
        name: the agent's stable name in the store (default: the agent's `name`; one of
            them is required, so that a run id names one agent's run).
        version: bump it when the agent changes incompatibly with runs in flight.
        model_policy: retries, backoff and timeout of each model request (retried only on
            errors that may pass: 5xx, rate limits, timeouts, dropped connections).
        tool_policy: timeout of each tool call, and how often one that ran over it is tried
            again (an exception the tool raises is not retried, as in `Agent.run`). Calls
            cut short by a crash run again with the same key, up to `crash_retries`.
        lease_ttl: see `statemachine.Machine`.
        budget: limits on what one run may spend, checked before each model request; a run
            at its limit parks (`BudgetReached`) until `raise_budget` and a new `run` call.
        rate_limits: shared rate limits on the model requests (see `agents.RateLimit`).
    """

    def __init__(
        self,
        agent: PydanticAgent[AgentDepsT, OutputT],
        *,
        store: Store,
        name: str | None = None,
        version: int = 1,
        model_policy: StepPolicy = MODEL_POLICY,
        tool_policy: StepPolicy = TOOL_POLICY,
        lease_ttl: float = 15.0,
        budget: Budget | None = None,
        rate_limits: Sequence[RateLimit] = (),
    ) -> None:
        if not isinstance(agent, PydanticAgent):
            raise TypeError(f"DurableAgent wraps a pydantic_ai.Agent, not {agent!r}")
        stable = name or agent.name
        if not stable:
            raise DefinitionError(
                "DurableAgent needs a stable name for its runs: give the agent a name"
                " (Agent(..., name='support')) or pass DurableAgent(agent, name='support', ...)"
            )
        _check_agent(agent, stable)
        self.agent = agent
        self.store = store
        self.name = stable
        self.model_policy = model_policy
        self.tool_policy = tool_policy
        self.fingerprint = fingerprint(agent)
        gate = None if budget is None else BudgetGate(
            run_budget=budget, scope_budget=None, scope=None, on_budget=None,
            memory_type=DurableMemory,
        )  # fmt: skip
        self.spending = Spending(gate=gate, rate_limits=tuple(rate_limits))
        self.machine = durable_machine(
            stable, version, model_policy=model_policy, tool_policy=tool_policy, lease_ttl=lease_ttl
        )

    def __repr__(self) -> str:
        return f"<DurableAgent {self.name!r} v{self.machine.version}>"

    async def run(
        self,
        user_prompt: str | Sequence[UserContent] | None = None,
        *,
        run_id: str | None = None,
        message_history: Sequence[ModelMessage] | None = None,
        deferred_tool_results: DeferredToolResults | None = None,
        deps: AgentDepsT = None,  # type: ignore[assignment]
        model: ModelSpec | None = None,
        model_settings: ModelSettings | None = None,
        usage_limits: UsageLimits | None = None,
        metadata: Mapping[str, Any] | None = None,
        toolsets: Sequence[AbstractToolset[AgentDepsT]] | None = None,
        instructions: Any = None,
        output_type: Any = None,
        lease_wait: float | None = None,
        on_event: Callable[[Event], object] | None = None,
        event_stream_handler: EventStreamHandler[AgentDepsT] | None = None,
        **more: Any,
    ) -> AgentRunResult[OutputT]:
        """`Agent.run`, durable: the same arguments, the same result.

        With the `run_id` of a run that exists, go on from its last commit (or, for a finished
        run, rebuild its result: no model request, no tool call). `run_id` alone resumes;
        `run_id` with `deferred_tool_results` answers the calls a waiting run deferred, then
        goes on. `deps`, `model`, `model_settings`, `usage_limits`, `metadata`, `toolsets`,
        `instructions` and `output_type` are not stored: give the same ones to every call of
        one run.
        `on_event` sees each transition this process commits. `event_stream_handler` gets
        pydantic-ai's events as in `Agent.run`, live from the durable steps (see
        `_durable_stream`); `run_stream_events` iterates over them. `lease_wait`: how long to
        wait for a run another live process holds (default: the lease TTL; see
        `Machine.resume`). Any other keyword argument of `Agent.run` (`timeout`,
        `cancellation_token`, `retries`, ...) is handed to it as given.

        Raises what `Agent.run` raises; `DurableRunFailed` for a run that failed in another
        process; `RunError` when `run_id` names a run started with another prompt or
        history, or another agent's run; `RunNotFound` for `run_id` alone that names none.
        """
        run = await self._begin(user_prompt, run_id, message_history, deferred_tool_results,
                                lease_wait)  # fmt: skip
        options: dict[str, Any] = dict(
            deps=deps, model=model, model_settings=model_settings, usage_limits=usage_limits,
            metadata=metadata, toolsets=toolsets, instructions=instructions,
            event_stream_handler=event_stream_handler, **more,
        )  # fmt: skip
        if output_type is not None:
            options["output_type"] = output_type
        for _ in range(100):
            journal = await self._journal(run, on_event, output_type)
            try:
                with attached(run.record):  # pydantic-ai's spans join the run's trace
                    return await self._replay(journal, options)
            except RunMoved:
                await run.release(quiet=True)
                run = await self.machine.resume(self.store, run.run_id, lease_wait=lease_wait)
            finally:
                await run.release(quiet=True)
        raise RunError(f"run {run.run_id!r} keeps moving on in other processes: run it there")

    @contextlib.asynccontextmanager
    async def iter(
        self,
        user_prompt: str | Sequence[UserContent] | None = None,
        *,
        run_id: str | None = None,
        message_history: Sequence[ModelMessage] | None = None,
        deferred_tool_results: DeferredToolResults | None = None,
        output_type: Any = None,
        lease_wait: float | None = None,
        on_event: Callable[[Event], object] | None = None,
        **options: Any,
    ) -> AsyncIterator[AgentRun[AgentDepsT, Any]]:
        """`Agent.iter`, durable: `async with durable.iter(...) as agent_run: async for node in
        agent_run` walks pydantic-ai's graph as a plain run does, each model request and tool call
        committed as it happens; the run's end (`agent_run.result`) is committed when the block
        is left. Left early, the run stays where it got to and goes on at the next call with its
        `run_id`. The other arguments are `run`'s (`deps`, `model`, `usage_limits`, ...)."""
        async with self._live(
            self.agent.iter, lambda agent_run: agent_run.result, user_prompt, run_id,
            message_history, deferred_tool_results, output_type, lease_wait, on_event, options,
        ) as agent_run:  # fmt: skip
            yield agent_run

    @contextlib.asynccontextmanager
    async def run_stream(
        self,
        user_prompt: str | Sequence[UserContent] | None = None,
        *,
        run_id: str | None = None,
        message_history: Sequence[ModelMessage] | None = None,
        deferred_tool_results: DeferredToolResults | None = None,
        output_type: Any = None,
        lease_wait: float | None = None,
        on_event: Callable[[Event], object] | None = None,
        **options: Any,
    ) -> AsyncIterator[StreamedRunResult[AgentDepsT, Any]]:
        """`Agent.run_stream`, durable: the last model request streams live as in a plain run
        (its response committed when it is complete), earlier ones and tool calls are committed
        as they happen, and the output is committed when the block is left with the stream
        read to its end. Left early, the run stays where it got to and goes on at the next call
        with its `run_id`. The other arguments are `run`'s."""
        async with self._live(
            self.agent.run_stream, lambda streamed: streamed.result if streamed.is_complete
            else None, user_prompt, run_id, message_history, deferred_tool_results, output_type,
            lease_wait, on_event, options,
        ) as streamed:  # fmt: skip
            yield streamed

    @contextlib.asynccontextmanager
    async def _live(
        self,
        opener: Callable[..., AbstractAsyncContextManager[H]],
        ended: Callable[[H], Any],
        user_prompt: str | Sequence[UserContent] | None,
        run_id: str | None,
        message_history: Sequence[ModelMessage] | None,
        deferred_tool_results: DeferredToolResults | None,
        output_type: Any,
        lease_wait: float | None,
        on_event: Callable[[Event], object] | None,
        options: dict[str, Any],
    ) -> AsyncIterator[H]:
        """What `iter` and `run_stream` share: the run begun (or found), its journal replayed
        up to the live part, then `opener` (`Agent.iter`, `Agent.run_stream`) for the rest,
        handed to the caller; when the block is left and `ended(handle)` gives the run's
        result (None: not finished), its output is committed."""
        run = await self._begin(user_prompt, run_id, message_history, deferred_tool_results,
                                lease_wait)  # fmt: skip
        if output_type is not None:
            options["output_type"] = output_type
        journal = await self._journal(run, on_event, output_type)
        try:
            with attached(run.record):
                segment = await replay_to_live(self.agent, journal, options)
                async with failing(journal):
                    with replaying(self.agent, journal, segment):
                        async with opener(**segment.arguments(journal), **options) as handle:
                            yield handle
                result = ended(handle)
                if result is not None:
                    await settle(journal, result.output, result.all_messages())
        finally:
            await run.release(quiet=True)

    def run_stream_events(
        self, user_prompt: str | Sequence[UserContent] | None = None, **kwargs: Any
    ) -> AbstractAsyncContextManager[AgentRunEvents[OutputT]]:
        """`Agent.run_stream_events`, durable: `async with durable.run_stream_events(...) as
        events: async for event in events` gives pydantic-ai's events as a plain run does,
        ending with the `AgentRunResultEvent`; the arguments are `run`'s."""
        return stream_events(lambda handler: self.run(user_prompt, event_stream_handler=handler,
                                                      **kwargs))  # fmt: skip

    def run_sync(
        self, user_prompt: str | Sequence[UserContent] | None = None, **kwargs: Any
    ) -> AgentRunResult[OutputT]:
        """`run`, for code that is not async (the same arguments)."""
        return asyncio.run(self.run(user_prompt, **kwargs))

    async def raise_budget(self, run_id: str, *, limits: Budget) -> None:
        """Set new limits for run `run_id` in place of the declared `budget` (lower or
        higher); a run its budget parked goes on at its next `run(run_id=...)`."""
        await set_limits(self.store, run_id=run_id, limits=limits)

    async def approve(
        self,
        run_id: str,
        tool_call_id: str,
        *,
        args: Mapping[str, Any] | None = None,
        deny: str | None = None,
    ) -> Event:
        """Approve one call a waiting run deferred (see `approve_tool_call`)."""
        return await approve_tool_call(self.store, run_id, tool_call_id, args=args, deny=deny)

    def graph(self) -> Graph:
        """The machine's state graph (`.mermaid()`, `.dot()`, `.svg()`, `.png()`)."""
        return self.machine.graph()

    def watch(
        self, run_id: str, *, after: str | None = None, follow: bool = False
    ) -> AsyncIterator[WatchItem]:
        """The run's committed events and live items, from any process (see `Run.watch`)."""
        return self.machine.watch(self.store, run_id, after=after, follow=follow)

    async def history(self, run_id: str) -> list[Event]:
        """The run's committed events: one per model request, tool call and answer."""
        return await self.store.history(run_id)

    async def report(self, run_id: str) -> str:
        """The run's HTML report (graph, timeline, conversation)."""
        return await render_report(self.machine, self.store, run_id)

    # -----------------------------------------------------------------------------------------

    async def _begin(
        self,
        user_prompt: str | Sequence[UserContent] | None,
        run_id: str | None,
        message_history: Sequence[ModelMessage] | None,
        deferred_tool_results: DeferredToolResults | None,
        lease_wait: float | None,
    ) -> Any:
        """The run to drive, held: started, or the stored one checked and its answers given."""
        run = await self._open(user_prompt, run_id, message_history, deferred_tool_results,
                               lease_wait)  # fmt: skip
        if run.memory.agent != self.fingerprint:
            raise RunError(
                f"run {run.run_id!r} was started by another agent named {self.name!r} (its tools"
                " or output type differ): give this agent another name, or bump version="
            )
        if await halted(run):  # parked by its budget: check it again (it may be raised)
            await run.retry()
        if deferred_tool_results is not None and run.status == "waiting":
            await self._answer(run, deferred_tool_results)
        elif (
            deferred_tool_results is not None
            and not run.memory.answers
            and not rounds_of(await run.history())
        ):
            raise RunError(
                f"run {run.run_id!r} deferred no tool calls: it takes no deferred_tool_results"
            )
        return run

    async def _open(
        self,
        user_prompt: str | Sequence[UserContent] | None,
        run_id: str | None,
        message_history: Sequence[ModelMessage] | None,
        answers: DeferredToolResults | None,
        lease_wait: float | None,
    ) -> Any:
        history: list[JsonValue] = (
            ModelMessagesTypeAdapter.dump_python(list(message_history), mode="json")
            if message_history
            else []
        )
        if user_prompt is None and not history:  # go on with a run that exists
            if run_id is None:
                raise ValueError("give a user_prompt (or message_history), or the run_id to resume")
            return await self.machine.resume(self.store, run_id, lease_wait=lease_wait)
        given: list[JsonValue] = []
        if answers is not None:
            past = ModelMessagesTypeAdapter.validate_python(history)
            last = next((m for m in reversed(past) if isinstance(m, ModelResponse)), None)
            calls = last.tool_calls if last is not None else []
            requests = DeferredToolRequests(calls=calls, approvals=calls)  # answered either way
            given = [a.model_dump(mode="json") for a in await answers_to(requests, answers, 0)]
        memory = DurableMemory(agent=self.fingerprint, prompt=dump_prompt(user_prompt),
                               message_history=history, answers=given)  # fmt: skip
        run = await self.machine.start(
            self.store, memory, run_id=run_id, lease_wait=lease_wait, hold=True
        )  # driven right away: the lease is taken in the same round trip as the creation
        stored = run.memory
        if (stored.prompt, stored.message_history) != (memory.prompt, memory.message_history):
            await run.release()
            raise RunError(
                f"run {run.run_id!r} exists and was started with another prompt or history:"
                f" continue it with run(run_id={run.run_id!r}) and no prompt, or start a new"
                " run with another run_id"
            )
        return run

    async def _answer(self, run: Any, results: DeferredToolResults) -> None:
        rounds = rounds_of(await run.history())
        if not rounds or run.state != APPROVAL:
            raise RunError(f"run {run.run_id!r} is not waiting for deferred tool results")
        current = rounds[-1]
        for answer in await answers_to(current.requests, results, len(rounds) - 1):
            if answer.tool_call_id in current.pending:
                await run.send(ANSWER, answer.model_dump(mode="json"))
        await run.release()

    async def _journal(
        self, run: Any, on_event: Callable[[Event], object] | None, output_type: Any
    ) -> Journal:
        """A journal over the run's history as it is now."""
        wanted = self.agent.output_type if output_type is None else output_type
        return Journal(run=run, events=await run.history(), notify=on_event, spending=self.spending,
                       output_functions=output_functions(wanted))  # fmt: skip

    async def _replay(self, journal: Journal, options: dict[str, Any]) -> AgentRunResult[OutputT]:
        """Run the durable run's segments, replayed from the history then live, to its end
        (or to where it waits)."""
        segment = first_segment(journal)
        while True:
            async with failing(journal):
                with replaying(self.agent, journal, segment):
                    result = await self.agent.run(**segment.arguments(journal), **options)
            following = await settle(journal, result.output, result.all_messages())
            if following is None:
                return typing.cast(AgentRunResult[OutputT], result)
            segment = following

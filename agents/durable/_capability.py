"""`AgentfsmDurability`: the durable journal as a capability of the pydantic-ai agent itself.

    agent = Agent("openai:gpt-5", name="support", capabilities=[AgentfsmDurability(store)])
    result = await agent.run("Where is my order?", run_id="ticket-42", deps=deps)

Each `agent.run` (`run_sync`, `run_stream`, `run_stream_events`, `iter`) is then one durable run
whose id is the run's `run_id`: its model requests and tool calls are committed one by one
(the same journal, machine and store records as `DurableAgent`), and the same `run_id` run
again, in any process, replays what was committed and goes on from there. As in plain
pydantic-ai, a run that deferred calls ends with `DeferredToolRequests` as its output and a
continuation is a new run (with `message_history=` and `deferred_tool_results=`); `DurableAgent`
is the form that keeps one durable run across the answers, with approvals from other
processes (`DurableAgent.approve`, `agentfsm approve`).
"""

from __future__ import annotations

import copy
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from pydantic import JsonValue
from pydantic_ai import Agent, RunContext
from pydantic_ai.agent import AbstractAgent, AgentRunResult
from pydantic_ai.capabilities import AbstractCapability, CapabilityOrdering
from pydantic_ai.capabilities.abstract import WrapRunHandler
from pydantic_ai.durable_exec import replay_scope
from pydantic_ai.messages import ModelMessagesTypeAdapter
from pydantic_ai.models import Model
from pydantic_ai.output import OutputContext
from pydantic_ai.tool_manager import ToolManager
from pydantic_ai.toolsets import AbstractToolset

from statemachine import DefinitionError, Run, RunError
from statemachine.engine import attached
from storage import Store

from ..spending._budget import Budget, BudgetGate, halted
from ..spending._paid import Spending
from ..spending._ratelimit import RateLimit
from ..steps._tool_engine import MODEL_POLICY, TOOL_POLICY, StepPolicy
from ._journal import Journal, JournaledModel, JournaledToolset
from ._outputs import fingerprint, output_functions
from ._segments import failing
from ._sleep import Sleeps
from ._steps import DurableMemory, DurableRunFailed, RunMoved, dump_prompt, durable_machine

__all__ = ["AgentfsmDurability"]


class AgentfsmDurability(AbstractCapability[Any]):
    """Make every run of the agent it is given to durable in `store` (see the module doc).

    Args: as `DurableAgent`'s (`name` defaults to the agent's name; one is required).
    """

    def __init__(
        self,
        store: Store,
        *,
        name: str | None = None,
        version: int = 1,
        model_policy: StepPolicy = MODEL_POLICY,
        tool_policy: StepPolicy = TOOL_POLICY,
        lease_ttl: float = 15.0,
        budget: Budget | None = None,
        rate_limits: Sequence[RateLimit] = (),
    ) -> None:
        super().__init__()
        self.store = store
        self.name = name
        self.version = version
        self.model_policy = model_policy
        self.tool_policy = tool_policy
        self.lease_ttl = lease_ttl
        gate = None if budget is None else BudgetGate(
            run_budget=budget, scope_budget=None, scope=None, on_budget=None,
            memory_type=DurableMemory,
        )  # fmt: skip
        self.spending = Spending(gate=gate, rate_limits=tuple(rate_limits))
        self._agent: AbstractAgent[Any, Any] | None = None
        self._journal: Journal | None = None

    def __repr__(self) -> str:
        return f"<AgentfsmDurability {self.name!r} v{self.version}>"

    def for_agent(self, agent: AbstractAgent[Any, Any]) -> AbstractCapability[Any]:
        bound = copy.copy(self)
        bound.name = self.name or agent.name
        if not bound.name:
            raise DefinitionError(
                "AgentfsmDurability needs a stable name for its runs: give the agent a name"
                " (Agent(..., name='support')) or pass AgentfsmDurability(store, name='support')"
            )
        bound._agent = agent
        return bound

    async def for_run(self, ctx: RunContext[Any]) -> AbstractCapability[Any]:
        fresh = copy.copy(self)
        fresh._journal = None
        return fresh

    def get_default_conversation_id(self, run_id: str) -> str | None:
        """The durable run's conversation is the run: the same on every replay (as with
        `DurableAgent`)."""
        return run_id

    def get_ordering(self) -> CapabilityOrdering:
        return CapabilityOrdering(position="innermost")

    def get_wrapper_model(self, model: Model) -> Model | None:
        return JournaledModel(model, lambda: self._journal)

    def get_wrapper_toolset(self, toolset: AbstractToolset[Any]) -> AbstractToolset[Any] | None:
        return JournaledToolset(toolset, journal=lambda: self._journal)

    async def wrap_output_process(
        self,
        ctx: RunContext[Any],
        *,
        output_context: OutputContext,
        output: Any,
        handler: Callable[[Any], Awaitable[Any]],
    ) -> Any:
        if self._journal is None:
            return await handler(output)
        return await self._journal.wrap_output_process(
            ctx, output_context=output_context, output=output, handler=handler
        )

    async def wrap_run(
        self, ctx: RunContext[Any], *, handler: WrapRunHandler
    ) -> AgentRunResult[Any]:
        agent = self._agent
        if agent is None or self.name is None:
            raise DefinitionError("AgentfsmDurability is used only as a capability of an Agent")
        run = await self._open(agent, self.name, ctx)
        journal = Journal(
            run=run, events=await run.history(), spending=self.spending,
            output_functions=output_functions(agent.output_type),
        )  # fmt: skip
        self._journal = journal
        try:
            with (
                attached(run.record),  # pydantic-ai's spans join the run's trace
                ToolManager.parallel_execution_mode("sequential"),
                replay_scope(),
                Agent.using_sleep(Sleeps(journal)),  # pydantic-ai's waits, journaled
            ):
                async with failing(journal):
                    result = await handler()
            if run.status == "running":
                await journal.finish(result.output)
            return result
        except RunMoved:
            raise RunError(
                f"run {run.run_id!r} moved on in another process meanwhile: run it again"
            ) from None
        finally:
            self._journal = None
            await run.release(quiet=True)

    async def _open(
        self, agent: AbstractAgent[Any, Any], name: str, ctx: RunContext[Any]
    ) -> Run[Any]:
        machine = durable_machine(
            name, self.version, model_policy=self.model_policy, tool_policy=self.tool_policy,
            lease_ttl=self.lease_ttl,
        )  # fmt: skip
        history: list[JsonValue] = (
            ModelMessagesTypeAdapter.dump_python(list(ctx.messages), mode="json")
            if ctx.messages
            else []
        )
        memory = DurableMemory(agent=fingerprint(agent), prompt=dump_prompt(ctx.prompt),
                               message_history=history)  # fmt: skip
        run = await machine.start(self.store, memory, run_id=ctx.run_id, hold=True)
        stored = run.memory
        if (stored.prompt, stored.message_history, stored.agent) != (
            memory.prompt, memory.message_history, memory.agent
        ):  # fmt: skip
            await run.release()
            raise RunError(
                f"run {run.run_id!r} exists and was started with another prompt, history or"
                " agent: give this run another run_id"
            )
        if run.status == "failed":
            error = next((e.error for e in reversed(await run.history()) if e.error), None)
            await run.release(quiet=True)
            raise DurableRunFailed(run.run_id, error)
        if await halted(run):  # parked by its budget: check it again (it may be raised)
            await run.retry()
        return run

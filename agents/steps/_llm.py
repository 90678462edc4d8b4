"""`llm()`: a transition that makes one model request through pydantic-ai.

The request and response messages are committed with the transition, appended to the run's
conversation, so a resumed run continues the same conversation and a request that was paid
for is never made again. Output that fails validation is sent back to the model with the
error (pydantic-ai's output retries, inside the same transition); provider errors that may
pass (5xx, rate limits, timeouts, dropped connections) are retried with backoff.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, JsonValue
from pydantic_ai import Agent as PydanticAgent
from pydantic_ai import DeferredToolRequests, DeferredToolResults
from pydantic_ai.exceptions import UserError
from pydantic_ai.messages import ModelMessagesTypeAdapter
from pydantic_ai.models import Model, infer_model
from pydantic_ai.toolsets import ExternalToolset
from pydantic_ai.usage import UsageLimits

from statemachine import DefinitionError, RunError, StepContext, transition
from statemachine.engine import Guard, RetryPolicy, StepResult, Transition

from ..spending._paid import PaidModel, Spending, model_label
from ._llm_stream import live_handler
from ._steps import Reducer, apply_output
from ._tool_calls import TOOL_CALLS_ROUTE, FunctionTool, function_tools, tool_results
from ._tool_engine import StepPolicy, tool_answer

__all__ = ["LlmStep", "ModelSpec", "check_model", "llm"]

M = TypeVar("M", bound=BaseModel)

ModelSpec = Model | str
"""A pydantic-ai model: a name such as "openai:gpt-4o-mini", or a `Model` object."""

Text = str | Callable[[Any], str]


def check_model(model: ModelSpec | None, where: str) -> Model:
    """The model object for `model`, or `ValueError` with pydantic-ai's reason (an unknown
    name, a missing API key, a provider SDK that is not installed)."""
    if model is None:
        raise ValueError(f"{where}: no model: pass model= to the step or to the Agent")
    if isinstance(model, Model):
        return model
    try:
        return infer_model(model)
    except (UserError, ImportError) as exc:
        first = str(exc).splitlines()[0]
        raise ValueError(f"{where}: cannot use model {model!r}: {first}") from None


def model_name(model: ModelSpec | None) -> str:
    if model is None:
        return "?"
    return model_label(model) if isinstance(model, Model) else model


@dataclass(frozen=True, kw_only=True, slots=True)
class LlmStep:
    """One model request. `model` None means "the agent's model", bound by `Agent`."""

    prompt: Text
    instructions: Text | None
    output: Any
    into: str | None
    update: Reducer | None
    model: ModelSpec | None
    policy: RetryPolicy
    output_retries: int
    history: bool
    routes: tuple[str, ...] = ()
    """The route names the model chooses from (not the tool-calls route)."""
    tools: tuple[FunctionTool, ...] = ()
    spending: Spending | None = None
    """The agent's budgets and rate limits, around the request (bound by `Agent`)."""
    kind: str = "llm"
    _agents: dict[int, PydanticAgent[None, Any]] = field(
        default_factory=dict, repr=False, compare=False
    )

    @property
    def label(self) -> str:
        return model_name(self.model)

    @property
    def writes(self) -> tuple[str, ...]:
        return (self.into,) if self.into else ()

    def bound(self, model: ModelSpec | None, spending: Spending | None = None) -> LlmStep:
        step = self
        if spending is not None:
            spending, policy = spending.policy(self.policy)
            step = replace(self, spending=spending, policy=policy)
        if self.model is not None or model is None:
            return step
        return replace(step, model=model, _agents={})

    def _agent(self) -> PydanticAgent[None, Any]:
        """The pydantic-ai agent for this step, built on first use (so a missing API key
        surfaces when the step runs, or earlier through `Agent.check_models`)."""
        agent = self._agents.get(0)
        if agent is None:
            resolved = check_model(self.model, f"llm step {self.label}")
            output: Any = self.output
            if self.routes and self.output is str:
                output = Literal[self.routes]
            toolsets = []
            if self.tools:  # the model's calls come back as data, each run as a transition
                output = [output, DeferredToolRequests]
                toolsets.append(ExternalToolset([t.definition for t in self.tools]))
            agent = self._agents[0] = PydanticAgent(
                resolved, output_type=output, retries=self.output_retries, toolsets=toolsets
            )
        return agent

    async def _answers(self, ctx: StepContext) -> DeferredToolResults | None:
        """The results of the tool calls the model's last response asked for, if it asked."""
        calls, results = tool_results(await ctx.history())
        if not calls:
            return None
        missing = [c.tool_name for c in calls if c.tool_call_id not in results]
        if missing:
            raise RunError(
                f"step {ctx.trigger!r}: the model's tool calls {missing} have not run yet"
                " (the run must pass through the tool_calls transition first)"
            )
        answers: dict[str, Any] = {}
        for call in calls:
            out = results[call.tool_call_id]
            assert isinstance(out, dict)
            answers[call.tool_call_id] = tool_answer(out)
        return DeferredToolResults(calls=answers)

    async def run(self, memory: Any, ctx: StepContext) -> StepResult[Any]:
        prompt = self.prompt(memory) if callable(self.prompt) else self.prompt
        instructions = (
            self.instructions(memory) if callable(self.instructions) else self.instructions
        )
        past = await ctx.conversation() if self.history else []
        answers = await self._answers(ctx) if self.tools else None
        agent = self._agent()
        assert agent.model is not None and not isinstance(agent.model, str)
        # Each request pydantic-ai makes in this try (output retries too) is a paid one.
        model = PaidModel(agent.model, self.spending, memory, ctx)
        # The last tokens still queued when this returns go with the step's commit.
        result = await agent.run(
            None if answers is not None else prompt,  # tool results go on, no new prompt
            model=model,
            instructions=instructions,
            message_history=ModelMessagesTypeAdapter.validate_python(past) if past else None,
            deferred_tool_results=answers,
            usage_limits=UsageLimits(request_limit=1 + self.output_retries),
            event_stream_handler=live_handler(ctx, agent.model),
        )
        value = result.output
        messages: list[JsonValue] = ModelMessagesTypeAdapter.dump_python(
            result.new_messages(), mode="json"
        )
        if isinstance(value, DeferredToolRequests):
            calls: list[JsonValue] = [
                {"tool_call_id": c.tool_call_id, "tool": c.tool_name, "args": c.args_as_dict()}
                for c in value.calls
            ]
            return StepResult(
                memory=memory,
                output={"tool_calls": calls},
                route=TOOL_CALLS_ROUTE,
                usage=dict(ctx.spent),
                messages=messages,
            )
        new = apply_output(memory, value, self.into, self.update)
        route = value if self.routes and isinstance(value, str) else getattr(value, "route", None)
        if self.tools and not self.routes:
            route = "answer"  # the one way out besides tool calls (see `llm`)
        jsonable = value.model_dump(mode="json") if isinstance(value, BaseModel) else value
        return StepResult(
            memory=new,
            output=None if self.into is not None else jsonable,
            route=route if isinstance(route, str) else None,
            usage=dict(ctx.spent),  # every try of this transition, not only the last
            messages=messages,
        )


def llm(
    trigger: str,
    source: str | list[str] | tuple[str, ...],
    dest: str | None = None,
    *,
    prompt: Text,
    into: str | None = None,
    update: Reducer | None = None,
    output: Any = str,
    instructions: Text | None = None,
    model: ModelSpec | None = None,
    guard: Guard | None = None,
    routes: Mapping[str, str] | None = None,
    retries: int = 3,
    output_retries: int = 1,
    timeout: float | None = None,
    backoff: float = 1.0,
    history: bool = True,
    max_visits: int | None = None,
    on_error: str | None = None,
    tools: Sequence[Callable[..., Any]] = (),
    on_tool_calls: str | None = None,
    crash_retries: int | None = None,
) -> Transition:
    """A transition that makes one model request.

    Args:
        prompt: the user prompt, or a function of the memory that builds it.
        into / update: where the output goes in memory, as for `tool()`.
        output: the output type: `str` or a pydantic model / any type pydantic-ai accepts.
        instructions: system instructions (text or a function of the memory).
        model: overrides the agent's model for this step.
        routes: route name -> state; the model must answer with one of the route names
            (with `output=str`) or an output object whose `route` field names one.
        retries: extra tries after a transient provider error, with jittered backoff.
        output_retries: how often output that fails validation is sent back to the model
            with the error, inside this transition; then the step fails.
        timeout: seconds one try may take.
        history: send the run's conversation so far (the messages earlier steps committed).
        max_visits: how often this transition may fire in one run (a loop's way out).
        on_error: the state to go to when this step gives up (default: the agent's).
        tools: functions the model may call. Its calls are not run inside this request: the
            run goes to the `on_tool_calls` state, where a `tool_calls()` transition runs
            them one by one, each committed; the next firing of this step hands the results
            to the model (no new prompt), until the model answers.
        on_tool_calls: the state to go to when the model asks for tool calls.
        crash_retries: how often the process may die during this step before the run
            fails (default: the agent's).
    """
    what = f"llm step {trigger!r}"
    if not (isinstance(prompt, str) or callable(prompt)):
        raise DefinitionError(f"{what}: prompt must be text or a function of the memory")
    if into is not None and update is not None:
        raise DefinitionError(f"{what}: give into= or update=, not both")
    if retries < 0 or output_retries < 0:
        raise DefinitionError(f"{what}: retries and output_retries must be 0 or more")
    if bool(tools) != (on_tool_calls is not None):
        raise DefinitionError(
            f"{what}: tools= and on_tool_calls= go together (the state where the calls run)"
        )
    if tools and not history:
        raise DefinitionError(f"{what}: a step with tools needs history=True")
    all_routes = dict(routes or {})
    if tools:
        assert on_tool_calls is not None
        if TOOL_CALLS_ROUTE in all_routes:
            raise DefinitionError(f"{what}: the route name {TOOL_CALLS_ROUTE!r} is reserved")
        if not all_routes:
            if dest is None:
                raise DefinitionError(f"{what}: give a dest (or routes) for the model's answer")
            all_routes, dest = {"answer": dest}, None
        all_routes[TOOL_CALLS_ROUTE] = on_tool_calls
    step = LlmStep(
        prompt=prompt,
        instructions=instructions,
        output=output,
        into=into,
        update=update,
        model=model,
        policy=StepPolicy(
            retries=retries, backoff=backoff, timeout=timeout, crash_retries=crash_retries
        ).retry_policy(model=True),
        output_retries=output_retries,
        history=history,
        routes=tuple(routes or ()),
        tools=function_tools(tools, what),
    )
    return transition(
        trigger,
        source,
        dest,
        step,
        guard=guard,
        routes=all_routes or None,
        max_visits=max_visits,
        on_error=on_error,
    )

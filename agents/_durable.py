"""`DurableAgent`: any pydantic-ai agent, durable in one line.

    durable = DurableAgent(agent, store=open_store())
    result = await durable.run("Analyse these numbers", run_id="job-42", deps=deps)
    result.output, result.usage, result.all_messages()

Under the hood the agent becomes an agentfsm machine of two states in a loop:

    model --model_request--> tools --tool_call (more)--> tools --tool_call (done)--> model
    model --model_request (output)--> done

`model_request` runs the wrapped agent (its model, instructions, output type and validators,
model settings, history processors, capabilities) until the model's response asks for tool
calls, or until the output validates. Then it stops, *before* pydantic-ai would run the calls:
the request and response messages are committed with the transition. `tool_call` runs the
first call still pending, through the wrapped agent's own toolsets (`Agent.toolsets`), with a
`RunContext` carrying the run's deps, and commits its result under the idempotency key
`{run_id}:{seq}:tool_call:{tool_call_id}`. Calls the model made in parallel run one per
transition, in the model's order, so the history is the same on every run. The next
`model_request` hands the committed results back to the agent as `deferred_tool_results`
(no new prompt) and the conversation goes on.

After a crash, `run` with the same `run_id` continues from the last commit: a committed model
request is not sent again, a finished tool call is not run again; a call cut short runs once
more with the same idempotency key (`idempotency_key()` inside the tool, or `ctx.tool_call_id`).

Within one `model_request` transition pydantic-ai may still send more than one request: when
the output fails validation (or an output validator raises `ModelRetry`) the error goes back
to the model, as `Agent.run` does, up to the agent's output retries. Every request is counted
in the event's `usage`. A response that calls an output tool *and* function tools is left to
pydantic-ai whole (its `end_strategy` decides which calls run), so those function calls run
inside the model request transition, not as transitions of their own.

Arguments that fail the tool's validation, an unknown tool name, or a tool raising
`ModelRetry` are answered to the model as a retry prompt; `ToolFailed` as a failed call the
model should adapt to. Any other exception fails the try, and the tool policy's retries apply.

What is not supported (raises `RunError` when met): tools that need approval or raise
`CallDeferred`, and prompts that are not text. A tool's `ToolReturn` is stored as plain JSON.
Deps are not stored: pass them to every `run` call (a resumed run uses the deps it is given).
"""

from __future__ import annotations

import asyncio
import contextvars
import dataclasses
import inspect
import typing
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

import pydantic_core
from pydantic import BaseModel, JsonValue, TypeAdapter, ValidationError
from pydantic_ai import Agent as PydanticAgent
from pydantic_ai import DeferredToolRequests, DeferredToolResults, ModelRetry, RunContext
from pydantic_ai.capabilities import AbstractCapability
from pydantic_ai.exceptions import ApprovalRequired, CallDeferred, ToolFailed
from pydantic_ai.messages import ModelMessage, ModelMessagesTypeAdapter
from pydantic_ai.settings import ModelSettings
from pydantic_ai.tools import ToolDefinition
from pydantic_ai.toolsets import CombinedToolset, FunctionToolset
from pydantic_ai.usage import RunUsage
from pydantic_graph import End

from statemachine import (
    DefinitionError,
    Graph,
    RetryPolicy,
    RunError,
    StepContext,
    StepResult,
    transition,
)
from storage import Event, Store

from ._agent import Agent
from ._llm import TRANSIENT_MODEL_ERRORS, ModelSpec, check_model, model_name, transient_http_error
from ._report import render_report
from ._tool_calls import TOOL_CALLS_ROUTE, tool_answer

__all__ = [
    "DurableAgent",
    "DurableMemory",
    "DurableRunFailed",
    "DurableRunResult",
    "StepPolicy",
    "idempotency_key",
]

AgentDepsT = TypeVar("AgentDepsT")
OutputT = TypeVar("OutputT")

MODEL_STATE, TOOLS_STATE, DONE_STATE, FAILED_STATE = "model", "tools", "done", "failed"
MODEL_REQUEST, TOOL_CALL = "model_request", "tool_call"
OUTPUT_ROUTE = "output"


@dataclass(frozen=True, kw_only=True, slots=True)
class StepPolicy:
    """How one kind of transition (model requests, or tool calls) is retried.

    `retries` extra tries after a failed one, waiting `backoff` seconds before the second
    (doubling, with jitter, up to `max_backoff`); `timeout` seconds one try may take. A try cut
    short by a process crash counts too. Model requests are retried only on errors that may
    pass (5xx, 408/409/425/429, rate limits, timeouts, dropped connections); tool calls on any
    exception (`ModelRetry` and `ToolFailed` are answers to the model, not failures). A sync
    tool that runs over its timeout is abandoned in its worker thread, not stopped.
    """

    retries: int = 0
    backoff: float = 0.5
    timeout: float | None = None
    max_backoff: float = 30.0

    def __post_init__(self) -> None:
        if self.retries < 0:
            raise ValueError(f"retries must be 0 or more, not {self.retries}")
        if self.timeout is not None and self.timeout <= 0:
            raise ValueError(f"timeout must be positive, not {self.timeout}")

    def retry_policy(self, *, model: bool) -> RetryPolicy:
        if model:
            return RetryPolicy(
                attempts=self.retries + 1,
                backoff=self.backoff,
                max_backoff=self.max_backoff,
                timeout=self.timeout,
                retry_on=TRANSIENT_MODEL_ERRORS,
                retry_if=transient_http_error,
            )
        return RetryPolicy(
            attempts=self.retries + 1,
            backoff=self.backoff,
            max_backoff=self.max_backoff,
            timeout=self.timeout,
        )


class DurableMemory(BaseModel):
    """The machine's memory: the prompt, the history it continues, and the final output (JSON).

    The conversation itself is not here: each transition commits the messages it added.
    """

    prompt: str | None = None
    message_history: list[JsonValue] = []
    output: JsonValue = None


class DurableRunFailed(RunError):
    """The run ended in the failure state: a step gave up (its error is in `error`)."""

    def __init__(self, run_id: str, error: Mapping[str, Any] | None) -> None:
        self.run_id = run_id
        self.error = dict(error or {})
        what = f"{self.error.get('type', 'Error')}: {self.error.get('message', '')}"
        super().__init__(f"run {run_id!r} failed: {what}")


@dataclass(frozen=True, kw_only=True)
class DurableRunResult(Generic[OutputT]):
    """What `DurableAgent.run` returns: the shape of pydantic-ai's `AgentRunResult`.

    `usage` counts what the whole run paid for (every committed transition, in any process);
    `new_messages()` are the messages of this run, `all_messages()` with the history it
    continued.
    """

    run_id: str
    output: OutputT
    usage: RunUsage
    _history: list[ModelMessage] = field(repr=False)
    _new: list[ModelMessage] = field(repr=False)

    def all_messages(self) -> list[ModelMessage]:
        return [*self._history, *self._new]

    def new_messages(self) -> list[ModelMessage]:
        return list(self._new)

    def all_messages_json(self) -> bytes:
        return ModelMessagesTypeAdapter.dump_json(self.all_messages())

    def new_messages_json(self) -> bytes:
        return ModelMessagesTypeAdapter.dump_json(self._new)


@dataclass(frozen=True, slots=True)
class _CallArgs:
    """What one `DurableAgent.run` call passes to its steps (not stored: deps may be anything)."""

    deps: Any = None
    model: ModelSpec | None = None
    model_settings: ModelSettings | None = None


_CALL_ARGS: contextvars.ContextVar[_CallArgs | None] = contextvars.ContextVar(
    "agentfsm_durable_call", default=None
)


def _call_args() -> _CallArgs:
    return _CALL_ARGS.get() or _CallArgs()


_IDEMPOTENCY_KEY: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "agentfsm_durable_key", default=None
)


def idempotency_key() -> str:
    """Inside a tool a `DurableAgent` runs: the call's idempotency key,
    `{run_id}:{seq}:tool_call:{tool_call_id}`, the same on every try in any process."""
    key = _IDEMPOTENCY_KEY.get()
    if key is None:
        raise LookupError("idempotency_key() is only known inside a DurableAgent's tool call")
    return key


@dataclass(eq=False)
class _ToolNames(AbstractCapability[Any]):
    """Notes which tool names the model was offered as function tools and as output tools, so
    a response's calls can be told apart (public capability hooks; the tools are unchanged)."""

    function: set[str] = field(default_factory=set)
    output: set[str] = field(default_factory=set)

    async def prepare_tools(
        self, ctx: RunContext[Any], tool_defs: list[ToolDefinition]
    ) -> list[ToolDefinition]:
        self.function.update(t.name for t in tool_defs)
        return tool_defs

    async def prepare_output_tools(
        self, ctx: RunContext[Any], tool_defs: list[ToolDefinition]
    ) -> list[ToolDefinition]:
        self.output.update(t.name for t in tool_defs)
        return tool_defs


def _jsonable(value: Any) -> JsonValue:
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    return pydantic_core.to_jsonable_python(value)  # type: ignore[no-any-return]


def _tool_state(
    events: Sequence[Event],
) -> tuple[list[dict[str, JsonValue]], dict[str, dict[str, JsonValue]]]:
    """The calls the last model request asked us to run (in the model's order), and the
    results committed since, by tool_call_id. Read from the history alone."""
    last = next(
        (i for i in range(len(events) - 1, -1, -1) if events[i].trigger == MODEL_REQUEST
         and events[i].kind != "error"),
        None,
    )  # fmt: skip
    if last is None:
        return [], {}
    out = events[last].output
    raw = out.get("tool_calls") if isinstance(out, dict) else None
    calls = [c for c in raw if isinstance(c, dict)] if isinstance(raw, list) else []
    results: dict[str, dict[str, JsonValue]] = {}
    for e in events[last + 1 :]:
        o = e.output
        if e.trigger == TOOL_CALL and e.kind != "error" and isinstance(o, dict):
            results[str(o.get("tool_call_id"))] = o
    return calls, results


def _retries_so_far(events: Sequence[Event], tool: str) -> int:
    """How many of `tool`'s calls in a row were answered with a retry (pydantic-ai's
    `RunContext.retry` for the next call)."""
    n = 0
    for e in events:
        o = e.output
        ours = e.trigger == TOOL_CALL and e.kind != "error" and isinstance(o, dict)
        if ours and isinstance(o, dict) and o.get("tool") == tool:
            n = n + 1 if "retry" in o else 0
    return n


def _call_part_args(args: Any) -> JsonValue:
    return args if isinstance(args, str | dict) else _jsonable(args)


@dataclass(frozen=True, kw_only=True, slots=True)
class ModelRequestStep:
    """Runs the wrapped agent up to its next tool calls, or to its validated output."""

    durable: DurableAgent[Any, Any] = field(repr=False)
    policy: RetryPolicy
    kind: str = "llm"

    @property
    def label(self) -> str:
        return model_name(self.durable.agent.model)

    @property
    def writes(self) -> tuple[str, ...]:
        return ("output",)

    async def run(self, memory: DurableMemory, ctx: StepContext) -> StepResult[DurableMemory]:
        agent = self.durable.agent
        call = _call_args()
        events = await ctx.history()
        calls, results = _tool_state(events)
        answers: DeferredToolResults | None = None
        if calls:
            missing = [str(c["tool"]) for c in calls if c["tool_call_id"] not in results]
            if missing:
                raise RunError(f"run {ctx.run_id!r}: the tool calls {missing} have not run yet")
            answers = DeferredToolResults(
                calls={str(c["tool_call_id"]): tool_answer(results[str(c["tool_call_id"])])
                       for c in calls}
            )  # fmt: skip
        conversation = await ctx.conversation()
        past = [*memory.message_history, *conversation]
        names = _ToolNames()
        usage = RunUsage()  # pydantic-ai counts into it as it goes, also when the run fails
        stopped: list[dict[str, JsonValue]] | None = None
        try:
            async with agent.iter(
                None if conversation else memory.prompt,
                message_history=ModelMessagesTypeAdapter.validate_python(past) if past else None,
                deferred_tool_results=answers,
                deps=call.deps,
                model=call.model,
                model_settings=call.model_settings,
                usage=usage,
                capabilities=[names],
            ) as run:
                node = run.next_node
                requested = False
                while not isinstance(node, End):
                    if requested and PydanticAgent.is_call_tools_node(node):
                        tool_calls = node.model_response.tool_calls
                        ours = [c for c in tool_calls if c.tool_name not in names.output]
                        # With an output call beside them, pydantic-ai's end strategy decides
                        # in this request what runs: let it (see the module docstring).
                        if ours and len(ours) == len(tool_calls):
                            # Stop before pydantic-ai runs them: each is a transition of its own.
                            stopped = [
                                {"tool_call_id": c.tool_call_id, "tool": c.tool_name,
                                 "args": _call_part_args(_args(c.args))}
                                for c in ours
                            ]  # fmt: skip
                            break
                    requested = PydanticAgent.is_model_request_node(node)
                    node = await run.next(node)
                messages = run.new_messages()
                value = run.result.output if stopped is None and run.result is not None else None
        finally:
            for name in ("requests", "input_tokens", "output_tokens"):
                ctx.spent[name] = ctx.spent.get(name, 0) + getattr(usage, name)
        dumped: list[JsonValue] = ModelMessagesTypeAdapter.dump_python(messages, mode="json")
        if stopped is not None:
            return StepResult(
                memory=memory,
                output={"tool_calls": list[JsonValue](stopped)},
                route=TOOL_CALLS_ROUTE,
                usage=dict(ctx.spent),
                messages=dumped,
            )
        if isinstance(value, DeferredToolRequests):
            raise RunError(
                f"run {ctx.run_id!r}: the agent deferred tool calls"
                f" {[c.tool_name for c in [*value.calls, *value.approvals]]} (approval-required"
                " and deferred tools are not supported by DurableAgent)"
            )
        new = memory.model_copy(update={"output": _jsonable(value)})
        return StepResult(memory=new, route=OUTPUT_ROUTE, usage=dict(ctx.spent), messages=dumped)


def _args(args: Any) -> Any:
    """A call's arguments as a dict when they parse, else as the model sent them."""
    if isinstance(args, str):
        try:
            return pydantic_core.from_json(args or "{}")
        except ValueError:
            return args
    return args if args is not None else {}


@dataclass(frozen=True, kw_only=True, slots=True)
class ToolCallStep:
    """Runs the first pending tool call through the wrapped agent's toolsets."""

    durable: DurableAgent[Any, Any] = field(repr=False)
    policy: RetryPolicy
    kind: str = "tool"

    @property
    def label(self) -> str:
        names = [
            name for ts in self.durable.agent.toolsets if isinstance(ts, FunctionToolset)
            for name in ts.tools
        ]  # fmt: skip
        return ", ".join(names) or "tools"

    @property
    def writes(self) -> tuple[str, ...]:
        return ()

    async def run(self, memory: DurableMemory, ctx: StepContext) -> StepResult[DurableMemory]:
        events = await ctx.history()
        calls, results = _tool_state(events)
        pending = [c for c in calls if c["tool_call_id"] not in results]
        if not pending:
            raise RunError(f"step {ctx.trigger!r}: no tool call is left to run")
        call = pending[0]
        call_id, tool_name, args = str(call["tool_call_id"]), str(call["tool"]), call["args"]
        output: dict[str, JsonValue] = {"tool_call_id": call_id, "tool": tool_name, "args": args}
        key = f"{ctx.idempotency_key}:{call_id}"
        conversation = await ctx.conversation()
        try:
            value = await self._call(
                memory, ctx, conversation, tool_name, call_id, args, key, events
            )
            output["result"] = _jsonable(value)
        except ModelRetry as retry:
            output["retry"] = retry.message
        except ToolFailed as failed:
            output["failed"] = failed.message
        return StepResult(
            memory=memory,
            output=output,
            route="more" if len(pending) > 1 else "done",
            subkey=call_id,
        )

    async def _call(
        self,
        memory: DurableMemory,
        ctx: StepContext,
        conversation: list[JsonValue],
        tool_name: str,
        call_id: str,
        args: JsonValue,
        key: str,
        events: Sequence[Event],
    ) -> Any:
        durable = self.durable
        call = _call_args()
        model = check_model(call.model or durable.agent.model, f"agent {durable.name!r}")
        messages = ModelMessagesTypeAdapter.validate_python(
            [*memory.message_history, *conversation]
        )
        run_ctx: RunContext[Any] = RunContext(
            deps=call.deps,
            model=model,
            usage=RunUsage(),
            prompt=memory.prompt,
            messages=messages,
            run_id=ctx.run_id,
            run_step=sum(1 for e in events if e.trigger == MODEL_REQUEST and e.kind != "error"),
            model_settings=call.model_settings,
        )
        # `Agent.toolsets`: the agent's function toolset (its @agent.tool / tool_plain tools)
        # and every other toolset it was given, as pydantic-ai itself combines them per run.
        toolset = CombinedToolset(list(durable.agent.toolsets))
        async with toolset:
            step_toolset = await toolset.for_run_step(run_ctx)
            tools = await step_toolset.get_tools(run_ctx)
            tool = tools.get(tool_name)
            if tool is None:
                raise ModelRetry(
                    f"Unknown tool name: {tool_name!r}. Available tools:"
                    f" {', '.join(repr(n) for n in tools) or 'none'}"
                )
            tool_ctx = dataclasses.replace(
                run_ctx,
                tool_call_id=call_id,
                tool_name=tool_name,
                retry=_retries_so_far(events, tool_name),
                max_retries=tool.max_retries,
            )
            try:
                if isinstance(args, str):
                    valid = tool.args_validator.validate_json(
                        args or "{}", context=tool_ctx.validation_context
                    )
                else:
                    valid = tool.args_validator.validate_python(
                        args or {}, context=tool_ctx.validation_context
                    )
            except ValidationError as exc:
                errors = exc.errors(include_url=False, include_context=False)
                raise ModelRetry(
                    f"{len(errors)} validation error(s) in the arguments of {tool_name!r}:"
                    f" {pydantic_core.to_json(errors).decode()}. Fix the errors and try again."
                ) from None
            token = _IDEMPOTENCY_KEY.set(key)
            try:
                if tool.args_validator_func is not None:  # the tool's own check, as pydantic-ai
                    checked = tool.args_validator_func(tool_ctx, **valid)
                    if inspect.isawaitable(checked):
                        await checked
                return await step_toolset.call_tool(tool_name, valid, tool_ctx, tool)
            except (CallDeferred, ApprovalRequired) as exc:
                raise RunError(
                    f"tool {tool_name!r} deferred its call ({type(exc).__name__}), which"
                    " DurableAgent does not support"
                ) from None
            finally:
                _IDEMPOTENCY_KEY.reset(token)


def _output_adapter(output_type: Any) -> TypeAdapter[Any] | None:
    """A validator that turns the stored JSON output back into the agent's output type, when
    that type is a plain type (or a list of them); None for output functions and the like."""
    types = list(output_type) if isinstance(output_type, Sequence) else [output_type]
    types = [getattr(t, "output", t) for t in types]  # ToolOutput(T), NativeOutput(T), ...
    flat: list[Any] = []
    for t in types:
        flat.extend(t if isinstance(t, Sequence) and not isinstance(t, str) else [t])
    flat = [t for t in flat if t is not DeferredToolRequests]
    if not flat or any(
        callable(t) and not isinstance(t, type) and typing.get_origin(t) is None for t in flat
    ):
        return None  # an output function: its result is kept as the JSON it was stored as
    try:
        union: Any = flat[0] if len(flat) == 1 else typing.Union[tuple(flat)]  # noqa: UP007
        return TypeAdapter(union)
    except Exception:
        return None


class DurableAgent(Generic[AgentDepsT, OutputT]):
    """An unmodified `pydantic_ai.Agent`, run as a durable agentfsm machine.

    Args:
        agent: the pydantic-ai agent, with its model, tools, instructions and output type.
        store: where runs commit (`storage.open_store(...)`).
        name: the machine's name in the store (default: the agent's name, else "agent").
        version: bump it when the agent changes incompatibly with runs in flight.
        model_policy: retries, backoff and timeout of each model request transition.
        tool_policy: retries, backoff and timeout of each tool call transition. A try cut
            short by a crash counts, so the default (2 retries) lets a call that was running
            when its process died run again.
        max_requests: how many model request transitions one run may make.
        max_tool_calls: how many tool calls one run may make.
        lease_ttl: see `statemachine.Machine`.
    """

    def __init__(
        self,
        agent: PydanticAgent[AgentDepsT, OutputT],
        *,
        store: Store,
        name: str | None = None,
        version: int = 1,
        model_policy: StepPolicy = StepPolicy(retries=3, backoff=1.0),
        tool_policy: StepPolicy = StepPolicy(retries=2),
        max_requests: int = 50,
        max_tool_calls: int = 200,
        lease_ttl: float = 15.0,
    ) -> None:
        if not isinstance(agent, PydanticAgent):
            raise TypeError(f"DurableAgent wraps a pydantic_ai.Agent, not {agent!r}")
        if max_requests < 1 or max_tool_calls < 1:
            raise DefinitionError("max_requests and max_tool_calls must be at least 1")
        self.agent = agent
        self.store = store
        self.name = name or agent.name or "agent"
        self.model_policy = model_policy
        self.tool_policy = tool_policy
        self._output = _output_adapter(agent.output_type)
        self.machine: Agent[DurableMemory] = Agent(
            name=self.name,
            memory=DurableMemory,
            version=version,
            initial=MODEL_STATE,
            final=[DONE_STATE],
            on_error=FAILED_STATE,
            lease_ttl=lease_ttl,
            states=[MODEL_STATE, TOOLS_STATE, DONE_STATE, FAILED_STATE],
            transitions=[
                transition(
                    MODEL_REQUEST,
                    MODEL_STATE,
                    None,
                    ModelRequestStep(durable=self, policy=model_policy.retry_policy(model=True)),
                    routes={OUTPUT_ROUTE: DONE_STATE, TOOL_CALLS_ROUTE: TOOLS_STATE},
                    max_visits=max_requests,
                ),
                transition(
                    TOOL_CALL,
                    TOOLS_STATE,
                    None,
                    ToolCallStep(durable=self, policy=tool_policy.retry_policy(model=False)),
                    routes={"more": TOOLS_STATE, "done": MODEL_STATE},
                    max_visits=max_tool_calls,
                ),
            ],
        )

    def __repr__(self) -> str:
        return f"<DurableAgent {self.name!r} v{self.machine.version}>"

    async def run(
        self,
        user_prompt: str | None = None,
        *,
        run_id: str | None = None,
        deps: AgentDepsT = None,  # type: ignore[assignment]
        message_history: Sequence[ModelMessage] | None = None,
        model: ModelSpec | None = None,
        model_settings: ModelSettings | None = None,
        lease_wait: float = 0.0,
    ) -> DurableRunResult[OutputT]:
        """Run the agent to its output, as `Agent.run` does, committing every model request and
        tool call; with the `run_id` of a run that exists, go on from its last commit (or return
        its result if it is done: no model call, no tool call).

        Without a prompt or history, `run_id` must name a run that exists (else `RunNotFound`).
        `deps`, `model` and `model_settings` are used for this call only (not stored). Raises
        `DurableRunFailed` when the run ends in the failure state (now or before), and
        `RunError` when `run_id` names a run started with another prompt.
        """
        history: list[JsonValue] = (
            ModelMessagesTypeAdapter.dump_python(list(message_history), mode="json")
            if message_history
            else []
        )
        if user_prompt is None and not history:  # go on with a run that exists
            if run_id is None:
                raise ValueError("give a user_prompt (or message_history), or the run_id to resume")
            run = await self.machine.resume(self.store, run_id, lease_wait=lease_wait)
        else:
            memory = DurableMemory(prompt=user_prompt, message_history=history)
            run = await self.machine.start(self.store, memory, run_id=run_id, lease_wait=lease_wait)
            if run.memory.prompt != user_prompt or run.memory.message_history != history:
                raise RunError(
                    f"run {run.run_id!r} exists and was started with another prompt or history"
                )
        with self._using(_CallArgs(deps=deps, model=model, model_settings=model_settings)):
            await run.until_done()
        events = await run.history()
        if run.status != "done":
            error = next((e.error for e in reversed(events) if e.error), None)
            if run.status == "failed":
                raise DurableRunFailed(run.run_id, error)
            raise RunError(f"run {run.run_id!r} is {run.status}, not done")
        return self._result(run.run_id, run.memory, events)

    def run_sync(
        self,
        user_prompt: str | None = None,
        *,
        run_id: str | None = None,
        deps: AgentDepsT = None,  # type: ignore[assignment]
        message_history: Sequence[ModelMessage] | None = None,
        model: ModelSpec | None = None,
        model_settings: ModelSettings | None = None,
    ) -> DurableRunResult[OutputT]:
        """`run`, for code that is not async."""
        return asyncio.run(
            self.run(
                user_prompt,
                run_id=run_id,
                deps=deps,
                message_history=message_history,
                model=model,
                model_settings=model_settings,
            )
        )

    def graph(self) -> Graph:
        """The machine's state graph (`.mermaid()`, `.dot()`, `.svg()`, `.png()`)."""
        return self.machine.graph()

    async def history(self, run_id: str) -> list[Event]:
        """The run's committed events: one per model request transition and per tool call."""
        return await self.store.history(run_id)

    async def report(self, run_id: str) -> str:
        """The run's HTML report (graph, timeline, conversation)."""
        return await render_report(self.machine, self.store, run_id)

    @staticmethod
    @contextmanager
    def _using(args: _CallArgs) -> Iterator[None]:
        token = _CALL_ARGS.set(args)
        try:
            yield
        finally:
            _CALL_ARGS.reset(token)

    def _result(
        self, run_id: str, memory: DurableMemory, events: Sequence[Event]
    ) -> DurableRunResult[OutputT]:
        usage = RunUsage()
        for e in events:
            if e.usage:
                usage.requests += e.usage.get("requests", 0)
                usage.input_tokens += e.usage.get("input_tokens", 0)
                usage.output_tokens += e.usage.get("output_tokens", 0)
            if e.trigger == TOOL_CALL and e.kind == "tool":
                usage.tool_calls += 1
        output: Any = memory.output
        if self._output is not None:
            output = self._output.validate_python(memory.output)
        return DurableRunResult(
            run_id=run_id,
            output=output,
            usage=usage,
            _history=ModelMessagesTypeAdapter.validate_python(memory.message_history),
            _new=ModelMessagesTypeAdapter.validate_python([m for e in events for m in e.messages]),
        )

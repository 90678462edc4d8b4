"""Finding the agent a command names (`MODULE:AGENT`, or a run's registered agent)."""

from __future__ import annotations

import importlib
import os
import sys
import traceback
from importlib.metadata import entry_points
from typing import TYPE_CHECKING, Any

from ._command import UsageProblem

if TYPE_CHECKING:
    import argparse

    from storage import Store

    from .._agent import Agent

__all__ = [
    "known_agent",
    "load_agent",
    "quiet_pydantic_ai",
    "registered_agent",
    "registered_names",
    "stored_agent",
    "with_model",
]

ENTRY_POINTS = "agentfsm.agents"


def load_agent(spec: str, store: Store | None = None) -> Agent[Any]:
    """The agent named by "module.path:attribute": an `agents.Agent`, a `DurableAgent`
    (its machine), or a `pydantic_ai.Agent` (the machine `DurableAgent(agent)` runs it on).
    The module is imported from the installed packages, PYTHONPATH or the working directory."""
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise UsageProblem(
            f"{spec!r} is not MODULE:AGENT (for example agents.examples.data_analyst:analyst)"
        )
    here = os.getcwd()
    if here not in sys.path and "" not in sys.path:  # (as `python -m` does), after the rest
        sys.path.append(here)  # so a file here cannot shadow an installed module
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        raise UsageProblem(
            f"cannot import module {module_name!r}: {exc} (the module is looked for in the"
            " working directory and on PYTHONPATH, besides the installed packages)"
        ) from None
    except Exception as exc:  # the user's module failed while it was imported
        where = ""
        if exc.__traceback__ is not None:
            frame = traceback.extract_tb(exc.__traceback__)[-1]
            where = f" ({frame.filename}:{frame.lineno})"
        raise UsageProblem(
            f"importing module {module_name!r} raised {type(exc).__name__}: {exc}{where}"
        ) from None
    found = getattr(module, attr, None)
    if found is None:
        raise UsageProblem(f"module {module_name!r} has no attribute {attr!r}")
    quiet_pydantic_ai()
    return _as_agent(found, spec, store)


def _as_agent(found: object, spec: str, store: Store | None) -> Agent[Any]:
    from .._agent import Agent

    if isinstance(found, Agent):
        return found
    from pydantic_ai import Agent as PydanticAgent

    from ..durable._agent import DurableAgent

    if isinstance(found, DurableAgent):
        machine: Agent[Any] = found.machine
        return machine
    if isinstance(found, PydanticAgent):
        if store is None:  # only drawn: the wrapper needs a store, and will not touch it
            from storage import open_store

            store = open_store("memory://")
        return DurableAgent(found, store=store).machine
    raise UsageProblem(
        f"{spec} is a {type(found).__name__}, not an agents.Agent, a DurableAgent or a"
        " pydantic_ai.Agent"
    )


def quiet_pydantic_ai() -> None:
    """No pydantic-ai first-run banner in the middle of our output (it is shown on a
    terminal, and says "observability: off" where we print which model runs)."""
    import pydantic_ai

    pydantic_ai.BANNER_ENABLED = False


def registered_agent(name: str, store: Store | None = None) -> Agent[Any] | None:
    """The agent registered under `name` in the "agentfsm.agents" entry points, if any."""
    for ep in entry_points(group=ENTRY_POINTS):
        if ep.name == name:
            return load_agent(ep.value, store)
    return None


def registered_names() -> list[str]:
    """The names of the registered agents (their modules are not imported)."""
    return sorted({ep.name for ep in entry_points(group=ENTRY_POINTS)})


async def stored_agent(store: Store, args: argparse.Namespace) -> Agent[Any]:
    """The agent the stored run `args.run_id` belongs to: `--agent`, else the registered one
    of its name."""
    name, agent = await _agent_of_run(store, args)
    if agent is None:
        known = ", ".join(registered_names()) or "none"
        raise UsageProblem(
            f"run {args.run_id!r} belongs to agent {name!r}, which is not registered here"
            f" (registered: {known}): pass --agent MODULE:AGENT, MODULE being the Python module"
            " that defines the agents.Agent, DurableAgent or pydantic_ai.Agent object (run"
            " from its folder, or put the folder on PYTHONPATH), for example --agent"
            f" my_agents:analyst; or register it once in your package's pyproject.toml:"
            f' [project.entry-points."agentfsm.agents"] {name} = "MODULE:AGENT"'
        )
    return agent


async def known_agent(store: Store, args: argparse.Namespace) -> Agent[Any] | None:
    """`stored_agent`, or None when the run's agent is neither given nor registered."""
    return (await _agent_of_run(store, args))[1]


async def _agent_of_run(store: Store, args: argparse.Namespace) -> tuple[str, Agent[Any] | None]:
    from statemachine import RunNotFound

    record = await store.load(args.run_id)
    if record is None:
        raise RunNotFound(args.run_id)
    if args.agent:
        return record.agent, load_agent(args.agent, store)
    return record.agent, registered_agent(record.agent, store)


def with_model(agent: Agent[Any], model: str | None) -> Agent[Any]:
    """`agent` on `model` (or its own), checked to be usable before anything runs."""
    if model:
        agent = agent.with_model(model)
    try:
        agent.check_models()
    except ValueError as exc:
        extra = next((x for x in _EXTRAS if f"pydantic-ai-slim[{x}]" in str(exc)), None)
        if extra is None:
            raise
        raise UsageProblem(
            f'{exc}; with agentfsm: pip install "agentfsm[{extra}]" (in a clone of agentfsm:'
            f' pip install -e ".[{extra}]")'
        ) from None
    return agent


_EXTRAS = ("anthropic",)
"""Provider SDKs that agentfsm's extras of the same name install."""

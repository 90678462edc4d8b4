"""`Agent`: a durable state machine with a typed memory and model settings for its LLM steps."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import TypeVar

from pydantic import BaseModel

from statemachine import DefinitionError, Machine, Transition
from statemachine._machine import DEFAULT_MAX_MEMORY
from statemachine._migrate import Migration

from ._llm import LlmStep, ModelSpec, check_model

__all__ = ["Agent"]

M = TypeVar("M", bound=BaseModel)


class Agent(Machine[M]):
    """An agent declared as a state table. See `statemachine.Machine` for the arguments.

    Args:
        model: the default pydantic-ai model (a name such as "openai:gpt-4o-mini" or a
            `Model` object) for `llm()` steps that do not name their own.
    """

    def __init__(
        self,
        *,
        name: str,
        memory: type[M],
        initial: str,
        final: str | Sequence[str],
        transitions: Sequence[Transition],
        version: int = 1,
        model: ModelSpec | None = None,
        states: Sequence[str] | None = None,
        on_error: str | None = None,
        lease_ttl: float = 15.0,
        crash_retries: int = 3,
        max_memory: int | None = DEFAULT_MAX_MEMORY,
        migrations: Mapping[int, Migration] | None = None,
        state_renames: Mapping[str, str] | None = None,
        retention: float | None = None,
    ) -> None:
        self._declared = dict(
            name=name,
            memory=memory,
            initial=initial,
            final=final,
            transitions=transitions,
            version=version,
            states=states,
            on_error=on_error,
            lease_ttl=lease_ttl,
            crash_retries=crash_retries,
            max_memory=max_memory,
            migrations=migrations,
            state_renames=state_renames,
            retention=retention,
        )
        super().__init__(
            name=name,
            memory=memory,
            initial=initial,
            final=final,
            transitions=[_bind(t, model) for t in transitions],
            version=version,
            states=states,
            on_error=on_error,
            lease_ttl=lease_ttl,
            crash_retries=crash_retries,
            max_memory=max_memory,
            migrations=migrations,
            state_renames=state_renames,
            retention=retention,
        )
        self.model = model
        fields = memory.model_fields
        for t in self.transitions:
            for field in getattr(t.step, "writes", ()):
                if field not in fields:
                    raise DefinitionError(
                        f"transition {t.describe()} writes into={field!r}, which is not a field of"
                        f" {memory.__name__} (fields: {', '.join(fields)})"
                    )

    def with_model(self, model: ModelSpec) -> Agent[M]:
        """The same agent with another default model (steps that name their own keep it)."""
        return Agent(**{**self._declared, "model": model})  # type: ignore[arg-type]

    def check_models(self) -> None:
        """Raise `ValueError` naming the step and the reason when a step's model cannot be
        used (unknown name, missing API key, provider SDK not installed). Sends no request."""
        for t in self.transitions:
            if isinstance(t.step, LlmStep):
                check_model(t.step.model, f"{self.name}: llm step {t.trigger!r}")


def _bind(t: Transition, model: ModelSpec | None) -> Transition:
    if isinstance(t.step, LlmStep):
        return dataclasses.replace(t, step=t.step.bound(model))
    return t

"""`Agent`: a durable state machine with a typed memory and model settings for its LLM steps."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, TypeVar

from pydantic import BaseModel

from statemachine import DefinitionError, Machine, Transition

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
        model: Any = None,
        states: Sequence[str] | None = None,
        on_error: str | None = None,
        lease_ttl: float = 15.0,
    ) -> None:
        super().__init__(
            name=name, memory=memory, initial=initial, final=final, transitions=transitions,
            version=version, states=states, on_error=on_error, lease_ttl=lease_ttl,
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

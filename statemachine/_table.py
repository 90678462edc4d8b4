"""A row of the state table."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from ._step import Step

__all__ = ["Guard", "Transition", "transition"]

Guard = Callable[[Any], bool]
"""A predicate on memory: the transition may fire only when it returns True."""


@dataclass(frozen=True, kw_only=True, slots=True)
class Transition:
    """One row: from any of `source`, fire `trigger`, run `step`, go to `dest`.

    With `routes`, the step's result names a route and the route names the destination;
    `dest` is then None.
    """

    trigger: str
    source: tuple[str, ...]
    dest: str | None
    step: Step[Any] | None = None
    guard: Guard | None = None
    routes: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    max_visits: int | None = None
    """How often this transition may fire in one run; one more sends the run to failure."""
    on_error: str | None = None
    """Where the run goes when this transition's step gives up (default: the machine's)."""
    timeout: float | None = None
    """For a wait: seconds the run waits for the event before it goes to `on_timeout`."""
    on_timeout: str | None = None

    @property
    def waits(self) -> bool:
        """Fired by an outside event (`Run.send`), not by the runner: its step is a wait."""
        return self.step is not None and self.step.kind == "wait"

    @property
    def dests(self) -> tuple[str, ...]:
        """Every state this transition can lead to."""
        return (self.dest,) if self.dest is not None else tuple(dict.fromkeys(self.routes.values()))

    @property
    def guard_label(self) -> str:
        if self.guard is None:
            return ""
        name = getattr(self.guard, "__name__", "")
        return name if name and name != "<lambda>" else "guard"

    def describe(self) -> str:
        """`'plan' (new -> planned)`, for messages."""
        dest = self.dest if self.dest is not None else "|".join(self.dests)
        return f"{self.trigger!r} ({'|'.join(self.source)} -> {dest})"


def transition(
    trigger: str,
    source: str | Iterable[str],
    dest: str | None = None,
    step: Step[Any] | None = None,
    *,
    guard: Guard | None = None,
    routes: Mapping[str, str] | None = None,
    max_visits: int | None = None,
    on_error: str | None = None,
    timeout: float | None = None,
    on_timeout: str | None = None,
) -> Transition:
    """Declare a transition; `source` is one state name or several."""
    sources = (source,) if isinstance(source, str) else tuple(source)
    return Transition(
        trigger=trigger,
        source=sources,
        dest=dest,
        step=step,
        guard=guard,
        routes=MappingProxyType(dict(routes or {})),
        max_visits=max_visits,
        on_error=on_error,
        timeout=timeout,
        on_timeout=on_timeout,
    )

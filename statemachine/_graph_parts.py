"""The parts of a drawn graph: its states (`Node`) and its ways between them (`Edge`), shared by
the drawing (`_draw`) and the Python layout (`_layout`)."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Edge", "Node"]

_KIND_NAMES = {"llm": "LLM", "move": "move", "tool": "tool", "wait": "wait"}
_TIMES = "\u00d7"  # the multiplication sign, as in "taken 3 times"


@dataclass(frozen=True, kw_only=True, slots=True)
class Node:
    """A state. `kinds` is a subset of ("initial", "final", "failure", "waiting")."""

    name: str
    kinds: tuple[str, ...] = ()
    current: bool = False
    """The run is in this state."""
    visited: bool = False
    """The run has been in this state."""

    @property
    def kind(self) -> str:
        """The kind that decides the node's look: final, failure, waiting, initial or ""."""
        for kind in ("final", "failure", "waiting", "initial"):
            if kind in self.kinds:
                return kind
        return ""

    @property
    def note(self) -> str:
        """The small second line of the node's label: its kinds, and "current"."""
        return " · ".join((*self.kinds, *(("current",) if self.current else ())))


@dataclass(frozen=True, kw_only=True, slots=True)
class Edge:
    """One way out of `source`: a transition's trigger (and route) leading to `dest`."""

    source: str
    dest: str
    trigger: str
    step: str
    """The step kind: "llm", "tool", "wait", "move" (no step), or a custom step's kind."""
    guard: str = ""
    route: str | None = None
    on_error: bool = False
    """The transition's own failure state: where the run goes when the step gives up."""
    timeout: float | None = None
    """Seconds after which a waiting run takes this edge (a wait's timeout)."""
    in_table: bool = True
    """False for an edge drawn only because the run went that way (a failure, say)."""
    taken: int = 0
    """How often the run went this way."""
    failed: int = 0
    """How often the step failed here (error events from `source`)."""

    @property
    def lines(self) -> tuple[str, ...]:
        """The label, line by line: trigger and step kind, guard or route, then the run."""
        out = [f"{self.trigger} · {_KIND_NAMES.get(self.step, self.step)}"]
        if self.guard:
            out.append(f"[{self.guard}]")
        if self.route is not None:
            out.append(f"route: {self.route}")
        if self.on_error:
            out.append("on error")
        if self.timeout is not None:
            out.append(f"timeout {_seconds(self.timeout)}")
        if self.taken:
            out.append(f"{_TIMES}{self.taken}")
        if self.failed:
            out.append(f"✗ failed {_TIMES}{self.failed}")
        return tuple(out)


def _seconds(seconds: float) -> str:
    """A duration for a label: 90 s, 15 min, 2 h, 3 d."""
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)} {unit}"
    return f"{seconds:g} s"

"""Checking a state table at declaration, and compiling it for the runner.

`transitions` does not check state names (a misspelled `dest` fails only when fired, an
unknown `initial` is silently added), so we check the table first, then build the
`transitions.Machine` from it: that machine is the model the diagrams are drawn from, and
the runner uses a lookup compiled from the same rows (firing a `transitions` trigger costs
about as much as a whole Redis commit).
"""

from __future__ import annotations

import difflib
import itertools
import re
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from transitions import Machine as FSM

from ._table import Transition
from .errors import DefinitionError

__all__ = ["Table", "check_machine_name", "compile_table"]

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]*")
MAX_MACHINE_NAME = 100


@dataclass(frozen=True, kw_only=True, slots=True)
class Table:
    """A checked state table."""

    states: tuple[str, ...]
    initial: str
    final: frozenset[str]
    on_error: str | None
    transitions: tuple[Transition, ...]
    out: dict[str, tuple[Transition, ...]]
    """Transitions leaving each state, in table order: the first whose guard passes fires."""
    waiting: frozenset[str]
    """States left only by events (`wait` steps): a run there is parked, status `waiting`."""
    timeouts: dict[str, Transition]
    """Waiting states that time out, and the wait that declares the timeout."""
    fsm: Any
    """The `transitions.Machine` built from the table (no model attached)."""


def _hint(name: str, known: Iterable[str]) -> str:
    close = difflib.get_close_matches(name, list(known), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _check_name(what: str, name: object) -> str:
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise DefinitionError(
            f"{what} {name!r} is not a valid name: use letters, digits, _ . -, starting with a"
            " letter or _"
        )
    return name


def check_machine_name(name: object) -> str:
    """A machine's (agent's) name: a state-like name of at most 100 characters. It becomes
    part of store keys and queue names, so `:`, braces and spaces are refused."""
    _check_name("machine name", name)
    assert isinstance(name, str)
    if len(name) > MAX_MACHINE_NAME:
        raise DefinitionError(
            f"machine name {name[:20]!r}... is {len(name)} characters long: use at most"
            f" {MAX_MACHINE_NAME}"
        )
    return name


def compile_table(
    *,
    machine: str,
    initial: str,
    final: Sequence[str],
    transitions: Sequence[Transition],
    states: Sequence[str] | None = None,
    on_error: str | None = None,
    halts: Sequence[str] = (),
) -> Table:
    """Check the table; raise `DefinitionError` naming the first problem found. `halts` are
    states a step may send the run to by `StepHalted` (reached without a transition)."""
    where = f"machine {machine!r}"
    _check_name("initial state", initial)
    if isinstance(final, str):
        final = [final]
    if not final:
        raise DefinitionError(f"{where}: declare at least one final state (final=[...])")
    for name in final:
        _check_name("final state", name)
    if on_error is not None:
        _check_name("failure state", on_error)
    if not transitions:
        raise DefinitionError(f"{where}: the table has no transitions")

    for t in transitions:
        if not isinstance(t, Transition):
            raise DefinitionError(f"{where}: {t!r} is not a transition (use tool(), llm(), ...)")
        _check_name("trigger", t.trigger)
        if not t.source:
            raise DefinitionError(f"transition {t.trigger!r} has no source state")
        for s in t.source:
            _check_name(f"source state of transition {t.trigger!r}:", s)
        if t.dest is not None and t.routes:
            raise DefinitionError(f"transition {t.trigger!r} has both dest and routes: give one")
        if t.dest is None and not t.routes:
            raise DefinitionError(f"transition {t.trigger!r} has no dest (or routes)")
        if t.routes and t.step is None:
            raise DefinitionError(
                f"transition {t.trigger!r} has routes but no step whose output could pick one"
            )
        for route, dest in t.routes.items():
            if not isinstance(route, str) or not route:
                raise DefinitionError(f"transition {t.trigger!r} has an empty route name")
            _check_name(f"route {route!r} of transition {t.trigger!r} goes to state", dest)
        if t.dest is not None:
            _check_name(f"dest of transition {t.trigger!r}:", t.dest)
        if t.on_error is not None:
            _check_name(f"on_error state of transition {t.trigger!r}:", t.on_error)
        if (t.timeout is None) != (t.on_timeout is None):
            raise DefinitionError(f"transition {t.trigger!r}: timeout= and on_timeout= go together")
        if t.timeout is not None:
            if not t.waits:
                raise DefinitionError(
                    f"transition {t.trigger!r}: only a wait (an outside event) can time out"
                )
            if isinstance(t.timeout, bool) or not isinstance(t.timeout, int | float):
                raise DefinitionError(f"transition {t.trigger!r}: timeout must be seconds")
            if not 0 < t.timeout < float("inf"):
                raise DefinitionError(
                    f"transition {t.trigger!r}: timeout must be positive seconds, not {t.timeout}"
                )
            _check_name(f"on_timeout state of transition {t.trigger!r}:", t.on_timeout)
        if t.max_visits is not None and t.max_visits < 1:
            raise DefinitionError(
                f"transition {t.trigger!r}: max_visits must be at least 1, not {t.max_visits}"
            )

    declared = [initial, *final, *([on_error] if on_error else []), *halts]
    for t in transitions:
        declared += [*t.source, *_leads_to(t)]
    if states is None:
        all_states = tuple(dict.fromkeys(declared))
    else:
        all_states = tuple(dict.fromkeys(_check_name("state", s) for s in states))
        for t in transitions:
            for s in t.source:
                if s not in all_states:
                    raise DefinitionError(
                        f"transition {t.describe()} comes from unknown state {s!r}"
                        + _hint(s, all_states)
                    )
            for d in _leads_to(t):
                if d not in all_states:
                    raise DefinitionError(
                        f"transition {t.describe()} goes to unknown state {d!r}"
                        + _hint(d, all_states)
                    )
        for what, name in [
            ("initial state", initial),
            *(("final state", f) for f in final),
            *([("failure state", on_error)] if on_error else []),
        ]:
            if name not in all_states:
                raise DefinitionError(
                    f"{where}: {what} {name!r} is not a state" + _hint(name, all_states)
                )
    finals = frozenset(final)
    if on_error in finals:
        raise DefinitionError(f"{where}: failure state {on_error!r} is also a final state")

    out: dict[str, list[Transition]] = {s: [] for s in all_states}
    for t in transitions:
        for s in t.source:
            if s in finals:
                raise DefinitionError(
                    f"transition {t.describe()} leaves final state {s!r}:"
                    " a final state ends the run"
                )
            if s == on_error:
                raise DefinitionError(
                    f"transition {t.describe()} leaves the failure state {s!r}: failed runs"
                    " leave it only by retry"
                )
            out[s].append(t)
    for s, rows in out.items():
        waits = [t for t in rows if t.waits]
        if waits and len(waits) != len(rows):
            raise DefinitionError(
                f"state {s!r} mixes events ({', '.join(repr(t.trigger) for t in waits)}) with"
                " steps that run by themselves: put the wait in a state of its own"
            )
        timed = [t.trigger for t in rows if t.timeout is not None]
        if len(timed) > 1:
            raise DefinitionError(
                f"state {s!r} has more than one timeout ({', '.join(map(repr, timed))}): a"
                " waiting state times out once; declare it on one of its waits"
            )
        seen: dict[str, Transition] = {}
        for t in rows:
            earlier = seen.get(t.trigger)
            if earlier is not None and (earlier.guard is None or t.guard is None):
                raise DefinitionError(
                    f"trigger {t.trigger!r} is declared twice from state {s!r} without a guard"
                    " to choose between them"
                )
            seen[t.trigger] = t
        for t, later in itertools.pairwise(rows):
            if t.guard is None and not t.waits:
                raise DefinitionError(
                    f"transition {later.describe()} can never fire: {t.describe()} comes"
                    f" before it from state {s!r} and has no guard"
                )

    terminal = finals | ({on_error} if on_error else set())
    for s in all_states:
        if s not in terminal and not out[s]:
            others = [x for x in all_states if x != s]
            raise DefinitionError(
                f"state {s!r} is a dead end: it is not final and no transition leaves it"
                + _hint(s, others)
            )

    into: dict[str, list[str]] = {s: [] for s in all_states}
    for t in transitions:
        for s in t.source:
            for d in _leads_to(t):
                into[d].append(s)
    can_finish = _reach(list(finals), lambda s: into[s])
    if initial not in can_finish:
        raise DefinitionError(f"{where}: no final state can be reached from {initial!r}")
    reachable = _reach([initial], lambda s: [d for t in out[s] for d in _leads_to(t)])
    for s in all_states:
        if s not in reachable and s != on_error and s not in halts:
            raise DefinitionError(
                f"state {s!r} cannot be reached from the initial state {initial!r}"
            )
    for s in all_states:
        if s in reachable and s not in can_finish and s not in terminal:
            raise DefinitionError(
                f"state {s!r} can never reach a final state: every path from it loops forever"
            )

    try:
        fsm = FSM(
            model=None,
            states=list(all_states),
            transitions=[
                {"trigger": t.trigger, "source": list(t.source), "dest": d}
                for t in transitions
                for d in (*t.dests, *([t.on_timeout] if t.on_timeout else []))
            ],
            initial=initial,
            auto_transitions=False,
            send_event=True,
            queued=False,
        )
    except (ValueError, AttributeError, TypeError) as exc:
        raise DefinitionError(f"{where}: transitions refused the table: {exc}") from exc

    return Table(
        states=all_states,
        initial=initial,
        final=finals,
        on_error=on_error,
        transitions=tuple(transitions),
        out={s: tuple(rows) for s, rows in out.items()},
        waiting=frozenset(s for s, rows in out.items() if rows and rows[0].waits),
        timeouts={s: t for s, rows in out.items() for t in rows if t.timeout is not None},
        fsm=fsm,
    )


def _leads_to(t: Transition) -> tuple[str, ...]:
    """Where firing `t` can take a run: its destinations, its failure and timeout states."""
    return (*t.dests, *(s for s in (t.on_error, t.on_timeout) if s is not None))


def _reach(start: list[str], step: Any) -> set[str]:
    seen = set(start)
    queue = deque(start)
    while queue:
        for nxt in step(queue.popleft()):
            if nxt not in seen:
                seen.add(nxt)
                queue.append(nxt)
    return seen

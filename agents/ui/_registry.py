"""The agents a UI knows: those given with `--agents`, then the registered ones (entry points
"agentfsm.agents"), each loaded the first time a page needs it."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from statemachine import Machine

if TYPE_CHECKING:
    from storage import Store

__all__ = ["Registry"]

log = logging.getLogger(__name__)


class Registry:
    """Agents by name. Unknown names give None: the page shows what it can without the
    agent (the events are enough for everything but the graph and the actions)."""

    def __init__(self, store: Store, given: Iterable[Machine[Any]] = ()) -> None:
        self._store = store
        self._agents: dict[str, Machine[Any] | None] = {a.name: a for a in given}
        self._given = list(self._agents)
        self._names: list[str] | None = None

    @classmethod
    def from_specs(cls, store: Store, specs: Iterable[str]) -> Registry:
        """A registry of the agents named `MODULE:AGENT` (`UsageProblem` for a bad one)."""
        from ..cli._agents import load_agent

        return cls(store, [load_agent(spec, store) for spec in specs if spec])

    def names(self) -> list[str]:
        """The given agents first, then the registered ones (not loaded by this; the entry
        points are read once: reading them costs milliseconds)."""
        if self._names is None:
            from ..cli._agents import registered_names

            self._names = [*self._given, *(n for n in registered_names() if n not in self._given)]
        return self._names

    def get(self, name: str) -> Machine[Any] | None:
        if name not in self._agents:
            self._agents[name] = self._registered(name)
        return self._agents[name]

    def _registered(self, name: str) -> Machine[Any] | None:
        from ..cli._agents import registered_agent

        try:
            return registered_agent(name, self._store)
        except Exception as exc:  # a broken plug-in must not take the pages down
            log.warning("agent %r is registered but cannot be loaded: %s", name, exc)
            return None

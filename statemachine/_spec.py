"""What the runner, drawing, migrations and provenance need of a machine (`MachineSpec`):
the part of `Machine` they read, as a protocol, so that none of them imports `_machine`
(which builds on all of them) and the package has no import circle."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Protocol, TypeVar

from pydantic import BaseModel, JsonValue

from storage import Event, RunRecord, RunStatus, Store
from storage.base import ScopeCharge

from ._table import Transition
from ._validate import Table

__all__ = ["AfterCommit", "ChargeOf", "MachineSpec"]

M = TypeVar("M", bound=BaseModel)

AfterCommit = Callable[[RunRecord, Event, Store], Awaitable[None]]
"""A hook run after each commit of a run (see `Machine.after_commit`)."""
ChargeOf = Callable[[Any, Event, Store], ScopeCharge | None]
"""What a commit also charges to a ledger beside the run (see `Machine.scope_charge`)."""


class MachineSpec(Protocol[M]):
    """A declared machine, as the engine's rooms read it (`statemachine.Machine` is one)."""

    name: str
    version: int
    memory_type: type[M]
    lease_ttl: float
    crash_retries: int
    max_memory: int | None
    retention: float | None
    table: Table
    migrations: dict[int, Callable[[dict[str, Any]], dict[str, Any]]]
    state_renames: dict[str, str]
    after_commit: list[AfterCommit]
    scope_charge: ChargeOf | None

    def status_in(self, state: str) -> RunStatus: ...

    def deadline_in(self, state: str, since: float) -> float | None: ...

    def next_transition(self, state: str, memory: M) -> Transition: ...

    def validate_memory(self, memory: M | Mapping[str, Any], where: str) -> M: ...

    def storable_memory(
        self, memory: M | Mapping[str, Any], where: str
    ) -> dict[str, JsonValue]: ...

    def wait_transition(self, record: RunRecord, memory: M, event: str) -> Transition: ...

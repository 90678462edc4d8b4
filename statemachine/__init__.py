"""Declaring, checking, running and drawing durable state machines.

This is agentfsm's `statemachine` package (not python-statemachine's).
"""

from ._draw import Edge, Graph, Node
from ._machine import Machine
from ._provenance import Provenance, Write
from ._runner import Run
from ._step import RetryPolicy, Step, StepContext, StepResult
from ._table import Transition, transition
from ._watch import WatchItem, watch
from ._worker import Worker
from .errors import (
    DefinitionError,
    InvalidMemory,
    InvalidPayload,
    MemoryTooLarge,
    NotDue,
    NoTransition,
    RendererMissing,
    RunError,
    RunLocked,
    RunNotFound,
    RunTakenOver,
    StepHalted,
    VersionMismatch,
)

__all__ = [
    "DefinitionError",
    "Edge",
    "Graph",
    "InvalidMemory",
    "InvalidPayload",
    "Machine",
    "MemoryTooLarge",
    "NoTransition",
    "Node",
    "NotDue",
    "Provenance",
    "RendererMissing",
    "RetryPolicy",
    "Run",
    "RunError",
    "RunLocked",
    "RunNotFound",
    "RunTakenOver",
    "Step",
    "StepContext",
    "StepHalted",
    "StepResult",
    "Transition",
    "VersionMismatch",
    "WatchItem",
    "Worker",
    "Write",
    "transition",
    "watch",
]

for _name in __all__:
    globals()[_name].__module__ = __name__  # reprs read statemachine.Machine
del _name

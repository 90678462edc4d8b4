"""Declaring, checking, running and drawing durable state machines.

This is agentfsm's `statemachine` package (not python-statemachine's). The less common
names live in two namespaces: `statemachine.errors` (every error) and `statemachine.engine`
(custom step kinds, drawing types, provenance, watching, tracing, the operations on runs).
"""

from ._machine import Machine
from ._runner import Run
from ._step import StepContext
from ._table import transition
from ._worker import Worker
from .errors import DefinitionError, InvalidMemory, RunError, RunLocked, RunNotFound

__all__ = [
    "DefinitionError",
    "InvalidMemory",
    "Machine",
    "Run",
    "RunError",
    "RunLocked",
    "RunNotFound",
    "StepContext",
    "Worker",
    "transition",
]

for _name in __all__:
    globals()[_name].__module__ = __name__  # reprs read statemachine.Machine
del _name

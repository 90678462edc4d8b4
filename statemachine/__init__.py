"""Declaring, checking, running and drawing durable state machines.

This is agentfsm's `statemachine` package (not python-statemachine's).
"""

from ._machine import Machine
from ._runner import Run
from ._step import RetryPolicy, Step, StepContext, StepResult
from ._table import Transition, transition
from .errors import (
    DefinitionError,
    InvalidMemory,
    NoTransition,
    RunError,
    RunLocked,
    RunNotFound,
    RunTakenOver,
    VersionMismatch,
)

__all__ = [
    "DefinitionError",
    "InvalidMemory",
    "Machine",
    "NoTransition",
    "RetryPolicy",
    "Run",
    "RunError",
    "RunLocked",
    "RunNotFound",
    "RunTakenOver",
    "Step",
    "StepContext",
    "StepResult",
    "Transition",
    "VersionMismatch",
    "transition",
]

for _name in __all__:
    _obj = globals()[_name]
    if isinstance(_obj, type) or callable(_obj):
        try:
            _obj.__module__ = __name__
        except (AttributeError, TypeError):
            pass
del _name, _obj

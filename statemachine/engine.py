"""The engine's surface for the layers built on it (`agents`, custom step kinds, tools that
read runs): what is less common than the names in `statemachine`, yet public and kept.

    Step, StepResult, RetryPolicy    a custom step kind (see `statemachine.Step`)
    Transition, Guard                a row of the table, and its guard
    Migration, DEFAULT_MAX_MEMORY    upgrading stored runs; the memory's default limit
    Graph, Node, Edge                a drawn machine (`Machine.graph()`)
    Provenance, Write, why,          which transition wrote a memory field (`Run.why`);
      memory_at                      the state and memory at a past seq
    offset_key                       checks a watch offset (`ValueError`), and orders offsets
    WatchItem, watch, StepLive       a run's progress from any process; what a step streams
    traced, attached, transition_span  tracing steps inside a run's trace
    ACTIONS, Action, Plan, Done,     what people do to runs, as one operation each, with
      Refused, check, operate,       its dry run (`statemachine._operations`)
      hand_off,
      workers_serve
"""

import contextlib

from ._draw import Edge, Graph, Node
from ._live import StepLive
from ._machine import DEFAULT_MAX_MEMORY
from ._migrate import Migration
from ._operations import (
    ACTIONS,
    Action,
    Done,
    Plan,
    Refused,
    check,
    hand_off,
    operate,
    workers_serve,
)
from ._provenance import Provenance, Write, memory_at, why
from ._step import RetryPolicy, Step, StepResult
from ._table import Guard, Transition
from ._tracing import attached, traced, transition_span
from ._watch import WatchItem, offset_key, watch

__all__ = [
    "ACTIONS",
    "DEFAULT_MAX_MEMORY",
    "Action",
    "Done",
    "Edge",
    "Graph",
    "Guard",
    "Migration",
    "Node",
    "Plan",
    "Provenance",
    "Refused",
    "RetryPolicy",
    "Step",
    "StepLive",
    "StepResult",
    "Transition",
    "WatchItem",
    "Write",
    "attached",
    "check",
    "hand_off",
    "memory_at",
    "offset_key",
    "operate",
    "traced",
    "transition_span",
    "watch",
    "why",
    "workers_serve",
]

for _name in __all__:
    _value = globals()[_name]
    if isinstance(_value, type) or callable(_value):
        with contextlib.suppress(AttributeError, TypeError):  # a typing alias keeps its own
            _value.__module__ = __name__  # reprs read statemachine.engine.Transition
del _name, _value

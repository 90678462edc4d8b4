"""Errors of the `agents` layer (those of the engine are in `statemachine.errors`).

RuntimeError
 └── statemachine.RunError
      ├── DurableRunFailed   a DurableAgent run failed: its step's own error, by name
      └── BudgetReached      a DurableAgent run reached its budget and is parked: raise it
                             (`DurableAgent.raise_budget`) and run it again
"""

from .durable._steps import DurableRunFailed
from .spending._budget import BudgetReached

__all__ = ["BudgetReached", "DurableRunFailed"]

for _name in __all__:
    globals()[_name].__module__ = __name__  # reprs read agents.errors.BudgetReached
del _name

"""`DurableAgent`: any pydantic-ai agent made durable on the engine (its journal of model
requests and tool calls, approvals, streaming, tracing), and `AgentfsmDurability`, the same
journal as a capability of the agent itself:
`Agent(..., capabilities=[AgentfsmDurability(store)])`.
"""

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ._capability import AgentfsmDurability

__all__ = ["AgentfsmDurability"]


def __getattr__(name: str) -> Any:
    if name != "AgentfsmDurability":
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    from ._capability import AgentfsmDurability

    AgentfsmDurability.__module__ = __name__
    return AgentfsmDurability

"""`DurableAgent`: any pydantic-ai agent made durable on the engine (its journal of model
requests and tool calls, approvals, streaming, tracing)."""

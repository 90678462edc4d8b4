"""The step kinds of an `Agent`'s table: `llm()` (one model request, its output retries,
its tool loop), `tool()`, `wait()`, `tool_calls()`, and what model requests and tool calls
share (policies, outcomes, keys)."""

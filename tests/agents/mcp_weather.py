"""A stdio MCP server for the parity tests: `python -m tests.agents.mcp_weather`.

Each call of `forecast` (and of `broken`, which always fails, served only when $MCP_BROKEN is
set) appends the city to the file named by $MCP_LOG (so a test can count how often the tool body
ran). The server has instructions (a client includes them only when asked:
`include_instructions=True`).
"""

from __future__ import annotations

import os

from mcp.server import MCPServer

server = MCPServer("weather", instructions="Ask the forecast for one city at a time.")


@server.tool()
def forecast(city: str) -> str:
    """The weather forecast for a city."""
    log = os.environ.get("MCP_LOG")
    if log:
        with open(log, "a") as f:
            f.write(city + "\n")
    return f"sunny in {city}"


def broken(city: str) -> str:
    """A forecast service that is down."""
    log = os.environ.get("MCP_LOG")
    if log:
        with open(log, "a") as f:
            f.write(city + "\n")
    raise ValueError(f"no forecast for {city}")


if os.environ.get("MCP_BROKEN"):
    server.tool()(broken)


if __name__ == "__main__":
    server.run()

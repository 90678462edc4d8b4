"""A stdio MCP server for the parity tests: `python -m tests.agents.mcp_weather`.

Each call of `forecast` appends the city to the file named by $MCP_LOG (so a test can count
how often the tool body ran).
"""

from __future__ import annotations

import os

from mcp.server import MCPServer

server = MCPServer("weather")


@server.tool()
def forecast(city: str) -> str:
    """The weather forecast for a city."""
    log = os.environ.get("MCP_LOG")
    if log:
        with open(log, "a") as f:
            f.write(city + "\n")
    return f"sunny in {city}"


if __name__ == "__main__":
    server.run()

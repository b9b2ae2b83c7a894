"""A small MCP server for the adapter's tests (in memory, or over stdio when run)."""

from __future__ import annotations

import os

from mcp.server.mcpserver import MCPServer

server = MCPServer("files")
CALLS: list[str] = []


@server.tool()
def add(a: int, b: int) -> int:
    """Add two numbers."""
    CALLS.append(f"add {a} {b}")
    return a + b


@server.tool()
def delete_file(path: str) -> str:
    """Delete a file."""
    CALLS.append(f"delete {path}")
    log = os.environ.get("MCP_CALL_LOG")
    if log:
        with open(log, "a") as f:
            f.write(f"delete {path}\n")
    return f"deleted {path}"


if __name__ == "__main__":
    server.run()

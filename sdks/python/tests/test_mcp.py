"""MCP: a session to a server from the official ``mcp`` package, under a real ``aasm up``."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import mcp.types as types
import pytest
from mcp import Client, ClientSession, StdioServerParameters, stdio_client

from agent_assembly import ToolDenied, init_assembly
from agent_assembly.adapters.mcp import govern_session
from conftest import AWS_KEY, Aasm
from mcp_server import CALLS, server


async def test_denied_mcp_calls_never_reach_the_server(
    aasm: Aasm, sdk_dirs: dict[str, Any]
) -> None:
    CALLS.clear()
    with init_assembly("mcp-agent", **sdk_dirs) as assembly:
        async with Client(server) as client:
            govern_session(assembly, client.session)
            result = await client.call_tool("add", {"a": 2, "b": 3})
            assert result.structured_content == {"result": 5}
            with pytest.raises(ToolDenied) as denied:
                await client.call_tool("delete_file", {"path": "/workspace/a"})
            assert denied.value.rule == "tools.delete_file.allow"
            # A raw request goes through the same guard.
            raw = types.CallToolRequest(
                params=types.CallToolRequestParams(name="delete_file", arguments={"path": "/x"})
            )
            with pytest.raises(ToolDenied):
                await client.session.send_request(raw, types.CallToolResult)
            await client.call_tool("add", {"a": 1, "b": 1, "note": AWS_KEY})
    assert CALLS == ["add 2 3", "add 1 1"]
    events = aasm.wait_for_events(lambda es: sum(e["kind"] == "tool_end" for e in es) >= 2)
    assert AWS_KEY not in aasm.run("audit", "export")
    ends = [e for e in events if e["kind"] == "tool_end"]
    assert ends[0]["detail"]["result"]["structured_content"] == {"result": 5}


async def test_a_stdio_session_is_governed(
    aasm: Aasm, sdk_dirs: dict[str, Any], tmp_path: Path
) -> None:
    log = tmp_path / "calls.log"
    params = StdioServerParameters(
        command=sys.executable,
        args=[str(Path(__file__).parent / "mcp_server.py")],
        env={"MCP_CALL_LOG": str(log)},
    )
    with init_assembly("mcp-agent", **sdk_dirs) as assembly:
        async with stdio_client(params) as (read, write), ClientSession(read, write) as session:
            await session.initialize()
            assert govern_session(assembly, session) is govern_session(assembly, session)
            with pytest.raises(ToolDenied):
                await session.call_tool("delete_file", {"path": "/workspace/a"})
            assert (await session.call_tool("add", {"a": 1, "b": 2})).structured_content == {
                "result": 3
            }
    assert not log.exists()  # the server never saw the denied call

"""MCP: every tool call a client session sends is checked first.

``govern_session(assembly, session)`` guards one ``mcp.ClientSession`` (for ``mcp.Client``,
its ``.session`` once entered) in place and returns it. The guard sits on the session's
``send_request``, which ``call_tool`` and every higher-level helper go through, so a raw
``tools/call`` request is checked too. A denied call raises ``ToolDenied`` under ``enforce``
and never reaches the server; an allowed one is reported after with its result.
"""

from __future__ import annotations

import time
from typing import Any

from mcp import ClientSession, types

from ..assembly import Assembly

_GUARDED = "_agent_assembly_guarded"


def govern_session(assembly: Assembly, session: ClientSession) -> ClientSession:
    """Guards ``session`` (once; a second call changes nothing) and returns it."""
    if getattr(session, _GUARDED, False):
        return session
    send_request = session.send_request

    async def governed_send_request(
        request: Any, result_type: Any, *args: Any, **kwargs: Any
    ) -> Any:
        if not isinstance(request, types.CallToolRequest):
            return await send_request(request, result_type, *args, **kwargs)
        name = request.params.name
        arguments = dict(request.params.arguments or {})
        await assembly.acheck_tool_start(name, arguments)
        started = time.perf_counter()
        try:
            result = await send_request(request, result_type, *args, **kwargs)
        except BaseException as error:
            await assembly._areport_tool_end(name, arguments, started, error=error)
            raise
        await assembly._areport_tool_end(name, arguments, started, result=result)
        return result

    # An instance attribute: it also covers the session an ``mcp.Client`` holds.
    session.send_request = governed_send_request  # type: ignore[method-assign]
    setattr(session, _GUARDED, True)
    return session

"""OpenAI Agents SDK: a denied function tool does not run, and each model request is checked.

- ``govern_tool(assembly, tool)`` / ``govern_tools``: a copy of a ``FunctionTool`` with a tool
  input guardrail that asks ``check_tool_start`` before the tool runs, and the result or error
  reported after. On a denial the run raises ``ToolInputGuardrailTripwireTriggered`` (its
  ``output.output_info`` is the ``Decision``); with ``on_deny="tell_model"`` the model gets the
  reason as the tool's output instead and the run goes on.
- ``GovernedModel(assembly, model, name)``: wraps a ``Model`` so each request is checked with
  ``check_llm_call`` first (a deny raises ``LlmCallDenied``) and its usage recorded, a streamed
  one's from its completed event. The answer is paid for by then: a usage the runtime does not
  take is logged, and the answer returned.
- ``govern_agent(assembly, agent)``: both, applied to a copy of an ``Agent``.

Only function tools pass through guardrails; an agent's hosted tools (web search, code
interpreter, ...) run at the provider and cannot be checked here, so ``govern_agent`` refuses
them under ``enforce``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import time
from collections.abc import AsyncIterator, Iterable
from typing import Any, Literal

from agents import (
    Agent,
    FunctionTool,
    ToolGuardrailFunctionOutput,
    ToolInputGuardrailData,
    tool_input_guardrail,
)
from agents.items import ModelResponse, TResponseStreamEvent
from agents.models.interface import Model
from agents.tool_context import ToolContext

from ..assembly import Assembly
from ..errors import AssemblyError, ToolDenied

OnDeny = Literal["raise", "tell_model"]


def _arguments(arguments: str) -> dict[str, Any]:
    """The model's JSON arguments; what does not parse is checked as it came."""
    try:
        parsed = json.loads(arguments or "{}")
    except ValueError:
        return {"unparsed": arguments}
    return parsed if isinstance(parsed, dict) else {"value": parsed}


def govern_tool(
    assembly: Assembly, tool: FunctionTool, *, on_deny: OnDeny = "raise"
) -> FunctionTool:
    """A governed copy of ``tool``; the original is left as it was."""

    @tool_input_guardrail(name="agent_assembly")
    async def agent_assembly(data: ToolInputGuardrailData) -> ToolGuardrailFunctionOutput:
        context = data.context
        try:
            decision = await assembly.acheck_tool_start(
                context.tool_name, _arguments(context.tool_arguments)
            )
        except ToolDenied as denied:
            if on_deny == "tell_model":
                return ToolGuardrailFunctionOutput.reject_content(
                    str(denied), output_info=denied.decision
                )
            return ToolGuardrailFunctionOutput.raise_exception(output_info=denied.decision)
        return ToolGuardrailFunctionOutput.allow(output_info=decision)

    invoke = tool.on_invoke_tool

    async def on_invoke_tool(context: ToolContext[Any], arguments: str) -> Any:
        started = time.perf_counter()
        args = _arguments(arguments)
        try:
            result = await invoke(context, arguments)
        except BaseException as error:
            await assembly._areport_tool_end(tool.name, args, started, error=error)
            raise
        await assembly._areport_tool_end(tool.name, args, started, result=result)
        return result

    return dataclasses.replace(
        tool,
        on_invoke_tool=on_invoke_tool,
        tool_input_guardrails=[agent_assembly, *(tool.tool_input_guardrails or [])],
    )


def govern_tools(
    assembly: Assembly, tools: Iterable[FunctionTool], *, on_deny: OnDeny = "raise"
) -> list[FunctionTool]:
    """``govern_tool`` for each tool."""
    return [govern_tool(assembly, t, on_deny=on_deny) for t in tools]


def _estimate_tokens(system_instructions: str | None, items: Any) -> int:
    # About four characters a token: enough for a budget's reservation before the request.
    return (len(system_instructions or "") + len(str(items))) // 4


# The events that end a response stream, each holding the response (and its usage).
_FINAL_EVENTS = frozenset({"response.completed", "response.incomplete", "response.failed"})


class GovernedModel(Model):
    """``model``, with every request checked as a call of ``name`` and its usage recorded."""

    def __init__(self, assembly: Assembly, model: Model, name: str) -> None:
        self.assembly = assembly
        self.model = model
        self.name = name

    async def _check(self, system_instructions: str | None, items: Any) -> None:
        await self.assembly.acheck_llm_call(self.name, _estimate_tokens(system_instructions, items))

    async def get_response(
        self, system_instructions: str | None, input: Any, *args: Any, **kwargs: Any
    ) -> ModelResponse:
        await self._check(system_instructions, input)
        response = await self.model.get_response(system_instructions, input, *args, **kwargs)
        usage = response.usage
        await self._record(usage.input_tokens, usage.output_tokens)
        return response

    async def stream_response(
        self, system_instructions: str | None, input: Any, *args: Any, **kwargs: Any
    ) -> AsyncIterator[TResponseStreamEvent]:
        await self._check(system_instructions, input)
        async for event in self.model.stream_response(system_instructions, input, *args, **kwargs):
            # A stream's last event carries the response and its usage, paid for however it
            # ended; recorded before the event is handed on, as the run may close the stream at
            # it, and nothing after its yield would then run.
            if getattr(event, "type", None) in _FINAL_EVENTS:
                usage = getattr(getattr(event, "response", None), "usage", None)
                if usage is not None:
                    await self._record(usage.input_tokens, usage.output_tokens)
            yield event

    async def _record(self, input_tokens: int, output_tokens: int) -> None:
        await asyncio.to_thread(
            self.assembly._report_paid_usage, self.name, input_tokens, output_tokens
        )


def govern_agent(assembly: Assembly, agent: Agent[Any], *, on_deny: OnDeny = "raise") -> Agent[Any]:
    """A copy of ``agent`` whose function tools are governed, and whose model is when it is a
    ``Model`` object (a model given by name is resolved by the run; wrap it with
    ``GovernedModel`` to have its requests checked); so are the agents it hands off to, and
    theirs. Under ``enforce``, an agent with MCP servers (whose tools join at run time,
    unchecked) or a handoff that is not an ``Agent`` is refused."""
    return _govern(assembly, agent, on_deny, {})


def _govern(
    assembly: Assembly, agent: Agent[Any], on_deny: OnDeny, governed: dict[int, Agent[Any]]
) -> Agent[Any]:
    # Agents that hand off to each other are each governed once; `governed` holds the copies.
    if id(agent) in governed:
        return governed[id(agent)]
    if agent.mcp_servers and assembly.mode == "enforce":
        raise AssemblyError(
            f"agent {agent.name!r} has MCP servers, whose tools join the run unchecked; "
            "govern their sessions with agent_assembly.adapters.mcp.govern_session and pass "
            "their tools as function tools, or run in observe mode"
        )
    tools: list[Any] = []
    for tool in agent.tools:
        if isinstance(tool, FunctionTool):
            tools.append(govern_tool(assembly, tool, on_deny=on_deny))
        elif assembly.mode == "enforce":
            raise AssemblyError(
                f"tool {getattr(tool, 'name', tool)!r} of agent {agent.name!r} is not a function "
                "tool, so its calls cannot be checked; remove it or run in observe mode"
            )
        else:
            tools.append(tool)
    model = agent.model
    if isinstance(model, Model) and not isinstance(model, GovernedModel):
        name = getattr(model, "model", None)
        # An unnamed model is checked as "unknown", which a model allow-list denies.
        model = GovernedModel(assembly, model, name if isinstance(name, str) else "unknown")
    copy = agent.clone(tools=tools, model=model)
    governed[id(agent)] = copy
    handoffs: list[Any] = []
    for handoff in agent.handoffs:
        if isinstance(handoff, Agent):
            handoffs.append(_govern(assembly, handoff, on_deny, governed))
        elif assembly.mode == "enforce":
            raise AssemblyError(
                f"handoff {getattr(handoff, 'agent_name', handoff)!r} of agent {agent.name!r} "
                "is not an Agent, so the agent it hands to cannot be governed; hand off to an "
                "Agent, or run in observe mode"
            )
        else:
            handoffs.append(handoff)
    copy.handoffs = handoffs
    return copy

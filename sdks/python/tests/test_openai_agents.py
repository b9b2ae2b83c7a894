"""OpenAI Agents SDK: real ``Runner`` runs with a scripted model, under a real ``aasm up``."""

from __future__ import annotations

import json
from typing import Any

import pytest
from agents import (
    Agent,
    Runner,
    ToolInputGuardrailTripwireTriggered,
    function_tool,
    set_tracing_disabled,
)
from agents.items import ModelResponse
from agents.models.interface import Model
from agents.usage import Usage
from openai.types.responses import (
    ResponseFunctionToolCall,
    ResponseOutputMessage,
    ResponseOutputText,
)

from agent_assembly import AssemblyError, LlmCallDenied, init_assembly
from agent_assembly.adapters.openai_agents import GovernedModel, govern_agent
from conftest import Aasm

set_tracing_disabled(True)
RAN: list[str] = []


class ScriptedModel(Model):
    """Asks for one tool call, then answers with the tool's output."""

    def __init__(self, tool: str, args: dict[str, Any]) -> None:
        self.tool, self.args, self.inputs = tool, args, []
        self.model = "gpt-4o-mini"

    async def get_response(self, system_instructions: Any, input: Any, *args: Any, **kwargs: Any):
        self.inputs.append(input)
        usage = Usage(requests=1, input_tokens=100, output_tokens=20, total_tokens=120)
        if len(self.inputs) == 1:
            call = ResponseFunctionToolCall(
                type="function_call",
                id="fc_1",
                call_id="call_1",
                name=self.tool,
                arguments=json.dumps(self.args),
                status="completed",
            )
            return ModelResponse(output=[call], usage=usage, response_id=None)
        said = input[-1]["output"] if isinstance(input, list) else ""
        text = ResponseOutputText(type="output_text", text=f"tool said: {said}", annotations=[])
        message = ResponseOutputMessage(
            type="message", id="m1", role="assistant", status="completed", content=[text]
        )
        return ModelResponse(output=[message], usage=usage, response_id=None)

    def stream_response(self, *args: Any, **kwargs: Any) -> Any:
        # The Model interface requires it; these tests run Runner.run_sync, which never
        # streams, so reaching this is a test failure, not a path under test.
        raise NotImplementedError("ScriptedModel does not stream")


@function_tool
def read_file(path: str) -> str:
    """Read a file."""
    RAN.append(f"read {path}")
    return f"contents of {path}"


@function_tool
async def delete_file(path: str) -> str:
    """Delete a file."""
    RAN.append(f"delete {path}")
    return "deleted"


def agent(tool: str, args: dict[str, Any]) -> Agent[Any]:
    return Agent(name="oa", model=ScriptedModel(tool, args), tools=[read_file, delete_file])


def test_allowed_tools_run_and_are_reported(aasm: Aasm, sdk_dirs: dict[str, Any]) -> None:
    RAN.clear()
    with init_assembly("oa-agent", framework="openai-agents", **sdk_dirs) as assembly:
        governed = govern_agent(assembly, agent("read_file", {"path": "/workspace/a"}))
        result = Runner.run_sync(governed, "read it")
    assert result.final_output == "tool said: contents of /workspace/a"
    assert RAN == ["read /workspace/a"]
    # The second model request comes after the tool: wait for its usage too, not only the first.
    events = aasm.wait_for_events(
        lambda es: (
            any(e["kind"] == "tool_end" for e in es)
            and sum(e["kind"] == "llm_usage" for e in es) >= 2
        )
    )
    end = next(e for e in events if e["kind"] == "tool_end")
    assert end["detail"]["result"] == "contents of /workspace/a"
    usage = [e for e in events if e["kind"] == "llm_usage"]
    assert len(usage) == 2  # two model requests, each recorded
    assert usage[0]["detail"]["input_tokens"] == 100


@pytest.mark.parametrize("tool", ["delete_file", "read_file"])
def test_a_denied_tool_stops_the_run(aasm: Aasm, sdk_dirs: dict[str, Any], tool: str) -> None:
    RAN.clear()
    path = "/workspace/a" if tool == "delete_file" else "/etc/shadow"
    with init_assembly("oa-agent", **sdk_dirs) as assembly:
        governed = govern_agent(assembly, agent(tool, {"path": path}))
        with pytest.raises(ToolInputGuardrailTripwireTriggered) as tripped:
            Runner.run_sync(governed, "go")
    assert RAN == []
    decision = tripped.value.output.output_info
    assert decision.decision == "deny"
    assert decision.rule.startswith(f"tools.{tool}.")


def test_a_denial_can_be_told_to_the_model(aasm: Aasm, sdk_dirs: dict[str, Any]) -> None:
    RAN.clear()
    with init_assembly("oa-agent", **sdk_dirs) as assembly:
        governed = govern_agent(
            assembly, agent("delete_file", {"path": "/workspace/a"}), on_deny="tell_model"
        )
        result = Runner.run_sync(governed, "go")
    assert RAN == []
    assert "tools.delete_file.allow" in result.final_output


def test_a_model_outside_the_allow_list_is_not_called(aasm: Aasm, sdk_dirs: dict[str, Any]) -> None:
    model = ScriptedModel("read_file", {"path": "/workspace/a"})
    with init_assembly("oa-agent", **sdk_dirs) as assembly:
        governed = Agent(name="oa", model=GovernedModel(assembly, model, "o1-preview"))
        with pytest.raises(LlmCallDenied):
            Runner.run_sync(governed, "go")
    assert model.inputs == []


def test_agents_handed_off_to_are_governed_and_mcp_servers_refused(
    aasm: Aasm, sdk_dirs: dict[str, Any]
) -> None:
    with init_assembly("oa-agent", **sdk_dirs) as assembly:
        helper = agent("read_file", {"path": "/workspace/a"})
        lead = Agent(name="lead", tools=[read_file], handoffs=[helper])
        helper.handoffs = [lead]  # a cycle is governed once
        governed = govern_agent(assembly, lead)
        (governed_helper,) = governed.handoffs
        assert isinstance(governed_helper, Agent) and governed_helper is not helper
        assert governed_helper.handoffs == [governed]
        assert isinstance(governed_helper.model, GovernedModel)
        assert all(t is not read_file for t in governed_helper.tools)
        with pytest.raises(AssemblyError, match="MCP servers"):
            govern_agent(assembly, Agent(name="mcp", mcp_servers=[object()]))  # type: ignore[list-item]

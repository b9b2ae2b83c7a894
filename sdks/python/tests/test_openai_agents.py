"""OpenAI Agents SDK: real ``Runner`` runs with a scripted model, under a real ``aasm up``."""

from __future__ import annotations

import asyncio
import json
from typing import Any, Callable

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
    Response,
    ResponseCompletedEvent,
    ResponseFunctionToolCall,
    ResponseIncompleteEvent,
    ResponseOutputMessage,
    ResponseOutputText,
    ResponseUsage,
)
from openai.types.responses.response_usage import InputTokensDetails, OutputTokensDetails

from agent_assembly import AssemblyError, LlmCallDenied, init_assembly
from agent_assembly.adapters.openai_agents import GovernedModel, govern_agent
from conftest import Aasm

set_tracing_disabled(True)
RAN: list[str] = []


def last_event(answer: ModelResponse, model: str, *, incomplete: bool = False) -> Any:
    """``answer`` as a stream ends: one event holding the response and its usage, completed
    or (cut off by a token limit, billed all the same) incomplete."""
    usage = ResponseUsage(
        input_tokens=answer.usage.input_tokens,
        output_tokens=answer.usage.output_tokens,
        total_tokens=answer.usage.total_tokens,
        input_tokens_details=InputTokensDetails(cached_tokens=0, cache_write_tokens=0),
        output_tokens_details=OutputTokensDetails(reasoning_tokens=0),
    )
    response = Response(
        id="r1",
        created_at=0,
        model=model,
        object="response",
        output=answer.output,
        parallel_tool_calls=False,
        tool_choice="auto",
        tools=[],
        usage=usage,
    )
    if incomplete:
        return ResponseIncompleteEvent(
            type="response.incomplete", sequence_number=0, response=response
        )
    return ResponseCompletedEvent(type="response.completed", sequence_number=0, response=response)


class ScriptedModel(Model):
    """Asks for one tool call, then answers with the tool's output."""

    def __init__(self, tool: str, args: dict[str, Any]) -> None:
        self.tool, self.args, self.inputs = tool, args, []
        self.model = "gpt-4o-mini"
        self.stream_ends_incomplete = False

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

    async def stream_response(
        self, system_instructions: Any, input: Any, *args: Any, **kwargs: Any
    ) -> Any:
        answer = await self.get_response(system_instructions, input)
        yield last_event(answer, self.model, incomplete=self.stream_ends_incomplete)


class AnsweringModel(Model):
    """Answers at once, calling ``during`` while it does (the runtime may go away then)."""

    def __init__(self, during: Callable[[], None]) -> None:
        self.during = during

    async def get_response(self, *args: Any, **kwargs: Any) -> ModelResponse:
        self.during()
        text = ResponseOutputText(type="output_text", text="paid for", annotations=[])
        message = ResponseOutputMessage(
            type="message", id="m1", role="assistant", status="completed", content=[text]
        )
        usage = Usage(requests=1, input_tokens=10, output_tokens=2, total_tokens=12)
        return ModelResponse(output=[message], usage=usage, response_id=None)

    async def stream_response(self, *args: Any, **kwargs: Any) -> Any:
        yield last_event(await self.get_response(), "gpt-4o-mini")


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


def test_streamed_requests_are_checked_and_their_usage_recorded(
    aasm: Aasm, sdk_dirs: dict[str, Any]
) -> None:
    RAN.clear()

    async def run(governed: Agent[Any]) -> Any:
        streamed = Runner.run_streamed(governed, "read it")
        async for _ in streamed.stream_events():
            pass
        return streamed.final_output

    with init_assembly("oa-agent", framework="openai-agents", **sdk_dirs) as assembly:
        governed = govern_agent(assembly, agent("read_file", {"path": "/workspace/a"}))
        assert asyncio.run(run(governed)) == "tool said: contents of /workspace/a"
    assert RAN == ["read /workspace/a"]
    events = aasm.wait_for_events(lambda es: sum(e["kind"] == "llm_usage" for e in es) >= 2)
    usage = [e for e in events if e["kind"] == "llm_usage"]
    assert [(u["detail"]["input_tokens"], u["detail"]["output_tokens"]) for u in usage] == [
        (100, 20),
        (100, 20),
    ]


def test_a_streamed_response_cut_off_has_its_usage_recorded(
    aasm: Aasm, sdk_dirs: dict[str, Any]
) -> None:
    model = ScriptedModel("read_file", {"path": "/workspace/a"})
    model.stream_ends_incomplete = True

    async def run(governed: Agent[Any]) -> None:
        streamed = Runner.run_streamed(governed, "read it")
        async for _ in streamed.stream_events():
            pass

    with init_assembly("oa-agent", **sdk_dirs) as assembly:
        governed = Agent(name="oa", model=GovernedModel(assembly, model, "gpt-4o-mini"))
        with pytest.raises(Exception, match="incomplete"):
            asyncio.run(run(governed))
    events = aasm.wait_for_events(lambda es: any(e["kind"] == "llm_usage" for e in es))
    usage = [e["detail"] for e in events if e["kind"] == "llm_usage"]
    assert [(u["input_tokens"], u["output_tokens"]) for u in usage] == [(100, 20)]


def test_a_paid_answer_is_returned_when_its_usage_cannot_be_recorded(
    aasm: Aasm, sdk_dirs: dict[str, Any], caplog: pytest.LogCaptureFixture
) -> None:
    with init_assembly("oa-agent", timeout=1.0, **sdk_dirs) as assembly:
        model = GovernedModel(assembly, AnsweringModel(during=aasm.stop), "gpt-4o-mini")
        result = Runner.run_sync(Agent(name="oa", model=model), "go")
    assert result.final_output == "paid for"
    assert "the usage of a call of model 'gpt-4o-mini' (agent 'oa-agent') was not recorded" in (
        caplog.text
    )


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

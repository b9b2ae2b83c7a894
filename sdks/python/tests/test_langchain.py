"""LangChain: a real tool-calling agent loop (langchain-core's fake chat model) under a real
``aasm up``."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from langchain_core.language_models.fake_chat_models import GenericFakeChatModel
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, ToolMessage
from langchain_core.tools import BaseTool, tool

from agent_assembly import LlmCallDenied, init_assembly
from agent_assembly.adapters.langchain import (
    AssemblyCallbackHandler,
    LangChainToolDenied,
    govern_tools,
)
from conftest import Aasm

RAN: list[str] = []


@tool
def read_file(path: str) -> str:
    """Read a file."""
    RAN.append(f"read {path}")
    return f"contents of {path}"


@tool
async def delete_file(path: str) -> str:
    """Delete a file."""
    RAN.append(f"delete {path}")
    return "deleted"


class ToolCallingFake(GenericFakeChatModel):
    """The fake chat model, able to take tools as a real one does."""

    model_name: str = "gpt-4o-mini"

    def bind_tools(self, tools: Any, **kwargs: Any) -> ToolCallingFake:
        return self


def script() -> ToolCallingFake:
    calls = [
        {"name": "read_file", "args": {"path": "/workspace/a"}, "id": "1", "type": "tool_call"},
        {"name": "delete_file", "args": {"path": "/workspace/a"}, "id": "2", "type": "tool_call"},
        {"name": "read_file", "args": {"path": "/etc/passwd"}, "id": "3", "type": "tool_call"},
    ]
    return ToolCallingFake(messages=iter([AIMessage("", tool_calls=calls), AIMessage("done")]))


async def agent_loop(tools: list[BaseTool], model: Any, asynchronous: bool) -> list[BaseMessage]:
    by_name = {t.name: t for t in tools}
    messages: list[BaseMessage] = [HumanMessage("tidy up")]
    while True:
        reply = await model.ainvoke(messages) if asynchronous else model.invoke(messages)
        messages.append(reply)
        if not reply.tool_calls:
            return messages
        for call in reply.tool_calls:
            t = by_name[call["name"]]
            messages.append(await t.ainvoke(call) if asynchronous else t.invoke(call))


@pytest.mark.parametrize("asynchronous", [False, True])
def test_a_denied_langchain_tool_does_not_run(
    aasm: Aasm, sdk_dirs: dict[str, Any], asynchronous: bool
) -> None:
    RAN.clear()
    with init_assembly("lc-agent", framework="langchain", **sdk_dirs) as assembly:
        tools = govern_tools(assembly, [read_file, delete_file])
        handler = AssemblyCallbackHandler(assembly)
        model = script().bind_tools(tools).with_config(callbacks=[handler])
        messages = asyncio.run(agent_loop(tools, model, asynchronous))

    assert RAN == ["read /workspace/a"]  # neither denied body ran
    results = [m for m in messages if isinstance(m, ToolMessage)]
    assert [r.status for r in results] == ["success", "error", "error"]
    assert results[0].content == "contents of /workspace/a"
    assert "tools.delete_file.allow" in str(results[1].content)
    assert "tools.read_file.deny_if" in str(results[2].content)
    assert messages[-1].content == "done"
    # The originals are untouched.
    assert read_file.invoke({"path": "/etc/hosts"}) == "contents of /etc/hosts"

    events = aasm.wait_for_events(
        lambda es: (
            sum(e["kind"] == "decision" for e in es) >= 5
            and any(e["kind"] == "tool_end" for e in es)
        )
    )
    decisions = [
        (e["action"].get("tool") or e["action"].get("model"), e["verdict"]["decision"])
        for e in events
        if e["kind"] == "decision"
    ]
    assert decisions.count(("gpt-4o-mini", "allow")) == 2  # one check per model call
    assert ("delete_file", "deny") in decisions
    assert ("read_file", "deny") in decisions


def test_a_denial_can_be_raised_instead(aasm: Aasm, sdk_dirs: dict[str, Any]) -> None:
    RAN.clear()
    with init_assembly("lc-agent", **sdk_dirs) as assembly:
        (governed,) = govern_tools(assembly, [delete_file], handle_denial=False)
        with pytest.raises(LangChainToolDenied) as denied:
            asyncio.run(governed.ainvoke({"path": "/workspace/a"}))
    assert denied.value.rule == "tools.delete_file.allow"
    assert RAN == []


NESTED: list[BaseTool] = []


@tool("read_file")
async def read_two_files(path: str) -> str:
    """Read a file, and another through a governed tool."""
    RAN.append(f"read {path}")
    return NESTED[0].invoke({"path": "/etc/passwd"})


def test_a_tool_called_inside_another_tools_async_call_is_checked(
    aasm: Aasm, sdk_dirs: dict[str, Any]
) -> None:
    RAN.clear()
    with init_assembly("lc-agent", **sdk_dirs) as assembly:
        (outer,) = govern_tools(assembly, [read_two_files], handle_denial=False)
        NESTED[:] = govern_tools(assembly, [read_file], handle_denial=False)
        with pytest.raises(LangChainToolDenied) as denied:
            asyncio.run(outer.ainvoke({"path": "/workspace/a"}))
    assert denied.value.rule == "tools.read_file.deny_if"
    assert RAN == ["read /workspace/a"]  # the nested body did not run


def test_a_model_the_policy_does_not_list_is_not_called(
    aasm: Aasm, sdk_dirs: dict[str, Any]
) -> None:
    with init_assembly("lc-agent", **sdk_dirs) as assembly:
        model = ToolCallingFake(model_name="o1-preview", messages=iter([AIMessage("hi")]))
        with pytest.raises(LlmCallDenied):
            model.invoke("hello", config={"callbacks": [AssemblyCallbackHandler(assembly)]})


def test_a_paid_answer_is_returned_when_its_usage_cannot_be_recorded(
    aasm: Aasm, sdk_dirs: dict[str, Any], caplog: pytest.LogCaptureFixture
) -> None:
    def answers() -> Any:
        aasm.stop()  # the runtime goes away while the model answers
        usage = {"input_tokens": 10, "output_tokens": 2, "total_tokens": 12}
        yield AIMessage("paid for", usage_metadata=usage)

    with init_assembly("lc-agent", timeout=1.0, **sdk_dirs) as assembly:
        model = ToolCallingFake(messages=answers())
        reply = model.invoke("hello", config={"callbacks": [AssemblyCallbackHandler(assembly)]})
    assert reply.content == "paid for"
    assert "the usage of a call of model 'gpt-4o-mini' (agent 'lc-agent') was not recorded" in (
        caplog.text
    )

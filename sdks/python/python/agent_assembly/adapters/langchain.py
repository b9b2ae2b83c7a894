"""LangChain: a denied tool does not run, and each chat model call is checked first.

- ``govern_tool(assembly, tool)`` / ``govern_tools``: a copy of a ``BaseTool`` (``@tool``
  functions, ``StructuredTool``, custom tools; sync and async) whose body runs only after
  ``check_tool_start`` allows it, with the validated arguments; the result or error is
  reported after. A denial is a ``LangChainToolDenied``: by default the agent loop gets it as
  an error ``ToolMessage`` (the model is told and goes on); ``handle_denial=False`` raises it.
- ``AssemblyCallbackHandler(assembly)``: pass it in ``callbacks`` of a chat model or chain; it
  checks each model call with ``check_llm_call`` (a deny raises ``LlmCallDenied`` before the
  request) and records the reported token usage.
"""

from __future__ import annotations

import contextvars
import functools
import time
from collections.abc import Iterable, Mapping
from typing import Any, Callable, TypeVar
from uuid import UUID

from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.messages import BaseMessage
from langchain_core.outputs import LLMResult
from langchain_core.tools import BaseTool, ToolException

from ..assembly import Assembly
from ..errors import ToolDenied

T = TypeVar("T", bound=BaseTool)

# What LangChain passes to ``_run`` besides the tool's own arguments.
_NOT_ARGUMENTS = frozenset({"config", "run_manager", "callbacks"})
# The governed tool whose async call is running, so that its own sync ``_run``, which
# LangChain's default ``_arun`` reaches, is not checked twice. Only that tool's: any other
# tool its body calls is checked as usual.
_inside_call: contextvars.ContextVar[BaseTool | None] = contextvars.ContextVar(
    "agent_assembly_langchain_inside_call", default=None
)


class LangChainToolDenied(ToolDenied, ToolException):
    """A ``ToolDenied`` that LangChain's tool-error handling can turn into a message."""


def _arguments(args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> dict[str, Any]:
    found = {k: v for k, v in kwargs.items() if k not in _NOT_ARGUMENTS}
    if args:  # a single-input tool gets its input positionally
        found["input"] = args[0] if len(args) == 1 else list(args)
    return found


def _denial_handler(original: Any) -> Callable[[ToolException], Any]:
    """Answers denials with their reason, and every other tool error as ``original`` (the
    tool's ``handle_tool_error``) did."""

    def handle(error: ToolException) -> Any:
        if isinstance(error, LangChainToolDenied):
            return str(error)
        if not original:
            raise error
        if isinstance(original, str):
            return original
        if callable(original):
            return original(error)
        return str(error.args[0]) if error.args else "Tool execution error"

    return handle


def _relabel(denied: ToolDenied) -> LangChainToolDenied:
    return LangChainToolDenied(denied.tool_name, denied.decision)


def govern_tool(assembly: Assembly, tool: T, *, handle_denial: bool = True) -> T:
    """A governed copy of ``tool``; the original is left as it was."""
    base = type(tool)
    run, arun = base._run, base._arun

    @functools.wraps(run)  # LangChain reads _run's signature to decide what to pass
    def _run(self: BaseTool, *args: Any, **kwargs: Any) -> Any:
        if _inside_call.get() is self:
            # Checked by its own async call; a call its body makes is checked again.
            token = _inside_call.set(None)
            try:
                return run(self, *args, **kwargs)
            finally:
                _inside_call.reset(token)
        call_args = _arguments(args, kwargs)
        try:
            assembly.check_tool_start(self.name, call_args)
        except ToolDenied as denied:
            raise _relabel(denied) from None
        started = time.perf_counter()
        try:
            result = run(self, *args, **kwargs)
        except BaseException as error:
            assembly.report_tool_end(
                self.name, call_args, duration_s=time.perf_counter() - started, error=error
            )
            raise
        assembly.report_tool_end(
            self.name, call_args, duration_s=time.perf_counter() - started, result=result
        )
        return result

    @functools.wraps(arun)
    async def _arun(self: BaseTool, *args: Any, **kwargs: Any) -> Any:
        call_args = _arguments(args, kwargs)
        try:
            await assembly.acheck_tool_start(self.name, call_args)
        except ToolDenied as denied:
            raise _relabel(denied) from None
        started = time.perf_counter()
        token = _inside_call.set(self)
        try:
            result = await arun(self, *args, **kwargs)
        except BaseException as error:
            await assembly._areport_tool_end(self.name, call_args, started, error=error)
            raise
        finally:
            _inside_call.reset(token)
        await assembly._areport_tool_end(self.name, call_args, started, result=result)
        return result

    governed_class = type(
        f"Governed{base.__name__}",
        (base,),
        {"_run": _run, "_arun": _arun, "__module__": base.__module__},
    )
    update: dict[str, Any] = {}
    if handle_denial:
        update["handle_tool_error"] = _denial_handler(tool.handle_tool_error)
    governed: T = tool.model_copy(update=update)
    # model_copy keeps private state that rebuilding the tool from its fields would lose.
    governed.__class__ = governed_class
    return governed


def govern_tools(assembly: Assembly, tools: Iterable[T], *, handle_denial: bool = True) -> list[T]:
    """``govern_tool`` for each tool."""
    return [govern_tool(assembly, t, handle_denial=handle_denial) for t in tools]


def _estimate_tokens(messages: list[list[BaseMessage]]) -> int:
    # About four characters a token: enough for a budget's reservation before the call.
    return sum(len(str(m.content)) for batch in messages for m in batch) // 4


class AssemblyCallbackHandler(BaseCallbackHandler):
    """Checks every chat model call before it is sent and records its usage after."""

    raise_error = True  # a deny must stop the call, not be logged by LangChain

    def __init__(self, assembly: Assembly) -> None:
        self.assembly = assembly
        self._models: dict[UUID, str] = {}

    def on_chat_model_start(
        self,
        serialized: dict[str, Any],
        messages: list[list[BaseMessage]],
        *,
        run_id: UUID,
        metadata: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        params = kwargs.get("invocation_params") or {}
        model = str(
            (metadata or {}).get("ls_model_name")
            or params.get("model")
            or params.get("model_name")
            or serialized.get("name")
            or "unknown"
        )
        self.assembly.check_llm_call(model, _estimate_tokens(messages))
        self._models[run_id] = model

    def on_llm_end(self, response: LLMResult, *, run_id: UUID, **kwargs: Any) -> None:
        model = self._models.pop(run_id, None)
        if model is None:
            return
        for generations in response.generations:
            for generation in generations:
                usage = getattr(getattr(generation, "message", None), "usage_metadata", None)
                if usage:
                    self.assembly._report_paid_usage(
                        model, usage.get("input_tokens", 0), usage.get("output_tokens", 0)
                    )

    def on_llm_error(self, error: BaseException, *, run_id: UUID, **kwargs: Any) -> None:
        self._models.pop(run_id, None)

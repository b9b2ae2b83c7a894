"""``init_assembly`` and ``Assembly``: one registered agent on one native client.

Everything that talks to the runtime goes through the native client (``aa-sdk-client``); this
module only shapes Python calls into actions and events and applies the mode:

- ``enforce`` fails closed: registration failure raises, a deny (or a pending action whose
  approval does not come in time) raises ``PolicyDenied``, an unreachable runtime denies.
- ``observe`` and ``disabled`` fail open: a registration failure is logged (and retried now
  and then), checks proceed, nothing raises for a decision. ``disabled`` makes no check call.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import logging
import threading
import time
import uuid
import warnings
from collections.abc import Mapping
from types import ModuleType, TracebackType
from typing import TYPE_CHECKING, Any, Callable, TypeVar, overload

from .decision import MODES, Decision, DecisionName, Mode
from .errors import (
    LlmCallDenied,
    NativeExtensionMissing,
    RegistrationError,
    ReportError,
    ToolDenied,
)

if TYPE_CHECKING:
    import os
    import sys

    from . import _native

    if sys.version_info >= (3, 10):
        from typing import ParamSpec
    else:
        from typing_extensions import ParamSpec

    P = ParamSpec("P")

R = TypeVar("R")
F = TypeVar("F", bound=Callable[..., Any])

_log = logging.getLogger("agent_assembly")

# How often a fail-open assembly tries again to register after a failure.
_REGISTER_RETRY_S = 5.0
# A tool result whose JSON is longer than this is reported by type and size only.
_RESULT_LIMIT = 64 * 1024

_missing_warned = False


def _native_module() -> ModuleType:
    """The compiled client; raises ImportError when the wheel lacks it."""
    from . import _native  # noqa: PLC0415 - loaded on first use, so a missing one is handled

    return _native


def _native_missing(error: ImportError, mode: Mode) -> None:
    """Under ``enforce`` a missing extension raises; otherwise it warns once."""
    fix = (
        "the native extension agent_assembly._native could not be loaded "
        f"({error}); install a wheel built for this platform (pip install agent-assembly) "
        "or build one from a checkout (pip install ./sdks/python)"
    )
    if mode == "enforce":
        raise NativeExtensionMissing(fix) from error
    global _missing_warned  # noqa: PLW0603 - one warning per process is the point
    if not _missing_warned:
        _missing_warned = True
        warnings.warn(f"{fix}; running ungoverned ({mode})", RuntimeWarning, stacklevel=3)
        _log.warning("%s; running ungoverned (%s)", fix, mode)


def _jsonable(value: object) -> object:
    """What the native client sends for an object JSON cannot hold: a pydantic model's
    ``model_dump``, else its ``repr`` — never nothing."""
    dump = getattr(value, "model_dump", None)  # pydantic models, as frameworks pass them
    if callable(dump):
        try:
            return dump(mode="json")
        except Exception:
            pass
    return repr(value)


class Assembly:
    """A governed agent. Made by ``init_assembly`` (or ``spawn_child``); thread-safe."""

    def __init__(
        self,
        *,
        agent_id: str,
        mode: Mode,
        client: _native.Client | None,
        agent: _native.Agent | None,
        registration: dict[str, str | None],
        approval_timeout: float,
        owns_client: bool,
    ) -> None:
        self.agent_id = agent_id
        self.mode: Mode = mode
        self.session_id = uuid.uuid4().hex
        self._client = client
        self._agent = agent
        self._registration = registration
        self._approval_timeout = approval_timeout
        self._owns_client = owns_client
        self._lock = threading.Lock()
        self._next_register = time.monotonic() + _REGISTER_RETRY_S
        self._closed = False

    # -- identity ---------------------------------------------------------------------------

    @property
    def governed(self) -> bool:
        """Whether this assembly is registered with a runtime (it may not be, fail-open)."""
        return self._current_agent() is not None

    @property
    def depth(self) -> int | None:
        """The delegation depth the gateway recorded (0 for a root), once registered."""
        agent = self._agent
        return None if agent is None else agent.depth

    @property
    def team_id(self) -> str | None:
        agent = self._agent
        return self._registration.get("team_id") if agent is None else agent.team_id

    @property
    def parent_agent_id(self) -> str | None:
        return self._registration.get("parent_agent_id")

    def _current_agent(self) -> _native.Agent | None:
        """The registration; fail-open assemblies try again to register now and then."""
        agent = self._agent
        if agent is not None or self._client is None or self._closed:
            return agent
        with self._lock:
            if self._agent is None and time.monotonic() >= self._next_register:
                self._next_register = time.monotonic() + _REGISTER_RETRY_S
                try:
                    self._agent = self._client.register(self.agent_id, **self._registration)
                    _log.info("agent %r registered after an earlier failure", self.agent_id)
                except Exception as error:
                    _log.debug("agent %r still not registered: %s", self.agent_id, error)
            return self._agent

    # -- checks -----------------------------------------------------------------------------

    def _local(self, reason: str) -> Decision:
        decision: DecisionName = "deny" if self.mode == "enforce" else "allow"
        return Decision.local(decision, self.mode, reason)

    def _decide(self, action: dict[str, object]) -> Decision:
        if self.mode == "disabled":
            return Decision.local("allow", self.mode, "checks are disabled")
        agent = self._current_agent()
        if agent is None or self._client is None:
            return self._local(f"agent {self.agent_id!r} is not registered with a runtime")
        try:
            outcome = self._client.check(agent, action, self.session_id)
            if outcome.decision == "pending" and self.mode == "enforce":
                outcome = self._client.await_approval(agent, outcome, self._approval_timeout)
            return Decision.from_native(outcome)
        except ValueError:
            raise
        except Exception as error:
            return self._local(f"the runtime did not decide: {error}")

    def check_tool_start(self, tool_name: str, args: Mapping[str, Any] | None = None) -> Decision:
        """Asks whether the tool may run with ``args``. Under ``enforce`` anything but allow
        raises ``ToolDenied`` (a pending action first waits for its approval)."""
        plain_args = args if type(args) is dict else dict(args or {})
        decision = self._decide({"type": "tool_call", "tool": tool_name, "args": plain_args})
        if self.mode == "enforce" and not decision.allowed:
            raise ToolDenied(tool_name, decision)
        return decision

    def check_llm_call(self, model: str, input_tokens: int | None = None) -> Decision:
        """Asks whether a call to ``model`` may be made; raises ``LlmCallDenied`` under
        ``enforce`` when not allowed."""
        action: dict[str, object] = {"type": "llm_call", "model": model}
        if input_tokens is not None:
            action["token_estimate"] = int(input_tokens)
        decision = self._decide(action)
        if self.mode == "enforce" and not decision.allowed:
            raise LlmCallDenied(model, decision)
        return decision

    async def acheck_tool_start(
        self, tool_name: str, args: Mapping[str, Any] | None = None
    ) -> Decision:
        """``check_tool_start`` without blocking the event loop."""
        return await asyncio.to_thread(self.check_tool_start, tool_name, args)

    async def acheck_llm_call(self, model: str, input_tokens: int | None = None) -> Decision:
        """``check_llm_call`` without blocking the event loop."""
        return await asyncio.to_thread(self.check_llm_call, model, input_tokens)

    # -- events -----------------------------------------------------------------------------

    def _report(
        self,
        events: list[dict[str, object]],
        edges: list[dict[str, object]] | None = None,
        *,
        raise_errors: bool,
    ) -> int:
        """Sends events; returns how many the runtime recorded as new. A failure raises
        ``ReportError`` when ``raise_errors`` and the mode is ``enforce``; else it is logged."""
        for event in events:
            event.setdefault("session_id", self.session_id)
        agent = self._current_agent()
        try:
            if agent is None or self._client is None:
                raise ReportError(f"agent {self.agent_id!r} is not registered with a runtime")
            return self._client.report(agent, events, edges)
        except ValueError:
            raise
        except Exception as error:
            message = f"{len(events)} event(s) of agent {self.agent_id!r} not recorded: {error}"
            if raise_errors and self.mode == "enforce":
                raise ReportError(message) from error
            _log.error("%s", message)
            return 0

    def _result_detail(self, result: object) -> object:
        """The result as it will be sent, or a summary when it is large."""
        if self._client is None:
            return None  # nothing is sent; the report is logged as lost
        size = len(self._client.dumps(result))
        if size > _RESULT_LIMIT:
            return {"type": type(result).__name__, "json_bytes": size, "truncated": True}
        return result

    def report_tool_end(
        self,
        tool_name: str,
        args: Mapping[str, Any],
        *,
        duration_s: float,
        result: object = None,
        error: BaseException | None = None,
    ) -> None:
        """Records how a tool call ended: its result (or, when ``error`` is given, the error)
        and duration. The tool has run by now, so a report the runtime does not take is
        logged, never raised over the tool's own outcome."""
        try:
            detail: dict[str, object] = {"duration_ms": round(duration_s * 1000, 3)}
            if error is None:
                kind = "tool_end"
                detail["result"] = self._result_detail(result)
            else:
                kind = "error"
                detail["error"] = type(error).__name__
                detail["message"] = str(error)
            action = {"type": "tool_call", "tool": tool_name, "args": dict(args)}
            self._report([{"kind": kind, "action": action, "detail": detail}], raise_errors=False)
        except Exception as failure:
            # A result or arguments that cannot be sent (nested too deep, too large) lose
            # their report, not the tool's outcome.
            _log.error(
                "the end of tool %r (agent %r) was not recorded: %s: %s",
                tool_name,
                self.agent_id,
                type(failure).__name__,
                failure,
            )

    def report_llm_usage(
        self,
        model: str,
        input_tokens: int,
        output_tokens: int,
        cost_usd: float | None = None,
    ) -> None:
        """Records what a model call used."""
        detail: dict[str, object] = {
            "input_tokens": int(input_tokens),
            "output_tokens": int(output_tokens),
        }
        if cost_usd is not None:
            detail["cost_usd"] = float(cost_usd)
        action = {"type": "llm_call", "model": model, "token_estimate": int(input_tokens)}
        self._report([{"kind": "llm_usage", "action": action, "detail": detail}], raise_errors=True)

    def _report_paid_usage(self, model: str, input_tokens: int, output_tokens: int) -> None:
        """``report_llm_usage`` for a call an adapter made already: the answer is paid for
        and goes back to the caller whatever happens here, so a report the runtime does not
        take is logged, never raised over it."""
        try:
            self.report_llm_usage(model, input_tokens, output_tokens)
        except Exception as failure:
            _log.error(
                "the usage of a call of model %r (agent %r) was not recorded: %s: %s",
                model,
                self.agent_id,
                type(failure).__name__,
                failure,
            )

    def report_edge(
        self,
        target_agent_id: str,
        edge_type: str,
        metadata: Mapping[str, Any] | None = None,
    ) -> None:
        """Records an edge from this agent to another: ``spawned``, ``delegated`` (or
        ``delegates_to``), ``called`` (``calls``) or ``messaged`` (``messages``)."""
        edge: dict[str, object] = {"to_agent_id": target_agent_id, "kind": edge_type}
        if metadata is not None:
            edge["metadata"] = dict(metadata)
        self._report([], [edge], raise_errors=True)

    # -- tools ------------------------------------------------------------------------------

    def wrap_tool(self, fn: Callable[P, R], name: str | None = None) -> Callable[P, R]:
        """``fn`` governed: checked before each call (a deny raises ``ToolDenied`` under
        ``enforce`` and the body does not run), its result or error and duration reported
        after. Works for plain and ``async`` functions."""
        tool_name = name or getattr(fn, "__name__", None) or repr(fn)
        signature = inspect.signature(fn)

        def arguments(args: tuple[Any, ...], kwargs: dict[str, Any]) -> dict[str, Any]:
            try:
                return dict(signature.bind_partial(*args, **kwargs).arguments)
            except TypeError:  # the call itself will raise the same error
                return {"args": list(args), **kwargs}

        if inspect.iscoroutinefunction(fn):

            @functools.wraps(fn)
            async def governed_async(*args: Any, **kwargs: Any) -> Any:
                call_args = arguments(args, kwargs)
                await self.acheck_tool_start(tool_name, call_args)
                started = time.perf_counter()
                try:
                    result = await fn(*args, **kwargs)
                except BaseException as error:
                    await self._areport_tool_end(tool_name, call_args, started, error=error)
                    raise
                await self._areport_tool_end(tool_name, call_args, started, result=result)
                return result

            return governed_async  # type: ignore[return-value]

        @functools.wraps(fn)
        def governed(*args: P.args, **kwargs: P.kwargs) -> R:
            call_args = arguments(args, kwargs)
            self.check_tool_start(tool_name, call_args)
            started = time.perf_counter()
            try:
                result = fn(*args, **kwargs)
            except BaseException as error:
                self.report_tool_end(
                    tool_name, call_args, duration_s=time.perf_counter() - started, error=error
                )
                raise
            self.report_tool_end(
                tool_name, call_args, duration_s=time.perf_counter() - started, result=result
            )
            return result

        return governed

    async def _areport_tool_end(
        self,
        tool_name: str,
        args: Mapping[str, Any],
        started: float,
        *,
        result: object = None,
        error: BaseException | None = None,
    ) -> None:
        """``report_tool_end`` from a coroutine, timed from ``started`` (``perf_counter``)."""
        duration = time.perf_counter() - started
        await asyncio.to_thread(
            functools.partial(
                self.report_tool_end,
                tool_name,
                args,
                duration_s=duration,
                result=result,
                error=error,
            )
        )

    @overload
    def tool(self, fn: F, *, name: str | None = None) -> F: ...

    @overload
    def tool(self, fn: None = None, *, name: str | None = None) -> Callable[[F], F]: ...

    def tool(self, fn: F | None = None, *, name: str | None = None) -> F | Callable[[F], F]:
        """Decorator form of ``wrap_tool``: ``@assembly.tool`` or ``@assembly.tool(name=...)``."""

        def decorate(f: F) -> F:
            wrapped: F = self.wrap_tool(f, name)  # type: ignore[assignment]
            return wrapped

        return decorate if fn is None else decorate(fn)

    # -- lineage and lifecycle --------------------------------------------------------------

    def grant_child(self, agent_id: str, ttl: float = 600.0) -> str:
        """A grant for a child ``agent_id`` of this agent started on another host, valid for
        ``ttl`` seconds: pass it to the child's ``init_assembly(..., parent_agent_id=...,
        spawn_grant=...)`` or in its ``AASM_SPAWN_GRANT``. Anyone holding it can register that
        child until it expires: hand it over as a secret. Raises ``RuntimeError`` when this
        assembly has no client."""
        if self._client is None:
            raise RuntimeError(f"agent {self.agent_id!r} has no client to sign a grant with")
        return self._client.grant_spawn(self.agent_id, agent_id, ttl)

    def spawn_child(
        self,
        agent_id: str,
        delegation_reason: str | None = None,
        spawned_by_tool: str | None = None,
    ) -> Assembly:
        """A child agent on the same client, registered with this one as its parent (the
        gateway records depth + 1 and the parent's team). The spawn is also an audit edge."""
        registration: dict[str, str | None] = {
            **self._registration,
            "name": None,
            "spawn_grant": None,
            "parent_agent_id": self.agent_id,
            "delegation_reason": delegation_reason,
            "spawned_by_tool": spawned_by_tool,
        }
        child = _register(
            agent_id,
            mode=self.mode,
            client=self._client,
            registration=registration,
            approval_timeout=self._approval_timeout,
            owns_client=False,
        )
        if child.governed:
            edge: dict[str, object] = {"to_agent_id": agent_id, "kind": "spawned"}
            if spawned_by_tool:
                edge["tool"] = spawned_by_tool
            if delegation_reason:
                edge["metadata"] = {"delegation_reason": delegation_reason}
            self._report([], [edge], raise_errors=False)
        return child

    def shutdown(self) -> None:
        """Ends the registration; the assembly that made the client also closes it. Events
        are on the runtime's disk as soon as each report returns, so nothing is left to
        flush. Idempotent."""
        if self._closed:
            return
        self._closed = True
        client, agent = self._client, self._agent
        if client is None:
            return
        if agent is not None and not client.closed:
            try:
                client.deregister(agent, "shutdown")
            except Exception as error:
                _log.debug("deregistering %r: %s", self.agent_id, error)
        if self._owns_client:
            client.close()

    def __enter__(self) -> Assembly:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.shutdown()

    def __repr__(self) -> str:
        return f"Assembly(agent_id={self.agent_id!r}, mode={self.mode!r}, governed={self.governed})"


def _register(
    agent_id: str,
    *,
    mode: Mode,
    client: _native.Client | None,
    registration: dict[str, str | None],
    approval_timeout: float,
    owns_client: bool,
) -> Assembly:
    agent: _native.Agent | None = None
    if client is not None:
        try:
            agent = client.register(agent_id, **registration)
        except ValueError:
            raise
        except Exception as error:
            if mode == "enforce":
                if owns_client:
                    client.close()
                raise RegistrationError(
                    f"cannot register agent {agent_id!r} with the runtime at "
                    f"{client.socket_path}: {error}"
                ) from error
            _log.warning(
                "agent %r not registered (%s); running ungoverned (%s) and retrying",
                agent_id,
                error,
                mode,
            )
    return Assembly(
        agent_id=agent_id,
        mode=mode,
        client=client,
        agent=agent,
        registration=registration,
        approval_timeout=approval_timeout,
        owns_client=owns_client,
    )


def init_assembly(
    agent_id: str,
    *,
    team_id: str | None = None,
    parent_agent_id: str | None = None,
    delegation_reason: str | None = None,
    spawned_by_tool: str | None = None,
    spawn_grant: str | None = None,
    name: str | None = None,
    framework: str | None = None,
    mode: Mode = "enforce",
    socket_path: str | os.PathLike[str] | None = None,
    state_dir: str | os.PathLike[str] | None = None,
    timeout: float = 5.0,
    approval_timeout: float = 300.0,
) -> Assembly:
    """Connects one native client to the runtime, registers ``agent_id`` on it and returns
    the ``Assembly`` every check uses.

    ``socket_path`` defaults to ``AASM_SOCKET``, then ``.aasm/runtime.sock``; ``state_dir``
    (where the agent's key is kept) to ``AASM_STATE_DIR``, then ``.aasm``. ``timeout`` bounds
    each call to the runtime; ``approval_timeout`` how long a pending action waits for its
    approval before it is denied. Under ``enforce`` a failure to register raises
    ``RegistrationError``; in the other modes it is logged and the agent runs ungoverned.

    A child started where its parent's key is not (another host or state directory) passes
    ``parent_agent_id`` and the ``spawn_grant`` its parent made with ``grant_child`` (else
    ``AASM_SPAWN_GRANT`` is read): the gateway takes a child only with its parent's consent.
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {', '.join(MODES)}, not {mode!r}")
    if not (approval_timeout > 0):
        raise ValueError(
            f"approval_timeout must be a positive number of seconds, not {approval_timeout!r}"
        )
    try:
        native = _native_module()
    except ImportError as error:
        _native_missing(error, mode)
        native = None
    registration: dict[str, str | None] = {
        "name": name,
        "framework": framework or "python",
        "team_id": team_id,
        "parent_agent_id": parent_agent_id,
        "delegation_reason": delegation_reason,
        "spawned_by_tool": spawned_by_tool,
        "spawn_grant": spawn_grant,
    }
    client: _native.Client | None = None
    if native is not None:
        client = native.Client(
            socket_path=socket_path,
            state_dir=state_dir,
            mode=mode,
            timeout=timeout,
            json_default=_jsonable,
        )
    return _register(
        agent_id,
        mode=mode,
        client=client,
        registration=registration,
        approval_timeout=approval_timeout,
        owns_client=True,
    )

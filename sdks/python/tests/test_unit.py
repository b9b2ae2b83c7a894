"""The Python layer alone, over a fake native core that records every call: each mode against
each outcome, registration failures and a missing extension. No runtime is involved."""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass, field
from typing import Any

import pytest

import agent_assembly
from agent_assembly import (
    NativeExtensionMissing,
    RegistrationError,
    ReportError,
    ToolDenied,
    init_assembly,
)
from agent_assembly import (
    assembly as assembly_module,
)


class NativeError(Exception):
    pass


@dataclass
class Outcome:
    decision: str
    rule: str = "tools.x"
    reason: str = "because"
    policy: str = "p@1"
    mode: str = "enforce"
    approval_id: str | None = None
    resolved_locally: bool = False


@dataclass
class Agent:
    agent_id: str
    team_id: str | None = None
    parent_agent_id: str | None = None
    depth: int = 0


@dataclass
class FakeCore:
    """Stands in for ``agent_assembly._native``; ``answer`` is what checks return (an
    Outcome, or an exception to raise)."""

    answer: Any = field(default_factory=lambda: Outcome("allow"))
    register_error: Exception | None = None
    report_error: Exception | None = None
    calls: list[tuple[str, Any]] = field(default_factory=list)
    NativeError: type = NativeError

    def Client(self, **config: Any) -> FakeClient:
        self.calls.append(("client", config))
        return FakeClient(self)


class FakeClient:
    def __init__(self, core: FakeCore) -> None:
        self.core = core
        self.socket_path = "/fake.sock"
        self.closed = False

    def register(self, agent_id: str, **lineage: Any) -> Agent:
        self.core.calls.append(("register", (agent_id, lineage)))
        if self.core.register_error:
            raise self.core.register_error
        depth = 1 if lineage.get("parent_agent_id") else 0
        return Agent(agent_id, lineage.get("team_id"), lineage.get("parent_agent_id"), depth)

    def check(self, agent: Agent, action: Any, session_id: str | None = None) -> Outcome:
        self.core.calls.append(("check", action))
        if isinstance(self.core.answer, Exception):
            raise self.core.answer
        return self.core.answer

    def await_approval(self, agent: Agent, outcome: Outcome, timeout: float) -> Outcome:
        self.core.calls.append(("await_approval", timeout))
        return Outcome("deny", outcome.rule, "no approval within 1 s")

    def report(self, agent: Agent, events: Any = None, edges: Any = None) -> int:
        self.core.calls.append(("report", (events or [], edges or [])))
        if self.core.report_error:
            raise self.core.report_error
        return len(events or [])

    def dumps(self, value: object) -> str:
        return json.dumps(value, default=repr)

    def deregister(self, agent: Agent, reason: str = "") -> None:
        self.core.calls.append(("deregister", agent.agent_id))

    def close(self) -> None:
        self.core.calls.append(("close", None))
        self.closed = True


@pytest.fixture
def core(monkeypatch: pytest.MonkeyPatch) -> FakeCore:
    fake = FakeCore()
    monkeypatch.setattr(assembly_module, "_native_module", lambda: fake)
    return fake


def names(core: FakeCore) -> list[str]:
    return [name for name, _ in core.calls]


OUTCOMES = ["allow", "deny", "pending", "failure"]


@pytest.mark.parametrize("mode", ["enforce", "observe", "disabled"])
@pytest.mark.parametrize("outcome", OUTCOMES)
def test_every_mode_against_every_outcome(core: FakeCore, mode: str, outcome: str) -> None:
    core.answer = NativeError("socket closed") if outcome == "failure" else Outcome(outcome)
    ran: list[int] = []
    assembly = init_assembly("bot", mode=mode)  # type: ignore[arg-type]

    @assembly.tool
    def tool(x: int) -> int:
        ran.append(x)
        return x * 2

    blocked = mode == "enforce" and outcome != "allow"
    if blocked:
        with pytest.raises(ToolDenied) as denied:
            tool(3)
        assert ran == []
        expected_rule = "client" if outcome == "failure" else "tools.x"
        assert denied.value.rule == expected_rule
    else:
        assert tool(3) == 6
        assert ran == [3]

    checks = [args for name, args in core.calls if name == "check"]
    if mode == "disabled":
        assert checks == []  # disabled makes no call
    else:
        assert checks == [{"type": "tool_call", "tool": "tool", "args": {"x": 3}}]
    # Only enforce waits for an approval; observe returns the pending decision as it is.
    assert ("await_approval" in names(core)) == (mode == "enforce" and outcome == "pending")
    reports = [args for name, args in core.calls if name == "report"]
    assert len(reports) == (0 if blocked else 1)
    if not blocked:
        event = reports[0][0][0]
        assert (event["kind"], event["detail"]["result"]) == ("tool_end", 6)

    direct = None if blocked else assembly.check_tool_start("tool", {"x": 1})
    if direct is not None and mode == "observe" and outcome != "failure":
        assert direct.decision == outcome  # observe tells the truth without raising
    if direct is not None and outcome == "failure":
        assert direct.resolved_locally and direct.rule == "client"


def test_a_tool_error_is_reported_and_raised(core: FakeCore) -> None:
    assembly = init_assembly("bot")

    @assembly.tool
    def broken() -> None:
        raise KeyError("missing")

    with pytest.raises(KeyError):
        broken()
    ((events, _),) = [args for name, args in core.calls if name == "report"]
    assert events[0]["kind"] == "error"
    assert events[0]["detail"]["error"] == "KeyError"


def test_registration_failure(core: FakeCore) -> None:
    core.register_error = NativeError("cannot connect")
    with pytest.raises(RegistrationError, match="cannot connect"):
        init_assembly("bot")
    assert names(core)[-1] == "close"
    for mode in ("observe", "disabled"):
        assembly = init_assembly("bot", mode=mode)  # type: ignore[arg-type]
        assert not assembly.governed
        assert assembly.check_tool_start("anything").allowed
    # A bad argument is a bug in the caller, whatever the mode.
    core.register_error = ValueError("invalid argument agent_id")
    with pytest.raises(ValueError):
        init_assembly("bad id", mode="observe")


def test_an_unregistered_agent_registers_later(
    core: FakeCore, monkeypatch: pytest.MonkeyPatch
) -> None:
    core.register_error = NativeError("cannot connect")
    assembly = init_assembly("bot", mode="observe")
    core.register_error = None
    monkeypatch.setattr(assembly_module, "_REGISTER_RETRY_S", 0.0)
    assembly._next_register = 0.0
    assert assembly.governed
    assert assembly.check_tool_start("x").allowed
    assert names(core).count("register") == 2


def test_a_missing_extension(monkeypatch: pytest.MonkeyPatch) -> None:
    def missing() -> Any:
        raise ImportError("no module named agent_assembly._native")

    monkeypatch.setattr(assembly_module, "_native_module", missing)
    monkeypatch.setattr(assembly_module, "_missing_warned", False)
    with pytest.raises(NativeExtensionMissing, match="pip install"):
        init_assembly("bot")
    assert issubclass(NativeExtensionMissing, ImportError)
    with pytest.warns(RuntimeWarning, match="ungoverned"):
        observed = init_assembly("bot", mode="observe")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # only once per process
        init_assembly("bot", mode="disabled")
    assert observed.check_tool_start("x").decision == "allow"


def test_reports_fail_loudly_only_under_enforce(core: FakeCore) -> None:
    core.report_error = NativeError("outbox full")
    with pytest.raises(ReportError, match="outbox full"):
        init_assembly("bot").report_llm_usage("gpt-4o", 1, 2)
    init_assembly("bot", mode="observe").report_llm_usage("gpt-4o", 1, 2)


def test_children_share_the_client_and_only_the_root_closes_it(core: FakeCore) -> None:
    with init_assembly("lead", team_id="t") as lead:
        child = lead.spawn_child("helper", delegation_reason="why", spawned_by_tool="delegate")
        assert (child.depth, child.parent_agent_id) == (1, "lead")
        child.shutdown()
        assert "close" not in names(core)
    assert names(core).count("client") == 1
    assert names(core)[-1] == "close"
    edges = [args[1] for name, args in core.calls if name == "report"]
    assert edges == [
        [
            {
                "to_agent_id": "helper",
                "kind": "spawned",
                "tool": "delegate",
                "metadata": {"delegation_reason": "why"},
            }
        ]
    ]


def test_bad_arguments_are_refused(core: FakeCore) -> None:
    with pytest.raises(ValueError, match="mode"):
        init_assembly("bot", mode="audit")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="approval_timeout"):
        init_assembly("bot", approval_timeout=0)


def test_public_names() -> None:
    assert set(agent_assembly.__all__) >= {
        "init_assembly",
        "Assembly",
        "ToolDenied",
        "PolicyDenied",
    }
    assert issubclass(agent_assembly.ToolDenied, agent_assembly.PolicyDenied)

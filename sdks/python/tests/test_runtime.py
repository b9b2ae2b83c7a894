"""The SDK against a real ``aasm up`` (started per test on a temp state directory)."""

from __future__ import annotations

import asyncio
import json
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable

import pytest

from agent_assembly import (
    LlmCallDenied,
    RegistrationError,
    ToolDenied,
    init_assembly,
)
from conftest import AWS_KEY, Aasm


def test_allow_runs_the_tool_and_reports_it(aasm: Aasm, sdk_dirs: dict[str, Any]) -> None:
    with init_assembly("reader", **sdk_dirs) as assembly:

        @assembly.tool
        def read_file(path: str) -> str:
            return f"contents of {path}"

        assert read_file("/workspace/notes.txt") == "contents of /workspace/notes.txt"
        decision = assembly.check_tool_start("read_file", {"path": "/workspace/a"})
        assert (decision.decision, decision.policy) == ("allow", "python-sdk@1")

    events = aasm.wait_for_events(lambda es: any(e["kind"] == "tool_end" for e in es))
    ends = [e for e in events if e["kind"] == "tool_end"]
    assert len(ends) == 1
    assert ends[0]["agent"]["id"] == "reader"
    assert ends[0]["detail"]["result"] == "contents of /workspace/notes.txt"
    assert ends[0]["detail"]["duration_ms"] >= 0


def test_a_result_that_cannot_be_reported_is_still_returned(
    aasm: Aasm, sdk_dirs: dict[str, Any], caplog: pytest.LogCaptureFixture
) -> None:
    deep: list[Any] = []
    for _ in range(300):
        deep = [deep]
    with init_assembly("reader", **sdk_dirs) as assembly:

        @assembly.tool
        def read_file(path: str) -> list[Any]:
            return deep

        assert read_file("/workspace/notes.txt") is deep
    assert "the end of tool 'read_file' (agent 'reader') was not recorded" in caplog.text


def test_arguments_changed_while_they_are_read_are_checked(
    aasm: Aasm, sdk_dirs: dict[str, Any]
) -> None:
    class Sneaky:
        """A model whose dump adds to the arguments it is one of."""

        def __init__(self, args: dict[str, Any]) -> None:
            self.args = args

        def model_dump(self, mode: str) -> dict[str, Any]:
            for i in range(100):
                self.args[f"extra{i}"] = i
            return {"x": 1}

    args: dict[str, Any] = {"path": "/workspace/a"}
    args["model"] = Sneaky(args)
    with init_assembly("reader", **sdk_dirs) as assembly:
        decision = assembly.check_tool_start("read_file", args)
    assert decision.decision == "allow"


def test_a_deny_stops_the_body(aasm: Aasm, sdk_dirs: dict[str, Any]) -> None:
    ran: list[str] = []
    with init_assembly("reader", **sdk_dirs) as assembly:

        @assembly.tool
        def read_file(path: str) -> str:
            ran.append(path)
            return "secret"

        with pytest.raises(ToolDenied) as denied:
            read_file("/etc/shadow")
        assert ran == []
        assert denied.value.tool_name == "read_file"
        assert denied.value.rule == "tools.read_file.deny_if"
        assert denied.value.decision.policy == "python-sdk@1"
        with pytest.raises(ToolDenied):
            assembly.check_tool_start("delete_file", {"path": "/workspace/x"})

    # The runtime recorded both denials.
    events = aasm.wait_for_events(
        lambda es: sum(e.get("verdict", {}).get("decision") == "deny" for e in es) >= 2
    )
    assert sum(e.get("verdict", {}).get("decision") == "deny" for e in events) == 2


def test_pending_denies_when_no_approval_comes(aasm: Aasm, sdk_dirs: dict[str, Any]) -> None:
    ran: list[str] = []
    with init_assembly("ops", approval_timeout=0.3, **sdk_dirs) as assembly:

        @assembly.tool
        def shell(command: str) -> str:
            ran.append(command)
            return "done"

        started = time.monotonic()
        with pytest.raises(ToolDenied) as denied:
            shell("rm -rf /tmp/x")
        assert time.monotonic() - started >= 0.3
        assert ran == []
        assert denied.value.rule == "tools.shell.requires_approval_if"
        assert denied.value.reason.startswith("no decision within 0.3 s")
        assert shell("ls") == "done"


def _decide_when_asked(aasm: Aasm, verb: str, *extra: str) -> threading.Thread:
    """An operator in another thread: waits for the pending approval, then decides it with
    ``aasm approvals``."""

    def operator() -> None:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            pending = json.loads(aasm.run("approvals", "list", "--json"))
            if pending:
                aasm.run("approvals", verb, pending[0]["approval_id"], "--by", "alice", *extra)
                return
            time.sleep(0.05)

    thread = threading.Thread(target=operator)
    thread.start()
    return thread


def test_pending_waits_for_an_operator(aasm: Aasm, sdk_dirs: dict[str, Any]) -> None:
    ran: list[str] = []
    with init_assembly("ops", approval_timeout=30, **sdk_dirs) as assembly:

        @assembly.tool
        def shell(command: str) -> str:
            ran.append(command)
            return "done"

        operator = _decide_when_asked(aasm, "approve", "--reason", "checked")
        assert shell("rm -rf /tmp/build") == "done"
        operator.join()
        assert ran == ["rm -rf /tmp/build"]

        operator = _decide_when_asked(aasm, "deny", "--reason", "not now")
        with pytest.raises(ToolDenied) as denied:
            shell("rm -rf /tmp/cache")
        operator.join()
        assert ran == ["rm -rf /tmp/build"]
        assert denied.value.reason == "denied by alice: not now"

    def steps(events: list[dict[str, Any]]) -> list[str]:
        return [e["detail"]["step"] for e in events if e["kind"] == "approval"]

    events = aasm.wait_for_events(lambda events: len(steps(events)) == 5)
    assert sorted(steps(events)) == ["approved", "denied", "requested", "requested", "used"]


def test_observe_reports_a_deny_and_runs_the_tool(aasm: Aasm, sdk_dirs: dict[str, Any]) -> None:
    ran: list[str] = []
    with init_assembly("watcher", mode="observe", **sdk_dirs) as assembly:

        @assembly.tool
        def delete_file(path: str) -> None:
            ran.append(path)

        delete_file("/workspace/old")
        assert ran == ["/workspace/old"]
        decision = assembly.check_tool_start("delete_file", {"path": "/workspace/x"})
        assert (decision.decision, decision.rule) == ("deny", "tools.delete_file.allow")


def test_secrets_reach_the_audit_log_redacted(aasm: Aasm, sdk_dirs: dict[str, Any]) -> None:
    with init_assembly("leaky", **sdk_dirs) as assembly:

        @assembly.tool
        def fetch(url: str, token: str) -> dict[str, str]:
            return {"echo": f"authorised with {token}"}

        fetch("https://example.com", token=AWS_KEY)
        with pytest.raises(ValueError):  # not a secret problem: a bad argument is loud
            assembly.report_edge("peer", "befriended")
        assembly.report_edge("peer", "messages", {"note": f"use {AWS_KEY}"})

    events = aasm.wait_for_events(
        lambda es: {e["kind"] for e in es} >= {"decision", "tool_end", "edge"}
    )
    text = json.dumps(events)
    assert AWS_KEY not in text
    assert AWS_KEY not in aasm.run("audit", "export")
    kinds = {e["kind"] for e in events}
    assert kinds >= {"decision", "tool_end", "edge"}
    end = next(e for e in events if e["kind"] == "tool_end")
    assert end["detail"]["result"]["echo"] == "authorised with [REDACTED:aws_access_key]"
    assert end["redactions"], "receipts are attached"
    edge = next(e for e in events if e["kind"] == "edge")
    assert edge["detail"]["kind"] == "messaged"
    assert edge["detail"]["metadata"]["note"] == "use [REDACTED:aws_access_key]"


def test_a_spawned_child_has_its_lineage(aasm: Aasm, sdk_dirs: dict[str, Any]) -> None:
    with init_assembly("lead", team_id="research", **sdk_dirs) as lead:
        assert lead.depth == 0
        with lead.spawn_child(
            "helper", delegation_reason="summarise", spawned_by_tool="delegate"
        ) as child:
            assert (child.depth, child.team_id, child.parent_agent_id) == (1, "research", "lead")
            assert child.check_tool_start("read_file", {"path": "/workspace/a"}).allowed
        agents = aasm.agents()
    helper = agents["helper"]
    assert helper["parent_agent_id"] == "lead"
    assert helper["depth"] == 1
    assert helper["team_id"] == "research"
    assert helper["delegation_reason"] == "summarise"
    assert helper["spawned_by_tool"] == "delegate"
    events = aasm.wait_for_events(lambda es: any(e["kind"] == "edge" for e in es))
    spawn = next(e for e in events if e["kind"] == "edge")
    assert (spawn["agent"]["id"], spawn["detail"]["to_agent_id"]) == ("lead", "helper")


def test_a_child_on_another_host_registers_with_its_parents_grant(
    aasm: Aasm, sdk_dirs: dict[str, Any], tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Another state directory stands for another host: the parent's key is not there.
    elsewhere = {"socket_path": aasm.socket, "state_dir": str(tmp_path / "other-host")}
    with init_assembly("lead", team_id="research", **sdk_dirs) as lead:
        with pytest.raises(RegistrationError, match="spawn_grant"):
            init_assembly("remote", parent_agent_id="lead", **elsewhere)
        grant = lead.grant_child("remote", ttl=60)
        with init_assembly(
            "remote", parent_agent_id="lead", spawn_grant=grant, **elsewhere
        ) as child:
            assert (child.depth, child.team_id, child.parent_agent_id) == (1, "research", "lead")
            assert child.check_tool_start("read_file", {"path": "/workspace/a"}).allowed
        # A grant names its child: another one is refused with it, and taken with its own,
        # here from the environment.
        with pytest.raises(RegistrationError, match="grants agent"):
            init_assembly("remote-2", parent_agent_id="lead", spawn_grant=grant, **elsewhere)
        monkeypatch.setenv("AASM_SPAWN_GRANT", lead.grant_child("remote-2", ttl=60))
        with init_assembly("remote-2", parent_agent_id="lead", **elsewhere) as second:
            assert second.parent_agent_id == "lead"
    agents = aasm.agents()
    assert (agents["remote"]["parent_agent_id"], agents["remote-2"]["depth"]) == ("lead", 1)


def _refusal(check: Callable[[], object]) -> ToolDenied | None:
    """The ``ToolDenied`` that ``check`` raises, or None when it is allowed."""
    try:
        check()
    except ToolDenied as denied:
        return denied
    return None


def _until(condition: Callable[[], bool], limit: float) -> bool:
    """Whether ``condition`` holds within ``limit`` seconds (polled every 10 ms)."""
    deadline = time.monotonic() + limit
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def test_a_tree_is_bounded_by_its_root_and_stopped_by_the_kill_switch(
    aasm: Aasm, sdk_dirs: dict[str, Any]
) -> None:
    with (
        init_assembly("lead", **sdk_dirs) as lead,
        lead.spawn_child("helper") as helper,
        helper.spawn_child("worker") as worker,
    ):
        assert worker.depth == 2
        # The worker's own policy allows a web search; its root's does not, so neither may it.
        with pytest.raises(ToolDenied) as denied:
            worker.check_tool_start("web_search", {"q": "x"})
        assert denied.value.reason.startswith('inherited from ancestor "lead": ')
        search = lambda: worker.check_tool_start("read_file", {"path": "/workspace/a"})  # noqa: E731
        assert search().allowed

        # The kill switch: the whole tree is stopped within a second, then released.
        aasm.run("agents", "suspend", "lead", "--subtree", "--reason", "runaway", "--by", "alice")
        assert _until(lambda: _refusal(search) is not None, 1.0), "not stopped within 1 s"
        stopped = _refusal(search)
        assert stopped is not None
        assert stopped.rule == "suspension"
        assert stopped.reason == (
            'agent "worker" is suspended with the subtree of "lead" by alice: runaway'
        )
        assert _refusal(lambda: helper.check_tool_start("read_file", {"path": "/a"})) is not None
        aasm.run("agents", "resume", "lead", "--subtree")
        assert _until(lambda: _refusal(search) is None, 1.0), "not released within 1 s"

    tree = json.loads(aasm.run("topology", "tree", "lead", "--json"))
    assert [a["agent_id"] for a in tree["agents"]] == ["lead", "helper", "worker"]
    events = aasm.wait_for_events(lambda es: sum(e["kind"] == "suspension" for e in es) >= 2)
    steps = [e["detail"]["step"] for e in events if e["kind"] == "suspension"]
    assert steps == ["suspended", "resumed"]


def test_llm_calls_are_checked_and_usage_recorded(aasm: Aasm, sdk_dirs: dict[str, Any]) -> None:
    with init_assembly("writer", **sdk_dirs) as assembly:
        assert assembly.check_llm_call("gpt-4o-mini", 1200).allowed
        with pytest.raises(LlmCallDenied) as denied:
            assembly.check_llm_call("some-other-model", 10)
        assert denied.value.model == "some-other-model"
        assembly.report_llm_usage("gpt-4o-mini", 1200, 300, cost_usd=0.0021)
    events = aasm.wait_for_events(lambda es: any(e["kind"] == "llm_usage" for e in es))
    usage = next(e for e in events if e["kind"] == "llm_usage")
    assert usage["detail"] == {"input_tokens": 1200, "output_tokens": 300, "cost_usd": 0.0021}


def test_a_budget_is_shared_by_a_tree_and_never_passed_by_concurrent_calls(
    aasm: Aasm, sdk_dirs: dict[str, Any]
) -> None:
    with (
        init_assembly("spender", **sdk_dirs) as spender,
        spender.spawn_child("summarizer") as summarizer,
    ):
        # Each call reserves $0.0125 (1000 tokens in, the table's 1000 out, at gpt-4o's
        # price): the tree's $0.03 a day holds two of them, however many race.
        def call(i: int) -> tuple[Any, object]:
            who = spender if i % 2 else summarizer
            try:
                return who, who.check_llm_call("gpt-4o", 1000)
            except LlmCallDenied as denied:
                return who, denied

        with ThreadPoolExecutor(max_workers=8) as pool:
            outcomes = list(pool.map(call, range(16)))
        refused = [o for _, o in outcomes if isinstance(o, LlmCallDenied)]
        allowed = [who for who, o in outcomes if not isinstance(o, LlmCallDenied)]
        assert len(allowed) == 2
        assert {d.rule for d in refused} == {"budget.daily_usd"}
        assert all("the budget of agent:spender has no room" in d.reason for d in refused)

        # What the calls used settles their reservations at the table's price.
        for who in allowed:
            who.report_llm_usage("gpt-4o", 1000, 500)
        callers = {who.agent_id for who in allowed}

    def spent() -> dict[str, Any]:
        report = json.loads(aasm.run("budget", "show", "--agent", "spender", "--json"))[0]
        return next(w for w in report["windows"] if w["window"] == "daily_usd")

    assert _until(lambda: spent()["held_usd"] == 0, 10.0), spent()
    day = spent()
    assert abs(day["spent_usd"] - 0.015) < 1e-9
    assert (day["cap_usd"], day["calls"]) == (0.03, 2)
    events = aasm.wait_for_events(lambda es: sum(e["kind"] == "spend" for e in es) >= 2)
    spends = [e for e in events if e["kind"] == "spend"]
    assert {e["agent"]["id"] for e in spends} == callers
    assert all(abs(e["detail"]["cost_usd"] - 0.0075) < 1e-9 for e in spends)


def test_async_tools_are_governed(aasm: Aasm, sdk_dirs: dict[str, Any]) -> None:
    ran: list[str] = []
    with init_assembly("async-bot", **sdk_dirs) as assembly:

        @assembly.tool(name="read_file")
        async def read(path: str) -> str:
            ran.append(path)
            await asyncio.sleep(0)
            return "ok"

        async def main() -> None:
            assert await read("/workspace/a") == "ok"
            with pytest.raises(ToolDenied):
                await read("/etc/passwd")

        asyncio.run(main())
    assert ran == ["/workspace/a"]


def test_a_lost_runtime_denies_under_enforce(aasm: Aasm, sdk_dirs: dict[str, Any]) -> None:
    assembly = init_assembly("bot", timeout=1.0, **sdk_dirs)
    assert assembly.check_tool_start("read_file", {"path": "/workspace/a"}).allowed
    aasm.stop()
    with pytest.raises(ToolDenied) as denied:
        assembly.check_tool_start("read_file", {"path": "/workspace/a"})
    assert denied.value.rule == "client"
    assert "the runtime did not decide" in denied.value.reason
    assembly.shutdown()


def test_a_forked_process_is_denied_until_it_makes_its_own_assembly(
    aasm: Aasm, sdk_dirs: dict[str, Any]
) -> None:
    assembly = init_assembly("bot", **sdk_dirs)
    assert assembly.check_tool_start("read_file", {"path": "/workspace/a"}).allowed
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        # The child: the assembly it inherited talks over its parent's connection, which it
        # must not touch; one of its own works.
        outcome: list[object] = []
        try:
            try:
                assembly.check_tool_start("read_file", {"path": "/workspace/a"})
                outcome.append("allowed")
            except ToolDenied as denied:
                outcome.append(denied.reason)
            own = init_assembly("bot-child", **sdk_dirs)
            outcome.append(own.check_tool_start("read_file", {"path": "/workspace/a"}).allowed)
            own.shutdown()
        except BaseException as error:
            outcome.append(repr(error))
        finally:
            os.write(write, json.dumps(outcome).encode())
            os._exit(0)
    os.close(write)
    with os.fdopen(read) as pipe:
        outcome = json.loads(pipe.read())
    os.waitpid(pid, 0)
    assert len(outcome) == 2, outcome
    assert f"made in process {os.getpid()}" in outcome[0], outcome
    assert f"used in process {pid}" in outcome[0], outcome
    assert outcome[1] is True, outcome
    # The parent's connection was left alone.
    assert assembly.check_tool_start("read_file", {"path": "/workspace/a"}).allowed
    assembly.shutdown()


def test_registration_failure_raises_only_under_enforce(tmp_path: Any) -> None:
    missing = str(tmp_path / "no.sock")
    with pytest.raises(RegistrationError, match=r"no\.sock"):
        init_assembly("bot", socket_path=missing, state_dir=str(tmp_path))
    for mode in ("observe", "disabled"):
        assembly = init_assembly("bot", mode=mode, socket_path=missing, state_dir=str(tmp_path))
        assert not assembly.governed
        assert assembly.check_tool_start("delete_file").allowed
        assembly.shutdown()

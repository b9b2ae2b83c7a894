"""Fixtures: a real ``aasm up`` on a temp state directory, and a fake native core."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Callable

import pytest

DATA = Path(__file__).parent / "data"
AWS_KEY = "AKIAQWERTYUIOPASDFGH"


def aasm_binary() -> str:
    """``AASM_BIN`` (set by ``cargo xtask ci``), else ``aasm`` on PATH."""
    path = os.environ.get("AASM_BIN") or shutil.which("aasm")
    if not path or not os.path.exists(path):
        pytest.fail("no aasm binary: build it (cargo build -p aa-cli) and set AASM_BIN to it")
    return path


class Aasm:
    """A running ``aasm up``: its socket, state directory, and offline views of its data."""

    def __init__(self, state_dir: Path, policy: Path | None) -> None:
        """Starts ``aasm up`` with ``policy`` (None: its default, the balanced example)."""
        self.binary = aasm_binary()
        self.state_dir = state_dir
        policy_args = [] if policy is None else ["--policy", str(policy)]
        self.process = subprocess.Popen(
            [
                self.binary,
                "up",
                "--state-dir",
                str(state_dir),
                *policy_args,
                "--grpc",
                "127.0.0.1:0",
                "--http",
                "127.0.0.1:0",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            env={**os.environ, "AASM_LOG": "warn"},
        )
        self.socket = ""
        deadline = time.monotonic() + 30
        assert self.process.stdout is not None
        for line in self.process.stdout:
            if line.startswith("runtime socket:"):
                self.socket = line.split(":", 1)[1].strip()
            if line.startswith("operator HTTP:"):
                break
            if time.monotonic() > deadline:
                break
        if not self.socket:
            self.process.kill()
            pytest.fail("aasm up did not print its socket")
        # Keep draining stdout so the service never blocks on a full pipe.
        threading.Thread(target=self.process.stdout.read, daemon=True).start()

    def run(self, *args: str) -> str:
        done = subprocess.run(
            [self.binary, *args, "--state-dir", str(self.state_dir)],
            capture_output=True,
            text=True,
            check=True,
        )
        return done.stdout

    def agents(self) -> dict[str, dict[str, Any]]:
        rows = json.loads(self.run("agents", "list", "--json"))
        return {row["agent_id"]: row for row in rows}

    def events(self) -> list[dict[str, Any]]:
        rows = [json.loads(line) for line in self.run("audit", "export").splitlines()]
        return [row["event"] for row in rows if "event" in row]

    def wait_for_events(
        self, condition: Callable[[list[dict[str, Any]]], bool], limit: float = 10.0
    ) -> list[dict[str, Any]]:
        deadline = time.monotonic() + limit
        while True:
            events = self.events()
            if condition(events) or time.monotonic() > deadline:
                return events
            time.sleep(0.1)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


@pytest.fixture
def aasm(tmp_path: Path) -> Iterator[Aasm]:
    service = Aasm(tmp_path / "state", DATA / "policy.yaml")
    try:
        yield service
    finally:
        service.stop()


@pytest.fixture
def sdk_dirs(aasm: Aasm, tmp_path: Path) -> dict[str, Any]:
    """What ``init_assembly`` needs to reach ``aasm``."""
    return {"socket_path": aasm.socket, "state_dir": str(tmp_path / "sdk")}

"""The quickstart example, run as a newcomer runs it: against ``aasm up`` and its default
policy, finding the runtime through ``AASM_SOCKET``."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from conftest import Aasm

EXAMPLE = Path(__file__).resolve().parents[3] / "examples" / "python" / "quickstart.py"


def test_the_quickstart_runs_against_aasm_up(tmp_path: Path) -> None:
    aasm = Aasm(tmp_path / "state", policy=None)
    try:
        env = {
            **os.environ,
            "AASM_SOCKET": aasm.socket,
            "AASM_STATE_DIR": str(tmp_path / "sdk"),
        }
        done = subprocess.run(
            [sys.executable, str(EXAMPLE)], env=env, capture_output=True, text=True, check=False
        )
        assert done.returncode == 0, done.stderr
        out = done.stdout
        assert "allowed: (contents of /workspace/README.md)" in out
        assert "denied:  tools.read_file.deny_if" in out
        assert "pending, then denied: no decision within 2.0 s" in out
        assert "model call: allow (balanced@3)" in out
        assert "child depth: 1 team: demo" in out
        events = aasm.wait_for_events(lambda es: {e["kind"] for e in es} >= {"llm_usage", "edge"})
        spawns = [e["detail"]["to_agent_id"] for e in events if e["kind"] == "edge"]
        assert spawns == ["quickstart-helper"]
        assert aasm.agents()["quickstart-helper"]["parent_agent_id"] == "quickstart"
    finally:
        aasm.stop()

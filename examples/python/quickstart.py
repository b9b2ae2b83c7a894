"""A governed agent in a few lines. Start the runtime first, in the same folder:

    cargo run -p aa-cli -- up          # serves the balanced example policy

then, with the SDK installed (pip install ./sdks/python):

    python examples/python/quickstart.py

It registers an agent, runs one allowed tool, tries two the policy stops, and shows what the
audit log now holds (`aasm audit tail`).
"""

from __future__ import annotations

from agent_assembly import ToolDenied, init_assembly

# The socket and state directory default to .aasm/ (or AASM_SOCKET / AASM_STATE_DIR).
# A pending action waits for an operator: `aasm approvals list`, then `aasm approvals approve ID`
# in another terminal; here nobody approves within approval_timeout, so it is denied.
with init_assembly("quickstart", team_id="demo", approval_timeout=2.0) as assembly:

    @assembly.tool
    def read_file(path: str) -> str:
        return f"(contents of {path})"

    @assembly.tool
    def shell(command: str) -> str:
        return f"(ran {command})"

    print("allowed:", read_file("/workspace/README.md"))

    try:
        read_file("/etc/shadow")
    except ToolDenied as denied:
        print("denied: ", denied.rule, "-", denied.reason)

    try:
        shell("sudo rm -rf /tmp/build")  # needs a human's approval
    except ToolDenied as denied:
        print("pending, then denied:", denied.reason)

    decision = assembly.check_llm_call("gpt-4o-mini", input_tokens=1200)
    print("model call:", decision.decision, f"({decision.policy})")
    assembly.report_llm_usage("gpt-4o-mini", input_tokens=1200, output_tokens=250, cost_usd=0.0004)

    helper = assembly.spawn_child("quickstart-helper", delegation_reason="summarise the logs")
    print("child depth:", helper.depth, "team:", helper.team_id)
    helper.shutdown()

print("see it all with: cargo run -p aa-cli -- audit tail -n 12")

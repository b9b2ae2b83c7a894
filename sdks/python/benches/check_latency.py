"""The latency of ``check_tool_start`` from Python beside the Rust client's, against one
``aasm up``: rounds alternate ``aa-bench serial`` (the Rust client, one check at a time) with
the same checks from Python, through the native client alone and through the full SDK.

Run by ``cargo xtask bench-python``, which builds release binaries and a release wheel.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

from agent_assembly import _native, init_assembly

TOOL = "read_file"
ARGS = {"path": "/workspace/src/main.rs"}  # what aa-bench checks; the default policy allows it


def percentiles(samples_ns: list[int]) -> dict[str, float]:
    """Nearest-rank p50 and p99, in microseconds (as aa-bench reports them)."""
    ordered = sorted(samples_ns)

    def rank(q: float) -> float:
        index = min(len(ordered), max(1, math.ceil(q * len(ordered))))
        return ordered[index - 1] / 1000

    return {"p50_us": rank(0.50), "p99_us": rank(0.99)}


def timed_pairs(
    first: Callable[[], object], second: Callable[[], object], count: int, warmup: int
) -> tuple[dict[str, float], dict[str, float]]:
    """Times two calls taking turns, so both see the same machine from moment to moment."""
    for _ in range(warmup):
        first()
        second()
    samples: tuple[list[int], list[int]] = ([], [])
    clock = time.perf_counter_ns
    for _ in range(count):
        for call, into in ((first, samples[0]), (second, samples[1])):
            started = clock()
            call()
            into.append(clock() - started)
    return percentiles(samples[0]), percentiles(samples[1])


def start(aasm: str, state: Path) -> tuple[subprocess.Popen[str], str]:
    process = subprocess.Popen(
        [aasm, "up", "--state-dir", str(state), "--grpc", "127.0.0.1:0", "--http", "127.0.0.1:0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    assert process.stdout is not None
    socket = ""
    for line in process.stdout:
        if line.startswith("runtime socket:"):
            socket = line.split(":", 1)[1].strip()
        if line.startswith("operator HTTP:"):
            break
    if not socket:
        process.kill()
        sys.exit("aasm up did not start")
    return process, socket


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--aasm", required=True)
    parser.add_argument("--aa-bench", required=True)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--count", type=int, default=20_000)
    parser.add_argument("--warmup", type=int, default=2_000)
    options = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        state = Path(tmp)
        process, socket = start(options.aasm, state / "aasm")
        try:
            assembly = init_assembly("py-bench", socket_path=socket, state_dir=str(state / "sdk"))
            client = _native.Client(socket_path=socket, state_dir=str(state / "sdk"))
            agent = client.register("py-native-bench")
            action = {"type": "tool_call", "tool": TOOL, "args": ARGS}
            deadline = time.monotonic() + 15  # the runtime needs the gateway's bundle first
            while client.check(agent, action).decision != "allow":
                if time.monotonic() > deadline:
                    sys.exit("the runtime never allowed the benchmark action")
                time.sleep(0.05)

            rows = []
            for round_ in range(1, options.rounds + 1):
                rust = json.loads(
                    subprocess.run(
                        [
                            options.aa_bench,
                            "serial",
                            "--json",
                            "--socket",
                            socket,
                            "--state-dir",
                            str(state / "rust"),
                            "--count",
                            str(options.count),
                            "--warmup",
                            str(options.warmup),
                        ],
                        check=True,
                        capture_output=True,
                        text=True,
                    ).stdout
                )
                native, sdk = timed_pairs(
                    lambda: client.check(agent, action),
                    lambda: assembly.check_tool_start(TOOL, ARGS),
                    options.count,
                    options.warmup,
                )
                rows.append((round_, rust, native, sdk))
            assembly.shutdown()
            client.close()
        finally:
            process.terminate()
            process.wait()

    print(f"checks one at a time, {options.count} measured per client per round (µs)")
    print(
        f"{'round':>5} {'rust p50':>9} {'rust p99':>9} {'native p50':>11} {'native p99':>11}"
        f" {'sdk p50':>8} {'sdk p99':>8} {'native - rust':>14} {'sdk - native':>13}"
    )
    for round_, rust, native, sdk in rows:
        print(
            f"{round_:>5} {rust['p50_us']:>9.1f} {rust['p99_us']:>9.1f} {native['p50_us']:>11.1f}"
            f" {native['p99_us']:>11.1f} {sdk['p50_us']:>8.1f} {sdk['p99_us']:>8.1f}"
            f" {native['p50_us'] - rust['p50_us']:>14.1f} {sdk['p50_us'] - native['p50_us']:>13.1f}"
        )
    native_overhead = statistics.median(n["p50_us"] - r["p50_us"] for _, r, n, _ in rows)
    layer = statistics.median(s["p50_us"] - n["p50_us"] for _, _, n, s in rows)
    print(
        f"median over rounds (p50): the binding {native_overhead:+.1f} µs over the Rust client,"
        f" the package's Python layer {layer:+.1f} µs over the binding"
    )


if __name__ == "__main__":
    main()

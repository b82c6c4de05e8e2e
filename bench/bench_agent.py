"""Building a latency table through a device agent, against a local ``nasvit profile`` of the
same blocks, on this machine over loopback.

Rounds alternate: a local build (``build_table`` with the profiler ``nasvit profile`` uses)
into a fresh database, then a build through the agent: ``nasvit serve`` over a fresh home,
``python -m nasvit.agent`` (or the zipapp under ``--agent-python``), each its own process as
in a deployment, and the search side's ``AgentMeasurer.fill`` here, queueing the blocks and
waiting. Each round times from the first block
to the last stored entry, the overhead measurement and the block exports included on both
sides; the agent's start-up and registration are not (a device's agent is already running).

Printed per round: both wall times and their ratio (agent / local). Then, per block, the agent's
warm median over the local one, beside local round 2 over local round 1: the second ratio is
this machine's noise, the first should look the same. Timing figures only: nothing is asserted.

    .venv/bin/python bench/bench_agent.py                 # the main job's table, 2 rounds
    .venv/bin/python bench/bench_agent.py --quick --json  # a small table, 1 round (tests)
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from nasvit.latency_db import LatencyStore, OnnxRuntimeProfiler, build_table
from nasvit.nn.blocks import BlockSpec

REPO = Path(__file__).resolve().parents[1]
#: The console script next to this interpreter.
NASVIT = str(Path(sys.executable).parent / "nasvit")
MAIN_JOB_SPACE = "efficientformer"


def main_job_blocks() -> tuple[str, list[BlockSpec]]:
    """The blocks of the main job's table: the default supernet's space with its data's head
    and input (what ``nasvit search --space efficientformer`` profiles)."""
    from nasvit.data import load_dataset
    from nasvit.search_spaces import get_space
    from nasvit.training.default_supernet import recipe_for

    recipe = recipe_for(MAIN_JOB_SPACE)
    data = load_dataset(recipe.data, seed=recipe.data_seed)
    space = get_space(MAIN_JOB_SPACE).restrict(**recipe.restrictions)
    blocks = space.enumerate_blocks(num_classes=data.num_classes, in_channels=data.in_channels)
    return f"main job ({MAIN_JOB_SPACE}, {recipe.data})", blocks


def quick_blocks() -> tuple[str, list[BlockSpec]]:
    from nasvit.search_spaces import get_space

    space = get_space("lighthubert_small")
    return "lighthubert_small at 32", space.enumerate_blocks([32], num_classes=10)[:12]


def local_round(blocks: Sequence[BlockSpec], folder: Path) -> tuple[float, dict[str, float], int]:
    """A local build into a fresh database: (seconds, warm median per key, batches measured
    again for drift)."""
    from nasvit.evaluation.latency import resolve_device

    store = LatencyStore.open(f"sqlite:///{folder / 'local.db'}")
    try:
        device, _ = resolve_device(store)
        started = time.perf_counter()
        report = build_table(store, OnnxRuntimeProfiler(), device, blocks)
        elapsed = time.perf_counter() - started
        medians = {k: e.median_ms for k, e in store.entries(device.id).items()}
        return elapsed, medians, report.remeasured_batches
    finally:
        store.close()


@contextmanager
def serving(home: Path) -> Iterator[str]:
    """``nasvit serve`` on a free loopback port over a fresh home: a separate process, as a
    deployment runs it (the search side's exports never share its interpreter)."""
    import socket

    import httpx

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {**os.environ, "NASVIT_HOME": str(home), "NASVIT_AGENT_POLL_SECONDS": "0.2"}
    server = subprocess.Popen(
        [NASVIT, "serve", "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=(home / "serve.log").open("wb"),
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                if httpx.get(f"{url}/api/v1/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if server.poll() is not None or time.monotonic() > deadline:
                raise SystemExit((home / "serve.log").read_text()[-2000:])
            time.sleep(0.2)
        yield url
    finally:
        server.terminate()
        server.wait(timeout=60)


def agent_round(
    blocks: Sequence[BlockSpec], folder: Path, agent_command: Sequence[str]
) -> tuple[float, dict[str, float], int]:
    """A build through the agent into a fresh database: (seconds, warm median per key,
    batches measured again for drift, read from the agent's log)."""
    from nasvit.latency_db.remote import AgentMeasurer

    home = folder / "home"
    home.mkdir()
    added = subprocess.run(
        [NASVIT, "device", "add", "bench-device"],
        env={**os.environ, "NASVIT_HOME": str(home)},
        capture_output=True,
        text=True,
        check=True,
    )
    token = added.stdout.strip().splitlines()[-1]
    with serving(home) as url:
        agent = subprocess.Popen(
            [*agent_command, "--server", url, "--token", token, "--name", "bench-agent"],
            stdout=subprocess.DEVNULL,
            stderr=(folder / "agent.log").open("wb"),
        )
        store = LatencyStore.open(f"sqlite:///{home / 'nasvit.db'}")
        try:
            deadline = time.monotonic() + 120
            while not any(d.agent_managed for d in store.devices()):
                if agent.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit((folder / "agent.log").read_text()[-2000:])
                time.sleep(0.1)
            [device] = store.devices()
            measurer = AgentMeasurer(store, device, timeout_s=600, poll_s=0.1)
            started = time.perf_counter()
            measurer.fill(blocks)
            elapsed = time.perf_counter() - started
            medians = {k: e.median_ms for k, e in store.entries(device.id).items()}
        finally:
            store.close()
            agent.terminate()
            agent.wait(timeout=30)
    log = (folder / "agent.log").read_text()
    remeasured = sum(int(match) for match in re.findall(r"re-measured (\d+)x", log))
    return elapsed, medians, remeasured


def _spread(values: Sequence[float]) -> dict[str, float]:
    array = np.asarray(values, dtype=float)
    p10, p50, p90 = np.percentile(array, [10, 50, 90])
    return {"p10": float(p10), "median": float(p50), "p90": float(p90)}


def _git_commit() -> str:
    done = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True
    )
    return done.stdout.strip() or "unknown"


def run(quick: bool, rounds: int, agent_command: Sequence[str]) -> dict[str, Any]:
    name, blocks = quick_blocks() if quick else main_job_blocks()
    unique = {b.key for b in blocks}
    results: list[dict[str, Any]] = []
    tables: dict[str, list[dict[str, float]]] = {"local": [], "agent": []}
    with tempfile.TemporaryDirectory(prefix="nasvit-bench-agent-") as tmp:
        for index in range(rounds):
            print(f"round {index + 1}/{rounds}: local build ...", file=sys.stderr, flush=True)
            folder = Path(tmp) / f"round{index}"
            (folder / "local").mkdir(parents=True)
            (folder / "agent").mkdir()
            local_s, local, local_again = local_round(blocks, folder / "local")
            print(f"round {index + 1}/{rounds}: agent build ...", file=sys.stderr, flush=True)
            agent_s, agent, agent_again = agent_round(blocks, folder / "agent", agent_command)
            tables["local"].append(local)
            tables["agent"].append(agent)
            results.append(
                {
                    "local_s": local_s,
                    "agent_s": agent_s,
                    "ratio": agent_s / local_s,
                    "local_remeasured_batches": local_again,
                    "agent_remeasured_batches": agent_again,
                }
            )
    first_local, first_agent = tables["local"][0], tables["agent"][0]
    keys = sorted(unique & first_local.keys() & first_agent.keys())
    agent_over_local = [first_agent[k] / first_local[k] for k in keys]
    report: dict[str, Any] = {
        "when": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "commit": _git_commit(),
        "command": " ".join(["bench/bench_agent.py", *sys.argv[1:]]),
        "table": name,
        "blocks": len(unique),
        "rounds": results,
        "ratio_spread": _spread([r["ratio"] for r in results]),
        "block_medians_agent_over_local": _spread(agent_over_local),
    }
    if rounds > 1:
        second = tables["local"][1]
        noise = [second[k] / first_local[k] for k in keys if k in second]
        report["block_medians_local_over_local"] = _spread(noise)
    return report


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="a 12-block table (smoke test)")
    parser.add_argument("--rounds", type=int, default=None, help="default 2 (1 with --quick)")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.add_argument(
        "--agent-python",
        help="run the agent zipapp with this interpreter (e.g. a torch-free venv's); default: "
        "python -m nasvit.agent with this interpreter",
    )
    args = parser.parse_args(argv)
    rounds = args.rounds or (1 if args.quick else 2)
    if rounds < 1:
        parser.error("--rounds must be at least 1")
    agent_command: list[str] = [sys.executable, "-m", "nasvit.agent"]
    if args.agent_python:
        from nasvit.agent.bundle import build_zipapp

        bundle = Path(tempfile.mkdtemp(prefix="nasvit-agent-")) / "nasvit-agent.pyz"
        bundle.write_bytes(build_zipapp())
        agent_command = [args.agent_python, str(bundle)]
    report = run(args.quick, rounds, agent_command)
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    print(f"{report['table']}: {report['blocks']} blocks ({report['when']}, {report['commit']})")
    for index, result in enumerate(report["rounds"], 1):
        print(
            f"  round {index}: local {result['local_s']:.1f} s, agent {result['agent_s']:.1f} s, "
            f"agent/local {result['ratio']:.3f} (batches re-measured for drift: local "
            f"{result['local_remeasured_batches']}, agent {result['agent_remeasured_batches']})"
        )
    spread = report["block_medians_agent_over_local"]
    print(
        "  per-block warm medians, agent/local (round 1): "
        f"median {spread['median']:.3f} (p10 {spread['p10']:.3f}, p90 {spread['p90']:.3f})"
    )
    if "block_medians_local_over_local" in report:
        noise = report["block_medians_local_over_local"]
        print(
            "  per-block warm medians, local round 2 / round 1 (the noise): "
            f"median {noise['median']:.3f} (p10 {noise['p10']:.3f}, p90 {noise['p90']:.3f})"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""bench/bench_agent.py runs end to end (`--quick`: a 12-block table, one round) with a real
`nasvit serve`, a real agent process and a local build, and reports what it promises. Its
values are timings, the bench's business: this checks they are there and consistent."""

from __future__ import annotations

import json
import subprocess
import sys

from nasvit_testing.layout import REPO_ROOT


def test_the_agent_bench_reports_both_builds_and_the_per_block_agreement() -> None:
    done = subprocess.run(
        [sys.executable, str(REPO_ROOT / "bench" / "bench_agent.py"), "--quick", "--json"],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=REPO_ROOT,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout)
    assert report["blocks"] == 12 and report["command"].startswith("bench/bench_agent.py")
    [round_] = report["rounds"]
    assert round_["local_s"] > 0 and round_["agent_s"] > 0
    assert round_["ratio"] == round_["agent_s"] / round_["local_s"]
    assert round_["local_remeasured_batches"] >= 0 and round_["agent_remeasured_batches"] >= 0
    spread = report["block_medians_agent_over_local"]
    # Both tables hold every block, timed by the same protocol: the ratios are positive and
    # ordered (their closeness to 1 is a timing, reported by the bench).
    assert 0 < spread["p10"] <= spread["median"] <= spread["p90"]
    assert "block_medians_local_over_local" not in report  # one round: no noise figure

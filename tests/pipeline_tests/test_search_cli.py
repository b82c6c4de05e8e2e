"""`nasvit search` end to end on a small restricted supernet: real onnxruntime profiling into a
real SQLite table, real evaluation on digits, artifacts, resume and bad input (searches on Ray:
tests/cluster_tests and tests/search_tests/test_ray_recovery.py)."""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import optuna
import pytest
import torch

from nasvit.evaluation.ranking import ranking_score
from nasvit.onnx_export import run_onnx
from nasvit.search_spaces import get_space
from nasvit.searching.trial_store import study_name_for
from nasvit.training.checkpoint import save_supernet

from nasvit_testing.toy_spaces import small_efficientformer

NASVIT = shutil.which("nasvit", path=str(Path(sys.executable).parent))


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One NASVIT_HOME (database) for the module, so the block table is profiled once."""
    return tmp_path_factory.mktemp("nasvit-home")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    space = small_efficientformer()
    torch.manual_seed(0)
    supernet = space.build_supernet(num_classes=10, in_channels=1)
    return save_supernet(tmp_path_factory.mktemp("ckpt") / "tiny.pt", space, supernet)


def search(home: Path, *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "NASVIT_HOME": str(home)}
    env.pop("NASVIT_DATABASE_URL", None)
    return subprocess.run(
        [NASVIT, "search", "--space", "efficientformer", *args],
        capture_output=True,
        text=True,
        timeout=900,
        env=env,
        cwd=cwd,
    )


def test_search_writes_front_artifacts_and_resumes(home, checkpoint, tmp_path) -> None:
    out = tmp_path / "run"
    first = search(
        home,
        "--budget",
        "300us",
        "--ckpt",
        str(checkpoint),
        "--evaluations",
        "16",
        "--out",
        str(out),
        "--json",
    )
    assert first.returncode == 0, first.stderr
    report = json.loads(first.stdout)
    assert report["evaluations"] == 16 and report["best"]["predicted_ms"] <= 0.3
    assert report["best"]["measured_ms"] > 0
    # The chosen subnet measured within the budget; every measurement is reported with its
    # readings, and the chosen one is among them.
    measured = {entry["index"]: entry for entry in report["end_to_end"]}
    chosen = measured[report["best"]["index"]]
    assert chosen["fits_budget"] and chosen["statistic_ms"] <= 0.3
    assert report["best"]["statistic_ms"] == chosen["statistic_ms"]
    for entry in measured.values():
        assert entry["min_ms"] <= entry["median_ms"] <= entry["max_ms"]
        assert len(entry["readings_ms"]) in (1, 3)
    for name in ["best.onnx", "best.json", "pareto.csv", "trials.csv", "report.json"]:
        assert (out / name).is_file(), name
    best = json.loads((out / "best.json").read_text())
    space = get_space("efficientformer")
    arch = space.validate(best["arch"])
    output = run_onnx(out / "best.onnx", np.random.rand(1, 1, 32, 32).astype(np.float32))
    assert output.shape == (1, 10) and arch["resolution"] == 32
    with (out / "pareto.csv").open() as handle:
        front = list(csv.DictReader(handle))
    assert {"low_ms", "high_ms", "judged_ms", "measured_readings_ms"} <= set(front[0])
    latencies = [float(row["predicted_ms"]) for row in front]
    scores = [ranking_score(float(row["accuracy"]), float(row["loss"])) for row in front]
    assert latencies == sorted(latencies) and scores == sorted(scores)
    assert scores == sorted(set(scores))  # a front point is strictly better than the previous

    lines_before = (out / "trials.jsonl").read_text().splitlines()
    # A fresh search starts from the ends of the space's latency range.
    from nasvit.training.checkpoint import load_supernet

    searched, _, _ = load_supernet(checkpoint)
    first_two = [json.loads(line)["short"] for line in lines_before[:2]]
    ends = [searched.largest(), searched.smallest()]
    assert first_two == [searched.short_string(a) for a in ends]
    again = search(
        home,
        "--budget",
        "300us",
        "--ckpt",
        str(checkpoint),
        "--evaluations",
        "16",
        "--out",
        str(out),
    )
    assert again.returncode == 2 and "--resume" in again.stderr
    # The database holds the record: a lagging text copy loses nothing on resume.
    (out / "trials.jsonl").write_text("\n".join(lines_before[:5]) + "\n")
    resumed = search(
        home,
        "--budget",
        "300us",
        "--ckpt",
        str(checkpoint),
        "--evaluations",
        "28",
        "--out",
        str(out),
        "--resume",
        "--json",
    )
    assert resumed.returncode == 0, resumed.stderr
    lines_after = (out / "trials.jsonl").read_text().splitlines()
    assert lines_after[:16] == lines_before and len(lines_after) == 28
    assert json.loads(resumed.stdout)["resumed_from"] == 16
    shorts = [json.loads(line)["short"] for line in lines_after]
    assert len(set(shorts)) == 28  # nothing evaluated twice
    assert [json.loads(line)["index"] for line in lines_after] == list(range(28))
    study = optuna.load_study(
        study_name=study_name_for(out), storage=f"sqlite:///{home / 'nasvit.db'}"
    )
    assert len(study.trials) == 28
    assert sorted(t.values[1] for t in study.trials) == sorted(
        json.loads(line)["latency_ms"] for line in lines_after
    )


def test_an_impossible_budget_names_the_fastest_architecture(home, checkpoint, tmp_path) -> None:
    result = search(
        home,
        "--budget",
        "1us",
        "--ckpt",
        str(checkpoint),
        "--evaluations",
        "8",
        "--out",
        str(tmp_path / "run"),
    )
    assert result.returncode == 2
    assert "no architecture found meets 1 us; the fastest found is r32_" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--budget", "2"], "cannot read latency budget '2'"),
        (["--budget", "2ms", "--controller", "nsga3"], "unknown controller 'nsga3'"),
        (["--budget", "2ms", "--evaluations", "-5"], "Invalid value for '--evaluations'"),
        (["--budget", "2ms", "--ckpt", "missing.pt"], "checkpoint not found"),
        (["--budget", "2ms", "--workers", "0"], "'0' is not auto or a number from 1 to 256"),
        (["--budget", "2ms", "--workers", "all"], "'all' is not auto or a number from 1 to 256"),
        (["--budget", "2ms", "--ray-address", "ray://head:10001"], "is a Ray Client address"),
        (["--budget", "2ms", "--ray-address", "head"], "ray_address must be HOST:PORT"),
    ],
)
def test_bad_search_input_exits_2(home, tmp_path, args, message) -> None:
    result = search(home, *args, "--out", str(tmp_path / "run"), cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert message in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "run").exists()


def test_loss_breaks_accuracy_ties_without_reordering_accuracies() -> None:
    step = 1 / 179  # one image of the default (digits-affine) validation split
    assert ranking_score(0.9, 0.2) > ranking_score(0.9, 0.3)
    assert ranking_score(0.9 + step, 50.0) > ranking_score(0.9, 0.0)


# Runs `nasvit search` with every exported candidate's timed calls 2 s slower (the real
# onnxruntime measurement plus a fixed delay), so none measures within the budget whatever this
# machine's noise: the CLI must refuse rather than name an over-budget subnet the best.
SLOWED_SEARCH = """
import sys
from pathlib import Path

from nasvit.latency_db import Measurement, OnnxRuntimeProfiler

measure = OnnxRuntimeProfiler.measure


def slowed(self, model, input_shape=None):
    measurement = measure(self, model, input_shape)
    if isinstance(model, Path) and model.name.startswith("candidate-"):
        return Measurement.from_sessions([[run + 2000.0 for run in measurement.runs_ms]])
    return measurement


OnnxRuntimeProfiler.measure = slowed
from nasvit.cli import main

main(sys.argv[1:])
"""


def test_a_search_whose_candidates_all_measure_over_the_budget_exits_2(
    home, checkpoint, tmp_path
) -> None:
    out = tmp_path / "run"
    env = {**os.environ, "NASVIT_HOME": str(home)}
    env.pop("NASVIT_DATABASE_URL", None)
    result = subprocess.run(
        [sys.executable, "-c", SLOWED_SEARCH, "search", "--space", "efficientformer"]
        + ["--budget", "500ms", "--ckpt", str(checkpoint), "--evaluations", "4"]
        + ["--out", str(out)],
        capture_output=True,
        text=True,
        timeout=900,
        env=env,
    )
    assert result.returncode == 2, result.stderr
    assert (
        "none of the 4 candidates predicted within 500 ms measured within it "
        "end to end; the closest, r32_"
    ) in " ".join(result.stderr.split())
    assert "Traceback" not in result.stderr
    assert not (out / "best.onnx").exists() and not list(out.glob("candidate-*"))

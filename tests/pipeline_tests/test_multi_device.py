"""One search, several devices: two local devices (one and two onnxruntime threads) with their
own real latency tables, measured with the quick protocol and validated into a temporary
database; a small untrained supernet on digits. The devices share accuracy evaluations and
each gets its own front, chosen subnet measured end to end, and artifacts."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

import nasvit
from nasvit.errors import NasvitError
from nasvit.search_spaces import Architecture
from nasvit.searching.budget import parse_budget
from nasvit.searching.request import DeviceTarget, SearchRequest, SearchResult
from nasvit.settings import Settings

from nasvit_testing.toy_spaces import small_efficientformer

SHAPE: dict[str, Any] = {"num_classes": 10, "in_channels": 1}
NASVIT = str(Path(sys.executable).parent / "nasvit")
ARTIFACTS = ["best.onnx", "best.json", "report.json", "pareto.csv", "trials.csv", "trials.jsonl"]


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A home whose database holds validated tables of the small space for devices "one"
    (1 thread) and "two" (2 threads)."""
    from nasvit.evaluation.latency import resolve_device, validate_table
    from nasvit.latency_db import LatencyStore, MeasurementProtocol, build_table

    home = tmp_path_factory.mktemp("multi-home")
    space = small_efficientformer()
    store = LatencyStore.open(Settings(home=home).resolved_database_url)
    quick = MeasurementProtocol.quick()
    for name, threads in (("one", 1), ("two", 2)):
        device, profiler = resolve_device(store, name, threads=threads, protocol=quick)
        build_table(store, profiler, device, space.enumerate_blocks(**SHAPE))
        validate_table(space, store, profiler, device, 4, network_protocol=quick, **SHAPE)
    store.close()
    return home


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import torch

    from nasvit.training.checkpoint import save_supernet

    space = small_efficientformer()
    torch.manual_seed(0)
    supernet = space.build_supernet(**SHAPE)
    return save_supernet(tmp_path_factory.mktemp("ckpt") / "tiny.pt", space, supernet)


def predicted(home: Path, arch: Architecture, device: str) -> float:
    prediction = nasvit.predict_latency(
        arch, small_efficientformer(), device=device, settings=Settings(home=home), **SHAPE
    )
    return prediction.latency_ms


class CountingExecutor:
    """The real executor, recording every architecture it is asked to evaluate."""

    def __init__(self, inner: Any, space: Any) -> None:
        self.inner, self.space = inner, space
        self.workers = inner.workers
        self.asked: list[str] = []

    def evaluate(self, archs: list[Architecture]) -> list[tuple[float, float]]:
        self.asked.extend(self.space.short_string(a) for a in archs)
        return list(self.inner.evaluate(archs))

    def report(self) -> dict[str, Any]:
        return dict(self.inner.report())

    def close(self) -> None:
        self.inner.close()


@pytest.mark.slow  # two devices' tables are measured and validated once: a minute or two
def test_two_devices_share_evaluations_and_get_their_own_fronts(
    home: Path, checkpoint: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import nasvit.searching.pipeline as pipeline

    space = small_efficientformer()
    counting: list[CountingExecutor] = []
    real_make_executor = pipeline.make_executor

    def make_executor(*args: Any) -> CountingExecutor:
        counting.append(CountingExecutor(real_make_executor(*args), space))
        return counting[0]

    monkeypatch.setattr(pipeline, "make_executor", make_executor)
    # Device two's budget binds: the largest subnet is predicted over it, the smallest well
    # within it (three times its prediction, so its end-to-end reading fits too).
    two_largest = predicted(home, space.largest(), "two")
    two_budget = 3 * predicted(home, space.smallest(), "two")
    assert two_budget < two_largest, "the space's latency range is too narrow for this test"
    two_text = f"{two_budget * 1000:.0f}us"
    stages: set[str] = set()
    out = tmp_path / "both"
    result = nasvit.search(
        "efficientformer",
        "50ms",
        supernet=checkpoint,
        devices=[{"name": "one"}, {"name": "two", "budget": two_text}],
        settings=Settings(home=home),
        out=out,
        progress=lambda stage, done, total: stages.add(stage),
        evaluations=10,
        batch_size=5,
        measure_top=2,
        seed=3,
    )
    assert set(result.per_device) == {"one", "two"}
    assert result.best == result.per_device["one"].best  # the first device's result
    budgets = {"one": 50.0, "two": parse_budget(two_text)}
    for name, device_result in result.per_device.items():
        assert isinstance(device_result, SearchResult) and len(device_result.trials) == 10
        report, budget = device_result.report, budgets[name]
        assert report["device"] == name and report["budget_ms"] == budget
        # Every trial judged by this device's budget; the chosen one measured end to end on
        # this device within it.
        for trial in device_result.trials:
            assert trial.judged_ms is not None and trial.feasible == (trial.judged_ms <= budget)
        chosen = next(m for m in report["end_to_end"] if m["index"] == device_result.best.index)
        assert chosen["fits_budget"] and chosen["statistic_ms"] <= budget
        assert len(chosen["readings_ms"]) == 3
        assert device_result.best_measured_ms == report["best"]["measured_ms"] > 0
        for artifact in ARTIFACTS:
            assert (out / name / artifact).is_file(), (name, artifact)
        assert not list((out / name).glob("candidate-*.onnx"))
        assert json.loads((out / name / "report.json").read_text()) == report
    # The budgets differ, so do the verdicts: device two refuses what device one accepts.
    one, two = result.per_device["one"], result.per_device["two"]
    assert all(t.feasible for t in one.trials)
    assert not all(t.feasible for t in two.trials)
    assert two.best.judged_ms is not None and two.best.judged_ms <= budgets["two"]
    # Accuracy is evaluated once per architecture, whichever device proposed it: the union of
    # the two searches' candidates, each once (the shared extremes at least are reused).
    [executor] = counting
    union = {t.short for t in one.trials} | {t.short for t in two.trials}
    assert sorted(executor.asked) == sorted(union)
    assert len(executor.asked) < len(one.trials) + len(two.trials)
    accuracy = {t.short: (t.accuracy, t.loss) for t in one.trials}
    for trial in two.trials:
        if trial.short in accuracy:
            assert (trial.accuracy, trial.loss) == accuracy[trial.short]
    # devices.json compares the devices.
    summary = json.loads((out / "devices.json").read_text())
    assert summary["accuracy_evaluations"] == len(union)
    assert [d["name"] for d in summary["devices"]] == ["one", "two"]
    for entry in summary["devices"]:
        device_result = result.per_device[entry["name"]]
        assert entry["budget_ms"] == budgets[entry["name"]] and entry["error"] is None
        assert entry["best"]["short"] == device_result.best.short
        assert entry["best"]["measured_ms"] == device_result.best_measured_ms
        assert entry["front"] == [p.to_dict() for p in device_result.front]
    assert "[two] evaluating candidates" in stages and "[one] measuring end to end" in stages

    # Resumed: nothing is evaluated again, for either device.
    counting.clear()
    again = nasvit.search(
        "efficientformer",
        "50ms",
        supernet=checkpoint,
        devices=[{"name": "one"}, {"name": "two", "budget": two_text}],
        settings=Settings(home=home),
        out=out,
        evaluations=10,
        batch_size=5,
        measure_top=2,
        seed=3,
        resume=True,
    )
    assert counting[0].asked == []
    assert [t.short for t in again.per_device["two"].trials] == [t.short for t in two.trials]


@pytest.mark.slow
def test_a_device_nothing_fits_fails_the_search_after_the_others_are_written(
    home: Path, checkpoint: Path, tmp_path: Path
) -> None:
    from nasvit.errors import NoSubnetFitsError

    out = tmp_path / "one-fails"
    with pytest.raises(NoSubnetFitsError) as raised:
        nasvit.search(
            "efficientformer",
            "50ms",
            supernet=checkpoint,
            devices=[{"name": "two", "budget": "1us"}, {"name": "one"}],
            settings=Settings(home=home),
            out=out,
            evaluations=4,
            batch_size=4,
            measure_top=1,
        )
    message = str(raised.value)
    assert "on two: no architecture found meets 1 us" in message
    assert "the results of one are written" in message
    summary = {d["name"]: d for d in json.loads((out / "devices.json").read_text())["devices"]}
    assert summary["two"]["best"] is None and "meets 1 us" in summary["two"]["error"]
    assert summary["one"]["error"] is None and summary["one"]["best"]["measured_ms"] > 0
    assert (out / "one" / "best.onnx").is_file() and not (out / "two" / "best.onnx").exists()
    assert (out / "two" / "trials.jsonl").is_file()  # its trials stay, for a resume


@pytest.mark.slow
def test_the_cli_searches_several_devices_and_prints_a_front_each(
    home: Path, checkpoint: Path, tmp_path: Path
) -> None:
    env = {**os.environ, "NASVIT_HOME": str(home)}
    env.pop("NASVIT_DATABASE_URL", None)
    out = tmp_path / "cli"
    args = ["--space", "efficientformer", "--budget", "50ms", "--ckpt", str(checkpoint)]
    run = subprocess.run(
        [NASVIT, "search", *args, "--devices", "one,two=40ms", "--evaluations", "6"]
        + ["--out", str(out)],
        capture_output=True,
        text=True,
        timeout=900,
        env=env,
    )
    assert run.returncode == 0, run.stderr
    text = " ".join(run.stdout.split())
    assert "one: Pareto front (6 evaluations)" in text
    assert "two: Pareto front (6 evaluations)" in text
    assert "one best:" in text and "two best:" in text and "under 40 ms" in text
    summary = json.loads((out / "devices.json").read_text())
    assert [(d["name"], d["budget_ms"]) for d in summary["devices"]] == [
        ("one", 50.0),
        ("two", 40.0),
    ]
    assert (out / "one" / "best.onnx").is_file() and (out / "two" / "best.onnx").is_file()
    # Again without --resume: refused; with it and --json: devices.json on stdout.
    again = subprocess.run(
        [NASVIT, "search", *args, "--devices", "one,two=40ms", "--evaluations", "6"]
        + ["--out", str(out)],
        capture_output=True,
        text=True,
        timeout=900,
        env=env,
    )
    assert again.returncode == 2 and "--resume" in again.stderr
    resumed = subprocess.run(
        [NASVIT, "search", *args, "--devices", "one,two=40ms", "--evaluations", "6"]
        + ["--out", str(out), "--resume", "--json"],
        capture_output=True,
        text=True,
        timeout=900,
        env=env,
    )
    assert resumed.returncode == 0, resumed.stderr
    printed = json.loads(resumed.stdout)
    assert printed["accuracy_evaluations"] == 0  # every trial was resumed, none evaluated
    assert [d["name"] for d in printed["devices"]] == ["one", "two"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--device", "one", "--devices", "two"], "device and devices together"),
        (["--devices", "one=,two"], "cannot read --devices"),
        (["--devices", "one,ONE"], "named twice"),
        (["--devices", "one=0ms"], "must be positive"),
        (["--devices", ",".join(f"d{i}" for i in range(9))], "at most 8 devices"),
        (["--devices", "a/b"], "cannot name an output folder"),
        (["--devices", "one", "--server", "http://127.0.0.1:9"], "POST /api/v1/searches"),
    ],
)
def test_bad_devices_exit_2_with_one_line(tmp_path: Path, args: list[str], message: str) -> None:
    env = {**os.environ, "NASVIT_HOME": str(tmp_path / "home")}
    env.pop("NASVIT_DATABASE_URL", None)
    run = subprocess.run(
        [NASVIT, "search", "--space", "efficientformer", "--budget", "2ms", *args]
        + ["--out", str(tmp_path / "run")],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert run.returncode == 2, run.stderr
    assert message in run.stderr and "Traceback" not in run.stderr
    assert len(run.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "run").exists()


def test_a_request_reads_devices_and_refuses_bad_ones() -> None:
    request = SearchRequest.from_mapping(
        {
            "space": "efficientformer",
            "budget": "2ms@p90",
            "devices": [{"name": "pi", "budget": "20ms"}, {"name": "jetson", "budget": "5ms@p99"}]
            + [{"name": "box"}],
        }
    )
    assert request.devices == (
        DeviceTarget("pi", 20.0),
        DeviceTarget("jetson", 5.0, 99),
        DeviceTarget("box", 2.0),
    )
    pi, jetson, box = (request.for_device(t) for t in request.devices)
    assert (pi.device, pi.budget_ms, pi.budget_percentile, pi.out) == (
        "pi",
        20.0,
        90,  # the search's percentile, where the device's budget states none
        Path("nasvit-search/pi"),
    )
    assert (jetson.budget_ms, jetson.budget_percentile, box.budget_ms) == (5.0, 99, 2.0)
    assert pi.devices == ()
    base = {"space": "efficientformer", "budget": "2ms"}
    cases: list[tuple[dict[str, Any], str]] = [
        ({"device": "pi", "devices": [{"name": "jetson"}]}, "not both"),
        ({"devices": [{"name": "pi"}, {"name": "PI"}]}, "named twice"),
        ({"devices": [{"name": ".."}]}, "cannot name an output folder"),
        ({"devices": [{"name": "devices.json"}]}, "cannot be called"),
        ({"devices": [{"name": "pi", "budget": -1}]}, "positive"),
        ({"devices": [{"name": "pi", "budget": "1ms@p33"}]}, "percentile"),
        ({"devices": [{"name": "pi", "bugdet": "1ms"}]}, "did you mean 'budget'"),
        ({"devices": "pi"}, "must be a non-empty list"),
        ({"devices": []}, "must be a non-empty list"),
        ({"devices": [{"budget": "2ms"}]}, "needs a name"),
        ({"devices": [{"name": f"d{i}"} for i in range(9)]}, "at most 8"),
        (
            {"budget_confidence": 0.9, "devices": [{"name": "pi", "budget": "2ms@p90"}]},
            "device pi: state a budget at a confidence or at a percentile, not both",
        ),
    ]
    for bad, message in cases:
        with pytest.raises(NasvitError, match=message):
            SearchRequest.from_mapping({**base, **bad})

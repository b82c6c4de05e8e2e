"""The search's latency decisions on a small real space: candidates scored with the table's
error-aware predictions (a budget at a confidence judges the upper bound), and the chosen
subnet picked by measuring exports with real onnxruntime until one meets the budget.

Whole-network timings of these tiny subnets (0.1-0.3 ms here) differ by less than this
machine's noise, so a budget set between two of them would not decide the same way twice.
Where a test needs a candidate over the budget, :class:`SlowedProfiler` adds a fixed delay to
every timed call of chosen exported files: the measurement is still real, and the decision it
drives is deterministic.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from nasvit.errors import NasvitError, NoSubnetFitsError
from nasvit.evaluation.ranking import ranking_score
from nasvit.guarantees import Guarantee
from nasvit.latency_db import Measurement, MeasurementProtocol, OnnxRuntimeProfiler
from nasvit.search_spaces import Architecture, SearchSpace
from nasvit.searching.budget import format_ms
from nasvit.searching.request import SearchRequest, Trial

from nasvit_testing.toy_spaces import small_efficientformer

SHAPE_ARGS = {"num_classes": 10, "in_channels": 1}
# Far above what any of these subnets measures (0.1-0.3 ms), far below a slowed one.
BUDGET_MS = 50.0
DELAY_MS = 100.0


class SlowedProfiler(OnnxRuntimeProfiler):
    """The real onnxruntime profiler; every timed call of a file named in ``slowed`` counts
    ``DELAY_MS`` more. Records the name of every file it measures and what it returned."""

    def __init__(self, slowed: set[str] | None = None) -> None:
        super().__init__(protocol=MeasurementProtocol.quick())
        self.slowed = slowed if slowed is not None else set()
        self.log: list[tuple[str, Measurement]] = []  # shared with with_protocol's copies

    def measure(self, model: Any, input_shape: tuple[int, ...] | None = None) -> Measurement:
        measurement = super().measure(model, input_shape)
        if isinstance(model, (str, Path)):
            name = Path(model).name
            if name in self.slowed:
                delayed = [[run + DELAY_MS for run in measurement.runs_ms]]
                measurement = Measurement.from_sessions(delayed)
            self.log.append((name, measurement))
        return measurement

    def measured_files(self) -> list[str]:
        return list(dict.fromkeys(name for name, _ in self.log))


@pytest.fixture(scope="module")
def model() -> Any:
    from nasvit.searching.stages import PreparedSupernet

    space = small_efficientformer()
    torch.manual_seed(0)
    return PreparedSupernet(space, space.build_supernet(**SHAPE_ARGS), "digits", 0)


@pytest.fixture(scope="module")
def evaluator(model: Any) -> Any:
    from nasvit.data import load_dataset
    from nasvit.evaluation.evaluator import SubnetEvaluator

    return SubnetEvaluator(model.space, model.supernet, load_dataset("digits"), "val")


def distinct_archs(space: SearchSpace, n: int) -> list[Architecture]:
    rng, found = np.random.default_rng(0), dict[str, Architecture]()
    while len(found) < n:
        arch = space.sample(rng)
        found.setdefault(space.short_string(arch), arch)
    return list(found.values())


@pytest.fixture(scope="module")
def tables(model: Any, tmp_path_factory: pytest.TempPathFactory) -> Any:
    """(device, unvalidated table, validated table) of the space, profiled for real (quick
    protocol, warm timings only). The validation's truths are synthetic, the sum model times
    0.94-1.08: these tests need intervals on both sides of the point, not a good model."""
    from nasvit.evaluation.latency import resolve_device
    from nasvit.latency_db import LatencyStore, LatencyTable, build_table
    from nasvit.latency_db.error_model import ValidationSample, fit_error_model
    from nasvit.latency_db.records import ErrorStats, ValidationRecord
    from nasvit.nn.blocks import BLOCK_KEY_SCHEMA

    space = model.space
    store = LatencyStore.open(f"sqlite:///{tmp_path_factory.mktemp('db') / 'latency.db'}")
    device, _ = resolve_device(store)
    profiler = OnnxRuntimeProfiler(protocol=MeasurementProtocol.quick())
    build_table(store, profiler, device, space.enumerate_blocks(**SHAPE_ARGS), cold_min_bytes=None)
    plain = LatencyTable.load(store, device.id, space.identity)
    samples = []
    for i, arch in enumerate(distinct_archs(space, 40)):
        blocks = space.lower(arch, **SHAPE_ARGS)
        truth = plain.predict(blocks).latency_ms * (0.94 + 0.015 * ((7 * i) % 10))
        readings = (0.98 * truth, truth, 1.02 * truth)
        samples.append(
            ValidationSample(
                space.short_string(arch),
                plain.inputs(blocks),
                readings,
                calls_ms=tuple(r * f for r in readings for f in (0.9, 1.0, 1.3)),
                judged=i % 2 == 1,
            )
        )
    error_model = fit_error_model(samples, device.fingerprint.cache_bytes, plain.overhead_ms)
    record = ValidationRecord(
        space=space.identity,
        key_schema=BLOCK_KEY_SCHEMA,
        raw=ErrorStats(n=len(samples), mape=0.0, within_5=1.0, within_10=1.0),
        details={"error_model": error_model.to_dict()},
    )
    store.add_validation(device.id, record)
    validated = LatencyTable.load(store, device.id, space.identity)
    assert validated.validated and not plain.validated
    return device, plain, validated


def ranked_trials(space: SearchSpace, n: int, *, smallest: bool = False) -> list[Trial]:
    """``n`` feasible trials ranked by index (trial 0 the most accurate), predicted latency
    growing with accuracy so every one is on the Pareto front; distinct architectures, or all
    the space's smallest (the cheapest to export)."""
    archs = [space.smallest()] * n if smallest else distinct_archs(space, n)
    trials = []
    for i, arch in enumerate(archs):
        accuracy = 0.9 - 0.01 * i
        trials.append(
            Trial(
                index=i,
                arch=arch.to_dict(),
                short=space.short_string(arch),
                accuracy=accuracy,
                loss=0.3,
                score=ranking_score(accuracy, 0.3),
                latency_ms=1.0 - 0.01 * i,
                feasible=True,
            )
        )
    return trials


def request(out: Path, budget_ms: float = BUDGET_MS, **options: Any) -> SearchRequest:
    return SearchRequest("efficientformer", budget_ms, out=out, measure_top=1, **options)


# ---------------------------------------------------------------------- the decision
def test_the_decision_walks_down_past_candidates_measured_over_the_budget(
    model, evaluator, tables, tmp_path
) -> None:
    from nasvit.onnx_export import run_onnx
    from nasvit.searching.stages import (
        PreparedTable,
        SearchLoopOutcome,
        check_end_to_end,
        summarise,
        write_artifacts,
    )

    space = model.space
    trials = ranked_trials(space, 5)
    # Intervals on two trials: the report says whether each measured median lies inside.
    trials[0] = Trial(**{**asdict(trials[0]), "low_ms": 0.5, "high_ms": 1.5})
    trials[2] = Trial(**{**asdict(trials[2]), "low_ms": 0.0, "high_ms": 1000.0})
    profiler = SlowedProfiler({"candidate-0.onnx", "candidate-1.onnx"})
    check = check_end_to_end(request(tmp_path), model, evaluator, profiler, trials)

    # The two best-ranked measure over the budget: the third is chosen, the walk stops there,
    # and the front's fastest point (trial 4, measure_top=1) is measured for the report.
    assert check.best.index == 2
    assert list(check.measurements) == [0, 1, 2, 4]
    assert [m.fits_budget for m in check.measurements.values()] == [False, False, True, True]
    assert profiler.measured_files() == [f"candidate-{i}.onnx" for i in (0, 1, 2, 4)]
    assert all(len(m.readings_ms) == 3 for m in check.measurements.values())
    assert check.measurements[0].statistic_ms > DELAY_MS > BUDGET_MS
    assert check.measurements[2].statistic_ms < BUDGET_MS
    # best.onnx is the chosen subnet's export; the other exports are gone.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best.onnx"]
    arch = space.validate(trials[2].arch)
    x = np.random.default_rng(1).random(space.input_shape(arch, 1, 1)).astype(np.float32)
    with torch.no_grad():
        expected = evaluator.subnet(arch)(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(run_onnx(tmp_path / "best.onnx", x), expected, atol=1e-4)

    device, _, table = tables
    latency = PreparedTable(device, profiler, table)
    result = summarise(
        request(tmp_path),
        model,
        latency,
        SearchLoopOutcome(trials, 0, {"where": "fake"}),
        check,
        {"total_s": 1.0},
    )
    write_artifacts(tmp_path, space, result)
    report = json.loads((tmp_path / "report.json").read_text())
    entries = report["end_to_end"]
    assert [e["index"] for e in entries] == [0, 1, 2, 4]
    for entry, measurement in zip(entries, check.measurements.values(), strict=True):
        readings = list(measurement.readings_ms)
        assert entry["readings_ms"] == readings
        assert entry["median_ms"] == pytest.approx(np.median(readings))
        assert (entry["min_ms"], entry["max_ms"]) == (min(readings), max(readings))
        assert entry["statistic_ms"] == measurement.statistic_ms
        assert entry["fits_budget"] == (entry["statistic_ms"] <= BUDGET_MS)
    assert [e["inside_interval"] for e in entries] == [False, None, True, None]
    best = report["best"]
    assert best["index"] == 2 and best["measured_ms"] == entries[2]["median_ms"]
    assert best["budget"] == {"ms": BUDGET_MS, "confidence": None, "percentile": None}
    blocks = space.lower(arch, **SHAPE_ARGS)
    assert best["expected_error"] == table.predict(blocks).describe()
    assert "interval" in best["expected_error"]
    # The front (every trial here) carries the measured readings of the points measured.
    front = {p["index"]: p for p in report["pareto_front"]}
    assert front[4]["measured_readings_ms"] == entries[3]["readings_ms"]
    assert front[3]["measured_readings_ms"] == [] and front[3]["measured_ms"] is None
    assert front[0]["low_ms"] == 0.5 and front[0]["high_ms"] == 1.5


def test_when_nothing_measures_under_the_budget_the_search_says_so(
    model, evaluator, tmp_path
) -> None:
    from nasvit.searching.stages import MAX_END_TO_END_EXPORTS, check_end_to_end

    count = MAX_END_TO_END_EXPORTS + 1
    trials = ranked_trials(model.space, count, smallest=True)
    profiler = SlowedProfiler({f"candidate-{i}.onnx" for i in range(count)})
    with pytest.raises(NoSubnetFitsError) as raised:
        check_end_to_end(request(tmp_path), model, evaluator, profiler, trials)
    # Bounded: the 20 best-ranked were exported and measured, the 21st never was.
    assert profiler.measured_files() == [f"candidate-{i}.onnx" for i in range(20)]
    statistics: dict[str, list[float]] = {}
    for name, measurement in profiler.log:
        statistics.setdefault(name, []).append(measurement.median_ms)
    closest_file = min(statistics, key=lambda name: np.median(statistics[name]))
    closest = trials[int(closest_file.removeprefix("candidate-").removesuffix(".onnx"))]
    closest_ms = format_ms(float(np.median(statistics[closest_file])))
    assert str(raised.value).startswith(
        "none of the 20 most accurate candidates predicted within 50 ms measured within it "
        f"end to end; the closest, {closest.short}, measured {closest_ms} (median of 3 fresh "
        "sessions) against the budget of 50 ms"
    )
    assert list(tmp_path.iterdir()) == []  # no export left behind, no best.onnx


def test_a_budget_no_candidate_is_judged_within_names_the_fastest(tmp_path) -> None:
    from nasvit.searching.stages import check_end_to_end

    trials = [
        Trial(i, {}, f"arch{i}", 0.5, 1.0, 0.5, point, False, judged_ms=judged)
        for i, (point, judged) in enumerate([(0.9, 1.4), (0.8, 1.2), (0.7, 1.3)])
    ]
    with pytest.raises(NoSubnetFitsError) as raised:
        check_end_to_end(
            request(tmp_path, 1.0, budget_confidence=0.9),
            None,  # type: ignore[arg-type]
            None,  # type: ignore[arg-type]
            None,  # type: ignore[arg-type]
            trials,
        )
    # The fastest by what the budget was compared with (the upper bound), not by the point.
    assert str(raised.value) == (
        "no architecture found meets 1 ms at 90% confidence; the fastest found is arch1 at "
        "800 us (predicted; judged 1.2 ms)"
    )


def test_every_end_to_end_measurement_takes_three_fresh_session_readings(
    model, evaluator, tmp_path
) -> None:
    from nasvit.latency_db import with_protocol
    from nasvit.searching.stages import (
        END_TO_END_READINGS,
        _export,
        measure_end_to_end,
        reading_protocol,
    )

    space = model.space
    trial = ranked_trials(space, 1)[0]
    path = _export(space, evaluator, trial, tmp_path)
    shape = space.input_shape(space.validate(trial.arch), 1, 1)
    profiler = SlowedProfiler({path.name})
    readings = with_protocol(profiler, reading_protocol())
    assert readings.protocol.sessions == 1 and readings.log is profiler.log

    def measure(budget_ms: float, guarantee: Guarantee) -> Any:
        before = len(profiler.log)
        measured = measure_end_to_end(readings, path, shape, trial, budget_ms, guarantee)
        return measured, [m for _, m in profiler.log[before:]]

    # Far from the budget or near it, the measured latency is the median of three readings.
    for budget_ms in (1000.0, 110.0):
        measured, taken = measure(budget_ms, Guarantee())
        assert len(taken) == END_TO_END_READINGS == 3
        assert measured.readings_ms == tuple(m.median_ms for m in taken)
        assert measured.statistic_ms == pytest.approx(np.median(measured.readings_ms))
    # A percentile budget compares that percentile of every timed call of the readings.
    tail, taken = measure(1000.0, Guarantee(percentile=90))
    calls = [call for m in taken for call in m.runs_ms]
    assert len(taken) == 3 and tail.statistic_ms == pytest.approx(np.percentile(calls, 90))
    assert tail.statistic_ms >= tail.median_ms


# ---------------------------------------------------------------------- scoring
def ignore(stage: str, done: int, total: int) -> None:
    pass


class FakeExecutor:
    """Scores an architecture by its widths (wider: more accurate)."""

    workers = 1

    def evaluate(self, archs: list[Architecture]) -> list[tuple[float, float]]:
        return [(sum(a["widths"]) / 1000, 1.0 / sum(a["depths"])) for a in archs]

    def report(self) -> dict[str, Any]:
        return {"where": "fake", "workers": 1}


def test_a_budget_at_a_confidence_judges_the_upper_bound(
    model, tables, tmp_path, monkeypatch
) -> None:
    from nasvit.searching import stages

    space, (_, _, table) = model.space, tables
    smallest = stages.TableLatency(table, model, Guarantee(0.9)).estimate(space.smallest())
    assert smallest.low_ms is not None and smallest.high_ms is not None
    assert smallest.low_ms < smallest.latency_ms < smallest.judged_ms
    # Between the smallest subnet's prediction and its upper bound at 90%.
    budget = (smallest.latency_ms + smallest.judged_ms) / 2
    told: list[float] = []
    real_controller = stages.make_controller

    def recording_controller(*args: Any, **kwargs: Any) -> Any:
        controller = real_controller(*args, **kwargs)
        tell = controller.tell

        def recording_tell(arch: Architecture, score: float, latency_ms: float) -> None:
            told.append(latency_ms)
            tell(arch, score, latency_ms)

        controller.tell = recording_tell
        return controller

    monkeypatch.setattr(stages, "make_controller", recording_controller)

    def search(confidence: float | None, out: Path) -> list[Trial]:
        searched = SearchRequest(
            "efficientformer", budget, controller="random", evaluations=2, out=out,
            budget_confidence=confidence,
        )  # fmt: skip
        store = stages.open_trial_store(searched, space, f"sqlite:///{out / 'trials.db'}")
        estimates = stages.TableLatency(table, model, searched.guarantee)
        loop = stages.run_search_loop(searched, space, FakeExecutor(), estimates, store, ignore)
        return loop.trials

    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
    at_confidence = search(0.9, tmp_path / "a")
    assert at_confidence[1].short == space.short_string(space.smallest())
    point = at_confidence[1]
    assert point.latency_ms == pytest.approx(smallest.latency_ms) and point.latency_ms < budget
    assert point.judged_ms == pytest.approx(smallest.judged_ms) and point.judged_ms > budget
    assert (point.low_ms, point.high_ms) == (smallest.low_ms, smallest.high_ms)
    assert not point.feasible
    assert told == [t.judged_ms for t in at_confidence]  # controllers judge what the trial did
    plain = search(None, tmp_path / "b")[1]
    assert plain.feasible and plain.judged_ms == plain.latency_ms


def test_a_percentile_budget_judges_the_predicted_percentile_of_calls(model, tables) -> None:
    from nasvit.searching.stages import TableLatency

    space, (_, _, table) = model.space, tables
    arch = space.largest()
    estimate = TableLatency(table, model, Guarantee(percentile=90)).estimate(arch)
    blocks = space.lower(arch, **SHAPE_ARGS)
    expected = table.judged_many([blocks], Guarantee(percentile=90))[0]
    assert estimate.judged_ms == pytest.approx(expected)
    assert estimate.judged_ms > estimate.latency_ms  # the synthetic calls spread upwards


def test_a_guarantee_needs_a_validated_table(model, tables) -> None:
    from nasvit.searching.stages import TableLatency

    _, plain, _ = tables
    with pytest.raises(NasvitError, match="needs a validated latency table") as raised:
        TableLatency(plain, model, Guarantee(confidence=0.9))
    assert raised.value.argument == "validate_networks"
    estimate = TableLatency(plain, model, Guarantee()).estimate(model.space.largest())
    assert estimate.low_ms is None and estimate.high_ms is None
    assert estimate.judged_ms == estimate.latency_ms


def test_trials_stored_before_intervals_existed_resume(model, tables, tmp_path) -> None:
    from nasvit.searching import stages

    space, (_, _, table) = model.space, tables
    # Stored infeasible under an earlier budget: this search's budget judges them again.
    old = [
        {k: v for k, v in asdict(t).items() if k not in {"low_ms", "high_ms", "judged_ms"}}
        | {"feasible": False}
        for t in ranked_trials(space, 2)
    ]
    (tmp_path / stages.TRIALS_FILE).write_text("".join(json.dumps(r) + "\n" for r in old))
    resumed = SearchRequest(
        "efficientformer", 1e6, controller="random", evaluations=3, out=tmp_path, resume=True,
        budget_confidence=0.9,
    )  # fmt: skip
    url = f"sqlite:///{tmp_path / 'trials.db'}"
    store = stages.open_trial_store(resumed, space, url)
    estimates = stages.TableLatency(table, model, resumed.guarantee)
    loop = stages.run_search_loop(resumed, space, FakeExecutor(), estimates, store, ignore)
    assert loop.resumed == 2 and len(loop.trials) == 3
    for trial, record in zip(loop.trials, old, strict=False):
        assert trial.short == record["short"] and trial.score == record["score"]
        estimate = estimates.estimate(space.validate(trial.arch))
        assert (trial.latency_ms, trial.judged_ms) == (estimate.latency_ms, estimate.judged_ms)
        assert trial.low_ms == estimate.low_ms and trial.feasible
    # The old records were imported into the database as they were, and load from there too.
    assert [Trial(**r) for r in store.load()[:2]] == [Trial(**r) for r in old]

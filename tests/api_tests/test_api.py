"""The Python API (nasvit.search, nasvit.profile, nasvit.predict_latency) and the search stages,
in-process.

Searches stay small, as the pipeline and service tests keep them: an untrained supernet over a
restricted slice of efficientformer at resolution 32, and this machine's latency table for its
blocks measured once with the quick protocol and validated into a temporary nasvit database.
Every call gets ``Settings(home=...)``; no environment variable is set.
"""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import nasvit
from nasvit.errors import DeviceNotLocalError, NasvitError, OutputExistsError
from nasvit.search_spaces import Architecture, SearchSpace, get_space
from nasvit.searching.request import FrontPoint, SearchRequest, SearchResult, Trial
from nasvit.settings import Settings

from nasvit_testing.toy_spaces import small_efficientformer

SHAPE = {"num_classes": 10, "in_channels": 1}  # digits: what the checkpoint's supernet takes
BUDGET_MS = 50.0  # every candidate of the tiny space fits: the front is what is checked


def tiny_space() -> SearchSpace:
    return small_efficientformer()


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A nasvit home whose database holds the tiny space's validated latency table, and whose
    default efficientformer supernet is the tiny untrained one (so a search without a
    checkpoint loads it instead of training)."""
    import torch

    from nasvit.evaluation.latency import resolve_device, validate_table
    from nasvit.latency_db import LatencyStore, MeasurementProtocol, build_table, make_profiler
    from nasvit.training.checkpoint import save_supernet
    from nasvit.training.default_supernet import default_supernet_path, recipe_for

    home = tmp_path_factory.mktemp("api-home")
    space = tiny_space()
    torch.manual_seed(0)
    supernet = space.build_supernet(**SHAPE)
    path = default_supernet_path("efficientformer", home, recipe_for("efficientformer"))
    path.parent.mkdir(parents=True)
    save_supernet(path, space, supernet)
    store = LatencyStore.open(Settings(home=home).resolved_database_url)
    device, _ = resolve_device(store)  # the device a search resolves when none is named
    quick = MeasurementProtocol.quick()
    profiler = make_profiler("onnxruntime", 1, "all", quick)
    build_table(store, profiler, device, space.enumerate_blocks(**SHAPE))
    validate_table(space, store, profiler, device, 4, network_protocol=quick, **SHAPE)
    store.close()
    return home


@pytest.fixture(scope="module")
def checkpoint(home: Path) -> Path:
    from nasvit.training.default_supernet import default_supernet_path, recipe_for

    return default_supernet_path("efficientformer", home, recipe_for("efficientformer"))


def small(**options: Any) -> dict[str, Any]:
    """Options that keep a search to seconds."""
    return {"evaluations": 8, "batch_size": 4, "measure_top": 2, "seed": 3, **options}


# ---------------------------------------------------------------------- nasvit.search
@pytest.mark.slow  # the module's table is measured and validated once: about a minute
def test_search_returns_a_typed_front_and_writes_the_artifacts(home, checkpoint, tmp_path) -> None:
    out = tmp_path / "run"
    stages: set[str] = set()
    result = nasvit.search(
        "efficientformer",
        f"{BUDGET_MS}ms",
        supernet=checkpoint,
        settings=Settings(home=home),
        out=out,
        progress=lambda stage, done, total: stages.add(stage),
        **small(),
    )
    assert isinstance(result, SearchResult) and isinstance(result.best, Trial)
    assert len(result.trials) == 8
    assert stages == {"evaluating candidates", "measuring end to end"}
    assert result.front and all(isinstance(p, FrontPoint) for p in result.front)
    latencies = [p.predicted_ms for p in result.front]
    scores = [next(t.score for t in result.trials if t.index == p.index) for p in result.front]
    assert latencies == sorted(latencies) and scores == sorted(scores)
    assert result.best.feasible and result.best.latency_ms <= BUDGET_MS
    assert result.best_measured_ms == result.report["best"]["measured_ms"] > 0
    for point in result.front:
        trial = result.trials[point.index]
        assert (point.short, point.arch, point.accuracy) == (
            trial.short,
            trial.arch,
            trial.accuracy,
        )
    # report.json and pareto.csv hold the points as to_dict() gives them.
    report = json.loads((out / "report.json").read_text())
    assert (
        report["pareto_front"]
        == [p.to_dict() for p in result.front]
        == result.report["pareto_front"]
    )
    with (out / "pareto.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert list(rows[0]) == list(result.front[0].to_dict())
    assert [int(row["index"]) for row in rows] == [p.index for p in result.front]
    assert (out / "best.onnx").is_file() and not list(out.glob("candidate-*.onnx"))
    assert json.loads((out / "best.json").read_text())["short"] == result.best.short
    assert "restrictions" not in report["request"]  # the report's keys are as before


@pytest.mark.slow  # the module's table is measured and validated once: about a minute
def test_a_restricted_space_is_searched_only_within_its_restrictions(home) -> None:
    restrictions = {"widths": [[16], [32], [64, 96], [128]], "depths": [[1], [1], [1, 2], [1]]}
    space = get_space("efficientformer").restrict(resolution=[32], vit_num=[0], **restrictions)
    # No checkpoint: the default supernet (here the tiny one planted in home) is searched within
    # the space's restrictions. Its table was validated on the tiny space, not on this one.
    result = nasvit.search(
        space, BUDGET_MS, settings=Settings(home=home), **small(validate_networks=0)
    )
    assert {space.short_string(space.validate(t.arch)) for t in result.trials} == {
        t.short for t in result.trials
    }
    assert all(space.contains(t.arch) for t in result.trials)
    assert len(result.trials) == min(8, space.size())
    assert all(space.contains(p.arch) for p in result.front) and space.contains(result.best.arch)
    assert result.report["restrictions"]["widths"] == restrictions["widths"]
    # Without `out`, each search gets a fresh folder under the home.
    out = Path(result.report["request"]["out"])
    assert out.parent == home / "searches" and (out / "best.onnx").is_file()


@pytest.mark.slow  # the module's table is measured and validated once: about a minute
def test_a_space_argument_must_match_the_checkpoints_space(home, checkpoint, tmp_path) -> None:
    other = tiny_space().restrict(vit_num=[0])
    with pytest.raises(NasvitError, match="is for efficientformer\\[.*search the checkpoint's"):
        nasvit.search(other, "2ms", supernet=checkpoint, settings=Settings(home=home), out=tmp_path)
    with pytest.raises(NasvitError, match="not for the space asked for"):
        nasvit.search(
            get_space("efficientformer"), "2ms", supernet=checkpoint, settings=Settings(home=home)
        )


@pytest.mark.parametrize(
    ("space", "budget", "options", "message"),
    [
        ("efficientformr", "2ms", {}, "unknown search space 'efficientformr' (did you mean"),
        ("efficientformer", "2", {}, "cannot read latency budget '2'"),
        ("efficientformer", "two ms", {}, "cannot read latency budget 'two ms'"),
        ("efficientformer", -1.0, {}, "latency budget must be positive"),
        ("efficientformer", "2ms", {"controller": "nsga3"}, "unknown controller 'nsga3'"),
        ("efficientformer", "2ms", {"evaluations": 0}, "evaluations must be at least 1, got 0"),
        ("efficientformer", "2ms", {"workers": 300}, "workers must be at most 256"),
        ("efficientformer", "2ms", {"evaluatons": 5}, "unknown search option 'evaluatons'"),
        ("efficientformer", "2ms", {"budget_ms": 2.0}, "takes budget_ms as its argument budget"),
        (42, "2ms", {}, "space must be a name or a SearchSpace, got int"),
    ],
)
def test_bad_input_raises_a_helpful_error_before_any_work(
    tmp_path: Path, space: Any, budget: Any, options: dict[str, Any], message: str
) -> None:
    with pytest.raises(NasvitError) as raised:
        nasvit.search(space, budget, settings=Settings(home=tmp_path), **options)
    assert message in str(raised.value)
    assert list(tmp_path.iterdir()) == []  # nothing was written, not even a database


def test_a_folder_holding_a_search_is_refused_without_naming_cli_flags(tmp_path: Path) -> None:
    (tmp_path / "trials.jsonl").write_text("")
    with pytest.raises(OutputExistsError) as raised:
        nasvit.search("efficientformer", "2ms", settings=Settings(home=tmp_path), out=tmp_path)
    assert raised.value.path == tmp_path and "--" not in str(raised.value)
    from nasvit.cli.messages import cli_message

    assert "pass --resume or choose another --out" in cli_message(raised.value)
    device = DeviceNotLocalError("phone", ["threads=4 (here 1)"])
    assert "--" not in str(device) and "omit --device" in cli_message(device)


# ---------------------------------------------------------------------- profile / predict
def test_profile_measures_what_is_missing_and_predictions_come_from_that_table(
    tmp_path: Path,
) -> None:
    from nasvit.latency_db import LatencyStore, LatencyTable, Prediction

    settings = Settings(home=tmp_path)
    space = tiny_space().restrict(
        widths=[[16], [32], [64], [128]], depths=[[1], [1], [1], [1]], vit_num=[0]
    )
    arch = space.sample(np.random.default_rng(0))
    with pytest.raises(
        NasvitError, match=r"lacks \d+ of its blocks .*nasvit\.profile\("
    ) as lacking:
        nasvit.predict_latency(arch, space, settings=settings, **SHAPE)
    # The message holds the call that measures them, as Python.
    call = str(lacking.value).split("measure them with ", 1)[1]
    assert call.startswith("nasvit.profile(get_space('efficientformer').restrict(**{")
    assert call.endswith(", num_classes=10, in_channels=1)")
    calls: list[tuple[str, int, int]] = []
    first = nasvit.profile(
        space, settings=settings, progress=lambda *call: calls.append(call), **SHAPE
    )
    blocks = len({b.key for b in space.enumerate_blocks(**SHAPE)})
    assert isinstance(first, nasvit.ProfileSummary) and first.space == space.identity
    assert (first.requested, first.measured, first.already_present) == (blocks, blocks, 0)
    assert calls[-1] == ("profiling blocks", blocks, blocks)
    again = nasvit.profile(space, settings=settings, **SHAPE)
    assert (again.measured, again.already_present, again.device) == (0, blocks, first.device)

    prediction = nasvit.predict_latency(arch, space, settings=settings, **SHAPE)
    store = LatencyStore.open(settings.resolved_database_url)
    table = LatencyTable.load(store, first.device_id, space.identity)
    store.close()
    expected = table.predict(space.lower(arch, **SHAPE))
    assert isinstance(prediction, Prediction) and prediction == expected
    assert prediction.latency_ms > 0 and prediction.expected_error is None  # never validated
    # No interval and no error figure: the error field says the table was never validated.
    assert not prediction.validated and (prediction.low_ms, prediction.high_ms) == (None, None)
    assert "never validated" in prediction.error_text and "%" not in prediction.describe()
    # The same architecture as a dict, as its short string, and on the named device.
    for same in (arch.to_dict(), space.short_string(arch)):
        assert nasvit.predict_latency(same, space, settings=settings, **SHAPE) == expected
    assert nasvit.predict_latency(arch, space, first.device, settings=settings, **SHAPE) == (
        expected
    )
    # Another head (profile's default: 1000 classes, 3 channels) was never measured.
    with pytest.raises(NasvitError, match=f"device='{first.device}'\\)$"):
        nasvit.predict_latency(arch, space, settings=settings)


@pytest.mark.slow  # uses the module's validated table
def test_predictions_of_a_validated_table_carry_intervals(home) -> None:
    from nasvit.evaluation.latency import resolve_device
    from nasvit.latency_db import LatencyStore, LatencyTable

    settings = Settings(home=home)
    space = tiny_space()
    arch = space.largest()
    prediction = nasvit.predict_latency(arch, space, settings=settings, **SHAPE)
    assert prediction.validated and prediction.confidence == 0.9
    assert prediction.low_ms < prediction.high_ms and prediction.band is not None
    assert "90% interval" in prediction.error_text and "never validated" not in (
        prediction.describe()
    )
    store = LatencyStore.open(settings.resolved_database_url)
    table = LatencyTable.load(store, resolve_device(store)[0].id, space.identity)
    store.close()
    band = table.error_model.bands[prediction.band]
    assert prediction.expected_error == band.judged and prediction.model == band.model
    narrower = nasvit.predict_latency(arch, space, settings=settings, confidence=0.5, **SHAPE)
    assert narrower.confidence == 0.5 and narrower.latency_ms == prediction.latency_ms
    assert prediction.low_ms <= narrower.low_ms <= narrower.high_ms <= prediction.high_ms
    assert "50% interval" in narrower.error_text


def test_predict_latency_refuses_bad_input(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path)
    space = tiny_space()
    for confidence in (0.0, 1.0, 1.5):
        with pytest.raises(NasvitError, match="confidence must be between 0 and 1") as raised:
            nasvit.predict_latency(space.largest(), space, settings=settings, confidence=confidence)
        assert raised.value.argument == "confidence"
    with pytest.raises(NasvitError, match="unknown device 'phone'"):
        nasvit.predict_latency(space.largest(), space, "phone", settings=settings)
    with pytest.raises(NasvitError, match="cannot read 'x1'"):
        nasvit.predict_latency("x1", space, settings=settings)
    with pytest.raises(NasvitError, match="unknown search space 'nope'"):
        nasvit.predict_latency({}, "nope", settings=settings)


def test_importing_nasvit_loads_no_heavy_dependency() -> None:
    heavy = ["torch", "ray", "optuna", "onnxruntime", "sqlalchemy", "fastapi"]
    code = (
        "import json, sys, nasvit\n"
        f"print(json.dumps([m for m in {heavy!r} if m in sys.modules]))\n"
        "print(json.dumps([callable(nasvit.search), sorted(nasvit.__all__)]))"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    loaded, (search_is_callable, public) = map(json.loads, run.stdout.splitlines())
    assert loaded == []
    assert search_is_callable and {"search", "profile", "predict_latency"} <= set(public)
    # Importing the search subpackage does not shadow the function.
    import nasvit.searching.pipeline
    from nasvit.api import search

    assert nasvit.search is search and nasvit.searching.pipeline.run_search is not None


# ---------------------------------------------------------------------- stages
class FakeExecutor:
    """Scores an architecture by its widths (wider: more accurate), recording every batch."""

    workers = 1

    def __init__(self) -> None:
        self.batches: list[list[Architecture]] = []

    def evaluate(self, archs: list[Architecture]) -> list[tuple[float, float]]:
        self.batches.append(list(archs))
        return [(sum(a["widths"]) / 1000, 1.0 / sum(a["depths"])) for a in archs]

    def report(self) -> dict[str, Any]:
        return {"where": "fake", "workers": 1}

    def close(self) -> None:
        raise AssertionError("the search loop leaves the executor to its owner")


def fake_latency(arch: Architecture) -> float:
    return sum(w * d for w, d in zip(arch["widths"], arch["depths"], strict=True)) / 1000


def test_the_search_loop_persists_every_batch_and_resumes(tmp_path: Path) -> None:
    from nasvit.searching.stages import TRIALS_FILE, open_trial_store, run_search_loop

    space, url = tiny_space(), f"sqlite:///{tmp_path / 'trials.db'}"
    request = SearchRequest(
        "efficientformer", 0.5, controller="random", evaluations=10, batch_size=4, out=tmp_path
    )
    executor, calls = FakeExecutor(), []
    store = open_trial_store(request, space, url)
    outcome = run_search_loop(
        request, space, executor, fake_latency, store, lambda *call: calls.append(call)
    )
    trials = outcome.trials
    assert outcome.resumed == 0 and [t.index for t in trials] == list(range(10))
    assert [len(batch) for batch in executor.batches] == [4, 4, 2]
    assert [t.short for t in trials[:2]] == [
        space.short_string(space.largest()),
        space.short_string(space.smallest()),
    ]
    assert calls == [("evaluating candidates", n, 10) for n in (4, 8, 10)]
    for trial in trials:
        arch = space.validate(trial.arch)
        assert trial.latency_ms == fake_latency(arch)
        assert trial.feasible == (trial.latency_ms <= 0.5)
    lines = (tmp_path / TRIALS_FILE).read_text().splitlines()
    assert (
        [Trial(**json.loads(line)) for line in lines]
        == trials
        == [Trial(**record) for record in store.load()]
    )

    more = SearchRequest(
        "efficientformer",
        0.5,
        controller="random",
        evaluations=14,
        batch_size=4,
        out=tmp_path,
        resume=True,
    )
    store = open_trial_store(more, space, url)
    resumed = run_search_loop(more, space, FakeExecutor(), fake_latency, store, lambda *_: None)
    assert resumed.resumed == 10 and resumed.trials[:10] == trials
    assert len({t.short for t in resumed.trials}) == 14  # nothing evaluated twice
    assert len((tmp_path / TRIALS_FILE).read_text().splitlines()) == 14


def test_the_end_to_end_check_names_the_fastest_when_nothing_fits(tmp_path: Path) -> None:
    from nasvit.searching.stages import check_end_to_end

    request = SearchRequest("efficientformer", 0.001, out=tmp_path)
    trials = [
        Trial(i, {}, f"arch{i}", 0.5, 1.0, 0.5, latency, False)
        for i, latency in enumerate([3.0, 1.5, 2.0])
    ]
    with pytest.raises(NasvitError, match="meets 1 us; the fastest found is arch1 at 1.5 ms"):
        check_end_to_end(request, None, None, None, trials)  # type: ignore[arg-type]


def test_the_artifacts_stage_writes_the_result(tmp_path: Path) -> None:
    from nasvit.searching.stages import write_artifacts

    space = tiny_space()
    archs = [space.largest(), space.smallest()]
    trials = [
        Trial(i, a.to_dict(), space.short_string(a), accuracy, 0.3, accuracy, 2.0 - i, True)
        for i, (a, accuracy) in enumerate(zip(archs, [0.9, 0.8], strict=True))
    ]
    front = [
        FrontPoint(t.index, t.short, t.accuracy, t.loss, t.latency_ms, m, t.feasible, t.arch)
        for t, m in zip(reversed(trials), [None, 1.25], strict=True)
    ]
    report = {"best": {"short": trials[0].short}, "pareto_front": [p.to_dict() for p in front]}
    write_artifacts(tmp_path, space, SearchResult(trials[0], 1.25, front, trials, report))
    best = json.loads((tmp_path / "best.json").read_text())
    assert best == {"space": "efficientformer", "arch": trials[0].arch, "short": trials[0].short}
    assert json.loads((tmp_path / "report.json").read_text()) == report
    with (tmp_path / "trials.csv").open() as handle:
        rows = list(csv.reader(handle))
    assert rows[0] == ["index", "short", "accuracy", "loss", "predicted_ms", "feasible"]
    assert rows[1] == ["0", trials[0].short, "0.9000", "0.3000", "2.0000", "True"]
    with (tmp_path / "pareto.csv").open() as handle:
        pareto = list(csv.reader(handle))
    columns = ["index", "short", "accuracy", "loss", "predicted_ms", "measured_ms", "feasible",
               "low_ms", "high_ms", "judged_ms", "measured_readings_ms"]  # fmt: skip
    assert pareto[0] == columns
    assert pareto[1] == ["1", trials[1].short, "0.8", "0.3", "1.0", "", "True", "", "", "", ""]
    assert pareto[2][5] == "1.25"


# ---------------------------------------------------------------------- the request
def test_a_request_is_built_from_plain_values_and_checked() -> None:
    request = SearchRequest.from_mapping(
        {"space": "efficientformer", "budget": "1500us", "evaluations": 3}, out="here"
    )
    assert (request.budget_ms, request.evaluations, request.out) == (1.5, 3, Path("here"))
    assert request.controller == "nsga2" and request.restrictions is None
    with pytest.raises(NasvitError, match="a search needs budget_ms"):
        SearchRequest.from_mapping({"space": "efficientformer"})
    with pytest.raises(NasvitError, match="seed must be an integer, got '1'"):
        SearchRequest("efficientformer", 2.0, seed="1")  # type: ignore[arg-type]
    with pytest.raises(NasvitError, match="cannot restrict unknown dimension"):
        SearchRequest("efficientformer", 2.0, restrictions={"colour": [1]})

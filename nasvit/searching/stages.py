"""The stages of a search, each a function of explicit inputs:

    prepare_supernet -> prepare_table -> run_search_loop -> check_end_to_end -> write_artifacts

:func:`nasvit.searching.pipeline.run_search` runs them in order. Each stage hands the next a small
frozen record (:class:`PreparedSupernet`, :class:`PreparedTable`, :class:`SearchLoopOutcome`,
:class:`EndToEndCheck`); none reads the environment or a global. Files in the output folder:
``trials.jsonl`` is written by the search loop (after every batch), ``best.onnx`` by the
end-to-end check, the rest (``best.json``, ``report.json``, ``trials.csv``, ``pareto.csv``) by
:func:`write_artifacts`.
"""

from __future__ import annotations

import csv
import json
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from nasvit.errors import NasvitError
from nasvit.evaluation.ranking import ranking_score
from nasvit.search_spaces import Architecture, ArchitectureError, SearchSpace
from nasvit.searching.budget import format_ms
from nasvit.searching.controllers import LatencyFunction, make_controller
from nasvit.searching.pareto import hypervolume, pareto_front
from nasvit.searching.request import FrontPoint, ProgressHook, SearchRequest, SearchResult, Trial
from nasvit.searching.trial_store import TrialStore, study_name_for

if TYPE_CHECKING:
    from nasvit.evaluation.evaluator import SubnetEvaluator
    from nasvit.latency_db import DeviceRecord, LatencyStore, LatencyTable, Profiler
    from nasvit.nn.supernet import Supernet
    from nasvit.searching.controllers.base import Controller
    from nasvit.searching.executors import Executor

TRIALS_FILE = "trials.jsonl"

# A whole-network median within this share of the budget is re-measured before it decides
# whether a candidate fits: one measurement of the same file varied from 1.78 to 2.66 ms between
# runs on a loaded machine, enough to flip the decision either way.
NEAR_BUDGET_SHARE = 0.2
NEAR_BUDGET_MEASUREMENTS = 3


class StageTimer:
    """Seconds spent in each stage, by name, and the total since creation (report.json's
    ``timings``)."""

    def __init__(self) -> None:
        self.started = time.perf_counter()
        self.timings: dict[str, float] = {}

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        started = time.perf_counter()
        yield
        self.timings[name] = time.perf_counter() - started

    def finish(self) -> dict[str, float]:
        return {**self.timings, "total_s": time.perf_counter() - self.started}


# ---------------------------------------------------------------------- supernet
@dataclass(frozen=True)
class PreparedSupernet:
    """The searched space and the weights that score its candidates."""

    space: SearchSpace
    supernet: Supernet
    data: str  # the dataset source the supernet was trained on
    data_seed: int  # that dataset's split seed

    @property
    def shape_args(self) -> dict[str, Any]:
        """The networks' head and input, which lowering to latency blocks needs."""
        return {"num_classes": self.supernet.num_classes, "in_channels": self.supernet.in_channels}


def prepare_supernet(request: SearchRequest, home: Path) -> PreparedSupernet:
    """The request's checkpoint, else the space's default supernet (trained once under
    ``home``), and the space to search: the checkpoint's, or the default supernet's restricted
    by ``request.restrictions``.

    Raises:
        NasvitError: an unreadable checkpoint, or one for another space.
    """
    from nasvit.training.checkpoint import load_supernet
    from nasvit.training.default_supernet import default_supernet, recipe_for

    if request.checkpoint is not None:
        space, supernet, extra = load_supernet(request.checkpoint)
        _check_checkpoint_space(request, space)
        return PreparedSupernet(space, supernet, request.data, int(extra.get("data_seed", 0)))
    recipe = recipe_for(request.space)
    space, supernet, _ = default_supernet(request.space, home=home, recipe=recipe)
    if request.restrictions:
        # Restricting keeps the supernet (sized by the family): controllers sample the sub-space.
        try:
            space = space.restrict(**request.restrictions)
        except ArchitectureError as exc:
            covered = space.restrictions or "the whole space"
            raise NasvitError(
                f"the default {request.space} supernet covers {covered}: {exc}; "
                "search with a checkpoint trained on the restricted space"
            ) from None
    return PreparedSupernet(space, supernet, recipe.data, recipe.data_seed)


def _check_checkpoint_space(request: SearchRequest, space: SearchSpace) -> None:
    if space.name != request.space:
        raise NasvitError(
            f"checkpoint {request.checkpoint} is for space '{space.name}', not '{request.space}'"
        )
    if request.restrictions is not None and request.search_space().identity != space.identity:
        raise NasvitError(
            f"checkpoint {request.checkpoint} is for {space.identity} (restrictions "
            f"{space.restrictions or 'none'}), not for the space asked for (restrictions "
            f"{dict(request.restrictions) or 'none'}); search the checkpoint's own space"
        )


# ---------------------------------------------------------------------- latency table
@dataclass(frozen=True)
class PreparedTable:
    """The device the search targets, a profiler for it, and its latency table."""

    device: DeviceRecord
    profiler: Profiler
    table: LatencyTable


def prepare_table(
    request: SearchRequest, model: PreparedSupernet, store: LatencyStore, progress: ProgressHook
) -> PreparedTable:
    """The device's latency table, with the blocks it lacked profiled and, if it was never
    validated on the searched space, validated on ``request.validate_networks`` networks."""
    from nasvit.evaluation.latency import resolve_device, validate_table
    from nasvit.latency_db import LatencyTable, build_table

    space, shape_args = model.space, model.shape_args
    device, profiler = resolve_device(store, request.device)
    blocks = space.enumerate_blocks(**shape_args)
    table = LatencyTable.load(store, device.id, space.identity)
    if table.missing(blocks):
        build_table(
            store,
            profiler,
            device,
            blocks,
            progress=lambda done, total: progress("profiling blocks", done, total),
        )
        table = LatencyTable.load(store, device.id, space.identity)
    if (table.validation is None or table.validation.space != space.identity) and (
        request.validate_networks > 0
    ):
        # A never-validated table sums warm block timings, which underestimated the default
        # space's networks 2-3x here (their weights exceed the cache): validating once fits the
        # cache model the table then uses, and gives every prediction a known error.
        validate_table(
            space,
            store,
            profiler,
            device,
            request.validate_networks,
            progress=lambda done, total: progress("validating latency table", done, total),
            **shape_args,
        )
        table = LatencyTable.load(store, device.id, space.identity)
    return PreparedTable(device, profiler, table)


def predicted_latency(table: LatencyTable, model: PreparedSupernet) -> LatencyFunction:
    """The table's prediction (ms) for an architecture of the searched space."""

    def predict(arch: Architecture) -> float:
        return table.predict(model.space.lower(arch, **model.shape_args)).latency_ms

    return predict


# ---------------------------------------------------------------------- search loop
@dataclass(frozen=True)
class SearchLoopOutcome:
    trials: list[Trial]  # every trial, in evaluation order
    resumed: int  # how many of them an interrupted search had already evaluated


def open_trial_store(request: SearchRequest, space: SearchSpace, url: str) -> TrialStore:
    """The database record of the search writing to ``request.out``.

    The output folder is the search's handle: a resumed search whose folder was deleted starts
    afresh rather than continuing a record the user threw away."""
    out = Path(request.out)
    continuing = request.resume and (out / TRIALS_FILE).exists()
    return TrialStore(space, study_name_for(out), url=url, fresh=not continuing)


def make_executor(
    request: SearchRequest,
    model: PreparedSupernet,
    evaluator: SubnetEvaluator,
    ray_address: str | None,
) -> Executor:
    """Ray workers when the request asks for several (or a cluster is named), else this process."""
    from nasvit.searching.executors import InProcessExecutor, RayExecutor

    if request.workers > 1 or ray_address:
        return RayExecutor(evaluator, model.data, model.data_seed, request.workers, ray_address)
    return InProcessExecutor(evaluator)


def run_search_loop(
    request: SearchRequest,
    space: SearchSpace,
    executor: Executor,
    latency: LatencyFunction,
    trial_store: TrialStore,
    progress: ProgressHook,
) -> SearchLoopOutcome:
    """Evaluate the controller's candidates batch by batch until ``request.evaluations``.

    Trials already in ``trial_store`` (a resumed search) are taught to the controller first.
    Each finished batch is stored in ``trial_store`` and appended to ``trials.jsonl`` before
    the next one starts, so an interruption loses at most the batch in flight. The executor is
    left open: its owner closes it.
    """
    controller = make_controller(
        request.controller, space, request.budget_ms, request.seed, latency=latency
    )
    trials_path = Path(request.out) / TRIALS_FILE
    trials = _resumed_trials(trial_store, trials_path, space)
    for trial in trials:  # resume: the controller learns from what was already evaluated
        controller.tell(space.validate(trial.arch), trial.score, trial.latency_ms)
    resumed = len(trials)
    with trials_path.open("w") as sink:
        # Rewritten from the database's record, so the copy never misses a stored trial.
        sink.writelines(_json_lines(trials))
        # A fresh search first evaluates the space's largest and smallest subnets: the ends of
        # its latency range. In a sandwich-trained supernet the largest is usually the most
        # accurate, so whether the budget binds shows on the front at once, and the front spans
        # the space even where random samples rarely reach its ends.
        extremes = _extremes(space) if request.evaluate_extremes and not trials else []
        while len(trials) < request.evaluations:
            wanted = min(request.batch_size, request.evaluations - len(trials))
            first, extremes = extremes[:wanted], extremes[wanted:]
            proposed = controller.ask(wanted - len(first)) if wanted > len(first) else []
            archs = first + [a for a in proposed if a not in first]
            if not archs:
                break
            finished = _evaluate_batch(
                archs, executor, controller, latency, space, request.budget_ms, len(trials)
            )
            trial_store.add([asdict(t) for t in finished])  # the record resume reads
            trials.extend(finished)
            sink.writelines(_json_lines(finished))
            sink.flush()
            progress("evaluating candidates", len(trials), request.evaluations)
    return SearchLoopOutcome(trials, resumed)


def _evaluate_batch(
    archs: list[Architecture],
    executor: Executor,
    controller: Controller,
    latency: LatencyFunction,
    space: SearchSpace,
    budget_ms: float,
    first_index: int,
) -> list[Trial]:
    finished: list[Trial] = []
    for arch, (accuracy, loss) in zip(archs, executor.evaluate(archs), strict=True):
        predicted = latency(arch)
        score = ranking_score(accuracy, loss)
        controller.tell(arch, score, predicted)
        finished.append(
            Trial(
                index=first_index + len(finished),
                arch=arch.to_dict(),
                short=space.short_string(arch),
                accuracy=accuracy,
                loss=loss,
                score=score,
                latency_ms=predicted,
                feasible=predicted <= budget_ms,
            )
        )
    return finished


def _json_lines(trials: Iterable[Trial]) -> Iterator[str]:
    return (json.dumps(asdict(t)) + "\n" for t in trials)


def _extremes(space: SearchSpace) -> list[Architecture]:
    """The space's largest and smallest subnets (one, if they coincide)."""
    largest, smallest = space.largest(), space.smallest()
    return [largest] if largest == smallest else [largest, smallest]


def _resumed_trials(store: TrialStore, jsonl: Path, space: SearchSpace) -> list[Trial]:
    """Finished trials to resume from: the database's record, or (for a search begun before
    trials were stored in the database) the ``trials.jsonl`` copy, imported once."""
    records = store.load()
    if records:
        return [_trial_from(record, space, f"study {store.name}") for record in records]
    trials = _load_trials(jsonl, space) if jsonl.exists() else []
    if trials:
        store.add([asdict(t) for t in trials])
    return trials


def _trial_from(record: dict[str, Any], space: SearchSpace, where: str) -> Trial:
    try:
        space.validate(record["arch"])
        return Trial(**record)
    except (ValueError, KeyError, TypeError) as exc:
        raise NasvitError(f"{where}: not a trial of this search ({exc})") from None


def _load_trials(path: Path, space: SearchSpace) -> list[Trial]:
    trials = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        try:
            record = json.loads(line)
        except ValueError as exc:
            raise NasvitError(f"{path}:{number}: not a trial of this search ({exc})") from None
        trials.append(_trial_from(record, space, f"{path}:{number}"))
    return trials


# ---------------------------------------------------------------------- end-to-end check
@dataclass(frozen=True)
class EndToEndCheck:
    best: Trial
    measured: dict[int, float]  # whole-network latency (ms) of the exported trials, by index
    front: list[int]  # indices of the trials on the Pareto front, by predicted latency
    test_accuracy: float  # the best's accuracy on the test split


def check_end_to_end(
    request: SearchRequest,
    model: PreparedSupernet,
    evaluator: SubnetEvaluator,
    profiler: Profiler,
    trials: list[Trial],
) -> EndToEndCheck:
    """Export the top candidates and the front with trained weights, time them as whole
    networks, and keep the best's export as ``best.onnx``.

    The best is the highest-ranked feasible trial among the top ``request.measure_top`` that
    also measures within the budget; when all of them measure over it, the table is trusted
    (the highest-ranked feasible trial).

    Raises:
        NasvitError: no trial is predicted within the budget (the message names the fastest).
    """
    from nasvit.evaluation.evaluator import SubnetEvaluator

    out, budget_ms = Path(request.out), request.budget_ms
    feasible = [t for t in trials if t.feasible]
    if not feasible:
        fastest = min(trials, key=lambda t: t.latency_ms)
        raise NasvitError(
            f"no architecture found meets {format_ms(budget_ms)}; the fastest found is "
            f"{fastest.short} at {format_ms(fastest.latency_ms)} (predicted)"
        )
    front = pareto_front([(t.score, t.latency_ms) for t in trials])
    measured: dict[int, float] = {}
    exported: dict[int, Path] = {}

    def measure(trial: Trial) -> None:
        measured[trial.index], exported[trial.index] = _measure_exported(
            model.space, evaluator, trial, profiler, out, budget_ms
        )

    # Best ranked first; among equal scores the faster wins.
    candidates = sorted(feasible, key=lambda t: (-t.score, t.latency_ms))
    best: Trial | None = None
    for trial in candidates[: request.measure_top]:
        measure(trial)
        if measured[trial.index] <= budget_ms and best is None:
            best = trial
    for index in front[: request.measure_top]:
        if index not in measured:
            measure(trials[index])
    if best is None:  # all top candidates were over budget when measured: trust the table
        best = candidates[0]
    # The best was exported (with recalibrated BatchNorm) to be timed: keep that file.
    exported.pop(best.index).replace(out / "best.onnx")
    for path in exported.values():
        path.unlink(missing_ok=True)
    test = SubnetEvaluator(model.space, model.supernet, evaluator.dataset, "test")
    test_accuracy = test.evaluate(model.space.validate(best.arch)).accuracy
    return EndToEndCheck(best, measured, front, test_accuracy)


def _measure_exported(
    space: SearchSpace,
    evaluator: SubnetEvaluator,
    trial: Trial,
    profiler: Profiler,
    out: Path,
    budget_ms: float,
) -> tuple[float, Path]:
    """Export the trial's subnet with trained weights and time it as a whole network; close
    to the budget, the median of several independent measurements."""
    from nasvit.onnx_export import export_onnx

    arch = space.validate(trial.arch)
    shape = space.input_shape(arch, 1, evaluator.supernet.in_channels)
    path = export_onnx(evaluator.subnet(arch), shape, out / f"candidate-{trial.index}.onnx")
    medians = [float(profiler.measure(path, shape).median_ms)]
    if abs(medians[0] - budget_ms) <= NEAR_BUDGET_SHARE * budget_ms:
        medians += [
            float(profiler.measure(path, shape).median_ms)
            for _ in range(NEAR_BUDGET_MEASUREMENTS - 1)
        ]
    return float(np.median(medians)), path


# ---------------------------------------------------------------------- artifacts
def summarise(
    request: SearchRequest,
    model: PreparedSupernet,
    latency: PreparedTable,
    loop: SearchLoopOutcome,
    check: EndToEndCheck,
    timings: dict[str, float],
) -> SearchResult:
    """The typed result and its ``report.json`` content."""
    space, trials, best = model.space, loop.trials, check.best
    front = [
        FrontPoint(
            index=i,
            short=trials[i].short,
            accuracy=trials[i].accuracy,
            loss=trials[i].loss,
            predicted_ms=trials[i].latency_ms,
            measured_ms=check.measured.get(i),
            feasible=trials[i].feasible,
            arch=trials[i].arch,
        )
        for i in check.front
    ]
    prediction = latency.table.predict(space.lower(space.validate(best.arch), **model.shape_args))
    points = [(t.score, t.latency_ms) for t in trials]
    report = {
        "request": _request_summary(request),
        "space": space.name,
        "restrictions": space.restrictions,
        "device": latency.device.name,
        "budget_ms": request.budget_ms,
        "evaluations": len(trials),
        "resumed_from": loop.resumed,
        "hypervolume": hypervolume(points, reference_latency=request.budget_ms),
        "best": {
            **asdict(best),
            "predicted_ms": best.latency_ms,
            "measured_ms": check.measured[best.index],
            "test_accuracy": check.test_accuracy,
            "expected_error": prediction.describe(),
        },
        "pareto_front": [point.to_dict() for point in front],
        "timings": timings,
    }
    return SearchResult(best, check.measured[best.index], front, trials, report)


def _request_summary(request: SearchRequest) -> dict[str, Any]:
    # The searched space's restrictions are reported once, at the top level of the report.
    return {
        k: str(v) if isinstance(v, Path) else v
        for k, v in asdict(request).items()
        if k != "restrictions"
    }


def write_artifacts(out: Path, space: SearchSpace, result: SearchResult) -> None:
    """Write ``best.json``, ``report.json``, ``trials.csv`` and ``pareto.csv`` to ``out``."""
    best = result.best
    (out / "best.json").write_text(
        json.dumps({"space": space.name, "arch": best.arch, "short": best.short}, indent=2)
    )
    (out / "report.json").write_text(json.dumps(result.report, indent=2))
    with (out / "trials.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["index", "short", "accuracy", "loss", "predicted_ms", "feasible"])
        for t in result.trials:
            row = [t.index, t.short, f"{t.accuracy:.4f}", f"{t.loss:.4f}", f"{t.latency_ms:.4f}"]
            writer.writerow([*row, t.feasible])
    rows = [point.to_dict() for point in result.front]
    with (out / "pareto.csv").open("w", newline="") as handle:
        dict_writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        dict_writer.writeheader()
        dict_writer.writerows(rows)

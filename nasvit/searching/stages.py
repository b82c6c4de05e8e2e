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
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import numpy as np

from nasvit.errors import NasvitError, NoSubnetFitsError
from nasvit.evaluation.ranking import ranking_score
from nasvit.guarantees import DEFAULT_CONFIDENCE, Guarantee
from nasvit.search_spaces import Architecture, ArchitectureError, SearchSpace
from nasvit.searching.budget import format_ms
from nasvit.searching.controllers import LatencyFunction, make_controller
from nasvit.searching.pareto import hypervolume, pareto_front
from nasvit.searching.request import (
    WORKERS_AUTO,
    FrontPoint,
    ProgressHook,
    SearchRequest,
    SearchResult,
    Trial,
)
from nasvit.searching.trial_store import TrialStore, study_name_for

if TYPE_CHECKING:
    from nasvit.evaluation.evaluator import SubnetEvaluator
    from nasvit.evaluation.latency import Measurer
    from nasvit.latency_db import (
        DeviceRecord,
        LatencyStore,
        LatencyTable,
        MeasurementProtocol,
        Profiler,
    )
    from nasvit.latency_db.readings import NetworkReader
    from nasvit.nn.supernet import Supernet
    from nasvit.searching.controllers.base import Controller
    from nasvit.searching.executors import Executor
    from nasvit.settings import Settings

TRIALS_FILE = "trials.jsonl"

# Fresh-session readings of every subnet measured end to end; its measured latency is their
# median, as a validation network's truth is. One reading is not enough anywhere: five fresh
# sessions of one file read 2.04 to 3.40 ms on a loaded machine, and a single reading of a
# 0.84 ms subnet once came out at 1.31 ms.
END_TO_END_READINGS = 3
# Candidates exported and measured at most to find one that measures within the budget; past
# them the search reports that nothing fits rather than exporting the whole feasible list.
MAX_END_TO_END_EXPORTS = 20


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
    """The device the search targets, what measures it (a profiler here, or the device's
    agents), and its latency table."""

    device: DeviceRecord
    measurer: Measurer
    table: LatencyTable


def prepare_table(
    request: SearchRequest,
    model: PreparedSupernet,
    store: LatencyStore,
    progress: ProgressHook,
    settings: Settings | None = None,
) -> PreparedTable:
    """The device's latency table, with the blocks it lacked profiled and, if no validation
    with intervals judged it on the searched space, validated on ``request.validate_networks``
    networks."""
    from nasvit.evaluation.latency import fill_table, resolve_measurer, validate_table
    from nasvit.latency_db import LatencyTable
    from nasvit.latency_db.remote import AgentMeasurer

    space, shape_args = model.space, model.shape_args
    device, measurer = resolve_measurer(
        store, request.device, settings=settings, space=space.identity
    )
    remote = measurer if isinstance(measurer, AgentMeasurer) else None
    blocks = space.enumerate_blocks(**shape_args)
    table = LatencyTable.load(store, device.id, space.identity)
    if table.missing(blocks):
        # On a remote device the wait is for its agents: say so, with what they still do.
        stage = remote.waiting("blocks") if remote else "profiling blocks"
        fill_table(
            store,
            measurer,
            device,
            blocks,
            progress=lambda done, total: progress(stage, done, total),
        )
        table = LatencyTable.load(store, device.id, space.identity)
    judged_here = table.validation is not None and table.validation.space == space.identity
    if not (judged_here and table.validated) and request.validate_networks > 0:
        # Validating once on this space gives every prediction a known error and an interval
        # (a budget at a confidence or a percentile needs them), and chooses per latency band
        # between the sum of block timings and the cache residency model. A validation stored
        # before intervals existed has no error model: it counts as none.
        stage = remote.waiting("validation steps") if remote else "validating latency table"
        validate_table(
            space,
            store,
            measurer,
            device,
            request.validate_networks,
            progress=lambda done, total: progress(stage, done, total),
            **shape_args,
        )
        table = LatencyTable.load(store, device.id, space.identity)
    return PreparedTable(device, measurer, table)


@dataclass(frozen=True)
class LatencyEstimate:
    """What the table says about one candidate.

    Attributes:
        latency_ms: the point prediction (the Pareto front's latency).
        low_ms, high_ms: its interval at :data:`~nasvit.guarantees.DEFAULT_CONFIDENCE` (None:
            the table was never validated).
        judged_ms: what the budget is compared with: ``latency_ms`` for a plain budget, the
            one-sided upper bound for a budget at a confidence, the predicted percentile of
            single calls for a percentile budget.
    """

    latency_ms: float
    low_ms: float | None
    high_ms: float | None
    judged_ms: float


@runtime_checkable
class CandidateLatency(Protocol):
    """Latency estimates of the searched space's architectures."""

    def estimate(self, arch: Architecture) -> LatencyEstimate: ...


class TableLatency:
    """The latency table's estimates for the searched space, judged for the request's
    guarantee. Estimates are kept by architecture: the predictor controller asks for many
    candidates' latency before the search loop scores the ones it evaluates.

    Raises:
        NasvitError: the guarantee needs intervals (a confidence or a percentile) and the
            table was never validated.
    """

    def __init__(self, table: LatencyTable, model: PreparedSupernet, guarantee: Guarantee):
        table.check_guarantee(guarantee)  # before any candidate is evaluated
        self.table, self.model, self.guarantee = table, model, guarantee
        self._estimates: dict[Architecture, LatencyEstimate] = {}

    def estimate(self, arch: Architecture) -> LatencyEstimate:
        if arch not in self._estimates:
            model = self.model
            blocks = model.space.lower(arch, **model.shape_args)
            prediction = self.table.predict(blocks, confidence=DEFAULT_CONFIDENCE)
            self._estimates[arch] = LatencyEstimate(
                prediction.latency_ms,
                prediction.low_ms,
                prediction.high_ms,
                self.table.judged(prediction, self.guarantee),
            )
        return self._estimates[arch]


class PointLatency:
    """Estimates from a plain latency function: no interval, the point is judged."""

    def __init__(self, latency: LatencyFunction):
        self.latency = latency

    def estimate(self, arch: Architecture) -> LatencyEstimate:
        value = float(self.latency(arch))
        return LatencyEstimate(value, None, None, value)


# ---------------------------------------------------------------------- search loop
@dataclass(frozen=True)
class SearchLoopOutcome:
    trials: list[Trial]  # every trial, in evaluation order
    resumed: int  # how many of them an interrupted search had already evaluated
    # Where the candidates were evaluated: in-process, or Ray's nodes, lost actors, re-runs.
    evaluation: dict[str, Any]


def open_trial_store(request: SearchRequest, space: SearchSpace, url: str) -> TrialStore:
    """The database record of the search writing to ``request.out``.

    The output folder is the search's handle: a resumed search whose folder was deleted starts
    afresh rather than continuing a record the user threw away."""
    out = Path(request.out)
    continuing = request.resume and (out / TRIALS_FILE).exists()
    return TrialStore(space, study_name_for(out), url=url, fresh=not continuing)


def make_executor(
    request: SearchRequest,
    evaluator: SubnetEvaluator,
    settings: Settings,
) -> Executor:
    """Where the request's candidates are evaluated.

    ``workers=auto`` means one Ray actor per CPU of the cluster named by ``ray_address`` (the
    request's, else the settings'), or else per available core of this machine
    (``settings.auto_workers`` overrides that count); one core, or ``workers=1`` without a
    cluster, evaluates in this process."""
    from nasvit.searching.executors import InProcessExecutor, RayExecutor, available_cores

    address = request.ray_address or settings.ray_address
    if request.workers != WORKERS_AUTO:
        workers: int | None = int(request.workers)
    elif address:
        workers = None  # one per CPU of the cluster, known once joined
    else:
        workers = settings.auto_workers or available_cores()
    if address or (workers or 1) > 1:
        return RayExecutor(evaluator, workers, address)
    return InProcessExecutor(evaluator)


def run_search_loop(
    request: SearchRequest,
    space: SearchSpace,
    executor: Executor,
    latency: CandidateLatency | LatencyFunction,
    trial_store: TrialStore,
    progress: ProgressHook,
) -> SearchLoopOutcome:
    """Evaluate the controller's candidates batch by batch until ``request.evaluations``.

    Every candidate is scored with ``latency`` (a plain function's value is both the point and
    the judged latency): a trial is feasible when its judged latency meets the budget, and the
    controller is told the judged latency, so its own feasibility test is the trial's.
    Trials already in ``trial_store`` (a resumed search) are judged again by ``latency`` and
    this request's budget (a trial stored before intervals existed gains them), then taught to
    the controller. Each finished batch is stored in ``trial_store`` and appended to
    ``trials.jsonl`` before the next one starts, so an interruption loses at most the batch in
    flight. The executor is left open: its owner closes it.
    """
    estimates = latency if isinstance(latency, CandidateLatency) else PointLatency(latency)

    def judged(arch: Architecture) -> float:
        return estimates.estimate(arch).judged_ms

    controller = make_controller(
        request.controller, space, request.budget_ms, request.seed, latency=judged
    )
    trials_path = Path(request.out) / TRIALS_FILE
    trials = [
        _rejudged(trial, estimates, space, request.budget_ms)
        for trial in _resumed_trials(trial_store, trials_path, space)
    ]
    for trial in trials:  # resume: the controller learns from what was already evaluated
        arch = space.validate(trial.arch)
        controller.tell(arch, trial.score, judged(arch))
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
                archs, executor, controller, estimates, space, request.budget_ms, len(trials)
            )
            trial_store.add([asdict(t) for t in finished])  # the record resume reads
            trials.extend(finished)
            sink.writelines(_json_lines(finished))
            sink.flush()
            progress("evaluating candidates", len(trials), request.evaluations)
    return SearchLoopOutcome(trials, resumed, executor.report())


def _evaluate_batch(
    archs: list[Architecture],
    executor: Executor,
    controller: Controller,
    estimates: CandidateLatency,
    space: SearchSpace,
    budget_ms: float,
    first_index: int,
) -> list[Trial]:
    finished: list[Trial] = []
    for arch, (accuracy, loss) in zip(archs, executor.evaluate(archs), strict=True):
        estimate = estimates.estimate(arch)
        score = ranking_score(accuracy, loss)
        controller.tell(arch, score, estimate.judged_ms)
        finished.append(
            Trial(
                index=first_index + len(finished),
                arch=arch.to_dict(),
                short=space.short_string(arch),
                accuracy=accuracy,
                loss=loss,
                score=score,
                latency_ms=estimate.latency_ms,
                feasible=estimate.judged_ms <= budget_ms,
                low_ms=estimate.low_ms,
                high_ms=estimate.high_ms,
                judged_ms=estimate.judged_ms,
            )
        )
    return finished


def _rejudged(
    trial: Trial, estimates: CandidateLatency, space: SearchSpace, budget_ms: float
) -> Trial:
    """A resumed trial scored by this search's table, budget and guarantee, so it is ranked
    and judged like the trials evaluated now."""
    estimate = estimates.estimate(space.validate(trial.arch))
    return replace(
        trial,
        latency_ms=estimate.latency_ms,
        low_ms=estimate.low_ms,
        high_ms=estimate.high_ms,
        judged_ms=estimate.judged_ms,
        feasible=estimate.judged_ms <= budget_ms,
    )


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
class EndToEndMeasurement:
    """One exported subnet timed as a whole network.

    Attributes:
        trial: the measured trial.
        readings_ms: each reading's median; a reading is one fresh session.
        statistic_ms: what was compared with the budget: the median of the readings, or for a
            percentile budget that percentile of every timed call of the readings.
        fits_budget: ``statistic_ms`` is within the budget.
    """

    trial: Trial
    readings_ms: tuple[float, ...]
    statistic_ms: float
    fits_budget: bool

    @property
    def median_ms(self) -> float:
        return float(np.median(self.readings_ms))

    @property
    def inside_interval(self) -> bool | None:
        """The median lies in the trial's interval (None: the trial has none)."""
        low, high = self.trial.low_ms, self.trial.high_ms
        if low is None or high is None:
            return None
        return low <= self.median_ms <= high

    def to_dict(self) -> dict[str, Any]:
        """The measurement as ``report.json``'s ``end_to_end`` list holds it."""
        trial = self.trial
        return {
            "index": trial.index,
            "short": trial.short,
            "predicted_ms": trial.latency_ms,
            "low_ms": trial.low_ms,
            "high_ms": trial.high_ms,
            "judged_ms": trial.judged_ms,
            "readings_ms": list(self.readings_ms),
            "median_ms": self.median_ms,
            "min_ms": min(self.readings_ms),
            "max_ms": max(self.readings_ms),
            "statistic_ms": self.statistic_ms,
            "fits_budget": self.fits_budget,
            "inside_interval": self.inside_interval,
        }


@dataclass(frozen=True)
class EndToEndCheck:
    best: Trial
    # Every end-to-end measurement by trial index, in the order they were taken.
    measurements: dict[int, EndToEndMeasurement]
    front: list[int]  # indices of the trials on the Pareto front, by predicted latency
    test_accuracy: float  # the best's accuracy on the test split

    @property
    def measured(self) -> dict[int, float]:
        """Median whole-network latency (ms) of the measured trials, by index."""
        return {index: m.median_ms for index, m in self.measurements.items()}


def reading_protocol() -> MeasurementProtocol:
    """One end-to-end reading: the whole-network protocol in a single fresh session."""
    from nasvit.latency_db import MeasurementProtocol

    return replace(MeasurementProtocol.network(), sessions=1)


def check_end_to_end(
    request: SearchRequest,
    model: PreparedSupernet,
    evaluator: SubnetEvaluator,
    measurer: Profiler | NetworkReader,
    trials: list[Trial],
    progress: ProgressHook | None = None,
) -> EndToEndCheck:
    """Choose the best subnet by measuring it: export feasible candidates with trained
    weights, best ranked first, and time each as a whole network until one meets the budget.

    At most :data:`MAX_END_TO_END_EXPORTS` candidates are measured for the decision. The first
    ``request.measure_top`` points of the Pareto front are measured too, so the report says
    whether each lies inside its interval. The chosen subnet's export is kept as
    ``best.onnx``; the other exports are removed.

    Each measurement takes :data:`END_TO_END_READINGS` readings (fresh sessions, see
    :func:`reading_protocol`), on this machine or, for a remote device, by its agents
    (``progress`` then hears of the wait).

    Raises:
        NoSubnetFitsError: no trial is judged within the budget (the message names the
            fastest), or none of the measured candidates measures within it (the message
            names the closest and its measured latency).
    """
    from nasvit.evaluation.evaluator import SubnetEvaluator
    from nasvit.latency_db.remote import AgentMeasurer

    out, budget_ms, guarantee = Path(request.out), request.budget_ms, request.guarantee
    budget_text = format_ms(budget_ms) + guarantee.describe()
    feasible = [t for t in trials if t.feasible]
    if not feasible:
        fastest = min(trials, key=_judged_ms)
        judged = "" if guarantee.plain else f"; judged {format_ms(_judged_ms(fastest))}"
        raise NoSubnetFitsError(
            f"no architecture found meets {budget_text}; the fastest found is "
            f"{fastest.short} at {format_ms(fastest.latency_ms)} (predicted{judged})"
        )
    front = pareto_front([(t.score, t.latency_ms) for t in trials])
    stage = (
        measurer.waiting("end-to-end readings")
        if isinstance(measurer, AgentMeasurer)
        else "measuring end to end"
    )
    measurements: dict[int, EndToEndMeasurement] = {}
    exported: dict[int, Path] = {}

    def measure(trial: Trial) -> EndToEndMeasurement:
        path = _export(model.space, evaluator, trial, out)
        exported[trial.index] = path
        shape = model.space.input_shape(
            model.space.validate(trial.arch), 1, evaluator.supernet.in_channels
        )
        measurement = measure_end_to_end(
            measurer,
            path,
            shape,
            trial,
            budget_ms,
            guarantee,
            None if progress is None else lambda done, total: progress(stage, done, total),
        )
        measurements[trial.index] = measurement
        return measurement

    best: Trial | None = None
    try:
        # Best ranked first; among equal scores the faster wins.
        candidates = sorted(feasible, key=lambda t: (-t.score, t.latency_ms))
        for trial in candidates[:MAX_END_TO_END_EXPORTS]:
            if measure(trial).fits_budget:
                best = trial
                break
        if best is None:
            raise _nothing_measured_fits(
                list(measurements.values()), len(feasible), budget_text, guarantee
            )
        for index in front[: request.measure_top]:
            if index not in measurements:
                measure(trials[index])
        # The best was exported (with recalibrated BatchNorm) to be timed: keep that file.
        exported.pop(best.index).replace(out / "best.onnx")
    finally:
        for path in exported.values():
            path.unlink(missing_ok=True)
    test = SubnetEvaluator(model.space, model.supernet, evaluator.dataset, "test")
    test_accuracy = test.evaluate(model.space.validate(best.arch)).accuracy
    return EndToEndCheck(best, measurements, front, test_accuracy)


def _judged_ms(trial: Trial) -> float:
    return trial.latency_ms if trial.judged_ms is None else trial.judged_ms


def _nothing_measured_fits(
    measured: list[EndToEndMeasurement], feasible: int, budget_text: str, guarantee: Guarantee
) -> NoSubnetFitsError:
    closest = min(measured, key=lambda m: m.statistic_ms)
    which = "" if len(measured) == feasible else " most accurate"
    what = (
        f"p{guarantee.percentile} of {len(closest.readings_ms)} fresh sessions' calls"
        if guarantee.percentile is not None
        else f"median of {len(closest.readings_ms)} fresh sessions"
    )
    return NoSubnetFitsError(
        f"none of the {len(measured)}{which} candidates predicted within {budget_text} "
        f"measured within it end to end; the closest, {closest.trial.short}, measured "
        f"{format_ms(closest.statistic_ms)} ({what}) against the budget of {budget_text}. "
        "The table predicted these candidates faster than they ran: a looser budget, a budget "
        "at a confidence (its upper bound leaves a margin) or validating the table again may "
        "find one"
    )


def _export(space: SearchSpace, evaluator: SubnetEvaluator, trial: Trial, out: Path) -> Path:
    """The trial's subnet with trained weights as ``candidate-<index>.onnx`` in ``out``."""
    from nasvit.onnx_export import export_onnx

    arch = space.validate(trial.arch)
    shape = space.input_shape(arch, 1, evaluator.supernet.in_channels)
    return export_onnx(evaluator.subnet(arch), shape, out / f"candidate-{trial.index}.onnx")


def measure_end_to_end(
    measurer: Profiler | NetworkReader,
    path: Path,
    shape: tuple[int, ...],
    trial: Trial,
    budget_ms: float,
    guarantee: Guarantee,
    progress: Callable[[int, int], None] | None = None,
) -> EndToEndMeasurement:
    """Time an exported subnet: :data:`END_TO_END_READINGS` readings (each one fresh session
    of :func:`reading_protocol`); the statistic is the readings' median, or for a percentile
    budget that percentile of all their calls."""
    from nasvit.latency_db.readings import as_reader

    [(readings, calls)] = as_reader(measurer).read_networks(
        [(path, shape)], 1, END_TO_END_READINGS, protocol=reading_protocol(), progress=progress
    )
    if guarantee.percentile is None:
        statistic = float(np.median(readings))
    else:
        statistic = float(np.percentile(calls, guarantee.percentile))
    return EndToEndMeasurement(trial, readings, statistic, statistic <= budget_ms)


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
    measurements = check.measurements
    front = []
    for i in check.front:
        trial, measurement = trials[i], measurements.get(i)
        front.append(
            FrontPoint(
                index=i,
                short=trial.short,
                accuracy=trial.accuracy,
                loss=trial.loss,
                predicted_ms=trial.latency_ms,
                measured_ms=None if measurement is None else measurement.median_ms,
                feasible=trial.feasible,
                arch=trial.arch,
                low_ms=trial.low_ms,
                high_ms=trial.high_ms,
                judged_ms=trial.judged_ms,
                measured_readings_ms=() if measurement is None else measurement.readings_ms,
            )
        )
    blocks = space.lower(space.validate(best.arch), **model.shape_args)
    prediction = latency.table.predict(blocks, confidence=DEFAULT_CONFIDENCE)
    chosen = measurements[best.index]
    guarantee = request.guarantee
    points = [(t.score, t.latency_ms) for t in trials]
    report = {
        "request": _request_summary(request),
        "space": space.name,
        "restrictions": space.restrictions,
        "device": latency.device.name,
        "budget_ms": request.budget_ms,
        "evaluations": len(trials),
        "resumed_from": loop.resumed,
        "evaluation": loop.evaluation,
        "hypervolume": hypervolume(points, reference_latency=request.budget_ms),
        "best": {
            **asdict(best),
            "predicted_ms": best.latency_ms,
            "measured_ms": chosen.median_ms,
            "measured_readings_ms": list(chosen.readings_ms),
            "statistic_ms": chosen.statistic_ms,
            "budget": {
                "ms": request.budget_ms,
                "confidence": guarantee.confidence,
                "percentile": guarantee.percentile,
            },
            "test_accuracy": check.test_accuracy,
            "expected_error": prediction.describe(),
        },
        "pareto_front": [point.to_dict() for point in front],
        # Every whole-network measurement, in the order taken: the candidates walked down to
        # the chosen one, then the front points.
        "end_to_end": [m.to_dict() for m in measurements.values()],
        "timings": timings,
    }
    return SearchResult(best, chosen.median_ms, front, trials, report)


def _request_summary(request: SearchRequest) -> dict[str, Any]:
    # The searched space's restrictions are reported once, at the top level of the report. A
    # report is one device's: a multi-device search's devices are in its devices.json.
    return {
        k: str(v) if isinstance(v, Path) else v
        for k, v in asdict(request).items()
        if k not in ("restrictions", "devices")
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
    # A point's readings share one cell, separated by spaces.
    rows = [
        {k: " ".join(map(str, v)) if isinstance(v, list) else v for k, v in p.to_dict().items()}
        for p in result.front
    ]
    with (out / "pareto.csv").open("w", newline="") as handle:
        dict_writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        dict_writer.writeheader()
        dict_writer.writerows(rows)


# ---------------------------------------------------------------------- several devices
class SharedAccuracy:
    """An executor that evaluates each architecture once, whichever device's search asks.

    A candidate's accuracy does not depend on the device, so a search of several devices
    (``SearchRequest.devices``) runs its devices' loops through one of these: what another
    device's search evaluated (or what an interrupted run stored, :meth:`remember_file`) is
    answered from memory, by the architecture's short string.

    Attributes:
        evaluated: architectures this wrapper sent to the executor (each once).
        reused: answers given from memory.
    """

    def __init__(self, executor: Executor, space: SearchSpace):
        self.executor, self.space = executor, space
        self.workers = executor.workers
        self.known: dict[str, tuple[float, float]] = {}
        self.evaluated = 0
        self.reused = 0

    def evaluate(self, archs: Sequence[Architecture]) -> list[tuple[float, float]]:
        shorts = [self.space.short_string(arch) for arch in archs]
        missing: dict[str, Architecture] = {}
        for short, arch in zip(shorts, archs, strict=True):
            if short not in self.known and short not in missing:
                missing[short] = arch
        if missing:
            results = self.executor.evaluate(list(missing.values()))
            self.known.update(zip(missing, results, strict=True))
            self.evaluated += len(missing)
        self.reused += len(archs) - len(missing)
        return [self.known[short] for short in shorts]

    def report(self) -> dict[str, Any]:
        return self.executor.report()

    def remember(self, trials: Iterable[Trial]) -> None:
        for trial in trials:
            self.known.setdefault(trial.short, (trial.accuracy, trial.loss))

    def remember_file(self, path: Path) -> None:
        """The trials of a ``trials.jsonl`` (a line that cannot be read is skipped: that
        device's own resume reads the file strictly)."""
        if not path.is_file():
            return
        for line in path.read_text().splitlines():
            try:
                record = json.loads(line)
                short, accuracy, loss = record["short"], record["accuracy"], record["loss"]
                self.known.setdefault(str(short), (float(accuracy), float(loss)))
            except (ValueError, KeyError, TypeError):
                continue

    def close(self) -> None:
        self.executor.close()


def devices_summary(
    request: SearchRequest,
    results: dict[str, SearchResult],
    errors: dict[str, str],
    evaluated: int,
) -> dict[str, Any]:
    """``devices.json`` of a multi-device search: per device (in the request's order) its
    budget, its best (or why none fits) and its front, for comparing the devices."""
    devices = []
    for target in request.devices:
        sub = request.for_device(target)
        result = results.get(target.name)
        entry: dict[str, Any] = {
            "name": target.name,
            "folder": target.name,
            "budget_ms": sub.budget_ms,
            "budget_confidence": sub.budget_confidence,
            "budget_percentile": sub.budget_percentile,
            "error": errors.get(target.name),
            "best": None,
            "front": [],
            "evaluations": 0,
            "hypervolume": None,
        }
        if result is not None:
            best = result.best
            entry.update(
                device=result.report.get("device"),
                best={
                    "index": best.index,
                    "short": best.short,
                    "arch": best.arch,
                    "accuracy": best.accuracy,
                    "predicted_ms": best.latency_ms,
                    "measured_ms": result.best_measured_ms,
                    "low_ms": best.low_ms,
                    "high_ms": best.high_ms,
                    "judged_ms": best.judged_ms,
                },
                front=[point.to_dict() for point in result.front],
                evaluations=len(result.trials),
                hypervolume=result.report.get("hypervolume"),
            )
        devices.append(entry)
    return {
        "space": request.space,
        # Distinct architectures evaluated by this run for all devices together (a resumed
        # run counts only what it evaluated itself).
        "accuracy_evaluations": evaluated,
        "devices": devices,
    }

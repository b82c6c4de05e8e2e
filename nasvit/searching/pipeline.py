"""The search job: supernet -> latency table -> search -> end-to-end check -> artifacts.

One function, :func:`run_search`, serves the CLI, the Python API (:func:`nasvit.api.search`)
and the job service; it runs the stages of :mod:`nasvit.searching.stages` in order. Each finished
batch of trials is stored in the nasvit database (:mod:`nasvit.searching.trial_store`) and copied
to ``trials.jsonl`` in the output folder before the next batch starts, so an interrupted search
resumes (``resume=True``) without re-evaluating finished candidates.
"""

from __future__ import annotations

import json
from contextlib import closing
from pathlib import Path
from typing import TYPE_CHECKING

from nasvit.errors import NoSubnetFitsError, OutputExistsError
from nasvit.searching.request import (
    DEVICES_FILE,
    FrontPoint,
    ProgressHook,
    SearchRequest,
    SearchResult,
    Trial,
)
from nasvit.searching.stages import (
    END_TO_END_READINGS,
    MAX_END_TO_END_EXPORTS,
    TRIALS_FILE,
    PreparedSupernet,
    PreparedTable,
    SharedAccuracy,
    StageTimer,
    TableLatency,
    check_end_to_end,
    devices_summary,
    make_executor,
    open_trial_store,
    prepare_supernet,
    prepare_table,
    run_search_loop,
    summarise,
    write_artifacts,
)
from nasvit.settings import Settings, load_settings

if TYPE_CHECKING:
    from nasvit.evaluation.evaluator import SubnetEvaluator
    from nasvit.searching.executors import Executor

__all__ = [
    "DEVICES_FILE",
    "MAX_END_TO_END_EXPORTS",
    "END_TO_END_READINGS",
    "TRIALS_FILE",
    "FrontPoint",
    "ProgressHook",
    "SearchRequest",
    "SearchResult",
    "Trial",
    "run_search",
]


def _ignore_progress(stage: str, done: int, total: int) -> None:
    pass


def run_search(
    request: SearchRequest,
    progress: ProgressHook | None = None,
    *,
    settings: Settings | None = None,
) -> SearchResult:
    """Run (or resume) a search and write its artifacts to ``request.out``.

    Args:
        request: what to search; see :class:`~nasvit.searching.request.SearchRequest`.
        progress: called with (stage, done, total) as blocks are profiled and candidates
            evaluated; it may raise to stop the search (the trials so far stay).
        settings: where the database and default supernets are; default the ``NASVIT_*``
            environment. A Ray cluster named there is used unless the request names one.

    A request naming several ``devices`` runs the search once per device, each with its own
    latency table, budget, search loop, end-to-end check and artifacts in ``out/<name>``,
    sharing one supernet, dataset and executor; an architecture proposed for several devices
    is evaluated once. ``out/devices.json`` compares the devices, and the first device's result
    is returned with every device's in ``per_device``. Progress stages then start with
    ``[<name>] ``.

    Raises:
        OutputExistsError: ``request.out`` holds a search and ``request.resume`` is False.
        NoSubnetFitsError: no architecture is predicted within the budget, or none of the
            candidates measured end to end measures within it (the message names the closest).
            With several devices, raised once every device was searched (the others'
            artifacts and ``devices.json`` are written), naming each device that failed.
        NasvitError: bad input.
    """
    from nasvit.data import load_dataset
    from nasvit.evaluation.evaluator import SubnetEvaluator
    from nasvit.latency_db import LatencyStore

    settings = load_settings(settings)
    report = progress or _ignore_progress
    if request.devices:
        return _run_devices(request, report, settings)
    timer = StageTimer()
    out = Path(request.out)
    if (out / TRIALS_FILE).exists() and not request.resume:
        raise OutputExistsError(out)
    with timer.stage("supernet_s"):
        model = prepare_supernet(request, settings.home)
        out.mkdir(parents=True, exist_ok=True)  # only once the input is known to be good
    url = settings.resolved_database_url
    with timer.stage("latency_table_s"):
        latency = prepare_table(request, model, LatencyStore.open(url), report, settings)
    dataset = load_dataset(model.data, seed=model.data_seed)
    evaluator = SubnetEvaluator(model.space, model.supernet, dataset, "val")
    trial_store = open_trial_store(request, model.space, url)
    executor = make_executor(request, evaluator, settings)
    with closing(executor), timer.stage("search_s"):
        estimates = TableLatency(latency.table, model, request.guarantee)
        loop = run_search_loop(request, model.space, executor, estimates, trial_store, report)
    with timer.stage("end_to_end_s"):
        check = check_end_to_end(request, model, evaluator, latency.measurer, loop.trials, report)
    result = summarise(request, model, latency, loop, check, timer.finish())
    write_artifacts(out, model.space, result)
    return result


def _run_devices(request: SearchRequest, report: ProgressHook, settings: Settings) -> SearchResult:
    """The multi-device search (see :func:`run_search`).

    Every device's table is prepared before any candidate is evaluated, so a device that cannot
    be measured (or whose agents are silent) fails the search before the costly part. The
    devices are then searched one after another: each controller proposes for its own budget,
    and the shared accuracies make a candidate another device already evaluated free (the
    controllers share a seed, so their first proposals often coincide)."""
    from nasvit.data import load_dataset
    from nasvit.evaluation.evaluator import SubnetEvaluator
    from nasvit.latency_db import LatencyStore

    out = Path(request.out)
    targets = {target.name: request.for_device(target) for target in request.devices}
    # A single-device search's folder counts too: the devices' folders would land inside it.
    folders = [out, *(Path(r.out) for r in targets.values())]
    if not request.resume and any((folder / TRIALS_FILE).exists() for folder in folders):
        raise OutputExistsError(out)
    shared = StageTimer()
    with shared.stage("supernet_s"):
        model = prepare_supernet(request, settings.home)
        for sub in targets.values():  # only once the input is known to be good
            Path(sub.out).mkdir(parents=True, exist_ok=True)
    url = settings.resolved_database_url
    store = LatencyStore.open(url)
    hooks = {name: _prefixed(report, name, len(targets) > 1) for name in targets}
    tables: dict[str, PreparedTable] = {}
    table_timers: dict[str, StageTimer] = {}
    for name, sub in targets.items():
        table_timers[name] = StageTimer()
        with table_timers[name].stage("latency_table_s"):
            tables[name] = prepare_table(sub, model, store, hooks[name], settings)
    dataset = load_dataset(model.data, seed=model.data_seed)
    evaluator = SubnetEvaluator(model.space, model.supernet, dataset, "val")
    executor = SharedAccuracy(
        make_executor(request, evaluator, settings),
        model.space,
    )
    if request.resume:  # what an interrupted run already evaluated, whichever device asked
        for sub in targets.values():
            executor.remember_file(Path(sub.out) / TRIALS_FILE)
    results: dict[str, SearchResult] = {}
    errors: dict[str, str] = {}
    with closing(executor):
        for name, sub in targets.items():
            try:
                results[name] = _search_device(
                    sub,
                    model,
                    tables[name],
                    evaluator,
                    executor,
                    url,
                    hooks[name],
                )
            except NoSubnetFitsError as exc:  # the other devices may still have one
                errors[name] = str(exc)
                continue
            timings = results[name].report["timings"]
            timings.update(shared.timings, **table_timers[name].timings)
            write_artifacts(Path(sub.out), model.space, results[name])
    summary = devices_summary(request, results, errors, executor.evaluated)
    (out / DEVICES_FILE).write_text(json.dumps(summary, indent=2))
    if errors:
        failed = "; ".join(f"on {name}: {error}" for name, error in errors.items())
        kept = f" (the results of {', '.join(results)} are written)" if results else ""
        raise NoSubnetFitsError(f"no subnet fits {failed}{kept}")
    first = results[request.devices[0].name]
    return SearchResult(
        first.best, first.best_measured_ms, first.front, first.trials, first.report, results
    )


def _search_device(
    request: SearchRequest,
    model: PreparedSupernet,
    latency: PreparedTable,
    evaluator: SubnetEvaluator,
    executor: Executor,
    url: str,
    report: ProgressHook,
) -> SearchResult:
    """One device's search loop, end-to-end check and result (its artifacts not yet written)."""
    timer = StageTimer()
    trial_store = open_trial_store(request, model.space, url)
    with timer.stage("search_s"):
        estimates = TableLatency(latency.table, model, request.guarantee)
        loop = run_search_loop(request, model.space, executor, estimates, trial_store, report)
    if isinstance(executor, SharedAccuracy):
        executor.remember(loop.trials)  # resumed trials too: no other device re-evaluates them
    with timer.stage("end_to_end_s"):
        check = check_end_to_end(request, model, evaluator, latency.measurer, loop.trials, report)
    return summarise(request, model, latency, loop, check, timer.finish())


def _prefixed(report: ProgressHook, name: str, several: bool) -> ProgressHook:
    # "[pi] waiting for device pi: 12/40 blocks": the unit after the last ": " stays last, as
    # progress_message words it. A single device needs no prefix.
    if not several:
        return report

    def hook(stage: str, done: int, total: int) -> None:
        report(f"[{name}] {stage}", done, total)

    return hook

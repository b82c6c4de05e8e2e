"""The search job: supernet -> latency table -> search -> end-to-end check -> artifacts.

One function, :func:`run_search`, serves the CLI, the Python API (:func:`nasvit.api.search`)
and the job service; it runs the stages of :mod:`nasvit.searching.stages` in order. Each finished
batch of trials is stored in the nasvit database (:mod:`nasvit.searching.trial_store`) and copied
to ``trials.jsonl`` in the output folder before the next batch starts, so an interrupted search
resumes (``resume=True``) without re-evaluating finished candidates.
"""

from __future__ import annotations

from contextlib import closing
from pathlib import Path

from nasvit.errors import OutputExistsError
from nasvit.searching.request import (
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
    StageTimer,
    TableLatency,
    check_end_to_end,
    make_executor,
    open_trial_store,
    prepare_supernet,
    prepare_table,
    run_search_loop,
    summarise,
    write_artifacts,
)
from nasvit.settings import Settings, load_settings

__all__ = [
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

    Raises:
        OutputExistsError: ``request.out`` holds a search and ``request.resume`` is False.
        NoSubnetFitsError: no architecture is predicted within the budget, or none of the
            candidates measured end to end measures within it (the message names the closest).
        NasvitError: bad input.
    """
    from nasvit.data import load_dataset
    from nasvit.evaluation.evaluator import SubnetEvaluator
    from nasvit.latency_db import LatencyStore

    settings = load_settings(settings)
    report = progress or _ignore_progress
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
    executor = make_executor(request, model, evaluator, request.ray_address or settings.ray_address)
    with closing(executor), timer.stage("search_s"):
        estimates = TableLatency(latency.table, model, request.guarantee)
        loop = run_search_loop(request, model.space, executor, estimates, trial_store, report)
    with timer.stage("end_to_end_s"):
        check = check_end_to_end(request, model, evaluator, latency.measurer, loop.trials, report)
    result = summarise(request, model, latency, loop, check, timer.finish())
    write_artifacts(out, model.space, result)
    return result

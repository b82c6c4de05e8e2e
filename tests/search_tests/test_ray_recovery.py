"""The Ray executor on a real local Ray: an actor that dies mid-chunk loses only that chunk,
which a replacement re-runs (results equal an in-process run); an actor that dies on the same
candidates every time ends the search after a bounded number of tries, naming what died (the
actors die for real, ``os._exit`` in the actor's process, on chosen candidates). Also: the data
travels without its file, ``workers=auto`` takes every core, and too many actors are refused."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from nasvit.data import load_dataset
from nasvit.errors import NasvitError
from nasvit.evaluation.evaluator import SubnetEvaluator
from nasvit.searching.executors import (
    MAX_CHUNK_ATTEMPTS,
    EvaluatorActor,
    InProcessExecutor,
    RayExecutor,
)

from nasvit_testing.toy_spaces import small_efficientformer


def dying_actor(marker: Path, victim: str, times: int) -> type:
    """An evaluator actor whose process exits when a chunk holds ``victim`` (a short string),
    the first ``times`` times any actor meets it (counted in ``marker``, a file both see)."""

    class DyingActor(EvaluatorActor):
        def evaluate(self, arch_dicts: list[dict[str, Any]]) -> dict[str, Any]:
            shorts = [self.space.short_string(self.space.validate(a)) for a in arch_dicts]
            deaths = len(marker.read_text()) if marker.exists() else 0
            if victim in shorts and deaths < times:
                marker.write_text("x" * (deaths + 1))
                os._exit(1)
            return super().evaluate(arch_dicts)

    return DyingActor


@pytest.fixture(scope="module")
def local_ray() -> Iterator[None]:
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        yield
    finally:
        ray.shutdown()


@pytest.fixture(scope="module")
def evaluator() -> SubnetEvaluator:
    space = small_efficientformer()
    torch.manual_seed(0)
    supernet = space.build_supernet(num_classes=10, in_channels=1).eval()
    return SubnetEvaluator(space, supernet, load_dataset("digits", seed=0), "val")


def batch(evaluator: SubnetEvaluator, count: int = 24) -> list[Any]:
    rng = np.random.default_rng(3)
    return [evaluator.space.sample(rng) for _ in range(count)]


def one_thread_results(evaluator: SubnetEvaluator, archs: list[Any]) -> list[tuple[float, float]]:
    """The in-process results with one torch thread, as each actor runs."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return InProcessExecutor(evaluator).evaluate(archs)
    finally:
        torch.set_num_threads(threads)


def test_a_dead_actor_loses_one_chunk_and_the_results_do_not_change(
    local_ray, evaluator, tmp_path
) -> None:
    archs = batch(evaluator)
    expected = one_thread_results(evaluator, archs)
    victim = evaluator.space.short_string(archs[10])
    events: list[str] = []
    actor = dying_actor(tmp_path / "deaths", victim, times=1)
    executor = RayExecutor(evaluator, 2, actor_class=actor, on_event=events.append)
    try:
        assert executor.evaluate(archs) == expected
        report = executor.report()
        assert len(report["lost_actors"]) == 1 and report["rerun_chunks"] == 1
        assert report["rerun_candidates"] == 3  # 24 candidates, 8 chunks
        assert len(events) == 1 and "re-running its 3 candidates" in events[0]
        # The replacement serves the next batch; nothing else is lost.
        assert executor.evaluate(archs[:6]) == expected[:6]
        assert len(executor.report()["lost_actors"]) == 1
    finally:
        executor.close()


def test_an_actor_dying_on_the_same_candidates_fails_the_search_naming_what_died(
    local_ray, evaluator, tmp_path
) -> None:
    archs = batch(evaluator)
    victim = evaluator.space.short_string(archs[0])
    actor = dying_actor(tmp_path / "deaths", victim, times=100)
    executor = RayExecutor(evaluator, 2, actor_class=actor, on_event=lambda _: None)
    try:
        with pytest.raises(NasvitError) as failure:
            executor.evaluate(archs)
        message = str(failure.value)
        assert f"{MAX_CHUNK_ATTEMPTS} evaluation actors died in turn on the same 3 candidates" in (
            message
        )
        assert message.count("evaluation actor ") == MAX_CHUNK_ATTEMPTS
        assert (tmp_path / "deaths").read_text() == "x" * MAX_CHUNK_ATTEMPTS
    finally:
        executor.close()


def test_actors_need_no_file_of_the_dataset(local_ray, tmp_path) -> None:
    """The user's data path exists only where the search was started: the actors get the data
    through the object store, so the file can be gone before any actor starts."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    path = tmp_path / "mine.npz"
    np.savez(path, x=digits.images.astype(np.float32), y=digits.target)
    space = small_efficientformer()
    torch.manual_seed(0)
    supernet = space.build_supernet(num_classes=10, in_channels=1).eval()
    evaluator = SubnetEvaluator(space, supernet, load_dataset(str(path), seed=0), "val")
    path.unlink()
    archs = batch(evaluator, 8)
    expected = one_thread_results(evaluator, archs)
    executor = RayExecutor(evaluator, 2)
    try:
        assert executor.evaluate(archs) == expected
    finally:
        executor.close()


def test_workers_auto_takes_one_actor_per_available_core(local_ray, evaluator, tmp_path) -> None:
    """The default request on this machine: Ray actors, one per core it may run on; pinned to
    one core (its real CPU affinity), the same request evaluates in this process."""
    from nasvit.searching.request import SearchRequest
    from nasvit.searching.stages import make_executor
    from nasvit.settings import Settings

    request = SearchRequest("efficientformer", 2.0)
    assert request.workers == "auto"
    settings = Settings(home=tmp_path, auto_workers=None)  # not the suite's NASVIT_AUTO_WORKERS
    cores = os.sched_getaffinity(0)
    executor = make_executor(request, evaluator, settings)
    try:
        expected = "ray" if len(cores) > 1 else "in-process"
        assert executor.report()["where"] == expected and executor.workers == len(cores)
    finally:
        executor.close()
    os.sched_setaffinity(0, {min(cores)})
    try:
        executor = make_executor(request, evaluator, settings)
    finally:
        os.sched_setaffinity(0, cores)
    assert isinstance(executor, InProcessExecutor)


def test_more_workers_than_the_cluster_has_cpus_is_refused(local_ray, evaluator) -> None:
    with pytest.raises(NasvitError, match="3 evaluation workers need 3 CPUs, but the Ray cluster"):
        RayExecutor(evaluator, 3)

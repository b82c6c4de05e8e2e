"""The Ray executor's recovery on a real local Ray: an actor that dies mid-chunk loses only
that chunk, which a replacement re-runs (results equal an in-process run); an actor that dies
on the same candidates every time ends the search after a bounded number of tries, naming what
died. The actors die for real (``os._exit`` in the actor's process) on chosen candidates."""

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


def test_a_dead_actor_loses_one_chunk_and_the_results_do_not_change(
    local_ray, evaluator, tmp_path
) -> None:
    archs = batch(evaluator)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the actors run
    try:
        expected = InProcessExecutor(evaluator).evaluate(archs)
    finally:
        torch.set_num_threads(threads)
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


def test_more_workers_than_the_cluster_has_cpus_is_refused(local_ray, evaluator) -> None:
    with pytest.raises(NasvitError, match="3 evaluation workers need 3 CPUs, but the Ray cluster"):
        RayExecutor(evaluator, 3)

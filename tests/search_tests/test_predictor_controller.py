"""The predictor-assisted controller's building blocks: hypervolume gains and its fast
NSGA-II survivor selection agree with the definitions they replace."""

from __future__ import annotations

import numpy as np

from nasvit.search_spaces import get_space
from nasvit.searching.controllers import Observation
from nasvit.searching.controllers.evolution import EvolutionController
from nasvit.searching.controllers.predictor_assisted import (
    PredictorAssistedController,
    hypervolume_gains,
)
from nasvit.searching.pareto import hypervolume, non_dominated_sort

SPACE = get_space("efficientformer")


def test_hypervolume_gains_are_the_hypervolume_differences() -> None:
    rng = np.random.default_rng(0)
    for _ in range(100):
        front = [(rng.uniform(0.5, 1), rng.uniform(0, 2.5)) for _ in range(rng.integers(0, 8))]
        accuracy, latency = rng.uniform(0.4, 1, 30), rng.uniform(0, 2.5, 30)
        gains = hypervolume_gains(front, accuracy, latency, 2.0, 0.55)
        base = hypervolume(front, 2.0, 0.55)
        expected = [
            hypervolume([*front, (a, t)], 2.0, 0.55) - base
            for a, t in zip(accuracy, latency, strict=True)
        ]
        assert np.allclose(gains, expected)


def test_fast_survivors_keep_the_same_fronts_as_the_pairwise_sort() -> None:
    rng = np.random.default_rng(1)
    for trial in range(200):
        budget = [None, 1.0][trial % 2]
        n = int(rng.integers(1, 60))
        # Repeated values make ties and duplicates common.
        points = [
            (
                float(rng.choice([0.5, 0.6, 0.7, rng.uniform()])),
                float(rng.choice([0.5, 1.2, 1.5, rng.uniform(0, 2)])),
            )
            for _ in range(n)
        ]
        pool = [Observation(i, a, t) for i, (a, t) in enumerate(points)]  # type: ignore[arg-type]
        size = int(rng.integers(1, n + 1))
        rank = {i: r for r, front in enumerate(non_dominated_sort(points, budget)) for i in front}
        reference = EvolutionController(SPACE, budget).select_survivors(pool, size)
        fast = PredictorAssistedController(SPACE, budget).select_survivors(pool, size)
        fast_ranks = [rank[o.arch] for o in fast]  # type: ignore[index]
        assert fast_ranks == sorted(fast_ranks)  # best fronts first
        assert fast_ranks == sorted(rank[o.arch] for o in reference)  # type: ignore[index]

"""Predictor-assisted evolution: a surrogate screens many children, few get real evaluations.

Each ``ask`` refits an accuracy surrogate (gradient-boosted trees on the space's index
encoding) on everything told so far, then runs a short NSGA-II *inside* the surrogate: children
of the current real front are scored by the surrogate (accuracy) and by the latency function
(the device's lookup table: cheap and far more reliable than a learned latency model), and only
the children predicted to extend the front are returned for real evaluation. DyNAS-T and
once-for-all's predictor-guided search work the same way; this is what lets a search reach a
front with a fraction of the supernet evaluations.

A small share of every batch is plain mutation without screening, so the surrogate keeps
seeing architectures it did not choose (otherwise its errors in unexplored regions never get
corrected).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from nasvit.controllers import EvolutionController, LatencyFunction, Observation
from nasvit.search_spaces import Architecture, SearchSpace


class Surrogate:
    """Gradient-boosted trees from index encodings to a score (refitted from scratch)."""

    def __init__(self, space: SearchSpace, seed: int):
        self.space = space
        self.seed = seed
        self.model: object | None = None

    def features(self, archs: Sequence[Architecture]) -> np.ndarray:
        return np.stack([self.space.encode(a) for a in archs]).astype(np.float64)

    def fit(self, archs: Sequence[Architecture], targets: Sequence[float]) -> None:
        from sklearn.ensemble import GradientBoostingRegressor

        # Shallow trees and subsampling: a few dozen to a few thousand noisy points, where a
        # ranking matters more than exact values.
        model = GradientBoostingRegressor(
            n_estimators=150, max_depth=3, learning_rate=0.1, subsample=0.8, random_state=self.seed
        )
        model.fit(self.features(archs), np.asarray(targets, dtype=np.float64))
        self.model = model

    def predict(self, archs: Sequence[Architecture]) -> np.ndarray:
        assert self.model is not None, "fit the surrogate first"
        return np.asarray(self.model.predict(self.features(archs)))  # type: ignore[attr-defined]


class PredictorAssistedController(EvolutionController):
    """NSGA-II whose children are screened by a refitted accuracy surrogate.

    Args:
        latency: the device's latency prediction for an architecture; when None, a second
            surrogate learns latency from the told values (e.g. as a Ray Tune searcher, where
            only the objectives arrive).
        warmup: random architectures evaluated before the surrogate is trusted.
        inner_generations: NSGA-II generations run on surrogate scores per ask.
        inner_children: children scored per inner generation.
        explore_share: share of each batch that is unscreened mutation.
    """

    def __init__(
        self,
        space: SearchSpace,
        budget_ms: float | None,
        seed: int = 0,
        latency: LatencyFunction | None = None,
        warmup: int = 32,
        population: int = 64,
        inner_generations: int = 6,
        inner_children: int = 160,
        explore_share: float = 0.125,
    ):
        super().__init__(space, budget_ms, seed, population=population)
        self.name = "predictor"
        self.latency = latency
        self.warmup = warmup
        self.inner_generations = inner_generations
        self.inner_children = inner_children
        self.explore_share = explore_share
        self._latency_memo: dict[Architecture, float] = {}

    def ask(self, n: int) -> list[Architecture]:
        if len(self.observations) < self.warmup:
            return self._fill(n, lambda: self.space.sample(self.rng))
        parents = self.select_survivors(self.observations, self.population_size)
        explore = int(round(n * self.explore_share)) if n > 1 else 0
        screened = self._screened(n - explore, parents)
        for arch in screened:
            self._proposed.add(arch)
        rest = self._fill(n - len(screened), lambda: self._child(parents))
        return screened + rest

    def _screened(self, n: int, parents: list[Observation]) -> list[Architecture]:
        """Up to ``n`` unproposed children predicted to extend the front, best first."""
        if n <= 0:
            return []
        accuracy = Surrogate(self.space, int(self.rng.integers(2**31)))
        accuracy.fit([o.arch for o in self.observations], [o.accuracy for o in self.observations])
        latency = self._latency_model()
        pool = list(parents)
        virtual: dict[Architecture, Observation] = {}
        for _ in range(self.inner_generations):
            children: list[Architecture] = []
            for _ in range(self.inner_children * 3):  # duplicates are skipped, not counted
                child = self._child(pool)
                if child not in self._proposed and child not in virtual:
                    children.append(child)
                    if len(children) == self.inner_children:
                        break
            if not children:
                break
            scores = accuracy.predict(children)
            for child, score in zip(children, scores, strict=True):
                virtual[child] = Observation(child, float(score), latency(child))
            pool = self.select_survivors(pool + [virtual[c] for c in children], len(parents))
        # Children that survive next to the real front are the ones predicted to improve it;
        # if too few did, the best of the remaining virtual children fill the batch.
        chosen = [o.arch for o in pool if o.arch in virtual]
        if len(chosen) < n:
            taken = set(chosen)
            others = [o for a, o in virtual.items() if a not in taken]
            chosen += [o.arch for o in self.select_survivors(others, n - len(chosen))]
        return chosen[:n]

    def _latency_model(self) -> LatencyFunction:
        if self.latency is not None:
            table_latency = self.latency

            def memoised(arch: Architecture) -> float:
                if arch not in self._latency_memo:
                    self._latency_memo[arch] = table_latency(arch)
                return self._latency_memo[arch]

            return memoised
        learned = Surrogate(self.space, int(self.rng.integers(2**31)))
        observed = self.observations
        # Latency spans orders of magnitude across a space: learn it on a log scale.
        learned.fit([o.arch for o in observed], [np.log(max(o.latency_ms, 1e-6)) for o in observed])
        return lambda arch: float(np.exp(learned.predict([arch])[0]))

"""Predictor-assisted evolution: a surrogate screens many children, few get real evaluations.

Each ``ask`` refits an accuracy surrogate (a small ensemble of gradient-boosted trees on the
space's index encoding) on everything told so far, then runs a short NSGA-II *inside* the
surrogate: children of the current real front are scored by the surrogate (accuracy) and by
the latency function (the device's lookup table: exact for the table's model, cheap, and far
more reliable than a learned latency model). DyNAS-T and once-for-all's predictor-guided search
work the same way; this is what lets a search reach a front with a fraction of the supernet
evaluations.

The batch is then chosen from every virtual child by *predicted hypervolume gain* under the
budget: greedily, the child whose optimistic accuracy (ensemble mean plus ``optimism`` times
the members' spread) adds the most area to the real front, which then takes that child at its
mean prediction before the next pick (so one batch spreads along the front instead of piling
onto one latency). Children over the budget can add no area and are never picked while any
candidate under it can, since their latency is known before evaluation.

A small share of every batch is plain mutation without screening, so the surrogate keeps
seeing architectures it did not choose (otherwise its errors in unexplored regions never get
corrected).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from nasvit.search_spaces import Architecture, SearchSpace
from nasvit.searching.controllers.base import LatencyFunction, Observation
from nasvit.searching.controllers.evolution import EvolutionController
from nasvit.searching.pareto import crowding_distance, non_dominated_mask


class Surrogate:
    """Gradient-boosted trees from index encodings to a score (refitted from scratch)."""

    def __init__(self, space: SearchSpace, seed: int):
        self.space = space
        self.seed = seed
        self.model: object | None = None

    def features(self, archs: Sequence[Architecture]) -> np.ndarray:
        return np.stack([self.space.encode(a) for a in archs]).astype(np.float64)

    def fit(self, archs: Sequence[Architecture], targets: Sequence[float]) -> None:
        self.fit_features(self.features(archs), np.asarray(targets, dtype=np.float64))

    def fit_features(self, features: np.ndarray, targets: np.ndarray) -> None:
        from sklearn.ensemble import GradientBoostingRegressor

        # Shallow trees and subsampling: a few dozen to a few thousand noisy points, where a
        # ranking matters more than exact values.
        model = GradientBoostingRegressor(
            n_estimators=150, max_depth=3, learning_rate=0.1, subsample=0.8, random_state=self.seed
        )
        model.fit(features, targets)
        self.model = model

    def predict(self, archs: Sequence[Architecture]) -> np.ndarray:
        return self.predict_features(self.features(archs))

    def predict_features(self, features: np.ndarray) -> np.ndarray:
        assert self.model is not None, "fit the surrogate first"
        return np.asarray(self.model.predict(features))  # type: ignore[attr-defined]


class SurrogateEnsemble:
    """``members`` surrogates, each fitted on a bootstrap resample: mean and spread."""

    def __init__(self, space: SearchSpace, seed: int, members: int):
        self.space = space
        self.members = [Surrogate(space, seed + k) for k in range(members)]
        self.rng = np.random.default_rng(seed)

    def features(self, archs: Sequence[Architecture]) -> np.ndarray:
        return np.stack([self.space.encode(a) for a in archs]).astype(np.float64)

    def fit(self, archs: Sequence[Architecture], targets: Sequence[float]) -> None:
        features = self.features(archs)
        values = np.asarray(targets, dtype=np.float64)
        for k, member in enumerate(self.members):
            rows = (
                np.arange(len(values))
                if k == 0  # one member sees every point once
                else self.rng.integers(len(values), size=len(values))
            )
            member.fit_features(features[rows], values[rows])

    def predict(self, archs: Sequence[Architecture]) -> tuple[np.ndarray, np.ndarray]:
        features = self.features(archs)
        predictions = np.stack([m.predict_features(features) for m in self.members])
        return predictions.mean(axis=0), predictions.std(axis=0)


def hypervolume_gains(
    front: Sequence[tuple[float, float]],
    accuracy: np.ndarray,
    latency: np.ndarray,
    ceiling: float,
    floor: float,
) -> np.ndarray:
    """Per candidate (``accuracy[i]``, ``latency[i]``): the area it would add to the
    hypervolume of ``front`` (accuracy up, latency down) in the box [0, ``ceiling``] x
    [``floor``, inf). Vectorised over candidates: the front is a staircase of a few segments."""
    inside = sorted((p for p in front if p[1] < ceiling), key=lambda p: (p[1], -p[0]))
    starts, values = [0.0], [floor]
    for accuracy_i, latency_i in inside:
        if accuracy_i > values[-1]:
            starts.append(latency_i)
            values.append(accuracy_i)
    ends = np.asarray(starts[1:] + [ceiling])
    starts_a, values_a = np.asarray(starts), np.asarray(values)
    width = np.clip(ends[None, :] - np.maximum(starts_a[None, :], latency[:, None]), 0.0, None)
    height = np.clip(accuracy[:, None] - values_a[None, :], 0.0, None)
    return (width * height).sum(axis=1)


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
        members: surrogates in the ensemble (bootstrap resamples).
        optimism: weight of the ensemble's spread in the accuracy a pick is ranked by
            (None: 2 with a latency function, 1 with a learned latency).
        reference_accuracy: the hypervolume's accuracy floor for the gains; None: the 5th
            percentile of the warm-up's accuracies.
    """

    def __init__(
        self,
        space: SearchSpace,
        budget_ms: float | None,
        seed: int = 0,
        latency: LatencyFunction | None = None,
        warmup: int = 16,
        population: int = 64,
        inner_generations: int = 12,
        inner_children: int = 256,
        explore_share: float = 0.125,
        members: int = 4,
        optimism: float | None = None,
        reference_accuracy: float | None = None,
    ):
        super().__init__(space, budget_ms, seed, population=population)
        self.name = "predictor"
        self.latency = latency
        self.warmup = warmup
        self.inner_generations = inner_generations
        self.inner_children = inner_children
        self.explore_share = explore_share
        self.members = members
        # With the table, latency is known before evaluation and the ensemble's spread is the
        # only source of exploration; a learned latency model's errors already add some.
        self.optimism = optimism if optimism is not None else (2.0 if latency is not None else 1.0)
        self.reference_accuracy = reference_accuracy
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

    def select_survivors(self, pool: list[Observation], size: int) -> list[Observation]:
        """NSGA-II survivors as in the base class (the same fronts under Deb's rule, crowding
        within the last one), found by peeling O(n log n) two-objective fronts instead of the
        pairwise sort: the inner loop sorts a few hundred points a dozen times per ask."""
        if self.single_objective:
            return super().select_survivors(pool, size)
        budget = self.budget_ms
        feasible = [i for i, o in enumerate(pool) if budget is None or o.latency_ms <= budget]
        fronts: list[list[int]] = []
        remaining, taken = feasible, 0
        while remaining and taken < size:
            mask = non_dominated_mask([pool[i].point for i in remaining])
            fronts.append([i for i, keep in zip(remaining, mask, strict=True) if keep])
            remaining = [i for i, keep in zip(remaining, mask, strict=True) if not keep]
            taken += len(fronts[-1])
        if taken < size and budget is not None:
            # Infeasible points: the smaller violation dominates, equal violations tie.
            by_violation: dict[float, list[int]] = {}
            for i, o in enumerate(pool):
                if o.latency_ms > budget:
                    by_violation.setdefault(o.latency_ms - budget, []).append(i)
            fronts += [by_violation[v] for v in sorted(by_violation)]
        survivors: list[Observation] = []
        for front in fronts:
            if len(survivors) + len(front) <= size:
                survivors.extend(pool[i] for i in front)
                continue
            distance = crowding_distance([pool[i].point for i in front])
            by_spread = [front[k] for k in np.argsort(-distance, kind="stable")]
            survivors.extend(pool[i] for i in by_spread[: size - len(survivors)])
            break
        return survivors

    def _screened(self, n: int, parents: list[Observation]) -> list[Architecture]:
        """Up to ``n`` unproposed children predicted to add the most hypervolume, best first."""
        if n <= 0:
            return []
        observed = self.observations
        accuracy = SurrogateEnsemble(self.space, int(self.rng.integers(2**31)), self.members)
        accuracy.fit([o.arch for o in observed], [o.accuracy for o in observed])
        latency = self._latency_model()
        pool = list(parents)
        virtual: dict[Architecture, Observation] = {}
        spread: dict[Architecture, float] = {}
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
            means, stds = accuracy.predict(children)
            for child, mean, std in zip(children, means, stds, strict=True):
                virtual[child] = Observation(child, float(mean), latency(child))
                spread[child] = float(std)
            pool = self.select_survivors(pool + [virtual[c] for c in children], len(parents))
        chosen = self._by_hypervolume_gain(n, list(virtual.values()), spread)
        if len(chosen) < n:
            # No child is predicted to add area (or too few are): children that survive next
            # to the real front, then the best of the rest, fill the batch.
            taken = set(chosen)
            survivors = [o.arch for o in pool if o.arch in virtual and o.arch not in taken]
            chosen += survivors[: n - len(chosen)]
            taken.update(chosen)
            others = [o for a, o in virtual.items() if a not in taken]
            chosen += [o.arch for o in self.select_survivors(others, n - len(chosen))]
        return chosen[:n]

    def _by_hypervolume_gain(
        self, n: int, candidates: list[Observation], spread: dict[Architecture, float]
    ) -> list[Architecture]:
        """Greedy batch: the largest predicted gain, then the front takes it at its mean."""
        observed = self.observations
        ceiling = (
            self.budget_ms
            if self.budget_ms is not None
            else max(o.latency_ms for o in observed) * (1 + 1e-9)
        )
        candidates = [c for c in candidates if c.latency_ms < ceiling]
        if not candidates:
            return []
        # The accuracy floor: a low quantile of the random warm-up (as a hypervolume reference
        # usually is), so the fastest candidates are not weighed by one outlier.
        floor = (
            self.reference_accuracy
            if self.reference_accuracy is not None
            else float(np.percentile([o.accuracy for o in observed[: self.warmup]], 5))
        )
        front = [o.point for o in observed if o.latency_ms < ceiling]
        mean = np.array([c.accuracy for c in candidates])
        optimistic = mean + self.optimism * np.array([spread[c.arch] for c in candidates])
        latency = np.array([c.latency_ms for c in candidates])
        chosen: list[Architecture] = []
        available = np.ones(len(candidates), dtype=bool)
        while len(chosen) < n:
            gains = np.where(
                available, hypervolume_gains(front, optimistic, latency, ceiling, floor), 0.0
            )
            best = int(np.argmax(gains))
            if gains[best] <= 0:
                break
            chosen.append(candidates[best].arch)
            available[best] = False
            front.append((float(mean[best]), float(latency[best])))
        return chosen

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

"""Evolutionary controllers: NSGA-II, and OFA-style single-objective evolution."""

from __future__ import annotations

import numpy as np

from nasvit.search_spaces import Architecture, SearchSpace
from nasvit.searching.controllers.base import Controller, Observation
from nasvit.searching.pareto import crowding_distance, non_dominated_sort


class EvolutionController(Controller):
    """NSGA-II over (accuracy, latency) with Deb's constraint handling for the budget, or,
    with ``single_objective=True``, OFA-style evolution of the best accuracy under the budget.

    Args:
        population: survivors kept per generation (HAT / mixFormer use 125, OFA 100).
        mutation_prob: per-value resampling probability of a mutation.
        crossover_share: share of children made by crossover (the rest by mutation).
    """

    def __init__(
        self,
        space: SearchSpace,
        budget_ms: float | None,
        seed: int = 0,
        population: int = 64,
        mutation_prob: float = 0.3,
        crossover_share: float = 0.5,
        single_objective: bool = False,
    ):
        super().__init__(space, budget_ms, seed)
        self.population_size = population
        self.mutation_prob = mutation_prob
        self.crossover_share = crossover_share
        self.single_objective = single_objective
        self.name = "evolution" if single_objective else "nsga2"

    def ask(self, n: int) -> list[Architecture]:
        parents = self.select_survivors(self.observations, self.population_size)
        if len(parents) < max(4, self.population_size // 4):
            return self._fill(n, lambda: self.space.sample(self.rng))
        return self._fill(n, lambda: self._child(parents))

    def _child(self, parents: list[Observation]) -> Architecture:
        first = self._tournament(parents)
        if self.rng.random() < self.crossover_share:
            child = self.space.crossover(first.arch, self._tournament(parents).arch, self.rng)
            return self.space.mutate(child, self.rng, self.mutation_prob / 3)
        return self.space.mutate(first.arch, self.rng, self.mutation_prob)

    def _tournament(self, parents: list[Observation]) -> Observation:
        # Survivors are ordered best first, so a binary tournament picks the lower index.
        i, j = self.rng.integers(len(parents), size=2)
        return parents[min(i, j)]

    def select_survivors(self, pool: list[Observation], size: int) -> list[Observation]:
        """The best ``size`` observations, best first."""
        if self.single_objective:
            return sorted(pool, key=self._scalar_rank)[:size]
        points = [o.point for o in pool]
        survivors: list[Observation] = []
        for front in non_dominated_sort(points, self.budget_ms):
            if len(survivors) + len(front) <= size:
                survivors.extend(pool[i] for i in front)
                continue
            distance = crowding_distance([points[i] for i in front])
            by_spread = [front[k] for k in np.argsort(-distance, kind="stable")]
            survivors.extend(pool[i] for i in by_spread[: size - len(survivors)])
            break
        return survivors

    def _scalar_rank(self, observation: Observation) -> tuple[float, float]:
        violation = (
            0.0 if self.budget_ms is None else max(0.0, observation.latency_ms - self.budget_ms)
        )
        return (violation, -observation.accuracy)

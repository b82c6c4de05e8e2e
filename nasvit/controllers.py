"""Search controllers behind one ask/tell protocol.

A controller proposes architectures (``ask``) and learns from their measured objectives
(``tell``). Objectives are accuracy (higher is better) and latency in ms (lower is better); the
budget is a hard constraint. Controllers never evaluate anything themselves, so the same
controller runs in-process, on Ray, or as a Ray Tune searcher.
"""

from __future__ import annotations

import abc
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from nasvit.errors import UnknownNameError
from nasvit.pareto import crowding_distance, non_dominated_sort
from nasvit.search_spaces import Architecture, SearchSpace

# How many fresh proposals a controller may reject as duplicates before giving up on novelty.
_NOVELTY_TRIES = 50


@dataclass(frozen=True)
class Observation:
    """One evaluated architecture."""

    arch: Architecture
    accuracy: float
    latency_ms: float

    @property
    def point(self) -> tuple[float, float]:
        return (self.accuracy, self.latency_ms)


class Controller(abc.ABC):
    """Proposes architectures and learns from their objectives.

    Contract: ``ask(n)`` returns up to ``n`` architectures of the space not proposed before
    (fewer only when the controller cannot find new ones); ``tell`` may be called in any
    order, for any proposed architecture, once each. ``budget_ms`` is a hard constraint.
    """

    name: str = "controller"

    def __init__(self, space: SearchSpace, budget_ms: float | None, seed: int = 0):
        self.space = space
        self.budget_ms = budget_ms
        self.rng = np.random.default_rng(seed)
        self.observations: list[Observation] = []
        self._proposed: set[Architecture] = set()

    @abc.abstractmethod
    def ask(self, n: int) -> list[Architecture]:
        """Up to ``n`` new architectures to evaluate."""

    def tell(self, arch: Architecture, accuracy: float, latency_ms: float) -> None:
        self._proposed.add(arch)
        self.observations.append(Observation(arch, accuracy, latency_ms))

    def _novel(self, propose: Callable[[], Architecture]) -> Architecture | None:
        for _ in range(_NOVELTY_TRIES):
            arch = propose()
            if arch not in self._proposed:
                self._proposed.add(arch)
                return arch
        return None

    def _fill(self, n: int, propose: Callable[[], Architecture]) -> list[Architecture]:
        out = []
        for _ in range(n):
            arch = self._novel(propose)
            if arch is None:
                break
            out.append(arch)
        return out


class RandomController(Controller):
    """Uniform samples of the space (the baseline every other controller must beat)."""

    name = "random"

    def ask(self, n: int) -> list[Architecture]:
        return self._fill(n, lambda: self.space.sample(self.rng))


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


ControllerFactory = Callable[..., Controller]
LatencyFunction = Callable[[Architecture], float]


def _optuna(kind: str) -> ControllerFactory:
    def factory(space: SearchSpace, budget_ms: float | None, seed: int) -> Controller:
        from nasvit.optuna_controller import OptunaController

        return OptunaController(space, budget_ms, seed, sampler=kind)

    return factory


def _predictor_assisted(
    space: SearchSpace, budget_ms: float | None, seed: int, latency: LatencyFunction | None = None
) -> Controller:
    from nasvit.predictor_controller import PredictorAssistedController

    return PredictorAssistedController(space, budget_ms, seed, latency=latency)


# A lazy name -> factory registry: Optuna is imported only when one of its samplers is chosen.
CONTROLLERS: dict[str, ControllerFactory] = {
    "random": RandomController,
    "nsga2": lambda space, budget, seed: EvolutionController(space, budget, seed),
    "evolution": lambda space, budget, seed: EvolutionController(
        space, budget, seed, single_objective=True
    ),
    "tpe": _optuna("tpe"),
    "optuna-nsga2": _optuna("nsga2"),
    "predictor": _predictor_assisted,
}
# Controllers that screen candidates with the device's latency prediction before evaluating.
USES_LATENCY_FUNCTION = frozenset({"predictor"})


def make_controller(
    name: str,
    space: SearchSpace,
    budget_ms: float | None,
    seed: int = 0,
    latency: LatencyFunction | None = None,
) -> Controller:
    """A controller by name; ``latency`` (the table's prediction) goes to those that use it."""
    if name not in CONTROLLERS:
        raise UnknownNameError("controller", name, CONTROLLERS)
    if latency is not None and name in USES_LATENCY_FUNCTION:
        return CONTROLLERS[name](space, budget_ms, seed, latency=latency)
    return CONTROLLERS[name](space, budget_ms, seed)

"""The controller contract: one ask/tell protocol for every search algorithm.

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


# The table's latency prediction, handed to controllers that screen candidates before evaluation.
LatencyFunction = Callable[[Architecture], float]

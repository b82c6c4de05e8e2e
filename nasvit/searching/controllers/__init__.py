"""Search controllers, by name.

Every controller implements :class:`~nasvit.searching.controllers.base.Controller` (``ask`` /
``tell``). The registry below maps a name to the module and factory that build it, so a family
is imported only when it is chosen (Optuna loads only for its samplers) and the base module
never imports a subclass. Adding a family means adding a module and one line here.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from nasvit.errors import UnknownNameError
from nasvit.search_spaces import SearchSpace
from nasvit.searching.controllers.base import Controller, LatencyFunction, Observation


@dataclass(frozen=True)
class _Entry:
    module: str  # under nasvit.searching.controllers
    factory: str  # a class or function in that module
    options: tuple[tuple[str, Any], ...] = ()  # fixed keyword arguments
    uses_latency: bool = False  # screens candidates with the table's prediction


_REGISTRY: dict[str, _Entry] = {
    "random": _Entry("random_sampling", "RandomController"),
    "nsga2": _Entry("evolution", "EvolutionController"),
    "evolution": _Entry("evolution", "EvolutionController", (("single_objective", True),)),
    "tpe": _Entry("optuna_samplers", "OptunaController", (("sampler", "tpe"),)),
    "optuna-nsga2": _Entry("optuna_samplers", "OptunaController", (("sampler", "nsga2"),)),
    "predictor": _Entry("predictor_assisted", "PredictorAssistedController", uses_latency=True),
}
#: The controller names a search accepts.
CONTROLLERS: tuple[str, ...] = tuple(_REGISTRY)
#: Controllers that screen candidates with the device's latency prediction before evaluating.
USES_LATENCY_FUNCTION = frozenset(name for name, entry in _REGISTRY.items() if entry.uses_latency)


def controller_factory(name: str) -> Callable[..., Controller]:
    """The class or function that builds controller ``name`` (imports its module)."""
    if name not in _REGISTRY:
        raise UnknownNameError("controller", name, CONTROLLERS)
    entry = _REGISTRY[name]
    module = importlib.import_module(f"{__name__}.{entry.module}")
    factory: Callable[..., Controller] = getattr(module, entry.factory)
    return factory


def make_controller(
    name: str,
    space: SearchSpace,
    budget_ms: float | None,
    seed: int = 0,
    latency: LatencyFunction | None = None,
) -> Controller:
    """A controller by name; ``latency`` (the table's prediction) goes to those that use it."""
    factory = controller_factory(name)
    options = dict(_REGISTRY[name].options)
    if latency is not None and _REGISTRY[name].uses_latency:
        options["latency"] = latency
    return factory(space, budget_ms, seed, **options)


__all__ = [
    "CONTROLLERS",
    "USES_LATENCY_FUNCTION",
    "Controller",
    "LatencyFunction",
    "Observation",
    "controller_factory",
    "make_controller",
]

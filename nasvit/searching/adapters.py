"""The one place a nasvit SearchSpace becomes another library's search space.

Parameter names: ``name`` for a :class:`Choice`, ``name[i]`` for position/layer ``i`` of a list
dimension. Layer lists are exposed at their maximum length; entries beyond an architecture's
depth are ignored when the architecture is rebuilt, so samplers see a fixed-size space.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from nasvit.search_spaces import (
    Architecture,
    Choice,
    ChoiceList,
    LayerChoices,
    SearchSpace,
)


def categorical_parameters(space: SearchSpace) -> dict[str, tuple[Any, ...]]:
    """Every searched value as a named categorical parameter with its choices."""
    parameters: dict[str, tuple[Any, ...]] = {}
    for dim in space.searched_dimensions:
        if isinstance(dim, Choice):
            parameters[dim.name] = dim.choices
        elif isinstance(dim, ChoiceList):
            for i, choices in enumerate(dim.choices):
                parameters[f"{dim.name}[{i}]"] = choices
        else:
            for i in range(space.max_layer_count(dim)):
                parameters[f"{dim.name}[{i}]"] = dim.choices
    return parameters


def arch_from_parameters(space: SearchSpace, values: dict[str, Any]) -> Architecture:
    """Rebuild (and validate) an architecture from named parameter values.

    Raises:
        ArchitectureError: the values violate a constraint of the space.
    """
    vector: list[float] = []
    for name, choices in categorical_parameters(space).items():
        vector.append(choices.index(values[name]) if name in values else -1)
    return space.decode(np.asarray(vector))


def parameters_from_arch(space: SearchSpace, arch: Architecture) -> dict[str, Any]:
    """Inverse of :func:`arch_from_parameters`; absent layers take their first choice."""
    values: dict[str, Any] = {}
    for dim in space.searched_dimensions:
        value = arch[dim.name]
        if isinstance(dim, Choice):
            values[dim.name] = value
        elif isinstance(dim, ChoiceList):
            assert isinstance(value, tuple)
            values.update({f"{dim.name}[{i}]": v for i, v in enumerate(value)})
        elif isinstance(dim, LayerChoices):
            assert isinstance(value, tuple)
            for i in range(space.max_layer_count(dim)):
                values[f"{dim.name}[{i}]"] = value[i] if i < len(value) else dim.choices[0]
    return values


def optuna_distributions(space: SearchSpace) -> dict[str, Any]:
    """Optuna ``CategoricalDistribution`` per parameter."""
    from optuna.distributions import CategoricalDistribution

    return {
        name: CategoricalDistribution(list(choices))
        for name, choices in categorical_parameters(space).items()
    }


def ray_tune_space(space: SearchSpace) -> dict[str, Any]:
    """Ray Tune ``tune.choice`` domain per parameter."""
    from ray import tune

    return {
        name: tune.choice(list(choices)) for name, choices in categorical_parameters(space).items()
    }

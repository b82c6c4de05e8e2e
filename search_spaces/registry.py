"""Name -> search-space registry. A family registers itself with ``@register_space`` in its own
module, so adding a family edits no central list: this package imports every module beside it."""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable
from functools import cache
from typing import TypeVar

from nasvit.errors import UnknownNameError
from nasvit.search_spaces.core import SearchSpace

SpaceFactory = Callable[[], SearchSpace]
F = TypeVar("F", bound=SpaceFactory)

_FACTORIES: dict[str, SpaceFactory] = {}
# Modules that hold no space; everything else in this package is imported to register spaces.
_NOT_FAMILIES = {"bases", "core", "dimensions", "registry"}


def register_space(name: str) -> Callable[[F], F]:
    """Register a zero-argument factory that builds the space called ``name``."""

    def decorator(factory: F) -> F:
        if name in _FACTORIES and _FACTORIES[name] is not factory:
            raise ValueError(f"search space {name!r} registered twice")
        _FACTORIES[name] = factory
        return factory

    return decorator


@cache
def _import_families() -> None:
    package = importlib.import_module("nasvit.search_spaces")
    for module in pkgutil.iter_modules(package.__path__):
        if module.name not in _NOT_FAMILIES and not module.name.startswith("_"):
            importlib.import_module(f"nasvit.search_spaces.{module.name}")


def space_names() -> list[str]:
    _import_families()
    return sorted(_FACTORIES)


@cache
def get_space(name: str) -> SearchSpace:
    """The registered space ``name``; unknown names raise with the closest match suggested."""
    _import_families()
    if name not in _FACTORIES:
        raise UnknownNameError("search space", name, _FACTORIES)
    space = _FACTORIES[name]()
    space.name = name
    return space

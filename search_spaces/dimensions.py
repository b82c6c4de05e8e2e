"""Typed dimensions, constraints and immutable architectures.

A search space is a list of dimensions plus optional cross-dimension constraints:

* :class:`Choice` — one value from a set (resolution, embedding dim, number of layers).
* :class:`ChoiceList` — a fixed-length list with its own set per position (width per stage).
* :class:`LayerChoices` — one value per layer; the list length follows a depth dimension
  (a :class:`Choice`, or the sum of a :class:`ChoiceList` such as depths per stage).
* :class:`Tied` — a value derived from another dimension; stored in the architecture for
  readability but never searched or encoded.

Every random operation takes an explicit ``numpy.random.Generator`` so searches are reproducible.
The :class:`~nasvit.search_spaces.core.SearchSpace` combines them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Union

import numpy as np

from nasvit.errors import NasvitError

Value = Union[int, float, str]  # noqa: UP007 - used at runtime in isinstance-free aliases
DimValue = Union[Value, tuple[Value, ...]]  # noqa: UP007


class ArchitectureError(NasvitError, ValueError):
    """An architecture that is malformed or not a point of its search space."""


class Architecture(Mapping[str, DimValue]):
    """An immutable, hashable assignment of values to a space's dimensions.

    Lists are stored as tuples so two equal architectures hash equally and can key caches.
    """

    __slots__ = ("_values", "_hash")

    def __init__(self, values: Mapping[str, Any]):
        self._values: dict[str, DimValue] = {
            name: tuple(value) if isinstance(value, (list, tuple)) else value
            for name, value in values.items()
        }
        self._hash = hash(tuple(self._values.items()))

    def __getitem__(self, name: str) -> DimValue:
        return self._values[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)

    def __hash__(self) -> int:
        return self._hash

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Architecture):
            return self._values == other._values
        return NotImplemented

    def __repr__(self) -> str:
        return f"Architecture({self._values!r})"

    def replace(self, **changes: Any) -> Architecture:
        return Architecture({**self._values, **changes})

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready dict (tuples become lists)."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in self._values.items()}


def _format_value(value: Value) -> str:
    return str(value)


def _check_choices(name: str, choices: Sequence[Value]) -> None:
    if not choices:
        raise ValueError(f"dimension {name!r} has no choices")
    if len(set(choices)) != len(choices):
        raise ValueError(f"dimension {name!r} repeats a choice: {choices}")
    for choice in choices:
        if isinstance(choice, str) and ("_" in choice or "-" in choice):
            raise ValueError(f"choice {choice!r} of {name!r} may not contain '_' or '-'")


def _parse_token(name: str, token: str, choices: Sequence[Value]) -> Value:
    for choice in choices:
        if _format_value(choice) == token:
            return choice
    allowed = ", ".join(_format_value(c) for c in choices)
    raise ArchitectureError(f"{name}: '{token}' is not one of {{{allowed}}}")


def _not_allowed(name: str, value: Any, choices: Sequence[Value]) -> ArchitectureError:
    allowed = ", ".join(_format_value(c) for c in choices)
    return ArchitectureError(f"{name}={value!r} is not allowed; allowed values: {{{allowed}}}")


@dataclass(frozen=True)
class Choice:
    """One value out of ``choices`` (ordered from smallest to largest where that makes sense)."""

    name: str
    choices: tuple[Value, ...]
    tag: str
    doc: str = ""

    def __post_init__(self) -> None:
        _check_choices(self.name, self.choices)

    def sample(self, rng: np.random.Generator) -> Value:
        return self.choices[int(rng.integers(len(self.choices)))]

    def validate(self, value: Any) -> Value:
        if isinstance(value, (list, tuple)) or value not in self.choices:
            raise _not_allowed(self.name, value, self.choices)
        return self.choices[self.choices.index(value)]

    def allowed_text(self) -> str:
        return "{" + ", ".join(_format_value(c) for c in self.choices) + "}"


@dataclass(frozen=True)
class ChoiceList:
    """A fixed-length list; position ``i`` takes a value from ``choices[i]``."""

    name: str
    choices: tuple[tuple[Value, ...], ...]
    tag: str
    doc: str = ""

    def __post_init__(self) -> None:
        for i, position_choices in enumerate(self.choices):
            _check_choices(f"{self.name}[{i}]", position_choices)

    @property
    def length(self) -> int:
        return len(self.choices)

    def sample(self, rng: np.random.Generator) -> tuple[Value, ...]:
        return tuple(c[int(rng.integers(len(c)))] for c in self.choices)

    def validate(self, value: Any) -> tuple[Value, ...]:
        if not isinstance(value, (list, tuple)) or len(value) != self.length:
            raise ArchitectureError(
                f"{self.name} must be a list of {self.length} values, got {value!r}"
            )
        for i, (item, position_choices) in enumerate(zip(value, self.choices, strict=True)):
            if isinstance(item, (list, tuple)) or item not in position_choices:
                raise _not_allowed(f"{self.name}[{i}]", item, position_choices)
        return tuple(value)

    def allowed_text(self) -> str:
        return " x ".join("{" + ", ".join(map(_format_value, c)) + "}" for c in self.choices)


@dataclass(frozen=True)
class LayerChoices:
    """One value per layer; the number of layers is read from ``length_from``.

    ``length_from`` names a :class:`Choice` (its value is the length) or a :class:`ChoiceList`
    (the sum of its values is the length, e.g. depths per stage -> one entry per block).
    """

    name: str
    choices: tuple[Value, ...]
    tag: str
    length_from: str
    doc: str = ""

    def __post_init__(self) -> None:
        _check_choices(self.name, self.choices)

    def allowed_text(self) -> str:
        return (
            "{"
            + ", ".join(map(_format_value, self.choices))
            + "}"
            + f" per layer of {self.length_from}"
        )


@dataclass(frozen=True)
class Tied:
    """A value derived from dimension ``source`` by ``derive``; never searched or encoded."""

    name: str
    source: str
    derive: Callable[[Any], Any] = field(compare=False)
    doc: str = ""

    def allowed_text(self) -> str:
        return f"derived from {self.source}"


Dimension = Union[Choice, ChoiceList, LayerChoices, Tied]  # noqa: UP007


@dataclass(frozen=True)
class Constraint:
    """A condition over several dimensions that every architecture of the space satisfies."""

    description: str
    dims: tuple[str, ...]
    check: Callable[[Mapping[str, Any]], bool] = field(compare=False)


def _as_value(value: Any) -> DimValue:
    return tuple(value) if isinstance(value, list) else value


def _show(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(map(str, value)) + "]"
    return str(value)

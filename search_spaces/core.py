"""The SearchSpace contract: sampling, mutation, crossover, validation, encodings, text forms.

A space is a list of dimensions (see :mod:`nasvit.search_spaces.dimensions`) plus optional
cross-dimension constraints. Families subclass :class:`SearchSpace` and add what ties the space
to models: a supernet, lowering to latency blocks, input shapes and published reference points.
"""

from __future__ import annotations

import abc
import copy
import dataclasses
import hashlib
import itertools
import json
import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from nasvit.search_spaces.dimensions import (
    Architecture,
    ArchitectureError,
    Choice,
    ChoiceList,
    Constraint,
    Dimension,
    LayerChoices,
    Tied,
    Value,
    _as_value,
    _format_value,
    _not_allowed,
    _parse_token,
    _show,
)

if TYPE_CHECKING:
    from torch import nn

    from nasvit.nn.blocks import BlockSpec
    from nasvit.nn.supernet import Supernet

_MAX_CONSTRAINT_RETRIES = 1000


class SearchSpace(abc.ABC):
    """Dimensions, constraints and the operations every controller needs.

    Subclasses add what ties the space to models: :meth:`build_supernet`, :meth:`lower`,
    :meth:`input_shape` and :meth:`reference_archs`.
    """

    name: str
    description: str = ""

    def __init__(self, dimensions: Sequence[Dimension], constraints: Sequence[Constraint] = ()):
        self.dimensions: tuple[Dimension, ...] = tuple(dimensions)
        self.constraints: tuple[Constraint, ...] = tuple(constraints)
        #: The arguments of :meth:`restrict` that produced this space (empty if none).
        self.restrictions: dict[str, Any] = {}
        self._by_name: dict[str, Dimension] = {}
        for dim in self.dimensions:
            if dim.name in self._by_name:
                raise ValueError(f"duplicate dimension {dim.name!r}")
            self._by_name[dim.name] = dim
        self._check_structure()

    # ----------------------------------------------------------------- structure
    def _check_structure(self) -> None:
        tags = [d.tag for d in self.searched_dimensions]
        for a, b in itertools.permutations(tags, 2):
            if b.startswith(a):
                raise ValueError(f"short-string tags must be prefix-free: {a!r} / {b!r}")
        for dim in self.dimensions:
            if isinstance(dim, LayerChoices):
                source = self._by_name.get(dim.length_from)
                if not isinstance(source, (Choice, ChoiceList)):
                    raise ValueError(f"{dim.name}: length_from must name a Choice or ChoiceList")
            if isinstance(dim, Tied) and dim.source not in self._by_name:
                raise ValueError(f"{dim.name}: unknown source {dim.source!r}")
        for constraint in self.constraints:
            unknown = set(constraint.dims) - set(self._by_name)
            if unknown:
                raise ValueError(f"constraint {constraint.description!r} names {unknown}")

    @property
    def searched_dimensions(self) -> tuple[Choice | ChoiceList | LayerChoices, ...]:
        return tuple(d for d in self.dimensions if not isinstance(d, Tied))

    def dimension(self, name: str) -> Dimension:
        return self._by_name[name]

    def choices(self, name: str) -> tuple[Any, ...]:
        """The choices of the searched dimension ``name`` (one tuple per position for a
        :class:`ChoiceList`), typed loosely: a family reads its own dimensions as the value
        types it declared them with."""
        dim = self._by_name[name]
        if isinstance(dim, Tied):
            raise ValueError(f"{name} is derived from {dim.source} and has no choices of its own")
        return dim.choices

    def _layer_count(self, dim: LayerChoices, values: Mapping[str, Any]) -> int:
        source_value = values[dim.length_from]
        if isinstance(source_value, (list, tuple)):
            return int(sum(source_value))
        return int(source_value)

    def max_layer_count(self, dim: LayerChoices) -> int:
        """The longest list ``dim`` can hold (its width in :meth:`encode`)."""
        source = self._by_name[dim.length_from]
        if isinstance(source, ChoiceList):
            return sum(max(int(v) for v in c) for c in source.choices)
        assert isinstance(source, Choice)
        return max(int(v) for v in source.choices)

    # ----------------------------------------------------------------- completion
    def _complete(self, values: dict[str, Any], rng: np.random.Generator | None) -> Architecture:
        """Resize layer lists to their lengths (sampling new entries) and fill tied values."""
        for dim in self.dimensions:
            if isinstance(dim, LayerChoices):
                n = self._layer_count(dim, values)
                current = list(values.get(dim.name, ()))[:n]
                while len(current) < n:
                    if rng is None:
                        raise ArchitectureError(f"{dim.name} needs {n} values")
                    current.append(dim.choices[int(rng.integers(len(dim.choices)))])
                values[dim.name] = tuple(current)
        for dim in self.dimensions:
            if isinstance(dim, Tied):
                values[dim.name] = _as_value(dim.derive(values[dim.source]))
        return Architecture({d.name: values[d.name] for d in self.dimensions})

    def _satisfies_constraints(self, values: Mapping[str, Any]) -> bool:
        return all(c.check(values) for c in self.constraints)

    # ----------------------------------------------------------------- sampling
    def sample(self, rng: np.random.Generator) -> Architecture:
        """A uniformly random architecture (rejection sampling for constraints)."""
        for _ in range(_MAX_CONSTRAINT_RETRIES):
            values: dict[str, Any] = {}
            for dim in self.dimensions:
                if isinstance(dim, (Choice, ChoiceList)):
                    values[dim.name] = dim.sample(rng)
            if self._satisfies_constraints(values):
                return self._complete(values, rng)
        raise RuntimeError(f"{self.name}: constraints rejected {_MAX_CONSTRAINT_RETRIES} samples")

    def mutate(
        self, arch: Architecture, rng: np.random.Generator, prob: float = 0.3
    ) -> Architecture:
        """Resample each value (each list entry) with probability ``prob``."""
        for _ in range(_MAX_CONSTRAINT_RETRIES):
            values: dict[str, Any] = dict(arch)
            for dim in self.searched_dimensions:
                if isinstance(dim, Choice) and rng.random() < prob:
                    values[dim.name] = dim.sample(rng)
                elif isinstance(dim, ChoiceList):
                    values[dim.name] = tuple(
                        c[int(rng.integers(len(c)))] if rng.random() < prob else old
                        for old, c in zip(values[dim.name], dim.choices, strict=True)
                    )
                elif isinstance(dim, LayerChoices):
                    values[dim.name] = tuple(
                        dim.choices[int(rng.integers(len(dim.choices)))]
                        if rng.random() < prob
                        else old
                        for old in values[dim.name]
                    )
            if self._satisfies_constraints(values):
                return self._complete(values, rng)
        return arch

    def crossover(
        self, first: Architecture, second: Architecture, rng: np.random.Generator
    ) -> Architecture:
        """Uniform crossover: every value (every list entry) comes from either parent."""
        for _ in range(_MAX_CONSTRAINT_RETRIES):
            values: dict[str, Any] = {}
            for dim in self.searched_dimensions:
                a, b = first[dim.name], second[dim.name]
                if isinstance(dim, Choice):
                    values[dim.name] = a if rng.random() < 0.5 else b
                else:
                    assert isinstance(a, tuple) and isinstance(b, tuple)
                    longer = a if len(a) >= len(b) else b
                    values[dim.name] = tuple(
                        (x if rng.random() < 0.5 else y) if i < min(len(a), len(b)) else longer[i]
                        for i, (x, y) in enumerate(itertools.zip_longest(a, b))
                    )
            if self._satisfies_constraints(values):
                return self._complete(values, rng)
        return first

    def largest(self) -> Architecture:
        """The architecture with the last (largest) choice everywhere."""
        return self._extreme(-1)

    def smallest(self) -> Architecture:
        """The architecture with the first (smallest) choice everywhere."""
        return self._extreme(0)

    def _extreme(self, index: int) -> Architecture:
        values: dict[str, Any] = {}
        for dim in self.searched_dimensions:
            if isinstance(dim, Choice):
                values[dim.name] = dim.choices[index]
            elif isinstance(dim, ChoiceList):
                values[dim.name] = tuple(c[index] for c in dim.choices)
        for dim in self.searched_dimensions:
            if isinstance(dim, LayerChoices):
                values[dim.name] = (dim.choices[index],) * self._layer_count(dim, values)
        arch = self._complete(values, None)
        return self.validate(arch)

    # ----------------------------------------------------------------- validation
    def validate(self, arch: Mapping[str, Any]) -> Architecture:
        """Return ``arch`` as a canonical :class:`Architecture` or raise :class:`ArchitectureError`.

        Tied values may be omitted; when given they must equal the derived value.
        """
        if not isinstance(arch, Mapping):
            raise ArchitectureError(
                f"an architecture is a mapping of dimension names, got {arch!r}"
            )
        unknown = sorted(set(arch) - set(self._by_name))
        if unknown:
            raise ArchitectureError(
                f"unknown dimension(s) {', '.join(unknown)} for space '{self.name}'; "
                f"dimensions: {', '.join(self._by_name)}"
            )
        values: dict[str, Any] = {}
        for dim in self.dimensions:
            if isinstance(dim, Tied):
                continue
            if dim.name not in arch:
                raise ArchitectureError(
                    f"missing dimension '{dim.name}' (allowed: {dim.allowed_text()})"
                )
            value = arch[dim.name]
            if isinstance(dim, (Choice, ChoiceList)):
                values[dim.name] = dim.validate(value)
        for dim in self.dimensions:
            if isinstance(dim, LayerChoices):
                values[dim.name] = self._validate_layers(dim, arch[dim.name], values)
        for constraint in self.constraints:
            if not constraint.check(values):
                shown = ", ".join(f"{n}={_show(values[n])}" for n in constraint.dims)
                raise ArchitectureError(f"constraint '{constraint.description}' violated: {shown}")
        canonical = self._complete(values, None)
        for dim in self.dimensions:
            if isinstance(dim, Tied) and dim.name in arch:
                if _as_value(arch[dim.name]) != canonical[dim.name]:
                    raise ArchitectureError(
                        f"{dim.name} is derived from {dim.source} and must be "
                        f"{_show(canonical[dim.name])}, got {_show(arch[dim.name])}"
                    )
        return canonical

    def _validate_layers(
        self, dim: LayerChoices, value: Any, values: Mapping[str, Any]
    ) -> tuple[Value, ...]:
        n = self._layer_count(dim, values)
        if not isinstance(value, (list, tuple)) or len(value) != n:
            raise ArchitectureError(
                f"{dim.name} must list one value per layer: {n} values for "
                f"{dim.length_from}={_show(values[dim.length_from])}, got {_show(value)}"
            )
        for i, item in enumerate(value):
            if isinstance(item, (list, tuple)) or item not in dim.choices:
                raise _not_allowed(f"{dim.name}[{i}]", item, dim.choices)
        return tuple(value)

    def contains(self, arch: Mapping[str, Any]) -> bool:
        try:
            self.validate(arch)
        except ArchitectureError:
            return False
        return True

    # ----------------------------------------------------------------- encodings
    @property
    def encoding_length(self) -> int:
        total = 0
        for dim in self.searched_dimensions:
            if isinstance(dim, Choice):
                total += 1
            elif isinstance(dim, ChoiceList):
                total += dim.length
            else:
                total += self.max_layer_count(dim)
        return total

    def encode(self, arch: Architecture) -> np.ndarray:
        """Fixed-length vector of choice indices; absent layers are ``-1``."""
        out: list[float] = []
        for dim in self.searched_dimensions:
            value = arch[dim.name]
            if isinstance(dim, Choice):
                out.append(dim.choices.index(value))
            elif isinstance(dim, ChoiceList):
                assert isinstance(value, tuple)
                out.extend(c.index(v) for v, c in zip(value, dim.choices, strict=True))
            else:
                assert isinstance(value, tuple)
                layers = [dim.choices.index(v) for v in value]
                out.extend(layers + [-1] * (self.max_layer_count(dim) - len(layers)))
        return np.asarray(out, dtype=np.float64)

    def decode(self, vector: Sequence[float] | np.ndarray) -> Architecture:
        """Inverse of :meth:`encode` (entries are rounded to the nearest index)."""
        vector = np.asarray(vector, dtype=np.float64)
        if vector.shape != (self.encoding_length,):
            raise ArchitectureError(
                f"encoding of '{self.name}' has length {self.encoding_length}, got {vector.shape}"
            )
        values: dict[str, Any] = {}
        position = 0
        raw_layers: dict[str, list[int]] = {}

        def take(choices: Sequence[Value]) -> Value:
            nonlocal position
            index = int(round(vector[position]))
            position += 1
            if not 0 <= index < len(choices):
                raise ArchitectureError(f"index {index} out of range at position {position - 1}")
            return choices[index]

        for dim in self.searched_dimensions:
            if isinstance(dim, Choice):
                values[dim.name] = take(dim.choices)
            elif isinstance(dim, ChoiceList):
                values[dim.name] = tuple(take(c) for c in dim.choices)
            else:
                width = self.max_layer_count(dim)
                raw_layers[dim.name] = [int(round(v)) for v in vector[position : position + width]]
                position += width
        for name, indices in raw_layers.items():
            layers = self._by_name[name]
            assert isinstance(layers, LayerChoices)
            n = self._layer_count(layers, values)
            if any(not 0 <= i < len(layers.choices) for i in indices[:n]):
                raise ArchitectureError(f"{name}: layer index out of range in {indices[:n]}")
            values[name] = tuple(layers.choices[i] for i in indices[:n])
        return self.validate(values)

    # ----------------------------------------------------------------- text forms
    def to_json(self, arch: Architecture) -> str:
        """Canonical JSON: dimension order, no spaces; equal archs give equal strings."""
        return json.dumps(arch.to_dict(), separators=(",", ":"))

    def short_string(self, arch: Architecture) -> str:
        """Compact form, e.g. ``r224_w48-96-224-448_d3-2-6-4_v1_m4-4-...``."""
        parts = []
        for dim in self.searched_dimensions:
            value = arch[dim.name]
            text = (
                "-".join(map(_format_value, value))
                if isinstance(value, tuple)
                else _format_value(value)
            )
            parts.append(f"{dim.tag}{text}")
        return "_".join(parts)

    def parse(self, text: str) -> Architecture:
        """Parse canonical JSON or a short string into a validated architecture."""
        text = text.strip()
        if text.startswith("{"):
            try:
                data = json.loads(text)
            except json.JSONDecodeError as exc:
                raise ArchitectureError(
                    f"architecture is not valid JSON: {exc.msg} (char {exc.pos})"
                ) from None
            return self.validate(data)
        return self.validate(self._parse_short(text))

    def _parse_short(self, text: str) -> dict[str, Any]:
        by_tag = {d.tag: d for d in self.searched_dimensions}
        values: dict[str, Any] = {}
        for segment in text.split("_"):
            dim = next((d for t, d in by_tag.items() if segment.startswith(t)), None)
            if dim is None or not segment:
                known = ", ".join(f"{d.tag}=<{d.name}>" for d in by_tag.values())
                raise ArchitectureError(
                    f"cannot read '{segment}' in architecture string '{text}' (segments: {known})"
                )
            if dim.name in values:
                raise ArchitectureError(f"'{dim.name}' given twice in '{text}'")
            body = segment[len(dim.tag) :]
            if isinstance(dim, Choice):
                values[dim.name] = _parse_token(dim.name, body, dim.choices)
            elif isinstance(dim, ChoiceList):
                tokens = body.split("-")
                if len(tokens) != dim.length:
                    raise ArchitectureError(f"{dim.name} needs {dim.length} values, got '{body}'")
                values[dim.name] = tuple(
                    _parse_token(f"{dim.name}[{i}]", t, c)
                    for i, (t, c) in enumerate(zip(tokens, dim.choices, strict=True))
                )
            else:
                tokens = body.split("-") if body else []
                values[dim.name] = tuple(
                    _parse_token(f"{dim.name}[{i}]", t, dim.choices) for i, t in enumerate(tokens)
                )
        return values

    # ----------------------------------------------------------------- size
    def size(self) -> int:
        """Exact number of architectures (enumerates only length sources and constrained dims)."""
        structural = {d.length_from for d in self.dimensions if isinstance(d, LayerChoices)}
        for constraint in self.constraints:
            structural.update(constraint.dims)
        free = 1
        for dim in self.searched_dimensions:
            if dim.name in structural:
                continue
            if isinstance(dim, Choice):
                free *= len(dim.choices)
            elif isinstance(dim, ChoiceList):
                free *= math.prod(len(c) for c in dim.choices)
        structural_dims = [self._by_name[n] for n in sorted(structural)]
        options: list[list[Any]] = []
        for source in structural_dims:
            if isinstance(source, Choice):
                options.append(list(source.choices))
            elif isinstance(source, ChoiceList):
                options.append(list(itertools.product(*source.choices)))
            else:
                raise ValueError(f"{source.name}: only Choice/ChoiceList dims may be structural")
        layer_dims = [d for d in self.dimensions if isinstance(d, LayerChoices)]
        total = 0
        for combo in itertools.product(*options):
            values = {d.name: v for d, v in zip(structural_dims, combo, strict=True)}
            if not self._satisfies_constraints(values):
                continue
            count = 1
            for dim in layer_dims:
                count *= len(dim.choices) ** self._layer_count(dim, values)
            total += count
        return total * free

    @property
    def identity(self) -> str:
        """The space's name, with a digest of its restrictions when it has any (e.g.
        ``efficientformer[3f9c01a2]``): what a latency validation is recorded under, since the
        cache model fitted on one space's networks does not carry over to another's sizes."""
        if not self.restrictions:
            return self.name
        text = json.dumps(self.restrictions, sort_keys=True, default=str)
        return f"{self.name}[{hashlib.sha256(text.encode()).hexdigest()[:8]}]"

    # ----------------------------------------------------------------- description
    def describe(self) -> dict[str, Any]:
        """JSON-ready summary for ``nasvit spaces`` and the API."""
        return {
            "name": self.name,
            "description": self.description,
            "size": self.size(),
            "dimensions": [
                {
                    "name": d.name,
                    "kind": type(d).__name__,
                    "tag": getattr(d, "tag", None),
                    "allowed": d.allowed_text(),
                    "doc": d.doc,
                }
                for d in self.dimensions
            ],
            "constraints": [c.description for c in self.constraints],
        }

    # ----------------------------------------------------------------- models
    @abc.abstractmethod
    def published_archs(self) -> dict[str, Mapping[str, Any]]:
        """Published models of this family, by name, as raw dimension values."""

    def reference_archs(self) -> dict[str, Architecture]:
        """The published models that are points of this space (all of them unless restricted)."""
        published = self.published_archs()
        return {name: self.validate(a) for name, a in published.items() if self.contains(a)}

    def restrict(self, **allowed: Sequence[Any]) -> SearchSpace:
        """A copy whose dimensions take only the given subsets of their choices.

        The supernet is unchanged (it is sized by the family's configuration, not by the
        choices), so weights trained on the restricted space load into the full one and back.
        A :class:`ChoiceList` takes one sequence per position. Example:
        ``space.restrict(resolution=[32, 64])``.
        """
        dimensions = []
        for dim in self.dimensions:
            if dim.name not in allowed:
                dimensions.append(dim)
            elif isinstance(dim, (Choice, LayerChoices)):
                dimensions.append(
                    dataclasses.replace(
                        dim, choices=_subset(dim.name, dim.choices, allowed[dim.name])
                    )
                )
            elif isinstance(dim, ChoiceList):
                positions = list(allowed[dim.name])
                if len(positions) != dim.length:
                    raise ArchitectureError(f"{dim.name}: give {dim.length} lists of choices")
                dimensions.append(
                    dataclasses.replace(
                        dim,
                        choices=tuple(
                            _subset(f"{dim.name}[{i}]", c, p)
                            for i, (c, p) in enumerate(zip(dim.choices, positions, strict=True))
                        ),
                    )
                )
            else:
                raise ArchitectureError(f"{dim.name} is derived and cannot be restricted")
        unknown = sorted(set(allowed) - set(self._by_name))
        if unknown:
            raise ArchitectureError(
                f"cannot restrict unknown dimension(s) {', '.join(unknown)} of '{self.name}'"
            )
        merged = {**self.restrictions, **{k: list(v) for k, v in allowed.items()}}
        restricted = copy.copy(self)
        SearchSpace.__init__(restricted, dimensions, self.constraints)
        restricted.restrictions = merged
        if restricted.size() == 0:
            raise ArchitectureError(f"restriction {allowed} leaves no architecture in the space")
        return restricted

    @abc.abstractmethod
    def input_shape(
        self, arch: Architecture, batch: int = 1, in_channels: int = 3
    ) -> tuple[int, ...]:
        """Shape of the input tensor a subnet with ``arch`` expects."""

    @abc.abstractmethod
    def build_supernet(self, num_classes: int = 1000, in_channels: int = 3) -> Supernet:
        """A freshly initialised weight-sharing supernet covering the whole space."""

    @abc.abstractmethod
    def lower(
        self, arch: Architecture, batch: int = 1, num_classes: int = 1000, in_channels: int = 3
    ) -> list[BlockSpec]:
        """The blocks, in execution order, whose latencies add up to the network's."""

    @abc.abstractmethod
    def enumerate_blocks(
        self,
        resolutions: Sequence[int] | None = None,
        batch: int = 1,
        num_classes: int = 1000,
        in_channels: int = 3,
    ) -> list[BlockSpec]:
        """Every distinct block (by key) that lowering any architecture can produce.

        Args:
            resolutions: restrict to these input resolutions (default: all of the space).
        """

    def build_subnet(
        self, arch: Architecture, num_classes: int = 1000, in_channels: int = 3
    ) -> nn.Module:
        """A randomly initialised static subnet made of the lowered blocks (for counting
        parameters or profiling whole networks) without building the supernet."""
        from torch import nn

        blocks = self.lower(arch, num_classes=num_classes, in_channels=in_channels)
        return nn.Sequential(*(spec.build() for spec in blocks)).eval()


def _subset(name: str, choices: tuple[Value, ...], wanted: Sequence[Any]) -> tuple[Value, ...]:
    outside = [v for v in wanted if v not in choices]
    if outside:
        raise _not_allowed(name, outside[0], choices)
    kept = tuple(c for c in choices if c in wanted)
    if not kept:
        raise ArchitectureError(f"{name}: a restriction must keep at least one choice")
    return kept

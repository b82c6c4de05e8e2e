"""Bases shared by the families: square-image spaces, and the ViT spaces among them.

:class:`SquareImageSpace` gives every image family its input shape and its block enumeration
(one call per resolution, duplicates dropped); :class:`TransformerSpace` adds lowering and
enumeration through :mod:`nasvit.nn.transformer` for families defined by a Transformer
configuration and a per-architecture subnet setting.
"""

from __future__ import annotations

import abc
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Protocol

from nasvit.nn import BlockSpec
from nasvit.nn.transformer import (
    LayerSetting,
    SubnetSetting,
    TransformerConfig,
    plan_transformer,
)
from nasvit.search_spaces.core import SearchSpace
from nasvit.search_spaces.dimensions import Architecture, ArchitectureError


class SquareImageSpace(SearchSpace):
    """A space of networks on square images whose side is the ``resolution`` dimension."""

    def input_shape(
        self, arch: Architecture, batch: int = 1, in_channels: int = 3
    ) -> tuple[int, ...]:
        side = int(arch["resolution"])  # type: ignore[arg-type]
        return (batch, in_channels, side, side)

    def resolutions_to_enumerate(self, resolutions: Sequence[int] | None) -> tuple[int, ...]:
        """``resolutions`` checked against the space's ``resolution`` choices (all of them when
        None)."""
        choices: tuple[int, ...] = self.choices("resolution")
        chosen = tuple(resolutions) if resolutions is not None else choices
        unknown = sorted(set(chosen) - set(choices))
        if unknown:
            raise ArchitectureError(
                f"resolution(s) {unknown} not in the space ({', '.join(map(str, choices))})"
            )
        return chosen

    def enumerate_blocks(
        self,
        resolutions: Sequence[int] | None = None,
        batch: int = 1,
        num_classes: int = 1000,
        in_channels: int = 3,
    ) -> list[BlockSpec]:
        specs: dict[str, BlockSpec] = {}
        for resolution in self.resolutions_to_enumerate(resolutions):
            for spec in self.blocks_at_resolution(resolution, batch, num_classes, in_channels):
                specs.setdefault(spec.key, spec)
        return list(specs.values())

    @abc.abstractmethod
    def blocks_at_resolution(
        self, resolution: int, batch: int, num_classes: int, in_channels: int
    ) -> Iterable[BlockSpec]:
        """Blocks (repeats allowed) covering every key a subnet at ``resolution`` can lower to;
        choices come from this (possibly restricted) space."""


class TransformerFamilyConfig(Protocol):
    """A family's configuration: it sizes the Transformer supernet."""

    def transformer(self) -> TransformerConfig: ...


class TransformerSpace(SquareImageSpace):
    """A ViT space over :mod:`nasvit.nn.transformer` with an ``embed_dim`` dimension.

    Subclasses set ``config`` and say how an architecture maps to a subnet
    (:meth:`subnet_setting`) and which synthetic layers hold every per-layer choice
    (:meth:`probe_layers`).
    """

    config: TransformerFamilyConfig

    @abc.abstractmethod
    def subnet_setting(self, arch: Mapping[str, Any]) -> SubnetSetting:
        """The Transformer subnet of ``arch``."""

    @abc.abstractmethod
    def probe_layers(self, dim: int) -> tuple[LayerSetting, ...]:
        """Layers of one synthetic subnet of width ``dim`` that together hold every per-layer
        choice of this (possibly restricted) space: a block depends on (resolution, width) and
        on one layer's own choices only."""

    def input_shape(
        self, arch: Architecture, batch: int = 1, in_channels: int = 3
    ) -> tuple[int, ...]:
        side = int(arch["resolution"])  # type: ignore[arg-type]
        return self.config.transformer().front_end.input_shape(batch, in_channels, (side, side))

    def lower(
        self, arch: Architecture, batch: int = 1, num_classes: int = 1000, in_channels: int = 3
    ) -> list[BlockSpec]:
        transformer = self.config.transformer()
        setting = self.subnet_setting(arch)
        steps = plan_transformer(transformer, setting, batch, num_classes, in_channels)
        return [step.spec(transformer) for step in steps]

    def blocks_at_resolution(
        self, resolution: int, batch: int, num_classes: int, in_channels: int
    ) -> Iterable[BlockSpec]:
        transformer = self.config.transformer()
        dims: tuple[int, ...] = self.choices("embed_dim")
        for dim in dims:
            setting = SubnetSetting((resolution, resolution), dim, self.probe_layers(dim))
            for step in plan_transformer(transformer, setting, batch, num_classes, in_channels):
                yield step.spec(transformer)


__all__ = ["SquareImageSpace", "TransformerFamilyConfig", "TransformerSpace"]

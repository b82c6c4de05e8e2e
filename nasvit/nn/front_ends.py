"""Front ends of the Transformer supernets: input -> tokens ``(B, N, dim)``, elastic in ``dim``.

A :class:`FrontEnd` describes one kind of input (shapes, block parameters for latency keys) and
builds the supernet's elastic module and the static module of a subnet, so a Transformer space
can swap its input side without touching the encoder. :class:`PatchEmbedding` cuts images into
ViT patches; :class:`SequenceEmbedding` projects feature frames (audio filterbanks, or the output
of a convolutional feature extractor as in HuBERT).
"""

from __future__ import annotations

import abc
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch import Tensor, nn

from nasvit.nn.blocks import ParamValue
from nasvit.nn.elastic import ElasticConv2d, ElasticLayerNorm, ElasticLinear, _copy


class ElasticFrontEndModule(Protocol):
    """The elastic module a :class:`FrontEnd` builds."""

    def __call__(self, x: Tensor, dim: int) -> tuple[Tensor, int | None]:
        """Tokens ``(B, N, dim)`` and the side of their square grid (None for sequences)."""
        ...

    def extract(self, **params: ParamValue) -> nn.Module:
        """The static front end for ``params`` (from :meth:`FrontEnd.block_params`)."""
        ...


class FrontEnd(abc.ABC):
    """Input -> tokens: shapes, block parameters and modules of one kind of front end."""

    #: Block kind in lowered keys (``transformer.<kind>``).
    kind: str

    @property
    @abc.abstractmethod
    def max_grid(self) -> int | None:
        """Side of the largest token grid (None when tokens form no grid)."""

    @abc.abstractmethod
    def input_shape(self, batch: int, in_channels: int, size: tuple[int, ...]) -> tuple[int, ...]:
        """Input tensor shape for the per-sample input ``size`` (e.g. (224, 224) or (frames,))."""

    @abc.abstractmethod
    def layout(self, size: tuple[int, ...]) -> tuple[int, int | None]:
        """(number of tokens, side of their square grid or None) for input ``size``."""

    @abc.abstractmethod
    def block_params(
        self, in_channels: int, dim: int, size: tuple[int, ...]
    ) -> dict[str, ParamValue]:
        """Keyword arguments of :meth:`build_static` (they also go into the block key)."""

    @abc.abstractmethod
    def build_static(self, **params: Any) -> nn.Module:
        """A static front end with fresh weights."""

    @abc.abstractmethod
    def build_elastic(self, in_channels: int, max_dim: int) -> nn.Module:
        """The supernet's front end (an :class:`ElasticFrontEndModule`)."""


class PatchEmbed(nn.Module):
    """Static ViT front end: non-overlapping patches -> tokens + learned positions [+ LN]."""

    def __init__(self, in_channels: int, dim: int, patch: int, grid: int, norm: bool):
        super().__init__()
        self.proj = nn.Conv2d(in_channels, dim, patch, stride=patch)
        self.positions = nn.Parameter(torch.zeros(grid * grid, dim))
        self.norm = nn.LayerNorm(dim) if norm else None

    def forward(self, x: Tensor) -> Tensor:
        tokens: Tensor = self.proj(x).flatten(2).transpose(1, 2) + self.positions
        return tokens if self.norm is None else self.norm(tokens)


class ElasticPatchEmbed(nn.Module):
    """Patch embedding with elastic width. Positions are stored for the largest grid; a smaller
    image uses the top-left ``grid x grid`` corner, so a token keeps the position embedding of
    the same pixel offset at every resolution."""

    def __init__(self, in_channels: int, max_dim: int, patch: int, max_grid: int, norm: bool):
        super().__init__()
        self.patch = patch
        self.proj = ElasticConv2d(in_channels, max_dim, patch, stride=patch, padding=0)
        self.positions = nn.Parameter(torch.zeros(max_grid, max_grid, max_dim))
        nn.init.trunc_normal_(self.positions, std=0.02)
        self.norm = ElasticLayerNorm(max_dim) if norm else None

    def _positions(self, grid: int, dim: int) -> Tensor:
        if grid > self.positions.shape[0]:
            raise ValueError(f"token grid {grid} exceeds the largest {self.positions.shape[0]}")
        return self.positions[:grid, :grid, :dim].reshape(grid * grid, dim)

    def forward(self, x: Tensor, dim: int) -> tuple[Tensor, int | None]:
        features = self.proj(x, dim)
        grid = features.shape[-1]
        tokens = features.flatten(2).transpose(1, 2) + self._positions(grid, dim)
        return (tokens if self.norm is None else self.norm(tokens)), grid

    def extract(self, **params: Any) -> PatchEmbed:
        embed = PatchEmbed(**params)
        dim, grid = int(params["dim"]), int(params["grid"])
        embed.proj = self.proj.extract(int(params["in_channels"]), dim)
        _copy(embed.positions, self._positions(grid, dim))
        if self.norm is not None:
            embed.norm = self.norm.extract(dim)
        return embed


@dataclass(frozen=True)
class PatchEmbedding(FrontEnd):
    """Square images cut into ``patch x patch`` patches (one weight per patch size: kernels of
    different sizes cannot share a slice meaningfully).

    Attributes:
        patch: patch side in pixels.
        max_resolution: largest image side (sizes the position table).
        norm: LayerNorm on the embeddings (post-LN encoders normalise before the first layer).
    """

    patch: int = 16
    max_resolution: int = 224
    norm: bool = False
    kind: str = "patch_embed"

    @property
    def max_grid(self) -> int:
        return self.max_resolution // self.patch

    def input_shape(self, batch: int, in_channels: int, size: tuple[int, ...]) -> tuple[int, ...]:
        side = self._side(size)
        return (batch, in_channels, side, side)

    def _side(self, size: tuple[int, ...]) -> int:
        if len(size) != 2 or size[0] != size[1]:
            raise ValueError(f"the patch front end takes square images, got size {size}")
        side = int(size[0])
        if side % self.patch or not self.patch <= side <= self.max_resolution:
            raise ValueError(
                f"image side {side} must be a multiple of the patch {self.patch} "
                f"between {self.patch} and {self.max_resolution}"
            )
        return side

    def layout(self, size: tuple[int, ...]) -> tuple[int, int | None]:
        grid = self._side(size) // self.patch
        return grid * grid, grid

    def block_params(
        self, in_channels: int, dim: int, size: tuple[int, ...]
    ) -> dict[str, ParamValue]:
        return {
            "in_channels": in_channels,
            "dim": dim,
            "patch": self.patch,
            "grid": self._side(size) // self.patch,
            "norm": self.norm,
        }

    def build_static(self, **params: Any) -> nn.Module:
        return PatchEmbed(**params)

    def build_elastic(self, in_channels: int, max_dim: int) -> nn.Module:
        return ElasticPatchEmbed(in_channels, max_dim, self.patch, self.max_grid, self.norm)


class SequenceEmbed(nn.Module):
    """Static sequence front end: frames (B, T, features) -> linear -> + positions [+ LN]."""

    def __init__(self, in_features: int, dim: int, length: int, norm: bool):
        super().__init__()
        self.proj = nn.Linear(in_features, dim)
        self.positions = nn.Parameter(torch.zeros(length, dim))
        self.norm = nn.LayerNorm(dim) if norm else None

    def forward(self, x: Tensor) -> Tensor:
        tokens: Tensor = self.proj(x) + self.positions
        return tokens if self.norm is None else self.norm(tokens)


class ElasticSequenceEmbed(nn.Module):
    """Sequence front end with elastic width; positions of the first ``T`` frames are used."""

    def __init__(self, in_features: int, max_dim: int, max_length: int, norm: bool):
        super().__init__()
        self.proj = ElasticLinear(in_features, max_dim)
        self.positions = nn.Parameter(torch.zeros(max_length, max_dim))
        nn.init.trunc_normal_(self.positions, std=0.02)
        self.norm = ElasticLayerNorm(max_dim) if norm else None

    def forward(self, x: Tensor, dim: int) -> tuple[Tensor, int | None]:
        tokens = self.proj(x, dim) + self.positions[: x.shape[1], :dim]
        return (tokens if self.norm is None else self.norm(tokens)), None

    def extract(self, **params: Any) -> SequenceEmbed:
        embed = SequenceEmbed(**params)
        dim, length = int(params["dim"]), int(params["length"])
        embed.proj = self.proj.extract(int(params["in_features"]), dim)
        _copy(embed.positions, self.positions[:length, :dim])
        if self.norm is not None:
            embed.norm = self.norm.extract(dim)
        return embed


@dataclass(frozen=True)
class SequenceEmbedding(FrontEnd):
    """Feature sequences (B, frames, features), e.g. audio filterbanks or a conv feature
    extractor's output; ``in_channels`` of the supernet is the number of features per frame.
    Tokens form no grid, so ``pool`` and ``relpos`` mixers are unavailable."""

    max_length: int = 512
    norm: bool = False
    kind: str = "sequence_embed"

    @property
    def max_grid(self) -> None:
        return None

    def input_shape(self, batch: int, in_channels: int, size: tuple[int, ...]) -> tuple[int, ...]:
        return (batch, self._length(size), in_channels)

    def _length(self, size: tuple[int, ...]) -> int:
        if len(size) != 1 or not 1 <= size[0] <= self.max_length:
            raise ValueError(f"a sequence size is (frames,) with 1..{self.max_length} frames")
        return int(size[0])

    def layout(self, size: tuple[int, ...]) -> tuple[int, int | None]:
        return self._length(size), None

    def block_params(
        self, in_channels: int, dim: int, size: tuple[int, ...]
    ) -> dict[str, ParamValue]:
        return {
            "in_features": in_channels,
            "dim": dim,
            "length": self._length(size),
            "norm": self.norm,
        }

    def build_static(self, **params: Any) -> nn.Module:
        return SequenceEmbed(**params)

    def build_elastic(self, in_channels: int, max_dim: int) -> nn.Module:
        return ElasticSequenceEmbed(in_channels, max_dim, self.max_length, self.norm)


__all__ = [
    "ElasticFrontEndModule",
    "ElasticPatchEmbed",
    "ElasticSequenceEmbed",
    "FrontEnd",
    "PatchEmbed",
    "PatchEmbedding",
    "SequenceEmbed",
    "SequenceEmbedding",
]

"""LightHuBERT's once-for-all Transformer as a ViT search space (``lighthubert``,
``lighthubert_small``).

LightHuBERT (Wang et al., 2022) searches a post-LN Transformer encoder with head_dim 64: a
global embedding width, per-layer heads and FFN ratio, and a depth whose layers are dropped
inside groups of four (:data:`LAYER_DROP_MAPS`, from the released code). Both spaces share one
supernet size, 768 wide / 12 heads / FFN 3072 / 12 layers, and differ in their choices:

| dimension | base (``lighthubert``) | small (``lighthubert_small``) |
|---|---|---|
| embed_dim | {512, 640, 768} | {256, 384, 512} |
| heads per layer | {8, 10, 12} | {4, 6, 8} |
| ffn_ratio per layer | {3.5, 4.0} | {3.0, 3.5, 4.0} |
| layers | {12} | {10, 11, 12} |
| encoder subnets | 6,530,347,008 | 951,892,141,473 |

LightHuBERT is a speech model; here the front end is a ViT patch embedding (patch 16) and the
input resolution is searched as well, so each space holds ``len(resolutions)`` (4) times the
encoder subnets above (restricted to one resolution it holds exactly those). The front end is
a :class:`~nasvit.nn.transformer.FrontEnd` field of the configuration, so a sequence or
audio-feature front end can replace it. Classification reads the mean token (HuBERT has no
class token).

DeiT-S (384 wide, 6 heads, MLP ratio 4, 12 layers, 22.1M parameters) is a point of the small
space and DeiT-B (768, 12, 4, 12: 86.6M) of the base space; their parameter counts match
(post-LN moves DeiT's final LayerNorm to the embeddings; mean pooling replaces the class token).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from nasvit.nn.transformer import (
    LayerSetting,
    PatchEmbedding,
    SubnetSetting,
    TransformerConfig,
    TransformerSupernet,
)
from nasvit.search_spaces.bases import TransformerSpace
from nasvit.search_spaces.dimensions import (
    ArchitectureError,
    Choice,
    LayerChoices,
)
from nasvit.search_spaces.registry import register_space

#: Which of the 12 supernet layers a subnet of each depth keeps (1 = keep), in groups of four
#: (layers 1-4, 5-8, 9-12), as in LightHuBERT's released code.
LAYER_DROP_MAPS: dict[int, tuple[int, ...]] = {
    6: (1, 1, 0, 0, 1, 1, 0, 0, 1, 1, 0, 0),
    7: (1, 1, 1, 0, 1, 1, 0, 0, 1, 1, 0, 0),
    8: (1, 1, 1, 0, 1, 1, 1, 0, 1, 1, 0, 0),
    9: (1, 1, 1, 0, 1, 1, 1, 0, 1, 1, 1, 0),
    10: (1, 1, 1, 1, 1, 1, 1, 0, 1, 1, 1, 0),
    11: (1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 0),
    12: (1,) * 12,
}


def kept_layers(depth: int) -> tuple[int, ...]:
    """Indices of the supernet layers a subnet with ``depth`` layers runs, in order."""
    if depth not in LAYER_DROP_MAPS:
        raise ArchitectureError(
            f"no layer-drop map for {depth} layers; known: {', '.join(map(str, LAYER_DROP_MAPS))}"
        )
    return tuple(i for i, keep in enumerate(LAYER_DROP_MAPS[depth]) if keep)


@dataclass(frozen=True)
class LightHuBERTConfig:
    """Choices of a LightHuBERT space; the supernet is sized by the fields below them."""

    embed_dims: tuple[int, ...] = (512, 640, 768)
    heads: tuple[int, ...] = (8, 10, 12)
    ffn_ratios: tuple[float, ...] = (3.5, 4.0)
    layers: tuple[int, ...] = (12,)
    # Few resolutions: the supernet is large, and 4 token counts (4, 16, 64, 196) already show
    # how latency grows with tokens.
    resolutions: tuple[int, ...] = (32, 64, 128, 224)
    supernet_dim: int = 768
    supernet_heads: int = 12
    supernet_ffn: int = 3072
    supernet_layers: int = 12
    head_dim: int = 64
    front_end: PatchEmbedding = PatchEmbedding(patch=16, max_resolution=224, norm=True)

    def __post_init__(self) -> None:
        if self.supernet_layers != 12:
            raise ValueError("LightHuBERT's layer-drop maps are defined for 12 layers")
        too_wide = [d for d in self.embed_dims if d > self.supernet_dim]
        too_many = [h for h in self.heads if h > self.supernet_heads]
        too_long = [r for r in self.ffn_ratios if r * max(self.embed_dims) > self.supernet_ffn]
        if too_wide or too_many or too_long or set(self.layers) - set(LAYER_DROP_MAPS):
            raise ValueError("a choice exceeds the supernet (or has no layer-drop map)")

    def transformer(self) -> TransformerConfig:
        return TransformerConfig(
            front_end=self.front_end,
            max_dim=self.supernet_dim,
            max_heads=self.supernet_heads,
            max_hidden=self.supernet_ffn,
            num_layers=self.supernet_layers,
            mixers=("softmax",),
            norm_first=False,  # post-LN, as HuBERT
            head_dim=self.head_dim,
        )


BASE = LightHuBERTConfig()
SMALL = LightHuBERTConfig(
    embed_dims=(256, 384, 512), heads=(4, 6, 8), ffn_ratios=(3.0, 3.5, 4.0), layers=(10, 11, 12)
)


def ffn_width(dim: int, ratio: float) -> int:
    return round(dim * ratio)


def subnet_setting(arch: Mapping[str, Any]) -> SubnetSetting:
    """The Transformer subnet of ``arch``: the i-th listed layer runs the i-th kept layer."""
    dim = int(arch["embed_dim"])
    slots = kept_layers(int(arch["layers"]))
    layers = tuple(
        LayerSetting(slot, "softmax", int(heads), ffn_width(dim, float(ratio)))
        for slot, heads, ratio in zip(slots, arch["heads"], arch["ffn_ratio"], strict=True)
    )
    side = int(arch["resolution"])
    return SubnetSetting((side, side), dim, layers)


class LightHuBERTSupernet(TransformerSupernet):
    """768 / 12 heads / 3072 / 12 layers; ``forward`` takes a LightHuBERT architecture."""

    def __init__(self, config: LightHuBERTConfig, num_classes: int = 1000, in_channels: int = 3):
        super().__init__(config.transformer(), num_classes, in_channels)
        self.space_config = config

    def setting(self, arch: Mapping[str, Any]) -> SubnetSetting:
        return subnet_setting(arch)


class LightHuBERTSpace(TransformerSpace):
    """A LightHuBERT space (``base`` or ``small`` choices) with a ViT patch front end."""

    config: LightHuBERTConfig

    def __init__(self, config: LightHuBERTConfig, variant: str):
        self.config, self.variant = config, variant
        self.description = (
            f"LightHuBERT {variant}: once-for-all post-LN ViT encoder (head_dim 64), global "
            "width, per-layer heads and FFN ratio, group-of-four layer drop; supernet "
            f"{config.supernet_dim}/{config.supernet_heads}/{config.supernet_ffn}/"
            f"{config.supernet_layers}"
        )
        c = config
        super().__init__(
            [
                Choice("resolution", c.resolutions, "r", "input side in pixels (patch 16)"),
                Choice("embed_dim", c.embed_dims, "e", "embedding width, all layers"),
                Choice("layers", c.layers, "l", "encoder layers (LightHuBERT layer-drop map)"),
                LayerChoices("heads", c.heads, "h", "layers", "attention heads (64 wide each)"),
                LayerChoices("ffn_ratio", c.ffn_ratios, "f", "layers", "FFN width / embed_dim"),
            ]
        )

    def published_archs(self) -> dict[str, Mapping[str, Any]]:
        def deit(dim: int, heads: int) -> dict[str, Any]:
            return {
                "resolution": 224,
                "embed_dim": dim,
                "layers": 12,
                "heads": (heads,) * 12,
                "ffn_ratio": (4.0,) * 12,
            }

        return {"deit_small": deit(384, 6), "deit_base": deit(768, 12)}

    def build_supernet(self, num_classes: int = 1000, in_channels: int = 3) -> LightHuBERTSupernet:
        return LightHuBERTSupernet(self.config, num_classes, in_channels)

    def subnet_setting(self, arch: Mapping[str, Any]) -> SubnetSetting:
        return subnet_setting(arch)

    def probe_layers(self, dim: int) -> tuple[LayerSetting, ...]:
        heads: tuple[int, ...] = self.choices("heads")
        ratios: tuple[float, ...] = self.choices("ffn_ratio")
        return tuple(
            LayerSetting(0, "softmax", h, ffn_width(dim, ratios[0])) for h in heads
        ) + tuple(LayerSetting(0, "softmax", heads[0], ffn_width(dim, r)) for r in ratios)


@register_space("lighthubert")
def lighthubert_space() -> LightHuBERTSpace:
    return LightHuBERTSpace(BASE, "base")


@register_space("lighthubert_small")
def lighthubert_small_space() -> LightHuBERTSpace:
    return LightHuBERTSpace(SMALL, "small")


__all__ = [
    "BASE",
    "LAYER_DROP_MAPS",
    "SMALL",
    "LightHuBERTConfig",
    "LightHuBERTSpace",
    "LightHuBERTSupernet",
    "kept_layers",
    "subnet_setting",
]

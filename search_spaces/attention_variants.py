"""A ViT supernet whose layers each choose a token mixer (``attention_variants``).

After "NAS on efficient Transformers" / mixFormer-style mixed attention: every layer of a pre-LN
ViT picks its token mixer, besides an elastic embedding width (global), heads and FFN ratio (per
layer) and a first-k depth. As in the released code the mixers are separate modules (no weight
sharing between mixer types) while the patch embedding, norms, FFNs and head are shared.

Mixers (:data:`nasvit.nn.transformer.MIXERS`), cheapest first:

- ``identity``: no mixer block (the layer is its FFN only);
- ``pool``: ``avgpool3x3(x) - x`` on the token grid (PoolFormer, EfficientFormer MB4D);
- ``shsa``: single-head attention on ~1/4.67 of the channels, query/key width 16 (SHViT);
- ``linear``: cosFormer-style linear attention (ReLU features, cos re-weighting);
- ``softmax``: multi-head softmax attention;
- ``relpos``: softmax attention plus a learned per-head bias indexed by the 2-D offset between
  tokens (stored for the largest grid, so it works at every resolution).

Heads (64 wide each) apply to ``linear``, ``softmax`` and ``relpos``; the other mixers ignore
them, so architectures that differ only in an unused head count are the same network (they
lower to the same blocks). DeiT-Ti (192 wide, 3 heads, MLP ratio 4, 12 layers, patch 16, 224:
5.7M parameters) is a point of the space with all-softmax layers; the class token is replaced by
mean pooling (one token fewer, 384 parameters).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from nasvit.nn.transformer import (
    HEADED_MIXERS,
    MIXERS,
    LayerSetting,
    PatchEmbedding,
    SubnetSetting,
    TransformerConfig,
    TransformerSupernet,
)
from nasvit.search_spaces.bases import TransformerSpace
from nasvit.search_spaces.dimensions import (
    Choice,
    LayerChoices,
)
from nasvit.search_spaces.registry import register_space


@dataclass(frozen=True)
class AttentionVariantsConfig:
    """Choices of the space; the supernet is sized by the largest of each."""

    resolutions: tuple[int, ...] = (32, 64, 96, 128, 160, 192, 224)
    embed_dims: tuple[int, ...] = (64, 128, 192, 256, 320, 384)
    depths: tuple[int, ...] = tuple(range(1, 15))  # first-k layers
    heads: tuple[int, ...] = (1, 2, 3, 4, 5, 6)
    mlp_ratios: tuple[int, ...] = (2, 3, 4)
    mixers: tuple[str, ...] = MIXERS
    head_dim: int = 64
    patch: int = 16

    def __post_init__(self) -> None:
        unknown = sorted(set(self.mixers) - set(MIXERS))
        if unknown:
            raise ValueError(f"unknown mixer(s) {unknown}; known: {', '.join(MIXERS)}")

    def transformer(self) -> TransformerConfig:
        return TransformerConfig(
            front_end=PatchEmbedding(self.patch, max(self.resolutions), norm=False),
            max_dim=max(self.embed_dims),
            max_heads=max(self.heads),
            max_hidden=max(self.embed_dims) * max(self.mlp_ratios),
            num_layers=max(self.depths),
            mixers=tuple(m for m in self.mixers if m != "identity"),
            norm_first=True,  # pre-LN, as ViT/DeiT
            head_dim=self.head_dim,
        )


def subnet_setting(arch: Mapping[str, Any]) -> SubnetSetting:
    """The Transformer subnet of ``arch`` (layer ``i`` uses supernet layer ``i``)."""
    dim = int(arch["embed_dim"])
    layers = tuple(
        LayerSetting(slot, str(mixer), int(heads), dim * int(ratio))
        for slot, (mixer, heads, ratio) in enumerate(
            zip(arch["mixer"], arch["heads"], arch["mlp_ratio"], strict=True)
        )
    )
    side = int(arch["resolution"])
    return SubnetSetting((side, side), dim, layers)


class AttentionVariantsSupernet(TransformerSupernet):
    """Pre-LN ViT supernet holding every mixer in every layer."""

    def __init__(
        self, config: AttentionVariantsConfig, num_classes: int = 1000, in_channels: int = 3
    ):
        super().__init__(config.transformer(), num_classes, in_channels)
        self.space_config = config

    def setting(self, arch: Mapping[str, Any]) -> SubnetSetting:
        return subnet_setting(arch)


class AttentionVariantsSpace(TransformerSpace):
    description = (
        "ViT whose layers each choose a token mixer (softmax, cosFormer linear, relative-"
        "position, SHViT single-head, pooling, identity); elastic width, heads, FFN, depth; "
        "contains DeiT-Ti"
    )

    config: AttentionVariantsConfig

    def __init__(self, config: AttentionVariantsConfig | None = None):
        self.config = config or AttentionVariantsConfig()
        c = self.config
        super().__init__(
            [
                Choice("resolution", c.resolutions, "r", f"input side in pixels (patch {c.patch})"),
                Choice("embed_dim", c.embed_dims, "e", "embedding width, all layers"),
                Choice("depth", c.depths, "d", "encoder layers (the first ones of the supernet)"),
                LayerChoices("mixer", c.mixers, "x", "depth", "token mixer per layer"),
                LayerChoices(
                    "heads", c.heads, "h", "depth", "heads per layer (linear/softmax/relpos)"
                ),
                LayerChoices("mlp_ratio", c.mlp_ratios, "m", "depth", "FFN width / embed_dim"),
            ]
        )

    def published_archs(self) -> dict[str, Mapping[str, Any]]:
        return {
            "deit_tiny": {
                "resolution": 224,
                "embed_dim": 192,
                "depth": 12,
                "mixer": ("softmax",) * 12,
                "heads": (3,) * 12,
                "mlp_ratio": (4,) * 12,
            }
        }

    def build_supernet(
        self, num_classes: int = 1000, in_channels: int = 3
    ) -> AttentionVariantsSupernet:
        return AttentionVariantsSupernet(self.config, num_classes, in_channels)

    def subnet_setting(self, arch: Mapping[str, Any]) -> SubnetSetting:
        return subnet_setting(arch)

    def probe_layers(self, dim: int) -> tuple[LayerSetting, ...]:
        """Every mixer with each of its head counts (one for mixers without heads), and every
        FFN ratio."""
        mixers: tuple[str, ...] = self.choices("mixer")
        heads: tuple[int, ...] = self.choices("heads")
        ratios: tuple[int, ...] = self.choices("mlp_ratio")
        return tuple(
            LayerSetting(0, mixer, h, dim * ratios[0])
            for mixer in mixers
            for h in (heads if mixer in HEADED_MIXERS else heads[:1])
        ) + tuple(LayerSetting(0, mixers[0], heads[0], dim * r) for r in ratios)


@register_space("attention_variants")
def attention_variants_space() -> AttentionVariantsSpace:
    return AttentionVariantsSpace()


__all__ = [
    "AttentionVariantsConfig",
    "AttentionVariantsSpace",
    "AttentionVariantsSupernet",
    "subnet_setting",
]

"""Small spaces that exercise the core's dimension types without a model."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from nasvit.search_spaces import (
    Choice,
    ChoiceList,
    Constraint,
    LayerChoices,
    SearchSpace,
    Tied,
)


class ModelFreeSpace(SearchSpace):
    """A space with dimensions only; model methods are not needed by the core tests."""

    def __init__(self, name: str, dimensions, constraints: Sequence[Constraint] = ()):
        self.name = name
        super().__init__(dimensions, constraints)

    def published_archs(self) -> dict[str, Mapping[str, Any]]:
        return {}

    def input_shape(self, arch, batch=1, in_channels=3):
        raise NotImplementedError

    def build_supernet(self, num_classes=1000, in_channels=3):
        raise NotImplementedError

    def lower(self, arch, batch=1, num_classes=1000, in_channels=3):
        raise NotImplementedError

    def enumerate_blocks(self, resolutions=None, batch=1, num_classes=1000, in_channels=3):
        raise NotImplementedError


def lighthubert_like(
    embed: tuple[int, ...],
    heads: tuple[int, ...],
    ratios: tuple[float, ...],
    layers: tuple[int, ...],
) -> ModelFreeSpace:
    """LightHuBERT's dimensions: global embed dim and depth, per-layer heads and FFN ratio,
    with the attention width tied to the heads (head_dim 64)."""
    return ModelFreeSpace(
        "lighthubert-like",
        [
            Choice("embed_dim", embed, "e"),
            Choice("layers", layers, "l"),
            LayerChoices("heads", heads, "h", "layers"),
            LayerChoices("ffn_ratio", ratios, "f", "layers"),
            Tied("attention_dim", "heads", lambda hs: tuple(64 * h for h in hs)),
        ],
    )


def staged(max_depth: int = 3) -> ModelFreeSpace:
    """Per-stage depths with one value per block and a cross-dimension constraint."""
    return ModelFreeSpace(
        "staged",
        [
            Choice("resolution", (32, 64), "r"),
            ChoiceList("depths", (tuple(range(1, max_depth + 1)), (1, 2)), "d"),
            Choice("extra", (0, 1, 2), "x"),
            LayerChoices("kernel", (3, 5), "k", "depths"),
            Choice("act", ("relu", "gelu"), "a"),
        ],
        [
            Constraint(
                "extra <= depths[1]", ("extra", "depths"), lambda a: a["extra"] <= a["depths"][1]
            )
        ],
    )


def small_efficientformer() -> SearchSpace:
    """A small slice of the efficientformer space at resolution 32: real blocks, a table of a
    few dozen entries, subnets of well under a millisecond (shared by the pipeline, API,
    latency and service tests)."""
    from nasvit.search_spaces import get_space

    return get_space("efficientformer").restrict(
        resolution=[32],
        widths=[[16, 32], [32, 48], [64, 96], [128, 192]],
        depths=[[1, 2], [1, 2], [1, 2, 3], [1, 2, 3]],
        vit_num=[0, 1, 2],
    )

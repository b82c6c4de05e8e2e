"""MobileDets ("searching detection backbones for mobile accelerators") as a weight-sharing space.

Structure (that of the released MobileDet backbones): a conv3x3/2 stem, seven stages of layers,
and a classification head (global average pool + linear) in place of the detection head:

=====  ======  ======  ================================================================
stage  stride  layers  base filters (x multiplier, rounded to 8)
=====  ======  ======  ================================================================
stem   2       1       16
0      1       1       16   (IBN without expansion; Tucker too on accelerators)
1      2       4       24
2      2       4       40
3      2       4       96
4      1       4       96
5      2       4       160
6      1       1       192
=====  ======  ======  ================================================================

Searched, as in the paper: every layer chooses its block (IBN k in {3, 5}, e in {4, 8}; fused IBN
k in {3, 5}, e in {4, 8}; Tucker k=3, input/output compression in {0.25, 0.75}; or skip), each
stage (and the stem) chooses its output filters as a TuNAS multiplier {0.5, 0.625, 0.75, 1, 1.25,
1.5, 2} of its base, and the input resolution. The first layer of a stage changes the shape
(stride 2 or a new width) and carries no residual, so it can never be skipped; the other layers
of a stage keep the shape, add their input, and may be skipped (stage depth 1..4). The base
filters are chosen so the three released backbones (CPU, DSP, EdgeTPU) are points of the space.

Two variants (as the paper's per-hardware spaces): ``cpu`` (registered as ``mobiledets``) uses
swish6 and squeeze-excite with IBN blocks only; ``accelerator`` (``mobiledets_accelerator``) uses
ReLU6, no squeeze-excite, and IBN, fused IBN and Tucker blocks.

Weight sharing: every layer owns one elastic block per block type it may choose (types share no
weights); within a type, kernels are centre crops of the 5x5 weight and widths, expansions and
ranks are first-k slices (see :mod:`nasvit.nn.mobile`).
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from functools import cache, partial
from typing import Any, cast

import torch
from torch import Tensor, nn

from nasvit.nn import BlockSpec, Supernet
from nasvit.nn.mobile import (
    ClassifierHead,
    ConvBNAct,
    ElasticClassifierHead,
    ElasticConvBNAct,
    ElasticFusedInvertedBottleneck,
    ElasticInvertedBottleneck,
    ElasticTucker,
    FusedInvertedBottleneck,
    InvertedBottleneck,
    TuckerBlock,
    round_filters,
)
from nasvit.search_spaces.bases import SquareImageSpace
from nasvit.search_spaces.dimensions import Architecture, ArchitectureError, Choice, ChoiceList
from nasvit.search_spaces.registry import register_space

VARIANTS = ("cpu", "accelerator")
STEM_KERNEL = 3


# --------------------------------------------------------------------------- layer operations
@dataclass(frozen=True)
class LayerOp:
    """What one layer runs; written as a token such as ``ibn5e8``, ``fused3e4``,
    ``tucker3i25o75`` (kernel 3, compression 0.25 in, 0.75 out) or ``skip``."""

    block: str  # ibn | fused | tucker | skip
    kernel: int = 0
    expansion: int = 0  # ibn / fused: expanded width = expansion x input width
    in_ratio: float = 0.0  # tucker: compressed input width = round8(in_ratio x input width)
    out_ratio: float = 0.0  # tucker: width of the kxk conv = round8(out_ratio x output width)

    @property
    def token(self) -> str:
        if self.block == "skip":
            return "skip"
        if self.block == "tucker":
            return f"tucker{self.kernel}i{round(self.in_ratio * 100)}o{round(self.out_ratio * 100)}"
        return f"{self.block}{self.kernel}e{self.expansion}"


_TOKEN = re.compile(r"^(?:(ibn|fused)(\d+)e(\d+)|tucker(\d+)i(\d+)o(\d+)|skip)$")


@cache
def parse_op(token: str) -> LayerOp:
    """The :class:`LayerOp` a token names (tokens come from a validated architecture)."""
    match = _TOKEN.match(token)
    if match is None:
        raise ArchitectureError(
            f"'{token}' is not a layer operation (e.g. ibn3e4, fused5e8, tucker3i25o75, skip)"
        )
    if token == "skip":
        return LayerOp("skip")
    block, kernel, expansion, tucker_kernel, in_pct, out_pct = match.groups()
    if block is not None:
        return LayerOp(block, int(kernel), int(expansion))
    return LayerOp("tucker", int(tucker_kernel), 0, int(in_pct) / 100, int(out_pct) / 100)


# --------------------------------------------------------------------------- configuration
@dataclass(frozen=True)
class StageConfig:
    base_filters: int  # output filters at multiplier 1
    stride: int  # of the stage's first layer
    layers: int  # the first is always present, the others may be skipped


@dataclass(frozen=True)
class MobileDetConfig:
    """Choices of the space; the supernet is sized by the largest choice of each."""

    variant: str = "cpu"  # cpu: swish6 + SE, IBN only; accelerator: ReLU6, IBN + fused + Tucker
    resolutions: tuple[int, ...] = (32, 64, 96, 128, 160, 192, 224, 256, 288, 320)
    stem_filters: int = 16
    stages: tuple[StageConfig, ...] = (
        StageConfig(16, 1, 1),
        StageConfig(24, 2, 4),
        StageConfig(40, 2, 4),
        StageConfig(96, 2, 4),
        StageConfig(96, 1, 4),
        StageConfig(160, 2, 4),
        StageConfig(192, 1, 1),
    )
    filter_multipliers: tuple[float, ...] = (0.5, 0.625, 0.75, 1.0, 1.25, 1.5, 2.0)  # TuNAS
    kernels: tuple[int, ...] = (3, 5)  # IBN and fused IBN
    expansions: tuple[int, ...] = (4, 8)  # IBN and fused IBN
    tucker_kernel: int = 3
    tucker_ratios: tuple[float, ...] = (0.25, 0.75)  # input and output compression
    # Initial scale of the BatchNorm closing each residual branch. Small, so a block that
    # random sampling rarely trains starts near the identity instead of corrupting the stream:
    # without it, uniformly sampled accelerator subnets did not learn in 120 steps (loss 2.3);
    # with 0.1 they reached 0.33 (0 gave 0.23, but would hide residual branches from the
    # parity tests of a fresh supernet).
    residual_gamma: float = 0.1

    def __post_init__(self) -> None:
        if self.variant not in VARIANTS:
            raise ValueError(f"unknown variant '{self.variant}'; known: {', '.join(VARIANTS)}")

    @property
    def activation(self) -> str:
        return "swish6" if self.variant == "cpu" else "relu6"

    @property
    def squeeze_excite(self) -> bool:
        return self.variant == "cpu"

    def width_choices(self) -> tuple[tuple[int, ...], ...]:
        """Output filters of the stem and of each stage: base x multiplier, rounded to 8."""
        bases = (self.stem_filters, *(stage.base_filters for stage in self.stages))
        return tuple(
            tuple(sorted({round_filters(base * m) for m in self.filter_multipliers}))
            for base in bases
        )

    def layers(self) -> tuple[_Layer, ...]:
        return tuple(
            _Layer(stage, index == 0, config.stride if index == 0 else 1)
            for stage, config in enumerate(self.stages)
            for index in range(config.layers)
        )

    def op_choices(self, layer: _Layer) -> tuple[str, ...]:
        """Tokens a layer may take, roughly from cheapest to most expensive."""
        tucker = [
            LayerOp("tucker", self.tucker_kernel, 0, a, b).token
            for a in self.tucker_ratios
            for b in self.tucker_ratios
        ]
        accelerator = self.variant == "accelerator"
        if layer.stage == 0:  # the released backbones' first layer: IBN without expansion
            ibn = [LayerOp("ibn", k, 1).token for k in self.kernels]
            return tuple((tucker if accelerator else []) + ibn)
        by_cost = [(e, k) for e in self.expansions for k in self.kernels]
        ibn = [LayerOp("ibn", k, e).token for e, k in by_cost]
        fused = [LayerOp("fused", k, e).token for e, k in by_cost]
        ops = tucker + ibn + fused if accelerator else ibn
        return tuple(ops if layer.first else ["skip", *ops])


@dataclass(frozen=True)
class _Layer:
    stage: int  # 0..6; its output width is widths[stage + 1]
    first: bool  # first layer of its stage: new shape, no residual, never skipped
    stride: int


def _after_stride(size: int, stride: int) -> int:
    """Output side of an odd-kernel, 'same'-padded convolution."""
    return (size + stride - 1) // stride


# --------------------------------------------------------------------------- block plan
@dataclass(frozen=True)
class _Step:
    """One block of a subnet: what it is, where its weights live and the shapes it maps."""

    kind: str  # stem | ibn | fused | tucker | head
    params: dict[str, Any]
    slot: int  # layer position (-1 for stem and head)
    input_shape: tuple[int, ...]
    output_shape: tuple[int, ...]


def _layer_step(
    config: MobileDetConfig,
    layer: _Layer,
    slot: int,
    op: LayerOp,
    in_width: int,
    out_width: int,
    size: int,
    batch: int,
) -> _Step:
    params: dict[str, Any] = {
        "in_channels": in_width,
        "out_channels": out_width,
        "kernel": op.kernel,
        "stride": layer.stride,
        "residual": not layer.first,
        "activation": config.activation,
    }
    if op.block == "tucker":
        params.update(in_ratio=op.in_ratio, out_ratio=op.out_ratio)
    else:
        params.update(expansion=op.expansion, se=config.squeeze_excite)
    out_size = _after_stride(size, layer.stride)
    return _Step(
        op.block,
        params,
        slot,
        (batch, in_width, size, size),
        (batch, out_width, out_size, out_size),
    )


def _stem_step(
    config: MobileDetConfig, in_channels: int, width: int, size: int, batch: int
) -> _Step:
    params: dict[str, Any] = {
        "in_channels": in_channels,
        "out_channels": width,
        "kernel": STEM_KERNEL,
        "stride": 2,
        "activation": config.activation,
    }
    out = _after_stride(size, 2)
    return _Step("stem", params, -1, (batch, in_channels, size, size), (batch, width, out, out))


def _head_step(width: int, num_classes: int, size: int, batch: int) -> _Step:
    params = {"in_channels": width, "num_classes": num_classes}
    return _Step("head", params, -1, (batch, width, size, size), (batch, num_classes))


def _plan(
    arch: Mapping[str, Any],
    config: MobileDetConfig,
    in_channels: int,
    num_classes: int,
    batch: int,
) -> list[_Step]:
    """The subnet's blocks in order (skipped layers lower to nothing); shared by extraction
    and latency lowering."""
    widths, ops = arch["widths"], arch["ops"]
    steps = [_stem_step(config, in_channels, widths[0], arch["resolution"], batch)]
    size = steps[0].output_shape[-1]
    for slot, (layer, token) in enumerate(zip(config.layers(), ops, strict=True)):
        op = parse_op(token)
        if op.block == "skip":
            continue
        in_width = widths[layer.stage] if layer.first else widths[layer.stage + 1]
        step = _layer_step(config, layer, slot, op, in_width, widths[layer.stage + 1], size, batch)
        steps.append(step)
        size = step.output_shape[-1]
    steps.append(_head_step(widths[-1], num_classes, size, batch))
    return steps


_STATIC_BLOCKS: dict[str, type[nn.Module]] = {
    "stem": ConvBNAct,
    "ibn": InvertedBottleneck,
    "fused": FusedInvertedBottleneck,
    "tucker": TuckerBlock,
    "head": ClassifierHead,
}


# --------------------------------------------------------------------------- supernet
#: The elastic blocks a supernet layer holds (one per block type its ops use).
ELASTIC_BLOCKS = (ElasticInvertedBottleneck, ElasticFusedInvertedBottleneck, ElasticTucker)


class MobileDetSupernet(Supernet):
    """Weight-sharing supernet of a ``mobiledets`` space: per layer, one elastic block for each
    block type the layer may choose."""

    def __init__(self, config: MobileDetConfig, num_classes: int = 1000, in_channels: int = 3):
        super().__init__()
        self.config, self.num_classes, self.in_channels = config, num_classes, in_channels
        self._layers = config.layers()
        max_widths = [max(w) for w in config.width_choices()]
        activation, se = config.activation, config.squeeze_excite
        self.stem = ElasticConvBNAct(in_channels, max_widths[0], STEM_KERNEL, 2, activation)
        self.layers = nn.ModuleList()
        for layer in self._layers:
            max_in = max_widths[layer.stage + (0 if layer.first else 1)]
            max_out = max_widths[layer.stage + 1]
            ops = [parse_op(t) for t in config.op_choices(layer) if t != "skip"]
            blocks = nn.ModuleDict()
            for block in ("ibn", "fused", "tucker"):
                chosen = [op for op in ops if op.block == block]
                if not chosen:
                    continue
                kernel = max(op.kernel for op in chosen)
                shape = (max_in, max_out, kernel)
                common: dict[str, Any] = {"stride": layer.stride, "residual": not layer.first}
                if block == "tucker":
                    blocks[block] = ElasticTucker(
                        *shape,
                        max(op.in_ratio for op in chosen),
                        max(op.out_ratio for op in chosen),
                        activation=activation,
                        **common,
                    )
                else:
                    elastic = (
                        ElasticInvertedBottleneck
                        if block == "ibn"
                        else ElasticFusedInvertedBottleneck
                    )
                    blocks[block] = elastic(
                        *shape,
                        max(op.expansion for op in chosen),
                        se=se,
                        activation=activation,
                        **common,
                    )
            self.layers.append(blocks)
        self.head = ElasticClassifierHead(max_widths[-1], num_classes)
        with torch.no_grad():
            for layer_blocks in self.layers:
                for elastic_block in cast(nn.ModuleDict, layer_blocks).values():
                    assert isinstance(elastic_block, ELASTIC_BLOCKS)
                    if elastic_block.residual:
                        closing = (
                            elastic_block.expand
                            if isinstance(elastic_block, ElasticTucker)
                            else elastic_block.project
                        )
                        closing.bn.weight.fill_(config.residual_gamma)

    def _block(self, slot: int, kind: str) -> nn.Module:
        """Layer ``slot``'s elastic block of type ``kind`` (``ibn``, ``fused``, ``tucker``)."""
        return cast(nn.ModuleDict, self.layers[slot])[kind]

    def forward(self, x: Tensor, arch: Mapping[str, Any]) -> Tensor:
        widths = arch["widths"]
        # oneDNN's depthwise-convolution backward runs several times faster on NHWC tensors
        # (measured ~2x per training step on CPU); extracted subnets keep the default layout.
        x = self.stem(x, widths[0], STEM_KERNEL).contiguous(memory_format=torch.channels_last)
        for slot, (layer, token) in enumerate(zip(self._layers, arch["ops"], strict=True)):
            op = parse_op(token)
            if op.block == "skip":
                continue
            width = widths[layer.stage + 1]
            block = self._block(slot, op.block)
            if op.block == "tucker":
                x = block(x, width, op.kernel, op.in_ratio, op.out_ratio)
            else:
                x = block(x, width, op.kernel, op.expansion)
        logits: Tensor = self.head(x)
        return logits

    def extract(self, arch: Mapping[str, Any]) -> nn.Module:
        blocks: list[nn.Module] = []
        for step in _plan(arch, self.config, self.in_channels, self.num_classes, batch=1):
            p = step.params
            if step.kind == "stem":
                blocks.append(self.stem.extract(p["in_channels"], p["out_channels"], p["kernel"]))
            elif step.kind == "head":
                blocks.append(self.head.extract(p["in_channels"]))
            elif step.kind == "tucker":
                source = self._block(step.slot, "tucker")
                assert isinstance(source, ElasticTucker)
                blocks.append(
                    source.extract(
                        p["in_channels"],
                        p["out_channels"],
                        p["kernel"],
                        p["in_ratio"],
                        p["out_ratio"],
                    )
                )
            else:
                source = self._block(step.slot, step.kind)
                assert isinstance(
                    source, (ElasticInvertedBottleneck, ElasticFusedInvertedBottleneck)
                )
                blocks.append(
                    source.extract(p["in_channels"], p["out_channels"], p["kernel"], p["expansion"])
                )
        subnet = nn.Sequential(*blocks)
        subnet.train(self.training)
        return subnet


# --------------------------------------------------------------------------- space
class MobileDetSpace(SquareImageSpace):
    def __init__(self, config: MobileDetConfig | None = None):
        self.config = config or MobileDetConfig()
        c = self.config
        self.description = (
            "MobileDets CPU variant: swish6 + squeeze-excite inverted bottlenecks (IBN) or skip "
            "per layer; contains MobileDet-CPU"
            if c.variant == "cpu"
            else "MobileDets accelerator variant: ReLU6 IBN, fused IBN, Tucker or skip per "
            "layer; contains MobileDet-DSP and MobileDet-EdgeTPU"
        )
        self._layers = c.layers()
        super().__init__(
            [
                Choice("resolution", c.resolutions, "r", "input side in pixels"),
                ChoiceList(
                    "widths",
                    c.width_choices(),
                    "w",
                    "output filters of the stem and stages 0-6 (base x TuNAS multiplier)",
                ),
                ChoiceList(
                    "ops",
                    tuple(c.op_choices(layer) for layer in self._layers),
                    "o",
                    "block per layer: ibn<k>e<expansion>, fused<k>e<expansion>, "
                    "tucker<k>i<in %>o<out %> or skip (not on a stage's first layer)",
                ),
            ]
        )

    def validate(self, arch: Mapping[str, Any]) -> Architecture:
        """As :meth:`SearchSpace.validate`, saying why a skip is refused where it is."""
        ops = arch.get("ops") if isinstance(arch, Mapping) else None
        if isinstance(ops, (list, tuple)) and len(ops) == len(self._layers):
            for position, (layer, token) in enumerate(zip(self._layers, ops, strict=True)):
                if token == "skip" and layer.first:
                    raise ArchitectureError(
                        f"ops[{position}]=skip: layer {position} is the first layer of stage "
                        f"{layer.stage}, which changes the feature map's shape (stride or "
                        "width), so it cannot be skipped; only a stage's later layers can"
                    )
        return super().validate(arch)

    def typed_first_layers(self) -> list[list[str]]:
        """Op choices with the first layer of stages 1-6 held to one block type (fused IBN in
        stages 1-2, IBN in 3-6, as the released accelerator backbones mostly do), for
        ``restrict(ops=...)``. A first layer has no residual, so a subnet that picks an
        unrelated block there hands the next stage differently-meaning channels; on a short
        training budget (the digits default) such mixtures stayed at chance accuracy."""
        ops = self.choices("ops")
        kept = []
        for layer, choices in zip(self._layers, ops, strict=True):
            wanted = "fused" if layer.stage <= 2 else "ibn"
            typed = [t for t in choices if parse_op(t).block == wanted]
            kept.append(typed if layer.first and layer.stage > 0 and typed else list(choices))
        return kept

    def published_archs(self) -> dict[str, Mapping[str, Any]]:
        published = _CPU_BACKBONES if self.config.variant == "cpu" else _ACCELERATOR_BACKBONES
        # MobileDets were published at 320x320 (COCO); parameters do not depend on it.
        return {
            name: {"resolution": 320, "widths": widths, "ops": sum(stages, ())}
            for name, (widths, stages) in published.items()
        }

    def build_supernet(self, num_classes: int = 1000, in_channels: int = 3) -> Supernet:
        return MobileDetSupernet(self.config, num_classes, in_channels)

    def lower(
        self, arch: Architecture, batch: int = 1, num_classes: int = 1000, in_channels: int = 3
    ) -> list[BlockSpec]:
        return [_spec(step) for step in _plan(arch, self.config, in_channels, num_classes, batch)]

    def blocks_at_resolution(
        self, resolution: int, batch: int, num_classes: int, in_channels: int
    ) -> Iterator[BlockSpec]:
        """Every block a subnet at ``resolution`` can contain. The first layer of a stage is
        never skipped, so a layer's input is the previous stage's width (first layers) or its
        own stage's width (the others), whatever the other layers chose; and the spatial size
        at every layer depends on the resolution only. Choices come from this (possibly
        restricted) space."""
        widths: tuple[tuple[int, ...], ...] = self.choices("widths")
        ops: tuple[tuple[str, ...], ...] = self.choices("ops")
        size = resolution
        for width in widths[0]:
            stem = _spec(_stem_step(self.config, in_channels, width, size, batch))
            yield stem
        size = stem.output_shape[-1]
        for slot, layer in enumerate(self._layers):
            outputs = widths[layer.stage + 1]
            inputs = widths[layer.stage] if layer.first else None
            for token in ops[slot]:
                op = parse_op(token)
                if op.block == "skip":
                    continue
                for out_width in outputs:
                    for in_width in inputs or (out_width,):
                        step = _layer_step(
                            self.config, layer, slot, op, in_width, out_width, size, batch
                        )
                        yield _spec(step)
            size = _after_stride(size, layer.stride)
        for width in widths[-1]:
            yield _spec(_head_step(width, num_classes, size, batch))


def _spec(step: _Step) -> BlockSpec:
    return BlockSpec(
        kind=f"mobiledets.{step.kind}",
        input_shape=step.input_shape,
        output_shape=step.output_shape,
        params=step.params,
        builder=partial(_STATIC_BLOCKS[step.kind], **step.params),
    )


# --------------------------------------------------------------------------- released backbones
# Output filters (stem, stages 0-6) and per-layer blocks of the MobileDet backbones released
# with the TensorFlow Object Detection API (ssd_mobiledet_feature_extractor), at multiplier 1.
Backbone = tuple[tuple[int, ...], tuple[tuple[str, ...], ...]]  # widths, ops per stage

_CPU_BACKBONES: dict[str, Backbone] = {
    "mobiledet_cpu": (
        (16, 8, 16, 32, 72, 72, 104, 144),
        (
            ("ibn3e1",),
            ("ibn3e4", "skip", "skip", "skip"),
            ("ibn3e8", "ibn3e4", "ibn3e4", "ibn3e4"),
            ("ibn5e8", "ibn3e8", "ibn5e4", "ibn3e4"),
            ("ibn3e8", "ibn3e8", "ibn3e8", "ibn3e8"),
            ("ibn5e8", "ibn5e4", "ibn5e4", "ibn3e4"),
            ("ibn3e8",),
        ),
    ),
}
_ACCELERATOR_BACKBONES: dict[str, Backbone] = {
    "mobiledet_dsp": (
        (32, 24, 32, 64, 120, 144, 160, 240),
        (
            ("ibn3e1",),
            ("fused3e4", "fused3e4", "ibn3e4", "tucker3i25o75"),
            ("fused3e8", "ibn3e4", "fused3e4", "fused3e4"),
            ("fused3e8", "ibn3e4", "ibn3e8", "ibn3e8"),
            ("fused3e8", "ibn3e8", "ibn3e8", "ibn3e8"),
            ("ibn3e4", "ibn3e4", "fused3e4", "tucker3i75o75"),
            ("ibn3e8",),
        ),
    ),
    "mobiledet_edgetpu": (
        (32, 16, 16, 40, 72, 96, 120, 384),
        (
            ("tucker3i25o75",),
            ("fused3e8", "fused3e4", "fused3e8", "fused3e4"),
            ("fused5e8", "fused3e4", "fused3e4", "fused3e4"),
            ("ibn3e8", "ibn3e8", "fused3e4", "fused3e4"),
            ("ibn5e8", "ibn5e8", "ibn3e8", "ibn3e8"),
            ("ibn5e8", "ibn3e8", "ibn5e4", "ibn3e8"),
            ("ibn5e8",),
        ),
    ),
}


@register_space("mobiledets")
def mobiledets_space() -> MobileDetSpace:
    """The CPU variant (swish6 + SE, IBN only), which contains MobileDet-CPU."""
    return MobileDetSpace(MobileDetConfig(variant="cpu"))


@register_space("mobiledets_accelerator")
def mobiledets_accelerator_space() -> MobileDetSpace:
    """The accelerator variant (ReLU6, no SE; IBN, fused IBN and Tucker)."""
    return MobileDetSpace(MobileDetConfig(variant="accelerator"))


__all__ = [
    "LayerOp",
    "MobileDetConfig",
    "MobileDetSpace",
    "MobileDetSupernet",
    "StageConfig",
    "parse_op",
]

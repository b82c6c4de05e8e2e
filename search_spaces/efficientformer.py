"""EfficientFormer ("Vision Transformers at MobileNet Speed") as a once-for-all search space.

Structure of the published models: a two-conv stem to stride 4; four stages at strides 4/8/16/32
joined by conv3x3 stride-2 downsamplings; MB4D blocks (pooling token mixer + conv MLP, both with
LayerScale); the last ``vit_num`` blocks of stage 4 are MB3D blocks (LayerNorm + multi-head
attention with a learned offset bias + linear MLP) on tokens; a LayerNorm / mean-pool head with a
distillation head averaged at inference.

Searched: input resolution, width per stage (multiples of 16), depth per stage (first-k blocks of
each stage), number of trailing MB3D blocks, and an MLP ratio per block (3 or 4, as in
EfficientFormerV2). L1, L3 and L7 are points of the space.

Weight sharing: stage ``s`` owns ``max_depth[s]`` MB4D blocks used first-k; stage 4 additionally
owns ``max_vit`` MB3D blocks used first-k, so a subnet with ``d`` blocks and ``v`` of them MB3D
runs MB4D blocks ``0..d-v-1`` then MB3D blocks ``0..v-1``.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from functools import partial
from typing import Any, TypeVar, cast

import torch.nn.functional as F
from torch import Tensor, nn

from nasvit.nn import (
    Attention,
    BlockSpec,
    ElasticAttention,
    ElasticBatchNorm2d,
    ElasticConv2d,
    ElasticLayerNorm,
    ElasticLayerScale,
    ElasticLinear,
    LayerScale,
    Supernet,
)
from nasvit.search_spaces.bases import SquareImageSpace
from nasvit.search_spaces.dimensions import (
    Architecture,
    Choice,
    ChoiceList,
    Constraint,
    LayerChoices,
)
from nasvit.search_spaces.registry import register_space

STAGES = 4


@dataclass(frozen=True)
class EfficientFormerConfig:
    """Choices of the space; the supernet is sized by the largest choice of each."""

    resolutions: tuple[int, ...] = (32, 64, 96, 128, 160, 192, 224)
    widths: tuple[tuple[int, ...], ...] = (
        tuple(range(16, 97, 16)),  # stage 1: 16..96 (L1 48, L3 64, L7 96)
        tuple(range(32, 193, 16)),  # stage 2: 32..192
        tuple(range(64, 385, 32)),  # stage 3: 64..384
        tuple(range(128, 769, 64)),  # stage 4: 128..768
    )
    depths: tuple[tuple[int, ...], ...] = (
        tuple(range(1, 7)),
        tuple(range(1, 7)),
        tuple(range(1, 19)),
        tuple(range(1, 9)),
    )
    vit_nums: tuple[int, ...] = tuple(range(0, 9))  # trailing MB3D blocks of stage 4
    mlp_ratios: tuple[int, ...] = (3, 4)
    num_heads: int = 8  # MB3D attention, fixed as in the paper
    key_dim: int = 32
    attn_ratio: int = 4  # value width per head = attn_ratio * key_dim
    layer_scale_init: float = 1e-5
    distillation: bool = True  # published parameter counts include the distillation head
    stride: int = field(default=32, init=False)  # total downsampling factor

    @property
    def max_grid(self) -> int:
        return math.ceil(max(self.resolutions) / self.stride)


def _half_up(size: int) -> int:
    """Output size of a 3x3, stride-2, padding-1 convolution."""
    return (size + 1) // 2


# --------------------------------------------------------------------------- static blocks
class Stem(nn.Module):
    """conv3x3/2 -> BN -> ReLU -> conv3x3/2 -> BN -> ReLU; widths width/2 then width."""

    def __init__(self, in_channels: int, width: int):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, width // 2, 3, 2, 1)
        self.bn1 = nn.BatchNorm2d(width // 2)
        self.conv2 = nn.Conv2d(width // 2, width, 3, 2, 1)
        self.bn2 = nn.BatchNorm2d(width)

    def forward(self, x: Tensor) -> Tensor:
        return F.relu(self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x))))))


class Downsample(nn.Module):
    """conv3x3/2 -> BN between stages."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, 3, 2, 1)
        self.bn = nn.BatchNorm2d(out_channels)

    def forward(self, x: Tensor) -> Tensor:
        out: Tensor = self.bn(self.conv(x))
        return out


def _pool_mixer(x: Tensor) -> Tensor:
    return F.avg_pool2d(x, 3, 1, 1, count_include_pad=False) - x


class MB4D(nn.Module):
    """Pooling token mixer and conv MLP on a feature map, both with LayerScale."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.ls1 = LayerScale(dim)
        self.fc1 = nn.Conv2d(dim, hidden, 1)
        self.norm1 = nn.BatchNorm2d(hidden)
        self.fc2 = nn.Conv2d(hidden, dim, 1)
        self.norm2 = nn.BatchNorm2d(dim)
        self.ls2 = LayerScale(dim)

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.ls1(_pool_mixer(x))
        out: Tensor = x + self.ls2(self.norm2(self.fc2(F.gelu(self.norm1(self.fc1(x))))))
        return out


class MB3D(nn.Module):
    """LayerNorm + attention and LayerNorm + linear MLP on tokens, both with LayerScale.

    ``flatten_input`` marks the first MB3D block, which receives the stage's feature map.
    """

    def __init__(
        self,
        dim: int,
        hidden: int,
        grid: int,
        flatten_input: bool,
        num_heads: int,
        key_dim: int,
        value_dim: int,
        bias_grid: int,
    ):
        super().__init__()
        self.flatten_input = flatten_input
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, num_heads, key_dim, value_dim, bias_grid, grid)
        self.ls1 = LayerScale(dim, channel_dim=-1)
        self.norm2 = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)
        self.ls2 = LayerScale(dim, channel_dim=-1)

    def forward(self, x: Tensor) -> Tensor:
        if self.flatten_input:
            x = x.flatten(2).transpose(1, 2)
        x = x + self.ls1(self.attn(self.norm1(x)))
        out: Tensor = x + self.ls2(self.fc2(F.gelu(self.fc1(self.norm2(x)))))
        return out


class Head(nn.Module):
    """LayerNorm -> mean over tokens -> classifier, averaged with the distillation classifier."""

    def __init__(self, dim: int, num_classes: int, distillation: bool, tokens_input: bool):
        super().__init__()
        self.tokens_input = tokens_input
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)
        self.dist_head = nn.Linear(dim, num_classes) if distillation else None

    def forward(self, x: Tensor) -> Tensor:
        if not self.tokens_input:
            x = x.flatten(2).transpose(1, 2)
        features = self.norm(x).mean(dim=1)
        logits: Tensor = self.head(features)
        if self.dist_head is not None:
            logits = (logits + self.dist_head(features)) / 2
        return logits


# --------------------------------------------------------------------------- elastic blocks
ModuleT = TypeVar("ModuleT", bound=nn.Module)


def _shell(block: type[ModuleT], **attributes: Any) -> ModuleT:
    """An instance of a static block with none of its layers built, for ``extract``, which then
    assigns each layer (a copy from the supernet) in ``__init__``'s order: building the block
    normally first initialised every layer at random only to replace it (a test checks the
    result against blocks built the normal way)."""
    shell = block.__new__(block)
    nn.Module.__init__(shell)
    for name, value in attributes.items():
        setattr(shell, name, value)
    return shell


class ElasticStem(nn.Module):
    def __init__(self, in_channels: int, max_width: int):
        super().__init__()
        self.conv1 = ElasticConv2d(in_channels, max_width // 2, 3, 2, 1)
        self.bn1 = ElasticBatchNorm2d(max_width // 2)
        self.conv2 = ElasticConv2d(max_width // 2, max_width, 3, 2, 1)
        self.bn2 = ElasticBatchNorm2d(max_width)

    def forward(self, x: Tensor, width: int) -> Tensor:
        x = F.relu(self.bn1(self.conv1(x, width // 2)))
        return F.relu(self.bn2(self.conv2(x, width)))

    def extract(self, in_channels: int, width: int) -> Stem:
        stem = _shell(Stem)
        stem.conv1 = self.conv1.extract(in_channels, width // 2)
        stem.bn1 = self.bn1.extract(width // 2)
        stem.conv2 = self.conv2.extract(width // 2, width)
        stem.bn2 = self.bn2.extract(width)
        return stem


class ElasticDownsample(nn.Module):
    def __init__(self, max_in: int, max_out: int):
        super().__init__()
        self.conv = ElasticConv2d(max_in, max_out, 3, 2, 1)
        self.bn = ElasticBatchNorm2d(max_out)

    def forward(self, x: Tensor, width: int) -> Tensor:
        out: Tensor = self.bn(self.conv(x, width))
        return out

    def extract(self, in_channels: int, out_channels: int) -> Downsample:
        block = _shell(Downsample)
        block.conv = self.conv.extract(in_channels, out_channels)
        block.bn = self.bn.extract(out_channels)
        return block


class ElasticMB4D(nn.Module):
    def __init__(self, max_dim: int, max_hidden: int, layer_scale_init: float):
        super().__init__()
        self.ls1 = ElasticLayerScale(max_dim, layer_scale_init)
        self.fc1 = ElasticConv2d(max_dim, max_hidden, 1)
        self.norm1 = ElasticBatchNorm2d(max_hidden)
        self.fc2 = ElasticConv2d(max_hidden, max_dim, 1)
        self.norm2 = ElasticBatchNorm2d(max_dim)
        self.ls2 = ElasticLayerScale(max_dim, layer_scale_init)

    def forward(self, x: Tensor, hidden: int) -> Tensor:
        dim = x.shape[1]
        x = x + self.ls1(_pool_mixer(x))
        out: Tensor = x + self.ls2(
            self.norm2(self.fc2(F.gelu(self.norm1(self.fc1(x, hidden))), dim))
        )
        return out

    def extract(self, dim: int, hidden: int) -> MB4D:
        block = _shell(MB4D)
        block.ls1 = self.ls1.extract(dim)
        block.fc1 = self.fc1.extract(dim, hidden)
        block.norm1 = self.norm1.extract(hidden)
        block.fc2 = self.fc2.extract(hidden, dim)
        block.norm2 = self.norm2.extract(dim)
        block.ls2 = self.ls2.extract(dim)
        return block


class ElasticMB3D(nn.Module):
    def __init__(self, max_dim: int, max_hidden: int, config: EfficientFormerConfig):
        super().__init__()
        self.num_heads = config.num_heads
        self.norm1 = ElasticLayerNorm(max_dim)
        self.attn = ElasticAttention(
            max_dim,
            config.num_heads,
            config.key_dim,
            config.attn_ratio * config.key_dim,
            bias_grid=config.max_grid,
        )
        self.ls1 = ElasticLayerScale(max_dim, config.layer_scale_init, channel_dim=-1)
        self.norm2 = ElasticLayerNorm(max_dim)
        self.fc1 = ElasticLinear(max_dim, max_hidden)
        self.fc2 = ElasticLinear(max_hidden, max_dim)
        self.ls2 = ElasticLayerScale(max_dim, config.layer_scale_init, channel_dim=-1)

    def forward(self, x: Tensor, hidden: int, grid: int) -> Tensor:
        dim = x.shape[-1]
        x = x + self.ls1(self.attn(self.norm1(x), self.num_heads, grid))
        out: Tensor = x + self.ls2(self.fc2(F.gelu(self.fc1(self.norm2(x), hidden)), dim))
        return out

    def extract(self, dim: int, hidden: int, grid: int, flatten_input: bool) -> MB3D:
        block = _shell(MB3D, flatten_input=flatten_input)
        block.norm1 = self.norm1.extract(dim)
        block.attn = self.attn.extract(dim, self.num_heads, grid)
        block.ls1 = self.ls1.extract(dim)
        block.norm2 = self.norm2.extract(dim)
        block.fc1 = self.fc1.extract(dim, hidden)
        block.fc2 = self.fc2.extract(hidden, dim)
        block.ls2 = self.ls2.extract(dim)
        return block


class ElasticHead(nn.Module):
    def __init__(self, max_dim: int, num_classes: int, distillation: bool):
        super().__init__()
        self.num_classes = num_classes
        self.norm = ElasticLayerNorm(max_dim)
        self.head = ElasticLinear(max_dim, num_classes)
        self.dist_head = ElasticLinear(max_dim, num_classes) if distillation else None

    def forward(self, tokens: Tensor) -> Tensor:
        features = self.norm(tokens).mean(dim=1)
        logits: Tensor = self.head(features, self.num_classes)
        if self.dist_head is not None:
            logits = (logits + self.dist_head(features, self.num_classes)) / 2
        return logits

    def extract(self, dim: int, tokens_input: bool) -> Head:
        head = _shell(Head, tokens_input=tokens_input)
        head.norm = self.norm.extract(dim)
        head.head = self.head.extract(dim, self.num_classes)
        distillation = self.dist_head
        head.dist_head = (
            None if distillation is None else distillation.extract(dim, self.num_classes)
        )
        return head


# --------------------------------------------------------------------------- block plan
@dataclass(frozen=True)
class _Step:
    """One block of a subnet: what it is, where its weights live and the shapes it maps."""

    kind: str  # stem | downsample | mb4d | mb3d | head
    params: dict[str, Any]
    slot: tuple[int, ...]  # (stage, index) of the supernet module holding its weights
    input_shape: tuple[int, ...]
    output_shape: tuple[int, ...]


def _stem_step(in_channels: int, width: int, size: int, batch: int) -> _Step:
    out = _half_up(_half_up(size))
    return _Step(
        "stem",
        {"in_channels": in_channels, "width": width},
        (),
        (batch, in_channels, size, size),
        (batch, width, out, out),
    )


def _downsample_step(stage: int, in_width: int, width: int, size: int, batch: int) -> _Step:
    """The stride-2 convolution into ``stage`` from a ``size`` x ``size`` map."""
    out = _half_up(size)
    return _Step(
        "downsample",
        {"in_channels": in_width, "out_channels": width},
        (stage,),
        (batch, in_width, size, size),
        (batch, width, out, out),
    )


def _mb4d_step(stage: int, index: int, dim: int, ratio: int, size: int, batch: int) -> _Step:
    feature_map = (batch, dim, size, size)
    params = {"dim": dim, "hidden": dim * ratio}
    return _Step("mb4d", params, (stage, index), feature_map, feature_map)


def _mb3d_step(
    index: int, dim: int, ratio: int, size: int, config: EfficientFormerConfig, batch: int
) -> _Step:
    params = {
        "dim": dim,
        "hidden": dim * ratio,
        "grid": size,
        "flatten_input": index == 0,
        "num_heads": config.num_heads,
        "key_dim": config.key_dim,
        "value_dim": config.attn_ratio * config.key_dim,
        "bias_grid": config.max_grid,
    }
    tokens = (batch, size * size, dim)
    in_shape = (batch, dim, size, size) if index == 0 else tokens
    return _Step("mb3d", params, (index,), in_shape, tokens)


def _head_step(
    dim: int, size: int, tokens_input: bool, config: EfficientFormerConfig, num_classes: int,
    batch: int,
) -> _Step:  # fmt: skip
    params = {
        "dim": dim,
        "num_classes": num_classes,
        "distillation": config.distillation,
        "tokens_input": tokens_input,
    }
    head_in = (batch, size * size, dim) if tokens_input else (batch, dim, size, size)
    return _Step("head", params, (), head_in, (batch, num_classes))


def _plan(
    arch: Mapping[str, Any],
    config: EfficientFormerConfig,
    in_channels: int,
    num_classes: int,
    batch: int,
) -> list[_Step]:
    """The subnet's blocks in order; shared by extraction and latency lowering."""
    widths, depths, vit_num = arch["widths"], arch["depths"], arch["vit_num"]
    ratios = iter(arch["mlp_ratio"])
    size = arch["resolution"]
    steps = [_stem_step(in_channels, widths[0], size, batch)]
    size = _half_up(_half_up(size))
    for stage in range(STAGES):
        dim = widths[stage]
        if stage > 0:
            steps.append(_downsample_step(stage, widths[stage - 1], dim, size, batch))
            size = _half_up(size)
        conv_blocks = depths[stage] - (vit_num if stage == STAGES - 1 else 0)
        for index in range(conv_blocks):
            steps.append(_mb4d_step(stage, index, dim, next(ratios), size, batch))
    for index in range(vit_num):
        steps.append(_mb3d_step(index, widths[-1], next(ratios), size, config, batch))
    steps.append(_head_step(widths[-1], size, vit_num > 0, config, num_classes, batch))
    return steps


class _Memo(dict):  # type: ignore[type-arg]
    """A dict that fills a missing key with ``make(key)``."""

    def __init__(self, make: Callable[[Any], Any]):
        super().__init__()
        self.make = make

    def __missing__(self, key: Any) -> Any:
        value = self[key] = self.make(key)
        return value


class _Lowering:
    """:func:`_plan` turned into block specs, memoised per block.

    Every candidate a search scores is lowered (tens of thousands per second for predictor +
    table scoring), and a block's spec depends only on a few of the arch's values (resolution
    at that point, its width and MLP ratio, ...), never on its position within the stage; so
    each block is built once (through the same step functions as :func:`_plan`) and lowering an
    arch is a handful of dict lookups. The memo is bounded by the number of distinct blocks
    (what :meth:`EfficientFormerSpace.enumerate_blocks` lists), not by the archs seen.
    """

    def __init__(
        self, config: EfficientFormerConfig, in_channels: int, num_classes: int, batch: int
    ):
        def stem(key: tuple[int, int]) -> BlockSpec:
            return _spec(_stem_step(in_channels, key[1], key[0], batch))

        def downsample(key: tuple[int, int, int, int]) -> BlockSpec:
            stage, in_width, width, size = key
            return _spec(_downsample_step(stage, in_width, width, size, batch))

        def mb4d(key: tuple[int, int, int]) -> _Memo:  # -> {ratio: spec}
            stage, dim, size = key
            return _Memo(lambda ratio: _spec(_mb4d_step(stage, 0, dim, ratio, size, batch)))

        def mb3d(key: tuple[int, int, int]) -> _Memo:  # index 0 (flattens) or any later one
            index, dim, size = key
            return _Memo(lambda ratio: _spec(_mb3d_step(index, dim, ratio, size, config, batch)))

        def head(key: tuple[int, int, bool]) -> BlockSpec:
            dim, size, tokens_input = key
            return _spec(_head_step(dim, size, tokens_input, config, num_classes, batch))

        self.stem, self.downsample, self.head = _Memo(stem), _Memo(downsample), _Memo(head)
        self.mb4d, self.mb3d = _Memo(mb4d), _Memo(mb3d)
        self.sizes = _Memo(_stage_sizes)

    def __call__(self, arch: Mapping[str, Any]) -> list[BlockSpec]:
        widths, depths, vit_num = arch["widths"], arch["depths"], arch["vit_num"]
        ratios = tuple(arch["mlp_ratio"])
        if len(ratios) < sum(depths):
            raise ValueError(f"mlp_ratio has {len(ratios)} values for {sum(depths)} blocks")
        resolution = arch["resolution"]
        sizes = self.sizes[resolution]  # feature-map side of each stage
        blocks = [self.stem[resolution, widths[0]]]
        layer = 0
        for stage in range(STAGES):
            dim, size = widths[stage], sizes[stage]
            if stage > 0:
                blocks.append(self.downsample[stage, widths[stage - 1], dim, sizes[stage - 1]])
            end = layer + depths[stage] - (vit_num if stage == STAGES - 1 else 0)
            by_ratio = self.mb4d[stage, dim, size]
            blocks += [by_ratio[r] for r in ratios[layer:end]]
            layer = end
        dim, size = widths[-1], sizes[-1]
        if vit_num > 0:
            blocks.append(self.mb3d[0, dim, size][ratios[layer]])
            by_ratio = self.mb3d[1, dim, size]
            blocks += [by_ratio[r] for r in ratios[layer + 1 : layer + vit_num]]
        blocks.append(self.head[dim, size, vit_num > 0])
        return blocks


def _stage_sizes(resolution: int) -> tuple[int, ...]:
    sizes = [_half_up(_half_up(resolution))]
    for _ in range(STAGES - 1):
        sizes.append(_half_up(sizes[-1]))
    return tuple(sizes)


_STATIC_BLOCKS: dict[str, type[nn.Module]] = {
    "stem": Stem,
    "downsample": Downsample,
    "mb4d": MB4D,
    "mb3d": MB3D,
    "head": Head,
}


# --------------------------------------------------------------------------- supernet
class EfficientFormerSupernet(Supernet):
    """Weight-sharing supernet of the ``efficientformer`` space."""

    def __init__(
        self, config: EfficientFormerConfig, num_classes: int = 1000, in_channels: int = 3
    ):
        super().__init__()
        self.config, self.num_classes, self.in_channels = config, num_classes, in_channels
        max_widths = [max(w) for w in config.widths]
        max_depths = [max(d) for d in config.depths]
        max_ratio = max(config.mlp_ratios)
        self.stem = ElasticStem(in_channels, max_widths[0])
        self.downsamples = nn.ModuleList(
            [nn.Identity()]
            + [ElasticDownsample(max_widths[s - 1], max_widths[s]) for s in range(1, STAGES)]
        )
        self.stages = nn.ModuleList(
            nn.ModuleList(
                ElasticMB4D(max_widths[s], max_widths[s] * max_ratio, config.layer_scale_init)
                for _ in range(max_depths[s])
            )
            for s in range(STAGES)
        )
        self.vit_blocks = nn.ModuleList(
            ElasticMB3D(max_widths[-1], max_widths[-1] * max_ratio, config)
            for _ in range(max(config.vit_nums))
        )
        self.head = ElasticHead(max_widths[-1], num_classes, config.distillation)
        self.apply(_init_weights)

    def forward(self, x: Tensor, arch: Mapping[str, Any]) -> Tensor:
        widths, depths, vit_num = arch["widths"], arch["depths"], arch["vit_num"]
        ratios = arch["mlp_ratio"]
        layer = 0
        x = self.stem(x, widths[0])
        for stage in range(STAGES):
            if stage > 0:
                x = self.downsamples[stage](x, widths[stage])
            conv_blocks = depths[stage] - (vit_num if stage == STAGES - 1 else 0)
            blocks = cast(nn.ModuleList, self.stages[stage])
            for index in range(conv_blocks):
                x = blocks[index](x, widths[stage] * ratios[layer])
                layer += 1
        grid = x.shape[-1]
        x = x.flatten(2).transpose(1, 2)
        for index in range(vit_num):
            x = self.vit_blocks[index](x, widths[-1] * ratios[layer], grid)
            layer += 1
        logits: Tensor = self.head(x)
        return logits

    def extract(self, arch: Mapping[str, Any]) -> nn.Module:
        blocks: list[nn.Module] = []
        for step in _plan(arch, self.config, self.in_channels, self.num_classes, batch=1):
            p = step.params
            if step.kind == "stem":
                blocks.append(self.stem.extract(p["in_channels"], p["width"]))
            elif step.kind == "downsample":
                source = self.downsamples[step.slot[0]]
                assert isinstance(source, ElasticDownsample)
                blocks.append(source.extract(p["in_channels"], p["out_channels"]))
            elif step.kind == "mb4d":
                stage, index = step.slot
                mb4d = cast(nn.ModuleList, self.stages[stage])[index]
                assert isinstance(mb4d, ElasticMB4D)
                blocks.append(mb4d.extract(p["dim"], p["hidden"]))
            elif step.kind == "mb3d":
                block = self.vit_blocks[step.slot[0]]
                assert isinstance(block, ElasticMB3D)
                blocks.append(block.extract(p["dim"], p["hidden"], p["grid"], p["flatten_input"]))
            else:
                blocks.append(self.head.extract(p["dim"], p["tokens_input"]))
        subnet = nn.Sequential(*blocks)
        subnet.train(self.training)
        return subnet


def _init_weights(module: nn.Module) -> None:
    if isinstance(module, nn.Linear):
        nn.init.trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)


# --------------------------------------------------------------------------- space
class EfficientFormerSpace(SquareImageSpace):
    description = (
        "EfficientFormer: conv stages of pooling-mixer blocks (MB4D) and trailing attention "
        "blocks (MB3D); contains EfficientFormer-L1/L3/L7"
    )

    def __init__(self, config: EfficientFormerConfig | None = None):
        self.config = config or EfficientFormerConfig()
        c = self.config
        super().__init__(
            [
                Choice("resolution", c.resolutions, "r", "input side in pixels"),
                ChoiceList("widths", c.widths, "w", "channels per stage"),
                ChoiceList("depths", c.depths, "d", "blocks per stage, including MB3D ones"),
                Choice("vit_num", c.vit_nums, "v", "trailing MB3D (attention) blocks of stage 4"),
                LayerChoices("mlp_ratio", c.mlp_ratios, "m", "depths", "MLP ratio per block"),
            ],
            [
                Constraint(
                    "vit_num <= depths[3]",
                    ("vit_num", "depths"),
                    lambda a: a["vit_num"] <= a["depths"][-1],
                )
            ],
        )

    def published_archs(self) -> dict[str, Mapping[str, Any]]:
        def published(widths: tuple[int, ...], depths: tuple[int, ...], vit: int) -> dict[str, Any]:
            return {
                "resolution": 224,
                "widths": widths,
                "depths": depths,
                "vit_num": vit,
                "mlp_ratio": (4,) * sum(depths),
            }

        return {
            "efficientformer_l1": published((48, 96, 224, 448), (3, 2, 6, 4), 1),
            "efficientformer_l3": published((64, 128, 320, 512), (4, 4, 12, 6), 4),
            "efficientformer_l7": published((96, 192, 384, 768), (6, 6, 18, 8), 8),
        }

    def build_supernet(self, num_classes: int = 1000, in_channels: int = 3) -> Supernet:
        return EfficientFormerSupernet(self.config, num_classes, in_channels)

    def lower(
        self, arch: Architecture, batch: int = 1, num_classes: int = 1000, in_channels: int = 3
    ) -> list[BlockSpec]:
        # Same blocks as ``[_spec(s) for s in _plan(...)]``, from a per-block memo (a test holds
        # the two to each other).
        lowerings: dict[tuple[int, int, int], _Lowering] = self.__dict__.setdefault(
            "_lowerings", {}
        )
        lowering = lowerings.get((batch, num_classes, in_channels))
        if lowering is None:
            lowering = _Lowering(self.config, in_channels, num_classes, batch)
            lowerings[batch, num_classes, in_channels] = lowering
        return lowering(arch)

    def __getstate__(self) -> dict[str, Any]:
        # Copies (``restrict``) build their own lowering memo on first use.
        return {k: v for k, v in self.__dict__.items() if k != "_lowerings"}

    def blocks_at_resolution(
        self, resolution: int, batch: int, num_classes: int, in_channels: int
    ) -> Iterator[BlockSpec]:
        """Every block a subnet at ``resolution`` can contain. A stage's blocks depend only on
        its width (and the previous stage's, for the downsampling), and the attention/head
        blocks only on whether there are zero, one or more MB3D blocks; so plans of synthetic
        architectures varying one stage at a time cover every key. Choices come from this
        (possibly restricted) space; block parameters from the family's configuration."""
        widths: tuple[tuple[int, ...], ...] = self.choices("widths")
        ratios: tuple[int, ...] = self.choices("mlp_ratio")
        vits: tuple[int, ...] = self.choices("vit_num")
        max_last_depth = max(self.choices("depths")[-1])
        # 0: head on a feature map; 1: one MB3D that flattens; 2: also MB3D on tokens.
        vit_cases = [
            v for v in (0, 1, 2) if any(min(x, 2) == v for x in vits if x <= max_last_depth)
        ]
        for stage in range(STAGES):
            previous_choices = widths[stage - 1] if stage > 0 else (widths[0][0],)
            for dim, previous, ratio in itertools.product(widths[stage], previous_choices, ratios):
                arch_widths = [w[0] for w in widths]
                arch_widths[stage] = dim
                if stage > 0:
                    arch_widths[stage - 1] = previous
                depths = (1, 1, 1, 3)  # room for an MB4D block and two MB3D blocks
                for vit_num in vit_cases if stage == STAGES - 1 else [vit_cases[0]]:
                    arch = {
                        "resolution": resolution,
                        "widths": tuple(arch_widths),
                        "depths": depths,
                        "vit_num": vit_num,
                        "mlp_ratio": (ratio,) * sum(depths),
                    }
                    plan = _plan(arch, self.config, in_channels, num_classes, batch)
                    yield from map(_spec, plan)


# Lowering runs for every candidate a search scores, and candidates share a few hundred blocks:
# building each spec once (and reusing it) keeps lowering cheap.
_SPECS: dict[tuple[Any, ...], BlockSpec] = {}


def _spec(step: _Step) -> BlockSpec:
    identity = (step.kind, step.input_shape, step.output_shape, *step.params.items())
    spec = _SPECS.get(identity)
    if spec is None:
        spec = BlockSpec(
            kind=f"efficientformer.{step.kind}",
            input_shape=step.input_shape,
            output_shape=step.output_shape,
            params=step.params,
            builder=partial(_STATIC_BLOCKS[step.kind], **step.params),
        )
        _SPECS[identity] = spec
    return spec


@register_space("efficientformer")
def efficientformer_space() -> EfficientFormerSpace:
    return EfficientFormerSpace()


__all__ = ["EfficientFormerConfig", "EfficientFormerSpace", "EfficientFormerSupernet"]

"""Elastic Transformer encoders shared by the ViT-style spaces (``lighthubert``,
``attention_variants``).

A network is ``front end -> encoder layers -> token head``:

- The **front end** turns the raw input into tokens ``(B, N, dim)``. It is swappable: a
  :class:`~nasvit.nn.front_ends.FrontEnd` describes shapes and builds an elastic module and its
  static counterpart; :class:`PatchEmbedding` (images, ViT patches + learned positions) and
  :class:`SequenceEmbedding` (feature frames such as audio filterbanks) are provided.
- Each **encoder layer** is a token-mixer block then a feed-forward block, each a residual with
  a LayerNorm either before the branch (pre-LN, ViT/DeiT) or after the sum (post-LN,
  BERT/HuBERT). A layer owns one module per mixer it may use (mixers share no weights); the norms
  and the feed-forward network are shared by all mixers.
- The **head** averages the tokens (after a LayerNorm for pre-LN encoders) and classifies.

Elastic sizes: embedding width (global), heads (per layer, ``head_dim`` fixed), FFN width (per
layer); every weight is sliced first-k. Which supernet layer serves each subnet layer is the
space's business (first-k depth, LightHuBERT's layer-drop maps): a :class:`SubnetSetting` names
the slot of every layer.

:func:`plan_transformer` lists a subnet's blocks with their shapes; extraction and latency
lowering both follow it, so a lowered block is exactly a piece of the extracted subnet. Blocks
are one per front end, mixer, FFN and head, and their keys carry the token count, so a latency
table sees the cost of attention grow with the number of tokens.
"""

from __future__ import annotations

import abc
from collections.abc import Mapping
from dataclasses import dataclass
from functools import partial
from typing import Any, Protocol, cast

import torch.nn.functional as F
from torch import Tensor, nn

from nasvit.nn.attention import Attention, ElasticAttention
from nasvit.nn.blocks import BlockSpec, ParamValue
from nasvit.nn.elastic import ElasticLayerNorm, ElasticLinear
from nasvit.nn.front_ends import (
    ElasticFrontEndModule,
    ElasticPatchEmbed,
    ElasticSequenceEmbed,
    FrontEnd,
    PatchEmbed,
    PatchEmbedding,
    SequenceEmbed,
    SequenceEmbedding,
)
from nasvit.nn.supernet import Supernet
from nasvit.nn.token_mixers import (
    SHVIT_QK_DIM,
    ElasticLinearAttention,
    ElasticPoolMixer,
    ElasticSingleHeadAttention,
    LinearAttention,
    PoolMixer,
    SingleHeadAttention,
    shvit_partial_dim,
)

#: Mixers an encoder layer can hold, cheapest first. ``identity`` skips the mixer block.
MIXERS = ("identity", "pool", "shsa", "linear", "softmax", "relpos")
#: Mixers that need a 2-D token grid (an image front end).
GRID_MIXERS = frozenset({"pool", "relpos"})
#: Mixers whose cost depends on the number of heads.
HEADED_MIXERS = frozenset({"linear", "softmax", "relpos"})


# =========================================================================== encoder blocks
class FeedForward(nn.Module):
    """Linear -> GELU -> linear."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: Tensor) -> Tensor:
        out: Tensor = self.fc2(F.gelu(self.fc1(x)))
        return out


class ElasticFeedForward(nn.Module):
    def __init__(self, max_dim: int, max_hidden: int):
        super().__init__()
        self.fc1 = ElasticLinear(max_dim, max_hidden)
        self.fc2 = ElasticLinear(max_hidden, max_dim)

    def forward(self, x: Tensor, hidden: int) -> Tensor:
        out: Tensor = self.fc2(F.gelu(self.fc1(x, hidden)), x.shape[-1])
        return out

    def extract(self, dim: int, hidden: int) -> FeedForward:
        ffn = FeedForward(dim, hidden)
        ffn.fc1 = self.fc1.extract(dim, hidden)
        ffn.fc2 = self.fc2.extract(hidden, dim)
        return ffn


def _residual(x: Tensor, branch: Any, norm: nn.Module, norm_first: bool) -> Tensor:
    """Pre-LN ``x + f(LN(x))`` or post-LN ``LN(x + f(x))``."""
    out: Tensor = x + branch(norm(x)) if norm_first else norm(x + branch(x))
    return out


def static_mixer(
    mixer: str,
    dim: int,
    heads: int = 0,
    head_dim: int = 64,
    grid: int = 0,
    bias_grid: int = 0,
    partial_dim: int = 0,
    qk_dim: int = SHVIT_QK_DIM,
) -> nn.Module:
    """A freshly initialised static mixer (the arguments a mixer does not use are ignored)."""
    if mixer == "softmax":
        return Attention(dim, heads, head_dim, head_dim)
    if mixer == "relpos":
        return Attention(dim, heads, head_dim, head_dim, bias_grid=bias_grid, grid=grid)
    if mixer == "linear":
        return LinearAttention(dim, heads, head_dim)
    if mixer == "shsa":
        return SingleHeadAttention(dim, partial_dim, qk_dim)
    if mixer == "pool":
        return PoolMixer(grid)
    raise ValueError(f"unknown token mixer '{mixer}'; known: {', '.join(MIXERS[1:])}")


class MixerBlock(nn.Module):
    """Static residual token-mixer block (pre- or post-LN).

    Args:
        module: the mixer with its weights (extraction); a fresh one is built when omitted.
    """

    def __init__(
        self,
        mixer: str,
        dim: int,
        norm_first: bool,
        module: nn.Module | None = None,
        **mixer_params: Any,
    ):
        super().__init__()
        self.norm_first = norm_first
        self.norm = nn.LayerNorm(dim)
        self.mixer = module if module is not None else static_mixer(mixer, dim, **mixer_params)

    def forward(self, x: Tensor) -> Tensor:
        return _residual(x, self.mixer, self.norm, self.norm_first)


class FeedForwardBlock(nn.Module):
    """Static residual feed-forward block (pre- or post-LN)."""

    def __init__(self, dim: int, hidden: int, norm_first: bool, module: FeedForward | None = None):
        super().__init__()
        self.norm_first = norm_first
        self.norm = nn.LayerNorm(dim)
        self.ffn = module if module is not None else FeedForward(dim, hidden)

    def forward(self, x: Tensor) -> Tensor:
        return _residual(x, self.ffn, self.norm, self.norm_first)


class TokenHead(nn.Module):
    """[LayerNorm ->] mean over tokens -> classifier."""

    def __init__(self, dim: int, num_classes: int, norm: bool):
        super().__init__()
        self.norm = nn.LayerNorm(dim) if norm else None
        self.head = nn.Linear(dim, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        if self.norm is not None:
            x = self.norm(x)
        logits: Tensor = self.head(x.mean(dim=1))
        return logits


class ElasticTokenHead(nn.Module):
    def __init__(self, max_dim: int, num_classes: int, norm: bool):
        super().__init__()
        self.num_classes = num_classes
        self.norm = ElasticLayerNorm(max_dim) if norm else None
        self.head = ElasticLinear(max_dim, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        if self.norm is not None:
            x = self.norm(x)
        logits: Tensor = self.head(x.mean(dim=1), self.num_classes)
        return logits

    def extract(self, dim: int) -> TokenHead:
        head = TokenHead(dim, self.num_classes, self.norm is not None)
        if self.norm is not None:
            head.norm = self.norm.extract(dim)
        head.head = self.head.extract(dim, self.num_classes)
        return head


# =========================================================================== configuration
@dataclass(frozen=True)
class TransformerConfig:
    """Sizes of a Transformer supernet (the largest choice of each elastic dimension).

    Attributes:
        front_end: how inputs become tokens.
        max_dim: largest embedding width.
        max_heads: largest number of heads per layer (attention width ``head_dim * heads``).
        max_hidden: largest FFN width.
        num_layers: layers held by the supernet.
        mixers: token mixers every layer holds (a subset of :data:`MIXERS`).
        norm_first: pre-LN (ViT/DeiT) when true, post-LN (BERT/HuBERT) when false.
        head_dim: width of one attention head.
    """

    front_end: FrontEnd
    max_dim: int
    max_heads: int
    max_hidden: int
    num_layers: int
    mixers: tuple[str, ...] = ("softmax",)
    norm_first: bool = True
    head_dim: int = 64

    def __post_init__(self) -> None:
        unknown = sorted(set(self.mixers) - set(MIXERS))
        if unknown:
            raise ValueError(f"unknown token mixer(s) {unknown}; known: {', '.join(MIXERS)}")
        if self.front_end.max_grid is None and GRID_MIXERS & set(self.mixers):
            raise ValueError(f"mixers {sorted(GRID_MIXERS)} need a front end with a token grid")


@dataclass(frozen=True)
class LayerSetting:
    """One encoder layer of a subnet.

    Attributes:
        slot: index of the supernet layer whose weights it uses.
        mixer: token mixer (``identity`` skips the mixer block).
        heads: attention heads (ignored by mixers without heads).
        hidden: FFN width.
    """

    slot: int
    mixer: str
    heads: int
    hidden: int


@dataclass(frozen=True)
class SubnetSetting:
    """Everything that fixes a subnet of a Transformer supernet.

    Attributes:
        size: per-sample input size for the front end, e.g. (224, 224) or (frames,).
        dim: embedding width.
        layers: the encoder layers in order.
    """

    size: tuple[int, ...]
    dim: int
    layers: tuple[LayerSetting, ...]


@dataclass(frozen=True)
class TransformerStep:
    """One block of a subnet: kind, parameters, weight slot (layer index) and shapes."""

    kind: str
    params: Mapping[str, ParamValue]
    slot: int | None
    input_shape: tuple[int, ...]
    output_shape: tuple[int, ...]

    def spec(self, config: TransformerConfig) -> BlockSpec:
        """The latency block of this step (``transformer.<kind>``)."""
        return BlockSpec(
            kind=f"transformer.{self.kind}",
            input_shape=self.input_shape,
            output_shape=self.output_shape,
            params=dict(self.params),
            builder=partial(_static_builder(config, self.kind), **self.params),
        )


def _static_builder(config: TransformerConfig, kind: str) -> Any:
    if kind == config.front_end.kind:
        return config.front_end.build_static
    if kind == "ffn":
        return FeedForwardBlock
    if kind == "head":
        return TokenHead
    return partial(MixerBlock, kind)


def mixer_params(
    config: TransformerConfig, mixer: str, dim: int, heads: int, grid: int | None
) -> dict[str, ParamValue]:
    """The block parameters of a mixer: only what changes its cost or structure."""
    params: dict[str, ParamValue] = {"dim": dim, "norm_first": config.norm_first}
    if mixer in HEADED_MIXERS:
        params.update(heads=heads, head_dim=config.head_dim)
    if mixer in GRID_MIXERS:
        if grid is None:
            raise ValueError(f"mixer '{mixer}' needs a 2-D token grid")
        params["grid"] = grid
    if mixer == "relpos":
        params["bias_grid"] = int(config.front_end.max_grid or grid or 0)
    if mixer == "shsa":
        params.update(partial_dim=shvit_partial_dim(dim), qk_dim=SHVIT_QK_DIM)
    return params


def plan_transformer(
    config: TransformerConfig,
    setting: SubnetSetting,
    batch: int = 1,
    num_classes: int = 1000,
    in_channels: int = 3,
) -> list[TransformerStep]:
    """The subnet's blocks in execution order (front end, mixer/FFN per layer, head)."""
    front = config.front_end
    tokens, grid = front.layout(setting.size)
    token_shape = (batch, tokens, setting.dim)
    steps = [
        TransformerStep(
            front.kind,
            front.block_params(in_channels, setting.dim, setting.size),
            None,
            front.input_shape(batch, in_channels, setting.size),
            token_shape,
        )
    ]
    for layer in setting.layers:
        if layer.mixer not in config.mixers and layer.mixer != "identity":
            raise ValueError(f"the supernet holds no '{layer.mixer}' mixer")
        if layer.mixer != "identity":
            params = mixer_params(config, layer.mixer, setting.dim, layer.heads, grid)
            steps.append(TransformerStep(layer.mixer, params, layer.slot, token_shape, token_shape))
        ffn = {"dim": setting.dim, "hidden": layer.hidden, "norm_first": config.norm_first}
        steps.append(TransformerStep("ffn", ffn, layer.slot, token_shape, token_shape))
    head = {"dim": setting.dim, "num_classes": num_classes, "norm": config.norm_first}
    steps.append(TransformerStep("head", head, None, token_shape, (batch, num_classes)))
    return steps


# =========================================================================== supernet
class ElasticMixer(Protocol):
    """The interface every elastic token mixer has (see :mod:`nasvit.nn.token_mixers`)."""

    def __call__(self, x: Tensor, heads: int, grid: int | None, /) -> Tensor: ...

    def extract(self, dim: int, heads: int, grid: int | None, /) -> nn.Module: ...


def _elastic_mixer(config: TransformerConfig, mixer: str) -> nn.Module:
    if mixer == "softmax":
        return ElasticAttention(config.max_dim, config.max_heads, config.head_dim, config.head_dim)
    if mixer == "relpos":
        return ElasticAttention(
            config.max_dim,
            config.max_heads,
            config.head_dim,
            config.head_dim,
            bias_grid=config.front_end.max_grid,
        )
    if mixer == "linear":
        return ElasticLinearAttention(config.max_dim, config.max_heads, config.head_dim)
    if mixer == "shsa":
        return ElasticSingleHeadAttention(config.max_dim)
    if mixer == "pool":
        return ElasticPoolMixer()
    raise ValueError(f"unknown token mixer '{mixer}'")


class ElasticEncoderLayer(nn.Module):
    """One supernet layer: a module per mixer (no sharing between mixers), shared norms, FFN."""

    def __init__(self, config: TransformerConfig):
        super().__init__()
        self.norm_first = config.norm_first
        self.norm1 = ElasticLayerNorm(config.max_dim)
        self.mixers = nn.ModuleDict(
            {m: _elastic_mixer(config, m) for m in config.mixers if m != "identity"}
        )
        self.norm2 = ElasticLayerNorm(config.max_dim)
        self.ffn = ElasticFeedForward(config.max_dim, config.max_hidden)

    def forward(self, x: Tensor, layer: LayerSetting, grid: int | None) -> Tensor:
        if layer.mixer != "identity":
            mixer = self.mixers[layer.mixer]
            x = _residual(x, lambda t: mixer(t, layer.heads, grid), self.norm1, self.norm_first)
        return _residual(x, lambda t: self.ffn(t, layer.hidden), self.norm2, self.norm_first)

    def extract_mixer(self, mixer: str, params: Mapping[str, Any]) -> MixerBlock:
        dim = int(params["dim"])
        grid = params.get("grid")
        source = cast(ElasticMixer, self.mixers[mixer])  # (a ModuleDict holds nn.Modules)
        module = source.extract(dim, int(params.get("heads", 0)), grid)
        block = MixerBlock(mixer, module=module, **params)
        block.norm = self.norm1.extract(dim)
        return block

    def extract_ffn(self, params: Mapping[str, Any]) -> FeedForwardBlock:
        dim, hidden = int(params["dim"]), int(params["hidden"])
        block = FeedForwardBlock(dim, hidden, self.norm_first, self.ffn.extract(dim, hidden))
        block.norm = self.norm2.extract(dim)
        return block


class TransformerSupernet(Supernet):
    """A weight-sharing Transformer; a space subclasses it and maps its architectures to
    :class:`SubnetSetting` in :meth:`setting`."""

    def __init__(self, config: TransformerConfig, num_classes: int = 1000, in_channels: int = 3):
        super().__init__()
        self.config, self.num_classes, self.in_channels = config, num_classes, in_channels
        self.front = config.front_end.build_elastic(in_channels, config.max_dim)
        self.layers = nn.ModuleList(ElasticEncoderLayer(config) for _ in range(config.num_layers))
        self.head = ElasticTokenHead(config.max_dim, num_classes, norm=config.norm_first)
        self.apply(_init_weights)

    @abc.abstractmethod
    def setting(self, arch: Mapping[str, Any]) -> SubnetSetting:
        """The subnet ``arch`` of the space as a :class:`SubnetSetting`."""

    def forward(self, x: Tensor, arch: Mapping[str, Any]) -> Tensor:
        return self.run(x, self.setting(arch))

    def run(self, x: Tensor, setting: SubnetSetting) -> Tensor:
        """Logits of the subnet ``setting``."""
        tokens, grid = self.front(x, setting.dim)
        for layer in setting.layers:
            tokens = self.layers[layer.slot](tokens, layer, grid)
        logits: Tensor = self.head(tokens)
        return logits

    def extract(self, arch: Mapping[str, Any]) -> nn.Module:
        return self.extract_setting(self.setting(arch))

    def extract_setting(self, setting: SubnetSetting) -> nn.Module:
        blocks: list[nn.Module] = []
        steps = plan_transformer(self.config, setting, 1, self.num_classes, self.in_channels)
        for step in steps:
            if step.kind == self.config.front_end.kind:
                blocks.append(cast(ElasticFrontEndModule, self.front).extract(**step.params))
            elif step.kind == "head":
                blocks.append(self.head.extract(int(step.params["dim"])))
            else:
                assert step.slot is not None
                layer = self.layers[step.slot]
                assert isinstance(layer, ElasticEncoderLayer)
                if step.kind == "ffn":
                    blocks.append(layer.extract_ffn(step.params))
                else:
                    blocks.append(layer.extract_mixer(step.kind, step.params))
        subnet = nn.Sequential(*blocks)
        subnet.train(self.training)
        return subnet


def _init_weights(module: nn.Module) -> None:
    if isinstance(module, nn.Linear):
        nn.init.trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)


__all__ = [
    "GRID_MIXERS",
    "HEADED_MIXERS",
    "MIXERS",
    "ElasticEncoderLayer",
    "ElasticFeedForward",
    "ElasticMixer",
    "ElasticPatchEmbed",
    "ElasticSequenceEmbed",
    "ElasticTokenHead",
    "FeedForward",
    "FeedForwardBlock",
    "FrontEnd",
    "LayerSetting",
    "MixerBlock",
    "PatchEmbed",
    "PatchEmbedding",
    "SequenceEmbed",
    "SequenceEmbedding",
    "SubnetSetting",
    "TokenHead",
    "TransformerConfig",
    "TransformerStep",
    "TransformerSupernet",
    "mixer_params",
    "plan_transformer",
    "static_mixer",
]

"""Mobile convolution blocks (the MobileDets / MobileNet family), static and elastic.

The three block types of the released MobileDets backbones; every convolution is followed by
BatchNorm, every one but the last by the activation (the last projection is linear):

* :class:`InvertedBottleneck` (IBN): 1x1 expand to ``expansion * in`` -> kxk depthwise (stride)
  -> optional squeeze-excite -> 1x1 project. ``expansion=1`` drops the expand convolution (the
  backbones' first layer).
* :class:`FusedInvertedBottleneck`: kxk full convolution expanding to ``expansion * in`` (stride)
  -> optional squeeze-excite -> 1x1 project.
* :class:`TuckerBlock`: 1x1 compress to ``round8(in_ratio * in)`` -> kxk full convolution to
  ``round8(out_ratio * out)`` (stride) -> 1x1 to ``out``.

A residual connection is added when the caller asks for one (only valid at stride 1 with equal
widths). Activations: ``relu6`` (accelerator models) or ``swish6`` = ``x * relu6(x + 3) / 6``
(the CPU model; it exports to ONNX ``HardSwish``). Squeeze-excite uses a hidden width of
``round8(channels / 4)``, the block's activation, and a sigmoid gate.

Elastic blocks hold one max-size weight per convolution and slice it per call: the first
channels (input from the tensor, output and expanded/compressed widths from the arguments) and,
for the kernel, the centre ``k x k`` crop of the largest kernel. Sharing the kernel (as OFA and
Single-Path NAS do) rather than keeping one weight per kernel size means a kernel choice adds no
parameters and every subnet trains the centre taps, which carry most of a kernel's weight; the
price is that a 3x3 and a 5x5 subnet cannot specialise those taps independently.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from nasvit.nn.elastic import (
    ElasticBatchNorm2d,
    ElasticConv2d,
    ElasticDepthwiseConv2d,
    ElasticLinear,
    SliceMemo,
    _copy,
)


def swish6(x: Tensor) -> Tensor:
    """``x * relu6(x + 3) / 6`` (MobileDet-CPU's "swish6", a.k.a. hard swish)."""
    return F.hardswish(x)


ACTIVATIONS: dict[str, Callable[[Tensor], Tensor]] = {"relu6": F.relu6, "swish6": swish6}


def activation_fn(name: str) -> Callable[[Tensor], Tensor]:
    if name not in ACTIVATIONS:
        raise ValueError(f"unknown activation '{name}'; known: {', '.join(ACTIVATIONS)}")
    return ACTIVATIONS[name]


def round_filters(channels: float, base: int = 8) -> int:
    """``channels`` rounded to the nearest multiple of ``base`` (halves up), at least ``base``:
    how the released MobileDets code sizes scaled widths, Tucker ranks and SE widths."""
    return max(base, int(channels / base + 0.5) * base)


def se_width(channels: int) -> int:
    """Hidden width of the squeeze-excite of a ``channels``-wide feature map."""
    return round_filters(channels * 0.25)


def _reachable_kernel(kernel: int, x: Tensor) -> int:
    """The centre part of a 'same'-padded kxk kernel that can touch ``x``: on an n-pixel side,
    taps farther than n-1 from the centre only ever multiply padding, so a (2n-1) crop gives
    the same output. Blocks run the crop because at digits' resolutions the late stages are 1x1
    or 2x2 maps, where a full 5x5 depthwise convolution costs ~50 ms per batch of 64 on CPU
    (forward; more in backward) against ~1 ms for the crop. At the published resolutions no map
    is that small and nothing changes; an exported model carries the cropped kernel."""
    return min(kernel, 2 * min(x.shape[-2], x.shape[-1]) - 1)


def _check_residual(residual: bool, stride: int, in_channels: int, out_channels: int) -> None:
    if residual and (stride != 1 or in_channels != out_channels):
        raise ValueError(
            f"a residual needs stride 1 and equal widths, got stride {stride}, "
            f"{in_channels} -> {out_channels} channels"
        )


# --------------------------------------------------------------------------- static blocks
class ConvBNAct(nn.Module):
    """Convolution (no bias) -> BatchNorm -> optional activation."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel: int,
        stride: int = 1,
        groups: int = 1,
        activation: str | None = None,
    ):
        super().__init__()
        self.conv = nn.Conv2d(
            in_channels, out_channels, kernel, stride, kernel // 2, groups=groups, bias=False
        )
        self.bn = nn.BatchNorm2d(out_channels)
        self.activation = activation
        self._act = activation_fn(activation) if activation else None

    def forward(self, x: Tensor) -> Tensor:
        conv, kernel = self.conv, self.conv.kernel_size[0]
        reach = _reachable_kernel(kernel, x)
        if reach < kernel:  # same output, far less work on tiny maps (see _reachable_kernel)
            start = (kernel - reach) // 2
            crop = slice(start, start + reach)
            weight = conv.weight[:, :, crop, crop]
            x = F.conv2d(x, weight, None, conv.stride, reach // 2, groups=conv.groups)
        else:
            x = conv(x)
        x = self.bn(x)
        return self._act(x) if self._act is not None else x


class SqueezeExcite(nn.Module):
    """Global average -> 1x1 reduce (bias) -> activation -> 1x1 expand (bias) -> sigmoid gate."""

    def __init__(self, channels: int, activation: str):
        super().__init__()
        hidden = se_width(channels)
        self.reduce = nn.Conv2d(channels, hidden, 1)
        self.expand = nn.Conv2d(hidden, channels, 1)
        self._act = activation_fn(activation)

    def forward(self, x: Tensor) -> Tensor:
        gate = self.expand(self._act(self.reduce(x.mean((2, 3), keepdim=True))))
        return x * torch.sigmoid(gate)


class InvertedBottleneck(nn.Module):
    """IBN: [1x1 expand] -> kxk depthwise -> [SE] -> 1x1 linear projection [+ input]."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel: int,
        expansion: int,
        stride: int = 1,
        residual: bool = False,
        se: bool = False,
        activation: str = "relu6",
    ):
        super().__init__()
        _check_residual(residual, stride, in_channels, out_channels)
        expanded = in_channels * expansion
        self.residual = residual
        self.expand = (
            ConvBNAct(in_channels, expanded, 1, activation=activation) if expansion > 1 else None
        )
        self.depthwise = ConvBNAct(
            expanded, expanded, kernel, stride, groups=expanded, activation=activation
        )
        self.se = SqueezeExcite(expanded, activation) if se else None
        self.project = ConvBNAct(expanded, out_channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        h: Tensor = self.expand(x) if self.expand is not None else x
        h = self.depthwise(h)
        if self.se is not None:
            h = self.se(h)
        h = self.project(h)
        return h + x if self.residual else h


class FusedInvertedBottleneck(nn.Module):
    """Fused IBN: kxk full-conv expand -> [SE] -> 1x1 linear projection [+ input]."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel: int,
        expansion: int,
        stride: int = 1,
        residual: bool = False,
        se: bool = False,
        activation: str = "relu6",
    ):
        super().__init__()
        _check_residual(residual, stride, in_channels, out_channels)
        expanded = in_channels * expansion
        self.residual = residual
        self.expand = ConvBNAct(in_channels, expanded, kernel, stride, activation=activation)
        self.se = SqueezeExcite(expanded, activation) if se else None
        self.project = ConvBNAct(expanded, out_channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        h: Tensor = self.expand(x)
        if self.se is not None:
            h = self.se(h)
        h = self.project(h)
        return h + x if self.residual else h


class TuckerBlock(nn.Module):
    """Tucker: 1x1 compress -> kxk full conv -> 1x1 linear expansion [+ input]."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel: int,
        in_ratio: float,
        out_ratio: float,
        stride: int = 1,
        residual: bool = False,
        activation: str = "relu6",
    ):
        super().__init__()
        _check_residual(residual, stride, in_channels, out_channels)
        in_rank = round_filters(in_ratio * in_channels)
        out_rank = round_filters(out_ratio * out_channels)
        self.residual = residual
        self.compress = ConvBNAct(in_channels, in_rank, 1, activation=activation)
        self.conv = ConvBNAct(in_rank, out_rank, kernel, stride, activation=activation)
        self.expand = ConvBNAct(out_rank, out_channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        h: Tensor = self.expand(self.conv(self.compress(x)))
        return h + x if self.residual else h


class ClassifierHead(nn.Module):
    """Global average pool -> linear classifier."""

    def __init__(self, in_channels: int, num_classes: int):
        super().__init__()
        self.fc = nn.Linear(in_channels, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        logits: Tensor = self.fc(x.mean((2, 3)))
        return logits


# --------------------------------------------------------------------------- elastic layers
class ElasticKernelConv2d(SliceMemo, nn.Conv2d):
    """A dense convolution (no bias) with elastic input/output channels and a centre-cropped
    kernel; outside autograd the contiguous slice is memoised (see :class:`SliceMemo`)."""

    def __init__(self, max_in: int, max_out: int, max_kernel: int, stride: int = 1):
        super().__init__(max_in, max_out, max_kernel, stride, max_kernel // 2, bias=False)

    def _index(self, out_channels: int, in_channels: int, kernel: int) -> tuple[slice, ...]:
        size = self.weight.shape[-1]
        if kernel > size or kernel % 2 == 0:
            raise ValueError(f"kernel {kernel} is not an odd size <= {size}")
        start = (size - kernel) // 2
        crop = slice(start, start + kernel)
        return (slice(0, out_channels), slice(0, in_channels), crop, crop)

    def _weight(self, out_channels: int, in_channels: int, kernel: int) -> Tensor:
        return self._slice(self.weight, self._index(out_channels, in_channels, kernel))

    def forward(self, x: Tensor, out_channels: int, kernel: int) -> Tensor:  # type: ignore[override]
        weight = self._weight(out_channels, x.shape[1], kernel)
        return F.conv2d(x, weight, None, self.stride, kernel // 2)

    def extract(self, in_channels: int, out_channels: int, kernel: int) -> nn.Conv2d:
        stride = cast(tuple[int, int], self.stride)  # (Conv2d keeps a pair)
        conv = nn.Conv2d(in_channels, out_channels, kernel, stride, kernel // 2, bias=False)
        _copy(conv.weight, self.weight[self._index(out_channels, in_channels, kernel)])
        return conv


class ElasticConvBNAct(nn.Module):
    """:class:`ConvBNAct` with elastic channels and kernel (dense convolutions only)."""

    def __init__(
        self,
        max_in: int,
        max_out: int,
        max_kernel: int,
        stride: int = 1,
        activation: str | None = None,
    ):
        super().__init__()
        self.conv = ElasticKernelConv2d(max_in, max_out, max_kernel, stride)
        self.bn = ElasticBatchNorm2d(max_out)
        self.activation = activation
        self._act = activation_fn(activation) if activation else None

    def forward(self, x: Tensor, out_channels: int, kernel: int) -> Tensor:
        x = self.bn(self.conv(x, out_channels, _reachable_kernel(kernel, x)))
        return self._act(x) if self._act is not None else x

    def extract(self, in_channels: int, out_channels: int, kernel: int) -> ConvBNAct:
        stride = self.conv.stride[0]
        block = ConvBNAct(in_channels, out_channels, kernel, stride, activation=self.activation)
        block.conv = self.conv.extract(in_channels, out_channels, kernel)
        block.bn = self.bn.extract(out_channels)
        return block


class _ElasticPointwise(nn.Module):
    """1x1 convolution (no bias) -> BatchNorm -> optional activation, elastic in and out."""

    def __init__(self, max_in: int, max_out: int, activation: str | None = None):
        super().__init__()
        self.conv = ElasticConv2d(max_in, max_out, 1, bias=False)
        self.bn = ElasticBatchNorm2d(max_out)
        self.activation = activation
        self._act = activation_fn(activation) if activation else None

    def forward(self, x: Tensor, out_channels: int) -> Tensor:
        x = self.bn(self.conv(x, out_channels))
        return self._act(x) if self._act is not None else x

    def extract(self, in_channels: int, out_channels: int) -> ConvBNAct:
        block = ConvBNAct(in_channels, out_channels, 1, activation=self.activation)
        block.conv = self.conv.extract(in_channels, out_channels)
        block.bn = self.bn.extract(out_channels)
        return block


class _ElasticDepthwise(nn.Module):
    """Depthwise kxk (centre-cropped) -> BatchNorm -> activation."""

    def __init__(self, max_channels: int, max_kernel: int, stride: int, activation: str):
        super().__init__()
        self.conv = ElasticDepthwiseConv2d(max_channels, max_kernel, stride)
        self.bn = ElasticBatchNorm2d(max_channels)
        self.activation = activation
        self._act = activation_fn(activation)

    def forward(self, x: Tensor, kernel: int) -> Tensor:
        return self._act(self.bn(self.conv(x, _reachable_kernel(kernel, x))))

    def extract(self, channels: int, kernel: int) -> ConvBNAct:
        stride = self.conv.stride[0]
        block = ConvBNAct(
            channels, channels, kernel, stride, groups=channels, activation=self.activation
        )
        block.conv = self.conv.extract(channels, kernel)
        block.bn = self.bn.extract(channels)
        return block


class ElasticSqueezeExcite(nn.Module):
    """:class:`SqueezeExcite` over the first ``x.shape[1]`` channels (hidden width follows)."""

    def __init__(self, max_channels: int, activation: str):
        super().__init__()
        self.reduce = ElasticConv2d(max_channels, se_width(max_channels), 1)
        self.expand = ElasticConv2d(se_width(max_channels), max_channels, 1)
        self.activation = activation
        self._act = activation_fn(activation)

    def forward(self, x: Tensor) -> Tensor:
        channels = x.shape[1]
        pooled = x.mean((2, 3), keepdim=True)
        gate = self.expand(self._act(self.reduce(pooled, se_width(channels))), channels)
        return x * torch.sigmoid(gate)

    def extract(self, channels: int) -> SqueezeExcite:
        block = SqueezeExcite(channels, self.activation)
        block.reduce = self.reduce.extract(channels, se_width(channels))
        block.expand = self.expand.extract(se_width(channels), channels)
        return block


class ElasticInvertedBottleneck(nn.Module):
    """:class:`InvertedBottleneck` with elastic kernel, expansion and output width.

    With ``max_expansion == 1`` the block has no expand convolution and only expansion 1 runs.
    """

    def __init__(
        self,
        max_in: int,
        max_out: int,
        max_kernel: int,
        max_expansion: int,
        stride: int = 1,
        residual: bool = False,
        se: bool = False,
        activation: str = "relu6",
    ):
        super().__init__()
        max_expanded = max_in * max_expansion
        self.stride, self.residual, self.activation = stride, residual, activation
        self.max_expansion = max_expansion
        self.expand = (
            _ElasticPointwise(max_in, max_expanded, activation) if max_expansion > 1 else None
        )
        self.depthwise = _ElasticDepthwise(max_expanded, max_kernel, stride, activation)
        self.se = ElasticSqueezeExcite(max_expanded, activation) if se else None
        self.project = _ElasticPointwise(max_expanded, max_out)

    def _check_expansion(self, expansion: int) -> None:
        if self.expand is None and expansion != 1:
            raise ValueError(f"this block has no expand convolution: expansion {expansion} != 1")
        if expansion == 1 and self.expand is not None:
            raise ValueError("expansion 1 needs a block built without an expand convolution")

    def forward(self, x: Tensor, out_channels: int, kernel: int, expansion: int) -> Tensor:
        self._check_expansion(expansion)
        h: Tensor = self.expand(x, x.shape[1] * expansion) if self.expand is not None else x
        h = self.depthwise(h, kernel)
        if self.se is not None:
            h = self.se(h)
        h = self.project(h, out_channels)
        return h + x if self.residual else h

    def extract(
        self, in_channels: int, out_channels: int, kernel: int, expansion: int
    ) -> InvertedBottleneck:
        self._check_expansion(expansion)
        expanded = in_channels * expansion
        block = InvertedBottleneck(
            in_channels,
            out_channels,
            kernel,
            expansion,
            self.stride,
            self.residual,
            self.se is not None,
            self.activation,
        )
        if self.expand is not None:
            block.expand = self.expand.extract(in_channels, expanded)
        block.depthwise = self.depthwise.extract(expanded, kernel)
        if self.se is not None:
            block.se = self.se.extract(expanded)
        block.project = self.project.extract(expanded, out_channels)
        return block


class ElasticFusedInvertedBottleneck(nn.Module):
    """:class:`FusedInvertedBottleneck` with elastic kernel, expansion and output width."""

    def __init__(
        self,
        max_in: int,
        max_out: int,
        max_kernel: int,
        max_expansion: int,
        stride: int = 1,
        residual: bool = False,
        se: bool = False,
        activation: str = "relu6",
    ):
        super().__init__()
        max_expanded = max_in * max_expansion
        self.stride, self.residual, self.activation = stride, residual, activation
        self.expand = ElasticConvBNAct(max_in, max_expanded, max_kernel, stride, activation)
        self.se = ElasticSqueezeExcite(max_expanded, activation) if se else None
        self.project = _ElasticPointwise(max_expanded, max_out)

    def forward(self, x: Tensor, out_channels: int, kernel: int, expansion: int) -> Tensor:
        h: Tensor = self.expand(x, x.shape[1] * expansion, kernel)
        if self.se is not None:
            h = self.se(h)
        h = self.project(h, out_channels)
        return h + x if self.residual else h

    def extract(
        self, in_channels: int, out_channels: int, kernel: int, expansion: int
    ) -> FusedInvertedBottleneck:
        expanded = in_channels * expansion
        block = FusedInvertedBottleneck(
            in_channels,
            out_channels,
            kernel,
            expansion,
            self.stride,
            self.residual,
            self.se is not None,
            self.activation,
        )
        block.expand = self.expand.extract(in_channels, expanded, kernel)
        if self.se is not None:
            block.se = self.se.extract(expanded)
        block.project = self.project.extract(expanded, out_channels)
        return block


class ElasticTucker(nn.Module):
    """:class:`TuckerBlock` with elastic kernel, compression ratios and output width."""

    def __init__(
        self,
        max_in: int,
        max_out: int,
        max_kernel: int,
        max_in_ratio: float,
        max_out_ratio: float,
        stride: int = 1,
        residual: bool = False,
        activation: str = "relu6",
    ):
        super().__init__()
        max_in_rank = round_filters(max_in_ratio * max_in)
        max_out_rank = round_filters(max_out_ratio * max_out)
        self.stride, self.residual, self.activation = stride, residual, activation
        self.compress = _ElasticPointwise(max_in, max_in_rank, activation)
        self.conv = ElasticConvBNAct(max_in_rank, max_out_rank, max_kernel, stride, activation)
        self.expand = _ElasticPointwise(max_out_rank, max_out)

    def forward(
        self, x: Tensor, out_channels: int, kernel: int, in_ratio: float, out_ratio: float
    ) -> Tensor:
        h: Tensor = self.compress(x, round_filters(in_ratio * x.shape[1]))
        h = self.conv(h, round_filters(out_ratio * out_channels), kernel)
        h = self.expand(h, out_channels)
        return h + x if self.residual else h

    def extract(
        self, in_channels: int, out_channels: int, kernel: int, in_ratio: float, out_ratio: float
    ) -> TuckerBlock:
        in_rank = round_filters(in_ratio * in_channels)
        out_rank = round_filters(out_ratio * out_channels)
        block = TuckerBlock(
            in_channels,
            out_channels,
            kernel,
            in_ratio,
            out_ratio,
            self.stride,
            self.residual,
            self.activation,
        )
        block.compress = self.compress.extract(in_channels, in_rank)
        block.conv = self.conv.extract(in_rank, out_rank, kernel)
        block.expand = self.expand.extract(out_rank, out_channels)
        return block


class ElasticClassifierHead(nn.Module):
    """:class:`ClassifierHead` over the first ``x.shape[1]`` channels."""

    def __init__(self, max_in: int, num_classes: int):
        super().__init__()
        self.num_classes = num_classes
        self.fc = ElasticLinear(max_in, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        logits: Tensor = self.fc(x.mean((2, 3)), self.num_classes)
        return logits

    def extract(self, in_channels: int) -> ClassifierHead:
        head = ClassifierHead(in_channels, self.num_classes)
        head.fc = self.fc.extract(in_channels, self.num_classes)
        return head


__all__ = [
    "ACTIVATIONS",
    "ClassifierHead",
    "ConvBNAct",
    "ElasticClassifierHead",
    "ElasticConvBNAct",
    "ElasticFusedInvertedBottleneck",
    "ElasticInvertedBottleneck",
    "ElasticKernelConv2d",
    "ElasticSqueezeExcite",
    "ElasticTucker",
    "FusedInvertedBottleneck",
    "InvertedBottleneck",
    "SqueezeExcite",
    "TuckerBlock",
    "activation_fn",
    "round_filters",
    "se_width",
    "swish6",
]

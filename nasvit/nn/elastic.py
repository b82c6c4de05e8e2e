"""Elastic layers: one max-size weight, sliced to the active size at every call.

Each elastic layer takes the active sizes as forward arguments (input sizes are read from the
input tensor), so a supernet's forward has no hidden mutable state, and each can ``extract`` a
plain ``torch.nn`` layer holding a copy of the active slice. Slicing always keeps the *first*
channels/features/heads, as in once-for-all.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def _copy(destination: Tensor, source: Tensor) -> None:
    with torch.no_grad():
        destination.copy_(source)


class _SliceMemo:
    """Remembers the last contiguous weight slice used without autograd.

    Evaluating one subnet runs many batches at the same sizes; a fresh non-contiguous slice per
    call makes oneDNN re-pack the weight every time (measured ~1.6x slower 1x1 convolutions).
    The memo is keyed by the sizes and the weight's version counter, so an optimizer step or
    ``load_state_dict`` invalidates it; it is one tuple assigned atomically, and it is never
    used while autograd records (training slices stay views so gradients reach the supernet).
    """

    _memo: tuple[tuple[int, ...], Tensor] | None = None

    def _slice(self, weight: Tensor, *sizes: int) -> Tensor:
        full = weight.shape[: len(sizes)]
        index = tuple(slice(0, n) for n in sizes)
        if tuple(full) == sizes:
            return weight
        if torch.is_grad_enabled() and weight.requires_grad:
            return weight[index]
        key = (*sizes, weight._version)
        memo = self._memo
        if memo is None or memo[0] != key:
            memo = (key, weight[index].contiguous())
            self._memo = memo
        return memo[1]


class ElasticConv2d(_SliceMemo, nn.Conv2d):
    """A dense (groups=1) convolution with elastic input and output channels.

    Args:
        max_in: largest number of input channels.
        max_out: largest number of output channels.
        kernel_size, stride, padding, bias: as for ``nn.Conv2d``.
    """

    def __init__(
        self,
        max_in: int,
        max_out: int,
        kernel_size: int,
        stride: int = 1,
        padding: int | None = None,
        bias: bool = True,
    ):
        super().__init__(
            max_in,
            max_out,
            kernel_size,
            stride=stride,
            padding=kernel_size // 2 if padding is None else padding,
            bias=bias,
        )

    def forward(self, x: Tensor, out_channels: int) -> Tensor:  # type: ignore[override]
        weight = self._slice(self.weight, out_channels, x.shape[1])
        bias = None if self.bias is None else self.bias[:out_channels]
        return F.conv2d(x, weight, bias, self.stride, self.padding)

    def extract(self, in_channels: int, out_channels: int) -> nn.Conv2d:
        conv = nn.Conv2d(
            in_channels,
            out_channels,
            self.kernel_size,
            stride=self.stride,
            padding=self.padding,
            bias=self.bias is not None,
        )
        _copy(conv.weight, self.weight[:out_channels, :in_channels])
        if self.bias is not None:
            _copy(conv.bias, self.bias[:out_channels])
        return conv


class ElasticDepthwiseConv2d(nn.Conv2d):
    """A depthwise convolution with elastic channels and an elastic (centre-cropped) kernel."""

    def __init__(self, max_channels: int, max_kernel: int, stride: int = 1, bias: bool = False):
        super().__init__(
            max_channels,
            max_channels,
            max_kernel,
            stride=stride,
            padding=max_kernel // 2,
            groups=max_channels,
            bias=bias,
        )

    def _weight(self, channels: int, kernel: int) -> Tensor:
        start = (self.kernel_size[0] - kernel) // 2
        return self.weight[:channels, :, start : start + kernel, start : start + kernel]

    def forward(self, x: Tensor, kernel: int) -> Tensor:  # type: ignore[override]
        channels = x.shape[1]
        bias = None if self.bias is None else self.bias[:channels]
        return F.conv2d(
            x, self._weight(channels, kernel), bias, self.stride, kernel // 2, groups=channels
        )

    def extract(self, channels: int, kernel: int) -> nn.Conv2d:
        conv = nn.Conv2d(
            channels,
            channels,
            kernel,
            stride=self.stride,
            padding=kernel // 2,
            groups=channels,
            bias=self.bias is not None,
        )
        _copy(conv.weight, self._weight(channels, kernel))
        if self.bias is not None:
            _copy(conv.bias, self.bias[:channels])
        return conv


class ElasticLinear(_SliceMemo, nn.Linear):
    """A linear layer with elastic input (read from ``x``) and output features."""

    def forward(self, x: Tensor, out_features: int) -> Tensor:  # type: ignore[override]
        bias = None if self.bias is None else self.bias[:out_features]
        return F.linear(x, self._slice(self.weight, out_features, x.shape[-1]), bias)

    def extract(self, in_features: int, out_features: int) -> nn.Linear:
        linear = nn.Linear(in_features, out_features, bias=self.bias is not None)
        _copy(linear.weight, self.weight[:out_features, :in_features])
        if self.bias is not None:
            _copy(linear.bias, self.bias[:out_features])
        return linear


class ElasticBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm over the first ``x.shape[1]`` channels; running statistics are sliced views,
    so training a subnet updates exactly its own channels' statistics."""

    def forward(self, x: Tensor) -> Tensor:
        channels = x.shape[1]
        if channels == self.num_features:
            return super().forward(x)
        use_batch_stats = self.training or self.running_mean is None
        momentum = 0.0 if self.momentum is None else self.momentum
        if self.training and self.num_batches_tracked is not None:
            self.num_batches_tracked.add_(1)
            if self.momentum is None:  # cumulative moving average, as nn.BatchNorm2d does
                momentum = 1.0 / float(self.num_batches_tracked)
        return F.batch_norm(
            x,
            None if self.running_mean is None else self.running_mean[:channels],
            None if self.running_var is None else self.running_var[:channels],
            None if self.weight is None else self.weight[:channels],
            None if self.bias is None else self.bias[:channels],
            use_batch_stats,
            momentum,
            self.eps,
        )

    def extract(self, channels: int) -> nn.BatchNorm2d:
        bn = nn.BatchNorm2d(channels, eps=self.eps, momentum=self.momentum)
        if self.weight is not None:
            _copy(bn.weight, self.weight[:channels])
            _copy(bn.bias, self.bias[:channels])
        if self.running_mean is not None:
            _copy(bn.running_mean, self.running_mean[:channels])
            _copy(bn.running_var, self.running_var[:channels])
            _copy(bn.num_batches_tracked, self.num_batches_tracked)
        return bn


class ElasticLayerNorm(nn.LayerNorm):
    """LayerNorm over the first ``x.shape[-1]`` features."""

    def forward(self, x: Tensor) -> Tensor:
        features = x.shape[-1]
        weight = None if self.weight is None else self.weight[:features]
        bias = None if self.bias is None else self.bias[:features]
        return F.layer_norm(x, (features,), weight, bias, self.eps)

    def extract(self, features: int) -> nn.LayerNorm:
        norm = nn.LayerNorm(features, eps=self.eps)
        _copy(norm.weight, self.weight[:features])
        _copy(norm.bias, self.bias[:features])
        return norm


class ElasticLayerScale(nn.Module):
    """Per-channel learnable scale (LayerScale) over the first channels.

    Args:
        max_channels: largest number of channels.
        init: initial value (small values make deep residual nets train stably).
        channel_dim: 1 for feature maps (B, C, H, W), -1 for tokens (B, N, C).
    """

    def __init__(self, max_channels: int, init: float = 1e-5, channel_dim: int = 1):
        super().__init__()
        self.scale = nn.Parameter(torch.full((max_channels,), init))
        self.channel_dim = channel_dim

    def forward(self, x: Tensor) -> Tensor:
        return x * _scale_shape(self.scale[: x.shape[self.channel_dim]], self.channel_dim)

    def extract(self, channels: int) -> LayerScale:
        layer = LayerScale(channels, channel_dim=self.channel_dim)
        _copy(layer.scale, self.scale[:channels])
        return layer


class LayerScale(nn.Module):
    """Static counterpart of :class:`ElasticLayerScale`."""

    def __init__(self, channels: int, init: float = 1e-5, channel_dim: int = 1):
        super().__init__()
        self.scale = nn.Parameter(torch.full((channels,), init))
        self.channel_dim = channel_dim

    def forward(self, x: Tensor) -> Tensor:
        return x * _scale_shape(self.scale, self.channel_dim)


def _scale_shape(scale: Tensor, channel_dim: int) -> Tensor:
    return scale.view(-1, 1, 1) if channel_dim == 1 else scale

"""Elastic layers: one max-size weight, sliced to the active size at every call.

Each elastic layer takes the active sizes as forward arguments (input sizes are read from the
input tensor), so a supernet's forward has no hidden mutable state, and each can ``extract`` a
plain ``torch.nn`` layer holding a copy of the active slice. Slicing always keeps the *first*
channels/features/heads, as in once-for-all.

Training bookkeeping (:class:`SliceRecorder`): a slice of a parameter taken under autograd makes
backward allocate, zero and accumulate a gradient the size of the whole max-size parameter, and
a standard optimizer then updates all of it. Inside ``with SliceRecorder() as recorder:`` every
elastic layer instead serves its op a fresh leaf tensor equal to the slice and records it;
backward fills slice-sized gradients, and :meth:`SliceRecorder.gradients` returns, per
parameter, the summed gradient over the bounding box of the slices it served. Outputs are the
same values either way; only where gradients land differs.
"""

from __future__ import annotations

import contextvars
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def _copy(destination: Tensor, source: Tensor) -> None:
    with torch.no_grad():
        destination.copy_(source)


ModuleT = TypeVar("ModuleT", bound=nn.Module)


def _uninitialised(module: type[ModuleT], like: Tensor, *args: object, **kwargs: object) -> ModuleT:
    """``module(*args, **kwargs)`` with parameters left uninitialised, on ``like``'s device.

    For ``extract``, which overwrites every parameter with a copy of the supernet's slice:
    random initialisation first cost more than the copies (weights of a searched subnet are
    extracted for every evaluation)."""
    made: ModuleT = torch.nn.utils.skip_init(  # type: ignore[no-untyped-call]  # unannotated
        module, *args, device=like.device, **kwargs
    )
    return made


Index = tuple[slice, ...]  # one slice(start, stop) per leading dimension of a parameter


@dataclass
class SliceGradient:
    """The gradient of ``parameter[index]`` (``grad`` has that view's shape).

    ``values``, when given, is a contiguous tensor holding the current values of
    ``parameter[index]`` (the copy served in forward) that an optimizer may update in place and
    then copy back, instead of copying the strided slice out itself.
    """

    parameter: Tensor
    index: Index
    grad: Tensor
    values: Tensor | None = None


class SliceRecorder:
    """Records which slice of each parameter the elastic layers served during a training step.

    Use one per optimizer step: ``with recorder:`` around the forward/backward passes of every
    subnet of the step, then :meth:`gradients`. Only parameters that require grad are served as
    leaves, and only while autograd records, so evaluation and frozen teachers are untouched.
    Recorders do not nest (an inner one replaces the outer one until it exits).
    """

    def __init__(self) -> None:
        # id(parameter) -> (parameter, [(index, leaf, leaf is a copy), ...]) in the order first
        # served, so two processes running the same subnets list gradients in the same order
        # (DDP reduces them as one flat buffer).
        self._served: dict[int, tuple[Tensor, list[tuple[Index, Tensor, bool]]]] = {}
        self._token: contextvars.Token[SliceRecorder | None] | None = None

    def __enter__(self) -> SliceRecorder:
        self._token = _RECORDER.set(self)
        return self

    def __exit__(self, *_: object) -> None:
        if self._token is not None:
            _RECORDER.reset(self._token)
            self._token = None

    def serve(self, parameter: Tensor, index: Index) -> Tensor:
        """A leaf tensor equal to ``parameter[index]`` whose gradient the recorder collects."""
        index = _normalise(index, parameter.shape)
        kept = _DENSE_COPIES.pop(id(parameter), None)
        if (
            kept is not None
            and kept[0]() is parameter
            and kept[1] == index
            and kept[2] == parameter._version
        ):
            leaf, copied = kept[3].detach(), True  # the optimizer's copy of this very slice
        else:
            leaf, copied = parameter.detach()[index], False
            if not leaf.is_contiguous():
                # A dense copy: convolutions would re-pack a strided weight in forward and again
                # in backward, and the optimizer can update this copy with its fused kernel and
                # write it back (see SliceGradient.values) instead of copying the slice again.
                leaf, copied = leaf.contiguous(), True
        leaf.requires_grad_(True)  # a new leaf: autograd gives it a slice-sized gradient
        entry = self._served.setdefault(id(parameter), (parameter, []))
        entry[1].append((index, leaf, copied))
        return leaf

    @property
    def parameters(self) -> list[Tensor]:
        """Parameters served so far, in the order first served."""
        return [parameter for parameter, _ in self._served.values()]

    def gradients(self) -> list[SliceGradient]:
        """Per served parameter, the gradients of its slices summed over their bounding box.

        Slices that received no gradient (their output did not reach the loss) are skipped;
        a parameter none of whose slices did is left out.
        """
        result = []
        for parameter, leaves in self._served.values():
            graded = [served for served in leaves if served[1].grad is not None]
            if not graded:
                continue
            box = graded[0][0]
            if len(graded) > 1:
                box = tuple(
                    slice(min(s[0][d].start for s in graded), max(s[0][d].stop for s in graded))
                    for d in range(len(box))
                )
            first_index, first_leaf, first_copied = graded[0]
            first_grad = first_leaf.grad
            assert first_grad is not None
            values = None
            if first_index == box:  # one subnet, or the largest first in a sandwich step
                total = first_grad
                if first_copied:
                    values = first_leaf.detach()
            else:
                total = torch.zeros(_shape(box), dtype=first_grad.dtype, device=first_grad.device)
                total[_relative(first_index, box)] += first_grad
            for index, leaf, _ in graded[1:]:
                assert leaf.grad is not None  # (graded holds only leaves with a gradient)
                total[_relative(index, box)] += leaf.grad
            result.append(SliceGradient(parameter, box, total, values))
        return result


_RECORDER: contextvars.ContextVar[SliceRecorder | None] = contextvars.ContextVar(
    "nasvit_slice_recorder", default=None
)


# id(parameter) -> (weak reference, index, parameter version, contiguous copy of the slice).
# Sliced training copies each strided weight slice once per step for the convolution; the
# optimizer updates that copy and writes it back, and keeps it here so the next step's forward
# reuses it instead of copying the slice again. The parameter's version counter (bumped by
# every in-place change: the write-back, load_state_dict, ...) must equal the one stored, so a
# copy that no longer matches the parameter is never served; an entry is removed when served
# (the optimizer re-adds it after writing back) and when its parameter is garbage collected.
_DENSE_COPIES: dict[int, tuple[weakref.ref[Tensor], Index, int, Tensor]] = {}


def keep_dense_copy(parameter: Tensor, index: Index, values: Tensor) -> None:
    """Offer ``values`` (a contiguous tensor equal to ``parameter[index]`` right now) to the
    next recorded forward that slices ``parameter`` at ``index``."""
    key = id(parameter)
    reference = weakref.ref(parameter, lambda _: _DENSE_COPIES.pop(key, None))
    _DENSE_COPIES[key] = (reference, _normalise(index, parameter.shape), parameter._version, values)


def serve_slice(parameter: Tensor, index: Index) -> Tensor:
    """``parameter[index]``, or the active :class:`SliceRecorder`'s leaf for it while training.

    Elastic layers call this for every parameter they slice; new elastic layers should too, so
    that sliced training sees their gradients.
    """
    recorder = _RECORDER.get()
    if recorder is not None and parameter.requires_grad and torch.is_grad_enabled():
        return recorder.serve(parameter, index)
    return parameter[index]


def recording() -> bool:
    """Whether an elastic layer's slices are being recorded right now."""
    return _RECORDER.get() is not None and torch.is_grad_enabled()


def _normalise(index: Index, shape: torch.Size) -> Index:
    """Explicit integer bounds for every dimension (trailing dimensions are taken whole)."""
    bounds = []
    for dim, size in enumerate(shape):
        part = index[dim] if dim < len(index) else slice(None)
        start, stop, step = part.indices(size)
        if step != 1:
            raise ValueError("sliced training supports contiguous slices only")
        bounds.append(slice(start, stop))
    return tuple(bounds)


def _shape(box: Index) -> tuple[int, ...]:
    return tuple(part.stop - part.start for part in box)


def _relative(index: Index, box: Index) -> Index:
    return tuple(
        slice(part.start - outer.start, part.stop - outer.start)
        for part, outer in zip(index, box, strict=True)
    )


@dataclass(frozen=True)
class _MemoisedSlice:
    source: Tensor  # a detached alias of the weight sliced (it shares storage and version)
    index: Index
    version: int
    value: Tensor  # contiguous copy of source[index]

    def serves(self, weight: Tensor, index: Index) -> bool:
        # Conversions (``.to``, ``.half``, ...) and ``parameter.data = ...`` swap the storage
        # without bumping the version counter. ``source`` keeps the old storage alive, so a new
        # one cannot reuse its address: equal address, dtype and device mean the same data.
        return (
            self.index == index
            and self.version == weight._version
            and self.source.data_ptr() == weight.data_ptr()
            and self.source.dtype == weight.dtype
            and self.source.device == weight.device
        )


class SliceMemo(nn.Module):
    """Base of elastic layers that slice a weight: remembers the last contiguous slice used
    without autograd.

    Evaluating one subnet runs many batches at the same sizes; a fresh non-contiguous slice per
    call makes oneDNN re-pack the weight every time (measured ~1.6x slower 1x1 convolutions).
    The memo is keyed by the index, the weight's version counter (so an optimizer step or
    ``load_state_dict`` invalidates it) and the weight's storage, dtype and device (so a
    conversion does); it is one object assigned atomically, and it is never used while
    autograd records (training slices stay views so gradients reach the supernet).
    """

    _memo: _MemoisedSlice | None = None

    def _slice(self, weight: Tensor, index: Index) -> Tensor:
        """``weight[index]`` for the layer's op: the recorder's leaf while recording, the whole
        weight when the index covers it, else a view under autograd or the memoised copy."""
        if recording():
            return serve_slice(weight, index)
        view = weight[index]
        if view.shape == weight.shape:
            return weight
        if torch.is_grad_enabled() and weight.requires_grad:
            return view
        memo = self._memo
        if memo is None or not memo.serves(weight, index):
            memo = _MemoisedSlice(weight.detach(), index, weight._version, view.contiguous())
            self._memo = memo
        return memo.value

    def _apply(self, fn: Callable[[Tensor], Tensor], recurse: bool = True) -> SliceMemo:
        # Every conversion (.to, .cuda, .half, ...) passes here: drop the memo with the old
        # weights rather than keep their storage alive until the next forward.
        self._memo = None
        super()._apply(fn, recurse)  # type: ignore[no-untyped-call]  # unannotated in torch
        return self


class ElasticConv2d(SliceMemo, nn.Conv2d):
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
        weight = self._slice(self.weight, (slice(0, out_channels), slice(0, x.shape[1])))
        bias = None if self.bias is None else serve_slice(self.bias, (slice(0, out_channels),))
        return F.conv2d(x, weight, bias, self.stride, self.padding)

    def extract(self, in_channels: int, out_channels: int) -> nn.Conv2d:
        conv = _uninitialised(
            nn.Conv2d,
            self.weight,
            in_channels,
            out_channels,
            self.kernel_size,
            stride=self.stride,
            padding=self.padding,
            bias=self.bias is not None,
        )
        _copy(conv.weight, self.weight[:out_channels, :in_channels])
        if self.bias is not None and conv.bias is not None:  # (conv has a bias iff self has)
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

    def _index(self, channels: int, kernel: int) -> Index:
        start = (self.kernel_size[0] - kernel) // 2
        crop = slice(start, start + kernel)
        return (slice(0, channels), slice(None), crop, crop)

    def _weight(self, channels: int, kernel: int) -> Tensor:
        return serve_slice(self.weight, self._index(channels, kernel))

    def forward(self, x: Tensor, kernel: int) -> Tensor:  # type: ignore[override]
        channels = x.shape[1]
        bias = None if self.bias is None else serve_slice(self.bias, (slice(0, channels),))
        return F.conv2d(
            x, self._weight(channels, kernel), bias, self.stride, kernel // 2, groups=channels
        )

    def extract(self, channels: int, kernel: int) -> nn.Conv2d:
        conv = _uninitialised(
            nn.Conv2d,
            self.weight,
            channels,
            channels,
            kernel,
            stride=self.stride,
            padding=kernel // 2,
            groups=channels,
            bias=self.bias is not None,
        )
        _copy(conv.weight, self.weight[self._index(channels, kernel)])
        if self.bias is not None and conv.bias is not None:  # (conv has a bias iff self has)
            _copy(conv.bias, self.bias[:channels])
        return conv


class ElasticLinear(SliceMemo, nn.Linear):
    """A linear layer with elastic input (read from ``x``) and output features."""

    def forward(self, x: Tensor, out_features: int) -> Tensor:  # type: ignore[override]
        bias = None if self.bias is None else serve_slice(self.bias, (slice(0, out_features),))
        weight = self._slice(self.weight, (slice(0, out_features), slice(0, x.shape[-1])))
        return F.linear(x, weight, bias)

    def extract(self, in_features: int, out_features: int) -> nn.Linear:
        linear = _uninitialised(
            nn.Linear, self.weight, in_features, out_features, bias=self.bias is not None
        )
        _copy(linear.weight, self.weight[:out_features, :in_features])
        if self.bias is not None:
            _copy(linear.bias, self.bias[:out_features])
        return linear


class ElasticBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm over the first ``x.shape[1]`` channels; running statistics are sliced views,
    so training a subnet updates exactly its own channels' statistics."""

    def forward(self, x: Tensor) -> Tensor:
        channels = x.shape[1]
        if channels == self.num_features and not recording():
            return super().forward(x)
        part = (slice(0, channels),)
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
            None if self.weight is None else serve_slice(self.weight, part),
            None if self.bias is None else serve_slice(self.bias, part),
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
            # A BatchNorm that tracks statistics has all three buffers (and so does ``bn``).
            assert self.running_var is not None and self.num_batches_tracked is not None
            assert bn.running_mean is not None and bn.running_var is not None
            assert bn.num_batches_tracked is not None
            _copy(bn.running_mean, self.running_mean[:channels])
            _copy(bn.running_var, self.running_var[:channels])
            _copy(bn.num_batches_tracked, self.num_batches_tracked)
        return bn


class ElasticLayerNorm(nn.LayerNorm):
    """LayerNorm over the first ``x.shape[-1]`` features."""

    def forward(self, x: Tensor) -> Tensor:
        part = (slice(0, x.shape[-1]),)
        features = x.shape[-1]
        weight = None if self.weight is None else serve_slice(self.weight, part)
        bias = None if self.bias is None else serve_slice(self.bias, part)
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
        scale = serve_slice(self.scale, (slice(0, x.shape[self.channel_dim]),))
        return x * _scale_shape(scale, self.channel_dim)

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

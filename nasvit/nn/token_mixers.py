"""Token mixers other than softmax attention, each elastic (weights sliced first-k) with a static
counterpart for extraction and profiling.

Every elastic mixer here (and :class:`~nasvit.nn.attention.ElasticAttention`, used for softmax
and relative-position attention) has the same interface, so an encoder layer can hold any of
them: ``forward(x, heads, grid)`` on tokens ``(B, N, dim)`` and ``extract(dim, heads, grid)``;
mixers that have no heads or need no token grid ignore those arguments.

- :class:`LinearAttention`: cosFormer-style linear attention (ReLU feature map, cos re-weighting
  of the scores by the distance between token positions), O(N) in the number of tokens.
- :class:`SingleHeadAttention`: SHViT-style single-head attention on a slice of the channels
  (about 1/4.67 of them, query/key width 16); the other channels pass through to the projection.
- :class:`PoolMixer`: PoolFormer / EfficientFormer MB4D mixer, ``avgpool3x3(x) - x`` on the
  token grid; no parameters.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from nasvit.nn.elastic import ElasticLinear

#: Channels : attended channels of the single-head mixer (SHViT's partial ratio).
SHVIT_PARTIAL_RATIO = 4.67
#: Query/key width of the single-head mixer (SHViT).
SHVIT_QK_DIM = 16
_LINEAR_ATTENTION_EPS = 1e-6


# --------------------------------------------------------------------------- linear attention
def _cos_linear_attention(qkv: Tensor, heads: int, head_dim: int) -> Tensor:
    """cosFormer attention of per-head interleaved ``[q, k, v]`` projections (B, N, 3*h*d).

    The score of query ``i`` and key ``j`` is ``relu(q_i) . relu(k_j) * cos(pi/2 * (i-j)/N)``.
    The cosine splits into ``cos_i cos_j + sin_i sin_j``, so both sums over keys are computed
    once (linear in N) instead of forming the N x N matrix. Using N as the period keeps every
    weight non-negative (|i - j| < N).
    """
    batch, tokens, _ = qkv.shape
    q, k, v = qkv.view(batch, tokens, heads, 3 * head_dim).transpose(1, 2).chunk(3, dim=-1)
    q, k = F.relu(q), F.relu(k)
    angle = torch.arange(tokens, device=qkv.device, dtype=qkv.dtype) * (math.pi / (2 * tokens))
    cos, sin = angle.cos()[:, None], angle.sin()[:, None]  # (N, 1)
    q_cos, q_sin, k_cos, k_sin = q * cos, q * sin, k * cos, k * sin
    numerator = q_cos @ (k_cos.transpose(-2, -1) @ v) + q_sin @ (k_sin.transpose(-2, -1) @ v)
    denominator = q_cos @ k_cos.sum(dim=-2, keepdim=True).transpose(-2, -1) + q_sin @ k_sin.sum(
        dim=-2, keepdim=True
    ).transpose(-2, -1)
    out = numerator / denominator.clamp_min(_LINEAR_ATTENTION_EPS)  # (B, h, N, d)
    return out.transpose(1, 2).reshape(batch, tokens, heads * head_dim)


class LinearAttention(nn.Module):
    """Static cosFormer-style linear attention on tokens (B, N, dim)."""

    def __init__(self, dim: int, heads: int, head_dim: int):
        super().__init__()
        self.heads, self.head_dim = heads, head_dim
        self.qkv = nn.Linear(dim, heads * 3 * head_dim)
        self.proj = nn.Linear(heads * head_dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        out: Tensor = self.proj(_cos_linear_attention(self.qkv(x), self.heads, self.head_dim))
        return out


class ElasticLinearAttention(nn.Module):
    """Linear attention with elastic width (from ``x``) and heads (first-k, qkv per head)."""

    def __init__(self, max_dim: int, max_heads: int, head_dim: int):
        super().__init__()
        self.max_heads, self.head_dim = max_heads, head_dim
        self.qkv = ElasticLinear(max_dim, max_heads * 3 * head_dim)
        self.proj = ElasticLinear(max_heads * head_dim, max_dim)

    def forward(self, x: Tensor, heads: int, grid: int | None = None) -> Tensor:
        qkv = self.qkv(x, heads * 3 * self.head_dim)
        out: Tensor = self.proj(_cos_linear_attention(qkv, heads, self.head_dim), x.shape[-1])
        return out

    def extract(self, dim: int, heads: int, grid: int | None = None) -> LinearAttention:
        attention = LinearAttention(dim, heads, self.head_dim)
        attention.qkv = self.qkv.extract(dim, heads * 3 * self.head_dim)
        attention.proj = self.proj.extract(heads * self.head_dim, dim)
        return attention


# --------------------------------------------------------------------------- single-head
def shvit_partial_dim(dim: int) -> int:
    """Channels the single-head mixer attends over at width ``dim``."""
    return max(1, round(dim / SHVIT_PARTIAL_RATIO))


def _single_head(x: Tensor, qk: Tensor, v: Tensor, qk_dim: int) -> Tensor:
    q, k = torch.split(qk, qk_dim, dim=-1)
    scores = (q @ k.transpose(-2, -1)) * qk_dim**-0.5
    out: Tensor = scores.softmax(dim=-1) @ v
    return out


class SingleHeadAttention(nn.Module):
    """Static SHViT-style mixer: one head over the first ``partial_dim`` channels; the result
    and the untouched channels go through ReLU and a full-width projection."""

    def __init__(self, dim: int, partial_dim: int, qk_dim: int = SHVIT_QK_DIM):
        super().__init__()
        self.partial_dim, self.qk_dim = partial_dim, qk_dim
        self.qk = nn.Linear(partial_dim, 2 * qk_dim)
        self.v = nn.Linear(partial_dim, partial_dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        attended, passed = x[..., : self.partial_dim], x[..., self.partial_dim :]
        mixed = _single_head(attended, self.qk(attended), self.v(attended), self.qk_dim)
        out: Tensor = self.proj(F.relu(torch.cat([mixed, passed], dim=-1)))
        return out


class ElasticSingleHeadAttention(nn.Module):
    """SHViT-style mixer whose width follows ``x``; the attended slice is
    :func:`shvit_partial_dim` of the active width, its weights the first rows/columns."""

    def __init__(self, max_dim: int, qk_dim: int = SHVIT_QK_DIM):
        super().__init__()
        self.qk_dim = qk_dim
        max_partial = shvit_partial_dim(max_dim)
        self.qk = ElasticLinear(max_partial, 2 * qk_dim)
        self.v = ElasticLinear(max_partial, max_partial)
        self.proj = ElasticLinear(max_dim, max_dim)

    def forward(self, x: Tensor, heads: int = 1, grid: int | None = None) -> Tensor:
        dim = x.shape[-1]
        partial = shvit_partial_dim(dim)
        attended, passed = x[..., :partial], x[..., partial:]
        qk = self.qk(attended, 2 * self.qk_dim)
        mixed = _single_head(attended, qk, self.v(attended, partial), self.qk_dim)
        out: Tensor = self.proj(F.relu(torch.cat([mixed, passed], dim=-1)), dim)
        return out

    def extract(self, dim: int, heads: int = 1, grid: int | None = None) -> SingleHeadAttention:
        partial = shvit_partial_dim(dim)
        mixer = SingleHeadAttention(dim, partial, self.qk_dim)
        mixer.qk = self.qk.extract(partial, 2 * self.qk_dim)
        mixer.v = self.v.extract(partial, partial)
        mixer.proj = self.proj.extract(dim, dim)
        return mixer


# --------------------------------------------------------------------------- pooling
def _pool_tokens(x: Tensor, grid: int) -> Tensor:
    batch, tokens, dim = x.shape
    if grid * grid != tokens:
        raise ValueError(f"pooling needs a square token grid: {tokens} tokens, grid {grid}")
    image = x.transpose(1, 2).reshape(batch, dim, grid, grid)
    pooled = F.avg_pool2d(image, 3, 1, 1, count_include_pad=False) - image
    return pooled.flatten(2).transpose(1, 2)


class PoolMixer(nn.Module):
    """Static ``avgpool3x3(x) - x`` over a ``grid x grid`` token layout (no parameters)."""

    def __init__(self, grid: int):
        super().__init__()
        self.grid = grid

    def forward(self, x: Tensor) -> Tensor:
        return _pool_tokens(x, self.grid)


class ElasticPoolMixer(nn.Module):
    """Pooling mixer with the elastic-mixer interface (the grid comes from the front end)."""

    def forward(self, x: Tensor, heads: int = 0, grid: int | None = None) -> Tensor:
        if grid is None:
            raise ValueError("the pooling mixer needs a 2-D token grid (an image front end)")
        return _pool_tokens(x, grid)

    def extract(self, dim: int, heads: int = 0, grid: int | None = None) -> PoolMixer:
        if grid is None:
            raise ValueError("the pooling mixer needs a 2-D token grid (an image front end)")
        return PoolMixer(grid)


__all__ = [
    "SHVIT_PARTIAL_RATIO",
    "SHVIT_QK_DIM",
    "ElasticLinearAttention",
    "ElasticPoolMixer",
    "ElasticSingleHeadAttention",
    "LinearAttention",
    "PoolMixer",
    "SingleHeadAttention",
    "shvit_partial_dim",
]

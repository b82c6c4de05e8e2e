"""Multi-head self-attention with an elastic embedding width and number of heads.

The qkv projection is laid out head by head (``[q_h, k_h, v_h]`` for each head ``h``), so the
first ``k`` heads are the first ``k * (2 * key_dim + value_dim)`` output rows: elastic heads are a
plain slice. An optional learned bias indexed by the absolute 2-D offset between tokens
(EfficientFormer, LeViT) is stored for the largest token grid of the space and indexed for the
active grid, so it works at every resolution.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from nasvit.nn.elastic import ElasticLinear, _copy


def relative_offset_index(grid: int, max_grid: int) -> Tensor:
    """(N, N) index into a ``max_grid * max_grid`` table of |dy|, |dx| offsets for a square grid."""
    if grid > max_grid:
        raise ValueError(f"token grid {grid} exceeds the bias table's {max_grid}")
    coords = torch.stack(
        torch.meshgrid(torch.arange(grid), torch.arange(grid), indexing="ij")
    ).flatten(1)  # (2, N)
    offsets = (coords[:, :, None] - coords[:, None, :]).abs()  # (2, N, N)
    return offsets[0] * max_grid + offsets[1]


def _attend(
    qkv: Tensor,
    batch: int,
    tokens: int,
    heads: int,
    key_dim: int,
    value_dim: int,
    bias: Tensor | None,
) -> Tensor:
    per_head = qkv.view(batch, tokens, heads, 2 * key_dim + value_dim).transpose(1, 2)
    q, k, v = torch.split(per_head, [key_dim, key_dim, value_dim], dim=-1)
    scores = (q @ k.transpose(-2, -1)) * key_dim**-0.5
    if bias is not None:
        scores = scores + bias
    out: Tensor = scores.softmax(dim=-1) @ v  # (B, heads, N, value_dim)
    return out.transpose(1, 2).reshape(batch, tokens, heads * value_dim)


class Attention(nn.Module):
    """Static multi-head self-attention on tokens (B, N, dim)."""

    bias_index: Tensor  # buffer, registered with a position bias only

    def __init__(
        self,
        dim: int,
        num_heads: int,
        key_dim: int,
        value_dim: int,
        bias_grid: int | None = None,
        grid: int | None = None,
    ):
        super().__init__()
        self.num_heads, self.key_dim, self.value_dim = num_heads, key_dim, value_dim
        self.qkv = nn.Linear(dim, num_heads * (2 * key_dim + value_dim))
        self.proj = nn.Linear(num_heads * value_dim, dim)
        self.attention_biases: nn.Parameter | None = None
        if bias_grid is not None:
            if grid is None:
                raise ValueError("a position bias needs the token grid")
            self.attention_biases = nn.Parameter(torch.zeros(num_heads, bias_grid * bias_grid))
            self.register_buffer(
                "bias_index", relative_offset_index(grid, bias_grid), persistent=False
            )

    def forward(self, x: Tensor) -> Tensor:
        batch, tokens, _ = x.shape
        bias = None
        if self.attention_biases is not None:
            bias = self.attention_biases[:, self.bias_index]
        out = _attend(
            self.qkv(x), batch, tokens, self.num_heads, self.key_dim, self.value_dim, bias
        )
        projected: Tensor = self.proj(out)
        return projected


class ElasticAttention(nn.Module):
    """Self-attention whose width (from ``x``) and number of heads are chosen per call.

    Args:
        max_dim: largest embedding width.
        max_heads: largest number of heads.
        key_dim: query/key width per head (fixed).
        value_dim: value width per head (fixed).
        bias_grid: side of the largest square token grid, to enable the learned offset bias.
    """

    def __init__(
        self,
        max_dim: int,
        max_heads: int,
        key_dim: int,
        value_dim: int,
        bias_grid: int | None = None,
    ):
        super().__init__()
        self.max_heads, self.key_dim, self.value_dim = max_heads, key_dim, value_dim
        self.per_head = 2 * key_dim + value_dim
        self.qkv = ElasticLinear(max_dim, max_heads * self.per_head)
        self.proj = ElasticLinear(max_heads * value_dim, max_dim)
        self.bias_grid = bias_grid
        self.attention_biases: nn.Parameter | None = None
        if bias_grid is not None:
            self.attention_biases = nn.Parameter(torch.zeros(max_heads, bias_grid * bias_grid))
        # Pure memo of a function of (grid): not architecture state.
        self._index_cache: dict[int, Tensor] = {}

    def _bias(self, heads: int, grid: int | None) -> Tensor | None:
        if self.attention_biases is None:
            return None
        if grid is None or self.bias_grid is None:
            raise ValueError("this attention has a position bias: pass the token grid")
        index = self._index_cache.get(grid)
        if index is None:
            index = self._index_cache[grid] = relative_offset_index(grid, self.bias_grid)
        return self.attention_biases[:heads, index.to(self.attention_biases.device)]

    def forward(self, x: Tensor, num_heads: int, grid: int | None = None) -> Tensor:
        batch, tokens, dim = x.shape
        qkv = self.qkv(x, num_heads * self.per_head)
        out = _attend(
            qkv, batch, tokens, num_heads, self.key_dim, self.value_dim, self._bias(num_heads, grid)
        )
        projected: Tensor = self.proj(out, dim)
        return projected

    def extract(self, dim: int, num_heads: int, grid: int | None = None) -> Attention:
        attention = Attention(
            dim,
            num_heads,
            self.key_dim,
            self.value_dim,
            bias_grid=self.bias_grid,
            grid=grid,
        )
        attention.qkv = self.qkv.extract(dim, num_heads * self.per_head)
        attention.proj = self.proj.extract(num_heads * self.value_dim, dim)
        if self.attention_biases is not None and attention.attention_biases is not None:
            _copy(attention.attention_biases, self.attention_biases[:num_heads])
        return attention

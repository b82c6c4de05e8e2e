"""Elastic Transformer pieces: the mixers' math, the swappable front end, bad settings."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import pytest
import torch

from nasvit.nn.token_mixers import (
    ElasticLinearAttention,
    ElasticPoolMixer,
    ElasticSingleHeadAttention,
    PoolMixer,
    shvit_partial_dim,
)
from nasvit.nn.transformer import (
    LayerSetting,
    PatchEmbedding,
    SequenceEmbedding,
    SubnetSetting,
    TransformerConfig,
    TransformerSupernet,
    plan_transformer,
)
from nasvit.onnx_export import export_onnx, run_onnx


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


def test_linear_attention_equals_the_quadratic_cosformer_formula() -> None:
    attention = ElasticLinearAttention(max_dim=32, max_heads=3, head_dim=8)
    x = torch.randn(2, 10, 24)
    heads = 2
    got = attention(x, heads)
    qkv = attention.qkv(x, heads * 24).view(2, 10, heads, 24).transpose(1, 2)
    q, k, v = torch.relu(qkv[..., :8]), torch.relu(qkv[..., 8:16]), qkv[..., 16:]
    position = torch.arange(10.0)
    reweight = torch.cos(math.pi / 2 * (position[:, None] - position[None, :]) / 10)
    scores = (q @ k.transpose(-2, -1)) * reweight
    # A query whose ReLU features are all zero attends to nothing (output 0, not NaN).
    mixed = (scores / scores.sum(-1, keepdim=True).clamp_min(1e-6)) @ v
    expected = attention.proj(mixed.transpose(1, 2).reshape(2, 10, heads * 8), 24)
    assert torch.allclose(got, expected, atol=1e-5)
    assert torch.allclose(attention.extract(24, heads)(x), got, atol=1e-6)


def test_single_head_mixer_attends_over_a_channel_slice_only() -> None:
    mixer = ElasticSingleHeadAttention(max_dim=96)
    dim = 64
    partial = shvit_partial_dim(dim)
    assert partial == 14  # 64 / 4.67
    x = torch.randn(1, 9, dim)
    static = mixer.extract(dim)
    assert torch.allclose(static(x), mixer(x), atol=1e-6)
    # Channels outside the slice reach the output only through the projection, token-wise:
    # changing them for one token leaves every other token's attention input unchanged.
    with torch.no_grad():
        static.proj.weight[:, partial:] = 0
        changed = x.clone()
        changed[:, 3, partial:] += 5.0
        assert torch.allclose(static(changed), static(x), atol=1e-6)


def test_pool_mixer_needs_a_square_grid() -> None:
    with pytest.raises(ValueError, match="square token grid"):
        PoolMixer(3)(torch.randn(1, 10, 4))
    with pytest.raises(ValueError, match="2-D token grid"):
        ElasticPoolMixer()(torch.randn(1, 9, 4))


class _SequenceSupernet(TransformerSupernet):
    """A Transformer over feature sequences: the front end swapped, nothing else changed."""

    def setting(self, arch: Mapping[str, Any]) -> SubnetSetting:
        layers = tuple(
            LayerSetting(i, mixer, 2, arch["dim"] * 2) for i, mixer in enumerate(arch["mixers"])
        )
        return SubnetSetting((arch["frames"],), arch["dim"], layers)


def _sequence_config(norm_first: bool) -> TransformerConfig:
    return TransformerConfig(
        front_end=SequenceEmbedding(max_length=50, norm=not norm_first),
        max_dim=64,
        max_heads=4,
        max_hidden=256,
        num_layers=3,
        mixers=("softmax", "linear", "shsa"),
        norm_first=norm_first,
        head_dim=16,
    )


@pytest.mark.parametrize("norm_first", [True, False])
def test_a_sequence_front_end_replaces_the_patch_embedding(norm_first: bool, tmp_path) -> None:
    config = _sequence_config(norm_first)
    supernet = _SequenceSupernet(config, num_classes=5, in_channels=40).eval()
    arch = {"frames": 30, "dim": 48, "mixers": ["softmax", "identity", "linear"]}
    x = torch.randn(2, 30, 40)  # (batch, frames, filterbank features)
    subnet = supernet.extract(arch).eval()
    with torch.no_grad():
        expected = supernet(x, arch)
        assert torch.allclose(subnet(x), expected, atol=1e-5)
    steps = plan_transformer(config, supernet.setting(arch), num_classes=5, in_channels=40)
    assert [s.kind for s in steps] == ["sequence_embed", "softmax", "ffn", "ffn", "linear"] + [
        "ffn",
        "head",
    ]
    assert steps[1].input_shape == (1, 30, 48)
    path = export_onnx(subnet, (1, 30, 40), tmp_path / "sequence.onnx")
    with torch.no_grad():
        reference = subnet(x[:1]).numpy()
    assert np.abs(run_onnx(path, x[:1].numpy()) - reference).max() <= 1e-4


def test_grid_mixers_are_rejected_without_a_token_grid() -> None:
    with pytest.raises(ValueError, match="token grid"):
        TransformerConfig(SequenceEmbedding(), 64, 4, 256, 2, mixers=("pool",))
    with pytest.raises(ValueError, match="unknown token mixer"):
        TransformerConfig(PatchEmbedding(), 64, 4, 256, 2, mixers=("conv",))


def test_patch_front_end_rejects_sizes_it_cannot_cut() -> None:
    front = PatchEmbedding(patch=16, max_resolution=224)
    assert front.layout((64, 64)) == (16, 4)
    for size in [(60, 60), (240, 240), (64, 32)]:
        with pytest.raises(ValueError):
            front.layout(size)

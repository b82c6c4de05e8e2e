"""Elastic layers slice their max-size weights and extract equivalent static layers."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from nasvit.nn import (
    ElasticAttention,
    ElasticBatchNorm2d,
    ElasticConv2d,
    ElasticDepthwiseConv2d,
    ElasticLayerNorm,
    ElasticLinear,
    recalibrate_batchnorm,
)


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


def test_conv_uses_the_first_channels() -> None:
    conv = ElasticConv2d(8, 16, 3)
    x = torch.randn(2, 5, 9, 9)
    out = conv(x, 6)
    assert out.shape == (2, 6, 9, 9)
    reference = nn.functional.conv2d(x, conv.weight[:6, :5], conv.bias[:6], padding=1)
    assert torch.allclose(out, reference)
    assert torch.allclose(conv.extract(5, 6)(x), out, atol=1e-6)


def test_depthwise_kernel_is_centre_cropped() -> None:
    conv = ElasticDepthwiseConv2d(8, 5, stride=2)
    x = torch.randn(1, 4, 10, 10)
    out = conv(x, kernel=3)
    assert out.shape == (1, 4, 5, 5)
    static = conv.extract(4, 3)
    assert torch.equal(static.weight, conv.weight[:4, :, 1:4, 1:4])
    assert torch.allclose(static(x), out, atol=1e-6)


def test_linear_and_layernorm_extract() -> None:
    linear, norm = ElasticLinear(12, 10), ElasticLayerNorm(12)
    with torch.no_grad():
        norm.weight.normal_()
    x = torch.randn(3, 7)
    assert torch.allclose(linear.extract(7, 4)(x), linear(x, 4), atol=1e-6)
    assert torch.allclose(norm.extract(7)(x), norm(x), atol=1e-6)


def test_batchnorm_slices_statistics_in_eval_and_train() -> None:
    bn = ElasticBatchNorm2d(8)
    with torch.no_grad():
        bn.running_mean.normal_()
        bn.running_var.uniform_(0.5, 2)
    x = torch.randn(4, 5, 3, 3)
    bn.eval()
    assert torch.allclose(bn.extract(5).eval()(x), bn(x), atol=1e-6)
    bn.train()
    before = bn.running_mean.clone()
    bn(x)
    assert not torch.equal(bn.running_mean[:5], before[:5])
    assert torch.equal(bn.running_mean[5:], before[5:])


@pytest.mark.parametrize("heads", [1, 3, 4])
def test_attention_heads_are_a_prefix(heads: int) -> None:
    attention = ElasticAttention(32, 4, key_dim=8, value_dim=16, bias_grid=4)
    with torch.no_grad():
        attention.attention_biases.normal_()
    x = torch.randn(2, 9, 24)
    out = attention(x, heads, grid=3)
    assert out.shape == (2, 9, 24)
    static = attention.extract(24, heads, grid=3)
    assert torch.allclose(static(x), out, atol=1e-5)
    # A head beyond the active ones does not influence the output.
    with torch.no_grad():
        attention.qkv.weight[heads * 32 :].normal_()
    assert torch.allclose(attention(x, heads, grid=3), out, atol=1e-6)


def test_attention_with_bias_needs_a_grid() -> None:
    attention = ElasticAttention(16, 2, 8, 8, bias_grid=2)
    with pytest.raises(ValueError, match="token grid"):
        attention(torch.randn(1, 4, 16), 2)


def test_recalibration_computes_exact_batch_statistics() -> None:
    model = nn.Sequential(nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4))
    batches = [torch.randn(8, 3, 5, 5) + 2 for _ in range(3)]
    seen = recalibrate_batchnorm(model, batches)
    assert seen == 24 and not model.training
    with torch.no_grad():
        features = torch.cat([model[0](b) for b in batches])
    expected_mean = features.mean(dim=(0, 2, 3))
    assert torch.allclose(model[1].running_mean, expected_mean, atol=1e-5)
    assert model[1].momentum == 0.1  # restored
    with pytest.raises(ValueError, match="at least one batch"):
        recalibrate_batchnorm(model, [])


def test_inference_memo_follows_weight_updates_and_training_keeps_gradients() -> None:
    conv = ElasticConv2d(8, 8, 1)
    x = torch.randn(1, 4, 3, 3)
    with torch.no_grad():
        first = conv(x, 4)
        assert torch.equal(conv(x, 4), first)  # memo hit gives the same result
        conv.weight.mul_(2.0)  # an optimizer step changes the weight in place
        assert torch.allclose(conv(x, 4), 2 * first - conv.bias[:4].view(1, 4, 1, 1), atol=1e-6)
    conv(x, 4).sum().backward()
    assert conv.weight.grad is not None
    assert conv.weight.grad[:4, :4].abs().sum() > 0
    assert conv.weight.grad[4:].abs().sum() == 0

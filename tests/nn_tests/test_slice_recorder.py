"""SliceRecorder: elastic layers serve slice-sized leaves; outputs and gradients are unchanged."""

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
    ElasticLayerScale,
    ElasticLinear,
)
from nasvit.nn.elastic import SliceRecorder, keep_dense_copy, serve_slice


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


class _Net(nn.Module):
    """Every elastic layer kind, run at a chosen width."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = ElasticConv2d(3, 16, 3)
        self.bn = ElasticBatchNorm2d(16)
        self.dw = ElasticDepthwiseConv2d(16, 5)
        self.scale = ElasticLayerScale(16, init=0.5)
        self.norm = ElasticLayerNorm(16)
        self.attn = ElasticAttention(16, 4, 4, 4, bias_grid=4)
        self.fc = ElasticLinear(16, 10)

    def forward(self, x: torch.Tensor, width: int, kernel: int, heads: int) -> torch.Tensor:
        x = self.scale(self.dw(self.bn(self.conv(x, width)), kernel))
        tokens = self.norm(x.flatten(2).transpose(1, 2))
        tokens = self.attn(tokens, heads, grid=4)
        return self.fc(tokens.mean(dim=1), 10)


SUBNETS = [(16, 5, 4), (8, 3, 2), (12, 5, 3)]  # (width, kernel, heads): largest first


def test_outputs_and_gradients_equal_plain_autograd() -> None:
    net = _Net()
    x = torch.randn(4, 3, 4, 4)
    expected = []
    for sizes in SUBNETS:
        out = net(x, *sizes)
        expected.append(out.detach())
        out.square().mean().backward()
    dense = {name: p.grad.clone() for name, p in net.named_parameters()}
    net.zero_grad(set_to_none=True)

    with SliceRecorder() as recorder:
        for sizes, reference in zip(SUBNETS, expected, strict=True):
            out = net(x, *sizes)
            assert torch.equal(out.detach(), reference)
            out.square().mean().backward()
    names = {id(p): name for name, p in net.named_parameters()}
    gradients = recorder.gradients()
    served = {names[id(g.parameter)] for g in gradients}
    # The attention position bias is gathered, not sliced: it keeps an ordinary gradient.
    assert served == set(dense) - {"attn.attention_biases"}
    for gradient in gradients:
        name = names[id(gradient.parameter)]
        assert gradient.parameter.grad is None, name  # no full-size gradient was made
        full = dense[name]
        assert torch.allclose(gradient.grad, full[gradient.index], atol=1e-6), name
        outside = full.clone()
        outside[gradient.index] = 0
        assert not outside.any(), name  # the box holds every nonzero gradient entry
    assert net.conv.weight in [g.parameter for g in gradients]
    conv = next(g for g in gradients if g.parameter is net.conv.weight)
    assert conv.index == (slice(0, 16), slice(0, 3), slice(0, 3), slice(0, 3))
    dw = next(g for g in gradients if g.parameter is net.dw.weight)
    assert dw.index[2:] == (slice(0, 5), slice(0, 5))  # kernels 5 and 3, centre-cropped


def test_only_trainable_parameters_under_autograd_are_recorded() -> None:
    linear = ElasticLinear(8, 8)
    x = torch.randn(2, 5)
    with SliceRecorder() as recorder:
        with torch.no_grad():
            linear(x, 4)
        linear.weight.requires_grad_(False)
        linear(x, 4).sum().backward()
    assert recorder.parameters == [linear.bias]
    assert serve_slice(linear.bias, (slice(0, 3),)).shape == (3,)  # no recorder: a view


def test_kept_copy_is_served_only_while_the_parameter_is_unchanged() -> None:
    conv = ElasticConv2d(4, 8, 1)
    index = (slice(0, 4), slice(0, 2))
    copy = conv.weight.detach()[index].contiguous()
    keep_dense_copy(conv.weight, index, copy)
    with SliceRecorder() as recorder:
        served = serve_slice(conv.weight, index)
    assert served.data_ptr() == copy.data_ptr()  # reused, not copied again
    keep_dense_copy(conv.weight, index, copy)
    with torch.no_grad():
        conv.weight.add_(1.0)  # the parameter changed: the copy is stale
    with SliceRecorder() as recorder:
        served = serve_slice(conv.weight, index)
    assert served.data_ptr() != copy.data_ptr()
    assert torch.equal(served.detach(), conv.weight.detach()[index])
    assert len(recorder.parameters) == 1

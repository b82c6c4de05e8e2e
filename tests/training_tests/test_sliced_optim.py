"""SlicedAdamW: AdamW on exactly the slices a step used, equal to dense AdamW where it should be."""

from __future__ import annotations

import copy

import numpy as np
import torch
import torch.nn.functional as F

from nasvit.nn.elastic import SliceGradient, SliceRecorder
from nasvit.search_spaces import SearchSpace
from nasvit.training.sliced_optim import LossScaler, SlicedAdamW, clip_grad_norm, step_gradients


def test_whole_parameters_follow_torch_adamw() -> None:
    torch.manual_seed(0)
    ours = torch.nn.Parameter(torch.randn(6, 5))
    theirs = torch.nn.Parameter(ours.detach().clone())
    sliced = SlicedAdamW([ours], lr=0.1, weight_decay=0.05)
    reference = torch.optim.AdamW([theirs], lr=0.1, weight_decay=0.05)
    for _ in range(4):
        grad = torch.randn(6, 5)
        ours.grad, theirs.grad = grad.clone(), grad.clone()
        sliced.step()
        reference.step()
    assert torch.allclose(ours, theirs, atol=1e-6)


def test_a_slice_moves_like_its_own_adamw_and_nothing_else_moves() -> None:
    torch.manual_seed(0)
    weight = torch.nn.Parameter(torch.randn(6, 5))
    unused = torch.nn.Parameter(torch.randn(3))
    before = weight.detach().clone()
    alone = torch.nn.Parameter(weight.detach()[:4, :3].clone())
    sliced = SlicedAdamW([weight, unused], lr=0.1, weight_decay=0.05)
    reference = torch.optim.AdamW([alone], lr=0.1, weight_decay=0.05)
    unused_before = unused.detach().clone()
    for _ in range(3):
        grad = torch.randn(4, 3)
        alone.grad = grad.clone()
        reference.step()
        sliced.step([SliceGradient(weight, (slice(0, 4), slice(0, 3)), grad.clone())])
    assert torch.allclose(weight.detach()[:4, :3], alone, atol=1e-6)
    outside = torch.ones(6, 5, dtype=torch.bool)
    outside[:4, :3] = False
    assert torch.equal(weight.detach()[outside], before[outside])  # no decay, no drift
    assert torch.equal(unused.detach(), unused_before) and unused not in sliced.state
    # A smaller slice updates inside the stored moments; a larger one grows them.
    sliced.step([SliceGradient(weight, (slice(0, 2), slice(0, 2)), torch.randn(2, 2))])
    assert sliced.state[weight]["box"] == ((0, 4), (0, 3))
    sliced.step([SliceGradient(weight, (slice(0, 5), slice(0, 2)), torch.randn(5, 2))])
    state = sliced.state[weight]
    assert state["box"] == ((0, 5), (0, 3)) and state["exp_avg"].shape == (5, 3)
    assert float(state["step"]) == 5


def test_state_dict_round_trip_continues_identically() -> None:
    torch.manual_seed(0)
    a = torch.nn.Parameter(torch.randn(8, 4))
    first = SlicedAdamW([a], lr=0.05)
    grads = [torch.randn(5, 2) for _ in range(4)]
    index = (slice(0, 5), slice(0, 2))
    for grad in grads[:2]:
        first.step([SliceGradient(a, index, grad.clone())])
    b = torch.nn.Parameter(a.detach().clone())
    second = SlicedAdamW([b], lr=0.05)
    second.load_state_dict(copy.deepcopy(first.state_dict()))
    for grad in grads[2:]:
        first.step([SliceGradient(a, index, grad.clone())])
        second.step([SliceGradient(b, index, grad.clone())])
    assert torch.equal(a, b)


def test_clipping_and_loss_scaling() -> None:
    gradients = [
        SliceGradient(torch.zeros(4), (slice(0, 2),), torch.tensor([3.0, 0.0])),
        SliceGradient(torch.zeros(4), (slice(0, 1),), torch.tensor([4.0])),
    ]
    assert clip_grad_norm(gradients, 1.0) == 5.0
    assert torch.allclose(gradients[0].grad, torch.tensor([0.6, 0.0]), atol=1e-6)
    scaler = LossScaler(enabled=True, init_scale=8.0, growth_interval=2)
    assert float(scaler.scale(torch.tensor(1.0))) == 8.0
    assert scaler.unscale(gradients) and torch.allclose(gradients[1].grad, torch.tensor([0.1]))
    scaler.update(True)
    scaler.update(True)
    assert scaler.scale_value == 16.0
    gradients[0].grad[0] = float("inf")
    assert not scaler.unscale(gradients)
    scaler.update(False)
    assert scaler.scale_value == 8.0 and scaler.state_dict()["good_steps"] == 0


def test_sandwich_steps_equal_dense_adamw_on_the_trained_weights(tiny_space: SearchSpace) -> None:
    """The largest subnet covers every weight each step, so sliced and dense AdamW agree."""
    torch.manual_seed(0)
    sliced_net = tiny_space.build_supernet(10, 1).train()
    dense_net = copy.deepcopy(sliced_net)
    initial = [p.detach().clone() for p in sliced_net.parameters()]
    sliced_params = list(sliced_net.parameters())
    # eps 1e-4: biases feeding a BatchNorm get rounding-noise gradients (~1e-9) that Adam with
    # a tiny eps would blow up to +-lr in either implementation, differently.
    sliced = SlicedAdamW(sliced_params, lr=1e-3, eps=1e-4, weight_decay=0.05)
    dense = torch.optim.AdamW(dense_net.parameters(), lr=1e-3, eps=1e-4, weight_decay=0.05)
    rng = np.random.default_rng(0)
    for _ in range(3):
        archs = [tiny_space.largest(), tiny_space.smallest(), tiny_space.sample(rng)]
        x, y = torch.randn(8, 1, 32, 32), torch.randint(0, 10, (8,))
        dense.zero_grad(set_to_none=True)
        sliced.zero_grad(set_to_none=True)
        with SliceRecorder() as recorder:
            for arch in archs:
                F.cross_entropy(sliced_net(x, arch), y).backward()
        for arch in archs:
            F.cross_entropy(dense_net(x, arch), y).backward()
        sliced.step(step_gradients(recorder, sliced_params))
        dense.step()
    moved = 0
    for (name, a), b, start in zip(
        sliced_net.named_parameters(), dense_net.parameters(), initial, strict=True
    ):
        assert torch.allclose(a, b, atol=1e-5), name
        moved += int((a != start).sum())
    assert moved > 0.8 * sum(p.numel() for p in sliced_params)  # measured 0.86: not vacuous

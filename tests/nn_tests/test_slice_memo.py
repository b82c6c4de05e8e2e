"""The inference slice memo never serves a slice of weights the module no longer holds.

``module.to(...)``, ``.half()`` and ``.double()`` replace a parameter's data without bumping its
version counter, and so does assigning ``parameter.data`` (the evaluator does, for
channels-last); the next forward must still use the converted weights.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from torch import Tensor, nn

from nasvit.nn import ElasticConv2d, ElasticLinear
from nasvit.nn.mobile import ElasticKernelConv2d

# Each case: a fresh layer and a forward at a partial size (so a memoised slice is used).
LayerCase = tuple[Callable[[], nn.Module], Callable[[nn.Module, Tensor], Tensor], tuple[int, ...]]

CASES: dict[str, LayerCase] = {
    "linear": (lambda: ElasticLinear(8, 6), lambda m, x: m(x, 4), (2, 5)),
    "conv": (lambda: ElasticConv2d(8, 6, 3), lambda m, x: m(x, 4), (1, 5, 6, 6)),
    "kernel_conv": (lambda: ElasticKernelConv2d(8, 6, 5), lambda m, x: m(x, 4, 3), (1, 5, 6, 6)),
}


def _doubled(module: nn.Module) -> None:
    module.double()


def _doubled_through_to(module: nn.Module) -> None:
    module.to(torch.float64)


def _rounded_to_half_and_back(module: nn.Module) -> None:
    # Same dtype as before, different values: a key on dtype alone would miss this.
    module.half()
    module.float()


def _data_replaced(module: nn.Module) -> None:
    for parameter in module.parameters():
        parameter.data = parameter.data * 2.0


CONVERSIONS: dict[str, Callable[[nn.Module], None]] = {
    "double": _doubled,
    "to_float64": _doubled_through_to,
    "half_then_float": _rounded_to_half_and_back,
    "data_assigned": _data_replaced,
}


@pytest.mark.parametrize("conversion", CONVERSIONS)
@pytest.mark.parametrize("case", CASES)
def test_a_forward_after_conversion_uses_the_converted_weights(case: str, conversion: str) -> None:
    torch.manual_seed(0)
    build, forward, shape = CASES[case]
    module = build().eval()
    x = torch.randn(shape)
    with torch.no_grad():
        forward(module, x)  # fills the memo with a slice of the original weights
        CONVERSIONS[conversion](module)
        dtype = next(module.parameters()).dtype
        fresh = build().to(dtype).eval()
        fresh.load_state_dict(module.state_dict())
        out = forward(module, x.to(dtype))
        expected = forward(fresh, x.to(dtype))
    assert out.dtype == dtype
    assert torch.equal(out, expected)

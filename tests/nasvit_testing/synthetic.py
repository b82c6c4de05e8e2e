"""A synthetic search problem: accuracy and latency both grow with model capacity, computed from
the architecture alone (no model, no measurement), so controllers can be compared in seconds."""

from __future__ import annotations

import math
from typing import Any

from nasvit.search_spaces import Architecture, get_space

#: The space the synthetic problem is posed on.
SPACE = get_space("efficientformer").restrict(resolution=[32, 64, 96])
#: The latency budget (ms) searches on the synthetic problem are held to.
BUDGET_MS = 2.0


def synthetic_objectives(arch: Architecture) -> tuple[float, float]:
    """Latency ~ MACs-like cost; accuracy saturates with capacity, with diminishing returns,
    and rewards attention blocks a little (so the front is not a single line)."""
    widths, depths, ratios = arch["widths"], arch["depths"], arch["mlp_ratio"]
    side = arch["resolution"] / 4
    cost, layer = 0.0, 0
    for stage in range(4):
        area = (side / 2**stage) ** 2
        for _ in range(depths[stage]):
            cost += area * widths[stage] ** 2 * ratios[layer] * 2
            layer += 1
    latency = 0.05 + cost / 2.5e8
    capacity = math.log1p(cost / 1e6) + 0.05 * arch["vit_num"]
    return 1 - math.exp(-capacity / 2.0), latency


def synthetic_latency(arch: Architecture) -> float:
    """The latency half of :func:`synthetic_objectives`."""
    return synthetic_objectives(arch)[1]


def synthetic_error_model() -> Any:
    """A latency error model fitted on synthetic networks (block sums with a little noise): a
    validated table's model without measuring anything."""
    import numpy as np

    from nasvit.latency_db.error_model import ValidationSample, fit_error_model

    rng = np.random.default_rng(0)
    samples = []
    for i in range(40):
        warm = rng.uniform(0.01, 0.3, int(rng.integers(4, 20)))
        inputs = (list(warm), list(warm * 1.2), [1e5] * len(warm), 2e5)
        truth = float(warm.sum()) * float(np.exp(rng.normal(0, 0.03)))
        readings = tuple(truth * np.exp(rng.normal(0, 0.02, 3)))
        samples.append(ValidationSample(f"n{i}", inputs, readings, judged=i % 2 == 1))
    return fit_error_model(samples, cache_bytes=32 * 2**20, overhead_ms=0.0)

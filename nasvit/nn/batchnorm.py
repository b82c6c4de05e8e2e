"""BatchNorm recalibration for subnets.

A subnet sliced out of a supernet inherits running statistics accumulated over *all* sampled
subnets, which do not match its own activations; once-for-all re-estimates them per subnet on a
few thousand training images before measuring accuracy. Without it subnet accuracy is wrong.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
from torch import Tensor, nn


def recalibrate_batchnorm(
    model: nn.Module,
    batches: Iterable[Tensor],
    forward: Callable[[Tensor], object] | None = None,
) -> int:
    """Re-estimate every BatchNorm's running mean/var as the exact average over ``batches``.

    Args:
        model: module whose BatchNorm layers are recalibrated in place.
        batches: input tensors (already on the model's device).
        forward: how to run one batch; defaults to ``model(batch)`` (pass a lambda to run a
            supernet at a given architecture).

    Returns:
        The number of samples seen. The model is left in eval mode.
    """
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved_momentum = {norm: norm.momentum for norm in norms}
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None  # cumulative average over all recalibration batches
    run = forward or model
    seen = 0
    model.train()
    try:
        with torch.no_grad():
            for batch in batches:
                run(batch)
                seen += int(batch.shape[0])
    finally:
        for norm, momentum in saved_momentum.items():
            norm.momentum = momentum
        model.eval()
    if seen == 0:
        raise ValueError("BatchNorm recalibration needs at least one batch")
    return seen

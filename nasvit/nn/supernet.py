"""The contract every weight-sharing supernet follows."""

from __future__ import annotations

import abc
from collections.abc import Mapping
from typing import Any

from torch import Tensor, nn


class Supernet(nn.Module, abc.ABC):
    """A network covering a whole search space.

    ``forward`` receives the active architecture explicitly and never stores it, so one supernet
    can serve concurrent evaluations of different subnets. ``extract`` returns a static module
    with copied weights whose output equals ``forward(x, arch)``.
    """

    num_classes: int
    in_channels: int

    @abc.abstractmethod
    def forward(self, x: Tensor, arch: Mapping[str, Any]) -> Tensor:
        """Logits of the subnet ``arch`` for input ``x``."""

    @abc.abstractmethod
    def extract(self, arch: Mapping[str, Any]) -> nn.Module:
        """A standalone module with the weights of subnet ``arch`` (same mode: train/eval)."""

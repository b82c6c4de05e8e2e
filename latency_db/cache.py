"""The CPU cache and what it does to latency sums.

Why: an isolated block is timed with its weights hot in the cache, but inside a network whose
weights exceed the last-level cache each block's weights come from DRAM. On the 2-vCPU EPYC
(32 MiB L3) the subnets of the efficientformer space hold 12-250 MB of fp32 weights, and a sum of
warm block medians underestimated them by up to 3x. So every block gets two timings:

- *warm*: the usual median (weights, code and the runtime's structures hot);
- *cold* (streamed): ``k`` copies of the block, each with its own weights, run in one session
  after a cache flush (:mod:`nasvit.latency_db.replicate`), so every copy reads its weights from
  DRAM while its input is hot: the situation of a block inside a large network. The run's time
  over ``k`` is the block's cold latency. (An earlier protocol timed one block once after a
  flush and a run of a twin session; single runs of small blocks were too noisy and the flush
  also cost TLB and code misses a network does not pay: large networks came out 0.85-1.15x of
  the cold sum, against 0.92-1.04x with streamed timings.)

A network's prediction mixes the two per block with a *residency* model (:class:`CacheModel`):
how much of a block's weights are still cached when the network comes back to it depends on the
bytes the rest of the network streams through the cache in between, relative to the cache size.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class CacheModel:
    """How much of the warm-to-cold gap a block pays inside a network, and what a network's
    blocks save in per-call overhead by running in one call.

    A network repeats; between two visits of block ``i`` the rest of the network streams
    ``pressure_i = (W_total - W_i) + A`` bytes through the cache (``W``: weight bytes,
    ``A``: ``activation_weight`` x the network's activation bytes). With a cache of ``C`` bytes
    the share of block ``i``'s weights that has been evicted is modelled as::

        cold_share_i = clip((pressure_i / C - onset) / width, 0, 1) ** power

    and the block's in-network latency is ``warm_i + cold_share_i * g * (cold_i - warm_i)``
    with ``g = 1 + excess * max(0, W_total / C - 1)``; a network of ``N`` blocks is their sum
    minus ``(N - 1)`` measured per-call overheads, since each block was timed in a call of its
    own (:func:`~nasvit.latency_db.error_model.residency_model`). ``g``
    is there because a network that streams several caches' worth of weights can run slower
    than the streamed copies its cold timings came from: in one run of 100 lighthubert r32/r64
    subnets, the ViT-B-sized ones (150-330 MB) ran 5-16% over their cold sums, more the larger
    they were (a guess at why: page-table walks that miss once the network's page tables no
    longer stay cached). Fitted on half of that run, ``excess`` took the other half from 48%
    to 88% within ±10%, and efficientformer r32/r64 networks over 4 caches from a -5% bias to
    0. Later runs fitted it near 0 (the transition's shape took the slowdown up): it costs
    nothing where it is not needed.

    ``onset`` (where evictions start, in cache sizes), ``width`` (how many cache sizes later
    everything is evicted) and ``excess`` are fitted per device on whole-network measurements
    (:func:`~nasvit.latency_db.error_model.fit_residency`); ``power`` and
    ``activation_weight`` stay at 1 there, and the per-call overhead is the device's
    *measured* one, never fitted: a fitted one once sat on its bound at 3x the measured value
    and put the smallest subnet at a fifth of its latency. An LRU cache of its own would
    have ``onset`` near 1; a VM's share of a last-level cache that other tenants use too evicts
    much earlier, and pseudo-LRU, prefetchers and a victim L3 spread the transition.

    Attributes:
        cache_bytes: the device's last-level cache size ``C``.
        onset, width, power: shape of the transition (see above).
        activation_weight: how strongly activations count towards the pressure.
        excess: how much the cold gap grows per cache size of weights beyond the first.
        overhead_ms: the measured per-call overhead the model was fitted with (a record:
            predictions take the error model's, the same value); None in models stored
            before it was kept.
    """

    cache_bytes: int
    onset: float = 1.0
    width: float = 2.0
    power: float = 1.0
    activation_weight: float = 0.0
    overhead_ms: float | None = None
    excess: float = 0.0

    def cold_shares(
        self, weight_bytes: Sequence[float] | np.ndarray, activation_bytes: Any = 0.0
    ) -> np.ndarray:
        """Share of each block's cold gap it pays in one network: the evicted share (0..1) of
        its weights times the network's growth factor ``g`` (see the class).

        ``weight_bytes`` may also be a (networks x blocks) matrix, with ``activation_bytes``
        one value per network (shape (networks, 1)); zero-weight padding changes nothing.
        """
        w = np.asarray(weight_bytes, dtype=float)
        if self.cache_bytes <= 0:
            return np.zeros_like(w)
        total = w.sum(axis=-1, keepdims=True)
        others = total - w  # the rest of the network's weights
        pressure = (others + self.activation_weight * activation_bytes) / self.cache_bytes
        share = np.clip((pressure - self.onset) / max(self.width, 1e-6), 0.0, 1.0)
        growth = 1.0 + self.excess * np.maximum(total / self.cache_bytes - 1.0, 0.0)
        return np.asarray(share**self.power * growth)

    def predict(
        self,
        warm_ms: Sequence[float],
        cold_ms: Sequence[float],
        weight_bytes: Sequence[float],
        activation_bytes: float = 0.0,
    ) -> float:
        """Sum over blocks of warm plus the evicted share of the cold gap (before the per-call
        overheads and the physical bounds, which
        :func:`~nasvit.latency_db.error_model.residency_model` applies)."""
        warm = np.asarray(warm_ms, dtype=float)
        gap = np.maximum(np.asarray(cold_ms, dtype=float) - warm, 0.0)
        return float((warm + self.cold_shares(weight_bytes, activation_bytes) * gap).sum())

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CacheModel:
        return cls(**data)

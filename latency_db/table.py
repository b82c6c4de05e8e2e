"""Latency tables: predict a network's latency from its blocks, with a known error.

Prediction for blocks ``b_1..b_N`` on one device::

    raw = sum(median(b_i)) - (N - 1) * overhead        # overhead: per-call cost of an empty model
    latency = slope * raw + intercept                   # only when a validation fitted a
                                                        # calibration that beat the raw sum

or, when the latest validation fitted a cache residency model that beat both on its held-out
networks (see :mod:`nasvit.latency_db.cache`)::

    latency = sum(warm_i + cold_share_i * (cold_i - warm_i)) - (N - 1) * fitted_overhead

The expected error attached to each prediction comes from the latest validation run of the
device (held-out figures of the path actually used).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from nasvit.errors import NasvitError
from nasvit.latency_db.cache import CacheModel
from nasvit.latency_db.records import DeviceRecord, EntryRecord, ErrorStats, ValidationRecord
from nasvit.latency_db.store import LatencyStore
from nasvit.nn.blocks import BlockSpec

_SHOWN_MISSING = 3


class MissingBlocksError(NasvitError):
    """The table lacks entries for some blocks of the network asked about."""

    def __init__(self, device: str, missing: Sequence[str]):
        shown = "; ".join(missing[:_SHOWN_MISSING])
        more = f" and {len(missing) - _SHOWN_MISSING} more" if len(missing) > _SHOWN_MISSING else ""
        super().__init__(
            f"latency table of device '{device}' lacks {len(missing)} block(s): {shown}{more}; "
            f"profile the space on device '{device}' to measure them"
        )
        self.missing = list(missing)


@dataclass(frozen=True)
class Calibration:
    """``measured ≈ slope * predicted + intercept``, fitted on whole-network measurements."""

    slope: float
    intercept: float

    def apply(self, raw_ms: float) -> float:
        return self.slope * raw_ms + self.intercept

    @classmethod
    def fit(cls, predicted_ms: Sequence[float], measured_ms: Sequence[float]) -> Calibration:
        """The line with the least squared *relative* error, slope and intercept >= 0; needs
        at least two distinct predictions.

        Relative, because the targets are stated in relative error and networks span 10x in
        latency (a plain least-squares line serves the largest ones). Non-negative, because a
        line fitted on mid-sized networks extrapolated below zero for the smallest ones (slope
        3.7, intercept -0.64 ms on a loaded machine), and a search then prefers impossible
        negative latencies.
        """
        from scipy.optimize import lsq_linear

        x = np.asarray(predicted_ms, dtype=float)
        y = np.asarray(measured_ms, dtype=float)
        if x.size < 2 or np.ptp(x) == 0:
            raise ValueError("a calibration needs at least two distinct predictions")
        if np.any(y <= 0):
            raise ValueError("measured latencies must be positive")
        # Minimise sum(((slope * x + intercept) - y) / y) ** 2): rows (x / y, 1 / y) -> 1.
        design = np.column_stack([x / y, 1.0 / y])
        solution = lsq_linear(design, np.ones_like(y), bounds=([0.0, 0.0], [np.inf, np.inf]))
        slope, intercept = solution.x
        return cls(float(slope), float(intercept))


def error_stats(predicted_ms: Sequence[float], measured_ms: Sequence[float]) -> ErrorStats:
    """MAPE (percent), shares within ±5% / ±10% of measured, and Spearman rho."""
    predicted = np.asarray(predicted_ms, dtype=float)
    measured = np.asarray(measured_ms, dtype=float)
    if predicted.shape != measured.shape or predicted.size == 0:
        raise ValueError("need as many predictions as measurements, at least one")
    relative = np.abs(predicted - measured) / measured
    rho = None
    if predicted.size >= 3 and np.ptp(predicted) > 0 and np.ptp(measured) > 0:
        from scipy import stats  # imported here: it costs every search ~1 s of start-up

        rho = float(stats.spearmanr(predicted, measured).statistic)
    return ErrorStats(
        n=int(predicted.size),
        mape=float(100 * relative.mean()),
        within_5=float((relative <= 0.05).mean()),
        within_10=float((relative <= 0.10).mean()),
        spearman=rho,
    )


def noise_ceiling(first_ms: Sequence[float], again_ms: Sequence[float]) -> ErrorStats:
    """The figures a *perfect* predictor would reach on this machine: one that knew every
    network's true latency, judged against a single noisy measurement, as validation judges.

    Why: a validation compares predictions with measurements that carry noise of their own, so
    a share within ±10% is capped below 100% however good the table is. Two measurements of the
    same network, ``m1 = t (1 + e1)`` and ``m2 = t (1 + e2)`` with independent, identically
    distributed errors, differ by ``r = m2 / m1 - 1 ~ e2 - e1``, whose spread is sqrt(2) times
    one measurement's. So ``|r| / sqrt(2)`` is a sample of one measurement's error (exactly so
    for Gaussian noise), and its shares within ±5% / ±10% are what the truth itself would
    score. ``spearman`` is None (no predictor is involved).
    """
    first = np.asarray(first_ms, dtype=float)
    again = np.asarray(again_ms, dtype=float)
    if first.shape != again.shape or first.size == 0:
        raise ValueError("need two measurements of each network, at least one network")
    if (first <= 0).any() or (again <= 0).any():
        raise ValueError("measured latencies must be positive")
    single_error = np.abs(again / first - 1.0) / np.sqrt(2.0)
    return ErrorStats(
        n=int(first.size),
        mape=float(100 * single_error.mean()),
        within_5=float((single_error <= 0.05).mean()),
        within_10=float((single_error <= 0.10).mean()),
    )


@dataclass(frozen=True)
class Prediction:
    """A predicted latency and what it is made of.

    Attributes:
        latency_ms: the prediction (calibrated when ``calibrated``).
        raw_ms: sum of block medians minus the overhead correction.
        block_sum_ms: plain sum of block medians.
        blocks: number of blocks.
        p90_ms: a pessimistic figure: each block at median + IQR/2 (for latency budgets).
        calibrated: whether the linear calibration was applied.
        cache_aware: whether the cache residency model was applied (then ``latency_ms`` mixes
            warm and cold block timings and ``calibrated`` is False).
        expected_error: held-out error of this prediction path in the latest validation, or
            None when the table was never validated.
    """

    latency_ms: float
    raw_ms: float
    block_sum_ms: float
    blocks: int
    p90_ms: float
    calibrated: bool
    expected_error: ErrorStats | None
    cache_aware: bool = False

    def describe(self) -> str:
        text = f"{self.latency_ms:.3f} ms"
        if self.expected_error is not None:
            e = self.expected_error
            text += f" (expected error: MAPE {e.mape:.1f}%, {100 * e.within_10:.0f}% within ±10%)"
        else:
            text += " (table not validated: run `nasvit latency validate`)"
        return text


class LatencyTable:
    """Block latencies of one device and the corrections learned for it."""

    def __init__(
        self,
        device: DeviceRecord,
        entries: dict[str, EntryRecord],
        validation: ValidationRecord | None = None,
    ):
        self.device = device
        self.entries = entries
        self.validation = validation
        self.overhead_ms = device.overhead_ms or 0.0
        self.calibration: Calibration | None = None
        self.cache_model: CacheModel | None = None
        self._column_cache: dict[str, np.ndarray] | None = None  # see _columns
        self._positions: dict[str, int] = {}
        if validation is not None and validation.cache_model_helps:
            assert validation.cache_model is not None
            self.cache_model = CacheModel.from_dict(validation.cache_model)
        elif validation is not None and validation.calibration_helps:
            assert validation.slope is not None and validation.intercept is not None
            self.calibration = Calibration(validation.slope, validation.intercept)

    @classmethod
    def load(cls, store: LatencyStore, device: str, space: str | None = None) -> LatencyTable:
        """The table of a device by name or id (UnknownNameError if there is none).

        Corrections come from the newest validation on ``space`` when there is one (the cache
        model's fit depends on the networks' sizes, which differ between spaces), else from the
        device's newest validation on any space."""
        record = store.device(device)
        validation = None if space is None else store.latest_validation(record.id, space)
        if validation is None:
            validation = store.latest_validation(record.id)
        return cls(record, store.entries(record.id), validation)

    def __len__(self) -> int:
        return len(self.entries)

    def missing(self, blocks: Sequence[BlockSpec]) -> list[str]:
        """Keys of ``blocks`` with no entry, without repeats."""
        return [key for key in dict.fromkeys(b.key for b in blocks) if key not in self.entries]

    def predict(self, blocks: Sequence[BlockSpec], calibrated: bool = True) -> Prediction:
        """Predict the latency of a network made of ``blocks`` (in any order).

        Args:
            calibrated: apply what the latest validation learned (the cache residency model or
                the linear calibration, whichever beat the raw sum there); False gives the raw
                sum of warm medians minus the overhead correction.

        Raises:
            MissingBlocksError: some block has no entry (the message names them).
        """
        if not blocks:
            raise ValueError("a network needs at least one block")
        missing = self.missing(blocks)
        if missing:
            raise MissingBlocksError(self.device.name, missing)
        rows = [self.entries[b.key] for b in blocks]
        block_sum = sum(r.median_ms for r in rows)
        correction = (len(rows) - 1) * self.overhead_ms
        raw = block_sum - correction
        p90 = sum(r.median_ms + r.iqr_ms / 2 for r in rows) - correction
        if calibrated and self.cache_model is not None:
            inputs = cache_inputs(rows, blocks)
            upper = cache_inputs(rows, blocks, spread=True)
            return Prediction(
                latency_ms=self.cache_model.network_ms(*inputs, self.overhead_ms),
                raw_ms=raw,
                block_sum_ms=block_sum,
                blocks=len(rows),
                p90_ms=self.cache_model.network_ms(*upper, self.overhead_ms),
                calibrated=False,
                expected_error=self.validation.prediction_error if self.validation else None,
                cache_aware=True,
            )
        use_calibration = calibrated and self.calibration is not None
        latency = self.calibration.apply(raw) if use_calibration else raw  # type: ignore[union-attr]
        return Prediction(
            latency_ms=latency,
            raw_ms=raw,
            block_sum_ms=block_sum,
            blocks=len(rows),
            p90_ms=(self.calibration.apply(p90) if use_calibration else p90),  # type: ignore[union-attr]
            calibrated=use_calibration,
            expected_error=self._expected_error(use_calibration),
        )

    def _expected_error(self, calibrated: bool) -> ErrorStats | None:
        v = self.validation
        if v is None:
            return None
        # The raw sum involves no fitting, so all validated networks estimate its error.
        return v.calibrated_test if calibrated else v.raw

    def predict_ms(self, blocks: Sequence[BlockSpec]) -> float:
        return self.predict(blocks).latency_ms

    def predict_many(self, networks: Sequence[Sequence[BlockSpec]]) -> np.ndarray:
        """``predict(blocks).latency_ms`` of many networks at once (same values).

        Searches score thousands of candidates per second; one numpy pass over a padded
        (networks x blocks) matrix of entry positions replaces a Python loop per network.
        """
        if not networks:
            return np.zeros(0)
        if min(len(blocks) for blocks in networks) == 0:
            raise ValueError("a network needs at least one block")
        columns = self._columns()
        padding = len(self.entries)  # the all-zero last row of every column
        index = np.full((len(networks), max(len(b) for b in networks)), padding)
        for i, blocks in enumerate(networks):
            index[i, : len(blocks)] = [self._position(b) for b in blocks]
        count = np.array([len(b) for b in networks], dtype=float)
        warm = columns["warm"][index]
        model = self.cache_model
        if model is not None:
            activations = columns["activations"][index].sum(axis=1, keepdims=True)
            share = model.cold_shares(columns["weights"][index], activations)
            gap = np.maximum(columns["cold"][index] - warm, 0.0)
            correction = (count - 1) * model.overhead(self.overhead_ms)
            return np.asarray((warm + share * gap).sum(axis=1) - correction)
        raw = warm.sum(axis=1) - (count - 1) * self.overhead_ms
        if self.calibration is not None:
            return np.asarray(self.calibration.slope * raw + self.calibration.intercept)
        return np.asarray(raw)

    def _columns(self) -> dict[str, np.ndarray]:
        """Per-entry arrays in ``entries`` order plus an all-zero padding row (built once; the
        table is read-only after loading). Activation bytes depend on the block's output
        shape, which entries do not store: they are filled in as blocks are first seen."""
        if self._column_cache is None:
            warm, cold, weights, _ = cache_inputs(list(self.entries.values()), [])
            self._column_cache = {
                "warm": np.array([*warm, 0.0]),
                "cold": np.array([*cold, 0.0]),
                "weights": np.array([*weights, 0.0]),
                "activations": np.zeros(len(warm) + 1),
            }
            self._positions = {key: i for i, key in enumerate(self.entries)}
        return self._column_cache

    def _position(self, block: BlockSpec) -> int:
        position = self._positions.get(block.key)
        if position is None:
            raise MissingBlocksError(self.device.name, [block.key])
        activations = self._column_cache["activations"]  # type: ignore[index]
        if activations[position] == 0.0:  # no block has an empty output: 0 means not seen yet
            activations[position] = activation_bytes([block])
        return position


def activation_bytes(blocks: Sequence[BlockSpec], itemsize: int = 4) -> int:
    """Bytes of all block outputs of a network (fp32 by default)."""
    return int(sum(itemsize * int(np.prod(b.output_shape)) for b in blocks))


def cache_inputs(
    rows: Sequence[EntryRecord], blocks: Sequence[BlockSpec], spread: bool = False
) -> tuple[list[float], list[float], list[float], float]:
    """``(warm_ms, cold_ms, weight_bytes, activation_bytes)`` of a network for
    :meth:`CacheModel.predict`; a block without a cold timing counts as cold = warm, without
    weight bytes as 0. ``spread`` adds half the IQR to each timing (the p90-style budget)."""
    warm = [r.median_ms + (r.iqr_ms / 2 if spread else 0.0) for r in rows]
    cold = [
        w
        if r.cold_median_ms is None
        else r.cold_median_ms + ((r.cold_iqr_ms or 0.0) / 2 if spread else 0.0)
        for w, r in zip(warm, rows, strict=True)
    ]
    weights = [float(r.weight_bytes or 0) for r in rows]
    return warm, cold, weights, float(activation_bytes(blocks))

"""Latency tables: predict a network's latency from its blocks, with a known error.

A table holds one device's block timings (warm and DRAM-streamed). A prediction sums them
(:mod:`~nasvit.latency_db.error_model`: the sum model, or where a validation showed it does
better, the cache residency model), always within physical bounds, and carries the interval
the table's latest validation learned from networks it was not fitted on. A table that no
validation judged says so in every prediction's error field instead of a number.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from nasvit.errors import NasvitError
from nasvit.guarantees import DEFAULT_CONFIDENCE, Guarantee, check_confidence, format_ms
from nasvit.latency_db.error_model import (
    ErrorModel,
    NetworkInputs,
    NetworkMatrix,
    physical_bounds,
    sum_model,
)
from nasvit.latency_db.records import DeviceRecord, EntryRecord, ErrorStats, ValidationRecord
from nasvit.latency_db.store import LatencyStore
from nasvit.nn.blocks import BlockSpec

__all__ = [
    "NEVER_VALIDATED",
    "LatencyTable",
    "MissingBlocksError",
    "Prediction",
    "activation_bytes",
    "cache_inputs",
]

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
class Prediction:
    """A predicted latency, what it is made of, and how far off it is expected to be.

    Attributes:
        latency_ms: the prediction.
        sum_ms: the sum model's (warm block sum minus the measured per-call overheads).
        block_sum_ms: plain sum of warm block medians.
        blocks: number of blocks.
        lower_bound_ms, upper_bound_ms: the physical bounds the prediction lies within.
        model: "sum" or "residency": the model used (see
            :mod:`~nasvit.latency_db.error_model`).
        band: the latency band of the table's validation (None: never validated).
        low_ms, high_ms: the split-conformal interval at ``confidence`` (None: never
            validated).
        confidence: the interval's confidence.
        expected_error: the error of this band's model on the validation's judged networks
            (None: never validated, or no judged network in the band).
    """

    latency_ms: float
    sum_ms: float
    block_sum_ms: float
    blocks: int
    lower_bound_ms: float
    upper_bound_ms: float
    model: str
    band: int | None
    low_ms: float | None
    high_ms: float | None
    confidence: float
    expected_error: ErrorStats | None

    @property
    def validated(self) -> bool:
        """The table has a validation with intervals (else the error is unknown)."""
        return self.low_ms is not None

    @property
    def error_text(self) -> str:
        """The prediction's error as users read it; never a number for an unvalidated table."""
        if self.low_ms is None or self.high_ms is None:
            return NEVER_VALIDATED
        interval = f"{format_ms(self.low_ms)}-{format_ms(self.high_ms)}"
        text = f"{100 * self.confidence:g}% interval {interval}"
        if self.expected_error is not None:
            e = self.expected_error
            text += f"; band MAPE {e.mape:.1f}%, {100 * e.within_10:.0f}% within ±10%"
        return text

    def describe(self) -> str:
        return f"{format_ms(self.latency_ms)} ({self.error_text})"


#: The error field of a prediction from a table no validation with intervals has judged.
NEVER_VALIDATED = "never validated: run `nasvit latency validate` to learn this table's error"


class LatencyTable:
    """Block latencies of one device and what its latest validation learned about them."""

    def __init__(
        self,
        device: DeviceRecord,
        entries: dict[str, EntryRecord],
        validation: ValidationRecord | None = None,
    ):
        self.device = device
        self.entries = entries
        self.validation = validation
        self.error_model: ErrorModel | None = validation.error_model if validation else None
        # The per-call overhead is measured, once per device; a validation keeps the one it
        # was fitted with, so its intervals stay those of the models it judged.
        self.overhead_ms = (
            self.error_model.overhead_ms if self.error_model else (device.overhead_ms or 0.0)
        )
        self._column_cache: dict[str, np.ndarray] | None = None  # see _columns
        self._positions: dict[str, int] = {}

    @classmethod
    def load(cls, store: LatencyStore, device: str, space: str | None = None) -> LatencyTable:
        """The table of a device by name or id (UnknownNameError if there is none).

        The error model comes from the newest validation on ``space`` when there is one (the
        models and their errors depend on the networks' sizes, which differ between spaces),
        else from the device's newest validation on any space."""
        record = store.device(device)
        validation = None if space is None else store.latest_validation(record.id, space)
        if validation is None:
            validation = store.latest_validation(record.id)
        return cls(record, store.entries(record.id), validation)

    def __len__(self) -> int:
        return len(self.entries)

    @property
    def validated(self) -> bool:
        """A validation with intervals judged this table (else errors are unknown)."""
        return self.error_model is not None

    def missing(self, blocks: Sequence[BlockSpec]) -> list[str]:
        """Keys of ``blocks`` with no entry, without repeats."""
        return [key for key in dict.fromkeys(b.key for b in blocks) if key not in self.entries]

    def inputs(self, blocks: Sequence[BlockSpec]) -> NetworkInputs:
        """The network's block inputs for the models (MissingBlocksError names missing ones)."""
        if not blocks:
            raise ValueError("a network needs at least one block")
        missing = self.missing(blocks)
        if missing:
            raise MissingBlocksError(self.device.name, missing)
        return cache_inputs([self.entries[b.key] for b in blocks], blocks)

    def predict(self, blocks: Sequence[BlockSpec], confidence: float | None = None) -> Prediction:
        """Predict the latency of a network made of ``blocks`` (in any order), with its
        interval at ``confidence`` (default :data:`~nasvit.guarantees.DEFAULT_CONFIDENCE`).

        Raises:
            MissingBlocksError: some block has no entry (the message names them).
        """
        confidence = check_confidence(confidence if confidence is not None else DEFAULT_CONFIDENCE)
        inputs = self.inputs(blocks)
        block_sum = float(sum(inputs[0]))
        model = self.error_model
        if model is None:
            matrix = NetworkMatrix.of([inputs])
            lower, upper = physical_bounds(matrix, self.overhead_ms)
            return Prediction(
                latency_ms=float(lower[0]),
                sum_ms=float(lower[0]),
                block_sum_ms=block_sum,
                blocks=len(blocks),
                lower_bound_ms=float(lower[0]),
                upper_bound_ms=float(upper[0]),
                model="sum",
                band=None,
                low_ms=None,
                high_ms=None,
                confidence=confidence,
                expected_error=None,
            )
        network = model.predict(inputs, confidence)
        assert network.band is not None
        return Prediction(
            latency_ms=network.latency_ms,
            sum_ms=network.sum_ms,
            block_sum_ms=block_sum,
            blocks=len(blocks),
            lower_bound_ms=network.lower_bound_ms,
            upper_bound_ms=network.upper_bound_ms,
            model=network.model,
            band=network.band,
            low_ms=network.low_ms,
            high_ms=network.high_ms,
            confidence=confidence,
            expected_error=model.bands[network.band].judged,
        )

    def predict_ms(self, blocks: Sequence[BlockSpec]) -> float:
        return self.predict(blocks).latency_ms

    def predict_many(self, networks: Sequence[Sequence[BlockSpec]]) -> np.ndarray:
        """``predict(blocks).latency_ms`` of many networks at once (same values).

        Searches score thousands of candidates per second; numpy passes over padded
        (networks x blocks) matrices replace a Python loop per network.
        """
        return self._points(networks)[0]

    def sum_many(self, networks: Sequence[Sequence[BlockSpec]]) -> np.ndarray:
        """The sum model of many networks (what validation stratifies over)."""
        return sum_model(self._matrix(networks), self.overhead_ms)

    def intervals_many(
        self, networks: Sequence[Sequence[BlockSpec]], confidence: float | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """``(low_ms, high_ms)`` of many networks at ``confidence``; NaN when never
        validated."""
        confidence = check_confidence(confidence if confidence is not None else DEFAULT_CONFIDENCE)
        points, bands = self._points(networks)
        if self.error_model is None:
            nan = np.full(points.shape, np.nan)
            return nan, nan.copy()
        low, high = self.error_model.interval_logs(bands, confidence)
        return points * np.exp(low), points * np.exp(high)

    def judged_many(
        self, networks: Sequence[Sequence[BlockSpec]], guarantee: Guarantee
    ) -> np.ndarray:
        """What a budget with ``guarantee`` is compared with, per network: the prediction, its
        one-sided upper bound at the guarantee's confidence, or its predicted percentile of
        single calls.

        Raises:
            NasvitError: a confidence or percentile is asked of a never-validated table.
        """
        return self._judged(*self._points(networks), guarantee)

    def judged(self, prediction: Prediction, guarantee: Guarantee) -> float:
        """:meth:`judged_many`'s value for one network this table already predicted."""
        band = np.array([prediction.band or 0])
        return float(self._judged(np.array([prediction.latency_ms]), band, guarantee)[0])

    def check_guarantee(self, guarantee: Guarantee) -> None:
        """Raise unless this table can judge ``guarantee``: a confidence or a percentile needs
        the intervals of a validation.

        Raises:
            NasvitError: the guarantee is not plain and the table was never validated.
        """
        if not guarantee.plain and self.error_model is None:
            raise NasvitError(
                f"a budget{guarantee.describe()} needs a validated latency table (its errors "
                f"give the bound), and the table of device '{self.device.name}' was never "
                "validated: validate it on a few networks first",
                argument="validate_networks",
            )

    def _judged(self, points: np.ndarray, bands: np.ndarray, guarantee: Guarantee) -> np.ndarray:
        self.check_guarantee(guarantee)
        if self.error_model is None or guarantee.plain:
            return points
        return np.asarray(points * np.exp(self.error_model.judged_logs(bands, guarantee)))

    def _points(self, networks: Sequence[Sequence[BlockSpec]]) -> tuple[np.ndarray, np.ndarray]:
        matrix = self._matrix(networks)
        if self.error_model is None:
            return sum_model(matrix, self.overhead_ms), np.zeros(len(networks), dtype=int)
        points, _, bands = self.error_model.points(matrix)
        return points, bands

    def _matrix(self, networks: Sequence[Sequence[BlockSpec]]) -> NetworkMatrix:
        if not networks:
            raise ValueError("need at least one network")
        if min(len(blocks) for blocks in networks) == 0:
            raise ValueError("a network needs at least one block")
        columns = self._columns()
        padding = len(self.entries)  # the all-zero last row of every column
        index = np.full((len(networks), max(len(b) for b in networks)), padding)
        for i, blocks in enumerate(networks):
            index[i, : len(blocks)] = [self._position(b) for b in blocks]
        return NetworkMatrix(
            warm=columns["warm"][index],
            cold=columns["cold"][index],
            weights=columns["weights"][index],
            activations=columns["activations"][index].sum(axis=1, keepdims=True),
            counts=np.array([len(b) for b in networks], dtype=float),
        )

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
    rows: Sequence[EntryRecord], blocks: Sequence[BlockSpec]
) -> tuple[list[float], list[float], list[float], float]:
    """``(warm_ms, cold_ms, weight_bytes, activation_bytes)`` of a network for the models of
    :mod:`~nasvit.latency_db.error_model`; a block without a cold timing counts as cold =
    warm, without weight bytes as 0."""
    warm = [r.median_ms for r in rows]
    cold = [
        w if r.cold_median_ms is None else r.cold_median_ms for w, r in zip(warm, rows, strict=True)
    ]
    weights = [float(r.weight_bytes or 0) for r in rows]
    return warm, cold, weights, float(activation_bytes(blocks))

"""Table builder (resume, drift) and predictor (overhead, error models, missing keys)."""

from __future__ import annotations

import numpy as np
import pytest

from nasvit.guarantees import BUDGET_PERCENTILES
from nasvit.latency_db import (
    NEVER_VALIDATED,
    DeviceFingerprint,
    ErrorStats,
    LatencyStore,
    LatencyTable,
    Measurement,
    MissingBlocksError,
    NewEntry,
    ValidationRecord,
    build_table,
    error_stats,
)
from nasvit.latency_db.error_model import Band, ErrorModel
from nasvit.nn.blocks import BlockSpec


class CountingProfiler:
    """Wraps a real profiler; counts measurements and can fail after ``fail_after`` of them."""

    def __init__(self, inner, fail_after: int | None = None):
        self.inner, self.fail_after, self.measured = inner, fail_after, 0
        self.protocol, self.name = inner.protocol, inner.name

    @property
    def settings(self):
        return self.inner.settings

    def prepare(self, model, input_shape=None):
        return self.inner.prepare(model, input_shape)

    def measure(self, model, input_shape=None) -> Measurement:
        if self.fail_after is not None and self.measured >= self.fail_after:
            raise KeyboardInterrupt
        self.measured += 1
        return self.inner.measure(model, input_shape)

    def measure_overhead(self, input_shape=(1, 8, 8, 8)) -> Measurement:
        return self.inner.measure_overhead(input_shape)


def _device(store: LatencyStore, profiler):
    return store.ensure_device(DeviceFingerprint.local(profiler.settings))


def test_interrupted_build_resumes_with_only_missing_keys(
    sqlite_store: LatencyStore,
    quick_profiler,
    small_blocks,
) -> None:
    device = _device(sqlite_store, quick_profiler)
    # 1 reference timing + 4 blocks + 1 reference re-timing commit the first batch of 4.
    failing = CountingProfiler(quick_profiler, fail_after=8)
    with pytest.raises(KeyboardInterrupt):
        build_table(sqlite_store, failing, device, small_blocks, batch_size=4, drift_tolerance=9)
    assert sqlite_store.entry_count(device.id) == 4
    assert sqlite_store.device(device.id).overhead_ms is not None

    resumed = CountingProfiler(quick_profiler)
    report = build_table(
        sqlite_store, resumed, sqlite_store.device(device.id), small_blocks + small_blocks[:2]
    )
    assert report.already_present == 4 and report.measured == len(small_blocks) - 4
    assert report.requested == len(small_blocks)
    assert sqlite_store.entry_count(device.id) == len(small_blocks)
    again = build_table(sqlite_store, CountingProfiler(quick_profiler), device, small_blocks)
    assert again.measured == 0 and again.inserted == 0


class DriftingProfiler(CountingProfiler):
    """The reference block times 1.0 ms first, then 1.5 ms (a 50% drift) forever."""

    def __init__(self, inner, reference_key: str):
        super().__init__(inner)
        self.reference_key, self.reference_timings = reference_key, 0

    def measure(self, model, input_shape=None) -> Measurement:
        m = super().measure(model, input_shape)
        if getattr(model, "model", None) is self.reference_model:
            self.reference_timings += 1
            return Measurement(1.0 if self.reference_timings == 1 else 1.5, 0.0, m.n, m.sessions)
        return m

    def prepare(self, model, input_shape=None):
        prepared = super().prepare(model, input_shape)
        first = self.reference_model is None  # the builder prepares the reference first
        if first and isinstance(model, BlockSpec) and model.key == self.reference_key:
            self.reference_model = prepared.model
        return prepared

    reference_model = None


def test_drift_of_the_reference_block_triggers_remeasurement(
    sqlite_store: LatencyStore,
    quick_profiler,
    small_blocks,
) -> None:
    from nasvit.latency_db.builder import _pick_reference

    reference = _pick_reference(small_blocks[:3])
    profiler = DriftingProfiler(quick_profiler, reference.key)
    device = _device(sqlite_store, quick_profiler)
    report = build_table(
        sqlite_store, profiler, device, small_blocks[:3], batch_size=3, max_remeasures=2
    )
    assert report.remeasured_batches == 2 and report.accepted_drifts == 1
    assert report.max_drift == pytest.approx(0.5)
    assert report.measured == 3 and sqlite_store.entry_count(device.id) == 3


def _block(name: str) -> BlockSpec:
    return BlockSpec(kind="test." + name, input_shape=(1, 1), output_shape=(1, 1))


def _table(store: LatencyStore, overhead: float, medians: dict[str, float]) -> str:
    fp = DeviceFingerprint("cpu", 1, 1, "os", "onnxruntime", "1", "CPU", 1, "all")
    device = store.ensure_device(fp)
    store.set_overhead(device.id, overhead, 0.0, 10)
    store.add_entries(
        device.id,
        [
            NewEntry(_block(k).key, "nasvit-block/1", "k", v, 0.2, 10, "p", "1")
            for k, v in medians.items()
        ],
    )
    return device.id


def test_prediction_sums_medians_minus_overhead(sqlite_store: LatencyStore) -> None:
    device = _table(sqlite_store, 0.01, {"a": 1.0, "b": 2.0})
    table = LatencyTable.load(sqlite_store, device)
    p = table.predict([_block("a"), _block("b"), _block("a")])
    assert p.block_sum_ms == pytest.approx(4.0)
    assert p.sum_ms == p.latency_ms == p.lower_bound_ms == pytest.approx(4.0 - 2 * 0.01)
    assert p.model == "sum" and not table.validated and not p.validated
    # Never validated: the error field says so, and no number stands in for the error.
    assert p.low_ms is None and p.high_ms is None and p.expected_error is None
    assert p.error_text == NEVER_VALIDATED and NEVER_VALIDATED in p.describe()
    with pytest.raises(MissingBlocksError, match="lacks 2 block") as caught:
        table.predict([_block("a"), _block("x"), _block("y"), _block("x")])
    assert caught.value.missing == [_block("x").key, _block("y").key]


def _validation(space: str, overhead_ms: float, residual: float) -> ValidationRecord:
    """A stored validation whose error model has one band, the sum model and residuals
    centred on ``residual`` (log measured / predicted)."""
    stats = ErrorStats(20, 4.0, 0.6, 0.9)
    model = ErrorModel(
        overhead_ms=overhead_ms,
        residency=None,
        edges_ms=(0.1, 10.0),
        bands=(
            Band(0.1, 10.0, "sum", 20, tuple(residual + d for d in np.linspace(-0.1, 0.1, 20)),
                 False, {p: residual for p in BUDGET_PERCENTILES}, stats, 0.0),
        ),
        sum_judged=stats,
        residency_judged=None,
        judged=stats,
        n_fit=20,
    )  # fmt: skip
    return ValidationRecord(
        space, "nasvit-block/1", stats, details={"error_model": model.to_dict()}
    )


def test_a_validated_table_gives_intervals_and_its_band_error(sqlite_store: LatencyStore) -> None:
    device = _table(sqlite_store, 0.01, {"a": 1.0})
    sqlite_store.add_validation(device, _validation("s", 0.01, 0.0))
    table = LatencyTable.load(sqlite_store, device)
    p = table.predict([_block("a"), _block("a")])
    assert table.validated and p.validated and p.band == 0
    assert p.latency_ms == pytest.approx(2.0 - 0.01)
    # 20 residuals evenly from -0.1 to 0.1: a 90% interval's tails are 5% each, and split
    # conformal takes the floor(21 * 0.05) = 1st and the ceil(21 * 0.95) = 20th of them.
    assert p.low_ms == pytest.approx(p.latency_ms * np.exp(-0.1))
    assert p.high_ms == pytest.approx(p.latency_ms * np.exp(0.1))
    # At 80% (tails of 10%): the 2nd and the 19th.
    narrower = table.predict([_block("a"), _block("a")], confidence=0.8)
    residuals = np.linspace(-0.1, 0.1, 20)
    assert narrower.low_ms == pytest.approx(p.latency_ms * np.exp(residuals[1]))
    assert narrower.high_ms == pytest.approx(p.latency_ms * np.exp(residuals[18]))
    assert p.expected_error == ErrorStats(20, 4.0, 0.6, 0.9)
    assert "90% interval" in p.error_text and "band MAPE 4.0%" in p.describe()


def test_a_space_uses_its_own_validation_when_the_device_has_one(
    sqlite_store: LatencyStore,
) -> None:
    """Validations of two spaces on one device: each space's predictions take their own
    error model; a space never validated takes the device's newest one."""
    device = _table(sqlite_store, 0.0, {"a": 1.0})
    for space, overhead in (("first", 0.1), ("second", 0.3)):
        sqlite_store.add_validation(device, _validation(space, overhead, 0.0))
    network = [_block("a"), _block("a")]
    predict = lambda space: LatencyTable.load(sqlite_store, device, space).predict(network)  # noqa: E731
    assert predict("first").latency_ms == pytest.approx(1.9)
    assert predict("second").latency_ms == pytest.approx(1.7)
    assert predict("never-validated").latency_ms == pytest.approx(1.7)
    assert predict(None).latency_ms == pytest.approx(1.7)
    assert sqlite_store.latest_validation(device, "unknown") is None


def test_error_statistics() -> None:
    stats = error_stats([1.0, 2.0, 3.3, 4.8], [1.0, 2.1, 3.0, 4.0])
    assert stats.n == 4 and stats.within_5 == 0.5 and stats.within_10 == 0.75
    assert stats.mape == pytest.approx(100 * (0 + 0.1 / 2.1 + 0.1 + 0.2) / 4)
    assert stats.spearman == pytest.approx(1.0)

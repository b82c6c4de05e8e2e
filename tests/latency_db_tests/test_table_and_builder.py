"""Table builder (resume, drift) and predictor (overhead, calibration, missing keys)."""

from __future__ import annotations

import numpy as np
import pytest

from nasvit.latency_db import (
    Calibration,
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
    noise_ceiling,
)
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
    assert p.raw_ms == p.latency_ms == pytest.approx(4.0 - 2 * 0.01)
    assert p.p90_ms == pytest.approx(4.3 - 0.02)
    assert not p.calibrated and p.expected_error is None and "not validated" in p.describe()
    with pytest.raises(MissingBlocksError, match="lacks 2 block") as caught:
        table.predict([_block("a"), _block("x"), _block("y"), _block("x")])
    assert caught.value.missing == [_block("x").key, _block("y").key]


@pytest.mark.parametrize("helps", [True, False])
def test_calibration_is_used_only_when_it_beat_the_raw_sum(
    sqlite_store: LatencyStore, helps: bool
) -> None:
    device = _table(sqlite_store, 0.0, {"a": 1.0})
    raw_test = ErrorStats(5, 10.0, 0.2, 0.5)
    calibrated = ErrorStats(5, 3.0 if helps else 12.0, 0.8, 1.0)
    sqlite_store.add_validation(
        device,
        ValidationRecord("s", "nasvit-block/1", ErrorStats(10, 9.0, 0.3, 0.6, 0.9), 2.0, 0.5,
                         5, raw_test, calibrated),
    )  # fmt: skip
    p = LatencyTable.load(sqlite_store, device).predict([_block("a")])
    assert p.calibrated is helps
    assert p.latency_ms == pytest.approx(2.5 if helps else 1.0)
    assert p.expected_error == (calibrated if helps else ErrorStats(10, 9.0, 0.3, 0.6, 0.9))
    assert "expected error" in p.describe()


def test_a_space_uses_its_own_validation_when_the_device_has_one(
    sqlite_store: LatencyStore,
) -> None:
    """Validations of two spaces on one device: each space's predictions take their own
    calibration; a space never validated takes the device's newest one."""
    device = _table(sqlite_store, 0.0, {"a": 1.0})
    raw_test = ErrorStats(5, 10.0, 0.2, 0.5)
    for space, slope in (("first", 2.0), ("second", 3.0)):
        sqlite_store.add_validation(
            device,
            ValidationRecord(space, "nasvit-block/1", ErrorStats(10, 9.0, 0.3, 0.6, 0.9),
                             slope, 0.0, 5, raw_test, ErrorStats(5, 3.0, 0.8, 1.0)),
        )  # fmt: skip
    predict = lambda space: LatencyTable.load(sqlite_store, device, space).predict([_block("a")])  # noqa: E731
    assert predict("first").latency_ms == pytest.approx(2.0)
    assert predict("second").latency_ms == pytest.approx(3.0)
    assert predict("never-validated").latency_ms == pytest.approx(3.0)
    assert predict(None).latency_ms == pytest.approx(3.0)
    assert sqlite_store.latest_validation(device, "first").slope == 2.0  # type: ignore[union-attr]
    assert sqlite_store.latest_validation(device, "unknown") is None


def test_noise_ceiling_recovers_what_the_truth_would_score_against_one_measurement() -> None:
    # Networks measured twice with 4% Gaussian noise: the ceiling estimated from the pairs
    # alone must match how often the true latencies fall within ±5% / ±10% of one measurement.
    rng = np.random.default_rng(0)
    true_ms = rng.uniform(0.5, 20.0, 20_000)
    first = true_ms * (1 + rng.normal(0, 0.04, true_ms.size))
    again = true_ms * (1 + rng.normal(0, 0.04, true_ms.size))
    truth = error_stats(true_ms, first)
    ceiling = noise_ceiling(first, again)
    assert ceiling.n == true_ms.size and ceiling.spearman is None
    assert ceiling.within_10 == pytest.approx(truth.within_10, abs=0.01)  # both about 0.988
    assert ceiling.within_5 == pytest.approx(truth.within_5, abs=0.02)  # both about 0.79
    assert ceiling.mape == pytest.approx(truth.mape, rel=0.05)
    # Noise-free measurements leave no gap; a pair 20% apart is outside ±10% for one reading.
    assert noise_ceiling([1.0, 2.0], [1.0, 2.0]).within_5 == 1.0
    assert noise_ceiling([1.0], [1.2]).within_10 == 0.0
    with pytest.raises(ValueError):
        noise_ceiling([1.0, 2.0], [1.0])
    with pytest.raises(ValueError):
        noise_ceiling([1.0], [0.0])


def test_error_statistics_and_calibration_fit() -> None:
    stats = error_stats([1.0, 2.0, 3.3, 4.8], [1.0, 2.1, 3.0, 4.0])
    assert stats.n == 4 and stats.within_5 == 0.5 and stats.within_10 == 0.75
    assert stats.mape == pytest.approx(100 * (0 + 0.1 / 2.1 + 0.1 + 0.2) / 4)
    assert stats.spearman == pytest.approx(1.0)
    fit = Calibration.fit([1.0, 2.0, 3.0], [2.5, 4.5, 6.5])
    assert (fit.slope, fit.intercept) == (pytest.approx(2.0), pytest.approx(0.5))
    with pytest.raises(ValueError):
        Calibration.fit([1.0, 1.0], [1.0, 2.0])
    # Data whose least-squares line crosses zero: the fit stays non-negative, so the smallest
    # networks are never predicted at zero or below.
    steep = Calibration.fit([0.5, 0.8, 1.2, 1.5], [0.8, 1.6, 4.2, 5.0])
    assert steep.intercept >= 0 and steep.slope > 0 and steep.apply(0.1) > 0
    assert np.polyfit([0.5, 0.8, 1.2, 1.5], [0.8, 1.6, 4.2, 5.0], 1)[1] < 0

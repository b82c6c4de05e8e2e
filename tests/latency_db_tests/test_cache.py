"""Cache-state-aware latency: cache size detection, the residency model, cold measurements and
predictions that mix warm and cold block timings."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from nasvit.agent.hardware import CacheFlusher, _parse_size, last_level_cache_bytes
from nasvit.guarantees import BUDGET_PERCENTILES
from nasvit.latency_db import (
    DeviceFingerprint,
    ErrorStats,
    LatencyStore,
    LatencyTable,
    MeasurementProtocol,
    NewEntry,
    OnnxRuntimeProfiler,
    ValidationRecord,
    build_table,
)
from nasvit.latency_db.cache import CacheModel
from nasvit.latency_db.error_model import Band, ErrorModel, NetworkMatrix, residency_model
from nasvit.latency_db.replicate import COLD_PROTOCOL
from nasvit.latency_db.table import MissingBlocksError
from nasvit.nn.blocks import BlockSpec

MB = 2**20


def test_cache_sizes_are_parsed_and_detected() -> None:
    assert _parse_size("32768K") == 32 * MB
    assert _parse_size("32 MiB (1 instance)") == 32 * MB
    assert _parse_size("1024") == 1024 and _parse_size("junk") == 0
    assert last_level_cache_bytes() >= 0
    flusher = CacheFlusher(8 * MB)
    flusher()
    assert flusher.nbytes == 8 * MB


def test_residency_model_is_warm_when_the_network_fits_and_cold_when_far_larger() -> None:
    model = CacheModel(cache_bytes=32 * MB, onset=1.0, width=2.0)
    warm, cold = [1.0, 1.0], [3.0, 3.0]
    assert model.predict(warm, cold, [4 * MB, 4 * MB]) == pytest.approx(2.0)  # all cached
    assert model.predict(warm, cold, [200 * MB, 200 * MB]) == pytest.approx(6.0)  # all evicted
    # Half way: the rest of the network streams 64 MB = 2 caches -> (2 - 1) / 2 = 0.5 evicted.
    assert model.cold_shares([64 * MB, 64 * MB]) == pytest.approx([0.5, 0.5])
    assert model.predict(warm, cold, [64 * MB, 64 * MB]) == pytest.approx(4.0)
    # A cold timing below the warm one (noise) never lowers the prediction.
    assert model.predict([1.0], [0.5], [500 * MB]) == pytest.approx(1.0)
    assert CacheModel(0).predict(warm, cold, [500 * MB] * 2) == pytest.approx(2.0)
    assert CacheModel.from_dict(model.to_dict()) == model
    # A network streaming more than a cache's worth pays more than the cold gap with excess:
    # 400 MB = 12.5 caches -> g = 1 + 0.1 * 11.5 = 2.15 on the fully evicted gap of 2 x 2 ms.
    grows = CacheModel(cache_bytes=32 * MB, onset=1.0, width=2.0, excess=0.1)
    assert grows.predict(warm, cold, [200 * MB, 200 * MB]) == pytest.approx(2.0 + 4.0 * 2.15)
    assert grows.predict(warm, cold, [4 * MB, 4 * MB]) == pytest.approx(2.0)  # under a cache
    assert grows.cold_shares([64 * MB, 64 * MB]) == pytest.approx([0.65, 0.65])  # g = 1.3


def test_stored_models_without_newer_fields_load_with_neutral_defaults() -> None:
    # Models stored before the overhead and the excess existed: no excess, and predictions
    # save the measured overhead they are given.
    old = CacheModel.from_dict({"cache_bytes": 32 * MB, "onset": 0.5, "width": 3.0})
    network = NetworkMatrix.of([([1.0, 1.0], [1.0, 1.0], [MB, MB], 0.0)])
    assert residency_model(network, old, 0.1)[0] == pytest.approx(1.9)
    assert old.excess == 0.0 and old.overhead_ms is None


def test_cold_measurement_runs_on_fresh_sessions_and_is_stored(
    sqlite_store: LatencyStore,
) -> None:
    """The mechanism, not the timing: warm and cold come from the same sessions, the builder
    stores weight bytes for every block and cold timings for blocks above the threshold."""
    profiler = OnnxRuntimeProfiler(protocol=MeasurementProtocol.quick())
    profiler.flusher = CacheFlusher(4 * MB)  # keep the test cheap
    big = BlockSpec("test.linear", (1, 512), (1, 512), {"n": 512},
                    lambda: torch.nn.Linear(512, 512))  # fmt: skip
    small = BlockSpec("test.linear", (1, 8), (1, 8), {"n": 8}, lambda: torch.nn.Linear(8, 8))
    warm, cold = profiler.measure_warm_cold(big)
    quick = MeasurementProtocol.quick()
    assert warm.n >= quick.sessions * quick.min_repeats and warm.sessions == quick.sessions
    assert cold.n == quick.cold_repeats and cold.sessions == 1
    assert warm.median_ms > 0 and cold.median_ms > 0
    device = sqlite_store.ensure_device(DeviceFingerprint.local(profiler.settings))
    build_table(sqlite_store, profiler, device, [big, small], cold_min_bytes=4096)
    entries = sqlite_store.entries(device.id)
    assert entries[big.key].weight_bytes == (512 * 512 + 512) * 4
    assert entries[big.key].cold_median_ms is not None and entries[big.key].cold_n == cold.n
    assert entries[small.key].weight_bytes == (8 * 8 + 8) * 4
    assert entries[small.key].cold_median_ms is None
    assert entries[big.key].cold_protocol == COLD_PROTOCOL
    assert entries[small.key].cold_protocol is None


def test_cold_timings_of_another_protocol_are_re_measured(sqlite_store: LatencyStore) -> None:
    """A database from before the cold protocol was versioned: its measured cold timings are
    re-measured and overwritten in place (one row per key); imported ones are kept."""
    profiler = OnnxRuntimeProfiler(protocol=MeasurementProtocol.quick())
    profiler.flusher = CacheFlusher(4 * MB)
    blocks = [
        BlockSpec("test.linear", (1, n), (1, n), {"n": n}, lambda n=n: torch.nn.Linear(n, n))
        for n in (256, 320, 384)
    ]
    device = sqlite_store.ensure_device(DeviceFingerprint.local(profiler.settings))
    old = [
        NewEntry(b.key, "nasvit-block/1", "test.linear", 0.5, 0.1, 10, profiler.name, "1",
                 source=source, weight_bytes=(n * n + n) * 4, cold_median_ms=999.0,
                 cold_iqr_ms=0.1, cold_n=7)
        for b, n, source in zip(blocks[:2], (256, 320), ("measured", "imported"), strict=True)
    ]  # fmt: skip
    sqlite_store.add_entries(device.id, old)
    report = build_table(sqlite_store, profiler, device, blocks, cold_min_bytes=4096)
    assert report.refreshed == 1 and report.measured == 2 and report.inserted == 1
    entries = sqlite_store.entries(device.id)
    assert len(entries) == 3 == sqlite_store.entry_count(device.id)
    renewed, imported, new = (entries[b.key] for b in blocks)
    assert renewed.cold_protocol == COLD_PROTOCOL and renewed.cold_median_ms < 999.0
    assert renewed.median_ms != 0.5 and renewed.source == "measured"
    assert imported.cold_protocol is None and imported.cold_median_ms == 999.0
    assert new.cold_protocol == COLD_PROTOCOL
    again = build_table(sqlite_store, profiler, device, blocks, cold_min_bytes=4096)
    assert again.measured == 0 and again.refreshed == 0


def _block(name: str) -> BlockSpec:
    return BlockSpec(kind="test." + name, input_shape=(1, 1), output_shape=(1, 1))


def _error_model(residency: CacheModel | None, models: tuple[str, ...], overhead: float) -> dict:
    """A stored error model with the given models per band (bands split 1-3 ms at 2 ms)."""
    stats = ErrorStats(12, 2.0, 0.9, 1.0)
    edges = tuple(np.geomspace(0.5, 8.0, len(models) + 1))
    bands = tuple(
        Band(float(edges[i]), float(edges[i + 1]), m, 12, tuple(np.linspace(-0.05, 0.05, 12)),
             False, {p: 0.01 * p / 50 for p in BUDGET_PERCENTILES}, stats, 0.0)
        for i, m in enumerate(models)
    )  # fmt: skip
    return ErrorModel(overhead, residency, edges, bands, stats, stats, stats, 12).to_dict()


@pytest.mark.parametrize("band_model", ["sum", "residency"])
def test_table_uses_the_residency_model_only_in_bands_where_it_won(
    sqlite_store: LatencyStore, band_model: str
) -> None:
    fp = DeviceFingerprint("cpu", 1, 1, "os", "onnxruntime", "1", "CPU", 1, "all",
                           cache_bytes=32 * MB)  # fmt: skip
    device = sqlite_store.ensure_device(fp)
    sqlite_store.set_overhead(device.id, 0.0, 0.0, 10)
    rows = [
        NewEntry(_block("a").key, "nasvit-block/1", "k", 1.0, 0.2, 10, "p", "1",
                 weight_bytes=64 * MB, cold_median_ms=3.0, cold_iqr_ms=0.2, cold_n=5),
        NewEntry(_block("b").key, "nasvit-block/1", "k", 1.0, 0.2, 10, "p", "1",
                 weight_bytes=64 * MB),
    ]  # fmt: skip
    sqlite_store.add_entries(device.id, rows)
    residency = CacheModel(32 * MB, onset=1.0, width=2.0, overhead_ms=0.0)
    # The network's sum is 2 ms: the second of two bands split at 2 ms.
    details = {"error_model": _error_model(residency, ("residency", band_model), 0.0)}
    raw = ErrorStats(5, 30.0, 0.0, 0.2)
    sqlite_store.add_validation(
        device.id, ValidationRecord("s", "nasvit-block/1", raw, details=details)
    )
    table = LatencyTable.load(sqlite_store, device.id)
    p = table.predict([_block("a"), _block("b")])
    assert p.band == 1 and p.model == band_model
    # a: 64 MB of the rest streamed -> (2 - 1) / 2 evicted -> 1 + 0.5 * 2; b: no cold timing.
    assert p.latency_ms == pytest.approx(3.0 if band_model == "residency" else 2.0)
    assert p.sum_ms == pytest.approx(2.0)
    assert p.lower_bound_ms == pytest.approx(2.0)
    assert p.upper_bound_ms == pytest.approx((3.0 + 1.0) * 1.25)
    assert p.low_ms is not None and p.high_ms is not None
    assert p.low_ms < p.latency_ms < p.high_ms


def test_single_thread_onnxruntime_times_cpu_time_of_the_inference_thread() -> None:
    import time

    from nasvit.errors import NasvitError
    from nasvit.latency_db import with_protocol

    one = OnnxRuntimeProfiler()
    assert one.protocol.clock == one.settings.clock == "thread"
    assert DeviceFingerprint.local(one.settings).clock == "thread"
    assert with_protocol(one, MeasurementProtocol.network()).protocol.clock == "thread"
    assert OnnxRuntimeProfiler(threads=2).protocol.clock == "wall"
    with pytest.raises(NasvitError, match="single-threaded"):
        OnnxRuntimeProfiler(threads=2, clock="thread")
    with pytest.raises(ValueError, match="clock"):
        MeasurementProtocol(clock="sundial")
    # The thread clock leaves out time the thread does not run (here: sleeping; on a shared
    # machine: time other processes hold the core); the wall clock counts it.
    sleeping = MeasurementProtocol(sessions=1, warmup=0, repeats=3, min_repeats=3)
    wall = sleeping.time_session(lambda: time.sleep(0.02))
    cpu = MeasurementProtocol(**{**sleeping.__dict__, "clock": "thread"}).time_session(
        lambda: time.sleep(0.02)
    )
    assert min(wall) >= 19.0 and max(cpu) < 10.0


@pytest.mark.parametrize("path", ["residency", "mixed", "sum", "never validated"])
def test_batch_prediction_equals_one_by_one_prediction(
    sqlite_store: LatencyStore, path: str
) -> None:
    rng = np.random.default_rng(0)
    fp = DeviceFingerprint("cpu", 1, 1, "os", "onnxruntime", "1", "CPU", 1, "all",
                           cache_bytes=32 * MB)  # fmt: skip
    device = sqlite_store.ensure_device(fp)
    sqlite_store.set_overhead(device.id, 0.004, 0.0, 10)
    blocks = [
        BlockSpec(
            kind=f"test.b{i}", input_shape=(1, 8), output_shape=(1, int(rng.integers(1, 9e5)))
        )
        for i in range(8)
    ]
    sqlite_store.add_entries(
        device.id,
        [
            NewEntry(b.key, "nasvit-block/1", "k", float(warm), 0.1, 10, "p", "1",
                     weight_bytes=int(rng.integers(1, 40)) * MB,
                     cold_median_ms=None if i == 0 else float(warm * rng.uniform(1, 4)))
            for i, (b, warm) in enumerate(zip(blocks, rng.uniform(0.1, 2.0, size=8), strict=True))
        ],
    )  # fmt: skip
    residency = CacheModel(32 * MB, onset=0.7, width=1.5, excess=0.1, overhead_ms=0.004)
    models = {"residency": ("residency",) * 3, "mixed": ("sum", "residency", "sum"),
              "sum": ("sum",) * 3}  # fmt: skip
    if path in models:
        details = {"error_model": _error_model(residency, models[path], 0.004)}
        raw = ErrorStats(5, 30.0, 0.0, 0.2)
        sqlite_store.add_validation(
            device.id, ValidationRecord("s", "nasvit-block/1", raw, details=details)
        )
    table = LatencyTable.load(sqlite_store, device.id)
    networks = [
        [blocks[j] for j in rng.integers(0, 8, size=rng.integers(1, 12))] for _ in range(50)
    ]
    one_by_one = [table.predict(n, confidence=0.8) for n in networks]
    np.testing.assert_allclose(
        table.predict_many(networks), [p.latency_ms for p in one_by_one], rtol=1e-12
    )
    low, high = table.intervals_many(networks, confidence=0.8)
    if path == "never validated":
        assert np.isnan(low).all() and np.isnan(high).all()
        assert all(p.low_ms is None for p in one_by_one)
    else:
        np.testing.assert_allclose(low, [p.low_ms for p in one_by_one], rtol=1e-12)
        np.testing.assert_allclose(high, [p.high_ms for p in one_by_one], rtol=1e-12)
    with pytest.raises(MissingBlocksError):
        table.predict_many([[blocks[0], _block("unknown")]])


def test_replicated_model_runs_each_copy_with_its_own_weights() -> None:
    """A streamed timing's model: ``k`` copies of the block with distinct (slightly scaled)
    weights, side by side or chained, checked with a real onnxruntime session."""
    import onnx
    import onnxruntime as ort

    from nasvit.agent.timing import stream_copies
    from nasvit.latency_db.profilers import export_onnx_bytes
    from nasvit.latency_db.replicate import replicate_onnx

    torch.manual_seed(0)
    block = torch.nn.Sequential(torch.nn.Conv2d(4, 8, 3, padding=1), torch.nn.ReLU()).eval()
    single = export_onnx_bytes(block, (1, 4, 6, 6))
    replicated = replicate_onnx(single, 3)
    model = onnx.load_from_string(replicated)
    onnx.checker.check_model(model)
    assert len(model.graph.output) == 3
    assert len(model.graph.initializer) == 3 * len(onnx.load_from_string(single).graph.initializer)
    session = ort.InferenceSession(replicated, providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).standard_normal((1, 4, 6, 6), np.float32)
    outputs = session.run(None, {session.get_inputs()[0].name: x})
    expected = block(torch.from_numpy(x)).detach().numpy()
    np.testing.assert_allclose(outputs[0], expected, rtol=1e-4, atol=1e-5)
    # Copy i's weights are scaled by 1 + 1e-4 * i: close to, but not bit-equal with, copy 0.
    assert not np.array_equal(outputs[1], outputs[0])
    np.testing.assert_allclose(outputs[2], expected, rtol=1e-2, atol=1e-3)
    with pytest.raises(ValueError, match="copies"):
        replicate_onnx(single, 0)
    # A block that keeps its input's shape is chained, as inside a network: one output.
    same = torch.nn.Sequential(torch.nn.Conv2d(4, 4, 3, padding=1), torch.nn.Tanh()).eval()
    chained = replicate_onnx(export_onnx_bytes(same, (1, 4, 6, 6)), 3)
    session = ort.InferenceSession(chained, providers=["CPUExecutionProvider"])
    (output,) = session.run(None, {session.get_inputs()[0].name: x})
    expected = same(same(same(torch.from_numpy(x)))).detach().numpy()
    np.testing.assert_allclose(output, expected, rtol=1e-2, atol=1e-3)
    # Enough copies for a run of about 1 ms, within [2, max].
    assert stream_copies(0.1, 32, 1.0) == 10
    assert stream_copies(5.0, 32, 1.0) == 2
    assert stream_copies(0.001, 32, 1.0) == 32

"""Which networks a validation measures, how it reads them, and how it splits them.

Selection runs on a real table of synthetic entries (a block's latency grows with its input
size), so the sum model orders networks by size; the order of readings is checked with a
profiler that records its calls; one small validation measures real networks with onnxruntime.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pytest

from nasvit.evaluation.latency import (
    MIN_FIT_NETWORKS,
    SelectedArch,
    _equal_quotas,
    _split,
    measure_readings,
    resolve_device,
    select_validation_archs,
    validate_table,
)
from nasvit.latency_db import (
    LatencyStore,
    LatencyTable,
    Measurement,
    MeasurementProtocol,
    OnnxRuntimeProfiler,
)
from nasvit.latency_db.records import EntryRecord
from nasvit.nn.blocks import BLOCK_KEY_SCHEMA
from nasvit.search_spaces import SearchSpace, get_space

from nasvit_testing.tiny_space import TINY, TINY_CONFIG


@pytest.fixture(scope="module")
def tiny() -> Iterator[SearchSpace]:
    """A few-thousand-parameter efficientformer (resolutions 16 and 32), registered by name
    so the CLI can validate it too."""
    from nasvit.search_spaces import registry
    from nasvit.search_spaces.efficientformer import EfficientFormerSpace

    with pytest.MonkeyPatch.context() as patch:
        patch.setitem(registry._FACTORIES, TINY, lambda: EfficientFormerSpace(TINY_CONFIG))
        yield get_space(TINY)


def synthetic_table(store: LatencyStore, space: SearchSpace) -> LatencyTable:
    """A table of every block of ``space`` whose latency grows with the block's input size."""
    device, _ = resolve_device(store)
    now = datetime.now(UTC)
    entries = {}
    for block in space.enumerate_blocks():
        ms = 1e-3 + 1e-7 * math.prod(block.input_shape)
        entries[block.key] = EntryRecord(
            key=block.key, key_schema=BLOCK_KEY_SCHEMA, kind=block.kind, median_ms=ms,
            iqr_ms=0.0, n=10, profiler="synthetic", runtime_version="0", measured_at=now,
            weight_bytes=1000, cold_median_ms=1.5 * ms,
        )  # fmt: skip
    return LatencyTable(device, entries)


@pytest.fixture(scope="module")
def family_table(tmp_path_factory: pytest.TempPathFactory) -> tuple[SearchSpace, LatencyTable]:
    space = get_space("efficientformer")
    store = LatencyStore.open(f"sqlite:///{tmp_path_factory.mktemp('select') / 'n.db'}")
    return space, synthetic_table(store, space)


# ---------------------------------------------------------------------- selection
def test_selection_holds_the_extremes_and_references_and_spreads_over_the_bands(
    family_table,
) -> None:
    space, table = family_table
    selected = select_validation_archs(space, table, 24, seed=0)
    shorts = [space.short_string(s.arch) for s in selected]
    assert len(selected) == 24 and len(set(shorts)) == 24
    by_origin = {s.origin: s for s in selected}
    assert space.short_string(by_origin["smallest"].arch) == space.short_string(space.smallest())
    assert space.short_string(by_origin["largest"].arch) == space.short_string(space.largest())
    # efficientformer_l7 is the space's largest network: it is there once, as "largest".
    assert space.short_string(space.reference_archs()["efficientformer_l7"]) in shorts
    assert {"reference:efficientformer_l1", "reference:efficientformer_l3"} <= set(by_origin)
    sums = [s.sum_ms for s in selected]
    assert by_origin["smallest"].sum_ms == min(sums) and by_origin["largest"].sum_ms == max(sums)
    assert sums == pytest.approx(list(table.sum_many([space.lower(s.arch) for s in selected])))
    # Equally many stratified networks in every band; bands are log-uniform over the range.
    stratified = Counter(s.band for s in selected if s.origin == "stratified")
    assert (
        sorted(stratified) == [0, 1, 2, 3]
        and max(stratified.values()) - min(stratified.values()) <= 1
    )
    assert by_origin["smallest"].band == 0 and by_origin["largest"].band == 3
    ratio = math.log(max(sums) / min(sums)) / 4
    for chosen in selected:
        expected = min(int(math.log(chosen.sum_ms / min(sums)) / ratio), 3)
        assert abs(chosen.band - expected) <= 1  # edges are float: a neighbour at most
    # Random draws crowd the middle: the smallest band gets far fewer of 20 random networks.
    rng = np.random.default_rng(0)
    random_sums = table.sum_many([space.lower(space.sample(rng)) for _ in range(20)])
    assert (random_sums < min(sums) * math.exp(ratio)).sum() < stratified[0]


def test_selection_respects_resolutions_and_exclusions_and_is_seeded(family_table) -> None:
    space, table = family_table
    selected = select_validation_archs(space, table, 12, seed=1, resolutions=[32, 64])
    assert {s.arch["resolution"] for s in selected} <= {32, 64}
    origins = [s.origin for s in selected]
    assert not any(o.startswith("reference:") for o in origins)  # published at 224
    by_origin = {s.origin: s for s in selected}
    assert by_origin["smallest"].arch["resolution"] == 32
    assert by_origin["largest"].arch["resolution"] == 64
    assert selected == select_validation_archs(space, table, 12, seed=1, resolutions=[32, 64])
    other = select_validation_archs(space, table, 12, seed=2, resolutions=[32, 64])
    assert [s.arch for s in other] != [s.arch for s in selected]

    used = {space.short_string(s.arch) for s in selected}
    fresh = select_validation_archs(space, table, 12, seed=1, resolutions=[32, 64], exclude=used)
    assert len(fresh) == 12 and not used & {space.short_string(s.arch) for s in fresh}
    assert {s.origin for s in fresh} == {"stratified"}  # the extremes were excluded


def test_a_small_space_gives_what_it_has(family_table) -> None:
    space, table = family_table
    narrow = space.restrict(
        resolution=[32], widths=[[16], [32], [64], [128]], depths=[[1], [1], [1], [1]],
        vit_num=[0], mlp_ratio=[3, 4],
    )  # fmt: skip
    selected = select_validation_archs(narrow, table, 40, seed=0)
    assert narrow.size() == 16  # 2 MLP ratios in each of 4 blocks
    assert len(selected) == 16 == len({narrow.short_string(s.arch) for s in selected})


def test_quotas_are_equal_as_far_as_the_bands_hold_networks() -> None:
    assert _equal_quotas([10, 10, 10, 10], 8) == [2, 2, 2, 2]
    assert _equal_quotas([1, 10, 10, 0], 12) == [1, 6, 5, 0]
    assert _equal_quotas([2, 3], 10) == [2, 3]
    assert _equal_quotas([5, 5], 0) == [0, 0]


# ---------------------------------------------------------------------- split
def _selected(origin: str, sum_ms: float, band: int) -> SelectedArch:
    return SelectedArch(arch=None, origin=origin, sum_ms=sum_ms, band=band)  # type: ignore[arg-type]


def test_the_fixed_networks_are_judged_and_the_others_alternate_per_band() -> None:
    selected = [
        _selected("smallest", 0.1, 0),
        _selected("largest", 9.0, 3),
        _selected("reference:x", 2.0, 2),
        *(_selected("stratified", ms, band) for band, ms in
          [(0, 0.3), (0, 0.2), (0, 0.4), (1, 1.0), (1, 1.1), (2, 2.5), (3, 5.0), (3, 6.0)]),
    ]  # fmt: skip
    judged = _split(selected)
    assert judged[:3] == [True, True, True]
    roles = {(s.band, s.sum_ms): j for s, j in zip(selected, judged, strict=True)}
    # In order of band and sum: fit, judged, fit, ... running on across bands.
    assert [roles[0, ms] for ms in (0.2, 0.3, 0.4)] == [False, True, False]
    assert [roles[1, ms] for ms in (1.0, 1.1)] == [True, False]
    assert roles[2, 2.5] is True and [roles[3, ms] for ms in (5.0, 6.0)] == [False, True]
    # Bands of one network each still give both sets.
    singles = [_selected("stratified", 10.0**band, band) for band in range(4)]
    assert _split(singles) == [False, False, False, True]  # at least three fitted on
    pairs = [_selected("stratified", k * 10.0**band, band) for band in range(4) for k in (1, 2)]
    assert _split(pairs) == [False, True] * 4


def test_at_least_three_networks_are_fitted_on() -> None:
    selected = [
        _selected("smallest", 0.1, 0),
        _selected("largest", 9.0, 3),
        *(_selected("stratified", ms, 1) for ms in (1.0, 1.2, 1.4, 1.6)),
    ]
    judged = _split(selected)
    assert judged.count(False) == MIN_FIT_NETWORKS and judged[:2] == [True, True]


# ---------------------------------------------------------------------- readings
class RecordingProfiler:
    """Records what it prepares and measures; a network reads as its parameter count."""

    def __init__(self) -> None:
        self.protocol = MeasurementProtocol.quick()
        self.prepared: list[int] = []
        self.measured: list[tuple[int, int]] = []  # (network, sessions of the protocol)

    def prepare(self, model: Any, input_shape: Any = None) -> int:
        size = sum(p.numel() for p in model.parameters())
        self.prepared.append(size)
        return size

    def measure(self, prepared: int, input_shape: Any = None) -> Measurement:
        self.measured.append((prepared, self.protocol.sessions))
        reading = prepared * (1 + 0.01 * len(self.measured))  # later readings are slower
        return Measurement.from_sessions([[reading, reading + 1.0]])


def test_readings_are_k_fresh_sessions_per_network_interleaved(tiny) -> None:
    archs = [
        tiny.smallest(),
        tiny.largest(),
        *[tiny.sample(np.random.default_rng(i)) for i in range(4)],
    ]
    sizes = [sum(p.numel() for p in tiny.build_subnet(a).parameters()) for a in archs]
    assert len(set(sizes)) == len(archs)  # the record tells them apart
    profiler = RecordingProfiler()
    steps: list[tuple[int, int]] = []
    results = measure_readings(
        tiny, profiler, archs, 3, seed=5, progress=lambda *step: steps.append(step)
    )
    # with_protocol copies the profiler: the lists are shared, the protocol is the copy's.
    assert sorted(profiler.prepared) == sorted(sizes)  # each exported once
    order = [size for size, _ in profiler.measured]
    assert {sessions for _, sessions in profiler.measured} == {1}  # one reading, one session
    assert Counter(order) == Counter(sizes * 3)
    # Three rounds, each visiting every network once, in shuffled orders.
    rounds = [order[i * len(archs) : (i + 1) * len(archs)] for i in range(3)]
    assert all(sorted(r) == sorted(sizes) for r in rounds)
    assert rounds[0] != sizes and len({tuple(r) for r in rounds}) > 1
    for size, (medians, calls) in zip(sizes, results, strict=True):
        positions = [i + 1 for i, s in enumerate(order) if s == size]
        assert medians == pytest.approx([size * (1 + 0.01 * p) + 0.5 for p in positions])
        assert sorted(calls) == sorted(c for m in medians for c in (m - 0.5, m + 0.5))
    assert steps[-1] == (4 * len(archs), 4 * len(archs)) and len(steps) == 4 * len(archs)
    again = RecordingProfiler()
    measure_readings(tiny, again, archs, 3, seed=5)
    assert [s for s, _ in again.measured] == order
    other = RecordingProfiler()
    measure_readings(tiny, other, archs, 3, seed=6)
    assert [s for s, _ in other.measured] != order


def test_readings_must_be_positive(tiny) -> None:
    from nasvit.errors import NasvitError

    with pytest.raises(NasvitError, match="readings must be at least 1") as raised:
        measure_readings(tiny, RecordingProfiler(), [tiny.smallest()], 0)
    assert raised.value.argument == "readings"


# ---------------------------------------------------------------------- end to end
def test_a_validation_fits_on_some_networks_and_judges_the_others(tiny, tmp_path) -> None:
    """Real networks on onnxruntime: the tiny space's blocks are measured, then 8 networks
    read twice each; the extremes are judged, the fit and judged sets are disjoint, and later
    predictions carry the intervals."""
    store = LatencyStore.open(f"sqlite:///{tmp_path / 'e2e.db'}")
    device, _ = resolve_device(store)
    quick = MeasurementProtocol.quick()
    profiler = OnnxRuntimeProfiler(threads=1, protocol=quick)
    space = tiny.restrict(resolution=[16])
    record = validate_table(
        space, store, profiler, device, 8, seed=2, readings=2, network_protocol=quick
    )
    networks = record.details["networks"]
    assert len(networks) == 8 and record.raw.n == 8 and record.details["readings"] == 2
    roles = {n["origin"]: n["role"] for n in networks}
    assert roles["smallest"] == roles["largest"] == "judged"
    fit = {n["arch"] for n in networks if n["role"] == "fit"}
    judged = {n["arch"] for n in networks if n["role"] == "judged"}
    assert not fit & judged and len(fit) + len(judged) == 8
    assert record.n_fit == len(fit) >= 3 and record.error_model.judged.n == len(judged)
    for network in networks:
        assert len(network["readings_ms"]) == 2 and network["readings_ms"][0] > 0
        assert network["truth_ms"] == pytest.approx(np.median(network["readings_ms"]))
        assert 0 < network["low_ms"] < network["high_ms"]  # may lie wholly above the point
        assert network["predicted_ms"] >= network["sum_ms"] * (1 - 1e-9)  # the lower bound
    assert record.noise_ceiling is not None and record.noise_ceiling.n == 8
    assert store.latest_validation(device.id) == record

    table = LatencyTable.load(store, device.id, space.identity)
    prediction = table.predict(space.lower(space.smallest()))
    assert table.validated and prediction.low_ms is not None and prediction.high_ms is not None
    assert "interval" in prediction.error_text and "never validated" not in prediction.error_text

    # Too few networks for the fixed ones and a fit set: n is raised, not the split broken.
    small = validate_table(
        space, store, profiler, device, 1, seed=3, readings=1, network_protocol=quick
    )
    assert small.raw.n == 2 + MIN_FIT_NETWORKS and small.n_fit == MIN_FIT_NETWORKS
    assert small.noise_ceiling is None  # one reading each: no spread to judge the truth by

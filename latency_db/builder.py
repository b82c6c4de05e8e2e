"""Fill a device's latency table: measure the blocks it lacks, in small committed batches.

Protocol (see docs/latency.md):
    - only keys without an entry are measured, so a rerun after an interruption continues where
      the last committed batch ended, and two builders never duplicate rows (the store ignores
      keys that already exist; each batch is also re-checked before it is measured);
    - block order is shuffled (seeded), so slow drifts of the machine spread over all block
      kinds instead of biasing one;
    - a reference block is re-timed after every batch; if it drifted more than
      ``drift_tolerance`` from its first timing, the batch is measured again (at most
      ``max_remeasures`` times, then kept and counted in the report);
    - the per-call overhead of an empty model is measured once per device;
    - every entry stores the block's weight bytes, and blocks whose weights exceed
      ``cold_min_bytes`` also get a streamed (cold-cache) timing (profilers with
      ``measure_warm_cold``; see :mod:`nasvit.latency_db.replicate` and
      :mod:`nasvit.latency_db.cache`).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from nasvit.agent.measurement import Measurement
from nasvit.agent.timing import measure_with_drift_check
from nasvit.latency_db.profilers import Profiler
from nasvit.latency_db.records import DeviceRecord, NewEntry, timing_values
from nasvit.latency_db.replicate import COLD_PROTOCOL
from nasvit.latency_db.store import LatencyStore
from nasvit.nn.blocks import BLOCK_KEY_SCHEMA, BlockSpec

#: Blocks with fewer weight bytes get no cold timing: their cold-warm gap is small (it is taken
#: as zero) and the cold protocol costs a cache flush per timed run.
DEFAULT_COLD_MIN_BYTES = 0

#: Blocks per batch: per committed batch and per re-timing of the drift reference. Agents
#: claim this many per lease, so a table they build is drift-checked the same way.
DEFAULT_BATCH_SIZE = 32

#: Called after each block with (blocks done, blocks to do).
ProgressCallback = Callable[[int, int], None]


@dataclass(frozen=True)
class BuildReport:
    """What a build did.

    Attributes:
        device: the device name.
        requested: distinct keys asked for.
        already_present: keys that had an entry before the build.
        measured: blocks measured (each counted once, however often its batch was re-measured).
        inserted: rows this build added (fewer than measured if a concurrent builder won).
        batches: batches measured.
        remeasured_batches: batch re-measurements caused by reference drift.
        accepted_drifts: batches kept although the reference still drifted after re-measuring.
        max_drift: largest relative drift of the reference block seen.
        overhead_ms: the device's per-call overhead.
        elapsed_s: wall time of the build.
        refreshed: present entries re-measured because their cold timing came from another
            protocol (:data:`~nasvit.latency_db.replicate.COLD_PROTOCOL`) or was missing.
    """

    device: str
    requested: int
    already_present: int
    measured: int
    inserted: int
    batches: int
    remeasured_batches: int
    accepted_drifts: int
    max_drift: float
    overhead_ms: float | None
    elapsed_s: float
    refreshed: int = 0


def _pick_reference(blocks: Sequence[BlockSpec]) -> BlockSpec:
    """A mid-sized block, chosen deterministically (median input size, ties by key), so its
    timing is neither dominated by per-call overhead nor slow to repeat."""
    ordered = sorted(blocks, key=lambda b: (int(np.prod(b.input_shape)), b.key))
    return ordered[len(ordered) // 2]


def _keys_to_measure(
    store: LatencyStore,
    profiler: Profiler,
    device_id: str,
    keys: Sequence[str],
    cold_min_bytes: int | None,
) -> tuple[set[str], set[str]]:
    """(missing, stale): keys without an entry, and present keys whose cold timing this
    profiler would now take differently (see :data:`COLD_PROTOCOL`)."""
    missing = set(store.missing_keys(device_id, keys))
    if cold_min_bytes is None or getattr(profiler, "measure_warm_cold", None) is None:
        return missing, set()
    return missing, set(store.stale_cold_keys(device_id, keys, cold_min_bytes, COLD_PROTOCOL))


def _measure(
    profiler: Profiler, item: Any, cold_min_bytes: int | None, overhead_ms: float
) -> tuple[Measurement, Measurement | None]:
    weight_bytes = getattr(item, "weight_bytes", None)
    measure_both = getattr(profiler, "measure_warm_cold", None)
    if (
        measure_both is not None
        and cold_min_bytes is not None
        and weight_bytes is not None
        and weight_bytes > cold_min_bytes
    ):
        warm_and_cold: tuple[Measurement, Measurement | None] = measure_both(
            item, call_overhead_ms=overhead_ms
        )
        return warm_and_cold
    return profiler.measure(item), None


def build_table(
    store: LatencyStore,
    profiler: Profiler,
    device: DeviceRecord,
    blocks: Sequence[BlockSpec],
    *,
    batch_size: int = DEFAULT_BATCH_SIZE,
    drift_tolerance: float = 0.05,
    max_remeasures: int = 2,
    seed: int = 0,
    progress: ProgressCallback | None = None,
    cold_min_bytes: int | None = DEFAULT_COLD_MIN_BYTES,
) -> BuildReport:
    """Measure the blocks of ``blocks`` that ``device`` has no entry for and store them;
    re-measure (and overwrite) measured entries whose cold timing is stale (see
    :data:`~nasvit.latency_db.replicate.COLD_PROTOCOL`).

    Args:
        store: where entries go (committed after every batch).
        profiler: must be configured as ``device`` describes (the caller checks).
        device: the stored device the entries belong to.
        blocks: block specs; repeats of a key are measured once.
        batch_size: blocks per committed batch (and per reference re-timing).
        drift_tolerance: relative change of the reference timing that triggers a re-measure.
        max_remeasures: re-measurements per batch before a drifting batch is kept anyway.
        seed: seeds the block order.
        progress: called after every block with (done, total).
        cold_min_bytes: blocks with more weight bytes than this also get a cold timing; None
            measures warm only.
    """
    started = time.perf_counter()
    unique = list({b.key: b for b in blocks}.values())
    missing, stale = _keys_to_measure(
        store, profiler, device.id, [b.key for b in unique], cold_min_bytes
    )
    todo = [b for b in unique if b.key in missing or b.key in stale]
    np.random.default_rng(seed).shuffle(todo)

    overhead = device.overhead_ms
    if overhead is None:
        measured_overhead = profiler.measure_overhead()
        overhead = measured_overhead.median_ms
        store.set_overhead(device.id, overhead, measured_overhead.iqr_ms, measured_overhead.n)

    measured = inserted = refreshed = batches = remeasured = accepted = 0
    max_drift = 0.0
    if todo:
        reference = profiler.prepare(_pick_reference(unique))
        baseline = profiler.measure(reference).median_ms
        if progress:
            progress(0, len(todo))
        for start in range(0, len(todo), batch_size):
            batch = todo[start : start + batch_size]
            # Another builder may have filled (or refreshed) some keys since we listed them.
            still_missing, still_stale = _keys_to_measure(
                store, profiler, device.id, [b.key for b in batch], cold_min_bytes
            )
            batch = [b for b in batch if b.key in still_missing or b.key in still_stale]
            if not batch:
                if progress:
                    progress(min(start + batch_size, len(todo)), len(todo))
                continue
            prepared = [profiler.prepare(b) for b in batch]

            def measured_one(index: int, first: int = start) -> None:
                if progress:
                    progress(min(first + index + 1, len(todo)), len(todo))

            outcome = measure_with_drift_check(
                prepared,
                lambda item: _measure(profiler, item, cold_min_bytes, overhead),
                lambda: profiler.measure(reference).median_ms,
                baseline,
                tolerance=drift_tolerance,
                max_remeasures=max_remeasures,
                on_measured=measured_one,
            )
            results = outcome.results
            max_drift = max(max_drift, outcome.max_drift)
            remeasured += outcome.remeasured
            accepted += int(outcome.accepted)
            entries = [
                NewEntry(
                    key=b.key,
                    key_schema=BLOCK_KEY_SCHEMA,
                    kind=b.kind,
                    profiler=profiler.name,
                    runtime_version=profiler.settings.version,
                    weight_bytes=getattr(item, "weight_bytes", None),
                    cold_protocol=None if cold is None else COLD_PROTOCOL,
                    **timing_values(warm, cold),
                )
                for b, item, (warm, cold) in zip(batch, prepared, results, strict=True)
            ]
            renewed = [e for e in entries if e.key in still_stale]
            inserted += store.add_entries(
                device.id, [e for e in entries if e.key not in still_stale]
            )
            if renewed:
                store.add_entries(device.id, renewed, replace=True)
                refreshed += len(renewed)
            measured += len(batch)
            batches += 1
        if progress:
            progress(len(todo), len(todo))

    return BuildReport(
        device=device.name,
        requested=len(unique),
        already_present=len(unique) - len(missing),
        measured=measured,
        inserted=inserted,
        batches=batches,
        remeasured_batches=remeasured,
        accepted_drifts=accepted,
        max_drift=max_drift,
        overhead_ms=overhead,
        elapsed_s=time.perf_counter() - started,
        refreshed=refreshed,
    )

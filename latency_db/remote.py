"""Measuring on a remote device: work items for its agents, and waiting for their results.

A device registered by an agent (``nasvit agent``) is *agent-managed*: its blocks, validation
networks and end-to-end candidates are timed there, never on the machine running the search.
:class:`AgentMeasurer` is the search side of that: it exports what must be timed (this needs
torch, which the device does not have), queues it (:mod:`nasvit.latency_db.work`), and waits,
reporting progress, until the agents have uploaded every result. A device whose agents stay
silent longer than ``timeout_s`` fails the wait with :class:`~nasvit.errors.DeviceSilentError`.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Iterable, Sequence
from datetime import datetime

import numpy as np

from nasvit.agent.measurement import MeasurementProtocol
from nasvit.errors import DeviceSilentError, NasvitError
from nasvit.latency_db.builder import (
    DEFAULT_BATCH_SIZE,
    DEFAULT_COLD_MIN_BYTES,
    BuildReport,
    _pick_reference,
)
from nasvit.latency_db.profilers import (
    OVERHEAD_COPIES,
    onnx_bytes,
    onnx_weight_bytes,
    overhead_models,
)
from nasvit.latency_db.readings import NetworkModel, Readings, StepCallback, reading_rounds
from nasvit.latency_db.records import DeviceRecord
from nasvit.latency_db.replicate import COLD_PROTOCOL
from nasvit.latency_db.store import LatencyStore
from nasvit.latency_db.work import MAX_ATTEMPTS, BlockModel, NetworkJob, WorkQueue
from nasvit.nn.blocks import BlockSpec
from nasvit.sql import aware, utcnow

#: Blocks exported and queued together: an agent's lease (the builder's batch) at a time.
ENQUEUE_CHUNK = DEFAULT_BATCH_SIZE
#: Shape of the overhead measurement's models (as ``OnnxRuntimeProfiler.measure_overhead``).
OVERHEAD_SHAPE = (1, 8, 8, 8)


def _block_model(block: BlockSpec, cold_min_bytes: int) -> BlockModel:
    model = onnx_bytes(block, block.input_shape)
    weight_bytes = onnx_weight_bytes(model)
    return BlockModel(
        key=block.key,
        kind=block.kind,
        model=model,
        input_shape=tuple(block.input_shape),
        weight_bytes=weight_bytes,
        cold=weight_bytes > cold_min_bytes,
    )


class AgentMeasurer:
    """Times on an agent-managed device through its work queue.

    Args:
        store: the latency database the device's server hands work out from.
        device: the device (agent-managed).
        timeout_s: how long the agents may stay silent while work waits.
        poll_s: how often the wait looks at the queue (and calls ``progress``, where a job's
            cancellation is noticed).
        space: the space identity asking (shown in the device's coverage).
    """

    def __init__(
        self,
        store: LatencyStore,
        device: DeviceRecord,
        *,
        timeout_s: float,
        poll_s: float = 0.5,
        space: str | None = None,
    ):
        self.store = store
        self.queue = WorkQueue(store)
        self.device = device
        self.timeout_s = timeout_s
        self.poll_s = poll_s
        self.space = space

    @property
    def name(self) -> str:
        return self.device.name

    def waiting(self, what: str) -> str:
        """The progress stage of a wait for this device's agents: ``"waiting for device pi:
        blocks"`` (shown with the counts before the unit: ``120/171 blocks``)."""
        return f"waiting for device {self.name}: {what}"

    def _check_alive(self, started: datetime, pending: str) -> None:
        """Raise if no agent of the device was seen within ``timeout_s`` (counted from the
        start of this wait when the last sighting is older)."""
        seen = aware(self.store.device(self.device.id).last_seen_at)
        since = max(seen, started) if seen is not None else started
        silent = (utcnow() - since).total_seconds()
        if silent > self.timeout_s:
            raise DeviceSilentError(self.device.name, silent, pending)

    def _wait(
        self,
        remaining: Callable[[], int],
        total: int,
        pending: str,
        progress: StepCallback | None,
        kind: str,
        batch: str | None = None,
    ) -> None:
        started = utcnow()
        while True:
            left = remaining()
            if progress:
                progress(total - left, total)
            if left == 0:
                return
            self._check_alive(started, pending)
            failed = self.queue.given_up(self.device.id, kind, batch)
            if failed:
                raise NasvitError(
                    f"the agents of device '{self.device.name}' took {len(failed)} {kind} "
                    f"item(s) {MAX_ATTEMPTS} times each without uploading a result (first: "
                    f"{failed[0].key}, last taken by {failed[0].leased_by}); see that agent's "
                    "log: the device's runtime may not run the model"
                )
            time.sleep(self.poll_s)

    def fill(
        self,
        blocks: Sequence[BlockSpec],
        *,
        seed: int = 0,
        progress: StepCallback | None = None,
        cold_min_bytes: int = DEFAULT_COLD_MIN_BYTES,
    ) -> BuildReport:
        """Queue the blocks the device's table lacks (and those whose streamed timing is from
        another protocol), in a seeded shuffled order as the local builder measures them, and
        wait until the agents have timed them all. The device's per-call overhead is queued
        first when unknown: streamed timings need it. The report's drift figures are the
        agents' own (they re-measure drifting batches) and read zero here."""
        started = time.perf_counter()
        unique = list({b.key: b for b in blocks}.values())
        keys = [b.key for b in unique]
        device_id = self.device.id
        missing = set(self.store.missing_keys(device_id, keys))
        stale = set(self.store.stale_cold_keys(device_id, keys, cold_min_bytes, COLD_PROTOCOL))
        todo = [b for b in unique if b.key in missing or b.key in stale]
        if self.store.device(device_id).overhead_ms is None:
            single, chained = overhead_models(OVERHEAD_SHAPE)
            self.queue.enqueue_overhead(device_id, single, chained, OVERHEAD_SHAPE, OVERHEAD_COPIES)
        if not todo:
            return self._report(unique, missing, 0, stale, started)
        np.random.default_rng(seed).shuffle(todo)
        reference = _block_model(_pick_reference(unique), cold_min_bytes)
        # Queued a chunk at a time as they are exported: the agents start on the first
        # chunk while the rest are exported, as a remote device would.
        for start in range(0, len(todo), ENQUEUE_CHUNK):
            chunk = todo[start : start + ENQUEUE_CHUNK]
            self.queue.enqueue_blocks(
                device_id,
                [_block_model(b, cold_min_bytes) for b in chunk],
                reference,
                self.space,
                replace_keys=stale & {b.key for b in chunk},
            )
        wanted = [b.key for b in todo]

        def remaining() -> int:
            left = set(self.store.missing_keys(device_id, wanted))
            if stale:
                left |= set(
                    self.store.stale_cold_keys(
                        device_id, list(stale), cold_min_bytes, COLD_PROTOCOL
                    )
                )
            return len(left)

        self._wait(remaining, len(todo), f"{len(todo)} blocks", progress, "block")
        return self._report(unique, missing, len(todo), stale, started)

    def _report(
        self,
        unique: Sequence[BlockSpec],
        missing: set[str],
        measured: int,
        stale: set[str],
        started: float,
    ) -> BuildReport:
        return BuildReport(
            device=self.device.name,
            requested=len(unique),
            already_present=len(unique) - len(missing),
            measured=measured,
            inserted=measured - len(stale) if measured else 0,
            batches=0,
            remeasured_batches=0,
            accepted_drifts=0,
            max_drift=0.0,
            overhead_ms=self.store.device(self.device.id).overhead_ms,
            elapsed_s=time.perf_counter() - started,
            refreshed=len(stale) if measured else 0,
        )

    def read_networks(
        self,
        models: Iterable[NetworkModel],
        count: int,
        readings: int,
        *,
        seed: int = 0,
        protocol: MeasurementProtocol | None = None,
        progress: StepCallback | None = None,
    ) -> list[Readings]:
        """The :class:`~nasvit.latency_db.readings.NetworkReader` schedule, read by the agents:
        one work item per reading, queued round by round, so agents claiming in queue order
        interleave the readings as a local run does."""
        base = protocol or MeasurementProtocol.network()
        one_session = dataclasses.replace(base, sessions=1)
        steps = count * (1 + readings)
        jobs = []
        for model, shape in models:
            jobs.append(NetworkJob(onnx_bytes(model, shape), tuple(shape)))
            if progress:
                progress(len(jobs), steps)
        if len(jobs) != count:
            raise ValueError(f"expected {count} networks, got {len(jobs)}")
        batch = self.queue.enqueue_networks(
            self.device.id,
            jobs,
            readings,
            reading_rounds(count, readings, seed),
            self.space,
            protocol=one_session,
        )
        try:

            def remaining() -> int:
                done, total = self.queue.progress(self.device.id, "network", batch)
                return total - done

            self._wait(
                remaining,
                count * readings,
                f"{count * readings} network readings",
                None if progress is None else lambda done, _total: progress(count + done, steps),
                "network",
                batch,
            )
            results = self.queue.network_results(batch)
        finally:
            self.queue.discard_batch(batch)
        readings_of: list[Readings] = []
        for network in results:
            assert network is not None  # the wait ended with every reading done
            medians = tuple(float(r["reading"]["median_ms"]) for r in network)
            calls = tuple(float(c) for r in network for c in r["runs_ms"])
            readings_of.append((medians, calls))
        return readings_of

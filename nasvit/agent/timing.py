"""Timing ONNX models with onnxruntime: the one protocol behind ``nasvit profile`` and the agent.

Every latency in a table comes from this module, whether the blocks were timed by the
search host (``nasvit.latency_db.OnnxRuntimeProfiler`` delegates here) or by an agent on the
device, so both tables are measured the same way:

- *warm*: ``protocol.sessions`` fresh sessions, each warmed up then timed
  (:meth:`MeasurementProtocol.time_session`);
- *streamed* (cold): a model of ``k`` copies of a block, each call after a cache flush, stored
  per copy (see ``nasvit.latency_db.replicate``, which builds that model);
- *overhead*: a tiny block alone and as chained copies, in pairs of fresh sessions;
- *drift check*: a reference block re-timed after each batch, the batch measured again while
  the reference moved more than a tolerance.

Imports: the standard library, numpy and onnxruntime only (a device has no torch).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from functools import partial
from typing import Any, Generic, TypeVar

import numpy as np

from nasvit.agent.hardware import CacheFlusher
from nasvit.agent.measurement import Measurement, MeasurementProtocol

OPTIMIZATION_LEVELS = ("disable", "basic", "extended", "all")
#: A streamed timing runs enough copies of a block for one run to last about this long, at most
#: this many copies.
STREAM_RUN_MS = 1.0
MAX_STREAM_COPIES = 32
#: Execution providers by the short name agents and users give.
PROVIDERS = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider"}


def feed_value(shape: Sequence[int]) -> np.ndarray:
    """The input every timing feeds: seeded, so every session sees the same values."""
    return np.random.default_rng(0).standard_normal(tuple(shape), np.float32)


def stream_copies(
    warm_ms: float, max_copies: int = MAX_STREAM_COPIES, min_run_ms: float = STREAM_RUN_MS
) -> int:
    """How many copies a streamed timing runs: enough for one run of them to last about
    ``min_run_ms`` (judged by the warm timing; streamed runs are slower), at least two and at
    most ``max_copies``. The copies need not outgrow the cache: every timed run starts after a
    cache flush, so each copy's weights come from DRAM anyway."""
    return max(2, min(max_copies, int(np.ceil(min_run_ms / max(warm_ms, 1e-6)))))


def ort_session_options(threads: int, optimization: str) -> Any:
    """onnxruntime options for timing: explicit intra-op threads, one inter-op thread,
    sequential execution, the given graph optimisation level, warnings silenced."""
    import onnxruntime as ort

    levels = {
        "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
        "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
        "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
    }
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = levels[optimization]
    options.log_severity_level = 3
    return options


def default_clock(threads: int, provider: str) -> str:
    """The thread clock with one thread on the CPU (the sequential executor runs the graph on
    the calling thread, and its CPU time leaves out what neighbours took), wall time otherwise
    (see :attr:`MeasurementProtocol.clock`)."""
    return "thread" if threads == 1 and provider == PROVIDERS["cpu"] else "wall"


class OrtTimer:
    """Times ONNX models (bytes) in fresh onnxruntime sessions on one provider.

    Raises ValueError for settings the protocol cannot honour (bad optimisation level, threads
    below one, the thread clock with several threads) and RuntimeError when the provider is
    missing from this onnxruntime build.
    """

    def __init__(
        self,
        threads: int = 1,
        optimization: str = "all",
        provider: str = PROVIDERS["cpu"],
        protocol: MeasurementProtocol | None = None,
        clock: str | None = None,
    ):
        import onnxruntime as ort

        if optimization not in OPTIMIZATION_LEVELS:
            raise ValueError(
                f"unknown graph optimisation level '{optimization}'; "
                f"known: {', '.join(OPTIMIZATION_LEVELS)}"
            )
        if threads < 1:
            raise ValueError(f"threads must be >= 1, got {threads}")
        if provider not in ort.get_available_providers():
            raise RuntimeError(f"onnxruntime {ort.__version__} has no {provider} on this machine")
        self.clock = clock or default_clock(threads, provider)
        if self.clock == "thread" and threads != 1:
            raise ValueError("the thread clock only measures single-threaded runs")
        self.ort = ort
        self.threads = threads
        self.optimization = optimization
        self.provider = provider
        self.protocol = replace(protocol or MeasurementProtocol(), clock=self.clock)
        self._flusher: CacheFlusher | None = None

    @property
    def version(self) -> str:
        return str(self.ort.__version__)

    @property
    def flusher(self) -> CacheFlusher:
        """The cache flusher of streamed timings (allocated on first use: 2x the LLC)."""
        if self._flusher is None:
            self._flusher = CacheFlusher()
        return self._flusher

    @flusher.setter
    def flusher(self, flusher: CacheFlusher) -> None:
        self._flusher = flusher

    def with_protocol(self, protocol: MeasurementProtocol) -> OrtTimer:
        """The same runtime settings, timing with ``protocol`` (its clock stays this one's)."""
        clone = OrtTimer.__new__(OrtTimer)
        clone.__dict__.update(self.__dict__)
        clone.protocol = replace(protocol, clock=self.clock)
        return clone

    def session(self, model: bytes) -> Any:
        options = ort_session_options(self.threads, self.optimization)
        return self.ort.InferenceSession(model, options, providers=[self.provider])

    def measure(self, model: bytes, shape: Sequence[int]) -> Measurement:
        """Warm timing: ``protocol.sessions`` fresh sessions of ``model``."""
        value = feed_value(shape)
        runs = []
        for _ in range(self.protocol.sessions):
            session = self.session(model)
            feed = {session.get_inputs()[0].name: value}
            runs.append(self.protocol.time_session(partial(session.run, None, feed)))
        return Measurement.from_sessions(runs)

    def measure_streamed(
        self, replicated: bytes, shape: Sequence[int], copies: int, call_overhead_ms: float
    ) -> Measurement:
        """Streamed timing of a block from a model of ``copies`` copies of it: each timed call
        follows a cache flush, and is stored per copy as ``(run - overhead) / copies +
        overhead``, so warm and streamed entries add up the same way."""
        session = self.session(replicated)
        feed = {session.get_inputs()[0].name: feed_value(shape)}
        runs = self.protocol.time_flushed_runs(lambda: session.run(None, feed), self.flusher)
        per_call = [(t - call_overhead_ms) / copies + call_overhead_ms for t in runs]
        return Measurement.from_sessions([per_call])

    def measure_overhead(
        self, single: bytes, chained: bytes, shape: Sequence[int], copies: int
    ) -> Measurement:
        """What a network saves per block by running its blocks in one call.

        A tiny block is timed alone (``t1``) and as ``copies`` chained copies in one model
        (``tk``), in pairs of fresh sessions: ``k * t1`` pays the per-call cost ``k`` times,
        ``tk`` once, so each pair of runs gives ``(k * t1 - tk) / (k - 1)``. Why not an empty
        model: its call does not overlap work as a block's call does, and an overhead that is
        too large puts small networks far below their measured latency.
        """
        value = feed_value(shape)
        per_session = []
        for _ in range(self.protocol.sessions):  # a pair of fresh sessions each
            runs = []
            for model in (single, chained):
                session = self.session(model)
                feed = {session.get_inputs()[0].name: value}
                runs.append(self.protocol.time_session(partial(session.run, None, feed)))
            # One estimate per pair of runs; the summary's median absorbs their noise.
            per_session.append([
                (copies * one - many) / (copies - 1) for one, many in zip(*runs, strict=False)
            ])  # fmt: skip
        measured = Measurement.from_sessions(per_session)
        return replace(measured, median_ms=max(measured.median_ms, 0.0))


Item = TypeVar("Item")
Result = TypeVar("Result")


@dataclass(frozen=True)
class DriftOutcome(Generic[Result]):
    """A batch measured under the drift check.

    Attributes:
        results: one per item, from the last attempt.
        drift: the reference's relative change after the last attempt.
        max_drift: the largest change seen over the attempts.
        remeasured: attempts repeated because the reference drifted.
        accepted: whether the batch was kept although the reference still drifted.
    """

    results: list[Result]
    drift: float
    max_drift: float
    remeasured: int
    accepted: bool


def measure_with_drift_check(
    items: Sequence[Item],
    measure_one: Callable[[Item], Result],
    reference_ms: Callable[[], float],
    baseline_ms: float,
    *,
    tolerance: float = 0.05,
    max_remeasures: int = 2,
    on_measured: Callable[[int], None] | None = None,
) -> DriftOutcome[Result]:
    """Measure every item, then re-time the reference; while it moved more than ``tolerance``
    from ``baseline_ms``, measure the batch again (at most ``max_remeasures`` times, then keep
    it and say so). Why: a machine that slows down mid-batch (a neighbour, thermal throttling)
    would bias just the blocks of that batch; the reference shows it.

    ``on_measured(i)`` is called after item ``i`` of the first attempt (progress)."""
    remeasured = 0
    worst = 0.0
    for attempt in range(max_remeasures + 1):
        results = []
        for index, item in enumerate(items):
            results.append(measure_one(item))
            if on_measured is not None and attempt == 0:
                on_measured(index)
        drift = abs(reference_ms() / baseline_ms - 1.0)
        worst = max(worst, drift)
        if drift <= tolerance:
            return DriftOutcome(results, drift, worst, remeasured, accepted=False)
        if attempt < max_remeasures:
            remeasured += 1
    return DriftOutcome(results, drift, worst, remeasured, accepted=True)

"""What one latency measurement is and the protocol that produces it.

Numbers on a shared CPU are noisy and skewed (a few slow runs pull the mean up), so a
measurement is the *median of per-session medians* over several fresh sessions, with the IQR of
all timed runs and the run count kept next to it (latency.md: mean ~2.6% above median, IQR/median
1.3-8% while std/mean is 7-18%).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class Measurement:
    """Latency statistics of one model at one input shape, in milliseconds.

    Attributes:
        median_ms: median over sessions of each session's median run time.
        iqr_ms: inter-quartile range of all timed runs pooled over sessions.
        n: number of timed runs in total (warm-up runs excluded).
        sessions: number of fresh sessions the runs were spread over.
        session_medians_ms: each session's median, in measurement order.
        runs_ms: every timed run, pooled over sessions (kept in memory for percentile budgets,
            not stored with table entries).
    """

    median_ms: float
    iqr_ms: float
    n: int
    sessions: int
    session_medians_ms: tuple[float, ...] = ()
    runs_ms: tuple[float, ...] = field(default=(), repr=False, compare=False)

    def percentile_ms(self, percentile: float) -> float:
        """The given percentile (0-100) of the pooled timed runs."""
        if not self.runs_ms:
            raise ValueError("this measurement kept no runs")
        return float(np.percentile(self.runs_ms, percentile))

    @classmethod
    def from_sessions(cls, runs_ms: Sequence[Sequence[float]]) -> Measurement:
        """Summarise timed runs grouped by session; every session needs at least one run."""
        if not runs_ms or any(len(runs) == 0 for runs in runs_ms):
            raise ValueError("a measurement needs at least one timed run per session")
        medians = tuple(float(np.median(runs)) for runs in runs_ms)
        pooled = np.concatenate([np.asarray(runs, dtype=float) for runs in runs_ms])
        q1, q3 = np.percentile(pooled, [25, 75])
        return cls(
            median_ms=float(np.median(medians)),
            iqr_ms=float(q3 - q1),
            n=int(pooled.size),
            sessions=len(runs_ms),
            session_medians_ms=medians,
            runs_ms=tuple(float(x) for x in pooled),
        )


#: Clocks a protocol can time with (see :attr:`MeasurementProtocol.clock`).
CLOCKS = ("wall", "thread")


@dataclass(frozen=True)
class MeasurementProtocol:
    """How many sessions and runs a measurement takes.

    Each session runs ``warmup`` untimed calls, then at least ``min_repeats`` timed calls and
    keeps going up to ``repeats`` while the session's timed runs stay under ``budget_s``: small
    blocks get many runs (their noise is relatively larger), big blocks stay affordable.

    Attributes:
        sessions: fresh sessions (new onnxruntime session / fresh module) per measurement.
        warmup: untimed calls per session (allocations, weight prepacking, caches).
        repeats: most timed calls per session.
        min_repeats: fewest timed calls per session, whatever the budget.
        budget_s: time budget for the timed calls of one session.
        cold_repeats: timed calls of a *streamed* (cold) measurement, each preceded by a cache
            flush (see :mod:`nasvit.latency_db.replicate`).
        clock: ``"wall"`` (``perf_counter_ns``) or ``"thread"``: CPU time of the calling
            thread (``thread_time_ns``). With one intra-op thread onnxruntime runs the whole
            graph on the calling thread, so on an idle machine both agree, while on a shared one
            the thread clock leaves out the time other processes held the core (measured here
            under load 5-7 on 2 vCPUs: wall medians 2.5-4x the CPU time, IQR 50-100% vs 15-20%).
            Never use it with more than one thread (work on other threads is not counted).
    """

    sessions: int = 3
    warmup: int = 5
    repeats: int = 40
    min_repeats: int = 10
    budget_s: float = 0.03
    cold_repeats: int = 7
    clock: str = "wall"

    def __post_init__(self) -> None:
        if self.sessions < 1 or self.min_repeats < 1 or self.warmup < 0:
            raise ValueError("sessions and min_repeats must be >= 1, warmup >= 0")
        if self.repeats < self.min_repeats:
            raise ValueError("repeats must be >= min_repeats")
        if self.cold_repeats < 1:
            raise ValueError("cold_repeats must be >= 1")
        if self.clock not in CLOCKS:
            raise ValueError(f"clock must be one of {CLOCKS}, got {self.clock!r}")

    def now_ns(self) -> int:
        """The protocol's clock in nanoseconds."""
        return time.thread_time_ns() if self.clock == "thread" else time.perf_counter_ns()

    @classmethod
    def quick(cls) -> MeasurementProtocol:
        """A cheap protocol for tests and smoke runs (numbers are noisier)."""
        return cls(sessions=2, warmup=2, repeats=5, min_repeats=3, budget_s=0.01, cold_repeats=3)

    @classmethod
    def network(cls) -> MeasurementProtocol:
        """Whole networks: longer runs, so fewer repeats reach a stable median."""
        return cls(sessions=3, warmup=5, repeats=30, min_repeats=10, budget_s=0.3)

    def time_session(
        self, run: Callable[[], None], timer: Callable[[], float] | None = None
    ) -> list[float]:
        """Warm up then time ``run``; returns the timed runs in milliseconds.

        Args:
            run: one inference call on an already-created session.
            timer: optional replacement that runs once and returns milliseconds (CUDA events);
                by default wall time around ``run`` with ``perf_counter_ns``.
        """
        for _ in range(self.warmup):
            run()
        timed: list[float] = []
        spent = 0.0
        while len(timed) < self.repeats:
            if timer is None:
                start = self.now_ns()
                run()
                elapsed_ms = (self.now_ns() - start) / 1e6
            else:
                elapsed_ms = timer()
            timed.append(elapsed_ms)
            spent += elapsed_ms / 1e3
            if len(timed) >= self.min_repeats and spent >= self.budget_s:
                break
        return timed

    def time_flushed_runs(
        self, run: Callable[[], None], flush: Callable[[], object]
    ) -> list[float]:
        """Two untimed calls of ``run``, then ``cold_repeats`` times: ``flush()`` the caches and
        time one call. Used for streamed timings (:mod:`nasvit.latency_db.replicate`), whose
        one call runs many copies of a block, so a single timed call is long enough."""
        for _ in range(min(self.warmup, 2)):
            run()
        timed: list[float] = []
        for _ in range(self.cold_repeats):
            flush()
            start = self.now_ns()
            run()
            timed.append((self.now_ns() - start) / 1e6)
        return timed

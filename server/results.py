"""A job's results as the API shows them, read from the files the pipeline writes.

The pipeline appends each finished trial to ``<job folder>/trials.jsonl`` before the next batch
starts and writes ``report.json`` (with the end-to-end measured latencies) when it is done, so
points appear while the job runs and gain their measured latency when it finishes. Files are
read incrementally (only the bytes appended since the last read), because dashboards poll.
"""

from __future__ import annotations

import json
import math
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nasvit.guarantees import DEFAULT_CONFIDENCE
from nasvit.searching.pareto import hypervolume, non_dominated_mask
from nasvit.searching.pipeline import TRIALS_FILE

REPORT_FILE = "report.json"
CURVE_POINTS = 500  # the hypervolume curve is sampled at most this often


@dataclass
class _TrialsFile:
    inode: int
    offset: int = 0  # bytes parsed so far (always at a line boundary)
    trials: list[dict[str, Any]] = field(default_factory=list)


class ResultReader:
    """Parsed trials and reports per job folder, refreshed from what was appended."""

    def __init__(self) -> None:
        self._trials: dict[Path, _TrialsFile] = {}
        self._reports: dict[Path, tuple[int, dict[str, Any]]] = {}
        self._lock = threading.Lock()

    def trials(self, folder: Path) -> list[dict[str, Any]]:
        """Every complete trial line of the job so far (a line being written is skipped)."""
        path = folder / TRIALS_FILE
        try:
            stat = path.stat()
        except FileNotFoundError:
            return []
        with self._lock:
            cached = self._trials.get(path)
            if cached is None or cached.inode != stat.st_ino or stat.st_size < cached.offset:
                cached = self._trials[path] = _TrialsFile(stat.st_ino)  # new or rewritten file
            if stat.st_size > cached.offset:
                with path.open("rb") as handle:
                    handle.seek(cached.offset)
                    chunk = handle.read(stat.st_size - cached.offset)
                complete = chunk[: chunk.rfind(b"\n") + 1]
                for line in complete.splitlines():
                    trial = _parse_trial(line)
                    if trial is not None:
                        cached.trials.append(trial)
                cached.offset += len(complete)
            return list(cached.trials)

    def report(self, folder: Path) -> dict[str, Any] | None:
        path = folder / REPORT_FILE
        try:
            mtime = path.stat().st_mtime_ns
        except FileNotFoundError:
            return None
        with self._lock:
            cached = self._reports.get(path)
            if cached is not None and cached[0] == mtime:
                return cached[1]
        try:
            report = json.loads(path.read_text())
        except (OSError, ValueError):
            return None  # being written; the next poll reads it
        with self._lock:
            self._reports[path] = (mtime, report)
        return report


def _parse_trial(line: bytes) -> dict[str, Any] | None:
    try:
        trial = json.loads(line)
        low, high = _optional_ms(trial, "low_ms"), _optional_ms(trial, "high_ms")
        interval = low is not None and high is not None
        return {
            "index": int(trial["index"]),
            "short": str(trial["short"]),
            "arch": dict(trial["arch"]),
            "accuracy": float(trial["accuracy"]),
            "loss": float(trial["loss"]),
            "score": float(trial["score"]),
            "predicted_ms": float(trial["latency_ms"]),
            # Trials of a table never validated, or written before intervals existed, have
            # none; the pipeline's intervals are at the default confidence.
            "low_ms": low if interval else None,
            "high_ms": high if interval else None,
            "interval_confidence": DEFAULT_CONFIDENCE if interval else None,
            "judged_ms": _optional_ms(trial, "judged_ms"),
            "feasible": bool(trial["feasible"]),
        }
    except (ValueError, KeyError, TypeError):
        return None  # not a trial line; never let one bad line break the endpoint


def _optional_ms(trial: dict[str, Any], name: str) -> float | None:
    value = trial.get(name)
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None  # JSON answers cannot carry infinity


def measured_latencies(report: dict[str, Any] | None) -> dict[int, float]:
    """Trial index -> end-to-end measured latency, from a finished job's report."""
    if not report:
        return {}
    measured: dict[int, float] = {}
    for point in report.get("pareto_front") or []:
        if point.get("measured_ms") is not None:
            measured[int(point["index"])] = float(point["measured_ms"])
    best = report.get("best") or {}
    if best.get("measured_ms") is not None and "index" in best:
        measured[int(best["index"])] = float(best["measured_ms"])
    return measured


def points(trials: list[dict[str, Any]], report: dict[str, Any] | None) -> list[dict[str, Any]]:
    """Trials as API points, with ``dominated`` (by any other trial) and ``measured_ms``."""
    free = non_dominated_mask([(t["score"], t["predicted_ms"]) for t in trials])
    measured = measured_latencies(report)
    return [
        {**t, "measured_ms": measured.get(t["index"]), "dominated": not on_front}
        for t, on_front in zip(trials, free, strict=True)
    ]


def pareto_summary(
    trials: list[dict[str, Any]], report: dict[str, Any] | None, budget_ms: float
) -> dict[str, Any]:
    """The feasible front (sorted by predicted latency), the hypervolume within the budget, and
    the hypervolume after each evaluation (sampled), as the pipeline's report computes them.
    Feasible is the pipeline's own verdict (what the budget was judged against, the upper
    bound or the percentile the job asked for, or the prediction, was within it)."""
    all_points = points(trials, report)
    feasible = [p for p in all_points if p["feasible"]]
    on_front = non_dominated_mask([(p["score"], p["predicted_ms"]) for p in feasible])
    front = sorted(
        (p for p, keep in zip(feasible, on_front, strict=True) if keep),
        key=lambda p: (p["predicted_ms"], -p["score"]),
    )
    curve: list[dict[str, Any]] = []
    running_front: list[tuple[float, float]] = []
    stride = max(1, -(-len(trials) // CURVE_POINTS))
    volume = 0.0
    for count, trial in enumerate(trials, start=1):
        point = (trial["score"], trial["predicted_ms"])
        if not any(_dominates_or_equals(kept, point) for kept in running_front):
            running_front = [p for p in running_front if not _dominates_or_equals(point, p)]
            running_front.append(point)
        if count % stride == 0 or count == len(trials):
            volume = hypervolume(running_front, reference_latency=budget_ms)
            curve.append({"evaluations": count, "hypervolume": volume})
    return {
        "budget_ms": budget_ms,
        "evaluations": len(trials),
        "hypervolume": volume,
        "front": front,
        "hypervolume_curve": curve,
    }


def _dominates_or_equals(a: tuple[float, float], b: tuple[float, float]) -> bool:
    return a[0] >= b[0] and a[1] <= b[1]

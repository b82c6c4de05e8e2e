"""Latency predictions judged on fresh networks: errors per band, interval coverage, noise.

For every space in ``--spaces`` (default: every registered space) and for the main job's table
(the default search's space, restricted as its default supernet is, with the digits head and
input), on this machine's CPU with onnxruntime at 1 thread:

1. build the table at ``--resolutions`` (default: the resolutions of the space's default
   supernet, which keeps the cost down; ``all`` for every resolution of the space);
2. validate it as a search would (``validate_table`` with ``--validate`` networks: the fit);
3. draw ``--fresh`` networks the validation did not use (stratified over the sum model's
   latency range, the space's extremes and reference architectures included unless the
   validation used them) and measure each ``--readings`` times in fresh sessions, interleaved;
   each network's truth is the median of its readings;
4. report per table and per latency band: share within ±5% / ±10%, MAPE, worst |error|,
   median bias (prediction / truth - 1: positive means over-predicted), coverage of the 80%,
   90% and 95% intervals, the median width of the 90% interval relative to the prediction,
   and the noise ceiling of the median-of-K truth (what a perfect predictor would score
   against it in the same run). The smallest subnet of each table is predicted and measured
   too; for the main job it must be within ±20% (shown as PASS / FAIL).

Every run records the UTC time, the commit, the command line, load averages before and after,
and the CPU. The markdown goes to stdout and beside the JSON (``--out``, suffix ``.md``);
progress goes to stderr. A throwaway database under a temporary folder is used unless ``--db``
names one (a rerun with the same ``--db`` reuses the measured blocks).

    .venv/bin/python bench/bench_latency.py                       # every space + the main job
    .venv/bin/python bench/bench_latency.py --spaces efficientformer --no-main-job
    .venv/bin/python bench/bench_latency.py --quick               # a smoke run, about a minute
    taskset -c 1 .venv/bin/python bench/bench_latency.py --spaces none   # the main job only
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import shlex
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from nasvit.latency_db import LatencyStore, LatencyTable, ProgressCallback
from nasvit.search_spaces import SearchSpace, get_space, space_names

#: Interval confidences whose coverage is reported; the width is reported at WIDTH_CONFIDENCE.
CONFIDENCES = (0.8, 0.9, 0.95)
WIDTH_CONFIDENCE = 0.9
#: The main job's smallest subnet must be predicted within this relative error (issue 16).
SMALLEST_TOLERANCE = 0.20
#: The issue's targets, reported as PASS / FAIL beside the figures (never asserted).
WORST_ERROR_TARGET = 25.0  # percent, over all fresh networks
BAND_BIAS_TARGET = 3.0  # |median bias| in percent, in every band
COVERAGE_TARGET = (0.87, 0.95)  # of nominal 90% intervals
ACCURACY_TARGET = 0.95  # within ±10% ...
CEILING_FOR_ACCURACY = 0.97  # ... whenever the truth's ceiling within ±10% reaches this
#: The main job: what `make demo` searches.
MAIN_JOB_SPACE = "efficientformer"
#: --quick: one small space at one resolution, few networks.
QUICK = {"spaces": "lighthubert_small", "resolutions": "32", "validate": 12, "fresh": 8}
REPO = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class TableJob:
    """One table to judge: a (restricted) space and the networks' head and input."""

    name: str
    space: SearchSpace
    num_classes: int
    in_channels: int
    main_job: bool

    @property
    def shape(self) -> dict[str, int]:
        return {"num_classes": self.num_classes, "in_channels": self.in_channels}


# ---------------------------------------------------------------------- the machine's state
def _utc_now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


def _load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def _loads(values: Sequence[float]) -> str:
    return "/".join(f"{x:.2f}" for x in values)


def _git(*args: str) -> str:
    try:
        done = subprocess.run(
            ["git", *args], cwd=REPO, capture_output=True, text=True, check=True, timeout=30
        )
    except (OSError, subprocess.SubprocessError):
        return ""
    return done.stdout.strip()


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_state(argv: Sequence[str]) -> dict[str, Any]:
    """What the figures depend on beyond the code: when, which commit, how busy, which CPU."""
    import onnxruntime

    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {
        "started_utc": _utc_now(),
        "commit": _git("rev-parse", "--short", "HEAD"),
        # Figures from an uncommitted tree cannot be traced to a commit: say so.
        "tree_dirty": bool(_git("status", "--porcelain", "--untracked-files=no")),
        "command": shlex.join([sys.executable, *argv]),
        "load_before": _load(),
        "cpu_model": _cpu_model(),
        "logical_cores": os.cpu_count(),
        "usable_cores": usable,  # fewer under taskset
        "platform": platform.platform(),
        "python": platform.python_version(),
        "onnxruntime": onnxruntime.__version__,
    }


# ---------------------------------------------------------------------- figures
def error_figures(predicted: np.ndarray, truth: np.ndarray) -> dict[str, Any]:
    """Shares within ±5% / ±10%, MAPE, worst |error| and median bias (percent)."""
    if predicted.size == 0:
        return {"networks": 0}
    signed = predicted / truth - 1.0
    error = np.abs(signed)
    return {
        "networks": int(predicted.size),
        "within_5": float((error <= 0.05).mean()),
        "within_10": float((error <= 0.10).mean()),
        "mape": float(100 * error.mean()),
        "worst_abs_error_pct": float(100 * error.max()),
        "median_bias_pct": float(100 * np.median(signed)),
    }


def interval_figures(
    truth: np.ndarray,
    predicted: np.ndarray,
    intervals: dict[float, tuple[np.ndarray, np.ndarray]],
) -> dict[str, Any]:
    """Coverage of each confidence's interval and the median relative width at 90%.

    None where the table has no intervals (never validated: the bounds are NaN)."""
    coverage: dict[str, float | None] = {}
    for confidence, (low, high) in intervals.items():
        if truth.size == 0 or np.isnan(low).any() or np.isnan(high).any():
            coverage[f"{confidence:g}"] = None
        else:
            coverage[f"{confidence:g}"] = float(((low <= truth) & (truth <= high)).mean())
    low, high = intervals[WIDTH_CONFIDENCE]
    width = None
    if truth.size and not (np.isnan(low).any() or np.isnan(high).any()):
        width = float(100 * np.median((high - low) / predicted))
    return {"coverage": coverage, "median_width_90_pct": width}


def reading_spread(readings: Sequence[Sequence[float]]) -> dict[str, float] | None:
    """How far one network's readings spread (max / min - 1, percent): the raw noise."""
    spreads = [max(r) / min(r) - 1.0 for r in readings if len(r) >= 2]
    if not spreads:
        return None
    return {
        "median": float(100 * np.median(spreads)),
        "p90": float(100 * np.percentile(spreads, 90)),
        "max": float(100 * max(spreads)),
    }


def _ceiling(readings: Sequence[Sequence[float]], seed: int) -> dict[str, Any] | None:
    from nasvit.latency_db.error_model import truth_noise_ceiling

    if not readings or min(len(r) for r in readings) < 2:
        return None  # one reading per network: nothing to estimate the noise from
    return dataclasses.asdict(truth_noise_ceiling(readings, seed=seed))


def judge_targets(table: dict[str, Any]) -> dict[str, str]:
    """The issue's targets as PASS / FAIL (n/a where a figure is missing): figures, not asserts."""

    def verdict(ok: bool | None) -> str:
        return "n/a" if ok is None else ("PASS" if ok else "FAIL")

    overall = table["all"]
    biases = [b["median_bias_pct"] for b in table["bands"] if b["networks"]]
    covered = overall["coverage"].get(f"{WIDTH_CONFIDENCE:g}")
    ceiling = table["noise_ceiling"]
    accuracy: bool | None = None
    if ceiling is not None and ceiling["within_10"] >= CEILING_FOR_ACCURACY:
        accuracy = overall["within_10"] >= ACCURACY_TARGET
    targets = {
        "worst_error_le_25pct": verdict(overall["worst_abs_error_pct"] <= WORST_ERROR_TARGET),
        "band_bias_le_3pct": verdict(all(abs(b) <= BAND_BIAS_TARGET for b in biases)),
        "coverage_90_in_87_95pct": verdict(
            None if covered is None else COVERAGE_TARGET[0] <= covered <= COVERAGE_TARGET[1]
        ),
        # Only stated when the truth is steady enough for the target to be reachable.
        "within_10_ge_95pct_when_ceiling_ge_97pct": verdict(accuracy),
    }
    if table["main_job"] and table["smallest"] is not None:
        targets["smallest_within_20pct"] = table["smallest"]["verdict"]
    return targets


# ---------------------------------------------------------------------- one table
def _progress(label: str) -> ProgressCallback:
    def report(done: int, total: int) -> None:
        end = "\n" if done >= total else ""
        print(f"\r  {label}: {done}/{total}", end=end, file=sys.stderr, flush=True)

    return report


def _say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def bench_table(job: TableJob, store: LatencyStore, args: argparse.Namespace) -> dict[str, Any]:
    """Build, validate and judge one table on fresh networks; the figures as a dict."""
    from nasvit.evaluation.latency import (
        build_space_table,
        measure_readings,
        resolve_device,
        select_validation_archs,
        validate_table,
    )

    space, shape = job.space, job.shape
    result: dict[str, Any] = {
        "name": job.name,
        "space": space.name,
        "identity": space.identity,
        "restrictions": dict(space.restrictions or {}),
        "main_job": job.main_job,
        **shape,
        "started_utc": _utc_now(),
        "load_before": _load(),
    }
    device, profiler = resolve_device(store, threads=args.threads)
    result["device"] = device.name

    _say(f"[{job.name}] building the table")
    started = time.perf_counter()
    report = build_space_table(
        space, store, profiler, device, progress=_progress("blocks"),
        num_classes=job.num_classes, in_channels=job.in_channels,
    )  # fmt: skip
    result["blocks"] = report.requested
    result["blocks_measured"] = report.measured
    result["build_s"] = round(time.perf_counter() - started, 1)

    _say(f"[{job.name}] validating on {args.validate} networks (fit and judged sets)")
    started = time.perf_counter()
    record = validate_table(
        space, store, profiler, store.device(device.id), args.validate,
        seed=args.seed, readings=args.readings, progress=_progress("validation"),
        num_classes=job.num_classes, in_channels=job.in_channels,
    )  # fmt: skip
    result["validate_s"] = round(time.perf_counter() - started, 1)
    validated = record.details.get("networks", [])
    used = [network["arch"] for network in validated]
    table = LatencyTable.load(store, device.id, space.identity)
    error_model = table.error_model
    result["validation"] = {
        "networks": len(used),
        "fit": record.n_fit,
        "judged": sum(network.get("role") == "judged" for network in validated),
        # What the table states about itself (its judged set), to compare with the fresh one.
        "stated_error": dataclasses.asdict(record.prediction_error),
        "noise_ceiling": record.details.get("noise_ceiling"),
        "bands": error_model.describe_bands() if error_model is not None else [],
    }

    # Fresh networks: never measured by the validation, drawn with another seed.
    fresh = select_validation_archs(
        space, table, args.fresh, seed=args.seed + 1, exclude=used,
        num_classes=job.num_classes, in_channels=job.in_channels,
    )  # fmt: skip
    smallest = space.smallest()
    smallest_short = space.short_string(smallest)
    archs = [s.arch for s in fresh]
    fresh_shorts = {space.short_string(a) for a in archs}
    # The smallest subnet is measured in the same interleaved run (same hour, same noise) but
    # kept out of the fresh figures when the validation already used it.
    extra = [] if smallest_short in fresh_shorts else [smallest]
    _say(f"[{job.name}] measuring {len(archs)} fresh networks x {args.readings} readings")
    started = time.perf_counter()
    measured = measure_readings(
        space, profiler, [*archs, *extra], readings=args.readings, seed=args.seed + 1,
        progress=_progress("fresh networks"), num_classes=job.num_classes,
        in_channels=job.in_channels,
    )  # fmt: skip
    result["measure_s"] = round(time.perf_counter() - started, 1)
    readings = [list(r) for r, _calls in measured]
    calls = [list(c) for _readings, c in measured]
    truth_all = np.array([float(np.median(r)) for r in readings])

    networks = [space.lower(a, **shape) for a in [*archs, *extra]]
    predictions = [table.predict(blocks) for blocks in networks]
    points = np.array([p.latency_ms for p in predictions])
    intervals = {c: table.intervals_many(networks, c) for c in CONFIDENCES}

    n = len(archs)
    truth, predicted = truth_all[:n], points[:n]
    fresh_intervals = {c: (low[:n], high[:n]) for c, (low, high) in intervals.items()}
    result["fresh"] = {"networks": n, "origins": dict(Counter(s.origin for s in fresh))}
    result["all"] = {
        **error_figures(predicted, truth),
        **interval_figures(truth, predicted, fresh_intervals),
    }
    result["budget_bounds"] = _budget_bounds(table, networks[:n], truth, calls[:n])
    result["noise_ceiling"] = _ceiling(readings[:n], args.seed)
    result["reading_spread"] = reading_spread(readings[:n])
    result["bands"] = _band_figures(
        table, predictions[:n], truth, predicted, fresh_intervals, readings[:n], args.seed
    )
    result["smallest"] = _smallest_figures(
        smallest_short,
        [*archs, *extra],
        space,
        predictions,
        truth_all,
        readings,
        intervals[WIDTH_CONFIDENCE],
    )
    result["networks"] = [
        {
            "arch": space.short_string(a),
            "origin": s.origin,
            "band": p.band,
            "sum_ms": p.sum_ms,
            "predicted_ms": p.latency_ms,
            "model": p.model,
            "low_90_ms": _finite(intervals[WIDTH_CONFIDENCE][0][i]),
            "high_90_ms": _finite(intervals[WIDTH_CONFIDENCE][1][i]),
            "readings_ms": readings[i],
            "truth_ms": float(truth[i]),
        }
        for i, (a, s, p) in enumerate(zip(archs, fresh, predictions, strict=False))
    ]
    result["finished_utc"] = _utc_now()
    result["load_after"] = _load()
    result["targets"] = judge_targets(result)
    return result


def _budget_bounds(
    table: LatencyTable,
    networks: Sequence[Any],
    truth: np.ndarray,
    calls: Sequence[Sequence[float]],
) -> dict[str, float | None]:
    """How often what a budget is compared with held on the fresh networks: the share whose
    truth is within the one-sided 90% bound (``--confidence 0.9``; nominal 90%), and the share
    of all their timed calls within their predicted p90 (``2ms@p90``; nominal 90%)."""
    from nasvit.guarantees import Guarantee

    if not table.validated or not networks:
        return {"confidence_90_held": None, "p90_calls_within": None}
    upper = table.judged_many(networks, Guarantee(confidence=0.9))
    p90 = table.judged_many(networks, Guarantee(percentile=90))
    within = [np.asarray(c) <= bound for c, bound in zip(calls, p90, strict=True) if len(c)]
    return {
        "confidence_90_held": float((truth <= upper).mean()),
        "p90_calls_within": float(np.concatenate(within).mean()) if within else None,
    }


def _finite(value: float) -> float | None:
    return None if np.isnan(value) else float(value)


def _band_figures(
    table: LatencyTable,
    predictions: Sequence[Any],
    truth: np.ndarray,
    predicted: np.ndarray,
    intervals: dict[float, tuple[np.ndarray, np.ndarray]],
    readings: Sequence[Sequence[float]],
    seed: int,
) -> list[dict[str, Any]]:
    """The figures per latency band of the table's error model (the bands its per-band model
    choice and intervals use); one band over everything when the table has none."""
    error_model = table.error_model
    described = error_model.describe_bands() if error_model is not None else []
    bands = np.array([-1 if p.band is None else p.band for p in predictions])
    if not described:
        described = [{"low_ms": None, "high_ms": None, "model": "sum"}]
        bands = np.zeros(len(predictions), dtype=int)
    rows = []
    for index, band in enumerate(described):
        mask = bands == index
        members = [r for r, m in zip(readings, mask, strict=True) if m]
        band_intervals = {c: (low[mask], high[mask]) for c, (low, high) in intervals.items()}
        rows.append(
            {
                "band": index,
                "low_ms": band.get("low_ms"),
                "high_ms": band.get("high_ms"),
                "model": band.get("model"),
                **error_figures(predicted[mask], truth[mask]),
                **interval_figures(truth[mask], predicted[mask], band_intervals),
                "noise_ceiling": _ceiling(members, seed),
            }
        )
    return rows


def _smallest_figures(
    short: str,
    archs: Sequence[Any],
    space: SearchSpace,
    predictions: Sequence[Any],
    truth: np.ndarray,
    readings: Sequence[Sequence[float]],
    interval: tuple[np.ndarray, np.ndarray],
) -> dict[str, Any] | None:
    shorts = [space.short_string(a) for a in archs]
    if short not in shorts:
        return None
    i = shorts.index(short)
    error = predictions[i].latency_ms / truth[i] - 1.0
    low, high = _finite(interval[0][i]), _finite(interval[1][i])
    return {
        "arch": short,
        "predicted_ms": predictions[i].latency_ms,
        "sum_ms": predictions[i].sum_ms,
        "model": predictions[i].model,
        "measured_ms": float(truth[i]),
        "readings_ms": list(readings[i]),
        "error_pct": float(100 * error),
        "low_90_ms": low,
        "high_90_ms": high,
        "inside_90": None if low is None or high is None else bool(low <= truth[i] <= high),
        "verdict": "PASS" if abs(error) <= SMALLEST_TOLERANCE else "FAIL",
    }


# ---------------------------------------------------------------------- the report
def _pct(value: float | None, digits: int = 1) -> str:
    return "n/a" if value is None else f"{100 * value:.{digits}f}%"


def _num(value: float | None, unit: str = "%", digits: int = 1) -> str:
    return "n/a" if value is None else f"{value:+.{digits}f}{unit}"


def _band_label(band: dict[str, Any]) -> str:
    if band["low_ms"] is None:
        return "all"
    return f"{band['low_ms']:.3g}-{band['high_ms']:.3g} ms"


def _row(
    label: str, band: str, model: str, f: dict[str, Any], ceiling: dict[str, Any] | None
) -> str:
    if not f["networks"]:
        return f"| {label} | {band} | {model} | 0 |" + " |" * 8
    coverage = " / ".join(_pct(f["coverage"][f"{c:g}"], 0) for c in CONFIDENCES)
    width = "n/a" if f["median_width_90_pct"] is None else f"{f['median_width_90_pct']:.1f}%"
    ceiling_text = (
        "n/a" if ceiling is None else f"{_pct(ceiling['within_10'])} / {_pct(ceiling['within_5'])}"
    )
    return (
        f"| {label} | {band} | {model} | {f['networks']} | {_pct(f['within_5'])} | "
        f"{_pct(f['within_10'])} | {f['mape']:.2f}% | {f['worst_abs_error_pct']:.1f}% | "
        f"{_num(f['median_bias_pct'])} | {coverage} | {width} | {ceiling_text} |"
    )


def markdown(report: dict[str, Any]) -> str:
    """The figures as a docs/benchmarks.md section: date, commit and command first."""
    run, settings = report["run"], report["settings"]
    dirty = " (uncommitted changes in the tree)" if run["tree_dirty"] else ""
    lines = [
        "- Date: " + f"{run['started_utc']} to {run['finished_utc']}",
        f"- Commit: `{run['commit']}`{dirty}",
        f"- Command: `{run['command']}`",
        f"- Machine: {run['cpu_model']}, {run['logical_cores']} logical cores "
        f"({run['usable_cores']} usable), {run['platform']}, onnxruntime {run['onnxruntime']}, "
        f"intra-op threads {settings['threads']}; load average (1/5/15 min) before "
        f"{_loads(run['load_before'])}, after {_loads(run['load_after'])}",
        f"- Networks: each table validated as a search does ({settings['validate']} networks "
        f"asked for, split into a fit and a judged set), then judged here on "
        f"{settings['fresh']} fresh networks; each network's truth is the median of "
        f"{settings['readings']} fresh-session readings, interleaved over the run",
        "",
        "| table | band (sum model) | model | networks | ±5% | ±10% | MAPE | worst | median bias "
        "| coverage 80 / 90 / 95% | 90% width | truth ceiling ±10% / ±5% |",
        "|---" * 12 + "|",
    ]
    for table in report["tables"]:
        name = f"**{table['name']}**"
        lines.append(_row(name, "all", "per band", table["all"], table["noise_ceiling"]))
        for band in table["bands"]:
            label = _band_label(band)
            lines.append(_row("", label, str(band["model"]), band, band["noise_ceiling"]))
    lines.append("")
    for table in report["tables"]:
        spread = table["reading_spread"]
        spread_text = (
            "n/a" if spread is None else f"median {spread['median']:.1f}%, p90 {spread['p90']:.1f}%"
        )
        validation = table["validation"]
        stated = validation["stated_error"]
        lines.append(
            f"- **{table['name']}** ({table['identity']}, {table['started_utc']} to "
            f"{table['finished_utc']}, load {_loads(table['load_before'])} -> "
            f"{_loads(table['load_after'])}): {table['blocks']} blocks "
            f"({table['blocks_measured']} measured in {table['build_s']:.0f} s); validation "
            f"{validation['networks']} networks ({validation['fit']} fit, "
            f"{validation['judged']} judged) in {table['validate_s']:.0f} s, stated error "
            f"{_pct(stated['within_10'])} within ±10%, MAPE {stated['mape']:.2f}%; "
            f"fresh networks {table['fresh']['origins']}; spread of one network's readings "
            f"{spread_text}"
        )
        smallest = table["smallest"]
        if smallest is not None:
            lines.append(
                f"  - smallest subnet `{smallest['arch']}`: predicted "
                f"{smallest['predicted_ms']:.4g} ms ({smallest['model']}), measured "
                f"{smallest['measured_ms']:.4g} ms, error {smallest['error_pct']:+.1f}%"
                + (f" -> **{smallest['verdict']}** (±20%)" if table["main_job"] else "")
                + ("" if smallest["inside_90"] is None else
                   f"; inside its 90% interval: {'yes' if smallest['inside_90'] else 'no'}")
            )  # fmt: skip
        bounds = table["budget_bounds"]
        lines.append(
            f"  - budget bounds on fresh networks (nominal 90%): truth within the one-sided 90% "
            f"bound {_pct(bounds['confidence_90_held'])}; timed calls within the predicted p90 "
            f"{_pct(bounds['p90_calls_within'])}"
        )
        targets = ", ".join(f"{k} {v}" for k, v in table["targets"].items())
        lines.append(f"  - targets: {targets}")
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------- jobs
def _resolutions(space: SearchSpace, text: str | None) -> list[int] | None:
    """The resolutions to measure: ``text`` ("all", "32,64"), else the default supernet's."""
    from nasvit.training.default_supernet import recipe_for

    if "resolution" not in {d.name for d in space.searched_dimensions}:
        return None
    if text == "all":
        return None
    if text:
        return [int(r) for r in text.split(",") if r]
    chosen = recipe_for(space.name).restrictions.get("resolution")
    return list(chosen) if chosen else [min(space.choices("resolution"))]


def table_jobs(args: argparse.Namespace) -> list[TableJob]:
    """The spaces asked for, then the main job's table."""
    jobs = []
    names = space_names() if args.spaces is None else [s for s in args.spaces.split(",") if s]
    for name in names:
        if name == "none":
            continue
        space = get_space(name)
        resolutions = _resolutions(space, args.resolutions)
        if resolutions is not None:
            space = space.restrict(resolution=resolutions)
        jobs.append(TableJob(name, space, 1000, 3, main_job=False))
    if args.main_job:
        from nasvit.data import load_dataset
        from nasvit.training.default_supernet import recipe_for

        # The space the default supernet covers and the head and input of its data: what
        # `make demo` searches and lowers candidates with.
        recipe = recipe_for(MAIN_JOB_SPACE)
        data = load_dataset(recipe.data, seed=recipe.data_seed)
        space = get_space(MAIN_JOB_SPACE).restrict(**recipe.restrictions)
        name = f"main job ({MAIN_JOB_SPACE}, {recipe.data})"
        jobs.append(TableJob(name, space, data.num_classes, data.in_channels, main_job=True))
    return jobs


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    from nasvit.searching.defaults import DEFAULT_VALIDATE_NETWORKS

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--spaces", help="comma-separated (default: every registered space)")
    parser.add_argument(
        "--resolutions",
        help="comma-separated, or 'all' (default: the resolutions of each space's default "
        "supernet)",
    )
    parser.add_argument(
        "--main-job",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="also judge the main job's table (default: yes, except with --quick)",
    )
    parser.add_argument(
        "--validate",
        type=int,
        help=f"networks the validation measures (default {DEFAULT_VALIDATE_NETWORKS}, a "
        "search's default)",
    )
    parser.add_argument("--fresh", type=int, help="fresh networks judged per table (default 200)")
    parser.add_argument("--readings", type=int, default=3, help="fresh-session readings each")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--db", type=Path, help="SQLite file (default: a throwaway one)")
    parser.add_argument("--out", type=Path, default=Path("test-artifacts/bench_latency.json"))
    parser.add_argument("--quick", action="store_true", help="a smoke run: " + str(QUICK))
    args = parser.parse_args(argv)
    quick = QUICK if args.quick else {}
    args.spaces = args.spaces if args.spaces is not None else quick.get("spaces")
    args.resolutions = args.resolutions or quick.get("resolutions")
    args.validate = args.validate or quick.get("validate") or DEFAULT_VALIDATE_NETWORKS
    args.fresh = args.fresh or quick.get("fresh") or 200
    args.main_job = (not args.quick) if args.main_job is None else args.main_job
    return args


def run(args: argparse.Namespace, argv: Sequence[str], db: Path) -> dict[str, Any]:
    state = machine_state(argv)
    store = LatencyStore.open(f"sqlite:///{db}")
    settings = {
        key: getattr(args, key)
        for key in ("validate", "fresh", "readings", "threads", "seed", "resolutions", "quick")
    }
    report: dict[str, Any] = {"run": state, "settings": settings, "tables": []}
    for job in table_jobs(args):
        report["tables"].append(bench_table(job, store, args))
    state["finished_utc"] = _utc_now()
    state["load_after"] = _load()
    return report


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    arguments = list(sys.argv if argv is None else ["bench/bench_latency.py", *argv])
    args = parse_args(arguments[1:])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="nasvit-bench-latency-") as scratch:
        report = run(args, arguments, args.db or Path(scratch) / "latency.db")
    text = markdown(report)
    args.out.write_text(json.dumps(report, indent=2, default=list))  # tuples in restrictions
    args.out.with_suffix(".md").write_text(text)
    print(text)
    _say(f"wrote {args.out} and {args.out.with_suffix('.md')}")
    return report


if __name__ == "__main__":
    main()

"""Latency-table accuracy and build time (issue 3 and issue 7 targets).

For every space in ``--spaces`` and every thread count in ``--threads``: builds the space's
table for onnxruntime (the space's resolutions, or ``--resolutions``) with warm and streamed
(cold-cache) timings per block, then validates it on ``--n`` random subnets (``nasvit latency
validate``: the corrections are fitted on the first half of the networks and judged on the
held-out half) and prints one row: share within ±10% and ±5%, MAPE and Spearman rho of the path
predictions take (held-out), the same for the raw sum of warm medians over all networks, the
table's block count and build time. With ``--repeat K`` it then re-measures K of the validated
networks in fresh sessions (shuffled) and prints how well the two measurements agree and the
*noise ceiling*: what a perfect predictor would score against one measurement on the machine at
that time (``noise_ceiling``); no table can be shown to do better than that here.

Uses its own SQLite file, so the user's database is untouched; a rerun reuses the tables
(delete the file to rebuild).

    python bench/bench_latency.py --n 200 --threads 1,2 --db /tmp/bench-latency.db
    python bench/bench_latency.py --spaces lighthubert_small,attention_variants --resolutions 32,64
    python bench/bench_latency.py --spaces mobiledets_accelerator --resolutions 32 --n 80 \
        --optimization extended,all   # is the blocked (NCHWc) layout what the table misses?
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from nasvit.latency import build_space_table, resolve_device, sample_archs, validate_table
from nasvit.latency_db import (
    ErrorStats,
    LatencyStore,
    MeasurementProtocol,
    Profiler,
    ValidationRecord,
    with_protocol,
)
from nasvit.latency_db.table import error_stats, noise_ceiling
from nasvit.search_spaces import SearchSpace, get_space


def _cells(stats: ErrorStats) -> str:
    rho = "n/a" if stats.spearman is None else f"{stats.spearman:.3f}"
    return f"{stats.within_10:.1%} | {stats.within_5:.1%} | {stats.mape:.2f}% | {rho}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--spaces", default="efficientformer")
    parser.add_argument("--n", type=int, default=200)
    parser.add_argument("--threads", default="1,2")
    parser.add_argument(
        "--optimization", default="all", help="onnxruntime graph optimisation levels to compare"
    )
    parser.add_argument("--resolutions", default="", help="default: every resolution of a space")
    parser.add_argument("--db", default="/tmp/nasvit-bench-latency.db")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--repeat",
        type=int,
        default=0,
        help="re-measure this many validated networks in fresh sessions: the noise ceiling",
    )
    args = parser.parse_args()
    resolutions = [int(r) for r in args.resolutions.split(",") if r] or None
    store = LatencyStore.open(f"sqlite:///{args.db}")
    print(
        "| space | threads | optimisation | path | ±10% | ±5% | MAPE | Spearman "
        "| raw sum: ±10% | ±5% | MAPE | Spearman | blocks | build |"
    )
    print("|---" * 14 + "|")
    for space_name in args.spaces.split(","):
        space = get_space(space_name)
        settings = [
            (int(t), level)
            for t in args.threads.split(",")
            for level in args.optimization.split(",")
        ]
        for threads, level in settings:
            device, profiler = resolve_device(store, threads=threads, optimization=level)
            started = time.perf_counter()
            report = build_space_table(space, store, profiler, device, resolutions)
            build = f"{report.measured} in {time.perf_counter() - started:.0f} s"
            v = validate_table(
                space, store, profiler, store.device(device.id), args.n, seed=args.seed,
                resolutions=resolutions,
            )  # fmt: skip
            used = _cells(v.prediction_error)
            print(
                f"| {space_name} | {threads} | {level} | {v.prediction_path} | {used} | "
                f"{_cells(v.raw)} | {report.requested} | {build} |",
                flush=True,
            )
            if args.repeat:
                _repeat(space, profiler, v, args, resolutions)


def _repeat(
    space: SearchSpace,
    profiler: Profiler,
    v: ValidationRecord,
    args: argparse.Namespace,
    resolutions: list[int] | None,
) -> None:
    """Re-measure the first ``--repeat`` validated networks (in a shuffled order, as validation
    does) and compare with the first try; print what a perfect predictor would score."""
    first = [n["measured_ms"] for n in v.details["networks"][: args.repeat]]
    archs = sample_archs(space, args.n, args.seed, resolutions)[: args.repeat]
    network_profiler = with_protocol(profiler, MeasurementProtocol.network())
    again = [0.0] * len(archs)
    for index in np.random.default_rng(args.seed + 1).permutation(len(archs)):
        subnet, shape = space.build_subnet(archs[index]), space.input_shape(archs[index])
        again[index] = network_profiler.measure(subnet, shape).median_ms
    agree = error_stats(again, first)
    ceiling = noise_ceiling(first, again)
    print(
        f"  same networks re-measured (n={agree.n}): {agree.within_10:.1%} within ±10%, "
        f"{agree.within_5:.1%} within ±5% of the first measurement, mean difference "
        f"{agree.mape:.2f}%; noise ceiling (a perfect predictor against one measurement): "
        f"{ceiling.within_10:.1%} within ±10%, {ceiling.within_5:.1%} within ±5%, MAPE "
        f"{ceiling.mape:.2f}%",
        flush=True,
    )


if __name__ == "__main__":
    main()

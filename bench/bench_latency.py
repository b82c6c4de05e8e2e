"""Latency-table accuracy and build time (issue 3 and issue 7 targets).

For every space in ``--spaces`` and every thread count in ``--threads``: builds the space's
table for onnxruntime (the space's resolutions, or ``--resolutions``) with warm and streamed
(cold-cache) timings per block, then validates it on ``--n`` random subnets (``nasvit latency
validate``: the corrections are fitted on the first half of the networks and judged on the
held-out half) and prints one row: share within ±10% and ±5%, MAPE and Spearman rho of the path
predictions take (held-out), the same for the raw sum of warm medians over all networks, the
table's block count and build time. With ``--repeat K`` validation measures K of the networks
twice, the second readings shuffled in among the others, and the bench prints the *noise
ceiling*: what a perfect predictor would score against one measurement on the machine in that
run (``noise_ceiling``); no table can be shown to do better than that there.

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

from nasvit.evaluation.latency import build_space_table, resolve_device, validate_table
from nasvit.latency_db import ErrorStats, LatencyStore
from nasvit.search_spaces import get_space


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
        help="measure this many networks twice, interleaved: the noise ceiling",
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
                resolutions=resolutions, repeat=args.repeat,
            )  # fmt: skip
            used = _cells(v.prediction_error)
            print(
                f"| {space_name} | {threads} | {level} | {v.prediction_path} | {used} | "
                f"{_cells(v.raw)} | {report.requested} | {build} |",
                flush=True,
            )
            ceiling = v.noise_ceiling
            if ceiling is not None:
                print(
                    f"  noise ceiling ({ceiling.n} networks measured twice, interleaved): a "
                    f"perfect predictor {ceiling.within_10:.1%} within ±10%, "
                    f"{ceiling.within_5:.1%} within ±5%, MAPE {ceiling.mape:.2f}%",
                    flush=True,
                )


if __name__ == "__main__":
    main()

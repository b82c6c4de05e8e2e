"""Latency-table accuracy and build time (issue 3 targets).

Builds the efficientformer table for onnxruntime with 1 and 2 threads (default resolutions, or
``--resolutions``), with warm and cold-cache timings per block, then validates it on ``--n`` random
subnets and prints: share within ±10% and ±5%, MAPE and Spearman rho (raw warm sum over all
networks; on the held-out half: raw, linear calibration, and the cache residency model fitted on
the other half, which is what predictions use), and the table build time. Uses its own SQLite
file so the user's database is untouched; a rerun reuses the table (delete the file to rebuild).

    python bench/bench_latency.py --n 200 --threads 1,2 --db /tmp/bench-latency.db
"""

from __future__ import annotations

import argparse
import time

from nasvit.latency import build_space_table, resolve_device, sample_archs, validate_table
from nasvit.latency_db import LatencyStore, MeasurementProtocol, with_protocol
from nasvit.latency_db.table import error_stats
from nasvit.search_spaces import get_space


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n", type=int, default=200)
    parser.add_argument("--threads", default="1,2")
    parser.add_argument("--resolutions", default="")
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
    space = get_space("efficientformer")
    store = LatencyStore.open(f"sqlite:///{args.db}")
    for threads in [int(t) for t in args.threads.split(",")]:
        device, profiler = resolve_device(store, threads=threads)
        started = time.perf_counter()
        report = build_space_table(space, store, profiler, device, resolutions)
        print(
            f"[{device.name}] table: {report.requested} blocks, {report.measured} measured in "
            f"{time.perf_counter() - started:.0f} s ({report.already_present} already present), "
            f"{report.remeasured_batches} drift re-measures, overhead "
            f"{1000 * (report.overhead_ms or 0):.1f} us",
            flush=True,
        )
        v = validate_table(
            space, store, profiler, store.device(device.id), args.n, seed=args.seed,
            resolutions=resolutions,
        )  # fmt: skip
        if v.cache_model:
            shape = ", ".join(f"{k} {val:.3g}" for k, val in v.cache_model.items())
            print(f"[{device.name}] cache model: {shape}", flush=True)
        for label, stats in (("raw, all", v.raw), ("raw, held-out", v.raw_test),
                             ("linear calibration, held-out", v.calibrated_test),
                             ("cache-aware, held-out", v.cache_test)):  # fmt: skip
            if stats is None:
                continue
            rho = "n/a" if stats.spearman is None else f"{stats.spearman:.3f}"
            print(
                f"[{device.name}] {label} (n={stats.n}): {100 * stats.within_10:.1f}% within "
                f"±10%, {100 * stats.within_5:.1f}% within ±5%, MAPE {stats.mape:.2f}%, "
                f"Spearman {rho}",
                flush=True,
            )
        if args.repeat:
            first = [n["measured_ms"] for n in v.details["networks"][: args.repeat]]
            archs = sample_archs(space, args.n, args.seed, resolutions)[: args.repeat]
            network_profiler = with_protocol(profiler, MeasurementProtocol.network())
            again = [
                network_profiler.measure(space.build_subnet(a), space.input_shape(a)).median_ms
                for a in archs
            ]
            agree = error_stats(again, first)
            print(
                f"[{device.name}] same networks re-measured (n={agree.n}): "
                f"{100 * agree.within_10:.1f}% within ±10%, {100 * agree.within_5:.1f}% within "
                f"±5% of the first measurement, mean difference {agree.mape:.2f}%",
                flush=True,
            )


if __name__ == "__main__":
    main()

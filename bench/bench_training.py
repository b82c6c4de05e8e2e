"""Training / evaluation / predictor figures for the README (issue 4 targets).

Sections (``--only`` picks some; results are merged into ``--out`` JSON as each finishes):

- ``default``: train the issue-4 efficientformer supernet on plain digits (fresh ``--home``)
  and time it; test accuracy of its largest and smallest subnets; spread over ``--random`` subnets.
- ``gap``: a subnet evaluated standalone (extracted, BN recalibrated) vs inside the supernet.
- ``step``: training-step time of the supernet at an arch vs the extracted static subnet, for
  the sliced path the trainer uses and the dense path it replaced (median of paired ratios).
- ``uniform``: uniform single-subnet sampling trained for the same wall time as the default
  (sandwich) run, and the spread of the same random subnets under both.
- ``predictor``: MLP and GBT predictors fitted on supernet-measured val pairs (targets: accuracy,
  the search's ranking score, minus the loss), Spearman / Kendall tau on ``--held-out`` archs,
  and val-vs-test rank agreement of each target on ``--reliability`` archs (the noise ceiling).

Run: ``.venv/bin/python bench/bench_training.py --home /tmp/nasvit-bench --threads 2``
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from scipy.stats import kendalltau, spearmanr

from nasvit.data import load_digits
from nasvit.evaluation.evaluator import SubnetEvaluator, accuracy_spread
from nasvit.evaluation.predictor import fit_and_score, measure_pairs, target_values
from nasvit.nn.elastic import SliceRecorder
from nasvit.search_spaces import get_space
from nasvit.training import TrainConfig, train_supernet
from nasvit.training.checkpoint import load_supernet
from nasvit.training.default_supernet import (
    Recipe,
    default_supernet_path,
    ensure_default_supernet,
    smaller_half_widths,
)
from nasvit.training.sliced_optim import SlicedAdamW, step_gradients

SPACE = "efficientformer"
# The training targets (issue 4) are stated on plain digits, so this benchmark keeps the recipe
# the default efficientformer supernet had then (r32, the smaller half of each stage's widths,
# full depths, 8 epochs); the default itself has since moved to digits-affine at r64.
RECIPE = Recipe(
    restrictions={"resolution": [32], "widths": smaller_half_widths(SPACE)},
    train=TrainConfig(epochs=8, batch_size=64, lr=2e-3, num_random=2),
)


def _save(out: Path, key: str, value: Any) -> None:
    results = json.loads(out.read_text()) if out.is_file() else {}
    results[key] = value
    out.write_text(json.dumps(results, indent=2))
    print(f"[{key}] {json.dumps(value)}", flush=True)


def _spread(ckpt: Path, count: int, seed: int = 1) -> dict[str, Any]:
    space, supernet, _ = load_supernet(ckpt)
    evaluator = SubnetEvaluator(space, supernet, load_digits(), "test")
    rng = np.random.default_rng(seed)
    results = evaluator.evaluate_many([space.sample(rng) for _ in range(count)])
    return {
        "largest": evaluator.evaluate(space.largest()).accuracy,
        "smallest": evaluator.evaluate(space.smallest()).accuracy,
        "random": accuracy_spread(results),
    }


def bench_default(home: Path, count: int, out: Path) -> Path:
    path = default_supernet_path(SPACE, home, RECIPE)
    started = time.perf_counter()
    ensure_default_supernet(SPACE, home, progress=False, recipe=RECIPE)
    seconds = time.perf_counter() - started
    epochs = [json.loads(line) for line in Path(f"{path}.metrics.jsonl").read_text().splitlines()]
    _save(
        out,
        "default",
        {
            "checkpoint": str(path),
            "train_seconds_this_call": seconds,
            "train_seconds_epochs": sum(e["seconds"] for e in epochs),
            "epochs": len(epochs),
            "test": _spread(path, count),
        },
    )
    return path


def bench_gap(ckpt: Path, count: int, out: Path) -> None:
    space, supernet, _ = load_supernet(ckpt)
    data = load_digits()
    extract = SubnetEvaluator(space, supernet, data, "test", mode="extract")
    inside = SubnetEvaluator(space, supernet, data, "test", mode="supernet")
    rng = np.random.default_rng(2)
    gaps = []
    for arch in [space.largest(), space.smallest()] + [space.sample(rng) for _ in range(count)]:
        gaps.append(abs(extract.evaluate(arch).accuracy - inside.evaluate(arch).accuracy))
    _save(out, "gap", {"archs": len(gaps), "max_points": 100 * max(gaps)})


def _timed(step: Any) -> tuple[float, float]:
    """(wall, calling-thread CPU) seconds of one call. With one torch thread all the work runs
    in the calling thread, so CPU time equals wall time on an idle machine and is far less
    disturbed by other processes on a loaded one."""
    wall, cpu = time.perf_counter(), time.thread_time()
    step()
    return time.perf_counter() - wall, time.thread_time() - cpu


def bench_step(ckpt: Path, repeats: int, out: Path) -> None:
    """Training step (forward, backward, AdamW) of the supernet at an arch vs the extracted
    static subnet, batch 64. Static and supernet steps alternate, so both see the same machine
    load; the figure is the median over repeats of the per-pair ratio. ``sliced`` is the
    trainer's path (slice recorder + SlicedAdamW); ``dense`` is plain autograd with fused AdamW
    over the whole supernet (the path before sliced training)."""
    space, supernet, _ = load_supernet(ckpt)
    supernet.train()
    rng = np.random.default_rng(3)
    archs = [space.largest(), space.smallest()] + [space.sample(rng) for _ in range(3)]
    rows = []
    for arch in archs:
        row = _step_row(space, supernet, arch, repeats)
        rows.append(row)
        print(json.dumps(row), flush=True)
    _save(
        out,
        "step",
        {
            "batch": 64,
            "threads": torch.get_num_threads(),
            "repeats": repeats,
            "rows": rows,
            "max_sliced_ratio_cpu": max(r["sliced_ratio_cpu"] for r in rows),
            "max_dense_ratio_cpu": max(r["dense_ratio_cpu"] for r in rows),
        },
    )


def _step_row(space: Any, supernet: Any, arch: Any, repeats: int) -> dict[str, Any]:
    params = list(supernet.parameters())
    x = torch.randn(64, supernet.in_channels, arch["resolution"], arch["resolution"])
    y = torch.arange(64) % 10
    static = supernet.extract(arch).train()
    static_optimizer = torch.optim.AdamW(static.parameters(), lr=1e-4, fused=True)
    dense_optimizer = torch.optim.AdamW(params, lr=1e-4, fused=True)
    sliced_optimizer = SlicedAdamW(params, lr=1e-4)

    def static_step() -> None:
        static_optimizer.zero_grad(set_to_none=True)
        F.cross_entropy(static(x), y).backward()
        static_optimizer.step()

    def dense_step() -> None:
        dense_optimizer.zero_grad(set_to_none=True)
        F.cross_entropy(supernet(x, arch), y).backward()
        dense_optimizer.step()

    def sliced_step() -> None:
        sliced_optimizer.zero_grad(set_to_none=True)
        with SliceRecorder() as recorder:
            F.cross_entropy(supernet(x, arch), y).backward()
        sliced_optimizer.step(step_gradients(recorder, params))

    ratios: dict[str, list[tuple[float, float]]] = {"dense": [], "sliced": []}
    seconds: dict[str, list[float]] = {"static": [], "dense": [], "sliced": []}
    with torch.no_grad():
        snapshot = [p.clone() for p in params]  # both supernet paths start from the same
    for name, step in (("dense", dense_step), ("sliced", sliced_step)):
        with torch.no_grad():
            for p, saved in zip(params, snapshot, strict=True):
                p.copy_(saved)
        for repeat in range(repeats + 2):  # two warm-up pairs
            static_time = _timed(static_step)
            super_time = _timed(step)
            if repeat >= 2:
                ratios[name].append(
                    (super_time[0] / static_time[0], super_time[1] / static_time[1])
                )
                seconds["static"].append(static_time[1])
                seconds[name].append(super_time[1])
    row: dict[str, Any] = {"arch": space.short_string(arch)}
    for name in ("dense", "sliced"):
        row[f"{name}_ratio_cpu"] = statistics.median(r[1] for r in ratios[name])
        row[f"{name}_ratio_wall"] = statistics.median(r[0] for r in ratios[name])
    for name, values in seconds.items():
        row[f"{name}_cpu_s"] = statistics.median(values)
    return row


def bench_uniform(ckpt: Path, home: Path, count: int, out: Path) -> None:
    sandwich = [json.loads(line) for line in Path(f"{ckpt}.metrics.jsonl").read_text().splitlines()]
    budget = sum(e["seconds"] for e in sandwich)
    recipe = RECIPE
    space = get_space(SPACE).restrict(**recipe.restrictions)
    data = load_digits()
    probe_path = home / "uniform-probe.pt"
    if not probe_path.is_file():
        probe = replace(recipe.train, sampling="uniform", epochs=1, eval_every_epoch=False)
        train_supernet(space, data, probe, probe_path, progress=False)
    probe_seconds = json.loads(Path(f"{probe_path}.metrics.jsonl").read_text())["seconds"]
    epochs = max(1, round(budget / probe_seconds))
    # Per-epoch val evaluation is off: it does not change the weights (so an interrupted bench
    # resumes) and 50+ epochs of it would dominate the wall time.
    uniform_path = home / "uniform.pt"
    if uniform_path.is_file():  # an interrupted bench keeps the epochs it planned
        epochs = json.loads(load_supernet(uniform_path)[2]["train_config"])["epochs"]
    config = replace(recipe.train, sampling="uniform", epochs=epochs, eval_every_epoch=False)
    result = train_supernet(
        space, data, config, uniform_path, resume=uniform_path.is_file(), progress=False
    )
    _save(
        out,
        "uniform",
        {
            "sandwich_seconds": budget,
            "uniform_seconds": sum(e["seconds"] for e in result.history),
            "uniform_epochs": epochs,
            "sandwich_test": _spread(ckpt, count),
            "uniform_test": _spread(uniform_path, count),
        },
    )


def bench_predictor(ckpt: Path, pairs: int, held_out: int, reliability: int, out: Path) -> None:
    """Predictors fitted on supernet-measured val pairs for three targets (accuracy, the
    search's ranking score, minus the val loss), ranked on ``held_out`` archs; and the ceiling
    any predictor faces: how well the val ranking of ``reliability`` archs agrees with their
    test ranking (a target whose val and test ranks disagree is mostly measurement noise)."""
    space, supernet, _ = load_supernet(ckpt)
    data = load_digits()
    evaluator = SubnetEvaluator(space, supernet, data, "val")
    started = time.perf_counter()
    measured = measure_pairs(
        evaluator,
        pairs,
        seed=0,
        cache=ckpt.with_suffix(".pairs.jsonl"),
        cache_key=f"bench:{ckpt.stat().st_size}",
    )
    seconds = time.perf_counter() - started
    archs, accuracies = [m.arch for m in measured], [m.accuracy for m in measured]
    report: dict[str, Any] = {
        "pairs": len(measured),
        "measure_seconds": seconds,
        "val_images": data.size("val"),
        "distinct_val_accuracies": len(set(accuracies)),
        "val_accuracy_std": float(np.std(accuracies)),
    }
    for target in ("accuracy", "score", "neg_loss"):
        values = target_values(measured, target)  # type: ignore[arg-type]
        for kind in ("mlp", "gbt"):
            _, rank = fit_and_score(space, archs, values, kind, held_out, seed=0, target=target)  # type: ignore[arg-type]
            report[f"{kind}_{target}"] = rank.to_dict()
    test = SubnetEvaluator(space, supernet, data, "test")
    cache = ckpt.with_suffix(".test-pairs.jsonl")
    tested = measure_pairs(
        test, reliability, seed=0, cache=cache, cache_key=f"bench:{ckpt.stat().st_size}"
    )
    by_short = {m.short: m for m in measured}
    shared = [(by_short[t.short], t) for t in tested if t.short in by_short]
    ceiling = {"archs": len(shared)}
    for target in ("accuracy", "score", "neg_loss"):
        val_values = target_values([v for v, _ in shared], target)  # type: ignore[arg-type]
        test_values = target_values([t for _, t in shared], target)  # type: ignore[arg-type]
        ceiling[f"{target}_spearman"] = float(spearmanr(val_values, test_values).statistic)
        ceiling[f"{target}_kendall"] = float(kendalltau(val_values, test_values).statistic)
    report["val_vs_test_ranking"] = ceiling
    _save(out, "predictor", report)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--home", type=Path, default=Path("/tmp/nasvit-bench"))
    parser.add_argument("--out", type=Path, default=None, help="JSON results (default: HOME/)")
    parser.add_argument(
        "--only", nargs="*", default=["default", "gap", "step", "uniform", "predictor"]
    )
    parser.add_argument("--random", type=int, default=100, help="random subnets for spreads")
    parser.add_argument("--pairs", type=int, default=600, help="(arch, accuracy) pairs")
    parser.add_argument("--held-out", type=int, default=200)
    parser.add_argument(
        "--reliability", type=int, default=100, help="archs also measured on test (ceiling)"
    )
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--repeats", type=int, default=9, help="step pairs per arch")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    args.home.mkdir(parents=True, exist_ok=True)
    out = args.out or args.home / "bench_training.json"
    _save(out, "settings", {"threads": args.threads, "torch": torch.__version__})
    ckpt = default_supernet_path(SPACE, args.home, RECIPE)
    if "default" in args.only:
        ckpt = bench_default(args.home, args.random, out)
    if "gap" in args.only:
        bench_gap(ckpt, 20, out)
    if "step" in args.only:
        bench_step(ckpt, args.repeats, out)
    if "uniform" in args.only:
        bench_uniform(ckpt, args.home, args.random, out)
    if "predictor" in args.only:
        bench_predictor(ckpt, args.pairs, args.held_out, args.reliability, out)


if __name__ == "__main__":
    main()

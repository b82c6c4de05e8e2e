"""Training / evaluation / predictor figures for the README (issue 4 targets).

Sections (``--only`` picks some; results are merged into ``--out`` JSON as each finishes):

- ``default``: train the default efficientformer supernet on digits (fresh ``--home``) and time
  it; test accuracy of its largest and smallest subnets; spread over ``--random`` subnets.
- ``gap``: a subnet evaluated standalone (extracted, BN recalibrated) vs inside the supernet.
- ``step``: training-step time of the supernet at an arch vs the extracted static subnet.
- ``uniform``: uniform single-subnet sampling trained for the same wall time as the default
  (sandwich) run, and the spread of the same random subnets under both.
- ``predictor``: MLP and GBT predictors fitted on supernet-measured (arch, val accuracy) pairs,
  Spearman / Kendall tau on ``--held-out`` archs.

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
from scipy.stats import spearmanr

from nasvit.checkpoint import load_supernet
from nasvit.data import load_digits
from nasvit.default_supernet import default_supernet_path, ensure_default_supernet, recipe_for
from nasvit.evaluate import SubnetEvaluator, accuracy_spread
from nasvit.predictor import fit_and_score, measure_pairs
from nasvit.train import train_supernet

SPACE = "efficientformer"


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
    path = default_supernet_path(SPACE, home)
    started = time.perf_counter()
    ensure_default_supernet(SPACE, home, progress=False)
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


def _step_seconds(run: Any, params: list[torch.nn.Parameter], x: torch.Tensor, steps: int) -> float:
    y = torch.arange(x.shape[0]) % 10
    optimizer = torch.optim.AdamW(params, lr=1e-4, fused=True)
    times = []
    for _ in range(steps + 2):
        started = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        F.cross_entropy(run(x), y).backward()
        optimizer.step()
        times.append(time.perf_counter() - started)
    return statistics.median(times[2:])


def bench_step(ckpt: Path, steps: int, out: Path) -> None:
    space, supernet, _ = load_supernet(ckpt)
    supernet.train()
    rng = np.random.default_rng(3)
    rows = []
    for arch in [space.largest(), space.smallest()] + [space.sample(rng) for _ in range(3)]:
        x = torch.randn(64, supernet.in_channels, arch["resolution"], arch["resolution"])
        static = supernet.extract(arch).train()
        t_static = _step_seconds(static, list(static.parameters()), x, steps)
        t_super = _step_seconds(
            lambda x, a=arch: supernet(x, a), list(supernet.parameters()), x, steps
        )
        rows.append(
            {
                "arch": space.short_string(arch),
                "static_s": t_static,
                "supernet_s": t_super,
                "ratio": t_super / t_static,
            }
        )
    _save(out, "step", {"batch": 64, "rows": rows, "max_ratio": max(r["ratio"] for r in rows)})


def bench_uniform(ckpt: Path, home: Path, count: int, out: Path) -> None:
    sandwich = [json.loads(line) for line in Path(f"{ckpt}.metrics.jsonl").read_text().splitlines()]
    budget = sum(e["seconds"] for e in sandwich)
    recipe = recipe_for(SPACE)
    from nasvit.search_spaces import get_space

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


def bench_predictor(ckpt: Path, pairs: int, held_out: int, out: Path) -> None:
    space, supernet, _ = load_supernet(ckpt)
    evaluator = SubnetEvaluator(space, supernet, load_digits(), "val")
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
        "val_accuracy_std": float(np.std(accuracies)),
    }
    # Val accuracy on digits is quantised (1 image = 0.56 points) and subnets differ by little,
    # so also report the ranking of the continuous val cross-entropy (lower is better).
    losses = [-m.loss for m in measured]
    for kind in ("mlp", "gbt"):
        _, rank = fit_and_score(space, archs, accuracies, kind, held_out, seed=0)
        report[kind] = rank.to_dict()
        _, rank = fit_and_score(space, archs, losses, kind, held_out, seed=0, target="neg_loss")
        report[f"{kind}_on_val_loss"] = rank.to_dict()
    report["val_accuracy_vs_loss_spearman"] = float(
        spearmanr(accuracies, losses).statistic  # how much ranking loss says about accuracy
    )
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
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    args.home.mkdir(parents=True, exist_ok=True)
    out = args.out or args.home / "bench_training.json"
    _save(out, "settings", {"threads": args.threads, "torch": torch.__version__})
    ckpt = default_supernet_path(SPACE, args.home)
    if "default" in args.only:
        ckpt = bench_default(args.home, args.random, out)
    if "gap" in args.only:
        bench_gap(ckpt, 20, out)
    if "step" in args.only:
        bench_step(ckpt, 5, out)
    if "uniform" in args.only:
        bench_uniform(ckpt, args.home, args.random, out)
    if "predictor" in args.only:
        bench_predictor(ckpt, args.pairs, args.held_out, out)


if __name__ == "__main__":
    main()

"""Search benchmarks (issue 5): scoring throughput, Ray throughput, sample efficiency.

Uses the default efficientformer supernet and this CPU's latency table (both cached under
$NASVIT_HOME; `make demo` creates them).

    .venv/bin/python bench/bench_search.py scoring            # candidates/s, predictor + table
    .venv/bin/python bench/bench_search.py scoring --clock cpu  # same, timed by CPU time
    .venv/bin/python bench/bench_search.py ray --archs 64     # evaluations/s: Ray actors, cluster
    .venv/bin/python bench/bench_search.py efficiency --seeds 5 --evaluations 1200

Sample efficiency: 1,200 real supernet evaluations per run x 5 controllers x 5 seeds would take
hours on 2 cores, so the runs score candidates with an *oracle*: an MLP fitted on the ranking
scores (accuracy with the loss tie-break) of ``--oracle-archs`` real supernet evaluations, plus
the real latency table. The predictor-assisted controller's own surrogate is a different model
family (gradient-boosted trees) that only sees what it was told. Hypervolume uses the budget as
the latency reference and the oracle's 5th-percentile score of random archs as the floor, so
the figures compare the part of the front that matters.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from nasvit.evaluation.ranking import ranking_score
from nasvit.search_spaces import Architecture, SearchSpace
from nasvit.searching.controllers import make_controller
from nasvit.searching.pareto import hypervolume

BUDGET_MS = 2.0
CHECKPOINTS = (50, 100, 200, 300, 400, 600, 800, 1200)
EFFICIENCY_CONTROLLERS = ("random", "optuna-nsga2", "tpe", "nsga2", "evolution", "predictor")


def load_defaults() -> tuple[SearchSpace, Any, Any, dict[str, int]]:
    """(space, supernet, latency table, shape args) of the README's main job."""
    from nasvit.evaluation.latency import resolve_device
    from nasvit.latency_db import LatencyStore, LatencyTable
    from nasvit.settings import load_settings
    from nasvit.training.default_supernet import default_supernet, recipe_for

    settings = load_settings()  # the NASVIT_* environment, as `nasvit search` reads it
    space, supernet, _ = default_supernet(
        "efficientformer", home=settings.home, recipe=recipe_for("efficientformer")
    )
    store = LatencyStore.open(settings.resolved_database_url)
    device, _profiler = resolve_device(store, None)
    table = LatencyTable.load(store, device.id, space.identity)
    shape = {"num_classes": supernet.num_classes, "in_channels": supernet.in_channels}
    return space, supernet, table, shape


def bench_scoring(count: int, clock: str = "wall") -> dict[str, float]:
    """Candidates/s scored by an accuracy predictor plus the latency table (no supernet).

    ``clock="cpu"`` times with this process's CPU time: on a core shared with another job the
    wall clock counts the other job's time slices too (single-threaded scoring, so on an idle
    core the two agree)."""
    from nasvit.searching.controllers.predictor_assisted import Surrogate

    now = time.perf_counter if clock == "wall" else time.process_time
    space, _, table, shape = load_defaults()
    rng = np.random.default_rng(0)
    train = [space.sample(rng) for _ in range(400)]
    surrogate = Surrogate(space, seed=0)
    surrogate.fit(train, rng.uniform(0.9, 1.0, size=len(train)))  # values do not affect speed
    candidates = [space.sample(rng) for _ in range(count)]
    started = now()
    accuracy = surrogate.predict(candidates)
    accuracy_s = now() - started
    started = now()
    networks = [space.lower(a, **shape) for a in candidates]
    lowering_s = now() - started
    latency = table.predict_many(networks)
    latency_s = now() - started
    one_by_one = [table.predict(space.lower(a, **shape)).latency_ms for a in candidates[:500]]
    assert np.allclose(latency[:500], one_by_one) and accuracy.shape == (count,)
    return {
        "candidates": count,
        "clock": clock,
        "accuracy_per_s": count / accuracy_s,
        "latency_per_s": count / latency_s,  # lowering plus the table
        "lowering_us": 1e6 * lowering_s / count,
        "table_us": 1e6 * (latency_s - lowering_s) / count,
        "scored_per_s": count / (accuracy_s + latency_s),
    }


def bench_ray(archs: int, rounds: int) -> dict[str, Any]:
    """Supernet evaluations/s of the main job's supernet: this process with torch's threads
    (``--workers 1``), one and two local Ray actors, two actors on a two-node loopback cluster
    (one CPU per node, token authentication on), and the same cluster with one actor's process
    killed a quarter into the batch (the recovery cost).

    The configurations take turns, ``rounds`` times, so the machine's drift reaches them alike;
    each figure is the median over rounds with its range. Every run's results must equal the
    in-process run with one torch thread."""
    import torch

    from nasvit.data import load_dataset
    from nasvit.evaluation.evaluator import SubnetEvaluator
    from nasvit.searching.executors import InProcessExecutor, RayExecutor
    from nasvit.training.default_supernet import recipe_for

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from nasvit_testing.ray_cluster import RayCluster

    space, supernet, _, _ = load_defaults()
    recipe = recipe_for("efficientformer")
    evaluator = SubnetEvaluator(
        space, supernet, load_dataset(recipe.data, seed=recipe.data_seed), "val"
    )
    rng = np.random.default_rng(1)
    batch = [space.sample(rng) for _ in range(archs)]
    default_threads = torch.get_num_threads()
    torch.set_num_threads(1)
    reference = InProcessExecutor(evaluator).evaluate(batch)
    cluster = RayCluster.start(cpus=1)
    seconds: dict[str, list[float]] = {}
    recovery: list[dict[str, Any]] = []
    identical = True
    try:
        cluster.add_node(cpus=1)
        for name in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN"):
            os.environ[name] = cluster.env[name]  # this process joins the cluster as a driver
        for _ in range(rounds):
            # What --workers 1 does: this process, torch's own threads (results differ from
            # the actors' in the last float bits: thread counts change the summation order).
            torch.set_num_threads(default_threads)
            started = time.perf_counter()
            InProcessExecutor(evaluator).evaluate(batch)
            seconds.setdefault("in_process", []).append(time.perf_counter() - started)
            torch.set_num_threads(1)
            for label, workers, address, kill in [
                ("local_1", 1, None, False),
                ("local_2", 2, None, False),
                ("cluster_2", 2, cluster.address, False),
                ("cluster_2_killed", 2, cluster.address, True),
            ]:
                executor = RayExecutor(evaluator, workers, address, on_event=lambda _: None)
                try:
                    executor.evaluate(batch[: 2 * workers])  # actors start, load the supernet
                    killer = _kill_an_actor_later(cluster, seconds) if kill else None
                    started = time.perf_counter()
                    outcome = executor.evaluate(batch)
                    seconds.setdefault(label, []).append(time.perf_counter() - started)
                    identical = identical and outcome == reference
                    if killer is not None:
                        killer.join()
                        report = executor.report()
                        recovery.append(
                            {
                                k: report[k]
                                for k in ("lost_actors", "rerun_chunks", "rerun_candidates")
                            }
                        )
                finally:
                    executor.close()
    finally:
        cluster.stop()
    results: dict[str, Any] = {"archs": archs, "rounds": rounds, "identical": identical}
    for label, values in seconds.items():
        rates = sorted(archs / v for v in values)
        results[f"{label}_per_s"] = {
            "median": float(np.median(rates)), "min": rates[0], "max": rates[-1]
        }  # fmt: skip
    results["in_process_threads"] = default_threads
    for label in ("in_process", "local_2", "cluster_2", "cluster_2_killed"):
        ratios = [
            one / other for one, other in zip(seconds["local_1"], seconds[label], strict=True)
        ]
        results[f"{label}_vs_local_1"] = {
            "median": float(np.median(ratios)), "min": min(ratios), "max": max(ratios)
        }  # fmt: skip
    extra = [k - u for k, u in zip(seconds["cluster_2_killed"], seconds["cluster_2"], strict=True)]
    results["recovery_extra_s"] = {
        "median": float(np.median(extra)), "min": min(extra), "max": max(extra)
    }  # fmt: skip
    results["recovery"] = recovery
    return results


def _kill_an_actor_later(cluster: Any, seconds: dict[str, list[float]]) -> Any:
    """A thread that kills one evaluator actor's process a quarter of an undisturbed cluster
    batch after it starts."""
    import threading

    delay = 0.25 * float(np.median(seconds["cluster_2"]))

    def kill() -> None:
        time.sleep(delay)
        actors = cluster.evaluator_processes()
        if actors:
            actors[0].kill()

    thread = threading.Thread(target=kill)
    thread.start()
    return thread


def fit_oracle(
    space: SearchSpace, supernet: Any, count: int, cache: Path
) -> Callable[[list[Architecture]], np.ndarray]:
    """An MLP fitted on ``count`` real supernet ranking scores (measurements cached)."""
    from nasvit.data import load_dataset
    from nasvit.evaluation.evaluator import SubnetEvaluator
    from nasvit.evaluation.predictor import AccuracyPredictor, measure_pairs
    from nasvit.training.default_supernet import recipe_for

    recipe = recipe_for("efficientformer")
    evaluator = SubnetEvaluator(
        space, supernet, load_dataset(recipe.data, seed=recipe.data_seed), "val"
    )
    pairs = measure_pairs(evaluator, count, seed=123, cache=cache, progress=True)
    archs = [space.validate(p.arch) for p in pairs]
    scores = [ranking_score(p.accuracy, p.loss) for p in pairs]
    oracle = AccuracyPredictor(space, kind="mlp", seed=0)
    oracle.fit(archs, scores)
    return lambda batch: oracle.predict(batch)


def run_controller(
    name: str,
    seed: int,
    evaluations: int,
    space: SearchSpace,
    oracle: Callable[[list[Architecture]], np.ndarray],
    latency: Callable[[Architecture], float],
    floor: float,
) -> dict[int, float]:
    controller = make_controller(name, space, BUDGET_MS, seed, latency=latency)
    curve: dict[int, float] = {}
    points: list[tuple[float, float]] = []
    while len(points) < evaluations:
        archs = controller.ask(min(16, evaluations - len(points)))
        if not archs:
            break
        for arch, score in zip(archs, oracle(archs), strict=True):
            lat = latency(arch)
            controller.tell(arch, float(score), lat)
            points.append((float(score), lat))
            if len(points) in CHECKPOINTS:
                curve[len(points)] = hypervolume(points, BUDGET_MS, floor)
    return curve


def bench_efficiency(
    seeds: int, evaluations: int, oracle_archs: int, controllers: list[str], out: Path
) -> dict[str, Any]:
    space, supernet, table, shape = load_defaults()
    oracle = fit_oracle(space, supernet, oracle_archs, out.with_suffix(".oracle.jsonl"))
    memo: dict[Architecture, float] = {}

    def latency(arch: Architecture) -> float:
        if arch not in memo:
            memo[arch] = table.predict(space.lower(arch, **shape)).latency_ms
        return memo[arch]

    rng = np.random.default_rng(7)
    floor = float(np.percentile(oracle([space.sample(rng) for _ in range(2000)]), 5))
    results: dict[str, Any] = {"floor": floor, "budget_ms": BUDGET_MS, "curves": {}}
    for name in controllers:
        started = time.perf_counter()
        curves = [
            run_controller(name, s, evaluations, space, oracle, latency, floor)
            for s in range(seeds)
        ]
        mean = {n: float(np.mean([c[n] for c in curves])) for n in curves[0]}
        results["curves"][name] = {"mean": mean, "per_seed": curves}
        print(f"{name:13s} " + " ".join(f"{n}:{v:.5f}" for n, v in mean.items()), flush=True)
        print(f"{'':13s} {time.perf_counter() - started:.0f} s", flush=True)
    if "optuna-nsga2" in results["curves"] and "predictor" in results["curves"]:
        target = results["curves"]["optuna-nsga2"]["mean"][
            max(results["curves"]["optuna-nsga2"]["mean"])
        ]
        reached = [n for n, v in results["curves"]["predictor"]["mean"].items() if v >= target]
        results["predictor_evaluations_to_reach_optuna_nsga2_final"] = min(reached, default=None)
    out.write_text(json.dumps(results, indent=2))
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("part", choices=["scoring", "ray", "efficiency"])
    parser.add_argument("--count", type=int, default=20000)
    parser.add_argument(
        "--clock", choices=["wall", "cpu"], default="wall", help="scoring: what times it"
    )
    parser.add_argument("--archs", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3, help="ray: interleaved rounds")
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--evaluations", type=int, default=1200)
    parser.add_argument("--oracle-archs", type=int, default=400)
    parser.add_argument("--controllers", nargs="+", default=list(EFFICIENCY_CONTROLLERS))
    parser.add_argument("--out", type=Path, default=Path("test-artifacts/bench_search.json"))
    args = parser.parse_args()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    if args.part == "scoring":
        result = bench_scoring(args.count, args.clock)
    elif args.part == "ray":
        result = bench_ray(args.archs, args.rounds)
        # Also to a file: Ray's own messages about the killed actor go to stdout too.
        args.out.write_text(json.dumps(result, indent=2))
    else:
        result = bench_efficiency(
            args.seeds, args.evaluations, args.oracle_archs, args.controllers, args.out
        )
        result = {k: v for k, v in result.items() if k != "curves"}
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()

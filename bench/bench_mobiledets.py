"""Figures of the mobiledets spaces (CPU and accelerator variants).

Prints (1) the released backbones as points of the spaces: parameters and MACs at 320x320;
(2) per variant: space size, supernet parameters, blocks the default recipe's latency table
holds; (3) with ``--train-epoch``: wall and CPU time of one epoch of the default recipe on digits
(and its largest/smallest validation accuracy); (4) with ``--ckpt``: validation accuracy of
``--random`` random subnets of a trained supernet (BatchNorm recalibrated), to show the spread.
Run:

    .venv/bin/python bench/bench_mobiledets.py [--threads 1] [--train-epoch] [--ckpt X.pt]
"""

from __future__ import annotations

import argparse
import statistics
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

from nasvit.search_spaces import get_space
from nasvit.training.default_supernet import recipe_for

SPACES = ("mobiledets", "mobiledets_accelerator")


def macs(module: torch.nn.Module, shape: tuple[int, ...]) -> int:
    counter = FlopCounterMode(display=False)
    with counter, torch.inference_mode():
        module(torch.randn(shape))
    return counter.get_total_flops() // 2


def references() -> None:
    print("| space | backbone | parameters (backbone / with 1000-class head) | GMACs at 320 |")
    print("|---|---|---|---|")
    for name in SPACES:
        space = get_space(name)
        for ref, arch in space.reference_archs().items():
            subnet = space.build_subnet(arch, num_classes=1000)
            total = sum(p.numel() for p in subnet.parameters())
            backbone = sum(p.numel() for p in subnet[:-1].parameters())
            gmacs = macs(subnet, space.input_shape(arch)) / 1e9
            print(f"| {name} | {ref} | {backbone / 1e6:.2f}M / {total / 1e6:.2f}M | {gmacs:.2f} |")


def variants() -> None:
    print("\n| space | architectures | supernet parameters | default-recipe blocks at 32 |")
    print("|---|---|---|---|")
    for name in SPACES:
        space = get_space(name)
        supernet = space.build_supernet(num_classes=10, in_channels=1)
        parameters = sum(p.numel() for p in supernet.parameters())
        restricted = space.restrict(**recipe_for(name).restrictions)
        blocks = len(restricted.enumerate_blocks(num_classes=10, in_channels=1))
        print(f"| {name} | {space.size():.2e} | {parameters / 1e6:.1f}M | {blocks} |")


def train_epoch(name: str, out: Path) -> None:
    from nasvit.data import load_digits
    from nasvit.training import train_supernet

    recipe = recipe_for(name)
    space = get_space(name).restrict(**recipe.restrictions)
    config = replace(recipe.train, epochs=1, device="cpu")
    wall, cpu = time.perf_counter(), time.process_time()
    result = train_supernet(space, load_digits(seed=recipe.data_seed), config, out, progress=False)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    record = result.history[-1]
    print(
        f"\n{name}: one default-recipe epoch {wall:.1f} s wall, {cpu:.1f} s CPU "
        f"({recipe.train.epochs} epochs ~{wall * recipe.train.epochs / 60:.1f} min); "
        f"val largest {record['val_largest']:.3f}, smallest {record['val_smallest']:.3f}"
    )


def spread(ckpt: Path, count: int, seed: int) -> None:
    from nasvit.data import load_digits
    from nasvit.evaluation.evaluator import SubnetEvaluator
    from nasvit.training.checkpoint import load_supernet

    space, supernet, _ = load_supernet(ckpt)
    evaluator = SubnetEvaluator(space, supernet, load_digits(seed=0), "val")
    rng = np.random.default_rng(seed)
    archs = [space.largest(), space.smallest()] + [space.sample(rng) for _ in range(count)]
    accuracies = [evaluator.evaluate(arch).accuracy for arch in archs]
    randoms = accuracies[2:]
    print(
        f"\n{space.name} {ckpt.name}: largest {accuracies[0]:.3f}, smallest {accuracies[1]:.3f}; "
        f"{count} random subnets {min(randoms):.3f}-{max(randoms):.3f}, "
        f"mean {statistics.mean(randoms):.3f}, std {statistics.pstdev(randoms):.3f}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--train-epoch", action="store_true")
    parser.add_argument("--space", choices=SPACES, default="mobiledets")
    parser.add_argument("--ckpt", type=Path, default=None, help="trained supernet for --random")
    parser.add_argument("--random", type=int, default=50)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    references()
    variants()
    if args.train_epoch:
        train_epoch(args.space, Path("/tmp") / f"bench-{args.space}-epoch.pt")
    if args.ckpt is not None:
        spread(args.ckpt, args.random, args.seed)


if __name__ == "__main__":
    main()

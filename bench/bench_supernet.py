"""Weight-sharing overhead and the reference table of the efficientformer space.

Prints (1) forward time of the supernet at an architecture vs the extracted static subnet at
batch 1 on CPU (median of interleaved repeats, so machine noise hits both alike) and (2)
parameters and MACs of the reference architectures. Run:

    .venv/bin/python bench/bench_supernet.py [--threads 1] [--archs 8] [--repeats 30]
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

from nasvit.search_spaces import get_space


def _time_once(run, x) -> float:
    start = time.perf_counter()
    run(x)
    return time.perf_counter() - start


def forward_ratio(space, supernet, arch, repeats: int) -> tuple[float, float]:
    subnet = supernet.extract(arch).eval()
    x = torch.randn(space.input_shape(arch))
    with torch.inference_mode():
        for _ in range(5):  # warm-up both paths
            supernet(x, arch)
            subnet(x)
        super_times, sub_times = [], []
        for _ in range(repeats):
            super_times.append(_time_once(lambda t: supernet(t, arch), x))
            sub_times.append(_time_once(subnet, x))
    return statistics.median(super_times) * 1e3, statistics.median(sub_times) * 1e3


def macs(module, shape) -> int:
    counter = FlopCounterMode(display=False)
    with counter, torch.inference_mode():
        module(torch.randn(shape))
    return counter.get_total_flops() // 2


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--archs", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    space = get_space("efficientformer")
    supernet = space.build_supernet(num_classes=1000).eval()
    rng = np.random.default_rng(args.seed)
    archs = list(space.reference_archs().items())[:1] + [
        (f"random-{i}", space.sample(rng)) for i in range(args.archs)
    ]
    print(f"## supernet vs extracted subnet, batch 1, {args.threads} thread(s), torch eager")
    print("| arch | resolution | supernet ms | subnet ms | ratio |")
    print("|---|---|---|---|---|")
    ratios = []
    for name, arch in archs:
        super_ms, sub_ms = forward_ratio(space, supernet, arch, args.repeats)
        ratios.append(super_ms / sub_ms)
        print(
            f"| {name} | {arch['resolution']} | {super_ms:.2f} | {sub_ms:.2f} | "
            f"{super_ms / sub_ms:.3f} |"
        )
    print(f"\nmedian ratio {statistics.median(ratios):.3f}, max {max(ratios):.3f}\n")
    print("## reference architectures (1000 classes, distillation head included)")
    print("| name | parameters | GMACs | short string |")
    print("|---|---|---|---|")
    for name, arch in space.reference_archs().items():
        subnet = space.build_subnet(arch)
        parameters = sum(p.numel() for p in subnet.parameters())
        gmacs = macs(subnet, space.input_shape(arch)) / 1e9
        print(f"| {name} | {parameters / 1e6:.2f}M | {gmacs:.2f} | `{space.short_string(arch)}` |")
    smallest = space.smallest()
    subnet = space.build_subnet(smallest)
    print(
        f"| smallest | {sum(p.numel() for p in subnet.parameters()) / 1e6:.2f}M | "
        f"{macs(subnet, space.input_shape(smallest)) / 1e9:.4f} | "
        f"`{space.short_string(smallest)}` |"
    )


if __name__ == "__main__":
    main()

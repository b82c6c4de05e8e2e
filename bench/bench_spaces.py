"""Transformer spaces (lighthubert, lighthubert_small, attention_variants): reference points and
latency against the number of tokens.

Prints (1) parameters and MACs of the reference architectures next to the published parameter
counts, (2) onnxruntime latency (1 thread, thread CPU clock) of each token mixer block and of the
FFN block at every resolution of the space (patch 16: 4 to 196 tokens), so the cost of softmax
attention growing with the token count is visible next to the linear-cost mixers, and (3) with
``--recipe-epoch``, the CPU time of the first epoch of each space's default digits
recipe on one thread (times the recipe's epochs: a single-core bound for the default supernet,
robust to other load on the machine because it counts CPU time, not wall time).

    .venv/bin/python bench/bench_spaces.py [--dim 192 --heads 3] [--recipe-epoch]

Latency-table fidelity per space: ``bench/bench_latency.py --spaces ...``.
"""

from __future__ import annotations

import argparse
import tempfile

import torch
from torch.utils.flop_counter import FlopCounterMode

from nasvit.latency_db import OnnxRuntimeProfiler
from nasvit.search_spaces import get_space

SPACES = ("lighthubert", "lighthubert_small", "attention_variants")
PUBLISHED_PARAMETERS = {"deit_tiny": 5.7e6, "deit_small": 22.1e6, "deit_base": 86.6e6}


def macs(module: torch.nn.Module, shape: tuple[int, ...]) -> int:
    counter = FlopCounterMode(display=False)
    with counter, torch.inference_mode():
        module(torch.randn(shape))
    return counter.get_total_flops() // 2


def reference_table() -> None:
    print("## reference architectures (224x224, 1000 classes)")
    print("| space | name | parameters | published | GMACs |")
    print("|---|---|---|---|---|")
    for space_name in SPACES:
        space = get_space(space_name)
        for name, arch in space.reference_archs().items():
            subnet = space.build_subnet(arch)
            parameters = sum(p.numel() for p in subnet.parameters())
            print(
                f"| {space_name} | {name} | {parameters / 1e6:.2f}M | "
                f"{PUBLISHED_PARAMETERS[name] / 1e6:.1f}M | "
                f"{macs(subnet, space.input_shape(arch)) / 1e9:.2f} |"
            )


def token_table(dim: int, heads: int, profiler: OnnxRuntimeProfiler) -> None:
    space = get_space("attention_variants")
    resolutions = space.dimension("resolution").choices  # type: ignore[union-attr]
    print(f"\n## block latency vs tokens, embed {dim}, {heads} heads, MLP ratio 4")
    print("onnxruntime 1 thread, median ms (thread CPU clock)\n")
    header = " | ".join(f"{(r // 16) ** 2} tok" for r in resolutions)
    print(f"| block | {header} |")
    print("|---" * (len(resolutions) + 1) + "|")
    for mixer in ("softmax", "relpos", "linear", "shsa", "pool", "ffn"):
        cells = []
        for resolution in resolutions:
            arch = space.validate(
                {
                    "resolution": resolution,
                    "embed_dim": dim,
                    "depth": 1,
                    "mixer": ["identity" if mixer == "ffn" else mixer],
                    "heads": [heads],
                    "mlp_ratio": [4],
                }
            )
            blocks = space.lower(arch)
            block = blocks[1]  # after the patch embedding
            assert block.kind == f"transformer.{mixer}", block.kind
            cells.append(f"{profiler.measure(block.build(), block.input_shape).median_ms:.3f}")
        print(f"| {mixer} | " + " | ".join(cells) + " |")


def recipe_epoch() -> None:
    import dataclasses
    import time

    from nasvit.data import load_dataset
    from nasvit.training import train_supernet
    from nasvit.training.default_supernet import recipe_for

    print("\n## default digits recipe: first epoch on 1 thread (CPU time)")
    print("| space | epochs | CPU s, epoch 1 | x epochs (1 core) | val largest | val smallest |")
    print("|---|---|---|---|---|---|")
    for space_name in SPACES:
        recipe = recipe_for(space_name)
        space = get_space(space_name).restrict(**recipe.restrictions)
        config = dataclasses.replace(recipe.train, device="cpu")
        with tempfile.TemporaryDirectory() as folder:
            started = time.process_time()
            result = train_supernet(
                space,
                load_dataset(recipe.data, seed=recipe.data_seed),
                config,
                f"{folder}/supernet.pt",
                progress=False,
                stop_after=1,
            )
            seconds = time.process_time() - started
        record = result.history[-1]
        print(
            f"| {space_name} | {config.epochs} | {seconds:.0f} | "
            f"{seconds * config.epochs / 60:.1f} min | {record['val_largest']:.1%} | "
            f"{record['val_smallest']:.1%} |",
            flush=True,
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--dim", type=int, default=192)
    parser.add_argument("--heads", type=int, default=3)
    parser.add_argument("--recipe-epoch", action="store_true", help="time the digits recipes")
    parser.add_argument("--skip-tables", action="store_true", help="only the optional parts")
    args = parser.parse_args()
    torch.set_num_threads(1)
    if not args.skip_tables:
        reference_table()
        token_table(args.dim, args.heads, OnnxRuntimeProfiler(threads=1))
    if args.recipe_epoch:
        recipe_epoch()


if __name__ == "__main__":
    main()

"""LightHuBERT's two-stage recipe vs the one-stage default on digits (README figure, issue 7).

Three runs of one space's default recipe (restrictions and training settings of
``nasvit.training.default_supernet.recipe_for``), all in ``--dir``:

- ``one``: the one-stage default (no teacher). It is also the teacher of the other two.
- ``two``: ``train_two_stage`` with teacher ``one``: ``--stage1-epochs`` of stage 1 (the largest
  subnet regresses the teacher's hidden states, L1), then the default epochs once-for-all from
  the stage-1 weights, still distilling from the teacher.
- ``taught``: the one-stage default with the same teacher terms but no stage 1, which separates
  what stage 1 adds from what the teacher's logits and features add.

Reports test accuracy of the largest and smallest subnets and the spread over ``--random``
random subnets (the same archs for every run), and each run's training time. Finished
checkpoints are reused (an equal-settings ``nasvit train`` run in ``--dir`` counts).

Run: ``OMP_NUM_THREADS=1 taskset -c 1 .venv/bin/python bench/bench_two_stage.py --dir /tmp/lh7``
"""

from __future__ import annotations

import argparse
import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from nasvit.data import load_digits
from nasvit.evaluation.evaluator import SubnetEvaluator, accuracy_spread
from nasvit.search_spaces import get_space
from nasvit.training import train_supernet, train_two_stage
from nasvit.training.checkpoint import load_supernet
from nasvit.training.default_supernet import recipe_for


def _seconds(path: Path) -> float:
    """Training time of a checkpoint: the sum of its epochs' times."""
    _, _, extra = load_supernet(path)
    return float(sum(record["seconds"] for record in json.loads(extra["history"])))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--space", default="lighthubert_small")
    parser.add_argument("--dir", type=Path, required=True)
    parser.add_argument("--stage1-epochs", type=int, default=3)
    parser.add_argument("--random", type=int, default=16)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    recipe = recipe_for(args.space)
    space = get_space(args.space).restrict(**recipe.restrictions)
    dataset = load_digits(seed=recipe.data_seed)
    base = replace(recipe.train, device="cpu")
    one = args.dir / "one.pt"
    train_supernet(space, dataset, base, one, resume=one.is_file(), progress=False)
    taught_config = replace(base, teacher=str(one))
    two = args.dir / "two.pt"
    train_two_stage(
        space, dataset, taught_config, two, args.stage1_epochs, resume=True, progress=False
    )
    taught = args.dir / "taught.pt"
    train_supernet(space, dataset, taught_config, taught, resume=taught.is_file(), progress=False)

    rng = np.random.default_rng(0)
    archs = [space.sample(rng) for _ in range(args.random)]
    report: dict[str, Any] = {"space": args.space, "stage1_epochs": args.stage1_epochs}
    for name, path in (("one", one), ("two", two), ("taught", taught)):
        _, supernet, _ = load_supernet(path)
        evaluator = SubnetEvaluator(space, supernet, dataset, "test", seed=0)
        seconds = _seconds(path)
        if name == "two":
            seconds += _seconds(args.dir / "two.stage1.pt")
        report[name] = {
            "largest": evaluator.evaluate(space.largest()).accuracy,
            "smallest": evaluator.evaluate(space.smallest()).accuracy,
            "random": accuracy_spread(evaluator.evaluate_many(archs)),
            "train_seconds": seconds,
        }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()

"""The default supernet of a space: trained once on bundled data, cached under nasvit's home.

``nasvit search`` must work on a fresh machine with no other step, so when no checkpoint is
given the pipeline calls :func:`default_supernet`. The first call trains a small supernet on
scikit-learn's digits (plain, or distorted as ``digits-affine``; progress shown) and caches it as
``<home>/supernets/<space>-<data>-<recipe hash>.pt``; later calls load it. ``home`` is passed
in (the pipeline passes its settings' home), else it is the environment's settings' home. The
hash covers the recipe (restrictions and training settings), so changing a recipe retrains
instead of loading stale weights.

Concurrency: a file lock serialises trainers of the same recipe (a second process waits, then
loads what the first wrote); training writes ``<name>.partial`` and renames it into place, so a
reader never sees a torn or half-trained file, and a killed trainer's partial file is resumed.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from filelock import FileLock

from nasvit.data import load_dataset
from nasvit.errors import NasvitError
from nasvit.evaluation.evaluator import SubnetEvaluator
from nasvit.nn import Supernet
from nasvit.search_spaces import SearchSpace, get_space
from nasvit.settings import load_settings
from nasvit.training.checkpoint import load_supernet
from nasvit.training.config import TrainConfig
from nasvit.training.loop import train_supernet

RECIPE_VERSION = 1
# Blocks per stage of the default efficientformer supernet.
EFFICIENTFORMER_MAX_DEPTHS = (4, 4, 8, 4)


@dataclass(frozen=True)
class Recipe:
    """How a space's default supernet is trained on bundled data."""

    restrictions: dict[str, Any] = field(default_factory=dict)  # arguments of space.restrict
    train: TrainConfig = TrainConfig()
    data_seed: int = 0  # seed of the data split
    data: str = "digits"  # a bundled dataset (nasvit.data.BUNDLED_DATASETS)

    def fingerprint(self) -> str:
        recipe: dict[str, Any] = {
            "version": RECIPE_VERSION,
            "restrictions": self.restrictions,
            "train": {k: v for k, v in self.train.key_dict().items() if k != "device"},
            "data_seed": self.data_seed,
        }
        if self.data != "digits":  # added later: digits recipes keep their fingerprints
            recipe["data"] = self.data
        text = json.dumps(
            recipe,
            sort_keys=True,
            default=list,
        )
        return hashlib.sha256(text.encode()).hexdigest()[:12]


def smaller_half_widths(space_name: str = "efficientformer") -> list[list[int]]:
    """The smaller half of each stage's width choices (a sandwich step ~2x cheaper than full
    widths)."""
    widths = get_space(space_name).choices("widths")
    return [list(c[: (len(c) + 1) // 2]) for c in widths]


def _efficientformer_recipe() -> Recipe:
    """A space in which a 2 ms budget binds on a 2-core CPU, trained in minutes.

    - Data: ``digits-affine``. On plain digits every subnet, the smallest (0.05 ms) included,
      reached the same 98.3% after 30 epochs, so no budget changed the best subnet.
    - Resolution 64: with the distorted digits at 32, subnets above ~0.3 ms were no more
      accurate than those below, while at 64 accuracy kept rising with latency up to the
      largest subnet (Spearman 0.70 over 52 random subnets after 8 epochs).
    - The smaller half of each stage's widths and at most 4/4/8/4 blocks per stage (4 of them
      attention blocks) keep a sandwich step cheap; at r32 the deeper stacks added latency but no
      accuracy. The largest subnet runs well above a 2 ms budget (4 ms predicted
      on this machine's table).
    """
    return Recipe(
        restrictions={
            "resolution": [64],
            "widths": smaller_half_widths(),
            "depths": [list(range(1, n + 1)) for n in EFFICIENTFORMER_MAX_DEPTHS],
            "vit_num": list(range(EFFICIENTFORMER_MAX_DEPTHS[-1] + 1)),
        },
        train=TrainConfig(epochs=10, batch_size=64, lr=2e-3, num_random=2),
        data="digits-affine",
    )


def _mobiledets_recipe(space_name: str) -> Recipe:
    """Resolution 32 (stride-32 network on upsampled 8x8 digits) and the smallest width
    choices of the stem and each stage (three on the CPU variant: these include MobileDet-CPU's
    widths; two on the accelerator variant, whose fused and Tucker blocks triple the block
    count), so a step stays cheap and the latency table at 32 holds a few hundred blocks. The
    accelerator variant also holds each stage's first layer to one block type: with the type
    mixed there, random subnets stayed at chance accuracy after 8 epochs."""
    space = get_space(space_name)
    widths = space.choices("widths")
    kept = 3 if space_name == "mobiledets" else 2
    restrictions: dict[str, Any] = {
        "resolution": [32],
        "widths": [list(c[:kept]) for c in widths],
    }
    if space_name == "mobiledets_accelerator":  # one block type per stage's first layer
        restrictions["ops"] = space.typed_first_layers()  # type: ignore[attr-defined]
    return Recipe(
        restrictions=restrictions,
        train=TrainConfig(epochs=8, batch_size=64, lr=2e-3, num_random=2),
    )


def _attention_variants_recipe() -> Recipe:
    """Resolution 64 (patch 16: a 4x4 token grid, so pooling and relative positions mean
    something on 8x8 digits), the two smallest widths, up to 6 layers and 1-2 heads: every mixer
    stays in the space while a sandwich step costs little."""
    return Recipe(
        restrictions={
            "resolution": [64],
            "embed_dim": [64, 128],
            "depth": [1, 2, 3, 4, 5, 6],
            "heads": [1, 2],
            "mlp_ratio": [2, 4],
        },
        train=TrainConfig(epochs=15, batch_size=32, lr=1e-3, num_random=2),
    )


def _lighthubert_recipe(space_name: str) -> Recipe:
    """The 768-wide supernet is kept whole, so the subnets trained are cut down instead:
    the smallest width, 4 tokens (resolution 32, patch 16) and for the small space also 16
    (resolution 64). One uniformly sampled subnet per step (LightHuBERT's recipe) at a low
    learning rate: with 1e-3 the post-LN supernet collapsed to chance on digits within two
    epochs, while a single subnet trained fine; 3e-4 trains both."""
    if space_name == "lighthubert":
        restrictions: dict[str, Any] = {"resolution": [32], "embed_dim": [512]}
    else:
        restrictions = {"resolution": [32, 64], "embed_dim": [256]}
    return Recipe(
        restrictions=restrictions,
        train=TrainConfig(
            epochs=8 if space_name == "lighthubert" else 10,
            batch_size=32,
            lr=3e-4,
            sampling="uniform",
        ),
    )


def recipe_for(space_name: str) -> Recipe:
    """The default recipe of ``space_name``; spaces without their own train at their smallest
    resolution with default settings."""
    if space_name == "efficientformer":
        return _efficientformer_recipe()
    if space_name in ("mobiledets", "mobiledets_accelerator"):
        return _mobiledets_recipe(space_name)
    if space_name == "attention_variants":
        return _attention_variants_recipe()
    if space_name in ("lighthubert", "lighthubert_small"):
        return _lighthubert_recipe(space_name)
    space = get_space(space_name)
    names = [d.name for d in space.searched_dimensions]
    if "resolution" in names:
        smallest = min(space.choices("resolution"))
        return Recipe(restrictions={"resolution": [smallest]})
    return Recipe()


def nasvit_home(home: str | Path | None = None) -> Path:
    """``home``, else the environment's settings' (:attr:`nasvit.settings.Settings.home`:
    ``$NASVIT_HOME``, default ``~/.nasvit``)."""
    return Path(home) if home is not None else load_settings().home


def default_supernet_path(
    space_name: str, home: str | Path | None = None, recipe: Recipe | None = None
) -> Path:
    """Where the default supernet of ``space_name`` is (or will be) cached."""
    recipe = recipe or recipe_for(space_name)
    return nasvit_home(home) / "supernets" / f"{space_name}-{recipe.data}-{recipe.fingerprint()}.pt"


def ensure_default_supernet(
    space_name: str,
    home: str | Path | None = None,
    progress: bool = True,
    recipe: Recipe | None = None,
    device: str = "auto",
) -> Path:
    """Train the default supernet unless it is cached; return its checkpoint path."""
    recipe = recipe or recipe_for(space_name)
    path = default_supernet_path(space_name, home, recipe)
    if path.is_file():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(path) + ".lock"):
        if path.is_file():  # another process trained it while we waited
            return path
        space: SearchSpace = get_space(space_name)
        if recipe.restrictions:
            space = space.restrict(**recipe.restrictions)
        partial = path.with_name(path.name + ".partial")
        if progress:
            from rich.console import Console

            Console(stderr=True).print(
                f"training the default {space_name} supernet on {recipe.data} once "
                f"({recipe.train.epochs} epochs; cached at {path})"
            )
        train_supernet(
            space,
            load_dataset(recipe.data, seed=recipe.data_seed),
            replace(recipe.train, device=device),
            partial,
            resume=partial.is_file(),
            progress=progress,
            metrics_path=path.with_name(path.name + ".metrics.jsonl"),
        )
        partial.replace(path)
    return path


def default_supernet(
    space_name: str,
    home: str | Path | None = None,
    progress: bool = True,
    recipe: Recipe | None = None,
) -> tuple[SearchSpace, Supernet, dict[str, Any]]:
    """(restricted space, supernet in eval mode, checkpoint extra) of the default supernet,
    training and caching it on first use.

    Raises:
        NasvitError: unknown space, or a cached file that cannot be read (delete it to retrain).
    """
    path = ensure_default_supernet(space_name, home, progress, recipe)
    try:
        return load_supernet(path)
    except NasvitError as exc:
        raise NasvitError(f"{exc} (delete {path} to retrain the default supernet)") from None


def default_evaluator(
    space_name: str, home: str | Path | None = None, progress: bool = True, split: str = "val"
) -> SubnetEvaluator:
    """A :class:`SubnetEvaluator` over the default supernet and the data split it was
    trained with: what a search without a checkpoint scores candidates with."""
    recipe = recipe_for(space_name)
    space, supernet, _ = default_supernet(space_name, home, progress, recipe)
    return SubnetEvaluator(space, supernet, load_dataset(recipe.data, seed=recipe.data_seed), split)

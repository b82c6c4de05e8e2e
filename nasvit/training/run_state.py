"""A training run inside its checkpoint: written after every epoch, read back to resume, and
another run's weights as a starting point (``TrainConfig.init``).

Besides the weights (:mod:`nasvit.training.checkpoint`), the checkpoint's extra entries hold the
epoch, the settings, the data's description and the metrics history; until the last epoch they
also hold the optimizer, scheduler, loss-scaler and RNG states (:func:`resume_state`), so a
resumed run continues exactly where it stopped (on CPU, bit-identical to an uninterrupted one).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from nasvit.data import Dataset
from nasvit.errors import NasvitError
from nasvit.nn import Supernet
from nasvit.search_spaces import SearchSpace
from nasvit.training.checkpoint import load_supernet, save_supernet
from nasvit.training.config import TrainConfig
from nasvit.training.sliced_optim import LossScaler


def resume_state(
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    scaler: LossScaler,
    rng: np.random.Generator,
) -> dict[str, Any]:
    """What a run needs besides its weights to continue bit-identically (the torch RNG is the
    global one)."""
    return {
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "scaler": scaler.state_dict(),
        # PCG64 state: bit-generator name and two 128-bit ints, kept as text for safe loading.
        "numpy_rng": json.dumps(rng.bit_generator.state),
        "torch_rng": torch.get_rng_state(),
    }


def save_run(
    out: Path,
    space: SearchSpace,
    supernet: Supernet,
    config: TrainConfig,
    dataset: Dataset,
    epoch: int,
    history: list[dict[str, Any]],
    state: dict[str, Any] | None,
    feature_head: nn.Module | None = None,
) -> None:
    """Checkpoint the run after ``epoch`` epochs; ``state`` (:func:`resume_state`) is None once
    the run is complete."""
    extra: dict[str, Any] = {
        "epoch": epoch,
        "complete": state is None,
        "train_config": json.dumps(config.to_dict()),
        "dataset": json.dumps(dataset.describe()),
        "history": json.dumps(history),
    }
    if state is not None:
        extra["resume_state"] = state
    if feature_head is not None:
        extra["feature_head"] = feature_head.state_dict()
    save_supernet(out, space, supernet, extra)


def restore_run(
    out: Path,
    space: SearchSpace,
    supernet: Supernet,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    scaler: LossScaler,
    rng: np.random.Generator,
    config: TrainConfig,
    dataset: Dataset,
    feature_head: nn.Module | None = None,
) -> tuple[int, list[dict[str, Any]]]:
    """Load weights and training state from ``out``; returns (epochs done, history).

    Raises:
        NasvitError: no checkpoint at ``out``, or one of another space, settings or data.
    """
    if not out.is_file():
        raise NasvitError(f"cannot resume: no checkpoint at {out}")
    saved_space, saved, extra = load_supernet(out)
    _check_resumable(out, space, saved_space, extra, config, dataset)
    supernet.load_state_dict(saved.state_dict())
    if feature_head is not None and "feature_head" in extra:
        feature_head.load_state_dict(extra["feature_head"])
    history = json.loads(extra["history"])
    epoch = int(extra["epoch"])
    if extra.get("complete"):
        return epoch, history
    state = extra["resume_state"]
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    scaler.load_state_dict(state["scaler"])
    rng.bit_generator.state = json.loads(state["numpy_rng"])
    torch.set_rng_state(state["torch_rng"])
    return epoch, history


def _check_resumable(
    out: Path,
    space: SearchSpace,
    saved_space: SearchSpace,
    extra: dict[str, Any],
    config: TrainConfig,
    dataset: Dataset,
) -> None:
    """The checkpoint ``out`` must hold the training state of the same space, settings and
    data."""
    if saved_space.name != space.name or saved_space.restrictions != space.restrictions:
        raise NasvitError(
            f"cannot resume {out}: it was trained on space '{saved_space.name}' "
            f"{saved_space.restrictions or ''}, not '{space.name}' {space.restrictions or ''}"
        )
    if "train_config" not in extra:
        raise NasvitError(f"cannot resume {out}: it holds no training state")
    different = config.differences(json.loads(extra["train_config"]))
    # Where it runs and whether it reports val accuracy each epoch do not change the weights.
    if set(different) - {"device", "eval_every_epoch"}:
        raise NasvitError(
            f"cannot resume {out}: settings differ from the checkpoint's: {', '.join(different)}"
        )
    if json.loads(extra["dataset"]) != dataset.describe():
        raise NasvitError(f"cannot resume {out}: it was trained on other data")


def initialise_from(
    path: Path, space: SearchSpace, supernet: Supernet, feature_head: nn.Module | None
) -> None:
    """Copy the weights of the checkpoint ``path`` (same space) into ``supernet``, and its
    feature head where it has one of the same shape (stage 2 of the two-stage recipe).

    Raises:
        NasvitError: the checkpoint is of another space, or of other classes or channels.
    """
    saved_space, saved, extra = load_supernet(path)
    if saved_space.name != space.name:
        raise NasvitError(
            f"init checkpoint {path} is a supernet of space '{saved_space.name}', "
            f"not '{space.name}'"
        )
    if (saved.num_classes, saved.in_channels) != (supernet.num_classes, supernet.in_channels):
        raise NasvitError(
            f"init checkpoint {path} has {saved.num_classes} classes and {saved.in_channels} "
            f"input channels; the data has {supernet.num_classes} and {supernet.in_channels}"
        )
    supernet.load_state_dict(saved.state_dict())
    head_state = extra.get("feature_head")
    if feature_head is not None and head_state is not None:
        current = feature_head.state_dict()
        if all(head_state[k].shape == v.shape for k, v in current.items() if k in head_state):
            feature_head.load_state_dict(head_state)
        # else: another teacher width; the projection starts from the identity again

"""LightHuBERT's two-stage recipe: stage 1 (``objective="teacher_features"``) trains only the
largest subnet, on the L1 hidden-feature loss to the teacher alone (no labels, no logits); stage
2 is ordinary once-for-all training (:func:`~nasvit.training.loop.train_supernet`, still
distilling from the teacher) whose weights start from stage 1's checkpoint (``init``).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from nasvit.data import Dataset
from nasvit.errors import NasvitError
from nasvit.search_spaces import SearchSpace
from nasvit.training.config import TrainConfig, TrainResult
from nasvit.training.loop import train_supernet


def stage1_path(out: str | Path) -> Path:
    """Where :func:`train_two_stage` writes stage 1: ``C.pt`` -> ``C.stage1.pt``."""
    out = Path(out)
    return out.with_name(f"{out.stem}.stage1{out.suffix or '.pt'}")


def train_two_stage(
    space: SearchSpace,
    dataset: Dataset,
    config: TrainConfig,
    out: str | Path,
    stage1_epochs: int | None = None,
    resume: bool = False,
    progress: bool = True,
    metrics_path: str | Path | None = None,
    workers: int = 1,
) -> tuple[TrainResult, TrainResult]:
    """LightHuBERT's recipe: stage 1 distils ``config.teacher`` into the largest subnet (L1 on
    hidden features, ``stage1_epochs``, default ``config.epochs``) and writes
    :func:`stage1_path`; stage 2 trains once-for-all from those weights (``config`` as given,
    teacher included) and writes ``out``. With ``resume`` each stage continues its checkpoint
    where one exists (a finished stage is not rerun).

    Returns:
        The results of stage 1 and stage 2.

    Raises:
        NasvitError: no teacher, an ``init`` of its own, or what :func:`train_supernet` raises.
    """
    if config.teacher is None:
        raise NasvitError("the two-stage recipe needs a teacher checkpoint")
    if config.init is not None:
        raise NasvitError("the two-stage recipe initialises stage 2 itself; drop init")
    out = Path(out)
    first_out = stage1_path(out)
    first_metrics = None
    if metrics_path is not None:
        metrics_path = Path(metrics_path)
        first_metrics = metrics_path.with_name(f"{metrics_path.stem}.stage1{metrics_path.suffix}")
    first_config = dataclasses.replace(
        config, objective="teacher_features", epochs=stage1_epochs or config.epochs
    )
    first = train_supernet(
        space,
        dataset,
        first_config,
        first_out,
        resume and first_out.is_file(),
        progress,
        first_metrics,
        workers=workers,
    )
    second_config = dataclasses.replace(config, objective="ofa", init=str(first_out))
    second = train_supernet(
        space,
        dataset,
        second_config,
        out,
        resume and out.is_file(),
        progress,
        metrics_path,
        workers=workers,
    )
    return first, second

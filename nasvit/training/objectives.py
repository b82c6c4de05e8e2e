"""What a training step optimises: which subnets (:func:`step_archs`), against which targets
(the labels, the largest subnet's logits, a teacher's logits and hidden features) and with which
loss (:func:`subnet_loss`); and the run's teacher and feature head that the targets need.
"""

from __future__ import annotations

import contextlib
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from nasvit.data import Dataset
from nasvit.errors import NasvitError
from nasvit.nn import Supernet
from nasvit.nn.transformer import TransformerSupernet
from nasvit.search_spaces import Architecture, SearchSpace
from nasvit.training.config import OBJECTIVES, TrainConfig
from nasvit.training.distillation import (
    HiddenStateDistiller,
    Teacher,
    capture_features,
    distill_kl,
    feature_l1,
)


def step_archs(space: SearchSpace, config: TrainConfig, rng: np.random.Generator) -> list[Any]:
    """The subnets one step trains, in order (sandwich: the largest first, so that its logits
    can teach the rest)."""
    if config.objective == "teacher_features":
        return [space.largest()]
    if config.sampling == "uniform":
        return [space.sample(rng)]
    if config.sampling != "sandwich":
        raise NasvitError(f"unknown sampling '{config.sampling}'; known: sandwich, uniform")
    return [space.largest(), space.smallest()] + [
        space.sample(rng) for _ in range(config.num_random)
    ]


def subnet_loss(
    supernet: Supernet,
    x: Tensor,
    y: Tensor,
    arch: Architecture,
    config: TrainConfig,
    teacher: Teacher | None,
    soft_targets: Tensor | None,
    feature_head: HiddenStateDistiller | None = None,
) -> tuple[Tensor, Tensor]:
    """Loss of one subnet on one batch, and its logits."""
    if config.objective == "teacher_features":
        assert teacher is not None  # checked by run_teacher
        with capture_features(supernet) as captured:
            logits = supernet(x, arch)
        _, teacher_features = teacher(x, True)
        return _feature_loss(feature_head, captured, teacher_features), logits
    use_features = teacher is not None and config.feature_distill_weight > 0
    with contextlib.ExitStack() as stack:
        captured = stack.enter_context(capture_features(supernet)) if use_features else []
        logits = supernet(x, arch)
    if soft_targets is not None:
        loss = distill_kl(logits, soft_targets)
    else:
        loss = F.cross_entropy(logits.float(), y, label_smoothing=config.label_smoothing)
    if teacher is not None:
        teacher_logits, teacher_features = teacher(x, use_features)
        loss = loss + distill_kl(logits, teacher_logits)
        if use_features:
            features = _feature_loss(feature_head, captured, teacher_features)
            loss = loss + config.feature_distill_weight * features
    return loss, logits


def _feature_loss(
    head: HiddenStateDistiller | None, student: list[Tensor], teacher: list[Tensor]
) -> Tensor:
    """Transformer students: projected last hidden state vs the teacher's mean target; others:
    stage-by-stage L1 on the shared channels."""
    return head(student, teacher) if head is not None else feature_l1(student, teacher)


def run_teacher(
    space: SearchSpace, dataset: Dataset, config: TrainConfig, device: torch.device
) -> Teacher | None:
    """The run's teacher, checked against the student; errors for a bad objective."""
    if config.objective not in OBJECTIVES:
        raise NasvitError(f"unknown objective '{config.objective}'; known: {', '.join(OBJECTIVES)}")
    if config.teacher is None:
        if config.objective == "teacher_features":
            raise NasvitError("stage 1 (objective teacher_features) needs a teacher checkpoint")
        return None
    teacher = Teacher(config.teacher, device)
    teacher.check_student(space.name, dataset.num_classes, dataset.in_channels)
    return teacher


def feature_head_of(
    supernet: Supernet, teacher: Teacher | None, config: TrainConfig
) -> HiddenStateDistiller | None:
    """The projection head of hidden-state distillation (Transformer students with a teacher
    whose feature loss is used), initialised by the seeded generator after the supernet."""
    uses_features = config.objective == "teacher_features" or config.feature_distill_weight > 0
    if teacher is None or not uses_features or not isinstance(supernet, TransformerSupernet):
        return None
    width = teacher.width
    if width is None:
        raise NasvitError("a Transformer student needs a Transformer teacher")
    return HiddenStateDistiller(supernet.config.max_dim, width, config.teacher_layers)

"""Distillation losses and a frozen teacher for supernet training.

In-place distillation (BigNAS) uses only :func:`distill_kl` on the largest subnet's logits. A
teacher checkpoint adds LightHuBERT-style feature distillation: an L1 loss between the student
subnet's hidden features and the teacher's, read with forward pre-hooks so supernets need no
``features`` method.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from nasvit.checkpoint import load_supernet
from nasvit.errors import NasvitError


def distill_kl(student: Tensor, teacher: Tensor) -> Tensor:
    """KL(teacher || student) of the softmax distributions, averaged over the batch."""
    return F.kl_div(
        F.log_softmax(student.float(), dim=1),
        F.softmax(teacher.float(), dim=1),
        reduction="batchmean",
    )


@contextlib.contextmanager
def capture_features(supernet: nn.Module) -> Iterator[list[Tensor]]:
    """Record the hidden features of a forward pass: each stage's output (the input of the next
    downsampling) and the tokens entering the head, all as (batch, tokens, channels)."""
    downsamples = getattr(supernet, "downsamples", None)
    head = getattr(supernet, "head", None)
    if downsamples is None or head is None:
        raise NasvitError(
            f"feature distillation needs a supernet with stages (downsamples + head); "
            f"{type(supernet).__name__} has none"
        )
    captured: list[Tensor] = []

    def hook(_module: nn.Module, args: tuple[Any, ...]) -> None:
        x = args[0]
        captured.append(x.flatten(2).transpose(1, 2) if x.dim() == 4 else x)

    handles = [m.register_forward_pre_hook(hook) for m in list(downsamples)[1:]]
    handles.append(head.register_forward_pre_hook(hook))
    try:
        yield captured
    finally:
        for handle in handles:
            handle.remove()


def feature_l1(student: list[Tensor], teacher: list[Tensor]) -> Tensor:
    """Mean L1 over stages, comparing the first channels (weight sharing keeps the first ones)."""
    losses = []
    for s, t in zip(student, teacher, strict=True):
        channels = min(s.shape[-1], t.shape[-1])
        losses.append(F.l1_loss(s[..., :channels].float(), t[..., :channels].float()))
    return torch.stack(losses).mean()


class Teacher:
    """A frozen supernet checkpoint run at its largest arch, on the student's input."""

    def __init__(self, path: str, device: torch.device):
        space, supernet, _ = load_supernet(path)
        self.supernet = supernet.to(device).eval()
        for p in self.supernet.parameters():
            p.requires_grad_(False)
        self.arch = space.largest()

    @torch.no_grad()
    def __call__(self, x: Tensor, features: bool) -> tuple[Tensor, list[Tensor]]:
        if not features:
            return self.supernet(x, self.arch), []
        with capture_features(self.supernet) as captured:
            logits = self.supernet(x, self.arch)
        return logits, list(captured)

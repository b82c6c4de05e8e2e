"""Distillation losses and a frozen teacher for supernet training.

In-place distillation (BigNAS) uses only :func:`distill_kl` on the largest subnet's logits. A
teacher checkpoint adds LightHuBERT-style feature distillation: an L1 loss between the student
subnet's hidden features and the teacher's, read with hooks so supernets need no ``features``
method:

- Stage-structured (conv) supernets: each stage's output and the tokens entering the head,
  compared stage by stage on the first channels (:func:`feature_l1`).
- Transformer supernets (:class:`~nasvit.nn.transformer.TransformerSupernet`): the hidden states
  after every encoder layer the subnet runs. Depths differ between subnets and the teacher, so
  there is no layer-to-layer pairing; as in LightHuBERT, the student's last hidden state,
  through a learned linear projection, regresses the mean of the teacher's last
  ``teacher_layers`` (8) hidden states (:class:`HiddenStateDistiller`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from nasvit.errors import NasvitError
from nasvit.nn.elastic import ElasticLinear
from nasvit.nn.transformer import TransformerSupernet
from nasvit.search_spaces import Architecture
from nasvit.training.checkpoint import load_supernet

#: Teacher layers whose mean hidden state is the target for a Transformer student
#: (LightHuBERT's choice; clipped to the teacher's depth).
TEACHER_LAYERS = 8


def distill_kl(student: Tensor, teacher: Tensor) -> Tensor:
    """KL(teacher || student) of the softmax distributions, averaged over the batch."""
    return F.kl_div(
        F.log_softmax(student.float(), dim=1),
        F.softmax(teacher.float(), dim=1),
        reduction="batchmean",
    )


@contextlib.contextmanager
def capture_features(supernet: nn.Module) -> Iterator[list[Tensor]]:
    """Record the hidden features of a forward pass, all as (batch, tokens, channels).

    Transformer supernets: the output of every encoder layer the subnet runs, in order (a
    dropped layer records nothing). Stage-structured supernets: each stage's output (the input
    of the next downsampling) and the tokens entering the head."""
    if isinstance(supernet, TransformerSupernet):
        with _capture_layer_outputs(supernet) as layer_outputs:
            yield layer_outputs
        return
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


@contextlib.contextmanager
def _capture_layer_outputs(supernet: TransformerSupernet) -> Iterator[list[Tensor]]:
    captured: list[Tensor] = []

    def hook(_module: nn.Module, _args: tuple[Any, ...], output: Tensor) -> None:
        captured.append(output)

    handles = [layer.register_forward_hook(hook) for layer in supernet.layers]
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


class HiddenStateDistiller(nn.Module):
    """L1 between a Transformer student's last hidden state, projected to the teacher's width,
    and the mean of the teacher's last ``teacher_layers`` hidden states (LightHuBERT's target).

    Why a projection rather than comparing channels: a supernet's subnets have several widths
    (the first ``dim`` channels of a 256-wide subnet do not correspond to the first 256 of a
    512-wide teacher: weight sharing slices weights, not feature meanings), and with a learned
    map the target need not be reachable by the student's own width. The projection is one
    :class:`~nasvit.nn.elastic.ElasticLinear` (supernet width -> teacher width) whose input is
    sliced first-k to the subnet's width, so every subnet shares it, as LightHuBERT's student
    shares its prediction head. It starts as the identity on the shared channels, so where the
    widths match (e.g. a teacher trained on the same space and restrictions) training starts
    from plain channel-to-channel matching. It is a training-only head: checkpoints keep it
    under ``extra["feature_head"]`` (for resume and for stage 2 of the two-stage recipe), and
    extracted subnets do not contain it.
    """

    def __init__(self, student_dim: int, teacher_dim: int, teacher_layers: int = TEACHER_LAYERS):
        super().__init__()
        if teacher_layers < 1:
            raise NasvitError(f"teacher_layers must be at least 1, got {teacher_layers}")
        self.teacher_dim, self.teacher_layers = teacher_dim, teacher_layers
        self.proj = ElasticLinear(student_dim, teacher_dim)
        with torch.no_grad():
            self.proj.weight.zero_()
            shared = min(student_dim, teacher_dim)
            self.proj.weight[:shared, :shared] = torch.eye(shared)
            self.proj.bias.zero_()

    def target(self, teacher: list[Tensor]) -> Tensor:
        """Mean of the teacher's last ``teacher_layers`` hidden states."""
        return torch.stack(teacher[-self.teacher_layers :]).float().mean(dim=0)

    def forward(self, student: list[Tensor], teacher: list[Tensor]) -> Tensor:  # type: ignore[override]
        if not student or not teacher:
            raise NasvitError("hidden-state distillation needs at least one encoder layer")
        predicted = self.proj(student[-1], self.teacher_dim)
        return F.l1_loss(predicted.float(), self.target(teacher))


class Teacher:
    """A frozen supernet checkpoint run at its largest arch, on the student's input.

    When the arch has a ``resolution`` it is set to the input's, so teacher and student see the
    same number of tokens (the supernets read the size from the input anyway).
    """

    def __init__(self, path: str, device: torch.device):
        space, supernet, _ = load_supernet(path)
        self.space = space
        self.supernet = supernet.to(device).eval()
        for p in self.supernet.parameters():
            p.requires_grad_(False)
        self.arch = space.largest()

    @property
    def width(self) -> int | None:
        """Hidden width of a Transformer teacher's largest subnet (None for other supernets)."""
        if isinstance(self.supernet, TransformerSupernet):
            return self.supernet.setting(self.arch).dim
        return None

    def check_student(self, space_name: str, num_classes: int, in_channels: int) -> None:
        """Raise :class:`NasvitError` unless the teacher can teach this student."""
        if self.space.name != space_name:
            raise NasvitError(
                f"teacher is a supernet of space '{self.space.name}', not '{space_name}'"
            )
        if (self.supernet.num_classes, self.supernet.in_channels) != (num_classes, in_channels):
            raise NasvitError(
                f"teacher was trained on {self.supernet.num_classes} classes and "
                f"{self.supernet.in_channels} input channels; the data has {num_classes} and "
                f"{in_channels}"
            )

    def _arch(self, x: Tensor) -> Any:
        side = int(x.shape[-1])
        if x.dim() == 4 and self.arch.get("resolution", side) != side:
            return Architecture({**self.arch, "resolution": side})
        return self.arch

    @torch.no_grad()
    def __call__(self, x: Tensor, features: bool) -> tuple[Tensor, list[Tensor]]:
        arch = self._arch(x)
        if not features:
            return self.supernet(x, arch), []
        with capture_features(self.supernet) as captured:
            logits = self.supernet(x, arch)
        return logits, list(captured)

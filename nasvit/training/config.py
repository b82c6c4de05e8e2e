"""What a training run is asked to do (:class:`TrainConfig`) and what it produced
(:class:`TrainResult`).

The config is stored in every checkpoint: resuming compares it with the run's, and default
supernets hash it into their file names, so a field added later must not change either for runs
that leave it at its default (:meth:`TrainConfig.key_dict`, :meth:`TrainConfig.differences`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from nasvit.errors import NasvitError
from nasvit.training.distillation import TEACHER_LAYERS

Sampling = Literal["sandwich", "uniform"]
#: ``ofa``: once-for-all training with ``sampling``; ``teacher_features``: stage 1 of the
#: two-stage recipe (the largest subnet only, L1 to the teacher's hidden features).
Objective = Literal["ofa", "teacher_features"]
OBJECTIVES = ("ofa", "teacher_features")


@dataclass(frozen=True)
class TrainConfig:
    """Hyper-parameters of one training run (stored in the checkpoint)."""

    epochs: int = 10
    batch_size: int = 64
    lr: float = 2e-3  # peak AdamW learning rate
    weight_decay: float = 0.05
    warmup_fraction: float = 0.05  # of all steps, linear from 0 to lr
    sampling: Sampling = "sandwich"
    num_random: int = 2  # random subnets per sandwich step
    inplace_distill: bool = True  # smaller sandwich subnets learn from the largest's logits
    label_smoothing: float = 0.1
    grad_clip: float = 5.0  # max global grad norm; 0 disables
    seed: int = 0
    train_limit: int | None = None  # train on only this many (seeded) training images
    teacher: str | None = None  # supernet checkpoint whose largest subnet teaches
    feature_distill_weight: float = 1.0  # weight of the L1 hidden-feature loss (with teacher)
    eval_every_epoch: bool = True  # val accuracy of largest and smallest in the metrics log
    device: str = "auto"  # auto | cpu | cuda[:i]
    amp: bool = True  # mixed precision, used on CUDA only
    objective: Objective = "ofa"  # teacher_features: stage 1 of the two-stage recipe
    init: str | None = None  # checkpoint of the same space whose weights start the run
    teacher_layers: int = TEACHER_LAYERS  # Transformer target: mean of the teacher's last N

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def key_dict(self) -> dict[str, Any]:
        """:meth:`to_dict` without the fields added after v1 that hold their defaults, so
        adding them changes no recipe fingerprint (cached default supernets stay valid)."""
        return {
            k: v
            for k, v in self.to_dict().items()
            if not (k in _ADDED_FIELDS and v == _DEFAULTS[k])
        }

    def differences(self, recorded: Mapping[str, Any]) -> list[str]:
        """The fields, sorted, whose values differ from ``recorded`` (a :meth:`to_dict` stored
        in a checkpoint). A field an older checkpoint does not record was at its default then."""
        return sorted(k for k, v in self.to_dict().items() if recorded.get(k, _DEFAULTS[k]) != v)


_ADDED_FIELDS = frozenset({"objective", "init", "teacher_layers"})
_DEFAULTS = {f.name: f.default for f in dataclasses.fields(TrainConfig)}


def train_from_mapping(values: Mapping[str, Any]) -> TrainConfig:
    """A :class:`TrainConfig` from a JSON mapping, rejecting unknown keys."""
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    unknown = sorted(set(values) - fields)
    if unknown:
        raise NasvitError(f"unknown training setting(s): {', '.join(unknown)}")
    return TrainConfig(**values)


@dataclass
class TrainResult:
    """What a finished (or resumed-to-completion) run produced."""

    checkpoint: Path
    metrics: Path
    epochs: int  # epochs done so far (config.epochs once complete)
    seconds: float  # wall time of the epochs run by this call
    history: list[dict[str, Any]]


def metrics_log(out: Path, metrics_path: str | Path | None) -> Path:
    """The run's JSONL metrics log: ``metrics_path``, by default ``<out>.metrics.jsonl``."""
    return Path(metrics_path) if metrics_path else out.with_name(out.name + ".metrics.jsonl")

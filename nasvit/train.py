"""Once-for-all supernet training.

Two sampling recipes, so they can be compared at equal time (bench/bench_training.py):

- ``sandwich`` (BigNAS): every step trains the largest, the smallest and ``num_random`` random
  subnets on the same batch, gradients accumulated into one optimizer step; the largest learns
  from the labels and the others from its detached logits (in-place distillation).
- ``uniform`` (AutoFormer / LightHuBERT): one uniformly random subnet per step, on the labels.

An optional teacher checkpoint adds LightHuBERT-style distillation: KL to the teacher's logits
plus an L1 loss between the student's hidden features and the teacher's (see
:mod:`nasvit.distill`).

AdamW with linear warmup and a cosine decay per step; AMP only on CUDA. The checkpoint is written
atomically after every epoch with the optimizer and RNG states inside, so ``resume=True``
continues exactly where it stopped (on CPU, a seed gives bit-identical weights whether or not
the run was interrupted). The final checkpoint drops the optimizer state.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from nasvit.checkpoint import load_supernet, save_supernet
from nasvit.data import Dataset
from nasvit.distill import Teacher, capture_features, distill_kl, feature_l1
from nasvit.errors import NasvitError
from nasvit.evaluate import SubnetEvaluator, resolution_of
from nasvit.nn import Supernet
from nasvit.search_spaces import Architecture, SearchSpace

Sampling = Literal["sandwich", "uniform"]


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

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass
class TrainResult:
    """What a finished (or resumed-to-completion) run produced."""

    checkpoint: Path
    metrics: Path
    epochs: int  # epochs done so far (config.epochs once complete)
    seconds: float  # wall time of the epochs run by this call
    history: list[dict[str, Any]]


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise NasvitError(f"device '{name}' requested but CUDA is not available")
    return torch.device(name)


def _adamw(model: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    """AdamW, fused where torch supports it: a supernet step updates every parameter of the
    max-size layers (sliced weights get dense gradients), and the fused kernel is ~4x faster
    than the per-tensor loop on CPU."""
    try:
        return torch.optim.AdamW(
            model.parameters(), lr=config.lr, weight_decay=config.weight_decay, fused=True
        )
    except (RuntimeError, TypeError):  # older torch or a device without the fused kernel
        return torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)


def _schedule(total_steps: int, warmup_fraction: float) -> Callable[[int], float]:
    warmup = max(1, int(total_steps * warmup_fraction))

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total_steps - warmup)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return factor


def train_supernet(
    space: SearchSpace,
    dataset: Dataset,
    config: TrainConfig,
    out: str | Path,
    resume: bool = False,
    progress: bool = True,
    metrics_path: str | Path | None = None,
    stop_after: int | None = None,
) -> TrainResult:
    """Train a supernet of ``space`` on ``dataset`` and checkpoint it at ``out`` every epoch.

    Args:
        space: the space whose subnets are sampled (restrict it to train on fewer choices).
        dataset: ``train`` is trained on, ``val`` is reported per epoch.
        config: hyper-parameters; with ``resume`` they must equal the checkpoint's.
        out: checkpoint path (see :func:`nasvit.checkpoint.load_supernet`).
        resume: continue from ``out`` (error if it is missing or was trained differently).
        metrics_path: JSONL log, one line per epoch (default: ``<out>.metrics.jsonl``).
        stop_after: return after this many epochs of this call, leaving a resumable
            checkpoint (time-sliced jobs; tests of resume).

    Returns:
        A :class:`TrainResult`; the supernet itself is in the checkpoint.

    Raises:
        NasvitError: bad resume, teacher, device or dataset/space mismatch.
    """
    out = Path(out)
    metrics = Path(metrics_path) if metrics_path else out.with_name(out.name + ".metrics.jsonl")
    metrics.parent.mkdir(parents=True, exist_ok=True)
    device = _device(config.device)
    use_amp = config.amp and device.type == "cuda"
    torch.manual_seed(config.seed)
    supernet = space.build_supernet(dataset.num_classes, dataset.in_channels).to(device)
    optimizer = _adamw(supernet, config)
    n_train = min(config.train_limit or dataset.size("train"), dataset.size("train"))
    steps_per_epoch = math.ceil(n_train / config.batch_size)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, _schedule(steps_per_epoch * config.epochs, config.warmup_fraction)
    )
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)
    rng = np.random.default_rng(config.seed)
    subset_rng = np.random.default_rng([config.seed, 1])
    subset = np.sort(subset_rng.permutation(dataset.size("train"))[:n_train])
    start_epoch = 0
    history: list[dict[str, Any]] = []
    if resume:
        start_epoch, history = _restore(
            out, space, supernet, optimizer, scheduler, scaler, rng, config, dataset
        )
        # The log is rewritten from the checkpoint: a run killed between logging an epoch and
        # saving it would otherwise log that epoch twice.
        metrics.write_text("".join(json.dumps(record) + "\n" for record in history))
    elif metrics.exists():
        metrics.unlink()  # a fresh run starts a fresh log
    teacher = Teacher(config.teacher, device) if config.teacher else None
    run = _Run(supernet, optimizer, scaler, teacher, device, use_amp)
    run_started = time.perf_counter()
    progress_bar = _progress(progress)
    with progress_bar:
        last_epoch = (
            config.epochs if stop_after is None else min(config.epochs, start_epoch + stop_after)
        )
        for epoch in range(start_epoch, last_epoch):
            task = progress_bar.add_task(
                f"epoch {epoch + 1}/{config.epochs}", total=steps_per_epoch
            )
            epoch_started = time.perf_counter()
            supernet.train()
            losses: list[float] = []
            order = subset[rng.permutation(n_train)]
            for start in range(0, n_train, config.batch_size):
                index = torch.as_tensor(order[start : start + config.batch_size])
                losses.append(_train_step(run, space, dataset, config, index, rng))
                scheduler.step()
                progress_bar.update(
                    task,
                    advance=1,
                    description=(f"epoch {epoch + 1}/{config.epochs} loss {np.mean(losses):.3f}"),
                )
            record: dict[str, Any] = {
                "epoch": epoch + 1,
                "steps": len(losses),
                "loss": float(np.mean(losses)),
                "lr": float(scheduler.get_last_lr()[0]),
                "seconds": time.perf_counter() - epoch_started,
            }
            if config.eval_every_epoch and dataset.size("val") > 0:
                evaluator = SubnetEvaluator(space, supernet, dataset, "val", seed=config.seed)
                for name, arch in (("largest", space.largest()), ("smallest", space.smallest())):
                    record[f"val_{name}"] = evaluator.evaluate(arch).accuracy
            history.append(record)
            with metrics.open("a") as log:
                log.write(json.dumps(record) + "\n")
            final = epoch + 1 == config.epochs
            state = None if final else _state(optimizer, scheduler, scaler, rng)
            _save(out, space, supernet, config, dataset, epoch + 1, history, state)
            progress_bar.remove_task(task)
    return TrainResult(
        checkpoint=out,
        metrics=metrics,
        epochs=last_epoch,
        seconds=time.perf_counter() - run_started,
        history=history,
    )


@dataclass
class _Run:
    """What one training step touches."""

    supernet: Supernet
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    teacher: Teacher | None
    device: torch.device
    use_amp: bool


def _train_step(
    run: _Run,
    space: SearchSpace,
    dataset: Dataset,
    config: TrainConfig,
    index: Tensor,
    rng: np.random.Generator,
) -> float:
    """One optimizer step on the batch ``index``: gradients of every subnet of the step
    (sandwich: largest first, so its logits can teach the rest) accumulate; returns the mean
    subnet loss."""
    archs = _step_archs(space, config, rng)
    run.optimizer.zero_grad(set_to_none=True)
    total = 0.0
    soft_targets: Tensor | None = None
    for position, arch in enumerate(archs):
        x = dataset.images("train", resolution_of(space, arch), index).to(run.device)
        y = dataset.labels("train")[index].to(run.device)
        with torch.autocast("cuda", dtype=torch.float16, enabled=run.use_amp):
            loss, logits = _subnet_loss(
                run.supernet, x, y, arch, config, run.teacher, soft_targets if position else None
            )
        if position == 0 and config.sampling == "sandwich" and config.inplace_distill:
            soft_targets = logits.detach()
        run.scaler.scale(loss).backward()
        total += float(loss.detach())
    if config.grad_clip > 0:
        run.scaler.unscale_(run.optimizer)
        nn.utils.clip_grad_norm_(run.supernet.parameters(), config.grad_clip)
    run.scaler.step(run.optimizer)
    run.scaler.update()
    return total / len(archs)


def _step_archs(space: SearchSpace, config: TrainConfig, rng: np.random.Generator) -> list[Any]:
    if config.sampling == "uniform":
        return [space.sample(rng)]
    if config.sampling != "sandwich":
        raise NasvitError(f"unknown sampling '{config.sampling}'; known: sandwich, uniform")
    return [space.largest(), space.smallest()] + [
        space.sample(rng) for _ in range(config.num_random)
    ]


def _subnet_loss(
    supernet: Supernet,
    x: Tensor,
    y: Tensor,
    arch: Architecture,
    config: TrainConfig,
    teacher: Teacher | None,
    soft_targets: Tensor | None,
) -> tuple[Tensor, Tensor]:
    """Loss of one subnet on one batch, and its logits."""
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
            loss = loss + config.feature_distill_weight * feature_l1(captured, teacher_features)
    return loss, logits


def _progress(enabled: bool) -> Any:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        disable=not enabled,
        transient=True,
    )


def _state(
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    scaler: torch.amp.GradScaler,
    rng: np.random.Generator,
) -> dict[str, Any]:
    return {
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "scaler": scaler.state_dict(),
        # PCG64 state: bit-generator name and two 128-bit ints, kept as text for safe loading.
        "numpy_rng": json.dumps(rng.bit_generator.state),
        "torch_rng": torch.get_rng_state(),
    }


def _save(
    out: Path,
    space: SearchSpace,
    supernet: Supernet,
    config: TrainConfig,
    dataset: Dataset,
    epoch: int,
    history: list[dict[str, Any]],
    state: dict[str, Any] | None,
) -> None:
    extra: dict[str, Any] = {
        "epoch": epoch,
        "complete": state is None,
        "train_config": json.dumps(config.to_dict()),
        "dataset": json.dumps(dataset.describe()),
        "history": json.dumps(history),
    }
    if state is not None:
        extra["resume_state"] = state
    save_supernet(out, space, supernet, extra)


def _restore(
    out: Path,
    space: SearchSpace,
    supernet: Supernet,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    scaler: torch.amp.GradScaler,
    rng: np.random.Generator,
    config: TrainConfig,
    dataset: Dataset,
) -> tuple[int, list[dict[str, Any]]]:
    """Load weights and training state from ``out``; returns (epochs done, history)."""
    if not out.is_file():
        raise NasvitError(f"cannot resume: no checkpoint at {out}")
    saved_space, saved, extra = load_supernet(out)
    if saved_space.name != space.name or saved_space.restrictions != space.restrictions:
        raise NasvitError(
            f"cannot resume {out}: it was trained on space '{saved_space.name}' "
            f"{saved_space.restrictions or ''}, not '{space.name}' {space.restrictions or ''}"
        )
    if "train_config" not in extra:
        raise NasvitError(f"cannot resume {out}: it holds no training state")
    previous = json.loads(extra["train_config"])
    different = sorted(k for k, v in config.to_dict().items() if previous.get(k) != v)
    # Where it runs and whether it reports val accuracy each epoch do not change the weights.
    if set(different) - {"device", "eval_every_epoch"}:
        raise NasvitError(
            f"cannot resume {out}: settings differ from the checkpoint's: {', '.join(different)}"
        )
    if json.loads(extra["dataset"]) != dataset.describe():
        raise NasvitError(f"cannot resume {out}: it was trained on other data")
    supernet.load_state_dict(saved.state_dict())
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


def train_from_mapping(values: Mapping[str, Any]) -> TrainConfig:
    """A :class:`TrainConfig` from a JSON mapping, rejecting unknown keys."""
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    unknown = sorted(set(values) - fields)
    if unknown:
        raise NasvitError(f"unknown training setting(s): {', '.join(unknown)}")
    return TrainConfig(**values)

"""Once-for-all supernet training: :func:`train_supernet` and the loop each process runs.

Two sampling recipes, so they can be compared at equal time (bench/bench_training.py):

- ``sandwich`` (BigNAS): every step trains the largest, the smallest and ``num_random`` random
  subnets on the same batch, gradients accumulated into one optimizer step; the largest learns
  from the labels and the others from its detached logits (in-place distillation).
- ``uniform`` (AutoFormer / LightHuBERT): one uniformly random subnet per step, on the labels.

An optional teacher checkpoint adds LightHuBERT-style distillation: KL to the teacher's logits
plus an L1 loss between the student's hidden features and the teacher's (see
:mod:`nasvit.training.distillation`). With ``objective="teacher_features"`` the loop trains only
the largest subnet, on the feature loss alone: stage 1 of LightHuBERT's two-stage recipe
(:mod:`nasvit.training.two_stage`). ``init`` starts a run from the weights of any checkpoint of
the same space.

AdamW with linear warmup and a cosine decay per step; AMP only on CUDA. The optimizer updates only
the parameter slices the step's subnets used (:mod:`nasvit.training.sliced_optim`: the elastic
layers record what they served, backward fills slice-sized gradients), so a step costs about what
the same step of the extracted subnets costs (bench/bench_training.py ``step``). The checkpoint is
written atomically after every epoch with the optimizer and RNG states inside, so
``resume=True`` continues exactly where it stopped (:mod:`nasvit.training.run_state`; on CPU, a
seed gives bit-identical weights whether or not the run was interrupted). The final checkpoint
drops the optimizer state.

Data parallel (``workers=N``, or N processes started by ``torchrun``): every process runs this
loop on its share of each batch (:mod:`nasvit.training.distributed`).
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor

from nasvit.data import Dataset
from nasvit.errors import NasvitError
from nasvit.evaluation.evaluator import SubnetEvaluator, resolution_of
from nasvit.nn import Supernet
from nasvit.nn.elastic import SliceRecorder
from nasvit.search_spaces import SearchSpace
from nasvit.training.config import TrainConfig, TrainResult, metrics_log
from nasvit.training.distillation import HiddenStateDistiller, Teacher
from nasvit.training.distributed import (
    Group,
    average_buffers,
    check_replicas,
    current_group,
    join_launcher_group,
    spawn_workers,
    train_device,
)
from nasvit.training.objectives import feature_head_of, run_teacher, step_archs, subnet_loss
from nasvit.training.run_state import initialise_from, restore_run, resume_state, save_run
from nasvit.training.sliced_optim import LossScaler, SlicedAdamW, clip_grad_norm, step_gradients

if TYPE_CHECKING:
    from rich.progress import Progress, TaskID


def train_supernet(
    space: SearchSpace,
    dataset: Dataset,
    config: TrainConfig,
    out: str | Path,
    resume: bool = False,
    progress: bool = True,
    metrics_path: str | Path | None = None,
    stop_after: int | None = None,
    workers: int = 1,
) -> TrainResult:
    """Train a supernet of ``space`` on ``dataset`` and checkpoint it at ``out`` every epoch.

    Args:
        space: the space whose subnets are sampled (restrict it to train on fewer choices).
        dataset: ``train`` is trained on, ``val`` is reported per epoch.
        config: hyper-parameters; with ``resume`` they must equal the checkpoint's.
        out: checkpoint path (see :func:`nasvit.training.checkpoint.load_supernet`).
        resume: continue from ``out`` (error if it is missing or was trained differently).
        metrics_path: JSONL log, one line per epoch (default: ``<out>.metrics.jsonl``).
        stop_after: return after this many epochs of this call, leaving a resumable
            checkpoint (time-sliced jobs; tests of resume).
        workers: data-parallel processes to start on this machine (one per GPU on CUDA). A
            process already in a ``torch.distributed`` group (e.g. started by ``torchrun``,
            which sets ``WORLD_SIZE``) trains as its rank instead.

    Returns:
        A :class:`TrainResult`; the supernet itself is in the checkpoint.

    Raises:
        NasvitError: bad resume, teacher, device or dataset/space mismatch.
    """
    if workers < 1:
        raise NasvitError(f"workers must be at least 1, got {workers}")
    joined = join_launcher_group(config.device)
    try:
        if workers > 1 and not current_group().world > 1:
            return _train_in_workers(
                workers, space, dataset, config, out, resume, progress, metrics_path, stop_after
            )
        return _train(space, dataset, config, out, resume, progress, metrics_path, stop_after)
    finally:
        if joined:
            dist.destroy_process_group()


def _train_in_workers(
    workers: int,
    space: SearchSpace,
    dataset: Dataset,
    config: TrainConfig,
    out: str | Path,
    resume: bool,
    progress: bool,
    metrics_path: str | Path | None,
    stop_after: int | None,
) -> TrainResult:
    """:func:`_train` in ``workers`` new processes; the result is read back from the metrics
    log rank 0 wrote."""
    started = time.perf_counter()
    job = (space, dataset, config, out, resume, progress, metrics_path, stop_after)
    spawn_workers(_train, workers, config.device, job)
    out = Path(out)
    metrics = metrics_log(out, metrics_path)
    history = [json.loads(line) for line in metrics.read_text().splitlines()]
    return TrainResult(
        checkpoint=out,
        metrics=metrics,
        epochs=history[-1]["epoch"] if history else 0,
        seconds=time.perf_counter() - started,
        history=history,
    )


@dataclass(frozen=True)
class _Job:
    """What a run trains, on which data, with which settings, and where it writes."""

    space: SearchSpace
    dataset: Dataset
    config: TrainConfig
    out: Path
    metrics: Path


@dataclass
class _Run:
    """What one training step touches."""

    supernet: Supernet
    optimizer: SlicedAdamW
    scaler: LossScaler
    teacher: Teacher | None
    device: torch.device
    use_amp: bool
    group: Group = Group()
    feature_head: HiddenStateDistiller | None = None  # Transformer students with a teacher


@dataclass
class _Plan:
    """Which images each epoch trains on, in which order, at which learning rate."""

    subset: np.ndarray  # the run's (seeded) training images, sorted
    rng: np.random.Generator  # batch order and sampled subnets
    scheduler: torch.optim.lr_scheduler.LambdaLR
    steps_per_epoch: int


def _train(
    space: SearchSpace,
    dataset: Dataset,
    config: TrainConfig,
    out: str | Path,
    resume: bool,
    progress: bool,
    metrics_path: str | Path | None,
    stop_after: int | None,
) -> TrainResult:
    """Train in this process: alone, or as its rank of the current group (the function that
    :func:`~nasvit.training.distributed.spawn_workers` runs in each worker)."""
    group = current_group()
    out = Path(out)
    job = _Job(space, dataset, config, out, metrics_log(out, metrics_path))
    job.metrics.parent.mkdir(parents=True, exist_ok=True)
    run = _build_run(job, group)
    plan = _plan(job, run.optimizer)
    start_epoch, history = _start(job, run, plan, resume)
    run_started = time.perf_counter()
    last_epoch = (
        config.epochs if stop_after is None else min(config.epochs, start_epoch + stop_after)
    )
    with _progress(progress and group.leader) as progress_bar:
        for epoch in range(start_epoch, last_epoch):
            task = progress_bar.add_task(
                f"epoch {epoch + 1}/{config.epochs}", total=plan.steps_per_epoch
            )
            record = _train_epoch(job, run, plan, epoch, progress_bar, task)
            _end_epoch(job, run, plan, epoch, record, history)
            progress_bar.remove_task(task)
    return TrainResult(
        checkpoint=out,
        metrics=job.metrics,
        epochs=last_epoch,
        seconds=time.perf_counter() - run_started,
        history=history,
    )


def _build_run(job: _Job, group: Group) -> _Run:
    """The seeded supernet, its teacher and feature head (``init`` weights if given) and the
    optimizer, on this process's device."""
    config = job.config
    device = train_device(config.device, int(os.environ.get("LOCAL_RANK", group.rank)))
    if device.type == "cuda":
        torch.cuda.set_device(device)
    use_amp = config.amp and device.type == "cuda"
    torch.manual_seed(config.seed)
    supernet = job.space.build_supernet(job.dataset.num_classes, job.dataset.in_channels)
    supernet = supernet.to(device)
    teacher = run_teacher(job.space, job.dataset, config, device)
    feature_head = feature_head_of(supernet, teacher, config)
    if feature_head is not None:
        feature_head.to(device)
    if config.init:
        initialise_from(Path(config.init), job.space, supernet, feature_head)
    trained = list(supernet.parameters())
    if feature_head is not None:
        trained += list(feature_head.parameters())
    optimizer = SlicedAdamW(trained, lr=config.lr, weight_decay=config.weight_decay)
    scaler = LossScaler(enabled=use_amp)
    return _Run(supernet, optimizer, scaler, teacher, device, use_amp, group, feature_head)


def _plan(job: _Job, optimizer: SlicedAdamW) -> _Plan:
    """The seeded subset of training images, the sampling generator and the schedule."""
    config, train_size = job.config, job.dataset.size("train")
    n_train = min(config.train_limit or train_size, train_size)
    steps_per_epoch = math.ceil(n_train / config.batch_size)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, _schedule(steps_per_epoch * config.epochs, config.warmup_fraction)
    )
    rng = np.random.default_rng(config.seed)
    subset_rng = np.random.default_rng([config.seed, 1])
    subset = np.sort(subset_rng.permutation(train_size)[:n_train])
    return _Plan(subset, rng, scheduler, steps_per_epoch)


def _schedule(total_steps: int, warmup_fraction: float) -> Callable[[int], float]:
    warmup = max(1, int(total_steps * warmup_fraction))

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total_steps - warmup)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return factor


def _start(job: _Job, run: _Run, plan: _Plan, resume: bool) -> tuple[int, list[dict[str, Any]]]:
    """Restore a resumed run or start a fresh log, then give every process rank 0's weights;
    returns (epochs done, history)."""
    start_epoch = 0
    history: list[dict[str, Any]] = []
    if resume:
        start_epoch, history = restore_run(
            job.out,
            job.space,
            run.supernet,
            run.optimizer,
            plan.scheduler,
            run.scaler,
            plan.rng,
            job.config,
            job.dataset,
            run.feature_head,
        )
        # The log is rewritten from the checkpoint: a run killed between logging an epoch and
        # saving it would otherwise log that epoch twice.
        if run.group.leader:
            job.metrics.write_text("".join(json.dumps(record) + "\n" for record in history))
    elif job.metrics.exists() and run.group.leader:
        job.metrics.unlink()  # a fresh run starts a fresh log
    # Same seed gives the same initial weights everywhere; broadcasting makes it a guarantee.
    states = list(run.supernet.state_dict().values())
    if run.feature_head is not None:
        states += list(run.feature_head.state_dict().values())
    run.group.broadcast_([t for t in states if t.is_floating_point()])
    return start_epoch, history


def _train_epoch(
    job: _Job, run: _Run, plan: _Plan, epoch: int, progress_bar: Progress, task: TaskID
) -> dict[str, Any]:
    """The steps of epoch ``epoch`` (from 0), over the run's images in a new order, each
    advancing ``task`` of ``progress_bar``; returns the epoch's metrics record."""
    config = job.config
    epoch_started = time.perf_counter()
    run.supernet.train()
    losses: list[float] = []
    n_train = len(plan.subset)
    order = plan.subset[plan.rng.permutation(n_train)]
    for start in range(0, n_train, config.batch_size):
        index = torch.as_tensor(order[start : start + config.batch_size])
        losses.append(_train_step(run, job.space, job.dataset, config, index, plan.rng))
        plan.scheduler.step()
        progress_bar.update(
            task,
            advance=1,
            description=f"epoch {epoch + 1}/{config.epochs} loss {np.mean(losses):.3f}",
        )
    return {
        "epoch": epoch + 1,
        "workers": run.group.world,
        "steps": len(losses),
        "loss": float(np.mean(losses)),
        "lr": float(plan.scheduler.get_last_lr()[0]),
        "seconds": time.perf_counter() - epoch_started,
    }


def _end_epoch(
    job: _Job,
    run: _Run,
    plan: _Plan,
    epoch: int,
    record: dict[str, Any],
    history: list[dict[str, Any]],
) -> None:
    """Complete the record of epoch ``epoch`` (from 0) with val accuracy and the replica
    check, append it to ``history`` and the log, and checkpoint the run; every process waits
    until the checkpoint exists."""
    config, group = job.config, run.group
    if config.eval_every_epoch and job.dataset.size("val") > 0 and group.leader:
        # Extract-mode evaluation copies subnets out: the shared weights stay as they are.
        space = job.space
        evaluator = SubnetEvaluator(space, run.supernet, job.dataset, "val", seed=config.seed)
        for name, arch in (("largest", space.largest()), ("smallest", space.smallest())):
            record[f"val_{name}"] = evaluator.evaluate(arch).accuracy
    if group.world > 1:
        record["replica_sha256"] = check_replicas(run.supernet, group, epoch + 1)
    history.append(record)
    if group.leader:
        with job.metrics.open("a") as log:
            log.write(json.dumps(record) + "\n")
        final = epoch + 1 == config.epochs
        state = None if final else resume_state(run.optimizer, plan.scheduler, run.scaler, plan.rng)
        save_run(
            job.out,
            job.space,
            run.supernet,
            config,
            job.dataset,
            epoch + 1,
            history,
            state,
            run.feature_head,
        )
    group.barrier()  # every process may resume from the checkpoint once it exists


def _progress(enabled: bool) -> Progress:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        disable=not enabled,
        transient=True,
    )


def _train_step(
    run: _Run,
    space: SearchSpace,
    dataset: Dataset,
    config: TrainConfig,
    index: Tensor,
    rng: np.random.Generator,
) -> float:
    """One optimizer step on the batch ``index``: gradients of every subnet of the step
    accumulate into the slices they used; returns the mean subnet loss over the global batch."""
    archs = step_archs(space, config, rng)
    group = run.group
    run.optimizer.zero_grad(set_to_none=True)
    # This process's contiguous share of the global batch, its loss weighted by its size so
    # that summing over processes gives the gradient of the global mean loss.
    share = index.tensor_split(group.world)[group.rank] if group.world > 1 else index
    weight = len(share) / len(index)
    with SliceRecorder() as recorder:
        total = _backward(run, space, dataset, config, archs, share, weight)
    return _update(run, config, recorder, total) / len(archs)


def _backward(
    run: _Run,
    space: SearchSpace,
    dataset: Dataset,
    config: TrainConfig,
    archs: list[Any],
    share: Tensor,
    weight: float,
) -> Tensor:
    """Forward and backward of each subnet of the step on this process's ``share`` (sandwich:
    largest first, so its logits can teach the rest); returns the share's weighted loss sum."""
    total = torch.zeros((), dtype=torch.float64)
    soft_targets: Tensor | None = None
    for position, arch in enumerate(archs):
        x = dataset.images("train", resolution_of(space, arch), share).to(run.device)
        y = dataset.labels("train")[share].to(run.device)
        with torch.autocast("cuda", dtype=torch.float16, enabled=run.use_amp):
            loss, logits = subnet_loss(
                run.supernet,
                x,
                y,
                arch,
                config,
                run.teacher,
                soft_targets if position else None,
                run.feature_head,
            )
        if position == 0 and config.sampling == "sandwich" and config.inplace_distill:
            soft_targets = logits.detach()
        run.scaler.scale(loss * weight if run.group.world > 1 else loss).backward()
        total += float(loss.detach()) * weight
    return total


def _update(run: _Run, config: TrainConfig, recorder: SliceRecorder, total: Tensor) -> float:
    """Sum the slice gradients and ``total`` over processes, take the optimizer step (skipped
    on an AMP overflow) and average the buffers; returns the global loss sum."""
    group = run.group
    params = list(run.supernet.parameters())
    if run.feature_head is not None:
        params += list(run.feature_head.parameters())
    gradients = step_gradients(recorder, params)
    group.sum_([g.grad for g in gradients])
    group.sum_([total])
    finite = run.scaler.unscale(gradients)
    if config.grad_clip > 0 and finite:
        clip_grad_norm(gradients, config.grad_clip)
    if finite:
        run.optimizer.step(gradients)
    run.scaler.update(finite)
    average_buffers(run.supernet, group)
    return float(total)

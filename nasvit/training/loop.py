"""Once-for-all supernet training.

Two sampling recipes, so they can be compared at equal time (bench/bench_training.py):

- ``sandwich`` (BigNAS): every step trains the largest, the smallest and ``num_random`` random
  subnets on the same batch, gradients accumulated into one optimizer step; the largest learns
  from the labels and the others from its detached logits (in-place distillation).
- ``uniform`` (AutoFormer / LightHuBERT): one uniformly random subnet per step, on the labels.

An optional teacher checkpoint adds LightHuBERT-style distillation: KL to the teacher's logits
plus an L1 loss between the student's hidden features and the teacher's (see
:mod:`nasvit.training.distillation`).

LightHuBERT's two-stage recipe (:func:`train_two_stage`): stage 1 (``objective=
"teacher_features"``) trains only the largest subnet, on the L1 hidden-feature loss to the
teacher alone (no labels, no logits); stage 2 is ordinary once-for-all training (the sampling
above, still distilling from the teacher) whose weights start from stage 1's checkpoint
(``init``). ``init`` works on its own too: any checkpoint of the same space can start a run.

AdamW with linear warmup and a cosine decay per step; AMP only on CUDA. The optimizer updates only
the parameter slices the step's subnets used (:mod:`nasvit.training.sliced_optim`: the elastic
layers record what they served, backward fills slice-sized gradients), so a step costs about what
the same step of the extracted subnets costs (bench/bench_training.py ``step``). The checkpoint is
written atomically after every epoch with the optimizer and RNG states inside, so
``resume=True`` continues exactly where it stopped (on CPU, a seed gives bit-identical weights
whether or not the run was interrupted). The final checkpoint drops the optimizer state.

Data parallel (``workers=N``, or N processes started by ``torchrun``): every process samples the
same subnets (same seed) and trains them on its contiguous share of each global batch; the
losses are weighted by share size and the slice gradients summed with one all-reduce, so the
step follows the gradient of the global batch's mean loss. BatchNorm uses each process's own
share for batch statistics (as torch DDP without SyncBatchNorm does) and running statistics are
averaged after every step, so all processes hold identical weights and buffers. The backend is
NCCL on CUDA and Gloo on CPU; the code path is otherwise the same. The collectives are called
directly rather than through ``DistributedDataParallel``: its hooks reduce ``param.grad``
(full-size) after every backward, while a sandwich step runs several backward passes whose
gradients live in slices.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import math
import os
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from nasvit.data import Dataset
from nasvit.errors import NasvitError
from nasvit.evaluation.evaluator import SubnetEvaluator, resolution_of
from nasvit.nn import Supernet
from nasvit.nn.elastic import SliceRecorder
from nasvit.nn.transformer import TransformerSupernet
from nasvit.search_spaces import Architecture, SearchSpace
from nasvit.training.checkpoint import load_supernet, save_supernet
from nasvit.training.distillation import (
    TEACHER_LAYERS,
    HiddenStateDistiller,
    Teacher,
    capture_features,
    distill_kl,
    feature_l1,
)
from nasvit.training.sliced_optim import LossScaler, SlicedAdamW, clip_grad_norm, step_gradients

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


_ADDED_FIELDS = frozenset({"objective", "init", "teacher_layers"})
_DEFAULTS = {f.name: f.default for f in dataclasses.fields(TrainConfig)}


@dataclass
class TrainResult:
    """What a finished (or resumed-to-completion) run produced."""

    checkpoint: Path
    metrics: Path
    epochs: int  # epochs done so far (config.epochs once complete)
    seconds: float  # wall time of the epochs run by this call
    history: list[dict[str, Any]]


def _device(name: str, local_rank: int = 0) -> torch.device:
    """The device to train on; in data-parallel runs each process takes GPU ``local_rank``."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise NasvitError(f"device '{name}' requested but CUDA is not available")
    device = torch.device(name)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", local_rank)
    return device


@dataclass(frozen=True)
class _Group:
    """This process's place in a data-parallel run (rank 0 of 1 when alone)."""

    rank: int = 0
    world: int = 1

    @property
    def leader(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.world > 1:
            dist.barrier()

    def sum_(self, tensors: list[Tensor]) -> None:
        """All-reduce (sum) ``tensors`` in place as one flat buffer."""
        if self.world == 1 or not tensors:
            return
        flat = torch.cat([t.reshape(-1) for t in tensors])
        dist.all_reduce(flat)
        offset = 0
        for tensor in tensors:
            tensor.copy_(flat[offset : offset + tensor.numel()].view_as(tensor))
            offset += tensor.numel()

    def broadcast_(self, tensors: list[Tensor]) -> None:
        for tensor in tensors:
            if self.world > 1:
                dist.broadcast(tensor, src=0)


def _group() -> _Group:
    if dist.is_available() and dist.is_initialized():
        return _Group(dist.get_rank(), dist.get_world_size())
    return _Group()


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
    joined = _join_launcher_group(config)
    try:
        if workers > 1 and not _group().world > 1:
            return _spawn_workers(
                workers, space, dataset, config, out, resume, progress, metrics_path, stop_after
            )
        return _train(space, dataset, config, out, resume, progress, metrics_path, stop_after)
    finally:
        if joined:
            dist.destroy_process_group()


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
    group = _group()
    out = Path(out)
    metrics = Path(metrics_path) if metrics_path else out.with_name(out.name + ".metrics.jsonl")
    metrics.parent.mkdir(parents=True, exist_ok=True)
    device = _device(config.device, int(os.environ.get("LOCAL_RANK", group.rank)))
    if device.type == "cuda":
        torch.cuda.set_device(device)
    use_amp = config.amp and device.type == "cuda"
    torch.manual_seed(config.seed)
    supernet = space.build_supernet(dataset.num_classes, dataset.in_channels).to(device)
    teacher = _teacher(space, dataset, config, device)
    feature_head = _feature_head(supernet, teacher, config)
    if feature_head is not None:
        feature_head.to(device)
    if config.init:
        _initialise(Path(config.init), space, supernet, feature_head)
    trained = list(supernet.parameters())
    if feature_head is not None:
        trained += list(feature_head.parameters())
    optimizer = SlicedAdamW(trained, lr=config.lr, weight_decay=config.weight_decay)
    n_train = min(config.train_limit or dataset.size("train"), dataset.size("train"))
    steps_per_epoch = math.ceil(n_train / config.batch_size)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, _schedule(steps_per_epoch * config.epochs, config.warmup_fraction)
    )
    scaler = LossScaler(enabled=use_amp)
    rng = np.random.default_rng(config.seed)
    subset_rng = np.random.default_rng([config.seed, 1])
    subset = np.sort(subset_rng.permutation(dataset.size("train"))[:n_train])
    start_epoch = 0
    history: list[dict[str, Any]] = []
    if resume:
        start_epoch, history = _restore(
            out, space, supernet, optimizer, scheduler, scaler, rng, config, dataset, feature_head
        )
        # The log is rewritten from the checkpoint: a run killed between logging an epoch and
        # saving it would otherwise log that epoch twice.
        if group.leader:
            metrics.write_text("".join(json.dumps(record) + "\n" for record in history))
    elif metrics.exists() and group.leader:
        metrics.unlink()  # a fresh run starts a fresh log
    # Same seed gives the same initial weights everywhere; broadcasting makes it a guarantee.
    states = list(supernet.state_dict().values())
    if feature_head is not None:
        states += list(feature_head.state_dict().values())
    group.broadcast_([t for t in states if t.is_floating_point()])
    run = _Run(supernet, optimizer, scaler, teacher, device, use_amp, group, feature_head)
    run_started = time.perf_counter()
    progress_bar = _progress(progress and group.leader)
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
                "workers": group.world,
                "steps": len(losses),
                "loss": float(np.mean(losses)),
                "lr": float(scheduler.get_last_lr()[0]),
                "seconds": time.perf_counter() - epoch_started,
            }
            if config.eval_every_epoch and dataset.size("val") > 0 and group.leader:
                # Extract-mode evaluation copies subnets out: the shared weights stay as they are.
                evaluator = SubnetEvaluator(space, supernet, dataset, "val", seed=config.seed)
                for name, arch in (("largest", space.largest()), ("smallest", space.smallest())):
                    record[f"val_{name}"] = evaluator.evaluate(arch).accuracy
            if group.world > 1:
                record["replica_sha256"] = _check_replicas(supernet, group, epoch + 1)
            history.append(record)
            if group.leader:
                with metrics.open("a") as log:
                    log.write(json.dumps(record) + "\n")
                final = epoch + 1 == config.epochs
                state = None if final else _state(optimizer, scheduler, scaler, rng)
                _save(
                    out, space, supernet, config, dataset, epoch + 1, history, state, feature_head
                )
            group.barrier()  # every process may resume from the checkpoint once it exists
            progress_bar.remove_task(task)
    return TrainResult(
        checkpoint=out,
        metrics=metrics,
        epochs=last_epoch,
        seconds=time.perf_counter() - run_started,
        history=history,
    )


def _join_launcher_group(config: TrainConfig) -> bool:
    """Join the process group of a ``torchrun``-style launch (``WORLD_SIZE`` > 1 in the
    environment, rendezvous from ``MASTER_ADDR``/``MASTER_PORT``); whether this call joined."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or (
        dist.is_available() and dist.is_initialized()
    ):
        return False
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    dist.init_process_group(_backend(_device(config.device, local_rank)))
    return True


def _backend(device: torch.device) -> str:
    return "nccl" if device.type == "cuda" else "gloo"


def _spawn_workers(
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
    """Run ``workers`` training processes on this machine and wait for them.

    The processes are spawned (fresh interpreters, so CUDA works in them) and meet through a
    file in a temporary directory (no port to pick). The space, dataset and settings go to them
    with cloudpickle (spaces may hold lambdas, e.g. cross-dimension constraints); the result is
    read back from the metrics log rank 0 wrote.
    """
    import cloudpickle
    import torch.multiprocessing as mp

    device = _device(config.device)
    if device.type == "cuda" and workers > torch.cuda.device_count():
        raise NasvitError(
            f"{workers} workers need {workers} GPUs; {torch.cuda.device_count()} available"
        )
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="nasvit-ddp-") as rendezvous:
        mp.start_processes(
            _worker,
            args=(
                workers,
                f"file://{rendezvous}/store",
                _backend(device),
                torch.get_num_threads(),
                cloudpickle.dumps(
                    (space, dataset, config, out, resume, progress, metrics_path, stop_after)
                ),
            ),
            nprocs=workers,
            start_method="spawn",
        )
    out = Path(out)
    metrics = Path(metrics_path) if metrics_path else out.with_name(out.name + ".metrics.jsonl")
    history = [json.loads(line) for line in metrics.read_text().splitlines()]
    return TrainResult(
        checkpoint=out,
        metrics=metrics,
        epochs=history[-1]["epoch"] if history else 0,
        seconds=time.perf_counter() - started,
        history=history,
    )


def _worker(
    rank: int, world: int, init_method: str, backend: str, threads: int, job: bytes
) -> None:
    import cloudpickle

    torch.set_num_threads(threads)
    dist.init_process_group(backend, init_method=init_method, rank=rank, world_size=world)
    try:
        _train(*cloudpickle.loads(job))
    finally:
        dist.destroy_process_group()


@dataclass
class _Run:
    """What one training step touches."""

    supernet: Supernet
    optimizer: SlicedAdamW
    scaler: LossScaler
    teacher: Teacher | None
    device: torch.device
    use_amp: bool
    group: _Group = _Group()
    feature_head: HiddenStateDistiller | None = None  # Transformer students with a teacher


def _train_step(
    run: _Run,
    space: SearchSpace,
    dataset: Dataset,
    config: TrainConfig,
    index: Tensor,
    rng: np.random.Generator,
) -> float:
    """One optimizer step on the batch ``index``: gradients of every subnet of the step
    (sandwich: largest first, so its logits can teach the rest) accumulate into the slices they
    used; returns the mean subnet loss over the global batch."""
    archs = _step_archs(space, config, rng)
    group = run.group
    run.optimizer.zero_grad(set_to_none=True)
    # This process's contiguous share of the global batch, its loss weighted by its size so
    # that summing over processes gives the gradient of the global mean loss.
    share = index.tensor_split(group.world)[group.rank] if group.world > 1 else index
    weight = len(share) / len(index)
    total = torch.zeros((), dtype=torch.float64)
    soft_targets: Tensor | None = None
    with SliceRecorder() as recorder:
        for position, arch in enumerate(archs):
            x = dataset.images("train", resolution_of(space, arch), share).to(run.device)
            y = dataset.labels("train")[share].to(run.device)
            with torch.autocast("cuda", dtype=torch.float16, enabled=run.use_amp):
                loss, logits = _subnet_loss(
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
            run.scaler.scale(loss * weight if group.world > 1 else loss).backward()
            total += float(loss.detach()) * weight
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
    _average_buffers(run.supernet, group)
    return float(total) / len(archs)


def weights_fingerprint(module: torch.nn.Module) -> str:
    """SHA-256 over a module's state dict (names, dtypes, shapes and bytes, in order)."""
    digest = hashlib.sha256()
    for name, tensor in module.state_dict().items():
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
        digest.update(tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy())
    return digest.hexdigest()


def _check_replicas(supernet: Supernet, group: _Group, epoch: int) -> str:
    """Every process must hold bit-identical weights and buffers; returns their fingerprint."""
    fingerprint = weights_fingerprint(supernet)
    gathered: list[str | None] = [None] * group.world
    dist.all_gather_object(gathered, fingerprint)
    if len(set(gathered)) != 1:
        raise NasvitError(f"data-parallel replicas diverged after epoch {epoch}: {gathered}")
    return fingerprint


def _average_buffers(supernet: Supernet, group: _Group) -> None:
    """Average BatchNorm running statistics over processes (each saw its own share)."""
    if group.world == 1:
        return
    buffers = [b for b in supernet.buffers() if b.is_floating_point()]
    group.sum_(buffers)
    torch._foreach_div_(buffers, float(group.world))


def _step_archs(space: SearchSpace, config: TrainConfig, rng: np.random.Generator) -> list[Any]:
    if config.objective == "teacher_features":
        return [space.largest()]
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
    feature_head: HiddenStateDistiller | None = None,
) -> tuple[Tensor, Tensor]:
    """Loss of one subnet on one batch, and its logits."""
    if config.objective == "teacher_features":
        assert teacher is not None  # checked by _teacher
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


def _teacher(
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


def _feature_head(
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


def _initialise(
    path: Path, space: SearchSpace, supernet: Supernet, feature_head: nn.Module | None
) -> None:
    """Copy the weights of the checkpoint ``path`` (same space) into ``supernet``, and its
    feature head where it has one of the same shape (stage 2 of the two-stage recipe)."""
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
    where one exists (a finished stage is not rerun)."""
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
    scaler: LossScaler,
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
    feature_head: nn.Module | None = None,
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
    if feature_head is not None:
        extra["feature_head"] = feature_head.state_dict()
    save_supernet(out, space, supernet, extra)


def _restore(
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
    # A setting an older checkpoint does not record was at its default then.
    different = sorted(k for k, v in config.to_dict().items() if previous.get(k, _DEFAULTS[k]) != v)
    # Where it runs and whether it reports val accuracy each epoch do not change the weights.
    if set(different) - {"device", "eval_every_epoch"}:
        raise NasvitError(
            f"cannot resume {out}: settings differ from the checkpoint's: {', '.join(different)}"
        )
    if json.loads(extra["dataset"]) != dataset.describe():
        raise NasvitError(f"cannot resume {out}: it was trained on other data")
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


def train_from_mapping(values: Mapping[str, Any]) -> TrainConfig:
    """A :class:`TrainConfig` from a JSON mapping, rejecting unknown keys."""
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    unknown = sorted(set(values) - fields)
    if unknown:
        raise NasvitError(f"unknown training setting(s): {', '.join(unknown)}")
    return TrainConfig(**values)

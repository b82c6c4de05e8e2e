"""Data-parallel training: the process group, its launchers and the checks that keep the
replicas identical.

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

This module knows nothing of the training loop: :func:`spawn_workers` is handed the function
each process runs.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

from nasvit.errors import NasvitError
from nasvit.nn import Supernet


def train_device(name: str, local_rank: int = 0) -> torch.device:
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
class Group:
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


def current_group() -> Group:
    """The group this process trains in: the initialised ``torch.distributed`` one, or alone."""
    if dist.is_available() and dist.is_initialized():
        return Group(dist.get_rank(), dist.get_world_size())
    return Group()


def join_launcher_group(device: str) -> bool:
    """Join the process group of a ``torchrun``-style launch (``WORLD_SIZE`` > 1 in the
    environment, rendezvous from ``MASTER_ADDR``/``MASTER_PORT``); whether this call joined.

    Args:
        device: the run's device setting (see :func:`train_device`); it picks the backend.
    """
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or (
        dist.is_available() and dist.is_initialized()
    ):
        return False
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    dist.init_process_group(_backend(train_device(device, local_rank)))
    return True


def _backend(device: torch.device) -> str:
    return "nccl" if device.type == "cuda" else "gloo"


def spawn_workers(
    train: Callable[..., object], workers: int, device: str, job: tuple[Any, ...]
) -> None:
    """Run ``train(*job)`` in ``workers`` processes on this machine, each as one rank of a new
    group, and wait for them.

    The processes are spawned (fresh interpreters, so CUDA works in them) and meet through a
    file in a temporary directory (no port to pick). ``train`` goes to them by reference (a
    module-level function) and ``job`` with cloudpickle (spaces may hold lambdas, e.g.
    cross-dimension constraints).

    Args:
        train: the one-process training function.
        workers: how many processes (one per GPU on CUDA).
        device: the run's device setting (see :func:`train_device`); it picks the backend.
        job: the arguments of ``train``.

    Raises:
        NasvitError: more CUDA workers than GPUs.
    """
    import cloudpickle
    import torch.multiprocessing as mp

    where = train_device(device)
    if where.type == "cuda" and workers > torch.cuda.device_count():
        raise NasvitError(
            f"{workers} workers need {workers} GPUs; {torch.cuda.device_count()} available"
        )
    with tempfile.TemporaryDirectory(prefix="nasvit-ddp-") as rendezvous:
        mp.start_processes(
            _worker,
            args=(
                workers,
                f"file://{rendezvous}/store",
                _backend(where),
                torch.get_num_threads(),
                cloudpickle.dumps((train, job)),
            ),
            nprocs=workers,
            start_method="spawn",
        )


def _worker(
    rank: int, world: int, init_method: str, backend: str, threads: int, job: bytes
) -> None:
    """One spawned process (``nasvit.training.distributed._worker``, found by module path)."""
    import cloudpickle

    torch.set_num_threads(threads)
    dist.init_process_group(backend, init_method=init_method, rank=rank, world_size=world)
    try:
        train, args = cloudpickle.loads(job)
        train(*args)
    finally:
        dist.destroy_process_group()


def weights_fingerprint(module: torch.nn.Module) -> str:
    """SHA-256 over a module's state dict (names, dtypes, shapes and bytes, in order)."""
    digest = hashlib.sha256()
    for name, tensor in module.state_dict().items():
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
        digest.update(tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy())
    return digest.hexdigest()


def check_replicas(supernet: Supernet, group: Group, epoch: int) -> str:
    """Every process must hold bit-identical weights and buffers; returns their fingerprint."""
    fingerprint = weights_fingerprint(supernet)
    gathered: list[str | None] = [None] * group.world
    dist.all_gather_object(gathered, fingerprint)
    if len(set(gathered)) != 1:
        raise NasvitError(f"data-parallel replicas diverged after epoch {epoch}: {gathered}")
    return fingerprint


def average_buffers(supernet: Supernet, group: Group) -> None:
    """Average BatchNorm running statistics over processes (each saw its own share)."""
    if group.world == 1:
        return
    buffers = [b for b in supernet.buffers() if b.is_floating_point()]
    group.sum_(buffers)
    torch._foreach_div_(buffers, float(group.world))

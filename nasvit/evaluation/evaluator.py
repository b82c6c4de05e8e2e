"""Accuracy of subnets taken from a trained supernet.

A subnet inherits BatchNorm statistics averaged over every subnet trained, which do not match its
own activations, so every evaluation first re-estimates them on a fixed calibration subset of the
training split (as once-for-all does), then measures top-1 accuracy on the val or test split.

Two paths give the same number (a test holds them to it): ``mode="extract"`` copies the subnet
out of the supernet and recalibrates the copy (the supernet is never modified, so one supernet
can serve concurrent evaluations); ``mode="supernet"`` recalibrates the supernet's own buffers
for the arch and restores them afterwards.

Cost, per evaluation (a search runs hundreds): the recalibration forward stops after the last
block that holds a BatchNorm (what follows cannot change any statistic), a subnet without
BatchNorm is not recalibrated at all, and the extracted subnet runs in channels-last memory
format (CPU convolutions and above all training-mode BatchNorm are several times faster on
NHWC than on NCHW here; the results differ only by float rounding).
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from nasvit.data import Dataset
from nasvit.errors import NasvitError
from nasvit.nn import Supernet, recalibrate_batchnorm
from nasvit.search_spaces import Architecture, SearchSpace

EvalMode = Literal["extract", "supernet"]


@dataclass(frozen=True)
class ArchAccuracy:
    """Measured accuracy of one architecture.

    Attributes:
        arch: canonical dimension values (JSON-ready).
        short: the space's short string for the arch.
        accuracy: top-1 accuracy in [0, 1].
        loss: mean cross-entropy.
        samples: number of evaluated images.
        split: ``val`` or ``test``.
        seconds: wall time of recalibration plus evaluation.
    """

    arch: dict[str, Any]
    short: str
    accuracy: float
    loss: float
    samples: int
    split: str
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def resolution_of(space: SearchSpace, arch: Architecture) -> int:
    """Input side length of ``arch`` (square inputs)."""
    return int(space.input_shape(arch, batch=1, in_channels=1)[-1])


@torch.no_grad()
def accuracy_of(
    run: nn.Module | Any, batches: Iterable[tuple[Tensor, Tensor]], device: torch.device
) -> tuple[float, float, int]:
    """(accuracy, mean loss, samples) of ``run(x) -> logits`` over (x, y) batches."""
    correct, loss_sum, seen = 0, 0.0, 0
    for x, y in batches:
        x, y = x.to(device), y.to(device)
        logits = run(x).float()
        loss_sum += float(F.cross_entropy(logits, y, reduction="sum"))
        correct += int((logits.argmax(dim=1) == y).sum())
        seen += int(y.shape[0])
    if seen == 0:
        raise NasvitError("evaluation split is empty")
    return correct / seen, loss_sum / seen, seen


class SubnetEvaluator:
    """Evaluates many architectures of one supernet on one dataset split.

    Data resized to each resolution is cached by the :class:`Dataset`, and the calibration subset
    is drawn once, so batched evaluation of many archs reuses both.

    Args:
        space: the (possibly restricted) space of the supernet.
        supernet: trained weights; left unmodified by ``mode="extract"``.
        dataset: data with ``train`` (calibration) and the evaluated split.
        split: ``val`` for search, ``test`` for reporting.
        calibration_size: training images used to re-estimate BatchNorm statistics.
        batch_size: evaluation batch size.
        seed: seed of the calibration subset.
        mode: ``extract`` (default) or ``supernet``; see the module docstring.
        channels_last: run ``extract``-mode evaluations in channels-last memory format
            (:meth:`subnet`, the module handed out for export, stays contiguous).
    """

    def __init__(
        self,
        space: SearchSpace,
        supernet: Supernet,
        dataset: Dataset,
        split: str = "val",
        calibration_size: int = 256,
        batch_size: int = 256,
        seed: int = 0,
        mode: EvalMode = "extract",
        device: torch.device | str | None = None,
        channels_last: bool = True,
    ):
        if supernet.num_classes != dataset.num_classes:
            raise NasvitError(
                f"supernet has {supernet.num_classes} classes but dataset {dataset.name} has "
                f"{dataset.num_classes}"
            )
        if supernet.in_channels != dataset.in_channels:
            raise NasvitError(
                f"supernet takes {supernet.in_channels}-channel input but dataset "
                f"{dataset.name} has {dataset.in_channels} channels"
            )
        if mode not in ("extract", "supernet"):
            raise NasvitError(f"unknown evaluation mode '{mode}'; known: extract, supernet")
        self.space = space
        self.supernet = supernet
        self.dataset = dataset
        self.split = split
        self.batch_size = batch_size
        self.mode = mode
        self.channels_last = channels_last
        self._supernet_device = next(supernet.parameters()).device
        self.device = torch.device(device) if device else self._supernet_device
        dataset.size(split)  # fails early on an unknown split
        rng = np.random.default_rng(seed)
        count = min(calibration_size, dataset.size("train"))
        self._calibration = torch.as_tensor(
            np.sort(rng.choice(dataset.size("train"), size=count, replace=False))
        )

    def calibration_batches(self, resolution: int) -> list[Tensor]:
        images = self.dataset.images("train", resolution, self._calibration)
        return [
            images[i : i + self.batch_size].to(self.device)
            for i in range(0, images.shape[0], self.batch_size)
        ]

    def subnet(self, arch: Mapping[str, Any]) -> nn.Module:
        """The static subnet of ``arch`` with BatchNorm recalibrated, in eval mode."""
        return self._calibrated_subnet(self.space.validate(arch), channels_last=False)

    def _calibrated_subnet(self, arch: Architecture, channels_last: bool) -> nn.Module:
        module = self.supernet.extract(arch)
        if self.device.type != "cpu" or self._supernet_device.type != "cpu":
            module = module.to(self.device)  # (a full module walk: skipped on CPU)
        if channels_last:
            with torch.no_grad():
                for parameter in module.parameters():
                    if parameter.dim() == 4:
                        parameter.data = parameter.data.contiguous(
                            memory_format=torch.channels_last
                        )
        calibrated = _calibration_part(module)
        if calibrated is not None:
            batches = self.calibration_batches(resolution_of(self.space, arch))
            if channels_last:
                batches = [_to_channels_last(b) for b in batches]
            recalibrate_batchnorm(calibrated, batches)
        return module.eval()

    def evaluate(self, arch: Mapping[str, Any]) -> ArchAccuracy:
        """Recalibrate BatchNorm for ``arch`` and measure its accuracy on the split."""
        start = time.perf_counter()
        arch = self.space.validate(arch)
        resolution = resolution_of(self.space, arch)
        batches = self.dataset.batches(self.split, resolution, self.batch_size)
        if self.mode == "extract":
            module = self._calibrated_subnet(arch, self.channels_last)
            if self.channels_last:
                batches = ((_to_channels_last(x), y) for x, y in batches)
            accuracy, loss, seen = accuracy_of(module, batches, self.device)
        else:
            accuracy, loss, seen = self._evaluate_in_supernet(arch, resolution, batches)
        return ArchAccuracy(
            arch=arch.to_dict(),
            short=self.space.short_string(arch),
            accuracy=accuracy,
            loss=loss,
            samples=seen,
            split=self.split,
            seconds=time.perf_counter() - start,
        )

    def evaluate_many(
        self, archs: Sequence[Mapping[str, Any]], progress: bool = False
    ) -> list[ArchAccuracy]:
        """:meth:`evaluate` for each arch, in order, with an optional progress bar."""
        if not progress:
            return [self.evaluate(a) for a in archs]
        from rich.progress import Progress

        results = []
        with Progress(transient=True) as bar:
            task = bar.add_task(f"evaluating on {self.split}", total=len(archs))
            for arch in archs:
                results.append(self.evaluate(arch))
                bar.advance(task)
        return results

    def _evaluate_in_supernet(
        self, arch: Architecture, resolution: int, batches: Iterable[tuple[Tensor, Tensor]]
    ) -> tuple[float, float, int]:
        norms = [
            m for m in self.supernet.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)
        ]
        saved = [{k: v.clone() for k, v in n._buffers.items() if v is not None} for n in norms]
        was_training = self.supernet.training

        def forward(x: Tensor) -> Tensor:
            return self.supernet(x, arch)

        try:
            if norms:  # nothing to recalibrate in a supernet without BatchNorm
                recalibrate_batchnorm(
                    self.supernet, self.calibration_batches(resolution), forward=forward
                )
            return accuracy_of(forward, batches, self.device)
        finally:
            with torch.no_grad():
                for norm, buffers in zip(norms, saved, strict=True):
                    for name, value in buffers.items():
                        getattr(norm, name).copy_(value)
            self.supernet.train(was_training)


def _is_batchnorm(module: nn.Module) -> bool:
    return isinstance(module, nn.modules.batchnorm._BatchNorm)


def _calibration_part(module: nn.Module) -> nn.Module | None:
    """What a BatchNorm recalibration has to run: ``None`` without BatchNorm layers; for an
    ``nn.Sequential`` the blocks up to the last one holding a BatchNorm (the same modules,
    so recalibrating them recalibrates ``module``); otherwise the whole module."""
    if isinstance(module, nn.Sequential):
        blocks = list(module)
        holding = [i for i, b in enumerate(blocks) if any(map(_is_batchnorm, b.modules()))]
        return nn.Sequential(*blocks[: holding[-1] + 1]) if holding else None
    return module if any(map(_is_batchnorm, module.modules())) else None


def _to_channels_last(x: Tensor) -> Tensor:
    return x.contiguous(memory_format=torch.channels_last) if x.dim() == 4 else x


def accuracy_spread(results: Sequence[ArchAccuracy]) -> dict[str, float]:
    """Summary of accuracies over many archs: min, max, mean, std, 10th/90th percentiles."""
    values = np.asarray([r.accuracy for r in results], dtype=np.float64)
    if values.size == 0:
        raise NasvitError("no results to summarise")
    return {
        "count": float(values.size),
        "min": float(values.min()),
        "p10": float(np.percentile(values, 10)),
        "mean": float(values.mean()),
        "p90": float(np.percentile(values, 90)),
        "max": float(values.max()),
        "std": float(values.std()),
    }

"""Training: once-for-all supernet training and its checkpoints.

The public surface is re-exported here; the modules, by concern:

- :mod:`~nasvit.training.config`: what a run is asked to do (:class:`TrainConfig`) and what it
  produced (:class:`TrainResult`).
- :mod:`~nasvit.training.loop`: :func:`train_supernet` and the loop each process runs.
- :mod:`~nasvit.training.objectives`: the subnets of a step and their losses.
- :mod:`~nasvit.training.run_state`: a run's resumable state in its checkpoint.
- :mod:`~nasvit.training.distributed`: data-parallel process groups, launchers, replica checks.
- :mod:`~nasvit.training.two_stage`: LightHuBERT's two-stage recipe (:func:`train_two_stage`).
- :mod:`~nasvit.training.checkpoint`: the supernet checkpoint file.
- :mod:`~nasvit.training.distillation`: teachers and hidden-feature distillation.
- :mod:`~nasvit.training.sliced_optim`: the optimizer that updates only the slices a step used.
- :mod:`~nasvit.training.default_supernet`: each space's default supernet, trained once and
  cached. Not imported here: its function ``default_supernet`` would shadow the module.

Modules of this package import each other's modules, never this package: it imports them.
"""

from nasvit.training.checkpoint import load_supernet, save_supernet
from nasvit.training.config import OBJECTIVES, TrainConfig, TrainResult, train_from_mapping
from nasvit.training.distributed import weights_fingerprint
from nasvit.training.loop import train_supernet
from nasvit.training.two_stage import stage1_path, train_two_stage

__all__ = [
    "OBJECTIVES",
    "TrainConfig",
    "TrainResult",
    "load_supernet",
    "save_supernet",
    "stage1_path",
    "train_from_mapping",
    "train_supernet",
    "train_two_stage",
    "weights_fingerprint",
]

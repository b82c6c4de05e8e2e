"""ONNX export of static subnets and onnxruntime sessions to run them.

The exporter and the session settings are the latency database's, so a model a user exports is
built and run exactly as the blocks and networks that were timed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from torch import nn

from nasvit.agent.timing import ort_session_options
from nasvit.latency_db.profilers import export_onnx_bytes


def export_onnx(module: nn.Module, input_shape: tuple[int, ...], path: str | Path) -> Path:
    """Export ``module`` (in eval mode) with a static input shape; weights are embedded."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    was_training = module.training
    module.eval()
    try:
        path.write_bytes(export_onnx_bytes(module, tuple(input_shape)))
    finally:
        module.train(was_training)
    return path


def onnx_session(path: str | Path, threads: int = 1, optimization: str = "all") -> Any:
    """An onnxruntime CPU session with explicit threading (1 intra-op thread by default)."""
    import onnxruntime as ort

    options = ort_session_options(threads, optimization)
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def run_onnx(path: str | Path, inputs: np.ndarray, threads: int = 1) -> np.ndarray:
    """Run a single-input, single-output model exported by :func:`export_onnx`."""
    session = onnx_session(path, threads)
    (output,) = session.run(None, {session.get_inputs()[0].name: inputs.astype(np.float32)})
    return output

"""ONNX export of static subnets and onnxruntime sessions to run them."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

DEFAULT_OPSET = 17


def export_onnx(
    module: nn.Module,
    input_shape: tuple[int, ...],
    path: str | Path,
    opset: int = DEFAULT_OPSET,
) -> Path:
    """Export ``module`` (eval mode) with a static input shape; weights are embedded.

    The TorchScript exporter (``dynamo=False``) is used: it is much faster for small blocks and
    needs no onnxscript; static shapes are what latency tables and deployments use anyway.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    was_training = module.training
    module.eval()
    example = torch.randn(input_shape)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the exporter's deprecation chatter is not for users
            torch.onnx.export(
                module,
                (example,),
                str(path),
                input_names=["input"],
                output_names=["output"],
                opset_version=opset,
                dynamo=False,
            )
    finally:
        module.train(was_training)
    return path


def onnx_session(path: str | Path, threads: int = 1, optimization: str = "all"):  # noqa: ANN201
    """An onnxruntime CPU session with explicit threading (1 intra-op thread by default)."""
    import onnxruntime as ort

    levels = {
        "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
        "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
        "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
    }
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = levels[optimization]
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def run_onnx(path: str | Path, inputs: np.ndarray, threads: int = 1) -> np.ndarray:
    """Run a single-input, single-output model exported by :func:`export_onnx`."""
    session = onnx_session(path, threads)
    (output,) = session.run(None, {session.get_inputs()[0].name: inputs.astype(np.float32)})
    return output

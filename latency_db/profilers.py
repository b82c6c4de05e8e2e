"""Profilers: real runtimes timing real models, behind one protocol.

A profiler turns a model (a :class:`~nasvit.nn.blocks.BlockSpec`, an ``nn.Module``, ONNX bytes or
an ONNX file) into a :class:`Measurement` following a :class:`MeasurementProtocol`. Every
implementation also reports its :class:`RuntimeSettings`, which become part of the device
fingerprint: a table is only valid for the runtime, threads and graph optimisation it was
measured with (optimisation level alone changed latency 4.5x here).

Implementations:
    - :class:`OnnxRuntimeProfiler`: onnxruntime CPU execution provider (the default).
    - :class:`TorchProfiler`: eager PyTorch on the CPU.
    - :class:`CudaProfiler`: PyTorch on a CUDA GPU timed with CUDA events, or onnxruntime's CUDA
      execution provider. Constructing it without a GPU raises :class:`ProfilerUnavailableError`.
"""

from __future__ import annotations

import copy
import io
import warnings
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Protocol, TypeVar, runtime_checkable

import numpy as np
import torch
from torch import nn

from nasvit.agent.hardware import CacheFlusher
from nasvit.agent.measurement import Measurement, MeasurementProtocol
from nasvit.agent.timing import OPTIMIZATION_LEVELS, OrtTimer, default_clock, stream_copies
from nasvit.errors import NasvitError, UnknownNameError
from nasvit.latency_db.replicate import replicate_onnx
from nasvit.nn.blocks import BlockSpec

#: A model a profiler can time. ONNX input (bytes or a path) only suits the onnxruntime profilers.
ModelSource = BlockSpec | nn.Module | bytes | Path

ONNX_OPSET = 17
#: Chained copies of a tiny block that measure the per-call overhead (``measure_overhead``).
OVERHEAD_COPIES = 16


P = TypeVar("P", bound="Profiler")


class ProfilerUnavailableError(NasvitError):
    """The runtime or hardware a profiler needs is not present on this machine."""


@dataclass(frozen=True)
class RuntimeSettings:
    """What the runtime was told to do; part of the device fingerprint.

    Attributes:
        runtime: ``"onnxruntime"`` or ``"torch"``.
        version: the runtime's version string.
        provider: execution provider / device, e.g. ``"CPUExecutionProvider"``, ``"cpu"``.
        threads: intra-op threads.
        optimization: graph optimisation level (``"eager"`` for PyTorch).
        precision: numeric precision of weights and activations.
        accelerator: GPU name for CUDA profilers, empty on the CPU.
        clock: what timings are read from (``MeasurementProtocol.clock``).
    """

    runtime: str
    version: str
    provider: str
    threads: int
    optimization: str
    precision: str = "fp32"
    accelerator: str = ""
    clock: str = "wall"


@runtime_checkable
class Profiler(Protocol):
    """Times models on one runtime configuration.

    Contract: ``measure`` never changes the model it is given, uses fresh sessions for every
    measurement, and returns milliseconds for one forward pass at ``input_shape``.
    """

    protocol: MeasurementProtocol

    @property
    def settings(self) -> RuntimeSettings: ...

    @property
    def name(self) -> str:
        """Short label stored with every entry, e.g. ``"onnxruntime-cpu"``."""
        ...

    def prepare(self, model: ModelSource, input_shape: tuple[int, ...] | None = None) -> Any:
        """Do the expensive, untimed part once (export to ONNX, build the module)."""
        ...

    def measure(
        self, model: ModelSource | Any, input_shape: tuple[int, ...] | None = None
    ) -> Measurement:
        """Measure a model or something :meth:`prepare` returned."""
        ...

    def measure_overhead(self, input_shape: tuple[int, ...] = (1, 8, 8, 8)) -> Measurement:
        """Per-call cost of an empty (identity) model: what a sum of blocks pays once per
        block but a whole network pays once."""
        ...


def _shape_of(model: ModelSource, input_shape: tuple[int, ...] | None) -> tuple[int, ...]:
    if input_shape is not None:
        return tuple(input_shape)
    if isinstance(model, BlockSpec):
        return model.input_shape
    raise ValueError("input_shape is required unless the model is a BlockSpec")


def _module_of(model: BlockSpec | nn.Module) -> nn.Module:
    return model.build() if isinstance(model, BlockSpec) else model.eval()


def onnx_weight_bytes(model: bytes) -> int:
    """Bytes of an ONNX model's initializers and constants: the weights the runtime holds.

    Why not the module's parameters: the exported graph can hold fewer. A MobileDets conv whose
    kernel reaches past a tiny feature map is cropped to the reachable taps before it runs
    (``nasvit.nn.mobile``), so a 5x5 kernel on a 1x1 map exports 1/25 of its parameter; at
    resolution 32 the accelerator space's networks held a median of 16 MiB in their models
    against 36 MiB of parameters, and the cache model, fed the parameter bytes, saw pressure
    that the runtime never had (held-out 60% -> 75% within ±10% once fed the model's bytes).
    """
    import onnx  # imported here: the profilers are imported on every search's start-up
    from onnx.helper import tensor_dtype_to_np_dtype

    def tensor_bytes(tensor: onnx.TensorProto) -> int:
        return int(np.prod(tensor.dims)) * tensor_dtype_to_np_dtype(tensor.data_type).itemsize

    graph = onnx.load_from_string(model).graph
    constants = [
        attribute.t
        for node in graph.node
        if node.op_type == "Constant"
        for attribute in node.attribute
        if attribute.name == "value"
    ]
    return sum(tensor_bytes(t) for t in [*graph.initializer, *constants])


def onnx_bytes(model: ModelSource, input_shape: tuple[int, ...]) -> bytes:
    """A model as ONNX bytes: given bytes as they are, a file read, a module or block exported
    with a static ``input_shape``."""
    if isinstance(model, bytes):
        return model
    if isinstance(model, (str, Path)):
        return Path(model).read_bytes()
    return export_onnx_bytes(_module_of(model), input_shape)


def export_onnx_bytes(module: nn.Module, input_shape: tuple[int, ...]) -> bytes:
    """Export ``module`` to ONNX in memory with a static shape (TorchScript exporter: about 30 ms
    per small block, many times faster than the dynamo exporter)."""
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # exporter deprecation chatter
        torch.onnx.export(
            module,
            (torch.randn(input_shape),),
            buffer,  # type: ignore[arg-type]  # the TorchScript exporter writes to file objects
            input_names=["input"],
            output_names=["output"],
            opset_version=ONNX_OPSET,
            dynamo=False,
        )
    return buffer.getvalue()


class Identity(nn.Module):
    """An empty model that still exports one node (onnxruntime rejects graphs without nodes)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + 0.0


@dataclass(frozen=True)
class PreparedOnnx:
    """ONNX bytes ready for fresh sessions; keeps block export out of the timed region.
    ``weight_bytes``: the model's weights (:func:`onnx_weight_bytes`)."""

    model: bytes
    input_shape: tuple[int, ...]
    weight_bytes: int | None = None


class OnnxRuntimeProfiler:
    """onnxruntime with explicit threading: ``threads`` intra-op, one inter-op, sequential.

    The timing itself is :class:`nasvit.agent.timing.OrtTimer`'s, the code a device agent
    runs; this class adds what needs torch and onnx (exporting blocks, building the chained and
    replicated models)."""

    provider = "CPUExecutionProvider"

    def __init__(
        self,
        threads: int = 1,
        optimization: str = "all",
        protocol: MeasurementProtocol | None = None,
        clock: str | None = None,
    ):
        """``clock`` defaults to the calling thread's CPU time with one thread (the sequential
        executor runs the graph on the calling thread; robust on shared machines) and to wall
        time otherwise; see :attr:`MeasurementProtocol.clock`."""
        if optimization not in OPTIMIZATION_LEVELS:
            raise UnknownNameError("graph optimisation level", optimization, OPTIMIZATION_LEVELS)
        if threads < 1:
            raise NasvitError(f"threads must be >= 1, got {threads}")
        chosen = clock or default_clock(threads, self.provider)
        if chosen == "thread" and threads != 1:
            raise NasvitError("the thread clock only measures single-threaded runs")
        try:
            self.timer = OrtTimer(threads, optimization, self.provider, protocol, chosen)
        except RuntimeError as exc:  # the provider is missing from this onnxruntime build
            raise ProfilerUnavailableError(str(exc)) from None
        self.threads = threads
        self.optimization = optimization
        self.clock = chosen

    @property
    def protocol(self) -> MeasurementProtocol:
        return self.timer.protocol

    @protocol.setter
    def protocol(self, protocol: MeasurementProtocol) -> None:
        self.timer = self.timer.with_protocol(protocol)

    @property
    def flusher(self) -> CacheFlusher:
        """The cache flusher of cold measurements (allocated on first use)."""
        return self.timer.flusher

    @flusher.setter
    def flusher(self, flusher: CacheFlusher) -> None:
        self.timer.flusher = flusher

    @property
    def name(self) -> str:
        return "onnxruntime-cpu"

    @property
    def settings(self) -> RuntimeSettings:
        return RuntimeSettings(
            runtime="onnxruntime",
            version=self.timer.version,
            provider=self.provider,
            threads=self.threads,
            optimization=self.optimization,
            clock=self.clock,
        )

    def prepare(
        self, model: ModelSource | PreparedOnnx, input_shape: tuple[int, ...] | None = None
    ) -> PreparedOnnx:
        if isinstance(model, PreparedOnnx):
            return model
        shape = _shape_of(model, input_shape)
        onnx_model = onnx_bytes(model, shape)
        return PreparedOnnx(onnx_model, shape, onnx_weight_bytes(onnx_model))

    def measure(
        self, model: ModelSource | PreparedOnnx, input_shape: tuple[int, ...] | None = None
    ) -> Measurement:
        prepared = self.prepare(model, input_shape)
        return self.timer.measure(prepared.model, prepared.input_shape)

    def measure_warm_cold(
        self,
        model: ModelSource | PreparedOnnx,
        input_shape: tuple[int, ...] | None = None,
        call_overhead_ms: float = 0.0,
    ) -> tuple[Measurement, Measurement]:
        """Warm timing (fresh sessions, hot caches) and *streamed* timing of one block.

        The streamed timing runs ``k`` copies of the block with their own weights in one session
        (:mod:`nasvit.latency_db.replicate`), each call after a cache flush, so every copy reads
        its weights from DRAM with a hot input, as inside a network larger than the cache
        (:meth:`nasvit.agent.timing.OrtTimer.measure_streamed`).
        """
        prepared = self.prepare(model, input_shape)
        warm = self.timer.measure(prepared.model, prepared.input_shape)
        copies = stream_copies(warm.median_ms)
        replicated = replicate_onnx(prepared.model, copies)
        cold = self.timer.measure_streamed(
            replicated, prepared.input_shape, copies, call_overhead_ms
        )
        return warm, cold

    def measure_overhead(self, input_shape: tuple[int, ...] = (1, 8, 8, 8)) -> Measurement:
        """What a network saves per block by running its blocks in one call, measured with a
        1x1 convolution alone and as :data:`OVERHEAD_COPIES` chained copies
        (:meth:`nasvit.agent.timing.OrtTimer.measure_overhead`)."""
        single, chained = overhead_models(input_shape)
        return self.timer.measure_overhead(single, chained, input_shape, OVERHEAD_COPIES)


def overhead_models(input_shape: tuple[int, ...] = (1, 8, 8, 8)) -> tuple[bytes, bytes]:
    """The two models of an overhead measurement: a tiny block (a 1x1 convolution) and
    :data:`OVERHEAD_COPIES` chained copies of it."""
    channels = input_shape[1]
    single = export_onnx_bytes(nn.Conv2d(channels, channels, 1).eval(), input_shape)
    return single, replicate_onnx(single, OVERHEAD_COPIES)


class CudaOnnxRuntimeProfiler(OnnxRuntimeProfiler):
    """onnxruntime's CUDA execution provider; wall time around ``run`` includes the copy of the
    input to the GPU and the output back, as a deployment would."""

    provider = "CUDAExecutionProvider"

    @property
    def name(self) -> str:
        return "onnxruntime-cuda"

    @property
    def settings(self) -> RuntimeSettings:
        base = super().settings
        return RuntimeSettings(**{**base.__dict__, "accelerator": _cuda_device_name()})


@dataclass(frozen=True)
class PreparedModule:
    """A module builder and input shape; a fresh module is built for every session."""

    model: BlockSpec | nn.Module
    input_shape: tuple[int, ...]


class TorchProfiler:
    """Eager PyTorch on the CPU under ``inference_mode`` with ``torch.set_num_threads``."""

    device = "cpu"

    def __init__(self, threads: int = 1, protocol: MeasurementProtocol | None = None):
        if threads < 1:
            raise NasvitError(f"threads must be >= 1, got {threads}")
        self.threads = threads
        self.protocol = protocol or MeasurementProtocol()

    @property
    def name(self) -> str:
        return "torch-cpu"

    @property
    def settings(self) -> RuntimeSettings:
        return RuntimeSettings(
            runtime="torch",
            version=torch.__version__,
            provider=self.device,
            threads=self.threads,
            optimization="eager",
        )

    def prepare(
        self, model: ModelSource | PreparedModule, input_shape: tuple[int, ...] | None = None
    ) -> PreparedModule:
        if isinstance(model, PreparedModule):
            return model
        if isinstance(model, (bytes, str, Path)):
            raise NasvitError(f"{self.name} measures PyTorch modules, not ONNX files")
        return PreparedModule(model, _shape_of(model, input_shape))

    def _timer(self, run: Any) -> Any:
        return None  # wall time is right on the CPU

    def measure(
        self, model: ModelSource | PreparedModule, input_shape: tuple[int, ...] | None = None
    ) -> Measurement:
        prepared = self.prepare(model, input_shape)
        previous_threads = torch.get_num_threads()
        torch.set_num_threads(self.threads)
        try:
            runs = []
            for _ in range(self.protocol.sessions):
                module = _module_of(prepared.model)
                # A BlockSpec builds a fresh module; a given module is reused but stays unchanged.
                module = module.to(self.device)
                example = torch.randn(prepared.input_shape, device=self.device)
                with torch.inference_mode():

                    def run(m: nn.Module = module, x: torch.Tensor = example) -> None:
                        m(x)

                    runs.append(self.protocol.time_session(run, self._timer(run)))
            return Measurement.from_sessions(runs)
        finally:
            torch.set_num_threads(previous_threads)

    def measure_overhead(self, input_shape: tuple[int, ...] = (1, 8, 8, 8)) -> Measurement:
        return self.measure(Identity(), input_shape)


def _cuda_device_name() -> str:
    return torch.cuda.get_device_name(0) if torch.cuda.is_available() else ""


class CudaProfiler(TorchProfiler):
    """PyTorch on the first CUDA GPU, timed with CUDA events (no host-side sync in the timed
    region except the event's own). Raises :class:`ProfilerUnavailableError` without a GPU."""

    device = "cuda"

    def __init__(self, threads: int = 1, protocol: MeasurementProtocol | None = None):
        if not torch.cuda.is_available():
            raise ProfilerUnavailableError(
                "no CUDA GPU is visible to torch on this machine "
                f"(torch {torch.__version__}); choose the onnxruntime or torch runtime",
                argument="runtime",
            )
        super().__init__(threads, protocol)

    @property
    def name(self) -> str:
        return "torch-cuda"

    @property
    def settings(self) -> RuntimeSettings:
        return RuntimeSettings(
            runtime="torch",
            version=f"{torch.__version__} cuda {torch.version.cuda}",
            provider="cuda",
            threads=self.threads,
            optimization="eager",
            accelerator=_cuda_device_name(),
        )

    def _timer(self, run: Any) -> Any:
        def timed() -> float:
            start = torch.cuda.Event(enable_timing=True)  # type: ignore[no-untyped-call]
            end = torch.cuda.Event(enable_timing=True)  # type: ignore[no-untyped-call]
            start.record()
            run()
            end.record()
            end.synchronize()
            return float(start.elapsed_time(end))

        return timed


def with_protocol(profiler: P, protocol: MeasurementProtocol) -> P:
    """A copy of ``profiler`` (same runtime settings) that measures with ``protocol``."""
    clone = copy.copy(profiler)
    clone.protocol = replace(protocol, clock=profiler.protocol.clock)
    return clone


#: Runtime names accepted by :func:`make_profiler` (and the CLI's ``--runtime``).
RUNTIMES = ("onnxruntime", "torch", "cuda", "onnxruntime-cuda")


def make_profiler(
    runtime: str = "onnxruntime",
    threads: int = 1,
    optimization: str = "all",
    protocol: MeasurementProtocol | None = None,
) -> OnnxRuntimeProfiler | TorchProfiler:
    """The profiler for a runtime name; raises :class:`ProfilerUnavailableError` when the
    runtime or GPU is missing and :class:`UnknownNameError` for an unknown name."""
    if runtime == "onnxruntime":
        return OnnxRuntimeProfiler(threads, optimization, protocol)
    if runtime == "onnxruntime-cuda":
        return CudaOnnxRuntimeProfiler(threads, optimization, protocol)
    if runtime == "torch":
        return TorchProfiler(threads, protocol)
    if runtime == "cuda":
        return CudaProfiler(threads, protocol)
    raise UnknownNameError("runtime", runtime, RUNTIMES)

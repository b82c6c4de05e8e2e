"""Profilers time real models on real runtimes; the CUDA path reports that it is unavailable."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from nasvit.errors import NasvitError, UnknownNameError
from nasvit.latency_db import (
    CudaProfiler,
    Measurement,
    MeasurementProtocol,
    OnnxRuntimeProfiler,
    Profiler,
    ProfilerUnavailableError,
    TorchProfiler,
    make_profiler,
    with_protocol,
)
from nasvit.latency_db.profilers import export_onnx_bytes

QUICK = MeasurementProtocol.quick()


def _sane(m: Measurement, protocol: MeasurementProtocol = QUICK) -> None:
    assert 0 < m.median_ms < 1000  # sanity bounds only: timings are not asserted
    assert m.iqr_ms >= 0
    assert m.sessions == protocol.sessions == len(m.session_medians_ms)
    assert protocol.sessions * protocol.min_repeats <= m.n <= protocol.sessions * protocol.repeats


@pytest.mark.parametrize(
    "make",
    [lambda: OnnxRuntimeProfiler(protocol=QUICK), lambda: TorchProfiler(protocol=QUICK)],
    ids=["ort", "torch"],
)
def test_every_profiler_measures_blocks_and_overhead(make, small_blocks) -> None:
    profiler = make()
    assert isinstance(profiler, Profiler)
    for block in small_blocks[:3]:
        _sane(profiler.measure(block))
    overhead = profiler.measure_overhead()
    _sane(overhead)
    assert overhead.median_ms < 5.0
    settings = profiler.settings
    assert settings.threads == 1 and settings.version


def test_onnxruntime_measures_bytes_and_files(tmp_path: Path, small_blocks) -> None:
    block = small_blocks[0]
    model = export_onnx_bytes(block.build(), block.input_shape)
    path = tmp_path / "block.onnx"
    path.write_bytes(model)
    profiler = OnnxRuntimeProfiler(protocol=QUICK)
    _sane(profiler.measure(model, block.input_shape))
    _sane(profiler.measure(path, block.input_shape))
    with pytest.raises(ValueError, match="input_shape"):
        profiler.measure(model)


def test_the_protocol_bounds_runs_and_sessions() -> None:
    profiler = OnnxRuntimeProfiler(protocol=MeasurementProtocol(3, 1, 7, 7, budget_s=10))
    m = profiler.measure(torch.nn.Conv2d(4, 4, 3), (1, 4, 8, 8))
    assert m.n == 21 and m.sessions == 3
    long = with_protocol(profiler, MeasurementProtocol(1, 0, 4, 2, budget_s=0.0))
    assert long.measure(torch.nn.Identity(), (1, 2)).n == 2  # budget spent: stop at min_repeats
    assert profiler.protocol.sessions == 3  # the original is unchanged
    with pytest.raises(ValueError):
        MeasurementProtocol(repeats=2, min_repeats=3)


def test_median_of_session_medians_and_pooled_iqr() -> None:
    m = Measurement.from_sessions([[1.0, 2.0, 3.0], [10.0, 10.0, 10.0], [2.0, 2.0, 2.0]])
    assert m.session_medians_ms == (2.0, 10.0, 2.0)
    assert m.median_ms == 2.0 and m.n == 9
    assert m.iqr_ms == pytest.approx(8.0)
    with pytest.raises(ValueError):
        Measurement.from_sessions([[1.0], []])


def test_torch_profiler_rejects_onnx_and_restores_threads(small_blocks) -> None:
    before = torch.get_num_threads()
    TorchProfiler(threads=1, protocol=QUICK).measure(small_blocks[0])
    assert torch.get_num_threads() == before
    with pytest.raises(NasvitError, match="not ONNX"):
        TorchProfiler(protocol=QUICK).measure(b"onnx", (1, 3))


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU path")
def test_cuda_profilers_say_clearly_that_there_is_no_gpu() -> None:
    with pytest.raises(ProfilerUnavailableError, match="no CUDA GPU"):
        CudaProfiler()
    with pytest.raises(ProfilerUnavailableError, match="CUDAExecutionProvider"):
        make_profiler("onnxruntime-cuda")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_profiler_measures_on_the_gpu(small_blocks) -> None:
    profiler = CudaProfiler(protocol=QUICK)
    _sane(profiler.measure(small_blocks[0]))
    assert profiler.settings.accelerator


def test_bad_profiler_settings_are_user_errors() -> None:
    with pytest.raises(UnknownNameError, match="runtime"):
        make_profiler("tflite")
    with pytest.raises(UnknownNameError, match="did you mean 'basic'"):
        make_profiler("onnxruntime", optimization="basci")
    with pytest.raises(NasvitError, match="threads"):
        make_profiler("onnxruntime", threads=0)


def test_weight_bytes_are_those_of_the_exported_model() -> None:
    """A MobileDets conv on a 1x1 map runs (and exports) only the centre tap of its 5x5 kernel:
    the weight bytes a table stores, the cache model's input, must count what the runtime
    holds, not the module's parameters."""
    from nasvit.latency_db.profilers import onnx_weight_bytes
    from nasvit.nn.mobile import FusedInvertedBottleneck

    block = FusedInvertedBottleneck(64, 64, kernel=5, expansion=4, residual=True).eval()
    kernel = 64 * 256 * 5 * 5 * 4  # the expanding conv's parameter, in bytes
    parameters = sum(p.numel() * p.element_size() for p in block.parameters())
    profiler = OnnxRuntimeProfiler(protocol=QUICK)
    on_a_dot, on_a_map = (profiler.prepare(block, (1, 64, n, n)) for n in (1, 8))
    # The 8x8 map keeps every tap; batch norms fold into the convolutions' biases.
    assert on_a_map.weight_bytes == pytest.approx(parameters, rel=0.01)
    assert on_a_dot.weight_bytes == pytest.approx(parameters - kernel * 24 / 25, rel=0.01)
    assert onnx_weight_bytes(on_a_dot.model) == on_a_dot.weight_bytes
    assert profiler.prepare(on_a_dot.model, (1, 64, 1, 1)).weight_bytes == on_a_dot.weight_bytes

"""Latency database (imported as ``nasvit.latency_db``): profilers, device fingerprints, the SQL
store, the table builder and the predictor.

It knows architectures only as lists of :class:`~nasvit.nn.blocks.BlockSpec`; the glue to search
spaces lives in :mod:`nasvit.evaluation.latency`.
"""

from nasvit.agent.hardware import CacheFlusher, last_level_cache_bytes
from nasvit.agent.measurement import Measurement, MeasurementProtocol
from nasvit.latency_db.builder import BuildReport, ProgressCallback, build_table
from nasvit.latency_db.cache import CacheModel
from nasvit.latency_db.device import DeviceFingerprint
from nasvit.latency_db.error_model import (
    ErrorModel,
    ValidationSample,
    band_edges,
    error_stats,
    fit_error_model,
    truth_noise_ceiling,
)
from nasvit.latency_db.profilers import (
    RUNTIMES,
    CudaOnnxRuntimeProfiler,
    CudaProfiler,
    OnnxRuntimeProfiler,
    Profiler,
    ProfilerUnavailableError,
    RuntimeSettings,
    TorchProfiler,
    make_profiler,
    with_protocol,
)
from nasvit.latency_db.records import (
    DeviceRecord,
    EntryRecord,
    ErrorStats,
    NewEntry,
    ValidationRecord,
)
from nasvit.latency_db.store import LatencyStore
from nasvit.latency_db.table import (
    NEVER_VALIDATED,
    LatencyTable,
    MissingBlocksError,
    Prediction,
)

__all__ = [
    "NEVER_VALIDATED",
    "RUNTIMES",
    "BuildReport",
    "CacheFlusher",
    "CacheModel",
    "CudaOnnxRuntimeProfiler",
    "CudaProfiler",
    "DeviceFingerprint",
    "DeviceRecord",
    "EntryRecord",
    "ErrorModel",
    "ErrorStats",
    "LatencyStore",
    "LatencyTable",
    "Measurement",
    "MeasurementProtocol",
    "MissingBlocksError",
    "NewEntry",
    "OnnxRuntimeProfiler",
    "Prediction",
    "Profiler",
    "ProfilerUnavailableError",
    "ProgressCallback",
    "RuntimeSettings",
    "TorchProfiler",
    "ValidationRecord",
    "ValidationSample",
    "band_edges",
    "build_table",
    "error_stats",
    "fit_error_model",
    "truth_noise_ceiling",
    "last_level_cache_bytes",
    "make_profiler",
    "with_protocol",
]

from nasvit.latency_db.work import (
    BlockModel,
    CompleteResult,
    Lease,
    LeaseError,
    NetworkJob,
    WorkItem,
    WorkQueue,
    WorkResultError,
)

__all__ += [
    "BlockModel",
    "CompleteResult",
    "Lease",
    "LeaseError",
    "NetworkJob",
    "WorkItem",
    "WorkQueue",
    "WorkResultError",
]

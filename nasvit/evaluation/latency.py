"""Glue between search spaces and the latency database.

``nasvit.latency_db`` knows blocks only (it must not import a space); this module enumerates a
space's blocks for the table builder and measures whole subnets of a space to validate a table.

Example:
    >>> from nasvit.latency_db import LatencyStore  # doctest: +SKIP
    >>> store = LatencyStore.open()
    >>> device, profiler = resolve_device(store)
    >>> build_space_table(get_space("efficientformer"), store, profiler, device, [32])
    >>> validate_table(get_space("efficientformer"), store, profiler, device, n=20)
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import numpy as np

from nasvit.errors import DeviceNotLocalError, NasvitError
from nasvit.latency_db import (
    BuildReport,
    CacheModel,
    Calibration,
    DeviceFingerprint,
    DeviceRecord,
    LatencyStore,
    LatencyTable,
    MeasurementProtocol,
    Profiler,
    ProgressCallback,
    ValidationRecord,
    build_table,
    error_stats,
    make_profiler,
    noise_ceiling,
    with_protocol,
)
from nasvit.latency_db.table import cache_inputs
from nasvit.nn.blocks import BLOCK_KEY_SCHEMA
from nasvit.search_spaces import get_space
from nasvit.search_spaces.core import SearchSpace

__all__ = ["build_space_table", "resolve_device", "sample_archs", "validate_table"]


def resolve_device(
    store: LatencyStore,
    device: str | None = None,
    runtime: str = "onnxruntime",
    threads: int = 1,
    optimization: str = "all",
    batch: int = 1,
    protocol: MeasurementProtocol | None = None,
) -> tuple[DeviceRecord, Profiler]:
    """The device to measure on and a profiler configured for it.

    Without ``device``, the local device for the given runtime settings (created if new). With
    a ``device`` name that exists, its stored settings win over the arguments, and it must be
    this machine (an imported table can be searched with, not re-measured here). A new name
    names the local device for the given settings.

    Raises:
        DeviceNotLocalError: the named device was measured on another machine or runtime
            version.
    """
    if device is not None:
        known = {d.name: d for d in store.devices()} | {d.id: d for d in store.devices()}
        if device in known:
            record = known[device]
            fp = record.fingerprint
            profiler = make_profiler(fp.runtime, fp.threads, fp.optimization, protocol)
            local = DeviceFingerprint.local(profiler.settings, fp.batch)
            if local.device_id != record.id:
                differs = [
                    f"{name}={value!r} (here {local.to_dict()[name]!r})"
                    for name, value in fp.to_dict().items()
                    if local.to_dict()[name] != value
                ]
                raise DeviceNotLocalError(record.name, differs)
            return record, profiler
    profiler = make_profiler(runtime, threads, optimization, protocol)
    fingerprint = DeviceFingerprint.local(profiler.settings, batch)
    return store.ensure_device(fingerprint, name=device), profiler


def build_space_table(
    space: SearchSpace,
    store: LatencyStore,
    profiler: Profiler,
    device: DeviceRecord,
    resolutions: Sequence[int] | None = None,
    *,
    batch_size: int = 32,
    seed: int = 0,
    progress: ProgressCallback | None = None,
    num_classes: int = 1000,
    in_channels: int = 3,
) -> BuildReport:
    """Measure every block reachable in ``space`` (at ``resolutions``) that ``device`` lacks.

    ``num_classes`` and ``in_channels`` size the networks' head and input (a search profiles
    its supernet's: e.g. 10 classes and 1 channel for digits)."""
    blocks = space.enumerate_blocks(
        resolutions,
        batch=device.fingerprint.batch,
        num_classes=num_classes,
        in_channels=in_channels,
    )
    return build_table(
        store, profiler, device, blocks, batch_size=batch_size, seed=seed, progress=progress
    )


def sample_archs(
    space: SearchSpace, n: int, seed: int, resolutions: Sequence[int] | None = None
) -> list[Any]:
    """``n`` distinct random architectures (seeded), optionally restricted to resolutions."""
    rng = np.random.default_rng(seed)
    archs: dict[str, Any] = {}
    attempts = 0
    while len(archs) < n:
        attempts += 1
        if attempts > 100 * n:
            raise NasvitError(f"could not sample {n} distinct architectures from {space.name}")
        arch = space.sample(rng)
        if resolutions is not None:
            side = int(rng.choice(list(resolutions)))
            arch = space.validate({**dict(arch), "resolution": side})
        archs.setdefault(space.short_string(arch), arch)
    return list(archs.values())


def validate_table(
    space: SearchSpace | str,
    store: LatencyStore,
    profiler: Profiler,
    device: DeviceRecord,
    n: int,
    *,
    seed: int = 0,
    resolutions: Sequence[int] | None = None,
    fit_fraction: float = 0.5,
    network_protocol: MeasurementProtocol | None = None,
    measure_missing: bool = True,
    progress: ProgressCallback | None = None,
    num_classes: int = 1000,
    in_channels: int = 3,
    repeat: int = 0,
) -> ValidationRecord:
    """Compare table predictions with whole-network measurements and store the run.

    Samples ``n`` architectures, measures each whole subnet (exported as one ONNX model for
    onnxruntime), and reports raw figures over all of them. With ``n >= 4``, a linear
    calibration is fitted on the first ``fit_fraction`` of the networks and raw and calibrated
    figures are reported on the held-out rest; a calibration that beats the raw sum there is
    used by later predictions of this table.

    Args:
        measure_missing: measure blocks the table lacks first (else MissingBlocksError).
        repeat: measure this many of the networks a second time, the second readings shuffled
            in among the others, and store the run's noise ceiling (what a perfect predictor
            would score against one reading, :func:`~nasvit.latency_db.table.noise_ceiling`).
            Interleaved, so both readings see the same hour of a machine whose noise changes
            by the hour. The first reading is the one validated against.
        num_classes: classes of the networks' head (a search validates the networks it
            searches: e.g. 10 for digits).
        in_channels: channels of the networks' input (e.g. 1 for digits).
    """
    if isinstance(space, str):
        space = get_space(space)
    if n < 1:
        raise NasvitError(f"n must be at least 1, got {n}")
    archs = sample_archs(space, n, seed, resolutions)
    batch = device.fingerprint.batch
    shape_args = {"num_classes": num_classes, "in_channels": in_channels}
    lowered = [space.lower(arch, batch=batch, **shape_args) for arch in archs]
    if measure_missing:
        build_table(store, profiler, device, [b for blocks in lowered for b in blocks], seed=seed)
    table = LatencyTable.load(store, device.id)
    predicted = [table.predict(blocks, calibrated=False).raw_ms for blocks in lowered]
    cache = [cache_inputs([table.entries[b.key] for b in blocks], blocks) for blocks in lowered]

    network_profiler = with_protocol(profiler, network_protocol or MeasurementProtocol.network())
    repeat = min(max(repeat, 0), len(archs))
    readings: list[list[float]] = [[] for _ in archs]
    # Shuffled: the machine drifts over minutes (mobiledets' held-out networks, measured after
    # the fitted ones, came out 4-9% slower than the model in the middle of one run), and a
    # drift must not line up with the fit / held-out split.
    schedule = [*range(len(archs)), *range(repeat)]
    order = np.random.default_rng(seed).permutation(len(schedule))
    for done, position in enumerate(order, start=1):
        index = schedule[position]
        arch = archs[index]
        subnet = space.build_subnet(arch, **shape_args)
        shape = space.input_shape(arch, batch=batch, in_channels=in_channels)
        readings[index].append(network_profiler.measure(subnet, shape).median_ms)
        if progress:
            progress(done, len(schedule))
    measured = [network[0] for network in readings]

    record = _summarise(
        space.identity, archs, space, predicted, measured, fit_fraction,
        cache, device.fingerprint.cache_bytes, table.overhead_ms,
        remeasured=[network[1] for network in readings[:repeat]],
    )  # fmt: skip
    store.add_validation(device.id, record)
    stored = store.latest_validation(device.id)
    assert stored is not None  # just written
    return stored


def _summarise(
    space_name: str,
    archs: Sequence[Any],
    space: SearchSpace,
    predicted: Sequence[float],
    measured: Sequence[float],
    fit_fraction: float,
    cache: Sequence[tuple[list[float], list[float], list[float], float]] = (),
    cache_bytes: int = 0,
    overhead_ms: float = 0.0,
    remeasured: Sequence[float] = (),
) -> ValidationRecord:
    """The run's figures; ``remeasured`` holds second readings of the first networks."""
    n = len(predicted)
    n_fit = int(round(n * fit_fraction)) if n >= 4 else 0
    n_fit = min(max(n_fit, 2), n - 2) if n_fit else 0
    slope = intercept = None
    raw_test = calibrated_test = None
    if n_fit:
        try:
            calibration = Calibration.fit(predicted[:n_fit], measured[:n_fit])
        except ValueError:
            n_fit = 0
        else:
            slope, intercept = calibration.slope, calibration.intercept
            test_pred, test_meas = predicted[n_fit:], measured[n_fit:]
            raw_test = error_stats(test_pred, test_meas)
            calibrated_test = error_stats([calibration.apply(p) for p in test_pred], test_meas)
    cache_model = cache_test = None
    if n_fit >= 3 and cache and cache_bytes > 0:
        model = CacheModel.fit(cache_bytes, cache[:n_fit], measured[:n_fit], overhead_ms)
        cache_model = model.to_dict()
        cache_pred = [model.network_ms(*inputs) for inputs in cache]
        cache_test = error_stats(cache_pred[n_fit:], measured[n_fit:])
    details: dict[str, Any] = {
        "networks": [
            {"arch": space.short_string(a), "predicted_ms": p, "measured_ms": m}
            for a, p, m in zip(archs, predicted, measured, strict=True)
        ]
    }
    if cache_model is not None:
        for network, value in zip(details["networks"], cache_pred, strict=True):
            network["cache_aware_ms"] = value
    if remeasured:
        for network, value in zip(details["networks"], remeasured, strict=False):
            network["remeasured_ms"] = value
        ceiling = noise_ceiling(measured[: len(remeasured)], remeasured)
        details["noise_ceiling"] = dataclasses.asdict(ceiling)
    return ValidationRecord(
        space=space_name,
        key_schema=BLOCK_KEY_SCHEMA,
        raw=error_stats(predicted, measured),
        slope=slope,
        intercept=intercept,
        n_fit=n_fit,
        raw_test=raw_test,
        calibrated_test=calibrated_test,
        details=details,
        cache_model=cache_model,
        cache_test=cache_test,
    )

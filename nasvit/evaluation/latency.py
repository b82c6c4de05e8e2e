"""Glue between search spaces and the latency database.

``nasvit.latency_db`` knows blocks only (it must not import a space); this module enumerates a
space's blocks for the table builder and measures whole subnets of a space to validate a table.

Example:
    >>> from nasvit.latency_db import LatencyStore  # doctest: +SKIP
    >>> store = LatencyStore.open()
    >>> device, profiler = resolve_device(store)
    >>> build_space_table(get_space("efficientformer"), store, profiler, device, [32])
    >>> validate_table(get_space("efficientformer"), store, profiler, device, n=40)
"""

from __future__ import annotations

import dataclasses
from collections.abc import Collection, Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from nasvit.errors import DeviceNotLocalError, NasvitError, UnknownNameError
from nasvit.latency_db import (
    BuildReport,
    DeviceFingerprint,
    DeviceRecord,
    ErrorStats,
    LatencyStore,
    LatencyTable,
    MeasurementProtocol,
    Profiler,
    ProgressCallback,
    ValidationRecord,
    build_table,
    error_stats,
    make_profiler,
)
from nasvit.latency_db.builder import DEFAULT_BATCH_SIZE
from nasvit.latency_db.error_model import (
    DEFAULT_BANDS,
    ErrorModel,
    ValidationSample,
    band_edges,
    band_of,
    fit_error_model,
    truth_noise_ceiling,
)
from nasvit.latency_db.readings import NetworkModel, NetworkReader, Readings, as_reader
from nasvit.latency_db.remote import AgentMeasurer
from nasvit.nn.blocks import BLOCK_KEY_SCHEMA, BlockSpec
from nasvit.search_spaces import Architecture, ArchitectureError, get_space
from nasvit.search_spaces.core import SearchSpace
from nasvit.settings import Settings, load_settings

__all__ = [
    "SelectedArch",
    "build_space_table",
    "fill_table",
    "measure_readings",
    "resolve_device",
    "resolve_measurer",
    "select_validation_archs",
    "validate_table",
]


def _stored_device(store: LatencyStore, name_or_id: str) -> DeviceRecord | None:
    """The stored device with that name or id, or None (a new name)."""
    try:
        return store.device(name_or_id)
    except UnknownNameError:
        return None


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
    record = None if device is None else _stored_device(store, device)
    if record is not None:
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


#: What measures for a device: a profiler on this machine, or the device's agents.
Measurer = Profiler | AgentMeasurer


def resolve_measurer(
    store: LatencyStore,
    device: str | None = None,
    runtime: str = "onnxruntime",
    threads: int = 1,
    optimization: str = "all",
    *,
    settings: Settings | None = None,
    space: str | None = None,
) -> tuple[DeviceRecord, Measurer]:
    """The device to measure on and what measures it: the device's agents when an agent
    registered it (``nasvit agent``), else a profiler here (:func:`resolve_device`, whose
    rules and errors apply). ``settings`` gives the time a device's agents may stay silent;
    ``space`` names who asks, for the device's coverage view."""
    record = None if device is None else _stored_device(store, device)
    if record is not None and record.agent_managed:
        timeout = load_settings(settings).device_timeout_seconds
        return record, AgentMeasurer(store, record, timeout_s=timeout, space=space)
    return resolve_device(store, device, runtime, threads, optimization)


def build_space_table(
    space: SearchSpace,
    store: LatencyStore,
    profiler: Measurer,
    device: DeviceRecord,
    resolutions: Sequence[int] | None = None,
    *,
    batch_size: int = DEFAULT_BATCH_SIZE,
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
    return fill_table(
        store, profiler, device, blocks, batch_size=batch_size, seed=seed, progress=progress
    )


def fill_table(
    store: LatencyStore,
    measurer: Measurer,
    device: DeviceRecord,
    blocks: Sequence[BlockSpec],
    *,
    batch_size: int = DEFAULT_BATCH_SIZE,
    seed: int = 0,
    progress: ProgressCallback | None = None,
) -> BuildReport:
    """Measure the blocks the device's table lacks: here with a profiler
    (:func:`~nasvit.latency_db.build_table`), or by the device's agents, waiting for them
    (:meth:`~nasvit.latency_db.remote.AgentMeasurer.fill`, which queues a builder's batch at a
    time)."""
    if isinstance(measurer, AgentMeasurer):
        return measurer.fill(blocks, seed=seed, progress=progress)
    return build_table(
        store, measurer, device, blocks, batch_size=batch_size, seed=seed, progress=progress
    )


# ---------------------------------------------------------------------- validation networks
#: Fit networks a validation always has: the residency model is fitted on them.
MIN_FIT_NETWORKS = 3


@dataclass(frozen=True)
class SelectedArch:
    """A network chosen for validation.

    Attributes:
        arch: the architecture.
        origin: ``"stratified"`` (drawn from a band), ``"smallest"``, ``"largest"`` or
            ``"reference:<name>"`` (a published model of the space).
        sum_ms: the table's sum model for it (what the bands are cut on).
        band: its band over the candidates' sum-model range (0 = fastest).
    """

    arch: Architecture
    origin: str
    sum_ms: float
    band: int


def _at_resolution(space: SearchSpace, arch: Architecture, side: int | None) -> Architecture | None:
    """``arch`` at input resolution ``side`` (None: unchanged); None if the space refuses it."""
    if side is None:
        return arch
    try:
        return space.validate({**dict(arch), "resolution": side})
    except ArchitectureError:
        return None


def _fixed_archs(
    space: SearchSpace, resolutions: Sequence[int] | None, exclude: Collection[str] = ()
) -> list[tuple[str, Architecture]]:
    """(origin, arch) of the networks every validation includes: the space's extremes and its
    reference architectures, without repeats or excluded short strings.

    With ``resolutions``, the smallest network is taken at the lowest of them and the largest at
    the highest (the extremes of what is validated), and references at other resolutions are
    left out."""
    low = min(resolutions) if resolutions else None
    high = max(resolutions) if resolutions else None
    candidates: list[tuple[str, Architecture | None]] = [
        ("smallest", _at_resolution(space, space.smallest(), low)),
        ("largest", _at_resolution(space, space.largest(), high)),
    ]
    for name, reference in space.reference_archs().items():
        if resolutions is None or reference.get("resolution") in resolutions:
            candidates.append((f"reference:{name}", reference))
    fixed: dict[str, tuple[str, Architecture]] = {}
    for origin, arch in candidates:
        if arch is not None and space.short_string(arch) not in exclude:
            fixed.setdefault(space.short_string(arch), (origin, arch))
    return list(fixed.values())


def _random_pool(
    space: SearchSpace, n: int, seed: int, resolutions: Sequence[int] | None
) -> dict[str, Architecture]:
    """Distinct random architectures by short string (seeded), from ``max(20 n, 400)`` draws:
    enough to see the whole latency range of the space; a small space gives fewer."""
    rng = np.random.default_rng(seed)
    pool: dict[str, Architecture] = {}
    for _ in range(max(20 * n, 400)):
        arch = space.sample(rng)
        if resolutions is not None:
            side = int(rng.choice(list(resolutions)))
            arch = space.validate({**dict(arch), "resolution": side})
        pool.setdefault(space.short_string(arch), arch)
    return pool


def _equal_quotas(available: Sequence[int], total: int) -> list[int]:
    """``total`` picks spread as equally as possible over bands with ``available`` members:
    a band with too few members gives its share to the others."""
    quotas = [0] * len(available)
    remaining = min(total, sum(available))
    open_bands = [b for b, count in enumerate(available) if count > 0]
    while remaining > 0 and open_bands:
        share = max(remaining // len(open_bands), 1)
        for band in list(open_bands):
            take = min(share, available[band] - quotas[band], remaining)
            quotas[band] += take
            remaining -= take
            if quotas[band] == available[band]:
                open_bands.remove(band)
            if remaining == 0:
                break
    return quotas


def select_validation_archs(
    space: SearchSpace,
    table: LatencyTable,
    n: int,
    *,
    seed: int = 0,
    resolutions: Sequence[int] | None = None,
    num_classes: int = 1000,
    in_channels: int = 3,
    bands: int = DEFAULT_BANDS,
    exclude: Collection[str] = (),
) -> list[SelectedArch]:
    """Networks that cover the space's latency range: its smallest and largest networks, its
    reference architectures, and ``n`` minus those drawn stratified over log-uniform bands of
    the table's sum model (equally many per band as far as the bands hold networks).

    Why stratified: random networks crowd the middle of the range, and a model judged on them
    can be grossly wrong at the ends unnoticed (a smallest subnet predicted at 28 us, measured
    at 130 us). The bands are cut over a seeded pool of random networks plus the fixed ones.

    Args:
        table: the table whose sum model places the networks (it must hold their blocks).
        n: networks wanted in all; the fixed ones are included even when they are more.
        resolutions: only networks at these input resolutions.
        exclude: short strings never to pick (e.g. the networks a model was fitted on).

    Returns:
        The fixed networks first, then the stratified ones by band and sum model.

    Raises:
        MissingBlocksError: the table lacks blocks of some candidate network.
    """
    if n < 1:
        raise NasvitError(f"n must be at least 1, got {n}", argument="n")
    batch = table.device.fingerprint.batch
    fixed = _fixed_archs(space, resolutions, exclude)
    taken = {space.short_string(arch) for _, arch in fixed} | set(exclude)
    pool = [
        a for short, a in _random_pool(space, n, seed, resolutions).items() if short not in taken
    ]
    archs = [arch for _, arch in fixed] + pool
    if not archs:  # everything the space holds was excluded
        return []
    lowered = [space.lower(a, batch=batch, num_classes=num_classes, in_channels=in_channels)
               for a in archs]  # fmt: skip
    sums = [float(ms) for ms in table.sum_many(lowered)]
    edges = band_edges(sums, bands)
    band = [int(b) for b in band_of(edges, sums)]
    chosen = [
        SelectedArch(arch, origin, sums[i], band[i]) for i, (origin, arch) in enumerate(fixed)
    ]

    members: list[list[int]] = [[] for _ in range(len(edges) - 1)]
    for i in range(len(fixed), len(archs)):
        members[band[i]].append(i)
    quotas = _equal_quotas([len(m) for m in members], n - len(fixed))
    rng = np.random.default_rng([seed, 1])  # not the pool's stream: the pool stays the same
    stratified = [
        int(i)
        for in_band, quota in zip(members, quotas, strict=True)
        for i in rng.choice(in_band, size=quota, replace=False)
    ]
    stratified.sort(key=lambda i: (band[i], sums[i]))
    chosen += [SelectedArch(archs[i], "stratified", sums[i], band[i]) for i in stratified]
    return chosen


def measure_readings(
    space: SearchSpace,
    measurer: Profiler | NetworkReader,
    archs: Sequence[Architecture],
    readings: int = 3,
    *,
    seed: int = 0,
    num_classes: int = 1000,
    in_channels: int = 3,
    batch: int = 1,
    protocol: MeasurementProtocol | None = None,
    progress: ProgressCallback | None = None,
) -> list[Readings]:
    """``readings`` fresh-session readings of each whole network, interleaved over the run.

    Each network is exported once; each reading is one new session (``protocol``'s warm-up and
    timed calls, default :meth:`MeasurementProtocol.network`, with one session), on this
    machine with a profiler or on a remote device through its agents (an
    :class:`~nasvit.latency_db.remote.AgentMeasurer`). The readings go in ``readings`` rounds,
    each visiting every network once in a seeded random order
    (:mod:`nasvit.latency_db.readings`).

    Args:
        progress: called with (steps done, steps) over the exports and the readings.

    Returns:
        Per network, in the order of ``archs``: (its readings' medians in the order taken,
        every timed call of those readings).
    """
    if readings < 1:
        raise NasvitError(f"readings must be at least 1, got {readings}", argument="readings")

    def networks() -> Iterator[NetworkModel]:  # built one at a time: large ones are big
        for arch in archs:
            subnet = space.build_subnet(arch, num_classes=num_classes, in_channels=in_channels)
            yield subnet, space.input_shape(arch, batch=batch, in_channels=in_channels)

    return as_reader(measurer).read_networks(
        networks(), len(archs), readings, seed=seed, protocol=protocol, progress=progress
    )


def _split(selected: Sequence[SelectedArch]) -> list[bool]:
    """Whether each network is judged (True) or fitted on (False).

    The fixed networks (extremes, references) are judged: they are where a model extrapolates,
    and they must be seen as a user would see them. The stratified ones, in order of band and
    sum model, alternate fit / judged (the alternation runs on from one band to the next, so a
    band of one network does not always go to the same set): both sets span every band. At
    least :data:`MIN_FIT_NETWORKS` are fitted on when there are that many stratified networks.
    """
    judged = [s.origin != "stratified" for s in selected]
    stratified = sorted(
        (i for i, s in enumerate(selected) if s.origin == "stratified"),
        key=lambda i: (selected[i].band, selected[i].sum_ms),
    )
    for position, i in enumerate(stratified):
        judged[i] = position % 2 == 1
    flippable = [i for i in stratified if judged[i]]
    while judged.count(False) < MIN_FIT_NETWORKS and flippable:
        judged[flippable.pop(0)] = False
    return judged


def validate_table(
    space: SearchSpace | str,
    store: LatencyStore,
    profiler: Measurer,
    device: DeviceRecord,
    n: int,
    *,
    seed: int = 0,
    resolutions: Sequence[int] | None = None,
    readings: int = 3,
    bands: int = DEFAULT_BANDS,
    network_protocol: MeasurementProtocol | None = None,
    measure_missing: bool = True,
    progress: ProgressCallback | None = None,
    num_classes: int = 1000,
    in_channels: int = 3,
) -> ValidationRecord:
    """Measure whole networks, fit the table's error model on some and judge it on the others,
    and store the run: later predictions of the table use the model and its intervals.

    The networks (:func:`select_validation_archs`): the space's smallest and largest, its
    reference architectures, and the rest stratified over bands of the table's sum model. Each
    network's truth is the median of ``readings`` fresh-session readings interleaved over the
    run (:func:`measure_readings`). The fixed networks and every other stratified network, in
    order of band and sum model, are judged (held out); the model is fitted on the others.
    ``n`` is raised to the fixed networks plus :data:`MIN_FIT_NETWORKS` when it is smaller.

    Args:
        readings: fresh-session readings per network (K); their median is the truth, their
            spread gives the run's noise ceiling (what a perfect predictor would score).
        bands: log-uniform latency bands the networks are drawn from and judged in.
        network_protocol: warm-up and timed calls of one reading (its ``sessions`` is ignored:
            one reading is one session).
        measure_missing: first measure the blocks the table lacks for the candidate networks
            (a seeded pool of random ones: in practice most blocks of the space, at
            ``resolutions``); else MissingBlocksError.
        progress: called with (done, total) while blocks are measured, then while networks
            are exported and read.
        num_classes: classes of the networks' head (a search validates the networks it
            searches: e.g. 10 for digits).
        in_channels: channels of the networks' input (e.g. 1 for digits).
    """
    if isinstance(space, str):
        space = get_space(space)
    if n < 1:
        raise NasvitError(f"n must be at least 1, got {n}", argument="n")
    if readings < 1:
        raise NasvitError(f"readings must be at least 1, got {readings}", argument="readings")
    batch = device.fingerprint.batch
    shape_args = {"num_classes": num_classes, "in_channels": in_channels}
    fixed = [arch for _, arch in _fixed_archs(space, resolutions)]
    n = max(n, len(fixed) + MIN_FIT_NETWORKS)
    if measure_missing:
        # The networks select_validation_archs draws from: the fixed ones and the same pool.
        candidates = fixed + list(_random_pool(space, n, seed, resolutions).values())
        blocks = [b for a in candidates for b in space.lower(a, batch=batch, **shape_args)]
        fill_table(store, profiler, device, blocks, seed=seed, progress=progress)
    # The table as measured, without an earlier validation's error model: this run fits a
    # new one, with the device's measured per-call overhead.
    device = store.device(device.id)
    table = LatencyTable(device, store.entries(device.id))
    selected = select_validation_archs(
        space, table, n, seed=seed, resolutions=resolutions, bands=bands,
        num_classes=num_classes, in_channels=in_channels,
    )  # fmt: skip
    judged = _split(selected)
    measured = measure_readings(
        space, profiler, [s.arch for s in selected], readings, seed=seed, batch=batch,
        protocol=network_protocol, progress=progress, **shape_args,
    )  # fmt: skip
    samples = []
    for chosen, is_judged, (medians, calls) in zip(selected, judged, measured, strict=True):
        blocks = space.lower(chosen.arch, batch=batch, **shape_args)
        samples.append(
            ValidationSample(
                arch=space.short_string(chosen.arch),
                inputs=table.inputs(blocks),
                readings_ms=medians,
                calls_ms=calls,
                judged=is_judged,
                origin=chosen.origin,
            )
        )
    error_model = fit_error_model(
        samples, device.fingerprint.cache_bytes, table.overhead_ms, bands=bands
    )
    # What a perfect predictor would score against this truth: from the readings' spread,
    # so only when each network was read more than once.
    ceiling = (
        truth_noise_ceiling([s.readings_ms for s in samples], seed=seed) if readings > 1 else None
    )
    record = _record(space, selected, samples, error_model, ceiling, readings)
    store.add_validation(device.id, record)
    stored = store.latest_validation(device.id)
    assert stored is not None  # just written
    return stored


def _record(
    space: SearchSpace,
    selected: Sequence[SelectedArch],
    samples: Sequence[ValidationSample],
    error_model: ErrorModel,
    ceiling: ErrorStats | None,
    readings: int,
) -> ValidationRecord:
    """The stored run: the sum model over all networks and on the judged ones, the residency
    model on the judged ones, and per network what was predicted and measured."""
    truth = [s.truth_ms for s in samples]
    networks = []
    for chosen, sample in zip(selected, samples, strict=True):
        predicted = error_model.predict(sample.inputs)
        networks.append(
            {
                "arch": sample.arch,
                "origin": sample.origin,
                "role": "judged" if sample.judged else "fit",
                "band": predicted.band,
                "sum_ms": chosen.sum_ms,
                "predicted_ms": predicted.latency_ms,
                "model": predicted.model,
                "low_ms": predicted.low_ms,
                "high_ms": predicted.high_ms,
                "readings_ms": list(sample.readings_ms),
                "truth_ms": sample.truth_ms,
            }
        )
    residency = error_model.residency
    return ValidationRecord(
        space=space.identity,
        key_schema=BLOCK_KEY_SCHEMA,
        raw=error_stats([s.sum_ms for s in selected], truth),
        n_fit=sum(not s.judged for s in samples),
        raw_test=error_model.sum_judged,
        cache_test=error_model.residency_judged,
        cache_model=None if residency is None else residency.to_dict(),
        details={
            "networks": networks,
            "noise_ceiling": None if ceiling is None else dataclasses.asdict(ceiling),
            "readings": readings,
            "error_model": error_model.to_dict(),
        },
    )

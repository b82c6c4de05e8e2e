"""nasvit's Python API: search a space under a latency budget, profile a device, predict a
network's latency. Re-exported by the package: ``nasvit.search``, ``nasvit.profile``,
``nasvit.predict_latency``.

Every function takes ``settings`` (:class:`nasvit.settings.Settings`): where the database and
the default supernets live. Without it, the ``NASVIT_*`` environment is read (default home
``~/.nasvit``). Errors the caller can fix raise :class:`nasvit.errors.NasvitError`.

Example:
    >>> import nasvit
    >>> from nasvit.settings import Settings
    >>> settings = Settings(home="/tmp/nasvit-home")
    >>> nasvit.profile("efficientformer", settings=settings)  # doctest: +SKIP
    >>> result = nasvit.search("efficientformer", "2ms", settings=settings)  # doctest: +SKIP
    >>> result.best.short, result.best_measured_ms  # doctest: +SKIP
    >>> nasvit.predict_latency(result.best.arch, "efficientformer", settings=settings,
    ...                        num_classes=10, in_channels=1).latency_ms  # doctest: +SKIP
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from nasvit.errors import NasvitError
from nasvit.searching.request import DeviceTarget, ProgressHook, SearchRequest, SearchResult
from nasvit.settings import Settings, load_settings

if TYPE_CHECKING:
    from nasvit.latency_db import Prediction
    from nasvit.search_spaces import Architecture, SearchSpace

__all__ = ["ProfileSummary", "predict_latency", "profile", "search"]

# Request fields that search() sets from its own arguments, and the argument to use instead.
_SET_BY_ARGUMENTS = {
    "budget_ms": "budget",
    "checkpoint": "supernet",
    "restrictions": "space (a restricted SearchSpace)",
}


def search(
    space: str | SearchSpace,
    budget: float | str,
    *,
    budget_confidence: float | None = None,
    supernet: str | Path | None = None,
    device: str | None = None,
    devices: Sequence[Mapping[str, Any] | DeviceTarget] | None = None,
    controller: str = "nsga2",
    settings: Settings | None = None,
    out: str | Path | None = None,
    progress: ProgressHook | None = None,
    **options: Any,
) -> SearchResult:
    """Search ``space`` for the most accurate architectures within ``budget`` on ``device``.

    Args:
        space: a space name, or a :class:`~nasvit.search_spaces.SearchSpace`: a restricted
            one (``get_space(name).restrict(...)``) is searched only within its restrictions.
            With ``supernet``, a SearchSpace must be the checkpoint's own space.
        budget: milliseconds, or text with a unit: ``"2ms"``, ``"1500us"``, ``"0.002s"``;
            ``"2ms@p90"`` asks that 90% of single calls finish within 2 ms (percentiles 50, 75,
            90, 95 and 99; also ``budget_percentile=90`` in ``options``).
        budget_confidence: meet the budget at this confidence, strictly between 0 and 1 (e.g.
            0.9): a candidate is feasible only when the upper bound of its prediction's
            interval is within the budget. None judges the prediction itself. Not together
            with a percentile. A confidence or a percentile needs a validated latency table.
        supernet: a supernet checkpoint (``nasvit train``); default the space's default
            supernet, trained once and cached under ``settings.home``.
        device: name or id of a device in the latency database; default this machine's CPU.
            Blocks its table lacks are profiled first.
        devices: search for several devices at once instead of ``device`` (at most 8):
            ``[{"name": "pi", "budget": "20ms"}, {"name": "jetson", "budget": "5ms@p90"}]``
            (a device without a budget takes ``budget``). Accuracy evaluations are shared;
            each device gets its own front, chosen subnet (measured on it) and artifacts in
            ``out/<name>``, and ``out/devices.json`` compares them. The result is the first
            device's, with every device's in ``per_device``.
        controller: ``nsga2``, ``evolution``, ``predictor``, ``tpe``, ``optuna-nsga2`` or
            ``random``.
        settings: where the database and default supernets are (default: the environment).
        out: the output folder; default a fresh folder
            ``<settings.home>/searches/<space>-<date>-<time>-<random>``.
        progress: called with (stage, done, total) while blocks are profiled and candidates
            evaluated.
        **options: further fields of :class:`~nasvit.searching.request.SearchRequest`:
            ``evaluations``, ``seed``, ``workers``, ``data``, ``resume``, ``ray_address``,
            ``batch_size``, ``measure_top``, ``evaluate_extremes``, ``validate_networks``.

    Returns:
        The best architecture, its measured latency, the Pareto front and every trial; the
        artifacts (``best.onnx``, ``report.json``, ...) are in ``out``.

    Raises:
        NasvitError: an unknown space, controller or option, a budget that cannot be read
            (or an unknown percentile), a confidence outside (0, 1), a checkpoint for another
            space, or no architecture within the budget (when none measures within it,
            :class:`~nasvit.errors.NoSubnetFitsError`).

    Example:
        >>> space = get_space("efficientformer").restrict(resolution=[64])  # doctest: +SKIP
        >>> result = nasvit.search(space, "2ms", evaluations=64, seed=1)  # doctest: +SKIP
        >>> [(p.short, p.predicted_ms, p.low_ms, p.high_ms) for p in result.front]  # doctest: +SKIP
        >>> nasvit.search(space, "2ms", budget_confidence=0.9)  # doctest: +SKIP
        >>> nasvit.search(space, "2ms@p90")  # doctest: +SKIP
        >>> both = nasvit.search(space, "2ms", devices=[{"name": "pi", "budget": "20ms"},
        ...                      {"name": "jetson"}])  # doctest: +SKIP
        >>> {name: r.best.short for name, r in both.per_device.items()}  # doctest: +SKIP
    """
    from nasvit.searching.pipeline import run_search

    misplaced = sorted(set(options) & set(_SET_BY_ARGUMENTS))
    if misplaced:
        given = misplaced[0]
        raise NasvitError(f"search() takes {given} as its argument {_SET_BY_ARGUMENTS[given]}")
    settings = load_settings(settings)
    name, restrictions = _space_name(space)
    request = SearchRequest.from_mapping(
        options,
        space=name,
        restrictions=restrictions,
        budget=budget,
        budget_confidence=budget_confidence,
        checkpoint=None if supernet is None else Path(supernet),
        device=device,
        devices=None if devices is None else list(devices),
        controller=controller,
        out=Path(out) if out is not None else _fresh_folder(settings, name),
    )
    return run_search(request, progress, settings=settings)


@dataclass(frozen=True)
class ProfileSummary:
    """What :func:`profile` did.

    Attributes:
        space: the profiled space (its identity: the name, with a digest of restrictions).
        device: the device's name.
        device_id: the device's id (a digest of its fingerprint).
        requested: distinct blocks of the space (at the resolutions asked for).
        already_present: of those, blocks the table had before.
        measured: blocks measured now.
        refreshed: present blocks re-measured (their cold timing was missing or outdated).
        remeasured_batches: batches measured again because the reference block drifted.
        elapsed_s: wall time.
    """

    space: str
    device: str
    device_id: str
    requested: int
    already_present: int
    measured: int
    refreshed: int
    remeasured_batches: int
    elapsed_s: float


def profile(
    space: str | SearchSpace,
    *,
    device: str | None = None,
    settings: Settings | None = None,
    progress: ProgressHook | None = None,
    threads: int = 1,
    resolutions: Sequence[int] | None = None,
    runtime: str = "onnxruntime",
    optimization: str = "all",
    num_classes: int = 1000,
    in_channels: int = 3,
) -> ProfileSummary:
    """Measure every block of ``space`` that the device's latency table lacks (resumable:
    measured blocks are stored as they finish).

    Args:
        space: a space name or a (possibly restricted) SearchSpace.
        device: a device name; default this machine with ``runtime``, ``threads`` and
            ``optimization``. An existing device must be this machine.
        settings: where the database is (default: the environment).
        progress: called with (stage, done, total) as blocks are measured.
        threads: intra-op threads of the runtime.
        resolutions: only these input resolutions (default: all of the space).
        runtime: ``onnxruntime``, ``torch``, ``cuda`` or ``onnxruntime-cuda``.
        optimization: the graph optimisation level (onnxruntime).
        num_classes: the networks' classes (the head's size).
        in_channels: the networks' input channels (the stem's).

    Raises:
        NasvitError: an unknown space or runtime, a resolution outside the space, or a device
            measured on another machine.

    Example:
        >>> nasvit.profile("efficientformer", resolutions=[64]).measured  # doctest: +SKIP
        412
    """
    from nasvit.evaluation.latency import build_space_table, resolve_measurer
    from nasvit.latency_db import LatencyStore
    from nasvit.latency_db.remote import AgentMeasurer

    searched = _as_space(space)
    settings = load_settings(settings)
    store = LatencyStore.open(settings.resolved_database_url)
    try:
        record, measurer = resolve_measurer(
            store,
            device,
            runtime,
            threads,
            optimization,
            settings=settings,
            space=searched.identity,
        )
        # A remote device's blocks are timed by its agents: the stage says who is waited for.
        stage = (
            measurer.waiting("blocks")
            if isinstance(measurer, AgentMeasurer)
            else "profiling blocks"
        )
        report = build_space_table(
            searched,
            store,
            measurer,
            record,
            resolutions,
            progress=None if progress is None else lambda d, t: progress(stage, d, t),
            num_classes=num_classes,
            in_channels=in_channels,
        )
    finally:
        store.close()
    return ProfileSummary(
        space=searched.identity,
        device=record.name,
        device_id=record.id,
        requested=report.requested,
        already_present=report.already_present,
        measured=report.measured,
        refreshed=report.refreshed,
        remeasured_batches=report.remeasured_batches,
        elapsed_s=report.elapsed_s,
    )


def predict_latency(
    arch: Architecture | Mapping[str, Any] | str,
    space: str | SearchSpace,
    device: str | None = None,
    *,
    settings: Settings | None = None,
    num_classes: int = 1000,
    in_channels: int = 3,
    confidence: float | None = None,
) -> Prediction:
    """The latency table's prediction for ``arch`` on ``device``, with its interval and the
    error the table's validation measured in its latency band.

    Args:
        arch: an Architecture, a dict of dimension values, or the short string
            (``r64_w48-96-224-448_...``) or JSON that ``space.parse`` reads.
        space: a space name or a (possibly restricted) SearchSpace.
        device: name or id of a device in the latency database; default this machine's CPU.
        settings: where the database is (default: the environment).
        num_classes: the network's classes. :func:`profile` measures 1000-class heads by
            default; a search profiles its supernet's (10 for the bundled digits).
        in_channels: the network's input channels (3 by default; 1 for digits).
        confidence: the interval's confidence, strictly between 0 and 1 (default 0.9).

    Returns:
        The prediction: ``latency_ms``; ``low_ms`` and ``high_ms``, the interval at
        ``confidence`` from the networks the table's validation judged; ``expected_error``,
        their error in the prediction's latency band; and ``error_text``, the same in words.
        A table that was never validated (``nasvit latency validate``) has no interval:
        ``low_ms``, ``high_ms`` and ``expected_error`` are None and ``error_text`` says
        "never validated" rather than a number.

    Raises:
        NasvitError: an unknown space or device, an architecture outside the space, a
            confidence outside (0, 1), or a table that lacks some of its blocks (the message
            says how to profile them).

    Example:
        >>> nasvit.predict_latency("r64_w48-96-224-448_d3-2-6-4_v1_m4-4-4-4-4-4-4-4-4",
        ...                        "efficientformer").describe()  # doctest: +SKIP
        '1.84 ms (90% interval 1.69-2.05 ms; band MAPE 4.1%)'
    """
    from nasvit.evaluation.latency import resolve_device
    from nasvit.guarantees import check_confidence
    from nasvit.latency_db import LatencyStore, LatencyTable, MissingBlocksError

    if confidence is not None:
        confidence = check_confidence(confidence)
    searched = _as_space(space)
    architecture = _as_architecture(arch, searched)
    blocks = searched.lower(architecture, num_classes=num_classes, in_channels=in_channels)
    store = LatencyStore.open(load_settings(settings).resolved_database_url)
    try:
        # A named device may be another machine's (an imported table): predictions need no
        # profiler. Without a name, this machine's device (what a search or profile measures).
        name = device if device is not None else resolve_device(store)[0].id
        table = LatencyTable.load(store, name, searched.identity)
    finally:
        store.close()
    try:
        return table.predict(blocks, confidence=confidence)
    except MissingBlocksError as exc:
        raise NasvitError(
            f"cannot predict {searched.short_string(architecture)}: the latency table of device "
            f"'{table.device.name}' lacks {len(exc.missing)} of its blocks "
            f"({'; '.join(exc.missing[:3])}{' ...' if len(exc.missing) > 3 else ''}); measure "
            f"them with {_profile_call(searched, table.device.name, num_classes, in_channels)}"
        ) from None


def _profile_call(space: SearchSpace, device: str, num_classes: int, in_channels: int) -> str:
    """The :func:`profile` call that measures what a prediction lacked, as Python to paste."""
    target = repr(space.name)
    if space.restrictions:
        target = f"get_space({target}).restrict(**{space.restrictions!r})"
    shape = (
        ""
        if (num_classes, in_channels) == (1000, 3)
        else (f", num_classes={num_classes}, in_channels={in_channels}")
    )
    return f"nasvit.profile({target}, device={device!r}{shape})"


def _as_space(space: str | SearchSpace) -> SearchSpace:
    from nasvit.search_spaces import SearchSpace, get_space

    if isinstance(space, str):
        return get_space(space)
    if isinstance(space, SearchSpace):
        return space
    raise NasvitError(f"space must be a name or a SearchSpace, got {type(space).__name__}")


def _space_name(space: str | SearchSpace) -> tuple[str, dict[str, Any] | None]:
    """(registered name, restrictions) of a search's space: a name searches the checkpoint's
    (or the default supernet's) space as it is, a SearchSpace exactly its own restrictions."""
    if isinstance(space, str):
        return space, None
    searched = _as_space(space)
    return searched.name, dict(searched.restrictions)


def _as_architecture(
    arch: Architecture | Mapping[str, Any] | str, space: SearchSpace
) -> Architecture:
    # validate() refuses anything that is not a mapping (an ArchitectureError, a NasvitError).
    return space.parse(arch) if isinstance(arch, str) else space.validate(arch)


def _fresh_folder(settings: Settings, space: str) -> Path:
    """``<home>/searches/<space>-<date>-<time>-<random>``: a new folder for every search."""
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    return settings.home / "searches" / f"{space}-{stamp}-{uuid.uuid4().hex[:6]}"

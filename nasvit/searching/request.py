"""What a search is asked to do, and what it gives back.

:class:`SearchRequest` is the one definition of a search's options: their names, defaults,
bounds and help text live on its fields, and :meth:`SearchRequest.validate` holds every check
(known space and controller, positive budget, bounds). The CLI (``nasvit search``) and the
service's request schema build their options from :func:`request_option`, and the CLI, the
service and the Python API all build requests through the constructor or
:meth:`SearchRequest.from_mapping`, so a request that exists is a valid one.

Import-light on purpose: the CLI reads the options before it imports anything heavy.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from nasvit.errors import NasvitError, UnknownNameError
from nasvit.guarantees import BUDGET_PERCENTILES, Guarantee
from nasvit.searching.defaults import DEFAULT_EVALUATIONS, DEFAULT_VALIDATE_NETWORKS

if TYPE_CHECKING:
    from nasvit.search_spaces import SearchSpace

ProgressHook = Callable[[str, int, int], None]  # (stage, done, total)


def progress_message(progress: dict[str, Any]) -> str:
    """A job's progress in words: ``"waiting for device pi: 120/171 blocks"`` for a stage that
    names its unit after a colon, else ``"<stage>: done/total"``."""
    stage, done, total = progress["stage"], progress["done"], progress["total"]
    head, colon, unit = str(stage).rpartition(": ")
    if colon:
        return f"{head}: {done}/{total} {unit}"
    return f"{stage}: {done}/{total}"


_SPEC = "nasvit.option"  # the key of a field's RequestOption in its dataclass metadata

#: The most devices one search targets: each adds a latency table, a search loop and end-to-end
#: measurements, while accuracy evaluations are shared.
MAX_DEVICES = 8
#: A device target's name: it names the device's output folder too, so it holds no path
#: separator and cannot be "." or ".." (the service states the same pattern).
DEVICE_TARGET_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,199}$"
#: ``workers`` that means one evaluation actor per available core (or cluster CPU).
WORKERS_AUTO = "auto"
MAX_WORKERS = 256
#: A Ray cluster's GCS address: HOST:PORT (a name, IPv4 or bracketed IPv6 host), or ``auto``.
RAY_ADDRESS_PATTERN = r"^(auto|(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9][A-Za-z0-9.-]*):[0-9]{1,5})$"
#: The file a multi-device search writes next to the devices' folders.
DEVICES_FILE = "devices.json"


@dataclass(frozen=True)
class DeviceTarget:
    """One device of a multi-device search and its budget.

    Attributes:
        name: name or id of a device in the latency database (a new name names this machine,
            as ``device`` does); also the name of its output folder.
        budget_ms: the device's latency budget.
        budget_percentile: the percentile its budget holds at (``"5ms@p90"``); None holds it
            as the request's own budget does (the request's percentile, confidence or neither).
    """

    name: str
    budget_ms: float
    budget_percentile: int | None = None

    @classmethod
    def parse(cls, value: Any, default_budget_ms: float) -> DeviceTarget:
        """A target from ``{"name": ..., "budget": ...}`` (budget text such as ``"5ms"`` or
        ``"5ms@p90"``, or milliseconds; absent: ``default_budget_ms``), or a DeviceTarget."""
        from nasvit.searching.budget import parse_budget_spec

        if isinstance(value, DeviceTarget):
            return value
        if not isinstance(value, Mapping):
            raise NasvitError(
                f"each of devices must be {{'name': ..., 'budget': ...}}, got {value!r}",
                argument="devices",
            )
        unknown = sorted(set(value) - {"name", "budget"})
        if unknown:
            raise UnknownNameError("device target field", unknown[0], ("name", "budget"))
        name = value.get("name")
        if not isinstance(name, str):
            raise NasvitError(f"each of devices needs a name, got {value!r}", argument="devices")
        budget = value.get("budget")
        if budget is None:
            return cls(name, default_budget_ms)
        if isinstance(budget, str):
            budget_ms, percentile = parse_budget_spec(budget)
            return cls(name, budget_ms, percentile)
        return cls(name, budget)


@dataclass(frozen=True)
class RequestOption:
    """One option of a search request as users see it (CLI flags, the service's JSON fields).

    Attributes:
        name: the :class:`SearchRequest` field.
        help: one line for ``--help`` and the API schema's description.
        default: the default value (None also for required options; see ``required``).
        required: the option has no default.
        ge: smallest allowed value of an integer option (None: unbounded).
        le: largest allowed value of an integer option (None: unbounded).
        gt: a number option must be above this (None: unbounded); checked by :meth:`validate`.
        lt: a number option must be below this (None: unbounded); checked by :meth:`validate`.
        choices: the only values the option may take besides None (None: any).
    """

    name: str
    help: str
    default: Any = None
    required: bool = False
    ge: int | None = None
    le: int | None = None
    gt: float | None = None
    lt: float | None = None
    choices: tuple[Any, ...] | None = None


def _option(
    help: str,
    default: Any,
    *,
    ge: int | None = None,
    le: int | None = None,
    gt: float | None = None,
    lt: float | None = None,
    choices: tuple[Any, ...] | None = None,
) -> Any:
    spec = RequestOption("", help, default, False, ge, le, gt, lt, choices)
    return field(default=default, metadata={_SPEC: spec})


def _required(help: str) -> Any:
    return field(metadata={_SPEC: RequestOption("", help, required=True)})


@dataclass(frozen=True)
class SearchRequest:
    """Everything a search needs; defaults give the README's main job.

    Constructing one checks it (:meth:`validate`): a bad value raises
    :class:`~nasvit.errors.NasvitError` naming the option.
    """

    space: str = _required("Search space name.")
    budget_ms: float = _required("Latency budget: 2ms, 1500us, 0.002s; 2ms@p90 for a percentile.")
    # The bounds and choices below are what check_confidence and check_percentile
    # (nasvit.guarantees) accept; they are stated here for the CLI and the service's schema.
    budget_confidence: float | None = _option(
        "Meet the budget at this confidence (between 0 and 1, e.g. 0.9): the prediction's "
        "upper bound must fit.",
        None,
        gt=0.0,
        lt=1.0,
    )
    budget_percentile: int | None = _option(
        "Meet the budget at this percentile of single calls (50, 75, 90, 95 or 99); the "
        "budget's text may say it instead: 2ms@p90.",
        None,
        choices=BUDGET_PERCENTILES,
    )
    device: str | None = _option(
        "Name or id of a device in the latency database (default: this machine's CPU).", None
    )
    # Not together with ``device``: a search of several devices shares its accuracy
    # evaluations and gives each device its own front, chosen subnet and output folder.
    devices: tuple[DeviceTarget, ...] = _option(
        f"Search for several devices at once (at most {MAX_DEVICES}): each gets its own front "
        "and chosen subnet, measured there; accuracy evaluations are shared. A device without "
        "a budget takes the search's.",
        (),
    )
    controller: str = _option(
        "nsga2 | evolution | predictor | tpe | optuna-nsga2 | random", "nsga2"
    )
    evaluations: int = _option("Candidates to evaluate.", DEFAULT_EVALUATIONS, ge=1)
    batch_size: int = _option("Candidates proposed and evaluated together.", 16, ge=1)
    workers: int | str = _option(
        "Evaluation workers: auto (one Ray actor per available core, or per CPU of the cluster "
        "named by ray_address; in this process on a 1-core machine) or a number (1: in this "
        "process).",
        WORKERS_AUTO,
        ge=1,
        le=MAX_WORKERS,
    )
    seed: int = _option("Seed of the controller.", 0, ge=0, le=2**31 - 1)
    checkpoint: Path | None = _option("Supernet checkpoint (default: trained once).", None)
    data: str = _option("digits, or a dataset path matching the checkpoint.", "digits")
    out: Path = _option("Output folder.", Path("nasvit-search"))
    resume: bool = _option("Continue the search in the output folder.", False)
    ray_address: str | None = _option(
        "Evaluate on a running Ray cluster: its head's GCS address HOST:PORT (ray start --head "
        "prints it; port 6379 by default), or auto for the cluster this machine belongs to.",
        None,
    )
    measure_top: int = _option("Pareto points exported and measured end to end.", 6, ge=1)
    evaluate_extremes: bool = _option(
        "Evaluate the space's largest and smallest subnets first (fresh searches only).", True
    )
    validate_networks: int = _option(
        "Whole networks measured to validate a table never validated on this space (0: skip).",
        DEFAULT_VALIDATE_NETWORKS,
        ge=0,
        le=1000,
    )
    # Arguments of SearchSpace.restrict: search only this part of the space. None searches the
    # checkpoint's space as it is; a mapping (even an empty one) must match a checkpoint's.
    restrictions: Mapping[str, Any] | None = _option(
        "Search only this part of the space (arguments of SearchSpace.restrict).", None
    )

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Check every option.

        Raises:
            NasvitError: unknown space or controller, restrictions the space refuses, a budget
                that is not a positive number, a confidence outside (0, 1), a percentile not
                in :data:`~nasvit.guarantees.BUDGET_PERCENTILES`, both of these, or a number
                out of its bounds.
        """
        from nasvit.searching.controllers import CONTROLLERS

        self.search_space()  # an unknown space or bad restrictions raise here
        if not _is_number(self.budget_ms) or not math.isfinite(self.budget_ms):
            raise NasvitError(
                f"latency budget must be a number of milliseconds, got {self.budget_ms!r}"
            )
        if self.budget_ms <= 0:
            raise NasvitError(f"latency budget must be positive, got {self.budget_ms} ms")
        self._check_guarantee()
        if self.controller not in CONTROLLERS:
            raise UnknownNameError("controller", self.controller, CONTROLLERS)
        if self.device is not None and (not isinstance(self.device, str) or not self.device):
            raise NasvitError(f"device must be a name or an id, got {self.device!r}")
        self._check_devices()
        check_ray_address(self.ray_address)
        for option in request_options():
            if option.name == "workers" and self.workers == WORKERS_AUTO:
                continue
            if option.ge is not None or option.le is not None:
                _check_bounds(option, getattr(self, option.name))

    @property
    def guarantee(self) -> Guarantee:
        """How the budget must hold (see :mod:`nasvit.guarantees`)."""
        return Guarantee(self.budget_confidence, self.budget_percentile)

    def _check_guarantee(self) -> None:
        # Guarantee holds the checks; its errors name the guarantee's own fields, so they are
        # re-raised naming this request's options (the CLI words those as its flags).
        try:
            Guarantee(self.budget_confidence, self.budget_percentile)
        except NasvitError as exc:
            option = "budget_percentile" if exc.argument == "budget" else "budget_confidence"
            raise NasvitError(str(exc), argument=option) from None

    def _check_devices(self) -> None:
        targets = self.devices
        if not isinstance(targets, tuple) or not all(isinstance(t, DeviceTarget) for t in targets):
            raise NasvitError("devices must be a tuple of DeviceTarget", argument="devices")
        if not targets:
            return
        if self.device is not None:
            raise NasvitError(
                "device and devices together: name one device or several, not both",
                argument="devices",
            )
        if len(targets) > MAX_DEVICES:
            raise NasvitError(
                f"a search targets at most {MAX_DEVICES} devices, got {len(targets)}",
                argument="devices",
            )
        seen: set[str] = set()
        for target in targets:
            name = target.name
            if not isinstance(name, str) or not re.fullmatch(DEVICE_TARGET_PATTERN, name):
                raise NasvitError(
                    f"device name {name!r} cannot name an output folder: use 1 to 200 letters, "
                    "digits, '.', '_' or '-', starting with a letter or digit",
                    argument="devices",
                )
            # Folder names: distinct even on a file system that ignores case.
            if name.casefold() in seen or name == DEVICES_FILE:
                raise NasvitError(
                    f"device {name!r} is named twice in devices (names are compared ignoring case)"
                    if name.casefold() in seen
                    else f"a device cannot be called {DEVICES_FILE!r}",
                    argument="devices",
                )
            seen.add(name.casefold())
            budget = target.budget_ms
            if not _is_number(budget) or not math.isfinite(budget) or budget <= 0:
                raise NasvitError(
                    f"device {name}'s budget must be a positive number of milliseconds, got "
                    f"{budget!r}",
                    argument="devices",
                )
            try:
                self.for_device(target)  # its budget with the request's guarantee
            except NasvitError as exc:
                raise NasvitError(f"device {name}: {exc}", argument="devices") from None

    def for_device(self, target: DeviceTarget) -> SearchRequest:
        """The single-device request a multi-device search runs for ``target``: its device,
        budget (and percentile, if its budget states one) and output folder ``out/<name>``."""
        percentile = (
            self.budget_percentile if target.budget_percentile is None else target.budget_percentile
        )
        return replace(
            self,
            device=target.name,
            devices=(),
            budget_ms=target.budget_ms,
            budget_percentile=percentile,
            out=Path(self.out) / target.name,
        )

    def search_space(self) -> SearchSpace:
        """The registered space, restricted by ``restrictions`` when given."""
        from nasvit.search_spaces import get_space

        space = get_space(self.space)
        return space if not self.restrictions else space.restrict(**self.restrictions)

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any], **overrides: Any) -> SearchRequest:
        """A request from plain values: a job's stored JSON, keyword options of the Python API.

        ``budget`` (text such as ``"2ms"`` or ``"2ms@p90"``, or a number of milliseconds) may
        stand for ``budget_ms`` (and ``budget_percentile``); ``checkpoint`` and ``out`` may be
        strings. ``overrides`` win over ``values``.

        Raises:
            NasvitError: an unknown or missing option, a budget text naming another percentile
                than ``budget_percentile``, or an option that fails :meth:`validate`.
        """
        from nasvit.searching.budget import parse_budget_spec

        merged = {**values, **overrides}
        if "budget" in merged:
            budget = merged.pop("budget")
            budget_ms, percentile = (
                parse_budget_spec(budget) if isinstance(budget, str) else (budget, None)
            )
            if "budget_ms" not in merged:
                merged["budget_ms"] = budget_ms
            if percentile is not None:
                stated = merged.get("budget_percentile")
                if stated is not None and stated != percentile:
                    raise NasvitError(
                        f"the budget '{budget}' is at p{percentile} but budget_percentile is "
                        f"{stated!r}: state the percentile once",
                        argument="budget_percentile",
                    )
                merged["budget_percentile"] = percentile
        names = [f.name for f in fields(cls)]
        for name in merged:
            if name not in names:
                raise UnknownNameError("search option", name, names)
        missing = [o.name for o in request_options() if o.required and o.name not in merged]
        if missing:
            raise NasvitError(f"a search needs {' and '.join(missing)}")
        for name in ("checkpoint", "out"):
            if isinstance(merged.get(name), str):
                merged[name] = Path(merged[name])
        targets = merged.get("devices")
        if targets is None:
            merged.pop("devices", None)
        elif isinstance(targets, (list, tuple)) and targets:
            default_ms = merged["budget_ms"]  # present: checked above
            merged["devices"] = tuple(DeviceTarget.parse(t, default_ms) for t in targets)
        else:
            raise NasvitError(
                f"devices must be a non-empty list of {{'name': ..., 'budget': ...}}, got "
                f"{targets!r}",
                argument="devices",
            )
        return cls(**merged)


def request_options() -> list[RequestOption]:
    """Every option of :class:`SearchRequest`, in field order."""
    return [replace(spec.metadata[_SPEC], name=spec.name) for spec in fields(SearchRequest)]


def request_option(name: str) -> RequestOption:
    """The option called ``name`` (a :class:`SearchRequest` field)."""
    by_name = {option.name: option for option in request_options()}
    if name not in by_name:
        raise UnknownNameError("search option", name, by_name)
    return by_name[name]


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def check_ray_address(address: Any) -> None:
    """Refuse what cannot be a Ray cluster's GCS address (None: no cluster), with the reason.

    Raises:
        NasvitError: a Ray Client (``ray://``) address, or anything but ``HOST:PORT``/``auto``.
    """
    if address is None:
        return
    if isinstance(address, str) and address.startswith("ray://"):
        raise NasvitError(
            f"ray_address {address!r} is a Ray Client address, which needs ray[client] "
            "(not installed); give the head's GCS address HOST:PORT instead (port 6379 "
            "unless ray start --head was given --port)",
            argument="ray_address",
        )
    if not isinstance(address, str) or not re.fullmatch(RAY_ADDRESS_PATTERN, address):
        raise NasvitError(
            f"ray_address must be HOST:PORT (the head's GCS address) or auto, got {address!r}",
            argument="ray_address",
        )


def _check_bounds(option: RequestOption, value: Any) -> None:
    if not isinstance(value, int) or isinstance(value, bool):
        also = f" or {WORKERS_AUTO}" if option.name == "workers" else ""
        raise NasvitError(f"{option.name} must be an integer{also}, got {value!r}")
    if option.ge is not None and value < option.ge:
        raise NasvitError(f"{option.name} must be at least {option.ge}, got {value}")
    if option.le is not None and value > option.le:
        raise NasvitError(f"{option.name} must be at most {option.le}, got {value}")


@dataclass(frozen=True)
class Trial:
    """One evaluated candidate, as stored in the database and in ``trials.jsonl``."""

    index: int
    arch: dict[str, Any]
    short: str
    accuracy: float
    loss: float
    score: float  # what is ranked: accuracy with the loss as a tie-break
    latency_ms: float  # predicted by the latency table
    feasible: bool  # judged_ms (latency_ms for a plain budget) within the budget
    # The prediction's interval at the table's confidence (None: table never validated, or a
    # trial stored before intervals existed).
    low_ms: float | None = None
    high_ms: float | None = None
    # What the budget was compared with: the upper bound at the request's confidence, the
    # predicted percentile of calls, or latency_ms for a plain budget.
    judged_ms: float | None = None


@dataclass(frozen=True)
class FrontPoint:
    """One point of the Pareto front (ranking score up, predicted latency down).

    Attributes:
        index: the trial's index.
        short: the architecture's short string.
        accuracy: validation accuracy.
        loss: validation loss.
        predicted_ms: the latency table's prediction.
        measured_ms: whole-network latency measured end to end, or None if it was not exported.
        feasible: the trial's judged latency is within the budget.
        arch: the architecture, as a dict of dimension values.
        low_ms, high_ms: the prediction's interval at the table's confidence (None: the
            table was never validated).
        judged_ms: what the budget was compared with (see :class:`Trial`).
        measured_readings_ms: every end-to-end reading (fresh sessions); ``measured_ms`` is
            their median. Empty if it was not exported.
    """

    index: int
    short: str
    accuracy: float
    loss: float
    predicted_ms: float
    measured_ms: float | None
    feasible: bool
    arch: dict[str, Any]
    low_ms: float | None = None
    high_ms: float | None = None
    judged_ms: float | None = None
    measured_readings_ms: tuple[float, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        """The point as ``report.json`` and ``pareto.csv`` hold it (the short string stands
        for the architecture there)."""
        return {
            f.name: list(value) if isinstance(value := getattr(self, f.name), tuple) else value
            for f in fields(self)
            if f.name != "arch"
        }


@dataclass(frozen=True)
class SearchResult:
    """What a finished search gives back (its artifacts are in the request's output folder).

    Attributes:
        best: the most accurate trial judged within the budget that also measured within it
            end to end (a search where none does raises
            :class:`~nasvit.errors.NoSubnetFitsError` instead).
        best_measured_ms: the best's whole-network latency measured end to end: the median of
            its readings (``report["end_to_end"]`` holds every reading and the statistic
            compared with the budget).
        front: the Pareto front of all trials, by predicted latency.
        trials: every trial, in evaluation order.
        report: the content of ``report.json``.
        per_device: for a search of several devices (``devices``), each device's result by
            name; this result is then the first device's. Empty otherwise.
    """

    best: Trial
    best_measured_ms: float
    front: list[FrontPoint]
    trials: list[Trial]
    report: dict[str, Any] = field(default_factory=dict)
    # A search of several devices returns the first device's result with every device's
    # (the first's included) here, by target name; empty for a single-device search.
    per_device: dict[str, SearchResult] = field(default_factory=dict)

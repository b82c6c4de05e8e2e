"""Request and response bodies of the REST API (pydantic), kept apart from the ORM rows."""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterable
from datetime import datetime
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Discriminator,
    Field,
    Strict,
    Tag,
    ValidationError,
    ValidatorFunctionWrapHandler,
    create_model,
    field_validator,
)
from pydantic_core import PydanticCustomError

from nasvit.agent.measurement import CLOCKS, MeasurementProtocol
from nasvit.errors import NasvitError
from nasvit.guarantees import BUDGET_PERCENTILES
from nasvit.latency_db.device import DeviceFingerprint
from nasvit.latency_db.records import ENTRY_VALUES, IMPORTED_VALUES, EntryValue, Transfer
from nasvit.nn.blocks import BLOCK_KEY_SCHEMA
from nasvit.searching.budget import BUDGET_UNITS, parse_budget_spec
from nasvit.searching.request import DEVICE_TARGET_PATTERN, MAX_DEVICES, request_option
from nasvit.server.jobs import DEVICE_NAME_PATTERN

JobStatus = Literal["queued", "running", "succeeded", "failed", "cancelled"]
if TYPE_CHECKING:
    Percentile = int
else:  # the schema's enum, from the one list of allowed percentiles
    Percentile = Literal[BUDGET_PERCENTILES]


class Problem(BaseModel):
    detail: str = Field(description="What was wrong with the request, in words.")


#: The largest value of a 32-bit integer column: a bigger number would fail in the database (a
#: 5xx), so the schema refuses it first.
INT32_MAX = 2**31 - 1
#: The bound of 64-bit columns: 2**53, the largest integer a JSON number read as a double (as
#: JavaScript and the OpenAPI document's own numbers are) holds exactly. 2**63 - 1 would be
#: documented as 9.223372036854776e18, which is 2**63: a value the server refuses.
LARGEST_INTEGER = 2**53


def regex_literal(text: str) -> str:
    """``text`` matched literally, escaping only ECMAScript's syntax characters: the patterns
    here are read by Python, by pydantic's Rust engine and, from the OpenAPI schema, by
    ECMAScript (JSON Schema's dialect, where ``re.escape``'s ``\\-`` is an error under the
    ``u`` flag)."""
    return "".join("\\" + c if c in "\\^$.*+?()[]{}|/" else c for c in text)


def _budget_pattern() -> str:
    """What the budget parser (:func:`nasvit.searching.budget.parse_budget_spec`) reads as a
    positive budget, as one regular expression in the subset shared by Python and ECMAScript.

    The parser's number is ``[0-9]*\\.?[0-9]+`` with an optional exponent; "positive" means a
    digit other than 0 somewhere in the mantissa. Two exponent digits at most: with the
    field's 50 characters no budget can then overflow or underflow a float, which the parser
    would refuse as "not positive". Only ASCII spaces around the parts (the parser takes any
    whitespace), the units of :data:`~nasvit.searching.budget.BUDGET_UNITS` (ASCII letters in
    either case; ``µs`` with the micro sign only, not the Greek mu the parser also reads), and
    the percentiles of :data:`~nasvit.guarantees.BUDGET_PERCENTILES` (leading zeros allowed, as
    the parser reads ``p090`` as 90)."""
    number = (
        "(?:[0-9]*[1-9][0-9]*(?:\\.[0-9]+)?|[0-9]*\\.[0-9]*[1-9][0-9]*)(?:[eE][-+]?0*[0-9]{1,2})?"
    )

    def either_case(unit: str) -> str:
        return "".join(
            f"[{c.lower()}{c.upper()}]" if c.isascii() and c.isalpha() else c for c in unit
        )

    units = "|".join(either_case(u) for u in sorted(BUDGET_UNITS, key=len, reverse=True))
    percentiles = "|".join(str(p) for p in BUDGET_PERCENTILES)
    return f"^ *{number} *(?:{units}) *(?:@ *[pP]0*(?:{percentiles}) *)?$"


#: The budget's text as the schema states it (see :func:`_budget_pattern`).
BUDGET_PATTERN = _budget_pattern()
_BUDGET = re.compile(BUDGET_PATTERN)


def check_budget(text: str) -> str:
    """``text`` if it matches :data:`BUDGET_PATTERN`, which the parser then reads; else a
    ValueError with the parser's own reason where it has one."""
    if _BUDGET.fullmatch(text):
        return text
    try:
        parse_budget_spec(text)
    except NasvitError as exc:
        raise ValueError(str(exc)) from None
    except KeyError:
        # The parser matches units ignoring case, so a Greek mu ("2μs") passes its pattern
        # and then is not one of its units; the pattern here refuses it.
        pass
    raise ValueError(
        f"cannot read latency budget {text!r}: write a positive number (at most two exponent "
        "digits) and a unit (s, ms, us), optionally with a percentile, e.g. 2ms or 2 ms @ p90"
    )


_WORKERS = request_option("workers")


def _from_request(name: str, **limits: Any) -> Any:
    """A field with the default, bounds and description of the search request's option
    ``name`` (:class:`nasvit.searching.request.SearchRequest`), plus HTTP-only ``limits``."""
    option = request_option(name)
    return Field(
        ... if option.required else option.default,
        ge=option.ge,
        le=option.le,
        gt=option.gt,
        lt=option.lt,
        description=option.help,
        **limits,
    )


class DeviceBudget(BaseModel):
    """One device of a search of several devices, and its budget."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(
        min_length=1,
        max_length=200,
        pattern=DEVICE_TARGET_PATTERN,
        description="A device in the latency database; also the name of its results' folder.",
    )
    # The pattern sits on the string branch, where a schema-driven client reads it.
    budget: (
        Annotated[
            str, Field(min_length=1, max_length=50, json_schema_extra={"pattern": BUDGET_PATTERN})
        ]
        | None
    ) = Field(
        None,
        description="This device's budget, e.g. 5ms or 5ms@p90 (null: the search's budget). "
        "Without a percentile it holds as the search's budget does.",
    )

    @field_validator("budget")
    @classmethod
    def _budget_text(cls, text: str | None) -> str | None:
        return None if text is None else check_budget(text)


class SearchCreate(BaseModel):
    """A search to queue. Unknown fields are refused (a misspelt option is never ignored).

    Fields, defaults and bounds are the search request's own (``budget`` is its text form);
    string lengths are limited here. The service caps ``evaluations`` with its
    ``max_evaluations`` setting; the names (space, controller, device) are checked when the
    job is created. A budget holds at the prediction by default, at ``budget_confidence``, or
    at a percentile of single calls (``budget_percentile``, or ``"2ms@p90"`` as the budget)."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {"space": "efficientformer", "budget": "2ms"},
                {"space": "efficientformer", "budget": "2ms", "budget_confidence": 0.9},
                {"space": "efficientformer", "budget": "2ms@p90"},
                {
                    "space": "efficientformer",
                    "budget": "2ms",
                    "devices": [{"name": "pi", "budget": "20ms"}, {"name": "jetson"}],
                },
            ]
        },
    )

    space: str = _from_request("space", min_length=1, max_length=100)
    budget: str = _from_request(
        "budget_ms", min_length=1, max_length=50, json_schema_extra={"pattern": BUDGET_PATTERN}
    )
    budget_confidence: float | None = _from_request("budget_confidence")
    budget_percentile: Percentile | None = _from_request("budget_percentile")
    device: str | None = _from_request("device", min_length=1, max_length=200)
    devices: list[DeviceBudget] | None = Field(
        None,
        min_length=1,
        max_length=MAX_DEVICES,
        description=request_option("devices").help + " Not together with device; names are "
        "distinct (ignoring case).",
    )
    controller: str = _from_request("controller", max_length=50)
    evaluations: int = _from_request("evaluations")
    seed: int = _from_request("seed")
    # A number within the request's bounds, or "auto": the worker that runs the job decides.
    workers: Annotated[int, Field(ge=_WORKERS.ge, le=_WORKERS.le)] | Literal["auto"] = Field(
        _WORKERS.default, description=_WORKERS.help
    )

    @field_validator("budget")
    @classmethod
    def _budget_text(cls, text: str) -> str:
        # The pattern is checked here rather than as pydantic's ``pattern`` so that a refused
        # budget gets the parser's reason (e.g. the percentiles allowed), not the pattern.
        return check_budget(text)

    @field_validator("workers", mode="wrap")
    @classmethod
    def _workers(cls, value: Any, handler: ValidatorFunctionWrapHandler) -> Any:
        # One reason for the union instead of one per branch ("constrained-int: ...;
        # literal['auto']: ...").
        try:
            return handler(value)
        except ValidationError:
            raise PydanticCustomError(
                "workers",
                "Input should be auto or a whole number from {ge} to {le}",
                {"ge": _WORKERS.ge, "le": _WORKERS.le},
            ) from None


class Progress(BaseModel):
    stage: str
    done: int
    total: int
    fraction: float = Field(description="done / total within the current stage.")


_INTERVAL = (
    "The prediction's interval at the table's confidence (``interval_confidence``); null when "
    "the table was never validated."
)
_JUDGED = (
    "What the budget was compared with: the upper bound at the job's confidence, the "
    "predicted percentile of calls, or the prediction for a plain budget."
)


class BestSummary(BaseModel):
    short: str
    accuracy: float
    predicted_ms: float
    measured_ms: float | None = None
    low_ms: float | None = Field(None, description=_INTERVAL)
    high_ms: float | None = Field(None, description=_INTERVAL)
    interval_confidence: float | None = Field(
        None, description="The confidence of low_ms/high_ms (null when there is no interval)."
    )
    judged_ms: float | None = Field(None, description=_JUDGED)


class DeviceResult(BaseModel):
    """One device of a search of several devices: its budget and, once the job succeeded, its
    chosen subnet (measured on that device)."""

    name: str
    budget_ms: float
    budget_confidence: float | None = Field(
        None, description="The budget holds at this confidence, the search's (null: not asked)."
    )
    budget_percentile: int | None = Field(
        None, description="This device's budget holds at this percentile (null: not asked)."
    )
    best: BestSummary | None = None


class Job(BaseModel):
    id: str
    status: JobStatus
    space: str
    device: str | None
    devices: list[DeviceResult] | None = Field(
        None,
        description="A search of several devices: each device's budget and best (null: one "
        "device). ``best`` is then the first device's.",
    )
    budget_ms: float
    budget_confidence: float | None = Field(
        None, description="The budget holds at this confidence (null: not asked)."
    )
    budget_percentile: int | None = Field(
        None, description="The budget holds at this percentile of single calls (null: not asked)."
    )
    controller: str
    evaluations: int
    seed: int
    workers: int | Literal["auto"]
    progress: Progress
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    error: str | None
    worker: str | None
    attempt: int = Field(description="How many times a worker claimed the job (resumes > 1).")
    cancel_requested: bool
    best: BestSummary | None


class JobPage(BaseModel):
    items: list[Job]
    total: int
    offset: int
    limit: int


class Point(BaseModel):
    index: int
    short: str
    arch: dict[str, Any]
    accuracy: float
    loss: float
    score: float = Field(description="Accuracy with the loss as a tie-break (what is ranked).")
    predicted_ms: float
    low_ms: float | None = Field(None, description=_INTERVAL)
    high_ms: float | None = Field(None, description=_INTERVAL)
    interval_confidence: float | None = Field(
        None, description="The confidence of low_ms/high_ms (null when there is no interval)."
    )
    judged_ms: float | None = Field(None, description=_JUDGED)
    measured_ms: float | None = Field(
        description="Measured end to end (the median of fresh sessions); null if not exported."
    )
    feasible: bool = Field(description="judged_ms is within the budget.")
    dominated: bool = Field(description="Another trial is at least as good in both objectives.")


class PointPage(BaseModel):
    items: list[Point]
    total: int
    offset: int
    limit: int


class HypervolumeStep(BaseModel):
    evaluations: int
    hypervolume: float


class Pareto(BaseModel):
    budget_ms: float
    evaluations: int
    hypervolume: float
    front: list[Point] = Field(description="Non-dominated trials within budget, by latency.")
    hypervolume_curve: list[HypervolumeStep]


class Dimension(BaseModel):
    name: str
    kind: str
    tag: str | None = None
    allowed: str
    doc: str


class SpaceSummary(BaseModel):
    name: str
    description: str
    size: int
    dimensions: list[Dimension]


class ReferenceArch(BaseModel):
    name: str
    short: str
    arch: dict[str, Any]


class SpaceDetail(SpaceSummary):
    constraints: list[str] = []
    reference_archs: list[ReferenceArch]


class ErrorFigures(BaseModel):
    n: int
    mape: float
    within_5: float
    within_10: float
    spearman: float | None = None


class BandFigures(BaseModel):
    """One latency band of a validation's error model (bands are over the block sum)."""

    band: int
    low_ms: float
    high_ms: float
    model: str = Field(description='"sum" or "residency": the model predictions use here.')
    n_judged: int = Field(description="Held-out networks judged in this band.")
    mape: float | None = None
    within_10: float | None = None
    median_bias: float | None = None
    interval_width: float = Field(
        description="Relative width of the interval at the model's confidence."
    )
    pooled_interval: bool = Field(
        description="Too few residuals in this band: the interval uses all bands' residuals."
    )


class ValidationSummary(BaseModel):
    space: str
    created_at: datetime | None
    validated: bool = Field(
        description="An error model was fitted: predictions carry intervals and budgets may "
        "name a confidence or a percentile."
    )
    prediction_path: str = Field(description="The model predictions use, per band.")
    prediction_error: ErrorFigures = Field(
        description="The error of predictions on held-out networks (an old run without an "
        "error model: the block sum's over all its networks)."
    )
    raw: ErrorFigures = Field(description="The plain block sum over all measured networks.")
    noise_ceiling: ErrorFigures | None = Field(
        None,
        description="What a perfect predictor would score against this run's truth (the "
        "median of each network's readings); null when no network was read twice.",
    )
    bands: list[BandFigures] | None = Field(
        None, description="Per latency band; null for a run without an error model."
    )


class Coverage(BaseModel):
    done: int = Field(description="Blocks of the space measured through the device's queue.")
    total: int = Field(description="Blocks of the space queued for the device in all.")


DeviceStatus = Literal["online", "silent", "local"]
WorkKind = Literal["overhead", "block", "network"]
WorkStatus = Literal["queued", "leased", "done"]


class Device(BaseModel):
    id: str
    name: str
    entries: int
    fingerprint: dict[str, Any]
    latest_validation: ValidationSummary | None
    agent_managed: bool = Field(
        False,
        description="An agent registered the device: all its measurements are work items "
        "timed on the device, never on the service's machine.",
    )
    status: DeviceStatus = Field(
        "local",
        description='"online": its agent was seen within the service\'s device timeout; '
        '"silent": not since; "local": no agent (tables measured where nasvit runs).',
    )
    last_seen_at: datetime | None = Field(None, description="When an agent last called in.")
    last_agent: str | None = Field(None, description="The agent that last called in.")
    coverage: dict[str, Coverage] = Field(
        default_factory=dict, description="Per search space: block work items done / queued."
    )
    queue: dict[str, dict[str, int]] = Field(
        default_factory=dict, description="Work items per kind and status."
    )
    prediction_mape: float | None = Field(
        None, description="The latest validation's prediction error (MAPE, %); null: none."
    )
    interval_width: float | None = Field(
        None,
        description="The latest validation's widest band interval (relative width); null: "
        "never validated with an error model.",
    )


#: The longest unbounded text (a block key) an upload may carry.
_LONGEST_TEXT = 2000
#: What an upload's numbers must be, beyond their type (what the importer, and sense, require:
#: a median of 0 ms or a timing of 0 runs is no measurement). Every number an upload carries
#: needs an entry here (checked when the schema is built), so a new entry value cannot arrive
#: in the schema unbounded.
UPLOAD_BOUNDS: dict[str, dict[str, float]] = {
    "median_ms": {"gt": 0},
    "iqr_ms": {"ge": 0},
    "n": {"ge": 1},
    "weight_bytes": {"ge": 0},
    "cold_median_ms": {"gt": 0},
    "cold_iqr_ms": {"ge": 0},
    "cold_n": {"ge": 1},
}
#: Strings an upload must spell as this version does (the importer refuses others): a key
#: starts with this version's key schema, and a key_schema is it.
UPLOAD_PATTERNS = {
    "key": "^" + regex_literal(BLOCK_KEY_SCHEMA + "|"),
    "key_schema": "^" + regex_literal(BLOCK_KEY_SCHEMA) + "$",
}


def _this_version(name: str) -> AfterValidator:
    """The check :data:`UPLOAD_PATTERNS` states for ``name``, with the importer's reason (a
    table from another version is to be re-profiled, which a pattern cannot say)."""

    def check(text: str) -> str:
        if name == "key" and "|" not in text:
            raise ValueError(f"a block key reads '{BLOCK_KEY_SCHEMA}|kind|shape', got '{text}'")
        schema = text.split("|", 1)[0] if name == "key" else text
        if schema != BLOCK_KEY_SCHEMA:
            raise ValueError(
                f"key schema '{schema}' does not match this version's '{BLOCK_KEY_SCHEMA}'; "
                "re-profile the device with this version"
            )
        return text

    return AfterValidator(check)


def _upload_limits(value: EntryValue, required: bool) -> dict[str, Any]:
    """The constraints of an uploaded entry value: strings bounded by their columns, numbers
    by :data:`UPLOAD_BOUNDS` and by their column's integer width."""
    limits: dict[str, Any] = {}
    if value.type is str:
        limits["max_length"] = value.spec.length or _LONGEST_TEXT
        limits["min_length"] = 1 if required else None
        if value.name in UPLOAD_PATTERNS:  # checked by _this_version, with a reason
            limits["json_schema_extra"] = {"pattern": UPLOAD_PATTERNS[value.name]}
    elif value.type in (int, float):
        if value.name not in UPLOAD_BOUNDS:
            raise TypeError(f"the upload schema has no bounds for the number '{value.name}'")
        limits.update(UPLOAD_BOUNDS[value.name])
        if value.type is int:
            limits["le"] = LARGEST_INTEGER if value.spec.big else INT32_MAX
    return limits


def _entry_model(
    name: str, doc: str, values: Iterable[EntryValue], *, upload: bool
) -> type[BaseModel]:
    """A schema with one field per entry value, from the entry's one declaration
    (:data:`nasvit.latency_db.records.ENTRY_VALUES`). A response requires what the store
    always has; an upload requires what an import does, and its values are bounded as the
    importer and the columns need (:func:`_upload_limits`)."""
    fields: dict[str, Any] = {}
    for value in values:
        required = value.spec.transfer is Transfer.REQUIRED if upload else value.required
        limits = _upload_limits(value, required) if upload else {}
        annotation: Any = value.type
        if upload and value.name in UPLOAD_PATTERNS:
            annotation = Annotated[annotation, _this_version(value.name)]
        if not required:
            annotation = annotation | None
        default = ... if required else None
        fields[value.name] = (annotation, Field(default, description=value.spec.doc, **limits))
    # An upload: NaN and infinity are refused (JSON parsers accept them, latencies cannot be
    # them), and columns of an export that an import does not read are ignored.
    config = ConfigDict(extra="ignore", allow_inf_nan=False) if upload else ConfigDict()
    return create_model(name, __config__=config, __doc__=doc, **fields)


if TYPE_CHECKING:  # to a type checker, plain schemas; their fields are built at run time

    class Entry(BaseModel): ...

    class UploadEntry(BaseModel): ...

else:
    Entry = _entry_model(
        "Entry", "A stored block latency: every value of the entry.", ENTRY_VALUES, upload=False
    )
    UploadEntry = _entry_model(
        "UploadEntry",
        "One measured block latency: a row of ``nasvit latency export`` (the values an import "
        "reads).",
        IMPORTED_VALUES,
        upload=True,
    )


class EntryPage(BaseModel):
    device: Device
    items: list[Entry]
    total: int
    offset: int
    limit: int


class MeasurementUpload(BaseModel):
    model_config = ConfigDict(extra="forbid")

    entries: list[UploadEntry] = Field(min_length=1, max_length=100_000)


class UploadResult(BaseModel):
    device: str
    inserted: int
    skipped: int = Field(description="Entries whose key the device already had (kept).")


class Health(BaseModel):
    status: Literal["ok", "degraded"]
    database: str
    version: str
    jobs: dict[str, int]


# ---------------------------------------------------------------------- device tokens, agents
def _json_integer(value: Any) -> Any:
    """Let through what JSON Schema calls an integer (any number without a fraction: ``4.0``
    is 4), never a string or a boolean (which pydantic's lax mode would convert)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise PydanticCustomError("int_type", "Input should be a valid integer")
    return value


#: An integer of a strict body: as JSON Schema reads ``"type": "integer"``, no more, no less.
JsonInt = Annotated[int, Strict(False), BeforeValidator(_json_integer)]
#: A name an agent gives itself (shown as the device's ``last_agent`` and on leases).
AgentName = Annotated[str, Field(min_length=1, max_length=255, pattern=r"^[^\x00-\x1f\x7f]+$")]
_SHA256 = r"^[0-9a-f]{64}$"


class DeviceTokenCreate(BaseModel):
    """A device token to issue: it acts for the device ``device`` only."""

    model_config = ConfigDict(extra="forbid", strict=True)

    device: str = Field(
        min_length=1,
        max_length=200,
        pattern=DEVICE_NAME_PATTERN,
        description="The device the token acts for (its agent registers it under this name).",
    )
    label: str | None = Field(
        None,
        min_length=1,
        max_length=200,
        description="The token's label (default: the device name, numbered if taken).",
    )


class DeviceTokenCreated(BaseModel):
    device: str
    label: str
    token: str = Field(description="The device token (shown once; only its SHA-256 is stored).")


#: Bounds of a fingerprint's numbers (every one needs an entry: checked when the schema is
#: built, so a new fingerprint field cannot arrive unbounded).
FINGERPRINT_BOUNDS: dict[str, dict[str, int]] = {
    "cores": {"ge": 1, "le": 1 << 20},
    "memory_gib": {"ge": 0, "le": 1 << 30},
    "threads": {"ge": 1, "le": 1 << 20},
    "batch": {"ge": 1, "le": 1 << 20},
    "cache_bytes": {"ge": 0, "le": 1 << 50},
}
#: Text fields a fingerprint may leave empty (no accelerator on a CPU).
_MAY_BE_EMPTY = {"accelerator"}


def _fingerprint_model() -> type[BaseModel]:
    """The fields of :class:`~nasvit.latency_db.device.DeviceFingerprint`, with strict types
    (no ``"4"`` for 4, no ``true`` for 1) and nothing else: a fingerprint names the table, so
    a field the server would drop or coerce would file measurements under the wrong device."""
    fields: dict[str, Any] = {}
    for field in dataclasses.fields(DeviceFingerprint):
        has_default = field.default is not dataclasses.MISSING
        default: Any = field.default if has_default else ...
        if field.name == "clock":
            fields[field.name] = (Literal[CLOCKS], Field(default))  # type: ignore[valid-type]
        elif field.type in ("str", str):
            least = 0 if field.name in _MAY_BE_EMPTY else 1
            fields[field.name] = (str, Field(default, min_length=least, max_length=200))
        elif field.type in ("int", int):
            if field.name not in FINGERPRINT_BOUNDS:
                raise TypeError(f"the fingerprint schema has no bounds for '{field.name}'")
            bounds = FINGERPRINT_BOUNDS[field.name]
            fields[field.name] = (JsonInt, Field(default, ge=bounds["ge"], le=bounds["le"]))
        else:  # pragma: no cover - a new kind of field needs a decision here
            raise TypeError(f"fingerprint field '{field.name}' of type {field.type}")
    config = ConfigDict(extra="forbid", strict=True)
    doc = "What a device is: hardware and runtime settings (DeviceFingerprint's fields)."
    return create_model("Fingerprint", __config__=config, __doc__=doc, **fields)


if TYPE_CHECKING:

    class Fingerprint(BaseModel): ...

else:
    Fingerprint = _fingerprint_model()


class AgentRegister(BaseModel):
    """An agent announcing its device. The device's name is its token's."""

    model_config = ConfigDict(extra="forbid", strict=True)

    agent: AgentName
    fingerprint: Fingerprint


class AgentConfig(BaseModel):
    """How the agent works for this service (its measurement protocol included: the agent
    times blocks and networks as ``nasvit profile`` does on the service's machine)."""

    device_id: str
    device: str
    lease_seconds: float = Field(description="A lease runs out this long after its claim.")
    poll_seconds: float = Field(description="How long to wait when there is nothing to do.")
    protocol: MeasurementProtocol = Field(description="The protocol of block timings.")
    network_protocol: MeasurementProtocol = Field(description="The protocol of network timings.")
    drift_tolerance: float = Field(description="The reference's relative change that re-times.")
    max_remeasures: int = Field(description="Re-timings of a drifting batch before it is kept.")
    batch_size: int = Field(description="Items to claim per lease.")


class LeaseCreate(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    agent: AgentName
    max_items: JsonInt = Field(16, ge=1, le=256, description="The most items to lease.")


class LeaseItem(BaseModel):
    id: int
    kind: WorkKind
    key: str = Field(description="The block's key; the reading's for a network.")
    model_sha256: str
    input_shape: list[int]
    params: dict[str, Any]
    extra_sha256: str | None
    reference_sha256: str | None


class Lease(BaseModel):
    lease_id: str
    expires_at: datetime
    call_overhead_ms: float | None = Field(
        description="The device's per-call overhead (streamed block timings subtract it)."
    )
    items: list[LeaseItem] = Field(description="Items of one kind, to time and upload.")


class LeaseRenewed(BaseModel):
    expires_at: datetime


_FINITE = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)


class Timing(BaseModel):
    """One measurement (:class:`~nasvit.agent.measurement.Measurement`), in milliseconds."""

    model_config = _FINITE

    median_ms: float = Field(gt=0, description="Median of the per-session medians.")
    iqr_ms: float = Field(ge=0, description="IQR of all timed runs.")
    n: JsonInt = Field(ge=1, le=INT32_MAX, description="Timed runs in all.")
    sessions: JsonInt = Field(ge=1, le=10_000, description="Fresh sessions the runs came from.")
    session_medians_ms: list[Annotated[float, Field(gt=0)]] = Field(min_length=1, max_length=10_000)


class OverheadTiming(BaseModel):
    """The per-call overhead: a difference of two timings, so it may be 0 (never below)."""

    model_config = _FINITE

    median_ms: float = Field(ge=0)
    iqr_ms: float = Field(ge=0)
    n: JsonInt = Field(ge=1, le=INT32_MAX)
    sessions: JsonInt = Field(ge=1, le=10_000)
    session_medians_ms: list[Annotated[float, Field(ge=0)]] = Field(min_length=1, max_length=10_000)


_ITEM_ID = Field(ge=1, le=LARGEST_INTEGER, description="The work item's id (from the lease).")


class BlockResult(BaseModel):
    model_config = _FINITE

    item_id: JsonInt = _ITEM_ID
    warm: Timing
    cold: Timing | None = Field(None, description="Required when the item's params.cold is set.")


class OverheadResult(BaseModel):
    model_config = _FINITE

    item_id: JsonInt = _ITEM_ID
    overhead: OverheadTiming


class NetworkResult(BaseModel):
    model_config = _FINITE

    item_id: JsonInt = _ITEM_ID
    reading: Timing
    runs_ms: list[Annotated[float, Field(gt=0)]] = Field(min_length=1, max_length=100_000)


def _result_kind(value: Any) -> str | None:
    """Which result a JSON object is, by the key only it has (None: none of them)."""
    if isinstance(value, BaseModel):
        value = value.__dict__
    if not isinstance(value, dict):
        return None
    for key, kind in (("warm", "block"), ("overhead", "overhead"), ("reading", "network")):
        if key in value:
            return kind
    return None


WorkResult = Annotated[
    Annotated[BlockResult, Tag("block")]
    | Annotated[OverheadResult, Tag("overhead")]
    | Annotated[NetworkResult, Tag("network")],
    Discriminator(
        _result_kind,
        custom_error_type="result_kind",
        custom_error_message="a result has 'warm' (a block), 'overhead' or 'reading' (a network)",
    ),
]


class ResultsUpload(BaseModel):
    """Results of a lease's items, recorded all together or not at all. Each item at most once
    (a repeated ``item_id`` is refused); uploading the same results again records nothing."""

    model_config = ConfigDict(extra="forbid")

    results: list[WorkResult] = Field(min_length=1, max_length=256)


class ResultsRecorded(BaseModel):
    recorded: int = Field(description="Items this upload finished.")
    already: int = Field(description="Items this lease had already finished (a retried upload).")
    inserted_entries: int = Field(description="Block latencies added to the device's table.")


class WorkItemView(BaseModel):
    id: int
    kind: WorkKind
    key: str
    status: WorkStatus
    model_sha256: str
    input_shape: list[int]
    params: dict[str, Any]


class WorkQueueView(BaseModel):
    summary: dict[str, dict[str, int]] = Field(description="Items per kind and status.")
    items: list[WorkItemView] = Field(description="The first unfinished items, in claim order.")

"""Request and response bodies of the REST API (pydantic), kept apart from the ORM rows."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, create_model

from nasvit.guarantees import BUDGET_PERCENTILES
from nasvit.latency_db.records import ENTRY_VALUES, IMPORTED_VALUES, EntryValue, Transfer
from nasvit.searching.request import request_option

JobStatus = Literal["queued", "running", "succeeded", "failed", "cancelled"]
if TYPE_CHECKING:
    Percentile = int
else:  # the schema's enum, from the one list of allowed percentiles
    Percentile = Literal[BUDGET_PERCENTILES]


class Problem(BaseModel):
    detail: str = Field(description="What was wrong with the request, in words.")


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
            ]
        },
    )

    space: str = _from_request("space", min_length=1, max_length=100)
    budget: str = _from_request("budget_ms", min_length=1, max_length=50)
    budget_confidence: float | None = _from_request("budget_confidence")
    budget_percentile: Percentile | None = _from_request("budget_percentile")
    device: str | None = _from_request("device", min_length=1, max_length=200)
    controller: str = _from_request("controller", max_length=50)
    evaluations: int = _from_request("evaluations")
    seed: int = _from_request("seed")
    workers: int = _from_request("workers")


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


class Job(BaseModel):
    id: str
    status: JobStatus
    space: str
    device: str | None
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
    workers: int
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


class Device(BaseModel):
    id: str
    name: str
    entries: int
    fingerprint: dict[str, Any]
    latest_validation: ValidationSummary | None


#: The longest unbounded text (a block key) an upload may carry.
_LONGEST_TEXT = 2000


def _entry_model(
    name: str, doc: str, values: Iterable[EntryValue], *, upload: bool
) -> type[BaseModel]:
    """A schema with one field per entry value, from the entry's one declaration
    (:data:`nasvit.latency_db.records.ENTRY_VALUES`). A response requires what the store
    always has; an upload requires what an import does, and its strings are bounded by their
    columns."""
    fields: dict[str, Any] = {}
    for value in values:
        required = value.spec.transfer is Transfer.REQUIRED if upload else value.required
        limits: dict[str, Any] = {}
        if upload and value.type is str:
            limits["max_length"] = value.spec.length or _LONGEST_TEXT
            limits["min_length"] = 1 if required else None
        annotation = value.type if required else value.type | None
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

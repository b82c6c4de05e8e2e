"""Request and response bodies of the REST API (pydantic), kept apart from the ORM rows."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from nasvit.search.defaults import DEFAULT_EVALUATIONS

JobStatus = Literal["queued", "running", "succeeded", "failed", "cancelled"]


class Problem(BaseModel):
    detail: str = Field(description="What was wrong with the request, in words.")


class SearchCreate(BaseModel):
    """A search to queue. Unknown fields are refused (a misspelt option is never ignored)."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"space": "efficientformer", "budget": "2ms"}]},
    )

    space: str = Field(min_length=1, max_length=100, description="Search space name.")
    budget: str = Field(
        min_length=1, max_length=50, description="Latency budget: 2ms, 1500us, 0.002s."
    )
    device: str | None = Field(
        None,
        min_length=1,
        max_length=200,
        description="Name or id of a device in the latency database (default: the worker's CPU).",
    )
    controller: str = Field("nsga2", max_length=50)
    evaluations: int = Field(DEFAULT_EVALUATIONS, ge=1, description="Candidates to evaluate.")
    seed: int = Field(0, ge=0, le=2**31 - 1)
    workers: int = Field(1, ge=1, le=256, description="Ray workers for the evaluation.")


class Progress(BaseModel):
    stage: str
    done: int
    total: int
    fraction: float = Field(description="done / total within the current stage.")


class BestSummary(BaseModel):
    short: str
    accuracy: float
    predicted_ms: float
    measured_ms: float | None = None


class Job(BaseModel):
    id: str
    status: JobStatus
    space: str
    device: str | None
    budget_ms: float
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
    measured_ms: float | None
    feasible: bool
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


class ValidationSummary(BaseModel):
    space: str
    created_at: datetime | None
    raw: ErrorFigures
    calibrated_test: ErrorFigures | None = None
    calibration_helps: bool


class Device(BaseModel):
    id: str
    name: str
    entries: int
    fingerprint: dict[str, Any]
    latest_validation: ValidationSummary | None


class Entry(BaseModel):
    key: str
    kind: str
    median_ms: float
    iqr_ms: float
    n: int
    profiler: str
    runtime_version: str
    source: str
    measured_at: datetime
    weight_bytes: int | None = None
    cold_median_ms: float | None = None


class EntryPage(BaseModel):
    device: Device
    items: list[Entry]
    total: int
    offset: int
    limit: int


class UploadEntry(BaseModel):
    """One measured block latency (columns of ``nasvit latency export``)."""

    # NaN and infinity are refused here: JSON parsers accept them, latencies cannot be them.
    model_config = ConfigDict(extra="ignore", allow_inf_nan=False)

    key: str = Field(min_length=1, max_length=2000)
    median_ms: float
    iqr_ms: float
    n: int
    kind: str | None = Field(None, max_length=100)
    profiler: str | None = Field(None, max_length=200)
    runtime_version: str | None = Field(None, max_length=100)
    weight_bytes: int | None = None
    cold_median_ms: float | None = None
    cold_iqr_ms: float | None = None
    cold_n: int | None = None


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

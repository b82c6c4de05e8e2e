"""The REST API: ``create_app(settings)`` builds the FastAPI application.

Searches never run inside a request: ``POST /api/v1/searches`` stores a queued job and a
``nasvit worker`` process claims and runs it (see :mod:`nasvit.server.worker`). Handlers are
plain ``def`` functions (FastAPI runs them in its thread pool) over synchronous SQLAlchemy.

Bad input always gets a 4xx with ``{"detail": "<what was wrong>"}``: 400 malformed JSON, 401
missing or wrong token, 404 unknown job / space / device / artifact, 409 an action the job's
status forbids, 413 an oversized body, 422 a well-formed request with unusable values.
"""

from __future__ import annotations

import json
import tempfile
import threading
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Depends, FastAPI, HTTPException, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import FileResponse, JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.exc import SQLAlchemyError

from nasvit import __version__
from nasvit.errors import NasvitError, UnknownNameError
from nasvit.guarantees import DEFAULT_CONFIDENCE
from nasvit.server import schemas
from nasvit.server.db import Database
from nasvit.server.jobs import (
    FINISHED,
    JobNotFoundError,
    JobRecord,
    JobStateError,
    JobStore,
    TokenStore,
)
from nasvit.server.results import ResultReader, pareto_summary, points
from nasvit.settings import Settings, load_settings

API_PREFIX = "/api/v1"
#: Files of a job folder the API hands out (anything else there is internal).
ARTIFACTS = {
    "best.onnx": "application/octet-stream",
    "best.json": "application/json",
    "report.json": "application/json",
    "pareto.csv": "text/csv",
    "trials.csv": "text/csv",
    "trials.jsonl": "application/x-ndjson",
}


@dataclass
class Services:
    """What the handlers use; one per app, on ``app.state.services``."""

    settings: Settings
    database: Database
    jobs: JobStore
    tokens: TokenStore
    results: ResultReader = field(default_factory=ResultReader)
    _latency: Any = None
    _latency_lock: threading.Lock = field(default_factory=threading.Lock)

    def latency_store(self) -> Any:
        """The latency database (opened, and migrated, on first use)."""
        with self._latency_lock:
            if self._latency is None:
                from nasvit.latency_db import LatencyStore

                self._latency = LatencyStore.open(self.settings.resolved_database_url)
            return self._latency

    def job_folder(self, job_id: str) -> Path:
        return self.settings.resolved_artifact_root / job_id

    def close(self) -> None:
        self.database.close()
        if self._latency is not None:
            self._latency.close()


# The dependencies are ``async def`` on purpose: FastAPI runs a sync dependency in its thread
# pool, and a thread hop per dependency per request is what dominates cheap polling requests
# (and their tail latency, through GIL hand-offs between many pool threads).
async def get_services(request: Request) -> Services:
    return request.app.state.services


ServicesDep = Annotated[Services, Depends(get_services)]
_bearer = HTTPBearer(
    auto_error=False,
    description="An API token from `nasvit token create NAME`, sent as `Authorization: Bearer`.",
)


def _check_token(services: Services, credentials: HTTPAuthorizationCredentials | None) -> str:
    if credentials is None:
        raise HTTPException(
            401,
            "missing API token: send 'Authorization: Bearer <token>' "
            "(create one with `nasvit token create NAME`)",
            headers={"WWW-Authenticate": "Bearer"},
        )
    name = services.tokens.verify(credentials.credentials)
    if name is None:
        raise HTTPException(
            401, "invalid or revoked API token", headers={"WWW-Authenticate": "Bearer"}
        )
    return name


async def require_writer(
    services: ServicesDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> str:
    """Write endpoints always need a live token."""
    return _check_token(services, credentials)


async def require_reader(
    services: ServicesDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> str | None:
    """Read endpoints need a token only when ``read_access`` is ``token``."""
    if services.settings.read_access == "public":
        return None
    return _check_token(services, credentials)


Reader = Depends(require_reader)
Writer = Depends(require_writer)
_ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": schemas.Problem} for code in (400, 401, 404, 409, 413, 422)
}


def job_view(record: JobRecord) -> schemas.Job:
    request = record.request
    progress = record.progress or {"stage": "queued", "done": 0, "total": request["evaluations"]}
    total = int(progress["total"])
    return schemas.Job(
        id=record.id,
        status=record.status,  # type: ignore[arg-type]
        space=request["space"],
        device=request.get("device"),
        budget_ms=request["budget_ms"],
        budget_confidence=request.get("budget_confidence"),
        budget_percentile=request.get("budget_percentile"),
        controller=request["controller"],
        evaluations=request["evaluations"],
        seed=request["seed"],
        workers=request.get("workers", 1),
        progress=schemas.Progress(
            stage=progress["stage"],
            done=int(progress["done"]),
            total=total,
            fraction=min(1.0, int(progress["done"]) / total) if total > 0 else 0.0,
        ),
        created_at=record.created_at,
        started_at=record.started_at,
        finished_at=record.finished_at,
        error=record.error,
        worker=record.worker,
        attempt=record.attempt,
        cancel_requested=record.cancel_requested,
        best=None if record.best is None else _best_view(record.best),
    )


def _best_view(best: dict[str, Any]) -> schemas.BestSummary:
    # The worker stores the pipeline's interval, which is at the default confidence.
    interval = best.get("low_ms") is not None and best.get("high_ms") is not None
    return schemas.BestSummary(**best, interval_confidence=DEFAULT_CONFIDENCE if interval else None)


router = APIRouter(prefix=API_PREFIX, responses=_ERRORS)


# ---------------------------------------------------------------------- searches
@router.post("/searches", status_code=202, tags=["searches"], dependencies=[Writer])
def create_search(body: schemas.SearchCreate, services: ServicesDep) -> schemas.Job:
    """Queue a search; a worker runs it. Returns the job (status ``queued``)."""
    from nasvit.searching.request import SearchRequest

    try:
        # The search request's own checks: the budget's text (with a percentile), a known
        # space and controller, the confidence.
        parsed = SearchRequest.from_mapping(body.model_dump())
        if body.evaluations > services.settings.max_evaluations:
            raise NasvitError(
                f"evaluations must be at most {services.settings.max_evaluations} on this "
                f"server, got {body.evaluations}"
            )
        if body.device is not None:
            services.latency_store().device(body.device)
    except NasvitError as exc:
        raise HTTPException(422, str(exc)) from None
    request = {
        "space": body.space,
        "budget": body.budget,
        "budget_ms": parsed.budget_ms,
        # Stored parsed: a worker reads them back, and job views show them.
        "budget_confidence": parsed.budget_confidence,
        "budget_percentile": parsed.budget_percentile,
        "device": body.device,
        "controller": body.controller,
        "evaluations": body.evaluations,
        "seed": body.seed,
        "workers": body.workers,
    }
    return job_view(services.jobs.create(request))


@router.get("/searches", tags=["searches"], dependencies=[Reader])
def list_searches(
    services: ServicesDep,
    status: Annotated[schemas.JobStatus | None, Query(description="Only this status.")] = None,
    offset: Annotated[int, Query(ge=0, le=10**9)] = 0,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
) -> schemas.JobPage:
    """Jobs, newest first."""
    records, total = services.jobs.list(status, offset, limit)
    return schemas.JobPage(
        items=[job_view(r) for r in records], total=total, offset=offset, limit=limit
    )


def _job(services: Services, job_id: str) -> JobRecord:
    try:
        return services.jobs.get(job_id)
    except JobNotFoundError as exc:
        raise HTTPException(404, str(exc)) from None


@router.get("/searches/{job_id}", tags=["searches"], dependencies=[Reader])
def get_search(job_id: str, services: ServicesDep) -> schemas.Job:
    """Status, progress, timings, error and (once finished) the best architecture."""
    return job_view(_job(services, job_id))


@router.post("/searches/{job_id}/cancel", status_code=202, tags=["searches"], dependencies=[Writer])
def cancel_search(job_id: str, services: ServicesDep) -> schemas.Job:
    """Cancel a job: a queued one at once, a running one within a worker heartbeat."""
    try:
        return job_view(services.jobs.cancel(job_id))
    except JobNotFoundError as exc:
        raise HTTPException(404, str(exc)) from None
    except JobStateError as exc:
        raise HTTPException(409, str(exc)) from None


@router.get("/searches/{job_id}/pareto", tags=["searches"], dependencies=[Reader])
def get_pareto(job_id: str, services: ServicesDep) -> schemas.Pareto:
    """The front so far (updated after every evaluated batch) and the hypervolume curve."""
    record = _job(services, job_id)
    folder = services.job_folder(record.id)
    trials = services.results.trials(folder)
    report = services.results.report(folder) if record.status in FINISHED else None
    summary = pareto_summary(trials, report, record.request["budget_ms"])
    return schemas.Pareto.model_validate(summary)


@router.get("/searches/{job_id}/trials", tags=["searches"], dependencies=[Reader])
def get_trials(
    job_id: str,
    services: ServicesDep,
    offset: Annotated[int, Query(ge=0, le=10**9)] = 0,
    limit: Annotated[int, Query(ge=1, le=5000)] = 500,
) -> schemas.PointPage:
    """Every evaluated candidate in evaluation order, with ``dominated`` and measured latency."""
    record = _job(services, job_id)
    folder = services.job_folder(record.id)
    trials = services.results.trials(folder)
    report = services.results.report(folder) if record.status in FINISHED else None
    page = points(trials, report)[offset : offset + limit]
    return schemas.PointPage.model_validate(
        {"items": page, "total": len(trials), "offset": offset, "limit": limit}
    )


@router.get(
    "/searches/{job_id}/artifacts/{name}",
    tags=["searches"],
    dependencies=[Reader],
    response_class=FileResponse,
    responses={200: {"content": {"application/octet-stream": {}}}},
)
def get_artifact(job_id: str, name: str, services: ServicesDep) -> FileResponse:
    """A file the search wrote: ``best.onnx`` (404 until the job succeeded), ``best.json``,
    ``report.json``, ``pareto.csv``, ``trials.csv``, ``trials.jsonl``."""
    record = _job(services, job_id)
    if name not in ARTIFACTS:
        raise HTTPException(404, f"no artifact '{name}'; known: {', '.join(sorted(ARTIFACTS))}")
    path = services.job_folder(record.id) / name
    final = name != "trials.jsonl"  # the others are written when the search is done
    if not path.is_file() or (final and record.status != "succeeded"):
        raise HTTPException(404, f"search {record.id} has no {name} yet (status {record.status})")
    return FileResponse(path, media_type=ARTIFACTS[name], filename=f"{record.id}-{name}")


# ---------------------------------------------------------------------- spaces
@router.get("/spaces", tags=["spaces"], dependencies=[Reader])
def list_spaces() -> list[schemas.SpaceSummary]:
    from nasvit.search_spaces import get_space, space_names

    return [schemas.SpaceSummary.model_validate(get_space(n).describe()) for n in space_names()]


@router.get("/spaces/{name}", tags=["spaces"], dependencies=[Reader])
def get_space_detail(name: str) -> schemas.SpaceDetail:
    from nasvit.search_spaces import get_space

    try:
        space = get_space(name)
    except UnknownNameError as exc:
        raise HTTPException(404, str(exc)) from None
    summary = space.describe()
    summary["reference_archs"] = [
        {"name": ref, "short": space.short_string(arch), "arch": arch.to_dict()}
        for ref, arch in space.reference_archs().items()
    ]
    summary["constraints"] = [str(c) for c in summary.get("constraints", [])]
    return schemas.SpaceDetail.model_validate(summary)


# ---------------------------------------------------------------------- devices
def _device_view(store: Any, record: Any) -> schemas.Device:
    validation = store.latest_validation(record.id)
    return schemas.Device(
        id=record.id,
        name=record.name,
        entries=store.entry_count(record.id),
        fingerprint=record.fingerprint.to_dict(),
        latest_validation=None if validation is None else _validation_view(validation),
    )


def _figures(stats: Any) -> schemas.ErrorFigures:
    return schemas.ErrorFigures.model_validate(stats, from_attributes=True)


def _validation_view(validation: Any) -> schemas.ValidationSummary:
    """What a validation run says about the table's predictions (a ValidationRecord)."""
    model = validation.error_model
    ceiling = validation.noise_ceiling
    bands = None
    if model is not None:
        bands = [schemas.BandFigures.model_validate(band) for band in model.describe_bands()]
    return schemas.ValidationSummary(
        space=validation.space,
        created_at=validation.created_at,
        validated=model is not None,
        prediction_path=validation.prediction_path,
        prediction_error=_figures(validation.prediction_error),
        raw=_figures(validation.raw),
        noise_ceiling=None if ceiling is None else _figures(ceiling),
        bands=bands,
    )


def _device(store: Any, device_id: str) -> Any:
    try:
        return store.device(device_id)
    except UnknownNameError as exc:
        raise HTTPException(404, str(exc)) from None


@router.get("/devices", tags=["devices"], dependencies=[Reader])
def list_devices(services: ServicesDep) -> list[schemas.Device]:
    store = services.latency_store()
    return [_device_view(store, record) for record in store.devices()]


@router.get("/devices/{device_id}/table", tags=["devices"], dependencies=[Reader])
def get_device_table(
    device_id: str,
    services: ServicesDep,
    offset: Annotated[int, Query(ge=0, le=10**9)] = 0,
    limit: Annotated[int, Query(ge=1, le=10_000)] = 1000,
) -> schemas.EntryPage:
    """The device's measured block latencies (by key), a page at a time."""
    store = services.latency_store()
    record = _device(store, device_id)
    entries = sorted(store.entries(record.id).values(), key=lambda e: e.key)
    page = [
        schemas.Entry.model_validate(e, from_attributes=True)
        for e in entries[offset : offset + limit]
    ]
    return schemas.EntryPage(
        device=_device_view(store, record),
        items=page,
        total=len(entries),
        offset=offset,
        limit=limit,
    )


@router.post("/devices/{device_id}/measurements", tags=["devices"], dependencies=[Writer])
def upload_measurements(
    device_id: str, body: schemas.MeasurementUpload, services: ServicesDep
) -> schemas.UploadResult:
    """Add measured block latencies to a device's table. The upload is validated as a whole
    (like ``nasvit latency import``) before anything is written; keys the device already has
    keep their first measurement."""
    from nasvit.latency_db.transfer import FORMAT, import_table

    store = services.latency_store()
    record = _device(store, device_id)
    document = {
        "format": FORMAT,
        "device": {
            "name": record.name,
            "id": record.id,
            "fingerprint": record.fingerprint.to_dict(),
        },
        "entries": [entry.model_dump(exclude_none=True) for entry in body.entries],
    }
    with tempfile.TemporaryDirectory(prefix="nasvit-upload-") as folder:
        path = Path(folder) / "measurements.json"
        path.write_text(json.dumps(document))
        try:
            result = import_table(store, path, device_name=record.name)
        except NasvitError as exc:
            raise HTTPException(422, str(exc)) from None
    return schemas.UploadResult(
        device=result.device, inserted=result.inserted, skipped=result.skipped
    )


# ---------------------------------------------------------------------- health
@router.get(
    "/health", tags=["service"], responses={503: {"model": schemas.Health}}, response_model=None
)
def health(services: ServicesDep) -> schemas.Health | JSONResponse:
    """Liveness and database reachability (no token needed)."""
    try:
        counts = services.jobs.counts()
    except SQLAlchemyError as exc:
        body = schemas.Health(
            status="degraded",
            database=f"error: {type(exc).__name__}",
            version=__version__,
            jobs={},
        )
        return JSONResponse(body.model_dump(), status_code=503)
    return schemas.Health(status="ok", database="ok", version=__version__, jobs=counts)


# ---------------------------------------------------------------------- errors
def _location(loc: tuple[Any, ...]) -> str:
    parts = [str(p) for p in loc if p != "body"] if len(loc) > 1 else [str(p) for p in loc]
    return ".".join(parts) or "body"


async def _validation_error(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    errors = exc.errors()
    malformed = next((e for e in errors if e.get("type") == "json_invalid"), None)
    if malformed is not None:
        reason = (malformed.get("ctx") or {}).get("error", "not JSON")
        return JSONResponse({"detail": f"malformed JSON body: {reason}"}, status_code=400)
    messages = [f"{_location(tuple(e.get('loc', ())))}: {e.get('msg')}" for e in errors[:5]]
    return JSONResponse({"detail": "; ".join(messages)}, status_code=422)


async def _nasvit_error(_request: Request, exc: Exception) -> JSONResponse:
    # A user-fixable error that a handler did not map itself: still the client's to fix.
    return JSONResponse({"detail": str(exc)}, status_code=422)


class BodySizeLimit:
    """Refuse request bodies over ``max_bytes`` with 413: at once when Content-Length says so,
    else as soon as the streamed body passes the limit (chunked uploads)."""

    def __init__(self, app: Callable[..., Awaitable[None]], max_bytes: int):
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        declared = headers.get(b"content-length")
        if declared is not None:
            try:
                size = int(declared)
            except ValueError:
                await self._refuse(send, 400, "invalid Content-Length header")
                return
            if size > self.max_bytes:
                await self._refuse(send, 413, self._too_large(size))
                return
        received = 0

        async def limited_receive() -> dict:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise HTTPException(413, self._too_large(received))
            return message

        await self.app(scope, limited_receive, send)

    def _too_large(self, size: int) -> str:
        return f"request body of {size} bytes is over this server's limit of {self.max_bytes}"

    @staticmethod
    async def _refuse(send: Callable, status: int, detail: str) -> None:
        body = json.dumps({"detail": detail}).encode()
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                    (b"connection", b"close"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})


# ---------------------------------------------------------------------- factory
def create_app(settings: Settings | None = None) -> FastAPI:
    """The API (and dashboard) over the database ``settings`` names, migrated to head
    (default: the ``NASVIT_*`` environment's settings). Everything the app opens (the job
    tables, the latency store) is opened with these settings."""
    settings = load_settings(settings)
    database = Database.open(settings.resolved_database_url)
    services = Services(settings, database, JobStore(database), TokenStore(database))

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        yield
        services.close()

    app = FastAPI(
        title="nasvit",
        version=__version__,
        summary="Latency-aware neural architecture search as a job service.",
        description=(
            "Submit searches, watch their Pareto fronts, download the chosen ONNX model. "
            "Write endpoints need `Authorization: Bearer <token>` "
            "(`nasvit token create NAME`)."
        ),
        lifespan=lifespan,
    )
    app.state.services = services
    app.include_router(router)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(NasvitError, _nasvit_error)
    app.add_middleware(BodySizeLimit, max_bytes=settings.max_body_bytes)
    if settings.cors_origins:  # closed unless origins are named
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST"],
            allow_headers=["Authorization", "Content-Type"],
        )
    from nasvit.server.dashboard import mount_dashboard

    mount_dashboard(app)
    return app


def app_from_environment() -> FastAPI:
    """``create_app`` with settings from ``NASVIT_*`` (uvicorn's factory for several processes)."""
    return create_app(load_settings())

"""The REST API: ``create_app(settings)`` builds the FastAPI application.

Searches never run inside a request: ``POST /api/v1/searches`` stores a queued job and a
``nasvit worker`` process claims and runs it (see :mod:`nasvit.server.worker`). Handlers are
plain ``def`` functions (FastAPI runs them in its thread pool) over synchronous SQLAlchemy.

Bad input always gets a 4xx with ``{"detail": "<what was wrong>"}``: 400 malformed JSON, 401
missing or wrong token (or the wrong kind of token), 403 another device's device token, 404
unknown job / space / device / artifact, 409 an action the job's status (or an agent's lease)
forbids, 413 an oversized body, 422 a well-formed request with unusable values.

The OpenAPI document states what the server enforces: bounds and patterns of every body, and
each operation's real security (read endpoints: optional while reads are public).
Devices and agents have their own routers (:mod:`nasvit.server.devices`,
:mod:`nasvit.server.agents`).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, FastAPI, HTTPException, Query, Request
from fastapi.dependencies.models import Dependant
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import FileResponse, JSONResponse
from fastapi.routing import APIRoute
from sqlalchemy.exc import SQLAlchemyError

from nasvit import __version__
from nasvit.errors import NasvitError, UnknownNameError
from nasvit.guarantees import DEFAULT_CONFIDENCE
from nasvit.server import agents, devices, schemas
from nasvit.server.jobs import FINISHED, JobNotFoundError, JobRecord, JobStateError
from nasvit.server.results import pareto_summary, points
from nasvit.server.services import (
    API_TOKEN_SCHEME,
    Reader,
    Services,
    ServicesDep,
    Writer,
    require_reader,
)
from nasvit.settings import Settings, load_settings

# Re-exported: callers and tests reach the services of an app through this module.
__all__ = ["API_PREFIX", "Services", "app_from_environment", "create_app"]

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
#: A search of several devices: the comparison of its devices, next to their folders.
DEVICES_ARTIFACT = "devices.json"


_ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": schemas.Problem} for code in (400, 401, 403, 404, 409, 413, 422)
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
        devices=_devices_view(request, record.best),
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
    fields = {k: v for k, v in best.items() if k in schemas.BestSummary.model_fields}
    return schemas.BestSummary(
        **fields, interval_confidence=DEFAULT_CONFIDENCE if interval else None
    )


def _devices_view(
    request: dict[str, Any], best: dict[str, Any] | None
) -> list[schemas.DeviceResult] | None:
    """A multi-device job's devices, with each one's best once the worker recorded it (the
    worker stores them under the job's ``best["devices"]``, by name)."""
    targets = request.get("devices")
    if not targets:
        return None
    bests = (best or {}).get("devices") or {}
    return [
        schemas.DeviceResult(
            name=target["name"],
            budget_ms=target["budget_ms"],
            budget_confidence=request.get("budget_confidence"),
            budget_percentile=target.get("budget_percentile"),
            best=None if target["name"] not in bests else _best_view(bests[target["name"]]),
        )
        for target in targets
    ]


def _device_folder(services: Services, record: JobRecord, device: str | None) -> tuple[Path, float]:
    """The folder holding the results asked for and the budget they were judged by: the job's
    folder, or for a search of several devices the named device's (422 when the device is
    missing or not one of the job's)."""
    folder = services.job_folder(record.id)
    targets = record.request.get("devices")
    if not targets:
        if device is not None and device != record.request.get("device"):
            raise HTTPException(
                422, f"search {record.id} targets one device: omit device, got {device!r}"
            )
        return folder, float(record.request["budget_ms"])
    names = [target["name"] for target in targets]
    by_name = {target["name"]: target for target in targets}
    if device is None or device not in by_name:
        asked = "name one" if device is None else f"{device!r} is not one of them"
        raise HTTPException(
            422,
            f"search {record.id} targets several devices ({', '.join(names)}): {asked} with "
            "?device=NAME",
        )
    return folder / device, float(by_name[device]["budget_ms"])


DeviceQuery = Annotated[
    str | None,
    Query(
        min_length=1,
        max_length=200,
        description="For a search of several devices: which device's results (required there).",
    ),
]


router = APIRouter()


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
        for target in parsed.devices:
            services.latency_store().device(target.name)
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
    if parsed.devices:
        # Stored parsed, with the percentile each device's budget holds at; the worker hands
        # name and budget back to the pipeline.
        request["devices"] = [
            {
                "name": target.name,
                "budget_ms": target.budget_ms,
                "budget_percentile": parsed.for_device(target).budget_percentile,
            }
            for target in parsed.devices
        ]
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
def get_pareto(job_id: str, services: ServicesDep, device: DeviceQuery = None) -> schemas.Pareto:
    """The front so far (updated after every evaluated batch) and the hypervolume curve; for a
    search of several devices, the front of the device named by ``device``."""
    record = _job(services, job_id)
    folder, budget_ms = _device_folder(services, record, device)
    trials = services.results.trials(folder)
    report = services.results.report(folder) if record.status in FINISHED else None
    summary = pareto_summary(trials, report, budget_ms)
    return schemas.Pareto.model_validate(summary)


@router.get("/searches/{job_id}/trials", tags=["searches"], dependencies=[Reader])
def get_trials(
    job_id: str,
    services: ServicesDep,
    offset: Annotated[int, Query(ge=0, le=10**9)] = 0,
    limit: Annotated[int, Query(ge=1, le=5000)] = 500,
    device: DeviceQuery = None,
) -> schemas.PointPage:
    """Every evaluated candidate in evaluation order, with ``dominated`` and measured latency
    (for a search of several devices, as judged for ``device``)."""
    record = _job(services, job_id)
    folder, _ = _device_folder(services, record, device)
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
def get_artifact(
    job_id: str, name: str, services: ServicesDep, device: DeviceQuery = None
) -> FileResponse:
    """A file the search wrote: ``best.onnx`` (404 until the job succeeded), ``best.json``,
    ``report.json``, ``pareto.csv``, ``trials.csv``, ``trials.jsonl``. A search of several
    devices has them per device (``device`` names which) and ``devices.json`` (no ``device``)
    comparing the devices, served once the job finished, also when it failed on a device."""
    record = _job(services, job_id)
    several = bool(record.request.get("devices"))
    if name == DEVICES_ARTIFACT and several and device is None:
        path, suffix = services.job_folder(record.id) / name, name
    elif name not in ARTIFACTS:
        known = sorted(ARTIFACTS) + ([DEVICES_ARTIFACT] if several else [])
        raise HTTPException(404, f"no artifact '{name}'; known: {', '.join(known)}")
    else:
        folder, _ = _device_folder(services, record, device)
        path = folder / name
        suffix = name if not several else f"{device}-{name}"
    final = name != "trials.jsonl"  # the others are written when the search is done
    # A search of several devices that failed on one device still wrote the others' results
    # and devices.json (which says why the failing one has none).
    done = record.status == "succeeded" or (several and record.status in FINISHED)
    if not path.is_file() or (final and not done):
        raise HTTPException(404, f"search {record.id} has no {suffix} yet (status {record.status})")
    media_type = ARTIFACTS.get(name, "application/json")
    return FileResponse(path, media_type=media_type, filename=f"{record.id}-{suffix}")


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


def api_routes() -> Iterator[tuple[str, APIRoute]]:
    """Every API endpoint: its full path template and its route (the routers this module
    mounts under :data:`API_PREFIX`)."""
    for mounted in (router, devices.router, agents.router):
        for route in mounted.routes:
            if isinstance(route, APIRoute):
                yield API_PREFIX + route.path_format, route


class OptionsAllow:
    """Answer ``OPTIONS`` on an API path with 204 and the ``Allow`` header listing every method
    of the path. (Starlette answers 405 naming only the first route's method: ``/searches``
    would claim POST alone.)

    A CORS preflight that gets here found no CORS middleware in front (it answers the ones it
    is configured for): cross-origin calls are closed, so it gets 405, still with ``Allow``."""

    def __init__(self, app: Callable[..., Awaitable[None]]):
        self.app = app
        self.routes = [route for _, route in api_routes()]

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http" or scope["method"] != "OPTIONS":
            await self.app(scope, receive, send)
            return
        methods = set(self._methods(scope["path"]))
        if not methods:
            await self.app(scope, receive, send)  # not an API path: 404 as usual
            return
        if b"access-control-request-method" in dict(scope.get("headers") or []):
            detail = "cross-origin requests are not enabled on this server (NASVIT_CORS_ORIGINS)"
            await _answer(send, 405, ", ".join(sorted(methods)), json.dumps({"detail": detail}))
        else:
            await _answer(send, 204, ", ".join(sorted(methods | {"OPTIONS"})), "")

    def _methods(self, path: str) -> Iterator[str]:
        if not path.startswith(API_PREFIX + "/"):
            return
        tail = path[len(API_PREFIX) :]
        for route in self.routes:
            if route.path_regex.match(tail):
                yield from route.methods or ()


async def _answer(send: Callable, status: int, allow: str, detail: str) -> None:
    body = detail.encode()
    headers = [(b"allow", allow.encode())]
    if body:
        headers += [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def _depends_on(dependant: Dependant, call: Callable[..., Any]) -> bool:
    return any(d.call is call or _depends_on(d, call) for d in dependant.dependencies)


def document_enforcement(app: FastAPI, settings: Settings) -> None:
    """Make the OpenAPI document state what this server checks beyond the bodies' own types:

    - each read endpoint's real security: a token is optional (``[{}, {"HTTPBearer": []}]``)
      while reads are public, required when ``read_access`` is ``token`` (FastAPI marks
      every endpoint with a bearer dependency as requiring it);
    - a search's known spaces and controllers (``enum``), and this server's
      ``max_evaluations`` (``maximum``), which the handler checks.
    """
    from nasvit.search_spaces import space_names
    from nasvit.searching.controllers import CONTROLLERS

    generate = app.openapi
    reading: list[dict[str, list[str]]] = [{API_TOKEN_SCHEME: []}]
    if settings.read_access == "public":
        reading = [{}, *reading]  # {}: no token is also fine
    readers = [
        (path, route.methods or set())
        for path, route in api_routes()
        if route.include_in_schema and _depends_on(route.dependant, require_reader)
    ]

    def openapi() -> dict[str, Any]:
        schema = generate()  # cached by FastAPI; the edits below are idempotent
        for path, methods in readers:
            for method in methods:
                schema["paths"][path][method.lower()]["security"] = reading
        search = schema["components"]["schemas"]["SearchCreate"]["properties"]
        search["space"]["enum"] = space_names()
        search["controller"]["enum"] = list(CONTROLLERS)
        search["evaluations"]["maximum"] = settings.max_evaluations
        return schema

    app.openapi = openapi  # type: ignore[method-assign]


# ---------------------------------------------------------------------- factory
def create_app(settings: Settings | None = None) -> FastAPI:
    """The API (and dashboard) over the database ``settings`` names, migrated to head
    (default: the ``NASVIT_*`` environment's settings). Everything the app opens (the job
    tables, the latency store) is opened with these settings."""
    settings = load_settings(settings)
    services = Services.open(settings)

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        yield
        services.close()

    reads = "need no token" if settings.read_access == "public" else "need an API token too"
    app = FastAPI(
        title="nasvit",
        version=__version__,
        summary="Latency-aware neural architecture search as a job service.",
        description=(
            "Submit searches, watch their Pareto fronts, download the chosen ONNX model. "
            "Write endpoints need `Authorization: Bearer <token>` "
            f"(`nasvit token create NAME`); on this server, read endpoints {reads}. "
            "Device agents (`nasvit agent`) use a device token (`nasvit device add NAME`) "
            "on the agents endpoints."
        ),
        lifespan=lifespan,
    )
    app.state.services = services
    app.include_router(router, prefix=API_PREFIX, responses=_ERRORS)
    app.include_router(devices.router, prefix=API_PREFIX, responses=_ERRORS)
    app.include_router(agents.router, prefix=API_PREFIX, responses=_ERRORS)
    document_enforcement(app, settings)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(NasvitError, _nasvit_error)
    app.add_middleware(OptionsAllow)
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

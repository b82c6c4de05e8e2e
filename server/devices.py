"""Devices: their tables, validation figures and agents (``GET /devices``), measurement
uploads, device tokens, and a device's queue of work items (for its agent).

A device is *agent-managed* once an agent registered it (``POST /agents/register``, see
:mod:`nasvit.server.agents`): its status is "online" while the agent calls in within the
service's ``device_timeout_seconds``, "silent" after that; other devices are "local" (their
tables are measured where nasvit runs).
"""

from __future__ import annotations

import json
import tempfile
from datetime import datetime, timedelta
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Query

from nasvit.errors import NasvitError, UnknownNameError
from nasvit.latency_db.records import DeviceRecord, ValidationRecord
from nasvit.server import schemas
from nasvit.server.jobs import DEVICE_TOKEN_PREFIX
from nasvit.server.services import (
    Credentials,
    DeviceName,
    Reader,
    Services,
    ServicesDep,
    Writer,
    api_bearer,
    check_api_token,
    check_device_token,
    device_bearer,
    owned_device,
)
from nasvit.sql import utcnow

#: Unfinished work items a queue view lists.
QUEUE_VIEW_ITEMS = 100

router = APIRouter()


def _figures(stats: Any) -> schemas.ErrorFigures:
    return schemas.ErrorFigures.model_validate(stats, from_attributes=True)


def validation_view(validation: ValidationRecord) -> schemas.ValidationSummary:
    """What a validation run says about the table's predictions."""
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


def device_status(record: DeviceRecord, timeout_seconds: float, now: datetime) -> str:
    """ "local" without an agent; "online" while its agent called in within the timeout."""
    if not record.agent_managed:
        return "local"
    seen = record.last_seen_at
    if seen is not None and now - seen <= timedelta(seconds=timeout_seconds):
        return "online"
    return "silent"


def device_view(services: Services, record: DeviceRecord) -> schemas.Device:
    store = services.latency_store()
    queue = services.work_queue()
    validation = store.latest_validation(record.id)
    summary = None if validation is None else validation_view(validation)
    widths = [band.interval_width for band in (summary.bands or [])] if summary else []
    timeout = services.settings.device_timeout_seconds
    return schemas.Device(
        id=record.id,
        name=record.name,
        entries=store.entry_count(record.id),
        fingerprint=record.fingerprint.to_dict(),
        latest_validation=summary,
        agent_managed=record.agent_managed,
        status=device_status(record, timeout, utcnow()),  # type: ignore[arg-type]
        last_seen_at=record.last_seen_at,
        last_agent=record.last_agent,
        coverage={
            space: schemas.Coverage(done=done, total=total)
            for space, (done, total) in sorted(queue.coverage(record.id).items())
        },
        queue=queue.queue_summary(record.id),
        prediction_mape=None if summary is None else summary.prediction_error.mape,
        interval_width=max(widths) if widths else None,
    )


def _device(services: Services, device_id: str) -> DeviceRecord:
    try:
        return services.latency_store().device(device_id)
    except UnknownNameError as exc:
        raise HTTPException(404, str(exc)) from None


# ---------------------------------------------------------------------- reads
@router.get("/devices", tags=["devices"], dependencies=[Reader])
def list_devices(services: ServicesDep) -> list[schemas.Device]:
    """Every device, with its table's size, latest validation, agent status, coverage per
    space and queue of work items."""
    return [device_view(services, record) for record in services.latency_store().devices()]


@router.get("/devices/{device_id}/table", tags=["devices"], dependencies=[Reader])
def get_device_table(
    device_id: str,
    services: ServicesDep,
    offset: Annotated[int, Query(ge=0, le=10**9)] = 0,
    limit: Annotated[int, Query(ge=1, le=10_000)] = 1000,
) -> schemas.EntryPage:
    """The device's measured block latencies (by key), a page at a time."""
    store = services.latency_store()
    record = _device(services, device_id)
    entries = sorted(store.entries(record.id).values(), key=lambda e: e.key)
    page = [
        schemas.Entry.model_validate(e, from_attributes=True)
        for e in entries[offset : offset + limit]
    ]
    return schemas.EntryPage(
        device=device_view(services, record),
        items=page,
        total=len(entries),
        offset=offset,
        limit=limit,
    )


# ---------------------------------------------------------------------- uploads
async def require_uploader(
    services: ServicesDep,
    api: Annotated[Credentials, Depends(api_bearer)],
    device: Annotated[Credentials, Depends(device_bearer)],
) -> str | None:
    """An API token (None), or a device token (its device name): either may upload."""
    credentials = api or device
    if credentials is not None and credentials.credentials.startswith(DEVICE_TOKEN_PREFIX):
        return check_device_token(services, credentials)
    check_api_token(services, credentials)
    return None


@router.post("/devices/{device_id}/measurements", tags=["devices"])
def upload_measurements(
    device_id: str,
    body: schemas.MeasurementUpload,
    services: ServicesDep,
    uploader: Annotated[str | None, Depends(require_uploader)],
) -> schemas.UploadResult:
    """Add measured block latencies to a device's table, with an API token or the device's
    own device token. The upload is validated as a whole (like ``nasvit latency import``)
    before anything is written; keys the device already has keep their first measurement."""
    from nasvit.latency_db.transfer import FORMAT, import_table

    store = services.latency_store()
    if uploader is None:
        record = _device(services, device_id)
    else:
        record = owned_device(services, device_id, uploader)
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


# ---------------------------------------------------------------------- device tokens
@router.post("/device-tokens", status_code=201, tags=["devices"], dependencies=[Writer])
def create_device_token(
    body: schemas.DeviceTokenCreate, services: ServicesDep
) -> schemas.DeviceTokenCreated:
    """Issue a device token for an agent: it registers the device ``device`` and does that
    device's work, nothing else. The token is shown once."""
    try:
        label, token = services.device_tokens.create(body.device, body.label)
    except NasvitError as exc:
        raise HTTPException(409, str(exc)) from None
    return schemas.DeviceTokenCreated(device=body.device, label=label, token=token)


# ---------------------------------------------------------------------- the queue
@router.get("/devices/{device_id}/work", tags=["agents"])
def get_work(device_id: str, services: ServicesDep, device: DeviceName) -> schemas.WorkQueueView:
    """The device's work items (its own device token only): counts per kind and status, and
    the first unfinished items in the order agents claim them."""
    record = owned_device(services, device_id, device)
    queue = services.work_queue()
    unfinished = queue.items(record.id, None, QUEUE_VIEW_ITEMS)  # claim order
    return schemas.WorkQueueView(
        summary=queue.queue_summary(record.id),
        items=[
            schemas.WorkItemView(
                id=item.id,
                kind=item.kind,  # type: ignore[arg-type]
                key=item.key,
                status=item.status,  # type: ignore[arg-type]
                model_sha256=item.model_sha256,
                input_shape=list(item.input_shape),
                params=item.params,
            )
            for item in unfinished
        ],
    )

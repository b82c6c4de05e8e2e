"""The agent protocol: an agent on a device registers it, claims leases of work items, times
them and uploads the results (``nasvit agent``, :mod:`nasvit.agent`).

Every endpoint but the bundle takes the device's own device token; its work items live in the
latency database (:class:`nasvit.latency_db.work.WorkQueue`), which the pipeline fills. A lease
is the unit of work: the items in it are the agent's until the lease runs out (the agent renews
it while it works), and an upload either records all its results or none (409 for a lease that
ran out or items that are not the lease's, 422 for results that are not measurements).
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, HTTPException, Path, Query, Response

from nasvit.errors import NasvitError, UnknownNameError
from nasvit.latency_db.builder import DEFAULT_BATCH_SIZE
from nasvit.latency_db.device import DeviceFingerprint
from nasvit.latency_db.records import DeviceRecord
from nasvit.server import schemas
from nasvit.server.services import DeviceName, Services, ServicesDep, owned_device

#: The drift check an agent applies to each batch of blocks (as ``nasvit profile`` does).
DRIFT_TOLERANCE = 0.05
MAX_REMEASURES = 2
AGENT_BATCH_SIZE = DEFAULT_BATCH_SIZE
#: Most copies of a block a streamed-timing model may hold.
MAX_COPIES = 64

router = APIRouter(tags=["agents"])
LeaseId = Annotated[
    str, Path(min_length=1, max_length=64, pattern=r"^[0-9A-Za-z_-]+$", description="A lease.")
]
Sha256 = Annotated[str, Path(pattern=r"^[0-9a-f]{64}$", description="A model's SHA-256 (hex).")]


def _conflict(reason: str) -> HTTPException:
    return HTTPException(409, reason)


def _named(services: Services, name_or_id: str) -> DeviceRecord | None:
    try:
        return services.latency_store().device(name_or_id)
    except UnknownNameError:
        return None


@router.post("/agents/register")
def register_agent(
    body: schemas.AgentRegister, services: ServicesDep, device: DeviceName
) -> schemas.AgentConfig:
    """Register the token's device with the agent's fingerprint (created on first use) and
    return how to work. 409 when the name is registered with another fingerprint (the
    differing fields are named: a new configuration is a new device, with its own token), or
    the fingerprint belongs to another device name."""
    fingerprint = DeviceFingerprint(**body.fingerprint.model_dump())
    store = services.latency_store()
    record = _named(services, device)
    if record is not None and record.name != device:
        record = None  # the name looked like another device's id
    if record is not None and record.id != fingerprint.device_id:
        known = record.fingerprint.to_dict()
        differing = [k for k, v in fingerprint.to_dict().items() if known.get(k) != v]
        raise _conflict(
            f"device '{device}' is registered with another fingerprint (differing: "
            f"{', '.join(differing)}); another configuration is another device: give it a "
            "device token of its own"
        )
    if record is None:
        other = _named(services, fingerprint.device_id)
        if other is not None:
            raise _conflict(
                f"this fingerprint is device '{other.name}' already; register it with a "
                f"device token for '{other.name}'"
            )
        try:
            record = store.ensure_device(fingerprint, device)
        except NasvitError as exc:  # another registration took the name meanwhile
            raise _conflict(str(exc)) from None
    services.work_queue().register_agent(record.id, body.agent)
    return schemas.AgentConfig(
        device_id=record.id,
        device=record.name,
        lease_seconds=services.settings.device_lease_seconds,
        poll_seconds=services.settings.agent_poll_seconds,
        protocol=services.protocol,
        network_protocol=services.network_protocol,
        drift_tolerance=DRIFT_TOLERANCE,
        max_remeasures=MAX_REMEASURES,
        batch_size=AGENT_BATCH_SIZE,
    )


def _registered(services: Services, device_id: str, device: str) -> DeviceRecord:
    record = owned_device(services, device_id, device)
    if not record.agent_managed:
        raise _conflict(
            f"device '{record.name}' has no registered agent: POST /api/v1/agents/register first"
        )
    return record


@router.post(
    "/devices/{device_id}/work/leases",
    status_code=201,
    response_model=schemas.Lease,
    responses={204: {"description": "Nothing to do now: ask again after poll_seconds."}},
)
def claim_work(
    device_id: str, body: schemas.LeaseCreate, services: ServicesDep, device: DeviceName
) -> schemas.Lease | Response:
    """Lease up to ``max_items`` work items of one kind (201), or 204 when there is nothing to
    do. Two agents never hold the same item; items of a lease that ran out go to the next
    claim."""
    record = _registered(services, device_id, device)
    queue = services.work_queue()
    seconds = services.settings.device_lease_seconds
    lease = queue.claim(record.id, body.agent, body.max_items, seconds)
    if lease is None:  # the claim still marked the device seen: an idle agent is alive
        return Response(status_code=204)
    return schemas.Lease(
        lease_id=lease.id,
        expires_at=lease.expires_at,
        call_overhead_ms=lease.call_overhead_ms,
        items=[
            schemas.LeaseItem(
                id=item.id,
                kind=item.kind,  # type: ignore[arg-type]
                key=item.key,
                model_sha256=item.model_sha256,
                input_shape=list(item.input_shape),
                params=item.params,
                extra_sha256=item.extra_sha256,
                reference_sha256=item.reference_sha256,
            )
            for item in lease.items
        ],
    )


@router.post("/devices/{device_id}/work/leases/{lease_id}/renew")
def renew_lease(
    device_id: str, lease_id: LeaseId, services: ServicesDep, device: DeviceName
) -> schemas.LeaseRenewed:
    """Extend a live lease by the lease time (409 once it ran out: its items may be another
    agent's by now)."""
    from nasvit.latency_db.work import LeaseError

    record = _registered(services, device_id, device)
    seconds = services.settings.device_lease_seconds
    try:
        expires = services.work_queue().renew(record.id, lease_id, seconds)
    except LeaseError as exc:
        raise _conflict(str(exc)) from None
    return schemas.LeaseRenewed(expires_at=expires)


@router.post("/devices/{device_id}/work/leases/{lease_id}/results")
def upload_results(
    device_id: str,
    lease_id: LeaseId,
    body: schemas.ResultsUpload,
    services: ServicesDep,
    device: DeviceName,
) -> schemas.ResultsRecorded:
    """Record results of the lease's items, all or nothing. Uploading the same results again
    (a retry after a lost answer) records nothing and says so in ``already``."""
    from nasvit.latency_db.work import LeaseError, WorkResultError

    record = _registered(services, device_id, device)
    results = [result.model_dump() for result in body.results]
    try:
        done = services.work_queue().complete(record.id, lease_id, results)
    except LeaseError as exc:
        raise _conflict(str(exc)) from None
    except WorkResultError as exc:
        raise HTTPException(422, str(exc)) from None
    return schemas.ResultsRecorded(
        recorded=done.recorded, already=done.already, inserted_entries=done.inserted_entries
    )


@router.get(
    "/devices/{device_id}/work/models/{sha256}",
    response_class=Response,
    responses={200: {"content": {"application/octet-stream": {}}, "description": "ONNX bytes."}},
)
def get_model(
    device_id: str,
    sha256: Sha256,
    services: ServicesDep,
    device: DeviceName,
    copies: Annotated[
        int,
        Query(
            ge=1,
            le=MAX_COPIES,
            description="More than 1: a model of that many copies, each with its own weights "
            "(a streamed timing's model).",
        ),
    ] = 1,
) -> Response:
    """An ONNX model one of the device's work items names (404 for any other)."""
    record = owned_device(services, device_id, device)
    try:
        model = services.work_queue().model(record.id, sha256)
    except UnknownNameError as exc:
        raise HTTPException(404, str(exc)) from None
    if copies > 1:
        from nasvit.latency_db.replicate import replicate_onnx

        try:
            model = replicate_onnx(model, copies)
        except ValueError as exc:  # e.g. a model of several inputs
            raise HTTPException(422, f"cannot replicate model {sha256}: {exc}") from None
    return Response(model, media_type="application/octet-stream")


@router.get(
    "/agent.pyz",
    response_class=Response,
    responses={
        200: {"content": {"application/zip": {}}, "description": "The agent as one zipapp."},
        503: {"model": schemas.Problem},
    },
)
def get_agent_bundle(services: ServicesDep) -> Response:
    """The agent as a single file (no token needed): ``python nasvit-agent.pyz --server URL
    --token T``. It needs only Python, numpy and onnxruntime on the device."""
    try:
        bundle = services.agent_bundle()
    except ImportError as exc:
        raise HTTPException(
            503, f"this installation cannot build the agent bundle: {exc}"
        ) from None
    return Response(
        bundle,
        media_type="application/zip",
        headers={"Content-Disposition": 'attachment; filename="nasvit-agent.pyz"'},
    )

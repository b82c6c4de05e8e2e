"""What every router of the API shares: the :class:`Services` of an app and the dependencies
that check tokens.

Three kinds of caller:

- readers: nobody, or an API token when ``read_access`` is ``token``;
- writers: an API token (``nsv_...``, ``nasvit token create``);
- agents: a device token (``nsd_...``, ``nasvit device add``), which acts for one device only.

The two token kinds never stand in for each other, and the prefix says which one a request
carried, so a wrong kind gets a 401 that says so rather than "invalid token".
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

from fastapi import Depends, HTTPException, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from nasvit.agent.measurement import MeasurementProtocol
from nasvit.errors import UnknownNameError
from nasvit.server.db import Database
from nasvit.server.jobs import (
    DEVICE_TOKEN_PREFIX,
    TOKEN_PREFIX,
    DeviceTokenStore,
    JobStore,
    TokenStore,
)
from nasvit.server.results import ResultReader
from nasvit.settings import Settings

if TYPE_CHECKING:
    from nasvit.latency_db import LatencyStore
    from nasvit.latency_db.records import DeviceRecord
    from nasvit.latency_db.work import WorkQueue

#: Names of the two security schemes in the OpenAPI document.
API_TOKEN_SCHEME = "HTTPBearer"
DEVICE_TOKEN_SCHEME = "DeviceToken"


@dataclass
class Services:
    """What the handlers use; one per app, on ``app.state.services``.

    ``protocol`` and ``network_protocol`` are what registering agents are told to time with:
    the defaults of ``nasvit profile``, or the quick protocol with the ``agent_protocol``
    setting ``quick`` (smoke tests)."""

    settings: Settings
    database: Database
    jobs: JobStore
    tokens: TokenStore
    device_tokens: DeviceTokenStore
    results: ResultReader = field(default_factory=ResultReader)
    protocol: MeasurementProtocol = field(default_factory=MeasurementProtocol)
    network_protocol: MeasurementProtocol = field(default_factory=MeasurementProtocol.network)
    _latency: Any = None
    _work: Any = None
    _agent_bundle: bytes | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @classmethod
    def open(cls, settings: Settings) -> Services:
        database = Database.open(settings.resolved_database_url)
        quick = settings.agent_protocol == "quick"
        return cls(
            settings,
            database,
            JobStore(database),
            TokenStore(database),
            DeviceTokenStore(database),
            protocol=MeasurementProtocol.quick() if quick else MeasurementProtocol(),
            network_protocol=MeasurementProtocol.quick()
            if quick
            else MeasurementProtocol.network(),
        )

    def latency_store(self) -> LatencyStore:
        """The latency database (opened, and migrated, on first use)."""
        with self._lock:
            if self._latency is None:
                from nasvit.latency_db import LatencyStore

                self._latency = LatencyStore.open(self.settings.resolved_database_url)
            store: LatencyStore = self._latency
            return store

    def work_queue(self) -> WorkQueue:
        """The devices' work items (in the latency database)."""
        store = self.latency_store()
        with self._lock:
            if self._work is None:
                from nasvit.latency_db.work import WorkQueue

                self._work = WorkQueue(store)
            queue: WorkQueue = self._work
            return queue

    def agent_bundle(self) -> bytes:
        """The agent as one zipapp (built once per process: it only changes with nasvit)."""
        with self._lock:
            if self._agent_bundle is None:
                from nasvit.agent.bundle import build_zipapp

                self._agent_bundle = build_zipapp()
            return self._agent_bundle

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
    services: Services = request.app.state.services
    return services


ServicesDep = Annotated[Services, Depends(get_services)]
api_bearer = HTTPBearer(
    auto_error=False,
    scheme_name=API_TOKEN_SCHEME,
    description="An API token from `nasvit token create NAME`, sent as `Authorization: Bearer`.",
)
device_bearer = HTTPBearer(
    auto_error=False,
    scheme_name=DEVICE_TOKEN_SCHEME,
    description="A device token (`nsd_...`) from `nasvit device add NAME` or "
    "`POST /api/v1/device-tokens`, sent as `Authorization: Bearer`; it acts for its device only.",
)
Credentials = HTTPAuthorizationCredentials | None
_CHALLENGE = {"WWW-Authenticate": "Bearer"}


def _unauthorized(reason: str) -> HTTPException:
    return HTTPException(401, reason, headers=_CHALLENGE)


def check_api_token(services: Services, credentials: Credentials) -> str:
    """The name of the live API token the request carries (401 with the reason otherwise)."""
    if credentials is None:
        raise _unauthorized(
            "missing API token: send 'Authorization: Bearer <token>' "
            "(create one with `nasvit token create NAME`)"
        )
    if credentials.credentials.startswith(DEVICE_TOKEN_PREFIX):
        raise _unauthorized(
            "a device token only works on its device's agent endpoints; this endpoint needs "
            "an API token (`nasvit token create NAME`)"
        )
    name = services.tokens.verify(credentials.credentials)
    if name is None:
        raise _unauthorized("invalid or revoked API token")
    return name


def check_device_token(services: Services, credentials: Credentials) -> str:
    """The device name the request's live device token acts for (401 with the reason
    otherwise)."""
    if credentials is None:
        raise _unauthorized(
            "missing device token: send 'Authorization: Bearer <device token>' "
            "(create one with `nasvit device add NAME`)"
        )
    if credentials.credentials.startswith(TOKEN_PREFIX):
        raise _unauthorized(
            "an API token is not a device token: agent endpoints need the device's own token "
            "(`nasvit device add NAME`)"
        )
    device = services.device_tokens.verify(credentials.credentials)
    if device is None:
        raise _unauthorized("invalid or revoked device token")
    return device


async def require_writer(
    services: ServicesDep, credentials: Annotated[Credentials, Depends(api_bearer)]
) -> str:
    """Write endpoints always need a live API token."""
    return check_api_token(services, credentials)


async def require_reader(
    services: ServicesDep, credentials: Annotated[Credentials, Depends(api_bearer)]
) -> str | None:
    """Read endpoints need a token only when ``read_access`` is ``token`` (the OpenAPI
    document says which, see ``app.document_enforcement``)."""
    if services.settings.read_access == "public":
        return None
    return check_api_token(services, credentials)


async def require_device_token(
    services: ServicesDep, credentials: Annotated[Credentials, Depends(device_bearer)]
) -> str:
    """Agent endpoints: the device name of a live device token."""
    return check_device_token(services, credentials)


Reader = Depends(require_reader)
Writer = Depends(require_writer)
DeviceName = Annotated[str, Depends(require_device_token)]


def owned_device(services: Services, device_id: str, token_device: str) -> DeviceRecord:
    """The device ``device_id`` (an id or a name) if the token's device is that one: 403 for
    another device's endpoints, 404 when the token's own device has not registered yet."""
    store = services.latency_store()
    try:
        record = store.device(device_id)
    except UnknownNameError:
        if device_id != token_device:
            raise HTTPException(
                403, f"this device token belongs to device '{token_device}'"
            ) from None
        raise HTTPException(
            404,
            f"device '{token_device}' is not registered yet: its agent registers it with "
            "POST /api/v1/agents/register",
        ) from None
    if record.name != token_device:
        raise HTTPException(403, f"this device token belongs to device '{token_device}'")
    return record

"""Jobs, API tokens and device tokens in SQL: the service layer under the HTTP API and the workers.

No FastAPI here: the API, the workers and the CLI all call these methods.

Job life cycle::

    queued --claim--> running --finish--> succeeded | failed | cancelled
       \\--cancel--> cancelled       \\--lease expires / release--> claimed again (resumes)

A claim sets ``worker``, bumps ``attempt`` and sets a lease; the worker renews the lease with
:meth:`JobStore.heartbeat`. Every write a worker makes is conditional on (job, worker, attempt)
still being the current claim, so a worker that lost its lease cannot clobber its successor.
Claiming is row-level: ``SELECT ... FOR UPDATE SKIP LOCKED`` on PostgreSQL (concurrent workers
skip each other's candidate rows), a write transaction on SQLite (one writer at a time), and on
both the claim itself is a conditional UPDATE whose row count says whether it won.
"""

from __future__ import annotations

import hashlib
import re
import secrets
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, cast

from sqlalchemy import CursorResult, Result, and_, bindparam, func, or_, select, true, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from nasvit.errors import NasvitError, UnknownNameError
from nasvit.server.db import Database, DeviceTokenRow, JobRow, TokenRow
from nasvit.sql import aware, utcnow

STATUSES = ("queued", "running", "succeeded", "failed", "cancelled")
FINISHED = frozenset({"succeeded", "failed", "cancelled"})
TOKEN_PREFIX = "nsv_"
DEVICE_TOKEN_PREFIX = "nsd_"
#: A device name a device token may act for: it appears in URLs, so URL-safe characters only.
DEVICE_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,199}$"
_JOBS = JobRow.__table__
_SELECT_ONE = select(_JOBS).where(_JOBS.c.id == bindparam("job_id"))
_TOKENS = TokenRow.__table__
_SELECT_TOKEN = select(_TOKENS.c.name, _TOKENS.c.revoked_at).where(
    _TOKENS.c.sha256 == bindparam("sha256")
)
_DEVICE_TOKENS = DeviceTokenRow.__table__
_SELECT_DEVICE_TOKEN = select(_DEVICE_TOKENS.c.device, _DEVICE_TOKENS.c.revoked_at).where(
    _DEVICE_TOKENS.c.sha256 == bindparam("sha256")
)


def _rowcount(result: Result[Any]) -> int:
    """Rows an UPDATE matched (``Session.execute`` types every result as a plain Result)."""
    return cast(CursorResult[Any], result).rowcount


class JobNotFoundError(NasvitError):
    def __init__(self, job_id: str):
        super().__init__(f"no search with id '{job_id}'")


class JobStateError(NasvitError):
    """An action that the job's current status does not allow."""


@dataclass(frozen=True)
class JobRecord:
    id: str
    status: str
    request: dict[str, Any]
    progress: dict[str, Any] | None
    best: dict[str, Any] | None
    error: str | None
    worker: str | None
    attempt: int
    lease_expires_at: datetime | None
    cancel_requested: bool
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None

    @classmethod
    def from_row(cls, row: Any) -> JobRecord:
        """From an ORM row or a Core result row (same attribute names)."""
        return cls(
            id=row.id,
            status=row.status,
            request=dict(row.request),
            progress=None if row.progress is None else dict(row.progress),
            best=None if row.best is None else dict(row.best),
            error=row.error,
            worker=row.worker,
            attempt=row.attempt,
            lease_expires_at=aware(row.lease_expires_at),
            cancel_requested=bool(row.cancel_requested),
            created_at=aware(row.created_at),
            started_at=aware(row.started_at),
            finished_at=aware(row.finished_at),
        )


@dataclass(frozen=True)
class Claim:
    """A worker's hold on a job: the key of every write the worker makes to it."""

    job: JobRecord
    worker: str
    attempt: int


class JobStore:
    def __init__(self, database: Database):
        self.db = database

    # ------------------------------------------------------------------ API side
    def create(self, request: dict[str, Any]) -> JobRecord:
        now = utcnow()
        row = JobRow(
            id=uuid.uuid4().hex,
            status="queued",
            request=request,
            progress=None,
            attempt=0,
            cancel_requested=False,
            created_at=now,
            updated_at=now,
        )
        with self.db.write() as session:
            session.add(row)
            session.flush()
            return JobRecord.from_row(row)

    def get(self, job_id: str) -> JobRecord:
        # Core, not the ORM: status polling is the hottest path of the service, and a plain
        # SELECT on a pooled connection costs a quarter of an ORM session round trip.
        with self.db.read_engine.connect() as connection:
            row = connection.execute(_SELECT_ONE, {"job_id": job_id}).one_or_none()
        if row is None:
            raise JobNotFoundError(job_id)
        return JobRecord.from_row(row)

    def list(
        self, status: str | None = None, offset: int = 0, limit: int = 50
    ) -> tuple[list[JobRecord], int]:
        """A page of jobs, newest first, and how many match in all."""
        condition = _JOBS.c.status == status if status else true()
        with self.db.read_engine.connect() as connection:
            count = select(func.count()).select_from(_JOBS).where(condition)
            total = int(connection.execute(count).scalar_one())
            rows = connection.execute(
                select(_JOBS)
                .where(condition)
                .order_by(_JOBS.c.created_at.desc(), _JOBS.c.id)
                .offset(offset)
                .limit(limit)
            )
            return [JobRecord.from_row(r) for r in rows], total

    def counts(self) -> dict[str, int]:
        with self.db.read_engine.connect() as connection:
            rows = connection.execute(select(_JOBS.c.status, func.count()).group_by(_JOBS.c.status))
            found = {status: int(count) for status, count in rows}
        return {status: found.get(status, 0) for status in STATUSES}

    def cancel(self, job_id: str) -> JobRecord:
        """A queued job is cancelled at once; a running one is flagged, and its worker stops
        and marks it cancelled at its next check (within a heartbeat)."""
        now = utcnow()
        with self.db.write() as session:
            row = session.get(JobRow, job_id)
            if row is None:
                raise JobNotFoundError(job_id)
            if row.status in FINISHED:
                raise JobStateError(f"search {job_id} already {row.status}; nothing to cancel")
            row.cancel_requested = True
            row.updated_at = now
            if row.status == "queued":
                row.status, row.finished_at = "cancelled", now
            session.flush()
            return JobRecord.from_row(row)

    # ------------------------------------------------------------------ worker side
    def claim(self, worker: str, lease_seconds: float) -> Claim | None:
        """Take the oldest queued job, or a running one whose lease expired; None if none."""
        self._settle_abandoned_cancellations()
        now = utcnow()
        claimable = and_(
            JobRow.cancel_requested.is_(False),
            or_(
                JobRow.status == "queued",
                and_(JobRow.status == "running", JobRow.lease_expires_at < now),
            ),
        )
        with self.db.write() as session:
            query = (
                select(JobRow.id).where(claimable).order_by(JobRow.created_at, JobRow.id).limit(1)
            )
            if self.db.dialect == "postgresql":
                query = query.with_for_update(skip_locked=True)
            job_id = session.scalar(query)
            if job_id is None:
                return None
            won = session.execute(
                update(JobRow)
                .where(JobRow.id == job_id, claimable)
                .values(
                    status="running",
                    worker=worker,
                    attempt=JobRow.attempt + 1,
                    lease_expires_at=now + timedelta(seconds=lease_seconds),
                    started_at=func.coalesce(JobRow.started_at, now),
                    updated_at=now,
                    error=None,
                )
                .execution_options(synchronize_session=False)
            )
            if _rowcount(won) != 1:
                return None
            row = session.get(JobRow, job_id, populate_existing=True)
            assert row is not None  # just updated
            record = JobRecord.from_row(row)
            return Claim(record, worker, record.attempt)

    def _settle_abandoned_cancellations(self) -> None:
        """A job flagged for cancellation whose worker died will never be stopped by it:
        mark it cancelled instead of resuming it."""
        now = utcnow()
        with self.db.write() as session:
            query = select(JobRow.id).where(
                JobRow.status == "running",
                JobRow.cancel_requested.is_(True),
                JobRow.lease_expires_at < now,
            )
            if self.db.dialect == "postgresql":
                query = query.with_for_update(skip_locked=True)
            ids = list(session.scalars(query))
            if ids:
                session.execute(
                    update(JobRow)
                    .where(JobRow.id.in_(ids))
                    .values(status="cancelled", finished_at=now, updated_at=now)
                    .execution_options(synchronize_session=False)
                )

    def _owned(self, claim: Claim) -> Any:
        return and_(
            JobRow.id == claim.job.id,
            JobRow.worker == claim.worker,
            JobRow.attempt == claim.attempt,
            JobRow.status == "running",
        )

    def heartbeat(self, claim: Claim, lease_seconds: float) -> tuple[bool, bool]:
        """Renew the lease. Returns (still ours, cancellation requested)."""
        now = utcnow()
        with self.db.write() as session:
            renewed = session.execute(
                update(JobRow)
                .where(self._owned(claim))
                .values(lease_expires_at=now + timedelta(seconds=lease_seconds), updated_at=now)
                .execution_options(synchronize_session=False)
            )
            cancel = session.scalar(
                select(JobRow.cancel_requested).where(JobRow.id == claim.job.id)
            )
            return _rowcount(renewed) == 1, bool(cancel)

    def set_progress(self, claim: Claim, stage: str, done: int, total: int) -> bool:
        """Record progress; False if the job is no longer this claim's."""
        with self.db.write() as session:
            return self._update_owned(
                session, claim, progress={"stage": stage, "done": done, "total": total}
            )

    def finish(
        self,
        claim: Claim,
        status: str,
        error: str | None = None,
        best: dict[str, Any] | None = None,
    ) -> bool:
        """Mark the claimed job finished; False if it was no longer ours (nothing written)."""
        assert status in FINISHED
        now = utcnow()
        with self.db.write() as session:
            return self._update_owned(
                session,
                claim,
                status=status,
                error=error,
                best=best,
                finished_at=now,
                lease_expires_at=None,
            )

    def release(self, claim: Claim) -> bool:
        """Give a job back to the queue (worker shutting down): the next claim resumes it."""
        with self.db.write() as session:
            return self._update_owned(session, claim, status="queued", lease_expires_at=None)

    def _update_owned(self, session: Session, claim: Claim, **values: Any) -> bool:
        result = session.execute(
            update(JobRow)
            .where(self._owned(claim))
            .values(updated_at=utcnow(), **values)
            .execution_options(synchronize_session=False)
        )
        return _rowcount(result) == 1


# ---------------------------------------------------------------------- tokens
@dataclass(frozen=True)
class TokenRecord:
    name: str
    created_at: datetime
    revoked_at: datetime | None


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class TokenStore:
    """API tokens, stored as SHA-256 digests: a token is 32 random bytes, so a plain fast hash
    is enough (no dictionary to attack) and lets a request be checked with one indexed lookup."""

    def __init__(self, database: Database):
        self.db = database

    def create(self, name: str) -> str:
        """Issue a token; the plain text is returned once and never stored."""
        name = name.strip()
        if not name or len(name) > 100:
            raise NasvitError("a token name must have 1 to 100 characters")
        token = TOKEN_PREFIX + secrets.token_urlsafe(32)
        try:
            with self.db.write() as session:
                session.add(TokenRow(name=name, sha256=_digest(token), created_at=utcnow()))
        except IntegrityError:
            raise NasvitError(f"a token named '{name}' exists; choose another name") from None
        return token

    def list(self) -> list[TokenRecord]:
        with self.db.read() as session:
            rows = session.scalars(select(TokenRow).order_by(TokenRow.created_at, TokenRow.id))
            return [TokenRecord(r.name, aware(r.created_at), aware(r.revoked_at)) for r in rows]

    def revoke(self, name: str) -> None:
        with self.db.write() as session:
            row = session.scalar(select(TokenRow).where(TokenRow.name == name))
            if row is None:
                known = session.scalars(select(TokenRow.name)).all()
                raise UnknownNameError("token", name, known)
            if row.revoked_at is None:
                row.revoked_at = utcnow()

    def verify(self, token: str) -> str | None:
        """The name of the live token ``token`` is, or None."""
        if not token.startswith(TOKEN_PREFIX):
            return None
        with self.db.read_engine.connect() as connection:
            row = connection.execute(_SELECT_TOKEN, {"sha256": _digest(token)}).one_or_none()
        if row is None or row.revoked_at is not None:
            return None
        return row.name


# ---------------------------------------------------------------------- device tokens
@dataclass(frozen=True)
class DeviceTokenRecord:
    name: str  # the token's label
    device: str  # the device name it acts for
    created_at: datetime
    revoked_at: datetime | None


def check_device_name(name: str) -> str:
    """``name`` if a device token may act for it (see :data:`DEVICE_NAME_PATTERN`)."""
    if not re.fullmatch(DEVICE_NAME_PATTERN, name):
        raise NasvitError(
            f"device name {name!r} cannot have a device token: use 1 to 200 letters, digits, "
            "'.', '_' or '-', starting with a letter or digit"
        )
    return name


class DeviceTokenStore:
    """Device tokens (``nsd_...``), stored as SHA-256 digests like API tokens. A device token
    lets an agent register its device and do that device's work, and nothing else: it is never
    an API token, and an API token is never a device token (the prefixes tell them apart
    before any lookup)."""

    def __init__(self, database: Database):
        self.db = database

    def create(self, device: str, label: str | None = None) -> tuple[str, str]:
        """Issue a token for ``device``; returns (its label, the token). The plain text is
        returned once and never stored. The label defaults to the device name, numbered
        (``pi-2``) when the device already has a token."""
        check_device_name(device)
        if label is not None:
            label = label.strip()
            if not label or len(label) > 200:
                raise NasvitError("a device token's label must have 1 to 200 characters")
        token = DEVICE_TOKEN_PREFIX + secrets.token_urlsafe(32)
        try:
            with self.db.write() as session:
                chosen = label or self._free_label(session, device)
                session.add(
                    DeviceTokenRow(
                        name=chosen, device=device, sha256=_digest(token), created_at=utcnow()
                    )
                )
        except IntegrityError:
            # An explicit label in use, or another request took the same default at once.
            taken = label or device
            raise NasvitError(
                f"a device token labelled '{taken}' exists; choose another label"
            ) from None
        return chosen, token

    @staticmethod
    def _free_label(session: Session, device: str) -> str:
        labels = set(
            session.scalars(
                select(DeviceTokenRow.name).where(
                    or_(DeviceTokenRow.name == device, DeviceTokenRow.name.like(f"{device}-%"))
                )
            )
        )
        if device not in labels:
            return device
        number = 2
        while f"{device}-{number}" in labels:
            number += 1
        return f"{device}-{number}"

    def list(self, device: str | None = None) -> list[DeviceTokenRecord]:
        with self.db.read() as session:
            query = select(DeviceTokenRow).order_by(DeviceTokenRow.created_at, DeviceTokenRow.id)
            if device is not None:
                query = query.where(DeviceTokenRow.device == device)
            return [
                DeviceTokenRecord(r.name, r.device, aware(r.created_at), aware(r.revoked_at))
                for r in session.scalars(query)
            ]

    def revoke(self, label: str) -> None:
        with self.db.write() as session:
            row = session.scalar(select(DeviceTokenRow).where(DeviceTokenRow.name == label))
            if row is None:
                known = session.scalars(select(DeviceTokenRow.name)).all()
                raise UnknownNameError("device token", label, known)
            if row.revoked_at is None:
                row.revoked_at = utcnow()

    def verify(self, token: str) -> str | None:
        """The device name the live device token ``token`` acts for, or None."""
        if not token.startswith(DEVICE_TOKEN_PREFIX):
            return None
        with self.db.read_engine.connect() as connection:
            row = connection.execute(_SELECT_DEVICE_TOKEN, {"sha256": _digest(token)}).one_or_none()
        if row is None or row.revoked_at is not None:
            return None
        return str(row.device)

"""The device work queue: timings an agent on a remote device makes for the latency database.

The pipeline (which must not import the server) enqueues work here, the server hands it out to
the device's agents and stores what they send back, so both sides share only this module and
the database. Models travel through the database too (``latency_work_models``,
content-addressed by SHA-256), so no filesystem is shared either.

Item life cycle::

    queued --claim--> leased --complete--> done
                         \\--lease expires--> claimable again (the next claim re-leases it)

Contract:
    - A claim hands out one kind of item (overhead, then networks, then blocks: the
      ``priority`` column, then id order), never the same item to two leases: every claim is a
      conditional UPDATE of rows it selected ``FOR UPDATE SKIP LOCKED`` on PostgreSQL, inside
      the one-writer ``BEGIN IMMEDIATE`` transaction on SQLite.
    - Blocks are not claimable until the device's per-call overhead is known: their streamed
      (cold) timings subtract it.
    - :meth:`WorkQueue.complete` is all or nothing and idempotent: a repeat of an upload that
      was recorded returns ``already`` and stores nothing new; an upload under an expired or
      foreign lease, or with a malformed result, stores nothing.
    - Every write to a device's items first locks the device's row (PostgreSQL), so writers of
      one device never deadlock on each other's item rows; model rows are shared by devices and
      are taken in sha256 order by writers and skipped when locked by the collector.
    - A model is deleted once no unfinished item references it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import uuid
from collections.abc import Collection, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import CursorResult, Result, Select, and_, delete, func, or_, select, update
from sqlalchemy.orm import Session

from nasvit.agent.measurement import Measurement, MeasurementProtocol
from nasvit.errors import NasvitError, UnknownNameError
from nasvit.latency_db.device import DeviceFingerprint
from nasvit.latency_db.models import Device, LatencyEntry, WorkItemRow, WorkModelRow
from nasvit.latency_db.records import NewEntry, timing_values
from nasvit.latency_db.replicate import COLD_PROTOCOL
from nasvit.latency_db.store import LatencyStore, dialect_insert
from nasvit.nn.blocks import BLOCK_KEY_SCHEMA
from nasvit.sql import aware, utcnow

WORK_KINDS = ("overhead", "block", "network")
WORK_STATUSES = ("queued", "leased", "done")
#: Claim order (lower first): the overhead gates blocks, and networks are what a waiting search
#: needs next, so they go before the bulk of a table's blocks.
PRIORITY = {"overhead": 0, "network": 1, "block": 2}
#: Leases an item gets at most: an item whose agents never upload it (a model the device's
#: runtime cannot run, an agent that dies on it) is given up after that, and whoever waits on
#: it is told (:meth:`WorkQueue.given_up`) instead of waiting for ever.
MAX_ATTEMPTS = 5
#: The batch names of overhead and block items; network batches are uuids, one per enqueue.
OVERHEAD_BATCH, BLOCKS_BATCH = "overhead", "blocks"
_KEY_LENGTH = 512  # the key column's length
_CHUNK = 500  # rows per INSERT / IN (...) list: far below every backend's parameter limit
_CHUNK_BYTES = 16 * 2**20  # model bytes per INSERT: networks can be tens of MB each
#: The field holding each kind's (main) timing in a result.
_TIMING_FIELD = {"block": "warm", "overhead": "overhead", "network": "reading"}
_TIMING_REQUIRED = ("median_ms", "iqr_ms", "n", "sessions")
_TIMING_OPTIONAL = ("session_medians_ms",)


class LeaseError(NasvitError):
    """An upload or renewal under a lease that is unknown, expired, of another device, or that
    names items outside the lease (the server answers 409)."""


class WorkResultError(NasvitError):
    """A result that does not fit its item (the server answers 422)."""


@dataclass(frozen=True)
class WorkItem:
    """One item as a lease hands it out, and as the queue view lists it.

    Attributes:
        id: the item's id; results name it.
        kind: ``"overhead"``, ``"block"`` or ``"network"``.
        key: the block key; ``"overhead"``; ``"{batch}:{network index}:{reading}"``.
        model_sha256: the model to time (download it with :meth:`WorkQueue.model`).
        input_shape: the model's input shape.
        params: block: ``{"cold", "weight_bytes", "replace", "reference_shape", "block_kind"}``;
            overhead: ``{"copies"}``; network: ``{}``, or ``{"protocol"}`` (the fields of a
            :class:`~nasvit.agent.measurement.MeasurementProtocol`) when the caller set one.
        extra_sha256: overhead: the chained model.
        reference_sha256: blocks: the drift-check reference block's model.
        status: ``"queued"``, ``"leased"`` or ``"done"``.
        result: the validated result once done.
        attempts: how many times it was claimed.
        leased_by: the agent holding (or that last held) it.
        lease_expires_at: when the current lease ends.
    """

    id: int
    kind: str
    key: str
    model_sha256: str
    input_shape: tuple[int, ...]
    params: dict[str, Any]
    extra_sha256: str | None
    reference_sha256: str | None
    status: str
    result: dict[str, Any] | None
    attempts: int = 0
    leased_by: str | None = None
    lease_expires_at: datetime | None = None


@dataclass(frozen=True)
class Lease:
    """Items of one kind handed to one agent until ``expires_at`` (renew to keep them).

    ``call_overhead_ms`` is the device's per-call overhead: streamed block timings need it.
    """

    id: str
    device_id: str
    agent: str
    expires_at: datetime
    items: tuple[WorkItem, ...]
    call_overhead_ms: float | None


@dataclass(frozen=True)
class BlockModel:
    """A block to enqueue: its key and kind (the entry's), exported ONNX model and input shape,
    its weight bytes, and whether it also gets a cold (streamed) timing."""

    key: str
    kind: str
    model: bytes
    input_shape: tuple[int, ...]
    weight_bytes: int
    cold: bool


@dataclass(frozen=True)
class NetworkJob:
    """A whole network to time: its ONNX model and input shape."""

    model: bytes
    input_shape: tuple[int, ...]


@dataclass(frozen=True)
class CompleteResult:
    """What an upload did: items recorded now, items this lease had already recorded (a
    repeated upload), and latency entries inserted (fewer than blocks when they existed)."""

    recorded: int
    already: int
    inserted_entries: int


def sha256_of(data: bytes) -> str:
    """The content address of a model."""
    return hashlib.sha256(data).hexdigest()


def _rowcount(result: Result[Any]) -> int:
    """Rows an UPDATE matched (``Session.execute`` types every result as a plain Result)."""
    rowcount: int = result.rowcount if isinstance(result, CursorResult) else -1
    return rowcount


def _chunks(values: Sequence[Any], size: int = _CHUNK) -> Iterator[Sequence[Any]]:
    for start in range(0, len(values), size):
        yield values[start : start + size]


def _shape(shape: Iterable[int], what: str) -> list[int]:
    dims = list(shape)
    if not dims or any(isinstance(d, bool) or not isinstance(d, int) or d < 1 for d in dims):
        raise NasvitError(f"{what}: an input shape is a non-empty list of positive integers")
    return dims


def _item(row: WorkItemRow) -> WorkItem:
    return WorkItem(
        id=row.id,
        kind=row.kind,
        key=row.key,
        model_sha256=row.model_sha256,
        input_shape=tuple(row.input_shape),
        params=dict(row.params),
        extra_sha256=row.extra_sha256,
        reference_sha256=row.reference_sha256,
        status=row.status,
        result=None if row.result is None else dict(row.result),
        attempts=row.attempts,
        leased_by=row.leased_by,
        lease_expires_at=aware(row.lease_expires_at),
    )


# ---------------------------------------------------------------------- result validation
@dataclass(frozen=True)
class _Result:
    """A validated result: the kind's main timing (block: warm), a block's cold timing, and a
    network reading's runs."""

    timing: Measurement
    cold: Measurement | None = None
    runs_ms: tuple[float, ...] = ()

    def stored(self, kind: str) -> dict[str, Any]:
        """The item's ``result`` column (the upload's fields, normalised, without the id)."""
        stored: dict[str, Any] = {_TIMING_FIELD[kind]: _timing_dict(self.timing)}
        if kind == "block":
            stored["cold"] = None if self.cold is None else _timing_dict(self.cold)
        if kind == "network":
            stored["runs_ms"] = list(self.runs_ms)
        return stored


def _timing_dict(timing: Measurement) -> dict[str, Any]:
    return {
        "median_ms": timing.median_ms,
        "iqr_ms": timing.iqr_ms,
        "n": timing.n,
        "sessions": timing.sessions,
        "session_medians_ms": list(timing.session_medians_ms),
    }


def _number(value: object, where: str, zero_ok: bool) -> float:
    """A finite number > 0 (>= 0 with ``zero_ok``): a timing that a database can hold and a
    sum of blocks can use (NaN would poison every prediction it enters)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise WorkResultError(f"{where} must be a finite number, got {value!r}")
    if value < 0 or (value == 0 and not zero_ok):
        raise WorkResultError(f"{where} must be {'>= 0' if zero_ok else '> 0'}, got {value!r}")
    return float(value)


def _count(value: object, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise WorkResultError(f"{where} must be an integer >= 1, got {value!r}")
    return value


def _fields(
    data: object, where: str, required: Collection[str], optional: Collection[str] = ()
) -> dict[str, Any]:
    """The fields of a result object; a field set to null counts as absent (a schema that
    dumps every optional field sends them)."""
    if not isinstance(data, Mapping):
        raise WorkResultError(f"{where} must be an object, got {type(data).__name__}")
    given = {str(k): v for k, v in data.items() if v is not None}
    missing = [name for name in required if name not in given]
    if missing:
        raise WorkResultError(f"{where} lacks {', '.join(missing)}")
    unknown = sorted(set(given) - set(required) - set(optional))
    if unknown:
        raise WorkResultError(f"{where} has unknown fields: {', '.join(unknown)}")
    return given


def _timing(data: object, where: str, zero_ok: bool = False) -> Measurement:
    fields = _fields(data, where, _TIMING_REQUIRED, _TIMING_OPTIONAL)
    medians = fields.get("session_medians_ms", [])
    if not isinstance(medians, (list, tuple)):
        raise WorkResultError(f"{where}.session_medians_ms must be a list")
    return Measurement(
        median_ms=_number(fields["median_ms"], f"{where}.median_ms", zero_ok),
        iqr_ms=_number(fields["iqr_ms"], f"{where}.iqr_ms", zero_ok=True),
        n=_count(fields["n"], f"{where}.n"),
        sessions=_count(fields["sessions"], f"{where}.sessions"),
        session_medians_ms=tuple(
            _number(m, f"{where}.session_medians_ms[{i}]", zero_ok) for i, m in enumerate(medians)
        ),
    )


def _check_result(kind: str, params: Mapping[str, Any], data: object, item_id: int) -> _Result:
    """Validate one uploaded result against its item's kind (and a block's ``cold`` param)."""
    where = f"result for item {item_id}"
    if kind == "block":
        fields = _fields(data, where, ("item_id", "warm"), ("cold",))
        cold = fields.get("cold")
        if cold is None and params.get("cold"):
            raise WorkResultError(f"{where} lacks the cold timing its block asked for")
        return _Result(
            timing=_timing(fields["warm"], f"{where}: warm"),
            cold=None if cold is None else _timing(cold, f"{where}: cold"),
        )
    if kind == "overhead":
        fields = _fields(data, where, ("item_id", "overhead"))
        # The overhead is a difference of two timings: it may be 0, never negative.
        return _Result(timing=_timing(fields["overhead"], f"{where}: overhead", zero_ok=True))
    fields = _fields(data, where, ("item_id", "reading", "runs_ms"))
    runs = fields["runs_ms"]
    if not isinstance(runs, (list, tuple)) or not runs:
        raise WorkResultError(f"{where}: runs_ms must be a non-empty list")
    return _Result(
        timing=_timing(fields["reading"], f"{where}: reading"),
        runs_ms=tuple(_number(r, f"{where}: runs_ms[{i}]", False) for i, r in enumerate(runs)),
    )


def _result_ids(results: Sequence[Mapping[str, Any]]) -> list[int]:
    """Each result's item id, checked before anything is read: ints, each named once."""
    if not results:
        raise WorkResultError("an upload needs at least one result")
    ids: list[int] = []
    for position, result in enumerate(results):
        item_id = result.get("item_id") if isinstance(result, Mapping) else None
        if isinstance(item_id, bool) or not isinstance(item_id, int):
            raise WorkResultError(f"result {position} has no integer item_id")
        ids.append(item_id)
    repeated = sorted({i for i in ids if ids.count(i) > 1})
    if repeated:
        raise WorkResultError(f"items named more than once: {repeated}")
    return ids


def _profiler_name(fingerprint: DeviceFingerprint) -> str:
    """The profiler name a local build on this device would store (agents run onnxruntime)."""
    return "onnxruntime-cuda" if "cuda" in fingerprint.provider.lower() else "onnxruntime-cpu"


# ---------------------------------------------------------------------- the queue
class WorkQueue:
    """Work items of agent-managed devices, in the latency store's database."""

    def __init__(self, store: LatencyStore):
        self.store = store
        self._postgres = store.engine.dialect.name == "postgresql"

    # ------------------------------------------------------------------ helpers
    def _lock_device(self, session: Session, device_id: str) -> Device:
        """The device's row, locked until commit on PostgreSQL (see the module docstring);
        :class:`UnknownNameError` if there is none."""
        query = select(Device).where(Device.id == device_id)
        if self._postgres:
            query = query.with_for_update()
        row = session.scalar(query)
        if row is None:
            known = session.scalars(select(Device.name)).all()
            raise UnknownNameError("device", device_id, known)
        return row

    def _put_models(self, session: Session, models: Mapping[str, bytes]) -> None:
        """Store models by sha256. An upsert, not insert-or-ignore: updating an existing row
        locks it, so the collector (which skips locked rows) cannot delete a model between
        this insert and the commit of the items that need it; sha256 order keeps two writers
        from locking each other's rows crosswise."""
        insert = dialect_insert(session)
        now = utcnow()
        rows: list[dict[str, Any]] = [
            {"sha256": sha, "data": models[sha], "size": len(models[sha]), "created_at": now}
            for sha in sorted(models)
        ]
        start = 0
        while start < len(rows):
            end, size = start, 0
            while (
                end < len(rows) and end - start < _CHUNK and (end == start or size < _CHUNK_BYTES)
            ):
                size += int(rows[end]["size"])
                end += 1
            statement = insert(WorkModelRow).values(rows[start:end])
            statement = statement.on_conflict_do_update(
                index_elements=["sha256"], set_={"size": statement.excluded.size}
            )
            session.execute(statement)
            start = end

    @staticmethod
    def _referenced(session: Session, shas: Sequence[str]) -> set[str]:
        """Which of ``shas`` an unfinished item (of any device) references."""
        found: set[str] = set()
        columns = (WorkItemRow.model_sha256, WorkItemRow.extra_sha256, WorkItemRow.reference_sha256)
        for chunk in _chunks(shas):
            query = select(*columns).where(
                WorkItemRow.status != "done", or_(*(c.in_(chunk) for c in columns))
            )
            for row in session.execute(query):
                found.update(sha for sha in row if sha is not None)
        return found & set(shas)

    def _collect_models(self, session: Session, candidates: Iterable[str | None]) -> int:
        """Delete those of ``candidates`` that no unfinished item references; returns how many.

        Rows another transaction holds (a producer storing the model again) are skipped: that
        producer's items will reference them, and a later collection sees them. The references
        are read again after locking, in a new statement: on PostgreSQL that sees items
        committed since the first read.
        """
        wanted = sorted({sha for sha in candidates if sha})
        referenced = self._referenced(session, wanted)
        orphans = [sha for sha in wanted if sha not in referenced]
        locked: list[str] = []
        for chunk in _chunks(orphans):
            query = select(WorkModelRow.sha256).where(WorkModelRow.sha256.in_(chunk))
            if self._postgres:
                query = query.order_by(WorkModelRow.sha256).with_for_update(skip_locked=True)
            locked.extend(session.scalars(query))
        referenced = self._referenced(session, locked)
        doomed = [sha for sha in locked if sha not in referenced]
        for chunk in _chunks(doomed):
            session.execute(delete(WorkModelRow).where(WorkModelRow.sha256.in_(chunk)))
        return len(doomed)

    def _insert_items(
        self, session: Session, rows: list[dict[str, Any]], requeue_done: bool
    ) -> int:
        """Insert item rows in the given order (ids follow it, and claims follow ids). A row
        whose (device, kind, key) exists is left alone, unless ``requeue_done`` and that item
        is done: then it is queued again with the new row's values. Returns rows inserted or
        re-queued."""
        insert = dialect_insert(session)
        added = 0
        for chunk in _chunks(rows):
            statement = insert(WorkItemRow).values(list(chunk))
            if requeue_done:
                renewed = {c: statement.excluded[c] for c in chunk[0] if c not in ("device_id",)}
                statement = statement.on_conflict_do_update(
                    index_elements=["device_id", "kind", "key"],
                    set_=renewed,
                    where=WorkItemRow.status == "done",
                )
            else:
                statement = statement.on_conflict_do_nothing(
                    index_elements=["device_id", "kind", "key"]
                )
            added += len(session.scalars(statement.returning(WorkItemRow.id)).all())
        return added

    @staticmethod
    def _new_row(device_id: str, kind: str, key: str, batch: str, **values: Any) -> dict[str, Any]:
        if len(key) > _KEY_LENGTH:
            raise NasvitError(f"a work item key has at most {_KEY_LENGTH} characters: {key}")
        return {
            "device_id": device_id,
            "kind": kind,
            "key": key,
            "batch": batch,
            "priority": PRIORITY[kind],
            "status": "queued",
            "lease_id": None,
            "leased_by": None,
            "lease_expires_at": None,
            "attempts": 0,
            "result": None,
            "created_at": utcnow(),
            "finished_at": None,
            "space": None,
            "extra_sha256": None,
            "reference_sha256": None,
        } | values

    # ------------------------------------------------------------------ producers
    def enqueue_overhead(
        self, device_id: str, single: bytes, chained: bytes, shape: Sequence[int], copies: int
    ) -> None:
        """Queue the device's per-call overhead measurement: ``single`` (a tiny block) and
        ``chained`` (``copies`` chained copies of it). A no-op when the overhead is known or
        already queued: a table keeps the overhead it was built with."""
        if copies < 2:
            raise NasvitError("an overhead measurement chains at least 2 copies")
        dims = _shape(shape, "overhead")
        with self.store.transaction() as session:
            device = self._lock_device(session, device_id)
            if device.overhead_ms is not None:
                return
            models = {sha256_of(single): single, sha256_of(chained): chained}
            self._put_models(session, models)
            row = self._new_row(
                device_id,
                "overhead",
                "overhead",
                OVERHEAD_BATCH,
                model_sha256=sha256_of(single),
                extra_sha256=sha256_of(chained),
                input_shape=dims,
                params={"copies": copies},
            )
            # A done overhead item with no overhead on the device (reset by hand): measure again.
            self._insert_items(session, [row], requeue_done=True)
            self._collect_models(session, models)

    def enqueue_blocks(
        self,
        device_id: str,
        blocks: Sequence[BlockModel],
        reference: BlockModel,
        space: str | None,
        replace_keys: Collection[str] = (),
    ) -> int:
        """Queue the blocks the device has no entry for, and those in ``replace_keys`` (their
        entry is overwritten: a stale cold timing); returns how many items were queued.

        Items follow the order of ``blocks`` (claims do too: shuffle them to spread drifts).
        A block already queued or leased is left as it is; a done one is queued again (its
        entry was deleted, or it is to be replaced). ``reference`` is the drift-check block
        each batch of the agent re-times; ``space`` is counted by :meth:`coverage`.
        """
        unique = list({block.key: block for block in blocks}.values())
        replace = set(replace_keys)
        reference_shape = _shape(reference.input_shape, f"reference {reference.key}")
        with self.store.transaction() as session:
            self._lock_device(session, device_id)
            present: set[str] = set()
            entries = LatencyEntry.__table__.c
            for chunk in _chunks([block.key for block in unique]):
                query = select(entries.key).where(
                    entries.device_id == device_id, entries.key.in_(chunk)
                )
                present.update(session.scalars(query))
            wanted = [b for b in unique if b.key not in present or b.key in replace]
            if not wanted:
                return 0
            models = {sha256_of(b.model): b.model for b in (*wanted, reference)}
            self._put_models(session, models)
            rows = [
                self._new_row(
                    device_id,
                    "block",
                    block.key,
                    BLOCKS_BATCH,
                    space=space,
                    model_sha256=sha256_of(block.model),
                    reference_sha256=sha256_of(reference.model),
                    input_shape=_shape(block.input_shape, block.key),
                    params={
                        "cold": block.cold,
                        "weight_bytes": block.weight_bytes,
                        "replace": block.key in replace,
                        "reference_shape": reference_shape,
                        "block_kind": block.kind,
                    },
                )
                for block in wanted
            ]
            added = self._insert_items(session, rows, requeue_done=True)
            # Blocks already queued keep their own models: these copies may be orphans.
            self._collect_models(session, models)
            return added

    def enqueue_networks(
        self,
        device_id: str,
        networks: Sequence[NetworkJob],
        readings: int,
        order: Sequence[Sequence[int]],
        space: str | None,
        *,
        protocol: MeasurementProtocol | None = None,
    ) -> str:
        """Queue ``readings`` timings of each network; returns the batch id to follow with
        :meth:`network_results`.

        ``order[r]`` is the permutation of network indices for reading round ``r``: items are
        created round by round in that order, so claims (in id order) interleave the readings
        as a local measurement does, and a slow spell of the device spreads over all networks.
        ``protocol``, when given, travels in each item's ``params["protocol"]`` (its fields):
        how the agent times that reading; else the agent's network protocol applies.
        """
        if not networks:
            raise NasvitError("no networks to measure")
        if readings < 1 or len(order) != readings:
            raise NasvitError(f"readings ({readings}) must be >= 1, with one order per reading")
        for r, permutation in enumerate(order):
            if sorted(permutation) != list(range(len(networks))):
                raise NasvitError(f"order[{r}] is not a permutation of the network indices")
        batch = uuid.uuid4().hex
        params = {} if protocol is None else {"protocol": dataclasses.asdict(protocol)}
        shas = [sha256_of(network.model) for network in networks]
        shapes = [_shape(n.input_shape, f"network {i}") for i, n in enumerate(networks)]
        rows = [
            self._new_row(
                device_id,
                "network",
                f"{batch}:{index}:{r}",
                batch,
                space=space,
                model_sha256=shas[index],
                input_shape=shapes[index],
                params=params,
            )
            for r, permutation in enumerate(order)
            for index in permutation
        ]
        with self.store.transaction() as session:
            self._lock_device(session, device_id)
            self._put_models(session, {sha: n.model for sha, n in zip(shas, networks, strict=True)})
            self._insert_items(session, rows, requeue_done=False)
        return batch

    def network_results(self, batch: str) -> list[list[dict[str, Any]] | None]:
        """Per network of the batch (by index): its readings' results (``{"reading":
        Timing, "runs_ms": [...]}``) in round order, or None while any reading is unfinished.
        :class:`UnknownNameError` for a batch with no items (never enqueued, or discarded)."""
        with self.store.transaction() as session:
            rows = session.execute(
                select(WorkItemRow.key, WorkItemRow.status, WorkItemRow.result).where(
                    WorkItemRow.batch == batch, WorkItemRow.kind == "network"
                )
            ).all()
        if not rows:
            raise UnknownNameError("network batch", batch, [])
        readings: dict[int, dict[int, dict[str, Any] | None]] = {}
        for key, status, result in rows:
            _, index, reading = key.rsplit(":", 2)
            done = status == "done" and result is not None
            readings.setdefault(int(index), {})[int(reading)] = dict(result) if done else None
        results: list[list[dict[str, Any]] | None] = []
        for index in range(max(readings) + 1):
            rounds = readings.get(index, {})
            values = [rounds[r] for r in sorted(rounds)]
            complete = bool(values) and all(v is not None for v in values)
            results.append([v for v in values if v is not None] if complete else None)
        return results

    def progress(self, device_id: str, kind: str, batch: str | None = None) -> tuple[int, int]:
        """(done, total) items of ``kind`` on the device (of ``batch`` if given)."""
        if kind not in WORK_KINDS:
            raise NasvitError(f"unknown work kind '{kind}'; known: {', '.join(WORK_KINDS)}")
        conditions = [WorkItemRow.device_id == device_id, WorkItemRow.kind == kind]
        if batch is not None:
            conditions.append(WorkItemRow.batch == batch)
        done = func.count().filter(WorkItemRow.status == "done")
        with self.store.transaction() as session:
            row = session.execute(select(done, func.count()).where(*conditions)).one()
        return int(row[0]), int(row[1])

    def discard_batch(self, batch: str) -> None:
        """Drop a network batch's unfinished items (leased ones too: their upload then fails
        with a :class:`LeaseError`) and the models. Done items stay: they record which agent
        took each reading, and when."""
        if batch in (OVERHEAD_BATCH, BLOCKS_BATCH):
            raise NasvitError(f"'{batch}' items are shared by every caller; only networks drop")
        with self.store.transaction() as session:
            devices = session.scalars(
                select(WorkItemRow.device_id).where(WorkItemRow.batch == batch).distinct()
            ).all()
            for device_id in sorted(devices):
                self._lock_device(session, device_id)
            shas = session.scalars(
                select(WorkItemRow.model_sha256).where(WorkItemRow.batch == batch).distinct()
            ).all()
            session.execute(
                delete(WorkItemRow).where(WorkItemRow.batch == batch, WorkItemRow.status != "done")
            )
            self._collect_models(session, shas)

    # ------------------------------------------------------------------ agents
    def register_agent(self, device_id: str, agent: str) -> None:
        """Mark the device agent-managed (from the first registration on) and seen now."""
        now = utcnow()
        with self.store.transaction() as session:
            device = self._lock_device(session, device_id)
            if device.agent_registered_at is None:
                device.agent_registered_at = now
            device.last_seen_at, device.last_agent = now, agent

    def touch(self, device_id: str, agent: str) -> None:
        """Record that ``agent`` talked to the server for the device now."""
        with self.store.transaction() as session:
            device = self._lock_device(session, device_id)
            device.last_seen_at, device.last_agent = utcnow(), agent

    def claim(
        self, device_id: str, agent: str, max_items: int, lease_seconds: float
    ) -> Lease | None:
        """Lease up to ``max_items`` items of one kind to ``agent``: queued ones, or leased
        ones whose lease expired (their agent died); None when there is nothing to do.
        Lowest priority value first, then id; blocks only once the device's overhead is known;
        never an item leased :data:`MAX_ATTEMPTS` times. The device is marked seen either way."""
        if max_items < 1 or not lease_seconds > 0:
            raise NasvitError("a claim needs max_items >= 1 and lease_seconds > 0")
        now = utcnow()
        with self.store.transaction() as session:
            device = self._lock_device(session, device_id)
            device.last_seen_at, device.last_agent = now, agent
            claimable = and_(
                WorkItemRow.device_id == device_id,
                WorkItemRow.attempts < MAX_ATTEMPTS,
                or_(
                    WorkItemRow.status == "queued",
                    and_(WorkItemRow.status == "leased", WorkItemRow.lease_expires_at < now),
                ),
            )
            if device.overhead_ms is None:
                claimable = and_(claimable, WorkItemRow.kind != "block")

            def candidates(query: Select[Any], limit: int) -> Select[Any]:
                query = query.where(claimable)
                query = query.order_by(WorkItemRow.priority, WorkItemRow.id).limit(limit)
                return query.with_for_update(skip_locked=True) if self._postgres else query

            first = session.execute(candidates(select(WorkItemRow.kind), 1)).first()
            if first is None:
                return None
            ids = session.scalars(
                candidates(select(WorkItemRow.id).where(WorkItemRow.kind == first.kind), max_items)
            ).all()
            lease_id = uuid.uuid4().hex
            expires = now + timedelta(seconds=lease_seconds)
            won = session.execute(
                update(WorkItemRow)
                .where(WorkItemRow.id.in_(ids), claimable)  # conditional: a taken item stays
                .values(
                    status="leased",
                    lease_id=lease_id,
                    leased_by=agent,
                    lease_expires_at=expires,
                    attempts=WorkItemRow.attempts + 1,
                )
                .execution_options(synchronize_session=False)
            )
            if _rowcount(won) == 0:
                return None
            rows = session.scalars(
                select(WorkItemRow)
                .where(WorkItemRow.id.in_(ids), WorkItemRow.lease_id == lease_id)
                .order_by(WorkItemRow.priority, WorkItemRow.id)
            ).all()
            return Lease(
                id=lease_id,
                device_id=device_id,
                agent=agent,
                expires_at=expires,
                items=tuple(_item(row) for row in rows),
                call_overhead_ms=device.overhead_ms,
            )

    def given_up(self, device_id: str, kind: str, batch: str | None = None) -> list[WorkItem]:
        """Items of ``kind`` (and ``batch``) no agent will be handed again: leased
        :data:`MAX_ATTEMPTS` times, never uploaded, the last lease expired."""
        conditions = [
            WorkItemRow.device_id == device_id,
            WorkItemRow.kind == kind,
            WorkItemRow.attempts >= MAX_ATTEMPTS,
            WorkItemRow.status != "done",
            or_(WorkItemRow.status == "queued", WorkItemRow.lease_expires_at < utcnow()),
        ]
        if batch is not None:
            conditions.append(WorkItemRow.batch == batch)
        with self.store.transaction() as session:
            rows = session.scalars(select(WorkItemRow).where(*conditions).order_by(WorkItemRow.id))
            return [_item(row) for row in rows]

    def renew(self, device_id: str, lease_id: str, lease_seconds: float) -> datetime:
        """Extend the lease's unfinished items to now + ``lease_seconds``; returns the new
        expiry. :class:`LeaseError` if the lease is unknown, finished or already expired (its
        items may have gone to another agent)."""
        if not lease_seconds > 0:
            raise NasvitError("lease_seconds must be > 0")
        now = utcnow()
        expires = now + timedelta(seconds=lease_seconds)
        with self.store.transaction() as session:
            device = self._lock_device(session, device_id)
            renewed = session.execute(
                update(WorkItemRow)
                .where(
                    WorkItemRow.device_id == device_id,
                    WorkItemRow.lease_id == lease_id,
                    WorkItemRow.status == "leased",
                    WorkItemRow.lease_expires_at >= now,
                )
                .values(lease_expires_at=expires)
                .execution_options(synchronize_session=False)
            )
            if _rowcount(renewed) == 0:
                raise LeaseError(
                    f"lease '{lease_id}' of device '{device.name}' is unknown, finished or expired"
                )
            device.last_seen_at = now
        return expires

    def complete(
        self, device_id: str, lease_id: str, results: Sequence[Mapping[str, Any]]
    ) -> CompleteResult:
        """Record an upload of results for items of a lease, in one transaction.

        A repeat of a recorded upload counts its items as ``already``. Otherwise the lease
        must be the device's and unexpired, and every item named must be in it
        (:class:`LeaseError`), and every result must fit its item (:class:`WorkResultError`);
        on any error nothing is stored. Blocks become latency entries (overwriting the entry
        when the item says ``replace``), the overhead becomes the device's, and a network
        reading stays on its item for :meth:`network_results`.
        """
        ids = _result_ids(results)
        now = utcnow()
        with self.store.transaction() as session:
            device = self._lock_device(session, device_id)
            named = {
                row.id: row
                for chunk in _chunks(ids)
                for row in session.scalars(select(WorkItemRow).where(WorkItemRow.id.in_(chunk)))
            }

            def ours(row: WorkItemRow | None, status: str) -> bool:
                return (
                    row is not None
                    and row.device_id == device_id
                    and row.lease_id == lease_id
                    and row.status == status
                )

            already = [i for i in ids if ours(named.get(i), "done")]
            todo = [i for i in ids if i not in already]
            if todo and not already and not any(ours(named.get(i), "leased") for i in todo):
                unknown = self._unknown_lease(session, device_id, lease_id)
                if unknown is not None:
                    raise LeaseError(unknown)
            foreign = sorted(i for i in todo if not ours(named.get(i), "leased"))
            if foreign:
                raise LeaseError(f"items {foreign} are not in lease '{lease_id}'")
            expired = [i for i in todo if (aware(named[i].lease_expires_at) or now) < now]
            if expired:
                raise LeaseError(f"lease '{lease_id}' expired; its items go to the next claim")
            checked = {
                item_id: _check_result(named[item_id].kind, named[item_id].params, result, item_id)
                for item_id, result in zip(ids, results, strict=True)
            }
            if not todo:
                return CompleteResult(recorded=0, already=len(already), inserted_entries=0)

            for item_id in todo:  # conditional, so a lease lost meanwhile stores nothing
                row = named[item_id]
                finished = session.execute(
                    update(WorkItemRow)
                    .where(
                        WorkItemRow.id == item_id,
                        WorkItemRow.lease_id == lease_id,
                        WorkItemRow.status == "leased",
                        WorkItemRow.lease_expires_at >= now,
                    )
                    .values(
                        status="done",
                        finished_at=now,
                        lease_expires_at=None,
                        result=checked[item_id].stored(row.kind),
                    )
                    .execution_options(synchronize_session=False)
                )
                if _rowcount(finished) != 1:
                    raise LeaseError(f"lease '{lease_id}' lost item {item_id} while uploading")

            inserted = self._record(session, device, [named[i] for i in todo], checked)
            device.last_seen_at = now
            rows = [named[i] for i in todo]
            self._collect_models(
                session,
                [sha for r in rows for sha in (r.model_sha256, r.extra_sha256, r.reference_sha256)],
            )
            return CompleteResult(
                recorded=len(todo), already=len(already), inserted_entries=inserted
            )

    @staticmethod
    def _unknown_lease(session: Session, device_id: str, lease_id: str) -> str | None:
        """Why no item named by an upload is in its lease, when the lease itself is the reason
        (unknown, or another device's); None when the device has items under that lease. The
        error path only: the lookup by lease id alone has no index."""
        owner = session.scalar(
            select(WorkItemRow.device_id).where(WorkItemRow.lease_id == lease_id).limit(1)
        )
        if owner is None:
            return f"unknown lease '{lease_id}' (expired and claimed again, or never issued)"
        if owner != device_id:
            return f"lease '{lease_id}' belongs to another device"
        return None

    def _record(
        self,
        session: Session,
        device: Device,
        rows: Sequence[WorkItemRow],
        checked: Mapping[int, _Result],
    ) -> int:
        """Store what finished items measured; returns latency entries inserted."""
        fingerprint = DeviceFingerprint.from_dict(dict(device.fingerprint))
        entries: dict[bool, list[NewEntry]] = {False: [], True: []}
        for row in rows:
            result = checked[row.id]
            if row.kind == "overhead":
                timing = result.timing
                device.overhead_ms, device.overhead_iqr_ms = timing.median_ms, timing.iqr_ms
                device.overhead_n = timing.n
            elif row.kind == "block":
                entries[bool(row.params.get("replace"))].append(
                    NewEntry(
                        key=row.key,
                        key_schema=BLOCK_KEY_SCHEMA,
                        kind=str(row.params["block_kind"]),
                        profiler=_profiler_name(fingerprint),
                        runtime_version=fingerprint.runtime_version,
                        weight_bytes=row.params.get("weight_bytes"),
                        cold_protocol=None if result.cold is None else COLD_PROTOCOL,
                        **timing_values(result.timing, result.cold),
                    )
                )
        inserted = 0
        for replace, batch in entries.items():
            if batch:
                inserted += self.store.add_entries(device.id, batch, session, replace=replace)
        return inserted

    def model(self, device_id: str, sha256: str) -> bytes:
        """A model an item of the device references (its model, chained or reference model);
        :class:`UnknownNameError` for any other, so a device token reads only its own work."""
        referenced = or_(
            WorkItemRow.model_sha256 == sha256,
            WorkItemRow.extra_sha256 == sha256,
            WorkItemRow.reference_sha256 == sha256,
        )
        with self.store.transaction() as session:
            item = session.scalar(
                select(WorkItemRow.id)
                .where(WorkItemRow.device_id == device_id, referenced)
                .limit(1)
            )
            data = None if item is None else session.get(WorkModelRow, sha256)
            if data is None:
                raise UnknownNameError(f"work model of device {device_id}", sha256, [])
            return bytes(data.data)

    # ------------------------------------------------------------------ views
    def queue_summary(self, device_id: str) -> dict[str, dict[str, int]]:
        """Item counts of the device: kind -> status -> count (only what exists)."""
        with self.store.transaction() as session:
            rows = session.execute(
                select(WorkItemRow.kind, WorkItemRow.status, func.count())
                .where(WorkItemRow.device_id == device_id)
                .group_by(WorkItemRow.kind, WorkItemRow.status)
            ).all()
        summary: dict[str, dict[str, int]] = {}
        for kind, status, count in rows:
            summary.setdefault(kind, {})[status] = int(count)
        return summary

    def items(self, device_id: str, status: str | None = None, limit: int = 100) -> list[WorkItem]:
        """The device's items in claim order; ``status`` None lists the unfinished ones
        (queued and leased), the queue an operator looks at."""
        if status is not None and status not in WORK_STATUSES:
            raise NasvitError(f"unknown status '{status}'; known: {', '.join(WORK_STATUSES)}")
        wanted = WorkItemRow.status != "done" if status is None else WorkItemRow.status == status
        with self.store.transaction() as session:
            rows = session.scalars(
                select(WorkItemRow)
                .where(WorkItemRow.device_id == device_id, wanted)
                .order_by(WorkItemRow.priority, WorkItemRow.id)
                .limit(limit)
            ).all()
            return [_item(row) for row in rows]

    def coverage(self, device_id: str) -> dict[str, tuple[int, int]]:
        """Per space that queued blocks for the device: (done, total) block items. A block
        shared by two spaces counts for the space that queued it first."""
        done = func.count().filter(WorkItemRow.status == "done")
        with self.store.transaction() as session:
            rows = session.execute(
                select(WorkItemRow.space, done, func.count())
                .where(
                    WorkItemRow.device_id == device_id,
                    WorkItemRow.kind == "block",
                    WorkItemRow.space.is_not(None),
                )
                .group_by(WorkItemRow.space)
            ).all()
        return {str(space): (int(d), int(total)) for space, d, total in rows}

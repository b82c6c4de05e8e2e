"""The device work queue (latency_db.work): every test runs on SQLite and on a real PostgreSQL
server. Leases are expired by moving their expiry into the past in the database, never by
waiting."""

from __future__ import annotations

import math
import threading
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import func, select, update

from nasvit.errors import NasvitError, UnknownNameError
from nasvit.latency_db import DeviceFingerprint, LatencyStore
from nasvit.latency_db.models import WorkItemRow, WorkModelRow
from nasvit.latency_db.replicate import COLD_PROTOCOL
from nasvit.latency_db.work import (
    BlockModel,
    CompleteResult,
    Lease,
    LeaseError,
    NetworkJob,
    WorkQueue,
    WorkResultError,
    sha256_of,
)
from nasvit.sql import utcnow

LEASE_S = 600.0  # long enough never to run out by itself during a test


def fingerprint(threads: int = 1, provider: str = "CPUExecutionProvider") -> DeviceFingerprint:
    return DeviceFingerprint(
        cpu_model="Test CPU",
        cores=4,
        memory_gib=8,
        os="Linux aarch64",
        runtime="onnxruntime",
        runtime_version="1.20.0",
        provider=provider,
        threads=threads,
        optimization="all",
    )


def block(i: int, cold: bool = False) -> BlockModel:
    return BlockModel(
        key=f"nasvit-block/1|mbconv|in=1x8x{i}x{i}",
        kind="mbconv",
        model=f"block model {i}".encode(),
        input_shape=(1, 8, i, i),
        weight_bytes=1000 * i,
        cold=cold,
    )


REFERENCE = block(99)


def timing(median: float = 1.0, **changes: Any) -> dict[str, Any]:
    return {
        "median_ms": median,
        "iqr_ms": 0.1,
        "n": 30,
        "sessions": 3,
        "session_medians_ms": [median, median, median],
    } | changes


def block_result(item_id: int, median: float = 1.0, cold: bool = True) -> dict[str, Any]:
    return {
        "item_id": item_id,
        "warm": timing(median),
        "cold": timing(median * 2) if cold else None,
    }


def network_result(item_id: int, median: float) -> dict[str, Any]:
    return {"item_id": item_id, "reading": timing(median), "runs_ms": [median, median + 0.1]}


@pytest.fixture
def queue(store: LatencyStore) -> WorkQueue:
    return WorkQueue(store)


@pytest.fixture
def device_id(store: LatencyStore) -> str:
    return store.ensure_device(fingerprint()).id


def expire(store: LatencyStore, lease_id: str) -> None:
    """Move the lease's expiry into the past, as if its agent had died long ago."""
    with store.transaction() as session:
        session.execute(
            update(WorkItemRow)
            .where(WorkItemRow.lease_id == lease_id)
            .values(lease_expires_at=utcnow() - timedelta(seconds=1))
        )


def model_count(store: LatencyStore) -> int:
    with store.transaction() as session:
        return int(session.scalar(select(func.count()).select_from(WorkModelRow)) or 0)


def with_known_overhead(store: LatencyStore, device_id: str) -> None:
    store.set_overhead(device_id, 0.02, 0.001, 100)


def claim(queue: WorkQueue, device_id: str, agent: str = "a1", n: int = 10) -> Lease:
    lease = queue.claim(device_id, agent, n, LEASE_S)
    assert lease is not None
    return lease


# ---------------------------------------------------------------------- devices
def test_registering_an_agent_makes_the_device_agent_managed(
    store: LatencyStore, queue: WorkQueue, device_id: str
) -> None:
    assert not store.device(device_id).agent_managed
    before = utcnow()
    queue.register_agent(device_id, "pi-1")
    first = store.device(device_id)
    assert first.agent_managed and first.last_agent == "pi-1"
    assert first.agent_registered_at is not None and first.agent_registered_at >= before
    queue.register_agent(device_id, "pi-2")
    queue.touch(device_id, "pi-3")
    again = store.device(device_id)
    assert again.agent_registered_at == first.agent_registered_at  # the first registration
    assert again.last_agent == "pi-3"
    assert again.last_seen_at is not None and first.last_seen_at is not None
    assert again.last_seen_at >= first.last_seen_at
    with pytest.raises(UnknownNameError):
        queue.register_agent("0" * 16, "x")


# ---------------------------------------------------------------------- claims
def test_overhead_first_then_networks_and_blocks_only_once_the_overhead_is_known(
    store: LatencyStore, queue: WorkQueue, device_id: str
) -> None:
    assert queue.claim(device_id, "a1", 10, LEASE_S) is None  # nothing queued
    queue.enqueue_blocks(device_id, [block(1), block(2)], REFERENCE, "space-a")
    queue.enqueue_networks(device_id, [NetworkJob(b"net", (1, 3, 32, 32))], 2, [[0], [0]], None)
    queue.enqueue_overhead(device_id, b"single", b"chained", (1, 8, 8, 8), 16)

    overhead = claim(queue, device_id)
    assert [i.kind for i in overhead.items] == ["overhead"]  # one kind per lease
    assert overhead.items[0].params == {"copies": 16} and overhead.call_overhead_ms is None
    assert overhead.items[0].extra_sha256 == sha256_of(b"chained")
    networks = claim(queue, device_id, "a2")
    assert [i.kind for i in networks.items] == ["network", "network"]
    assert queue.claim(device_id, "a3", 10, LEASE_S) is None  # blocks wait for the overhead
    assert store.device(device_id).last_agent == "a3"  # an empty claim still marks it seen

    done = queue.complete(
        device_id, overhead.id, [{"item_id": overhead.items[0].id, "overhead": timing(0.0)}]
    )
    assert done == CompleteResult(recorded=1, already=0, inserted_entries=0)
    device = store.device(device_id)
    assert device.overhead_ms == 0.0 and device.overhead_n == 30
    blocks = claim(queue, device_id, "a3")
    assert [i.kind for i in blocks.items] == ["block", "block"]
    assert blocks.call_overhead_ms == 0.0
    assert blocks.items[0].reference_sha256 == sha256_of(REFERENCE.model)
    assert blocks.items[0].params["reference_shape"] == list(REFERENCE.input_shape)
    assert all(i.attempts == 1 and i.leased_by == "a3" for i in blocks.items)
    # Known overhead: queueing it again is a no-op.
    queue.enqueue_overhead(device_id, b"single", b"chained", (1, 8, 8, 8), 16)
    assert queue.progress(device_id, "overhead") == (1, 1)


def test_claims_respect_max_items_and_id_order(
    store: LatencyStore, queue: WorkQueue, device_id: str
) -> None:
    with_known_overhead(store, device_id)
    order = [block(i) for i in (5, 3, 4, 1, 2)]
    assert queue.enqueue_blocks(device_id, order, REFERENCE, "s") == 5
    first, second = claim(queue, device_id, n=3), claim(queue, device_id, n=3)
    assert [i.key for i in first.items + second.items] == [b.key for b in order]
    assert len(first.items) == 3 and len(second.items) == 2
    with pytest.raises(NasvitError):
        queue.claim(device_id, "a", 0, LEASE_S)


@pytest.mark.parametrize("kind", ["network", "block"])
def test_concurrent_agents_never_get_the_same_item(
    database_url: str, store: LatencyStore, device_id: str, kind: str
) -> None:
    """Four agents, each with its own engine (as separate server processes), claim and
    complete at once until the queue is empty: every item is handed out exactly once."""
    queue = WorkQueue(store)
    with_known_overhead(store, device_id)
    if kind == "block":
        queue.enqueue_blocks(device_id, [block(i) for i in range(1, 41)], REFERENCE, "s")
    else:
        jobs = [NetworkJob(f"net {i}".encode(), (1, 3, 8, 8)) for i in range(10)]
        queue.enqueue_networks(device_id, jobs, 4, [list(range(10))] * 4, None)
    claimed: dict[str, list[int]] = {}
    errors: list[BaseException] = []
    start = threading.Barrier(4, timeout=60)
    # Opened here: Alembic's upgrade (run by open) is not thread-safe.
    stores = [LatencyStore.open(database_url) for _ in range(4)]

    def agent(name: str, own: LatencyStore) -> None:
        mine = claimed.setdefault(name, [])
        agents_queue = WorkQueue(own)
        try:
            start.wait()
            while (lease := agents_queue.claim(device_id, name, 3, LEASE_S)) is not None:
                mine.extend(item.id for item in lease.items)
                results = [
                    block_result(i.id, cold=False) if kind == "block" else network_result(i.id, 1)
                    for i in lease.items
                ]
                agents_queue.complete(device_id, lease.id, results)
        except BaseException as error:  # reported by the main thread
            errors.append(error)

    threads = [
        threading.Thread(target=agent, args=(f"agent-{n}", own)) for n, own in enumerate(stores)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for own in stores:
        own.close()
    assert errors == []
    every = [item_id for ids in claimed.values() for item_id in ids]
    assert len(every) == len(set(every)) == 40  # no item twice, none lost
    assert queue.progress(device_id, kind) == (40, 40)
    if kind == "block":
        assert store.entry_count(device_id) == 40
    assert model_count(store) == 0


def test_an_expired_lease_is_claimed_again_and_its_upload_refused(
    store: LatencyStore, queue: WorkQueue, device_id: str
) -> None:
    with_known_overhead(store, device_id)
    queue.enqueue_blocks(device_id, [block(1, cold=True), block(2, cold=True)], REFERENCE, "s")
    dead = claim(queue, device_id, "killed")
    assert queue.claim(device_id, "next", 10, LEASE_S) is None  # all leased, none expired
    expire(store, dead.id)
    results = [block_result(i.id) for i in dead.items]
    with pytest.raises(LeaseError, match="expired"):
        queue.complete(device_id, dead.id, results)  # expired, not yet claimed again
    with pytest.raises(LeaseError):
        queue.renew(device_id, dead.id, LEASE_S)
    assert store.entry_count(device_id) == 0

    retry = claim(queue, device_id, "next")
    assert [i.id for i in retry.items] == [i.id for i in dead.items]
    assert all(i.attempts == 2 and i.leased_by == "next" for i in retry.items)
    with pytest.raises(LeaseError, match="unknown lease"):
        queue.complete(device_id, dead.id, results)  # its items went to another lease
    assert store.entry_count(device_id) == 0
    recorded = queue.complete(device_id, retry.id, [block_result(i.id) for i in retry.items])
    assert recorded == CompleteResult(recorded=2, already=0, inserted_entries=2)


def test_an_item_never_uploaded_is_given_up_after_max_attempts(
    store: LatencyStore, queue: WorkQueue, device_id: str
) -> None:
    from nasvit.latency_db.remote import AgentMeasurer
    from nasvit.latency_db.work import MAX_ATTEMPTS

    with_known_overhead(store, device_id)
    queue.enqueue_blocks(device_id, [block(1, cold=True)], REFERENCE, "s")
    for attempt in range(MAX_ATTEMPTS):
        assert queue.given_up(device_id, "block") == []
        lease = claim(queue, device_id, f"crashing-{attempt}")
        expire(store, lease.id)  # the agent died on it
    assert queue.claim(device_id, "next", 10, LEASE_S) is None  # never handed out again
    [failed] = queue.given_up(device_id, "block")
    assert failed.attempts == MAX_ATTEMPTS and failed.leased_by == f"crashing-{MAX_ATTEMPTS - 1}"
    # Whoever waits on it is told, naming the item and the agent, instead of waiting for ever.
    queue.register_agent(device_id, "alive")  # the agent answers: the device is not silent
    measurer = AgentMeasurer(store, store.device(device_id), timeout_s=600, poll_s=0.01)
    with pytest.raises(NasvitError, match=f"{MAX_ATTEMPTS} times each") as raised:
        measurer._wait(lambda: 1, 1, "1 block", None, "block")
    assert failed.key in str(raised.value)


def test_renew_extends_a_live_lease(store: LatencyStore, queue: WorkQueue, device_id: str) -> None:
    with_known_overhead(store, device_id)
    queue.enqueue_blocks(device_id, [block(1)], REFERENCE, "s")
    lease = claim(queue, device_id)
    renewed = queue.renew(device_id, lease.id, 2 * LEASE_S)
    assert renewed > lease.expires_at
    assert queue.items(device_id)[0].lease_expires_at == renewed
    with pytest.raises(LeaseError):
        queue.renew(device_id, "f" * 32, LEASE_S)


# ---------------------------------------------------------------------- uploads
def test_blocks_become_entries_and_a_repeated_upload_is_idempotent(
    store: LatencyStore, queue: WorkQueue
) -> None:
    device_id = store.ensure_device(fingerprint(provider="CUDAExecutionProvider")).id
    with_known_overhead(store, device_id)
    queue.enqueue_blocks(device_id, [block(1, cold=True), block(2)], REFERENCE, "s")
    lease = claim(queue, device_id)
    heavy, light = lease.items
    results = [block_result(heavy.id, 1.5), block_result(light.id, 0.5, cold=False)]
    first = queue.complete(device_id, lease.id, results)
    assert first == CompleteResult(recorded=2, already=0, inserted_entries=2)
    again = queue.complete(device_id, lease.id, results)  # the agent retried its POST
    assert again == CompleteResult(recorded=0, already=2, inserted_entries=0)
    entries = store.entries(device_id)
    assert len(entries) == store.entry_count(device_id) == 2
    cold = entries[block(1).key]
    assert (cold.median_ms, cold.cold_median_ms, cold.cold_protocol) == (1.5, 3.0, COLD_PROTOCOL)
    assert (cold.kind, cold.weight_bytes, cold.n, cold.cold_n) == ("mbconv", 1000, 30, 30)
    assert (cold.profiler, cold.runtime_version) == ("onnxruntime-cuda", "1.20.0")
    warm = entries[block(2).key]
    assert warm.cold_median_ms is None and warm.cold_protocol is None
    done = queue.items(device_id, "done")
    assert [i.result for i in done][0] == {
        "warm": timing(1.5),
        "cold": timing(3.0),
    }
    assert queue.items(device_id) == []  # nothing unfinished
    assert model_count(store) == 0  # no unfinished item needs a model


def test_a_lease_may_upload_in_parts(store: LatencyStore, queue: WorkQueue, device_id: str) -> None:
    with_known_overhead(store, device_id)
    queue.enqueue_blocks(device_id, [block(1), block(2)], REFERENCE, "s")
    lease = claim(queue, device_id)
    a, b = (block_result(i.id, cold=False) for i in lease.items)
    assert queue.complete(device_id, lease.id, [a]).recorded == 1
    assert model_count(store) == 2  # the other block and the reference are still needed
    assert queue.complete(device_id, lease.id, [a, b]) == CompleteResult(1, 1, 1)
    assert store.entry_count(device_id) == 2 and model_count(store) == 0


def test_results_for_items_outside_the_lease_store_nothing(
    store: LatencyStore, queue: WorkQueue, device_id: str
) -> None:
    with_known_overhead(store, device_id)
    queue.enqueue_blocks(device_id, [block(i) for i in (1, 2, 3)], REFERENCE, "s")
    mine, theirs = claim(queue, device_id, n=2), claim(queue, device_id, "other", n=2)
    ok = [block_result(i.id, cold=False) for i in mine.items]
    stranger = block_result(theirs.items[0].id, cold=False)
    with pytest.raises(LeaseError, match=rf"\[{theirs.items[0].id}, 9999\]"):
        queue.complete(device_id, mine.id, [*ok, stranger, block_result(9999, cold=False)])
    with pytest.raises(LeaseError, match=rf"\[{theirs.items[0].id}\] are not in lease"):
        queue.complete(device_id, mine.id, [stranger])  # only another lease's item
    with pytest.raises(LeaseError, match="unknown lease"):
        queue.complete(device_id, "f" * 32, ok)
    other = store.ensure_device(fingerprint(threads=2)).id
    with pytest.raises(LeaseError, match="another device"):
        queue.complete(other, mine.id, ok)
    assert store.entry_count(device_id) == 0
    assert queue.queue_summary(device_id) == {"block": {"leased": 3}}


def _malformed() -> list[tuple[str, Callable[[int], dict[str, Any]]]]:
    return [
        ("nan median", lambda i: {"item_id": i, "warm": timing(math.nan), "cold": timing()}),
        ("inf iqr", lambda i: {"item_id": i, "warm": timing(iqr_ms=math.inf), "cold": timing()}),
        ("negative", lambda i: {"item_id": i, "warm": timing(-1.0), "cold": timing()}),
        ("zero median", lambda i: {"item_id": i, "warm": timing(0.0), "cold": timing()}),
        ("n 0", lambda i: {"item_id": i, "warm": timing(n=0), "cold": timing()}),
        ("n bool", lambda i: {"item_id": i, "warm": timing(n=True), "cold": timing()}),
        ("n text", lambda i: {"item_id": i, "warm": timing(n="30"), "cold": timing()}),
        ("no cold", lambda i: {"item_id": i, "warm": timing()}),
        ("null cold", lambda i: {"item_id": i, "warm": timing(), "cold": None}),
        (
            "bad session",
            lambda i: {"item_id": i, "warm": timing(session_medians_ms=[-1]), "cold": timing()},
        ),
        ("extra field", lambda i: {"item_id": i, "warm": timing(), "cold": timing(), "x": 1}),
        ("other kind", lambda i: {"item_id": i, "reading": timing(), "runs_ms": [1.0]}),
        ("not a timing", lambda i: {"item_id": i, "warm": [1.0], "cold": timing()}),
    ]


@pytest.mark.parametrize(("name", "make"), _malformed(), ids=[n for n, _ in _malformed()])
def test_malformed_results_store_nothing(
    store: LatencyStore,
    queue: WorkQueue,
    device_id: str,
    name: str,
    make: Callable[[int], dict[str, Any]],
) -> None:
    with_known_overhead(store, device_id)
    queue.enqueue_blocks(device_id, [block(1, cold=True), block(2, cold=True)], REFERENCE, "s")
    lease = claim(queue, device_id)
    good, bad = lease.items
    with pytest.raises(WorkResultError):
        queue.complete(device_id, lease.id, [block_result(good.id), make(bad.id)])
    assert store.entry_count(device_id) == 0
    assert queue.queue_summary(device_id) == {"block": {"leased": 2}}


def test_malformed_uploads_of_other_kinds_store_nothing(
    store: LatencyStore, queue: WorkQueue, device_id: str
) -> None:
    queue.enqueue_overhead(device_id, b"single", b"chained", (1, 8, 8, 8), 16)
    lease = claim(queue, device_id)
    item = lease.items[0].id
    for result in (
        {"item_id": item, "overhead": timing(-0.001)},
        {"item_id": item, "overhead": timing(session_medians_ms=[math.nan])},
        {"item_id": item, "warm": timing()},
    ):
        with pytest.raises(WorkResultError):
            queue.complete(device_id, lease.id, [result])
    for results in ([], [{"item_id": "1"}], [{"item_id": item, "overhead": timing()}] * 2):
        with pytest.raises(WorkResultError):
            queue.complete(device_id, lease.id, results)
    assert store.device(device_id).overhead_ms is None

    batch = queue.enqueue_networks(device_id, [NetworkJob(b"n", (1, 3, 8, 8))], 1, [[0]], None)
    lease = claim(queue, device_id)
    item = lease.items[0].id
    for result in (
        {"item_id": item, "reading": timing(), "runs_ms": []},
        {"item_id": item, "reading": timing(), "runs_ms": [1.0, -2.0]},
        {"item_id": item, "reading": timing(0.0), "runs_ms": [1.0]},
    ):
        with pytest.raises(WorkResultError):
            queue.complete(device_id, lease.id, [result])
    assert queue.network_results(batch) == [None]


# ---------------------------------------------------------------------- networks
def test_network_readings_come_back_per_network_in_round_order(
    store: LatencyStore, queue: WorkQueue, device_id: str
) -> None:
    from nasvit.agent.measurement import MeasurementProtocol

    jobs = [NetworkJob(f"net {i}".encode(), (1, 3, 8 + i, 8)) for i in range(3)]
    order = [[2, 0, 1], [1, 2, 0]]
    protocol = MeasurementProtocol(sessions=1)
    batch = queue.enqueue_networks(device_id, jobs, 2, order, "s", protocol=protocol)
    other = queue.enqueue_networks(device_id, jobs[:1], 1, [[0]], "s")
    lease = claim(queue, device_id, n=4)
    # Claims follow the rounds: round 0 in its order, then round 1's.
    assert [i.key for i in lease.items] == [
        f"{batch}:2:0", f"{batch}:0:0", f"{batch}:1:0", f"{batch}:1:1",
    ]  # fmt: skip
    assert lease.items[0].input_shape == (1, 3, 10, 8)
    assert lease.items[0].params["protocol"]["sessions"] == 1
    assert queue.model(device_id, lease.items[0].model_sha256) == b"net 2"

    def median(key: str) -> float:  # network index + round / 10: who is who in the results
        _, index, reading = key.split(":")
        return int(index) + 1 + int(reading) / 10

    queue.complete(device_id, lease.id, [network_result(i.id, median(i.key)) for i in lease.items])
    partial = queue.network_results(batch)  # network 1 has both readings, the others one
    assert partial[0] is None and partial[2] is None
    assert partial[1] is not None and [r["reading"]["median_ms"] for r in partial[1]] == [2.0, 2.1]
    assert queue.progress(device_id, "network", batch) == (4, 6)
    rest = claim(queue, device_id, n=10)
    assert [i.key for i in rest.items] == [f"{batch}:2:1", f"{batch}:0:1", f"{other}:0:0"]
    queue.complete(device_id, rest.id, [network_result(i.id, median(i.key)) for i in rest.items])
    results = queue.network_results(batch)
    medians = [[r["reading"]["median_ms"] for r in network or []] for network in results]
    assert medians == [[1.0, 1.1], [2.0, 2.1], [3.0, 3.1]]
    assert results[0] is not None and results[0][0]["runs_ms"] == [1.0, 1.1]
    queue.discard_batch(batch)
    # The done readings stay (who took them, and when); the models go.
    assert queue.network_results(batch) == results
    assert model_count(store) == 0  # every reading is done: no model is needed
    assert queue.progress(device_id, "network") == (7, 7)


def test_enqueue_networks_checks_the_rounds(queue: WorkQueue, device_id: str) -> None:
    jobs = [NetworkJob(b"a", (1, 3, 8, 8)), NetworkJob(b"b", (1, 3, 8, 8))]
    for readings, order in ((2, [[0, 1]]), (1, [[0, 0]]), (1, [[0, 1, 2]]), (0, [])):
        with pytest.raises(NasvitError):
            queue.enqueue_networks(device_id, jobs, readings, order, None)
    with pytest.raises(NasvitError):
        queue.enqueue_networks(device_id, [], 1, [[]], None)
    with pytest.raises(NasvitError):
        queue.discard_batch("blocks")


def test_discarding_a_batch_refuses_its_leased_upload(
    store: LatencyStore, queue: WorkQueue, device_id: str
) -> None:
    batch = queue.enqueue_networks(device_id, [NetworkJob(b"n", (1, 3, 8, 8))], 1, [[0]], None)
    lease = claim(queue, device_id)
    queue.discard_batch(batch)
    assert model_count(store) == 0
    with pytest.raises(LeaseError):
        queue.complete(device_id, lease.id, [network_result(lease.items[0].id, 1.0)])


# ---------------------------------------------------------------------- blocks and models
def test_enqueueing_blocks_queues_only_what_the_table_lacks(
    store: LatencyStore, queue: WorkQueue, device_id: str
) -> None:
    with_known_overhead(store, device_id)
    blocks = [block(1), block(2), block(3)]
    assert queue.enqueue_blocks(device_id, blocks, REFERENCE, "space-a") == 3
    assert queue.enqueue_blocks(device_id, [*blocks, block(2)], REFERENCE, "space-b") == 0
    assert queue.coverage(device_id) == {"space-a": (0, 3)}
    lease = claim(queue, device_id, n=2)
    queue.complete(device_id, lease.id, [block_result(i.id, cold=False) for i in lease.items])
    assert queue.coverage(device_id) == {"space-a": (2, 3)}
    assert queue.queue_summary(device_id) == {"block": {"done": 2, "queued": 1}}
    assert [i.key for i in queue.items(device_id)] == [block(3).key]
    # Measured blocks are not queued again; one to replace is, and overwrites its entry.
    assert queue.enqueue_blocks(device_id, blocks, REFERENCE, "s", replace_keys=[]) == 0
    assert queue.enqueue_blocks(device_id, blocks, REFERENCE, "s", [block(1).key]) == 1
    assert queue.progress(device_id, "block") == (1, 3)
    lease = claim(queue, device_id)
    replaced = next(i for i in lease.items if i.key == block(1).key)
    assert replaced.params["replace"] is True and replaced.attempts == 1
    results = [block_result(i.id, 7.0, cold=False) for i in lease.items]
    assert queue.complete(device_id, lease.id, results).inserted_entries == 1  # block 3 only
    assert store.entries(device_id)[block(1).key].median_ms == 7.0
    assert store.entry_count(device_id) == 3


def test_models_are_served_only_to_their_device_and_deleted_when_unneeded(
    store: LatencyStore, queue: WorkQueue, device_id: str
) -> None:
    with_known_overhead(store, device_id)
    other = store.ensure_device(fingerprint(threads=2)).id
    with_known_overhead(store, other)
    queue.enqueue_blocks(device_id, [block(1), block(2)], REFERENCE, "s")
    queue.enqueue_blocks(other, [block(2), block(3)], REFERENCE, "s")
    assert model_count(store) == 4  # blocks 1-3 and the reference, each stored once
    assert queue.model(device_id, sha256_of(block(1).model)) == block(1).model
    assert queue.model(device_id, sha256_of(REFERENCE.model)) == REFERENCE.model
    with pytest.raises(UnknownNameError):
        queue.model(device_id, sha256_of(block(3).model))  # another device's
    with pytest.raises(UnknownNameError):
        queue.model(device_id, "0" * 64)
    lease = claim(queue, device_id)
    queue.complete(device_id, lease.id, [block_result(i.id, cold=False) for i in lease.items])
    # Block 2 and the reference are still needed by the other device; block 1 is gone.
    assert model_count(store) == 3
    with pytest.raises(UnknownNameError):
        queue.model(device_id, sha256_of(block(1).model))
    assert queue.model(other, sha256_of(block(2).model)) == block(2).model
    lease = claim(queue, other)
    queue.complete(other, lease.id, [block_result(i.id, cold=False) for i in lease.items])
    assert model_count(store) == 0

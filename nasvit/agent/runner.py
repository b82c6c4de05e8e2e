"""The agent's work loop: register, claim a lease, time its items, upload, repeat.

Every timing goes through :class:`nasvit.agent.timing.OrtTimer` with the protocol the server
states at registration, and block batches through
:func:`nasvit.agent.timing.measure_with_drift_check`, the code ``nasvit profile`` runs on the
search host: a table an agent builds is measured the same way as a local one.

- *overhead* items: a tiny block alone and chained (:meth:`OrtTimer.measure_overhead`);
- *block* items: the lease's blocks under the drift check of their reference block (its
  baseline timed once per agent run), each a warm timing and, when asked, a streamed one of a
  model of ``stream_copies(warm)`` copies the server builds;
- *network* items: one reading each, one fresh session with the server's network protocol (as
  ``nasvit.evaluation.latency.measure_readings`` takes readings locally).

A heartbeat thread renews the lease while its items run; once the server says the lease is
gone (409), the agent stops timing it and claims again: another agent may hold the items now.
An agent killed mid-batch uploads nothing; its items return to the queue when the lease
expires.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from functools import partial
from typing import Any

from nasvit.agent.client import (
    AgentClient,
    HTTPStatusError,
    Lease,
    LeaseConflict,
    LeaseItem,
    Registration,
    ServerUnreachable,
    Unauthorized,
    protocol_from_json,
)
from nasvit.agent.hardware import machine_fingerprint
from nasvit.agent.measurement import Measurement
from nasvit.agent.timing import PROVIDERS, OrtTimer, measure_with_drift_check, stream_copies

#: The most items one lease may ask for (the server's limit).
MAX_ITEMS = 256
#: Models kept in memory per lease: network models can be hundreds of MB each.
MODEL_CACHE_BYTES = 1 << 30
#: Waits between retries of a call that found no server (seconds); the last one repeats.
BACKOFF_S = (0.5, 1.0, 2.0, 4.0, 8.0, 15.0, 30.0)
#: Attempts of an upload before its results are given up (the lease then expires).
UPLOAD_ATTEMPTS = 8
#: Leases in a row whose timing failed before the agent gives up.
MAX_FAILED_LEASES = 3

Log = Callable[[str], None]


def log_to_stderr(line: str) -> None:
    print(f"{time.strftime('%H:%M:%S')} {line}", file=sys.stderr, flush=True)


class AgentStop(Exception):
    """Ends the agent with ``code`` and a one-line ``message`` (no traceback)."""

    def __init__(self, code: int, message: str):
        super().__init__(message)
        self.code = code
        self.message = message


class LeaseLost(Exception):
    """The server no longer holds the lease for this agent: stop timing its items."""


@dataclass(frozen=True)
class AgentOptions:
    """How the agent runs (the command line's options).

    Attributes:
        name: the agent's name, shown on leases and the device's "last agent".
        threads: onnxruntime intra-op threads.
        provider: ``"cpu"`` or ``"cuda"``.
        optimization: onnxruntime graph optimisation level.
        max_items: items per lease; None takes the server's batch size.
        once: exit when the queue is empty instead of polling.
        idle_exit: exit after this many seconds without work (None: never).
    """

    name: str
    threads: int = 1
    provider: str = "cpu"
    optimization: str = "all"
    max_items: int | None = None
    once: bool = False
    idle_exit: float | None = None


def gpu_name() -> str:
    """The first visible GPU's name as ``nvidia-smi`` reports it ("" if none): the fingerprint's
    accelerator, which the search host reads from torch (the same name, e.g. "NVIDIA H200")."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",")[0].strip()
    command = ["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"]
    if visible:
        command += ["-i", visible]  # nvidia-smi ignores CUDA_VISIBLE_DEVICES itself
    try:
        out = subprocess.run(command, capture_output=True, text=True, timeout=20).stdout
    except (OSError, subprocess.SubprocessError):
        return ""
    lines = [line.strip() for line in out.splitlines() if line.strip()]
    return lines[0] if lines else ""


def fingerprint(timer: OrtTimer) -> dict[str, str | int]:
    """This machine's device fingerprint for the timer's runtime settings (the fields of
    ``nasvit.latency_db.DeviceFingerprint``, as ``nasvit profile`` records them)."""
    cuda = timer.provider == PROVIDERS["cuda"]
    return machine_fingerprint(
        runtime="onnxruntime",
        runtime_version=timer.version,
        provider=timer.provider,
        threads=timer.threads,
        optimization=timer.optimization,
        accelerator=gpu_name() if cuda else "",
        clock=timer.clock,
    )


def timing_json(measurement: Measurement) -> dict[str, Any]:
    """A measurement as the server's Timing JSON (the runs stay here)."""
    return {
        "median_ms": measurement.median_ms,
        "iqr_ms": measurement.iqr_ms,
        "n": measurement.n,
        "sessions": measurement.sessions,
        "session_medians_ms": list(measurement.session_medians_ms),
    }


def backoff(attempt: int) -> float:
    return BACKOFF_S[min(attempt, len(BACKOFF_S) - 1)]


@dataclass
class Transfer:
    """Time and bytes spent downloading models, per lease (reported in the log: where an
    agent's time goes besides timing)."""

    seconds: float = 0.0
    models: int = 0
    nbytes: int = 0

    def add(self, seconds: float, nbytes: int) -> None:
        self.seconds += seconds
        self.models += 1
        self.nbytes += nbytes


class ModelCache:
    """Models downloaded for one lease, by (sha256, copies), least recently used evicted past
    ``budget`` bytes: a block is downloaded once however often the drift check re-times it."""

    def __init__(self, fetch: Callable[[str, int], bytes], budget: int = MODEL_CACHE_BYTES):
        self.fetch = fetch
        self.budget = budget
        self._models: OrderedDict[tuple[str, int], bytes] = OrderedDict()

    def get(self, sha256: str, copies: int = 1) -> bytes:
        key = (sha256, copies)
        if key in self._models:
            self._models.move_to_end(key)
            return self._models[key]
        model = self.fetch(sha256, copies)
        self._models[key] = model
        while len(self._models) > 1 and sum(map(len, self._models.values())) > self.budget:
            self._models.popitem(last=False)
        return model


class Heartbeat:
    """Renews a lease every ``interval`` seconds in a thread while the lease's items run.

    ``lost`` is set when the server says the lease is gone (409) or refuses the token; the
    timing loop checks it between items. A renewal that finds no server is retried at the next
    beat: the lease lasts three beats."""

    def __init__(
        self,
        client: AgentClient,
        device_id: str,
        lease_id: str,
        interval: float,
        log: Log,
    ):
        self.client = client
        self.device_id = device_id
        self.lease_id = lease_id
        self.interval = interval
        self.log = log
        self.lost = threading.Event()
        #: Set once the results are being uploaded: a renewal refused after the upload
        #: recorded them is no news (the upload says what happened).
        self.quiet = threading.Event()
        self.unauthorized: Unauthorized | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name="lease-heartbeat", daemon=True)

    def _beat(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.client.renew(self.device_id, self.lease_id)
            except LeaseConflict as error:
                if not self.quiet.is_set():
                    self.log(f"lease {self.lease_id} is gone ({error.detail}); dropping it")
                self.lost.set()
                return
            except Unauthorized as error:
                self.unauthorized = error
                self.lost.set()
                return
            except (ServerUnreachable, HTTPStatusError) as error:
                self.log(f"could not renew lease {self.lease_id}: {error}")

    def check(self) -> None:
        """Raise :class:`LeaseLost` once the lease is gone."""
        if self.lost.is_set():
            raise LeaseLost(self.lease_id)

    def __enter__(self) -> Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        # Not waiting out a renewal in flight: a late renewal of a finished lease changes
        # nothing on the server.
        self._thread.join(timeout=2)


class Agent:
    """One agent process's state: the client, the timers, the reference baselines.

    Args:
        client: the server's device API with this device's token.
        options: the command line's options.
        log: where progress lines go (stderr by default).
        sleep: how the loop waits (tests may replace it).
    """

    def __init__(
        self,
        client: AgentClient,
        options: AgentOptions,
        log: Log = log_to_stderr,
        sleep: Callable[[float], None] = time.sleep,
    ):
        self.client = client
        self.options = options
        self.log = log
        self.sleep = sleep
        self.transfer = Transfer()  # of the lease in hand
        if options.provider not in PROVIDERS:
            raise AgentStop(2, f"unknown provider '{options.provider}'; known: cpu, cuda")
        try:
            # Built before registering: a provider this onnxruntime lacks must not register a
            # device whose fingerprint claims it.
            self.timer = OrtTimer(
                options.threads, options.optimization, PROVIDERS[options.provider]
            )
        except (ValueError, RuntimeError) as error:
            raise AgentStop(2, str(error)) from None
        self.network_timer = self.timer
        self.registration: Registration | None = None
        #: Reference models and their baselines, kept for the whole run (baseline timed once).
        self._references: dict[str, bytes] = {}
        self._baselines: dict[tuple[str, tuple[int, ...]], float] = {}
        self._failures = 0  # leases in a row whose timing failed

    # --- registration and the loop

    def register(self) -> Registration:
        try:
            registration = self.client.register(self.options.name, fingerprint(self.timer))
        except Unauthorized as error:
            raise AgentStop(2, f"the server refused the device token: {error.detail}") from None
        except ServerUnreachable as error:
            raise AgentStop(2, f"cannot reach the server: {error}") from None
        except HTTPStatusError as error:
            raise AgentStop(2, f"registration refused: {error.detail}") from None
        except (KeyError, TypeError, ValueError) as error:
            raise AgentStop(2, f"the server's registration answer is malformed: {error}") from None
        self.registration = registration
        self.timer = self.timer.with_protocol(registration.protocol)
        # One fresh session per reading, as measure_readings takes them on the search host.
        self.network_timer = self.timer.with_protocol(
            replace(registration.network_protocol, sessions=1)
        )
        self.log(
            f"agent {self.options.name} registered for device {registration.device} "
            f"({registration.device_id}): onnxruntime {self.timer.version}, "
            f"{self.timer.provider}, {self.timer.threads} thread(s), clock {self.timer.clock}"
        )
        return registration

    @property
    def batch_size(self) -> int:
        assert self.registration is not None
        size = self.options.max_items or self.registration.batch_size
        return max(1, min(MAX_ITEMS, size))

    def run(self) -> int:
        """Register, then work until the queue is empty (``once``), idle too long
        (``idle_exit``), or stopped. Returns the exit code; :class:`AgentStop` for fatal
        conditions."""
        registration = self.register()
        idle_since: float | None = None
        failures = 0
        while True:
            try:
                lease = self.client.claim(
                    registration.device_id, self.options.name, self.batch_size
                )
            except Unauthorized as error:
                raise AgentStop(2, f"the server refused the device token: {error.detail}") from None
            except ServerUnreachable as error:
                if self.options.once and failures >= len(BACKOFF_S):
                    raise AgentStop(1, f"the server stayed unreachable: {error}") from None
                wait = backoff(failures)
                failures += 1
                self.log(f"cannot claim work ({error}); retrying in {wait:g}s")
                self.sleep(wait)
                continue
            except HTTPStatusError as error:
                raise AgentStop(1, f"the server refused a claim: {error}") from None
            failures = 0
            if lease is None:
                if self.options.once:
                    self.log("the queue is empty; exiting (--once)")
                    return 0
                now = time.monotonic()
                if idle_since is None:
                    idle_since = now
                idle_exit = self.options.idle_exit
                if idle_exit is not None and now - idle_since >= idle_exit:
                    self.log(f"no work for {idle_exit:g}s; exiting (--idle-exit)")
                    return 0
                self.sleep(registration.poll_seconds)
                continue
            idle_since = None
            self.process(lease)

    def process(self, lease: Lease) -> bool:
        """Time one lease's items and upload their results; False when the lease was dropped."""
        registration = self.registration
        assert registration is not None
        kinds = sorted({item.kind for item in lease.items})
        self.log(f"lease {lease.id}: {len(lease.items)} {'/'.join(kinds)} item(s)")
        heartbeat = Heartbeat(
            self.client,
            registration.device_id,
            lease.id,
            registration.lease_seconds / 3,
            self.log,
        )
        self.transfer = Transfer()
        started = time.monotonic()
        with heartbeat:
            try:
                results = self.measure(lease, heartbeat.check)
            except LeaseLost:
                if heartbeat.unauthorized is not None:
                    raise AgentStop(
                        2, f"the server refused the device token: {heartbeat.unauthorized.detail}"
                    ) from None
                return False
            except Unauthorized as error:
                raise AgentStop(2, f"the server refused the device token: {error.detail}") from None
            except (HTTPStatusError, ServerUnreachable) as error:
                self.log(f"lease {lease.id}: could not fetch a model ({error}); dropping it")
                return False
            except AgentStop:
                raise
            except Exception as error:  # a model onnxruntime cannot run: drop the lease, go on
                self._failed(lease, f"timing failed ({type(error).__name__}: {error})")
                return False
            if heartbeat.lost.is_set():
                return False
            heartbeat.quiet.set()
            measured = time.monotonic()
            uploaded = self.upload(lease, results)
            transfer = self.transfer
            self.log(
                f"lease {lease.id}: {measured - started:.2f}s timing and downloading "
                f"({transfer.seconds:.2f}s of it for {transfer.models} model(s), "
                f"{transfer.nbytes / 2**20:.1f} MiB), {time.monotonic() - measured:.2f}s uploading"
            )
            if uploaded:
                self._failures = 0
            return uploaded

    def _failed(self, lease: Lease, reason: str) -> None:
        """Drop a lease whose items this agent could not time or the server would not take;
        after :data:`MAX_FAILED_LEASES` in a row, stop: the same items come back once their
        lease runs out, and an agent that keeps failing on them only spins."""
        self.log(f"lease {lease.id}: {reason}; dropping it")
        self._failures += 1
        if self._failures >= MAX_FAILED_LEASES:
            raise AgentStop(1, f"{self._failures} leases failed in a row; the last: {reason}")

    def upload(self, lease: Lease, results: Sequence[dict[str, Any]]) -> bool:
        """POST the lease's results, retrying while no server answers (the server records an
        upload once, so a retry after a lost answer is harmless)."""
        registration = self.registration
        assert registration is not None
        for attempt in range(UPLOAD_ATTEMPTS):
            try:
                answer = self.client.upload(registration.device_id, lease.id, results)
            except ServerUnreachable as error:
                if attempt + 1 == UPLOAD_ATTEMPTS:
                    self.log(f"lease {lease.id}: upload failed ({error}); giving it up")
                    return False
                wait = backoff(attempt)
                self.log(f"lease {lease.id}: upload failed ({error}); retrying in {wait:g}s")
                self.sleep(wait)
                continue
            except Unauthorized as error:
                raise AgentStop(2, f"the server refused the device token: {error.detail}") from None
            except LeaseConflict as error:
                self.log(f"lease {lease.id}: upload refused ({error.detail}); dropping it")
                return False
            except HTTPStatusError as error:
                self._failed(lease, f"upload rejected ({error})")
                return False
            self.log(
                f"uploaded {len(results)} result(s) of lease {lease.id}: "
                f"{answer.get('recorded', '?')} recorded, {answer.get('already', 0)} already"
            )
            return True
        return False  # pragma: no cover - the loop returns on its last attempt

    # --- timing

    def measure(self, lease: Lease, check: Callable[[], None]) -> list[dict[str, Any]]:
        """The results of a lease's items (one kind per lease; mixed kinds are handled kind by
        kind all the same). ``check`` raises :class:`LeaseLost` once the lease is gone."""
        registration = self.registration
        assert registration is not None
        device_id = registration.device_id
        transfer = self.transfer

        def fetch(sha256: str, copies: int) -> bytes:
            started = time.monotonic()
            model = self.client.model(device_id, sha256, copies)
            transfer.add(time.monotonic() - started, len(model))
            return model

        cache = ModelCache(fetch)
        results: list[dict[str, Any]] = []
        overheads = [item for item in lease.items if item.kind == "overhead"]
        blocks = [item for item in lease.items if item.kind == "block"]
        networks = [item for item in lease.items if item.kind == "network"]
        unknown = [
            item for item in lease.items if item.kind not in ("overhead", "block", "network")
        ]
        if unknown:
            raise ValueError(f"unknown work item kinds: {sorted({i.kind for i in unknown})}")
        for item in overheads:
            results.append(self._overhead(item, cache, check))
        if blocks:
            results += self._blocks(lease, blocks, cache, check)
        if networks:
            for item in networks:
                check()
                model = cache.get(item.model_sha256)
                reading = self._network_timer(item).measure(model, item.input_shape)
                results.append({
                    "item_id": item.id,
                    "reading": timing_json(reading),
                    "runs_ms": list(reading.runs_ms),
                })  # fmt: skip
            self.log(f"timed {len(networks)} network reading(s)")
        return results

    def _network_timer(self, item: LeaseItem) -> OrtTimer:
        """The timer of a network reading: one fresh session with the protocol the item
        states (``params["protocol"]``, the one its batch was queued with), else the server's
        network protocol."""
        stated = item.params.get("protocol")
        if isinstance(stated, dict):
            return self.timer.with_protocol(replace(protocol_from_json(stated), sessions=1))
        return self.network_timer

    def _overhead(
        self, item: LeaseItem, cache: ModelCache, check: Callable[[], None]
    ) -> dict[str, Any]:
        check()
        if item.extra_sha256 is None:
            raise ValueError(f"overhead item {item.id} names no chained model")
        single = cache.get(item.model_sha256)
        chained = cache.get(item.extra_sha256)
        copies = int(item.params.get("copies", 16))
        measured = self.timer.measure_overhead(single, chained, item.input_shape, copies)
        self.log(f"measured the per-call overhead: {measured.median_ms:.4f} ms")
        overhead = timing_json(measured)
        # OrtTimer clamps the median at 0 (noise can push a difference of timings below it);
        # clamping each session's estimate too keeps the median what it was (a clamp commutes
        # with the median) and states no negative time.
        overhead["session_medians_ms"] = [max(m, 0.0) for m in overhead["session_medians_ms"]]
        return {"item_id": item.id, "overhead": overhead}

    def _reference(self, sha256: str, shape: tuple[int, ...]) -> tuple[bytes, float]:
        """The reference block's model (downloaded once) and its baseline (timed once per
        agent run, as the local builder times it once per build)."""
        registration = self.registration
        assert registration is not None
        if sha256 not in self._references:
            self._references[sha256] = self.client.model(registration.device_id, sha256)
        model = self._references[sha256]
        key = (sha256, shape)
        if key not in self._baselines:
            self._baselines[key] = self.timer.measure(model, shape).median_ms
        return model, self._baselines[key]

    def _median_ms(self, model: bytes, shape: tuple[int, ...]) -> float:
        return self.timer.measure(model, shape).median_ms

    def _blocks(
        self,
        lease: Lease,
        items: Sequence[LeaseItem],
        cache: ModelCache,
        check: Callable[[], None],
    ) -> list[dict[str, Any]]:
        registration = self.registration
        assert registration is not None
        overhead_ms = lease.call_overhead_ms
        if overhead_ms is None and any(item.params.get("cold") for item in items):
            raise ValueError("the server handed out streamed timings before the device's overhead")

        def measure_one(item: LeaseItem) -> dict[str, Any]:
            check()
            model = cache.get(item.model_sha256)
            warm = self.timer.measure(model, item.input_shape)
            cold = None
            if item.params.get("cold"):
                assert overhead_ms is not None
                copies = stream_copies(warm.median_ms)
                replicated = cache.get(item.model_sha256, copies)
                streamed = self.timer.measure_streamed(
                    replicated, item.input_shape, copies, overhead_ms
                )
                cold = timing_json(streamed)
            return {"item_id": item.id, "warm": timing_json(warm), "cold": cold}

        # Items grouped by their reference block: each group gets its own drift check.
        groups: dict[tuple[str | None, tuple[int, ...]], list[LeaseItem]] = {}
        for item in items:
            shape = tuple(int(d) for d in item.params.get("reference_shape") or ())
            groups.setdefault((item.reference_sha256, shape), []).append(item)
        results: list[dict[str, Any]] = []
        for (reference_sha, reference_shape), group in groups.items():
            if reference_sha is None or not reference_shape:
                # No reference named: nothing to check drift against.
                results += [measure_one(item) for item in group]
                self.log(f"timed {len(group)} block(s) (no drift reference)")
                continue
            reference, baseline = self._reference(reference_sha, reference_shape)
            outcome = measure_with_drift_check(
                group,
                measure_one,
                partial(self._median_ms, reference, reference_shape),
                baseline,
                tolerance=registration.drift_tolerance,
                max_remeasures=registration.max_remeasures,
            )
            check()
            note = f", re-measured {outcome.remeasured}x" if outcome.remeasured else ""
            note += ", kept although drifting" if outcome.accepted else ""
            self.log(f"timed {len(group)} block(s) (drift {outcome.drift:.1%}{note})")
            results += outcome.results
        return results

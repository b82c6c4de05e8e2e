"""``nasvit worker``: claim queued searches from the database and run them.

A worker runs :func:`nasvit.searching.pipeline.run_search` in its own process with
``out = <artifact root>/<job id>`` and ``resume=True``: the pipeline appends every finished trial
to ``trials.jsonl`` before the next batch, so a job taken over after its worker died (its lease
expired) continues from the persisted trials and loses none.

While a job runs, a heartbeat thread renews the lease and polls the job's cancel flag about
once a second; the progress hook (called after every evaluated batch and profiled block) raises
to stop the search when the job was cancelled, the lease was lost or the worker is shutting
down. Cancellation therefore takes effect at the next progress point, within seconds; a search
that finishes its last step before that is recorded as succeeded.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import traceback
from pathlib import Path
from typing import Any

from filelock import FileLock, Timeout

from nasvit.errors import DeviceNotLocalError, NasvitError
from nasvit.searching.request import DeviceTarget, SearchRequest, SearchResult
from nasvit.server.db import Database
from nasvit.server.jobs import Claim, JobStore
from nasvit.settings import Settings

log = logging.getLogger("nasvit.server.worker")
PROGRESS_WRITE_INTERVAL_S = 0.5  # block profiling reports thousands of steps
CANCEL_POLL_S = 1.0


class _Stop(Exception):
    """Raised inside the search (from the progress hook) to end it early."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason  # "cancelled" | "lease lost" | "shutdown"


def _job_error(error: NasvitError) -> str:
    """The job's recorded error; reworded where the library's fix names a Python argument."""
    if isinstance(error, DeviceNotLocalError):
        return (
            f"{error.description}; measure it on a worker on that machine, or submit the search "
            "without a device"
        )
    return str(error)


def _best_summary(result: SearchResult) -> dict[str, Any]:
    best = result.best
    return {
        "short": best.short,
        "accuracy": best.accuracy,
        "predicted_ms": best.latency_ms,
        "measured_ms": result.best_measured_ms,
        "low_ms": best.low_ms,
        "high_ms": best.high_ms,
        "judged_ms": best.judged_ms,
    }


def default_worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def drop_torn_tail(path: Path) -> None:
    """Cut a partial last line off ``trials.jsonl``: a worker killed while writing a batch can
    leave one, and the pipeline refuses a file with an unreadable line. Complete lines stay."""
    if not path.is_file():
        return
    data = path.read_bytes()
    if data and not data.endswith(b"\n"):
        with path.open("r+b") as handle:
            handle.truncate(data.rfind(b"\n") + 1)
        log.warning("dropped a partly written trial at the end of %s", path)


class _Heartbeat(threading.Thread):
    """Renews the claim's lease every ``heartbeat_seconds`` and polls the cancel flag."""

    def __init__(self, jobs: JobStore, claim: Claim, settings: Settings, shutdown: threading.Event):
        super().__init__(name=f"heartbeat-{claim.job.id[:8]}", daemon=True)
        self.jobs, self.claim, self.settings, self.shutdown = jobs, claim, settings, shutdown
        self.finished = threading.Event()
        self.stop_reason: str | None = None

    def run(self) -> None:
        tick = min(CANCEL_POLL_S, self.settings.heartbeat_seconds)
        last_renewal = time.monotonic()
        while not self.finished.wait(tick):
            try:
                # Renewing is a write; polling the flag rides along every tick because it is
                # what makes cancellation prompt (the lease itself only needs renewing rarely).
                now = time.monotonic()
                if now - last_renewal >= self.settings.heartbeat_seconds:
                    owned, cancel = self.jobs.heartbeat(self.claim, self.settings.lease_seconds)
                    last_renewal = now
                else:
                    owned, cancel = True, self.jobs.get(self.claim.job.id).cancel_requested
            except Exception:  # a database hiccup: keep the job, try again next tick
                log.exception("heartbeat of job %s failed", self.claim.job.id)
                continue
            if not owned:
                self.stop_reason = "lease lost"
            elif cancel:
                self.stop_reason = "cancelled"
            elif self.shutdown.is_set():
                self.stop_reason = "shutdown"


class Worker:
    """Claims and runs jobs one at a time. :meth:`stop` (e.g. on SIGTERM) ends the loop and
    hands a running job back to the queue at its next progress point."""

    def __init__(self, settings: Settings, name: str | None = None, ray_address: str | None = None):
        self.settings = settings
        self.name = name or default_worker_name()
        # Candidates of every job go to this Ray cluster (None: in-process, or a local Ray
        # when a job asks for several workers).
        self.ray_address = ray_address
        self.database = Database.open(settings.resolved_database_url)
        self.jobs = JobStore(self.database)
        self.shutdown = threading.Event()

    def stop(self) -> None:
        self.shutdown.set()

    def run(self, once: bool = False, poll_seconds: float = 2.0) -> int:
        """Process jobs until stopped (``once``: at most one, and stop when none is queued).
        Returns how many jobs this worker ran."""
        ran = 0
        while not self.shutdown.is_set():
            try:
                claim = self.jobs.claim(self.name, self.settings.lease_seconds)
            except Exception:  # database unreachable for a moment: wait and retry
                log.exception("claiming a job failed")
                claim = None
            if claim is None:
                if once:
                    break
                self.shutdown.wait(poll_seconds)
                continue
            try:
                self.run_job(claim)
            except Exception:  # e.g. the database went away while recording the outcome
                log.exception(
                    "job %s: not recorded; its lease will expire and a later claim resumes it",
                    claim.job.id,
                )
            ran += 1
            if once:
                break
        return ran

    def run_job(self, claim: Claim) -> str:
        """Run one claimed job to its end; returns the status it was left in."""
        folder = self.settings.resolved_artifact_root / claim.job.id
        folder.mkdir(parents=True, exist_ok=True)
        # A previous owner that lost its lease but still runs would append to the same file:
        # wait for it to notice (its next progress point) and let go.
        lock = FileLock(str(folder / ".worker.lock"))
        try:
            lock.acquire(timeout=self.settings.heartbeat_seconds)
        except Timeout:
            log.warning("job %s is still held by another process; requeueing", claim.job.id)
            self.jobs.release(claim)
            return "queued"
        try:
            return self._run_locked(claim, folder)
        finally:
            lock.release()

    def _run_locked(self, claim: Claim, folder: Path) -> str:
        from nasvit.searching.pipeline import TRIALS_FILE, run_search

        job = claim.job
        log.info("running job %s (attempt %d)", job.id, claim.attempt)
        drop_torn_tail(folder / TRIALS_FILE)
        for target in job.request.get("devices") or []:  # a search of several devices
            drop_torn_tail(folder / target["name"] / TRIALS_FILE)
        heartbeat = _Heartbeat(self.jobs, claim, self.settings, self.shutdown)
        last_write: dict[str, Any] = {"stage": "", "at": 0.0}

        def progress(stage: str, done: int, total: int) -> None:
            if heartbeat.stop_reason is not None:
                raise _Stop(heartbeat.stop_reason)
            now = time.monotonic()
            due = now - last_write["at"] >= PROGRESS_WRITE_INTERVAL_S
            if stage != last_write["stage"] or done >= total or due:
                if not self.jobs.set_progress(claim, stage, done, total):
                    raise _Stop("lease lost")
                last_write.update(stage=stage, at=now)

        heartbeat.start()
        try:
            # The search opens the latency store, trial store and default supernets that these
            # settings name (the same database as the jobs').
            result = run_search(
                self._search_request(job.request, folder), progress, settings=self.settings
            )
        except _Stop as stop:
            return self._stopped(claim, stop.reason)
        except NasvitError as exc:  # e.g. NoSubnetFitsError: no candidate measured in budget
            return self._finish(claim, "failed", error=_job_error(exc))
        except KeyboardInterrupt:
            self.jobs.release(claim)  # the trials so far stay; the next claim resumes
            raise
        except Exception as exc:  # a bug: keep the worker alive, record it, log the traceback
            log.error("job %s crashed:\n%s", job.id, traceback.format_exc())
            return self._finish(
                claim, "failed", error=f"internal error: {type(exc).__name__}: {exc}"
            )
        finally:
            heartbeat.finished.set()
            heartbeat.join()
        summary = _best_summary(result)
        if result.per_device:  # the first device's best, and every device's by name
            summary["devices"] = {
                name: _best_summary(one) for name, one in result.per_device.items()
            }
        return self._finish(claim, "succeeded", best=summary)

    def _search_request(self, stored: dict[str, Any], folder: Path) -> SearchRequest:
        """The job's stored request (validated when the job was created) as the pipeline's,
        resumed in the job's folder on this worker's Ray cluster and checkpoint."""
        checkpoint = self.settings.checkpoints.get(stored["space"])
        if stored.get("devices"):
            # Stored parsed (see the API's create_search): the percentile a device's budget
            # holds at is already the effective one.
            devices = [
                DeviceTarget(t["name"], t["budget_ms"], t.get("budget_percentile"))
                for t in stored["devices"]
            ]
            stored = {**stored, "devices": devices}
        return SearchRequest.from_mapping(
            stored,
            checkpoint=None if checkpoint is None else Path(checkpoint),
            out=folder,
            resume=True,
            ray_address=self.ray_address,
        )

    def _stopped(self, claim: Claim, reason: str) -> str:
        if reason == "cancelled":
            return self._finish(claim, "cancelled")
        if reason == "shutdown":
            self.jobs.release(claim)
            log.info("job %s handed back to the queue (worker shutting down)", claim.job.id)
            return "queued"
        log.warning("job %s: lease lost to another worker; stopped", claim.job.id)
        return "lost"

    def _finish(self, claim: Claim, status: str, **fields: Any) -> str:
        if not self.jobs.finish(claim, status, **fields):
            log.warning("job %s was taken over before it could be marked %s", claim.job.id, status)
            return "lost"
        log.info(
            "job %s %s%s", claim.job.id, status, f": {fields['error']}" if "error" in fields else ""
        )
        return status

    def close(self) -> None:
        self.database.close()

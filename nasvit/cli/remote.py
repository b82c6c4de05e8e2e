"""``nasvit search --server URL``: submit the search to a nasvit service and follow it.

The service's worker runs the search (on a remote device, its agents time the blocks, the
validation networks and the final candidates); this side shows the job's progress, waits for
its end, and downloads the artifacts into ``--out``, so the result reads as a local search's.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from nasvit.errors import NasvitError
from nasvit.searching.request import progress_message

#: The artifacts a finished job hands out, downloaded into ``--out``.
ARTIFACTS = ("report.json", "best.json", "best.onnx", "pareto.csv", "trials.csv", "trials.jsonl")
POLL_S = 1.0


def _problem(response: httpx.Response) -> str:
    try:
        return str(response.json()["detail"])
    except (ValueError, KeyError, TypeError):
        return response.text[:200] or response.reason_phrase


def run_remote_search(
    server: str,
    token: str | None,
    body: dict[str, Any],
    out: Path,
    show: Callable[[str], None],
    poll_s: float = POLL_S,
) -> dict[str, Any]:
    """Queue ``body`` on ``server``, report each new progress message through ``show``, and
    once the job succeeded download its artifacts into ``out``; returns ``report.json``.

    Raises:
        NasvitError: the service refused the request (its reason), the job failed or was
            cancelled (its error), or the service could not be reached.
    """
    base = server.rstrip("/") + "/api/v1"
    headers = {} if token is None else {"Authorization": f"Bearer {token}"}
    try:
        with httpx.Client(base_url=base, headers=headers, timeout=30) as client:
            created = client.post("/searches", json=body)
            if created.status_code != 202:
                raise NasvitError(f"{server} refused the search: {_problem(created)}")
            job = created.json()
            show(f"queued as job {job['id']} on {server}")
            last = ""
            while job["status"] in ("queued", "running"):
                time.sleep(poll_s)
                polled = client.get(f"/searches/{job['id']}")
                if polled.status_code != 200:
                    raise NasvitError(f"job {job['id']}: {_problem(polled)}")
                job = polled.json()
                message = progress_message(job["progress"])
                if message != last:
                    show(message)
                    last = message
            if job["status"] != "succeeded":
                raise NasvitError(f"job {job['id']} {job['status']}: {job.get('error') or ''}")
            out.mkdir(parents=True, exist_ok=True)
            for name in ARTIFACTS:
                response = client.get(f"/searches/{job['id']}/artifacts/{name}")
                if response.status_code == 200:
                    (out / name).write_bytes(response.content)
    except httpx.TransportError as exc:
        raise NasvitError(f"cannot reach {server}: {exc}") from None
    report: dict[str, Any] = json.loads((out / "report.json").read_text())
    return report

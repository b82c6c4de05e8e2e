"""The dashboard shows each prediction's interval and the budget as the job stated it, in real
headless Chromium (the ``browser`` fixture) against ``create_app`` on uvicorn (127.0.0.1).

The job's results are written by hand (trials.jsonl and report.json, in the pipeline's
format) so the intervals on screen are known numbers; the searches themselves are covered by
test_dashboard.py."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import asdict
from typing import Any

import httpx
import pytest

from nasvit.searching.request import Trial

from nasvit_testing.service import served_in_thread

pytestmark = pytest.mark.slow

BEST = Trial(0, {}, "r32_best", 0.709, 0.9, 0.709, 1.02, True, 0.95, 1.12, 1.15)
OTHER = Trial(1, {}, "r32_fast", 0.5, 1.5, 0.5, 0.5, True)  # no interval: never validated
# Dominated by both, so that every trace of the plot has a point (empty ones are not drawn).
SLOW = Trial(2, {}, "r32_slow", 0.4, 1.6, 0.4, 1.5, True, 1.3, 1.7, 1.65)


@pytest.fixture(scope="module")
def served_job(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    """(the page's URL, the job id) of a finished job with a budget at 90% confidence."""

    from nasvit.server.app import create_app
    from nasvit.server.jobs import JobStore
    from nasvit.settings import Settings

    home = tmp_path_factory.mktemp("intervals-home")
    saved = {k: os.environ.pop(k) for k in list(os.environ) if k.startswith("NASVIT_")}
    try:
        settings = Settings(home=home, read_access="public")
        app = create_app(settings)
    finally:
        os.environ.update(saved)
    services = app.state.services
    token = services.tokens.create("intervals")
    with served_in_thread(app) as url:
        body = {"space": "efficientformer", "budget": "2ms", "budget_confidence": 0.9}
        created = httpx.post(
            f"{url}/api/v1/searches", json=body, headers={"Authorization": f"Bearer {token}"}
        )
        assert created.status_code == 202, created.text
        job_id = created.json()["id"]
        folder = services.job_folder(job_id)
        folder.mkdir(parents=True)
        trials = "".join(json.dumps(asdict(t)) + "\n" for t in (BEST, OTHER, SLOW))
        (folder / "trials.jsonl").write_text(trials)
        report = {
            "pareto_front": [{"index": 0, "measured_ms": 1.17}],
            "best": {"index": 0, "measured_ms": 1.17},
        }
        (folder / "report.json").write_text(json.dumps(report))
        jobs = JobStore(services.database)
        claim = jobs.claim("hand", lease_seconds=60)
        assert claim is not None and claim.job.id == job_id
        best = {"short": BEST.short, "accuracy": BEST.accuracy, "predicted_ms": 1.02,
                "measured_ms": 1.17, "low_ms": 0.95, "high_ms": 1.12,
                "judged_ms": 1.15}  # fmt: skip
        assert jobs.finish(claim, "succeeded", best=best)
        yield url, job_id


def _hover(page: Any, trace: int) -> str:
    """The hover label of the first point of the Pareto plot's ``trace``."""
    point = page.locator("#pareto-plot .scatterlayer .trace").nth(trace).locator("path.point")
    box = point.first.bounding_box()
    assert box is not None
    page.mouse.move(5, 5)
    page.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
    label = page.locator("#pareto-plot .hoverlayer .hovertext").first
    label.wait_for(timeout=10_000)
    return label.text_content() or ""  # an SVG node: text_content, not inner_text


def test_hover_shows_the_interval_and_the_measured_latency(
    browser: Any, served_job: tuple[str, str]
) -> None:
    url, job_id = served_job
    context = browser.new_context(viewport={"width": 1400, "height": 1100})
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    try:
        page.goto(f"{url}/#job={job_id}")
        page.locator("#job-status.status-succeeded").wait_for(timeout=30_000)
        page.wait_for_function(
            "() => document.querySelector('#pareto-plot').dataset.trials === '3'", timeout=30_000
        )
        summary = page.locator("#job-summary").inner_text()
        assert "budget 2 ms at 90% confidence" in summary
        assert "predicted 1.02 ms [0.95, 1.12] at 90%" in summary
        row = page.locator(f"#jobs-table tr[data-job-id='{job_id}']").inner_text()
        assert "2 ms at 90% confidence" in row

        best = _hover(page, 3)  # the trace order of app.js: front, dominated, measured, best
        assert "r32_best" in best
        assert "predicted 1.02 ms [0.95, 1.12] at 90%" in best
        assert "measured 1.17 ms" in best and "judged 1.15 ms against the budget" in best

        fast = _hover(page, 0)  # the front's first point is the fastest
        assert "r32_fast" in fast and "predicted 0.5 ms (no interval)" in fast
        assert "not measured" in fast and "judged" not in fast
        assert errors == []
    finally:
        context.close()

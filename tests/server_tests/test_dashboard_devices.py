"""The dashboard's devices view in real headless Chromium (the ``browser`` fixture) against
``create_app`` on uvicorn (127.0.0.1): an agent-managed device part way through its table, a
silent one and a local one, with their status, last contact, coverage per space, latest
validation error and interval width, and queue. The page is left open while the agent
finishes the table: it follows by polling alone.

The browser also checks that the OpenAPI document's patterns mean in ECMAScript (JSON
Schema's regex dialect) what they mean to the server.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from nasvit_testing.agent_api import (
    AgentService,
    agent_service,
    claim,
    enqueue_blocks,
    fingerprint,
    finish_overhead,
    results_for,
    upload,
)
from nasvit_testing.synthetic import synthetic_error_model

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
ARTIFACTS = REPO / "test-artifacts" / "dashboard"
BLOCKS = 4


@dataclass
class Fleet:
    service: AgentService
    token: str  # the "pi" device's token
    ids: dict[str, str]  # name -> device id


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    from sqlalchemy import update

    from nasvit.latency_db.device import DeviceFingerprint
    from nasvit.latency_db.models import Device
    from nasvit.latency_db.records import ErrorStats, ValidationRecord
    from nasvit.sql import utcnow

    with agent_service(tmp_path_factory.mktemp("devices-dashboard")) as service:
        store = service.store
        local = store.ensure_device(DeviceFingerprint.from_dict(fingerprint("local")), "local-box")
        token = service.device_token("pi")
        assert service.register("pi", token, agent="pi-agent").status_code == 200
        pi = store.device("pi")
        enqueue_blocks(service, pi.id, BLOCKS, space="tiny")
        finish_overhead(service, "pi", token)
        lease = claim(service, "pi", token, max_items=2).json()
        assert (
            upload(service, "pi", token, lease["lease_id"], results_for(lease)).status_code == 200
        )
        store.add_validation(
            pi.id,
            ValidationRecord(
                "tiny",
                "v1",
                ErrorStats(40, 3.0, 0.8, 0.99),
                details={"error_model": synthetic_error_model().to_dict()},
            ),
        )
        jetson_token = service.device_token("jetson")
        assert service.register("jetson", jetson_token, agent="jetson-agent").status_code == 200
        jetson = store.device("jetson")
        with store.transaction() as session:  # its agent went quiet two hours ago
            session.execute(
                update(Device)
                .where(Device.id == jetson.id)
                .values(last_seen_at=utcnow() - timedelta(hours=2))
            )
        yield Fleet(service, token, {"pi": pi.id, "jetson": jetson.id, "local-box": local.id})


@pytest.fixture(scope="module")
def page(browser: Any, fleet: Fleet) -> Iterator[Any]:
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    opened = context.new_page()
    errors: list[str] = []
    opened.on("pageerror", lambda error: errors.append(str(error)))
    opened.errors = errors
    opened.goto(fleet.service.url + "/")
    opened.locator("#devices-table tbody tr").first.wait_for(timeout=30_000)
    yield opened
    context.close()


def _percent(value: float) -> str:
    """What the page shows for a percentage (2 significant digits, as JavaScript prints it)."""
    return f"{float(f'{value:.2g}'):g} %"


def _row(page: Any, fleet: Fleet, name: str) -> Any:
    return page.locator(f"#devices-table tr[data-device-id='{fleet.ids[name]}']")


def test_the_devices_view_shows_each_devices_state(page: Any, fleet: Fleet) -> None:
    listed = {d["name"]: d for d in fleet.service.http.get("/api/v1/devices").json()}
    assert page.locator("#devices-table tbody tr").count() == 3
    assert page.locator("#devices-total").inner_text() == "(3)"
    statuses = {name: _row(page, fleet, name).locator(".status").inner_text() for name in fleet.ids}
    assert statuses == {"pi": "online", "jetson": "silent", "local-box": "local"}

    pi = _row(page, fleet, "pi")
    assert listed["pi"]["last_agent"] in pi.locator(".last-seen").inner_text()
    assert "jetson-agent" in _row(page, fleet, "jetson").locator(".last-seen").inner_text()
    assert _row(page, fleet, "local-box").locator(".last-seen").inner_text() == "—"
    coverage = pi.locator(".coverage[data-space='tiny']")
    assert coverage.inner_text().strip() == f"tiny 2/{BLOCKS}"
    assert coverage.locator("progress").evaluate("(bar) => [bar.value, bar.max]") == [2, BLOCKS]
    assert pi.locator(".entries").inner_text() == "2"
    validation = listed["pi"]
    assert pi.locator(".validation-error").inner_text() == _percent(validation["prediction_mape"])
    widest = max(band["interval_width"] for band in validation["latest_validation"]["bands"])
    assert validation["interval_width"] == widest
    assert pi.locator(".interval-width").inner_text() == _percent(100 * widest)
    queue = {
        line.get_attribute("data-kind"): line.inner_text()
        for line in pi.locator(".queue-kind").all()
    }
    assert queue == {
        "overhead": "overhead: 0 queued, 0 leased, 1 done",
        "block": f"block: {BLOCKS - 2} queued, 0 leased, 2 done",
    }
    local = _row(page, fleet, "local-box")
    assert local.locator(".validation-error").inner_text() == "—"
    assert local.locator(".coverage-cell").inner_text() == "—"
    assert page.errors == []


def test_the_view_follows_the_agent_to_a_full_table(page: Any, fleet: Fleet) -> None:
    service, token = fleet.service, fleet.token
    lease = claim(service, "pi", token, max_items=BLOCKS).json()
    assert upload(service, "pi", token, lease["lease_id"], results_for(lease)).status_code == 200
    # No reload: the page polls while the device has work queued.
    page.wait_for_function(
        "(text) => document.querySelector(\"#devices-table .coverage[data-space='tiny']\")"
        "?.textContent.trim() === text",
        arg=f"tiny {BLOCKS}/{BLOCKS}",
        timeout=30_000,
    )
    pi = _row(page, fleet, "pi")
    assert pi.locator(".queue-kind[data-kind='block']").inner_text() == (
        f"block: 0 queued, 0 leased, {BLOCKS} done"
    )
    assert pi.locator(".entries").inner_text() == str(BLOCKS)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "devices.png"), full_page=True)
    assert page.errors == []


# Budgets the pattern must read the same in ECMAScript as in Python (see
# test_openapi_constraints.py for the agreement with the parser).
BUDGET_EXAMPLES = [
    "2ms", " 2 MS ", "1500µs", "1500µS", ".5ms", "1e-2s", "1E+2us", "2ms@p90", "2 ms @ P99",
    "2ms@p090", "0", "0ms", "0.0e5ms", "-1ms", "abc", "2", "2.ms", "2ms@p42", "1e100ms",
    "2ms\t", "\u20032ms", "2ms\n", "2μs", "2Μs", "2ms@p90@p90",
]  # fmt: skip
NAME_EXAMPLES = ["pi", "pi-4.local_1", "-pi", "two words", "x" * 200, "x" * 201, "", "ü", "pi\n"]


def test_the_schemas_patterns_mean_the_same_in_ecmascript(page: Any, fleet: Fleet) -> None:
    from nasvit.server import schemas

    document = fleet.service.http.get("/openapi.json").json()
    patterns: set[str] = set()

    def collect(node: Any) -> None:
        if isinstance(node, dict):
            if isinstance(node.get("pattern"), str):
                patterns.add(node["pattern"])
            for value in node.values():
                collect(value)
        elif isinstance(node, list):
            for value in node:
                collect(value)

    collect(document)
    assert schemas.BUDGET_PATTERN in patterns
    examples = [*BUDGET_EXAMPLES, *NAME_EXAMPLES, "nasvit-block/1|k|1", "nasvit-block/1", "a" * 64]
    for pattern in sorted(patterns):
        # JSON Schema: ECMA-262 with the unicode flag, unanchored (the patterns anchor).
        in_browser = page.evaluate(
            "([pattern, texts]) => texts.map((t) => new RegExp(pattern, 'u').test(t))",
            [pattern, examples],
        )
        # The server's reading: a search where "$" is the end of the text (pydantic's Rust
        # engine; the budget's fullmatch), which Python writes "\\Z" ("$" also matches before
        # a final newline there).
        server = re.compile(pattern[:-1] + "\\Z" if pattern.endswith("$") else pattern)
        in_python = [server.search(text) is not None for text in examples]
        assert in_browser == in_python, pattern

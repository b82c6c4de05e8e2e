"""bench/bench_latency.py: it runs end to end on a tiny space and writes the figures and the
machine's state it promises. The figures' values are timings, which are the bench's business;
these tests check that they are there, consistent with each other and taken on fresh networks."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest

from nasvit.latency_db import LatencyStore
from nasvit.search_spaces import get_space, registry
from nasvit.search_spaces.efficientformer import EfficientFormerSpace

from nasvit_testing.layout import REPO_ROOT
from nasvit_testing.tiny_space import TINY, TINY_CONFIG

BENCH = REPO_ROOT / "bench" / "bench_latency.py"


@pytest.fixture
def bench(monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    """The script as a module (bench/ is not a package)."""
    spec = importlib.util.spec_from_file_location("bench_latency", BENCH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "bench_latency", module)  # its dataclasses look it up
    spec.loader.exec_module(module)
    return module


def test_quick_mode_is_one_small_space_without_the_main_job(bench: ModuleType) -> None:
    args = bench.parse_args(["--quick"])
    assert args.spaces == bench.QUICK["spaces"] and "," not in args.spaces
    assert args.fresh == bench.QUICK["fresh"] < 200
    assert args.main_job is False
    full = bench.parse_args([])
    assert full.spaces is None and full.fresh == 200 and full.main_job is True


def test_the_main_jobs_table_uses_the_default_supernets_space_and_data_shapes(
    bench: ModuleType,
) -> None:
    (job,) = bench.table_jobs(bench.parse_args(["--spaces", "none"]))
    assert job.main_job
    assert (job.num_classes, job.in_channels) == (10, 1)  # digits: 10 classes, grayscale
    assert job.space.name == bench.MAIN_JOB_SPACE
    assert job.space.restrictions  # the default supernet's restricted space, not the family


def test_error_and_interval_figures(bench: ModuleType) -> None:
    truth = np.array([1.0, 1.0, 1.0, 1.0])
    predicted = np.array([1.03, 0.92, 1.2, 1.0])
    figures = bench.error_figures(predicted, truth)
    assert figures["within_5"] == 0.5 and figures["within_10"] == 0.75
    assert figures["worst_abs_error_pct"] == pytest.approx(20.0)
    assert figures["median_bias_pct"] == pytest.approx(1.5)
    low, high = predicted * 0.95, predicted * 1.05
    intervals = {c: (low, high) for c in bench.CONFIDENCES}
    judged = bench.interval_figures(truth, predicted, intervals)
    assert judged["coverage"]["0.9"] == 0.5  # 1.03 and 1.0 cover the truth
    assert judged["median_width_90_pct"] == pytest.approx(10.0)
    nan = np.full(4, np.nan)
    unvalidated = bench.interval_figures(truth, predicted, {c: (nan, nan) for c in intervals})
    assert unvalidated["coverage"]["0.9"] is None and unvalidated["median_width_90_pct"] is None


@pytest.mark.slow
def test_the_bench_judges_a_table_on_fresh_networks_and_records_the_machine(
    bench: ModuleType, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(registry._FACTORIES, TINY, lambda: EfficientFormerSpace(TINY_CONFIG))
    out, db = tmp_path / "bench.json", tmp_path / "latency.db"
    bench.main(
        ["--spaces", TINY, "--resolutions", "16", "--no-main-job", "--validate", "5",
         "--fresh", "4", "--readings", "2", "--db", str(db), "--out", str(out)]
    )  # fmt: skip

    report = json.loads(out.read_text())
    run = report["run"]
    assert run["commit"] and "bench_latency.py" in run["command"] and "--fresh 4" in run["command"]
    assert len(run["load_before"]) == len(run["load_after"]) == 3
    assert run["cpu_model"] and run["logical_cores"] >= 1 and run["started_utc"].endswith("UTC")
    (table,) = report["tables"]
    assert table["name"] == TINY and not table["main_job"]
    overall = table["all"]
    assert overall["networks"] == table["fresh"]["networks"] == 4
    assert set(overall["coverage"]) == {"0.8", "0.9", "0.95"}
    assert all(0.0 <= value <= 1.0 for value in overall["coverage"].values())  # validated
    assert overall["median_width_90_pct"] > 0
    assert 0 <= overall["within_5"] <= overall["within_10"] <= 1
    assert overall["worst_abs_error_pct"] >= overall["mape"]
    assert table["noise_ceiling"]["within_10"] is not None
    assert all(0.0 <= share <= 1.0 for share in table["budget_bounds"].values())
    assert sum(band["networks"] for band in table["bands"]) == 4
    assert all(len(network["readings_ms"]) == 2 for network in table["networks"])
    space = get_space(TINY).restrict(resolution=[16])
    assert table["smallest"]["arch"] == space.short_string(space.smallest())
    assert table["smallest"]["verdict"] in ("PASS", "FAIL")
    assert set(table["targets"]) >= {"worst_error_le_25pct", "coverage_90_in_87_95pct"}

    # Fresh: none of the judged networks was measured by the validation the table came from.
    store = LatencyStore.open(f"sqlite:///{db}")
    validation = store.latest_validation(store.devices()[0].id)
    assert validation is not None
    used = {network["arch"] for network in validation.details["networks"]}
    assert used and not used & {network["arch"] for network in table["networks"]}

    text = out.with_suffix(".md").read_text()
    assert run["commit"] in text and run["command"] in text and "| coverage 80 / 90 / 95% |" in text

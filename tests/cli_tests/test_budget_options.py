"""Budgets as users state them: a percentile in the budget's text (``2ms@p90``), a confidence
(``--confidence``, ``budget_confidence``), their checks in the request, the console script's
exits, and the summary line the CLI prints for the chosen subnet."""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from nasvit.errors import NasvitError, NoSubnetFitsError
from nasvit.guarantees import BUDGET_PERCENTILES
from nasvit.searching.budget import parse_budget_spec
from nasvit.searching.request import SearchRequest, SearchResult, Trial, request_option

NASVIT = shutil.which("nasvit", path=str(Path(sys.executable).parent))
ALLOWED = "p50, p75, p90, p95, p99"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2ms", (2.0, None)),
        ("2ms@p90", (2.0, 90)),
        ("2 ms @ p99", (2.0, 99)),
        ("1500us@P50", (1.5, 50)),
        ("0.002s @p75", (2.0, 75)),
    ],
)
def test_a_budget_may_name_a_percentile(text: str, expected: tuple[float, int | None]) -> None:
    budget_ms, percentile = parse_budget_spec(text)
    assert budget_ms == pytest.approx(expected[0]) and percentile == expected[1]


@pytest.mark.parametrize("text", ["2ms@p42x", "2ms@p42", "2ms@p", "2ms@90", "2ms@", "2ms@p9 0"])
def test_an_unknown_percentile_names_the_allowed_ones(text: str) -> None:
    with pytest.raises(NasvitError, match=ALLOWED) as raised:
        parse_budget_spec(text)
    assert raised.value.argument == "budget"


def test_the_allowed_percentiles_are_the_guarantees_own() -> None:
    assert request_option("budget_percentile").choices == BUDGET_PERCENTILES
    for percentile in BUDGET_PERCENTILES:
        assert parse_budget_spec(f"3ms@p{percentile}") == (3.0, percentile)


def request(**values: object) -> SearchRequest:
    return SearchRequest.from_mapping({"space": "efficientformer", **values})


def test_the_request_reads_the_percentile_from_the_budgets_text() -> None:
    stated = request(budget="2ms@p90")
    assert (stated.budget_ms, stated.budget_percentile) == (2.0, 90)
    assert stated.guarantee.percentile == 90 and stated.guarantee.confidence is None
    # Said twice, the same way: accepted.
    assert request(budget="2ms@p90", budget_percentile=90).budget_percentile == 90
    confident = request(budget="2ms", budget_confidence=0.9)
    assert confident.guarantee.confidence == 0.9 and confident.budget_percentile is None
    assert request(budget="2ms").guarantee.plain


@pytest.mark.parametrize(
    ("values", "option", "message"),
    [
        ({"budget": "2ms@p90", "budget_percentile": 99}, "budget_percentile", "state the perc"),
        ({"budget": "2ms", "budget_percentile": 42}, "budget_percentile", ALLOWED),
        ({"budget": "2ms", "budget_confidence": 0.0}, "budget_confidence", "between 0 and 1"),
        ({"budget": "2ms", "budget_confidence": 1.0}, "budget_confidence", "between 0 and 1"),
        ({"budget": "2ms", "budget_confidence": 1.5}, "budget_confidence", "between 0 and 1"),
        ({"budget": "2ms", "budget_confidence": -0.1}, "budget_confidence", "between 0 and 1"),
        ({"budget": "2ms", "budget_confidence": "0.9"}, "budget_confidence", "a number"),
        ({"budget": "2ms", "budget_confidence": True}, "budget_confidence", "a number"),
        ({"budget": "2ms@p90", "budget_confidence": 0.9}, "budget_confidence", "not both"),
    ],
)
def test_the_request_refuses_a_bad_guarantee_naming_the_option(
    values: dict[str, object], option: str, message: str
) -> None:
    with pytest.raises(NasvitError, match=message) as raised:
        request(**values)
    assert raised.value.argument == option


# ---------------------------------------------------------------------- the console script
def search(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    assert NASVIT, "the nasvit console script is not installed next to this python"
    command = [NASVIT, "search", "--space", "efficientformer", "--out", "run", *args]
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("NASVIT_") or k == "NASVIT_AUTO_WORKERS"
    }
    env["NASVIT_HOME"] = str(tmp_path / "home")
    return subprocess.run(
        command, capture_output=True, text=True, timeout=300, cwd=tmp_path, env=env
    )


@pytest.mark.parametrize("confidence", ["0", "1", "1.5", "-0.1", "abc"])
def test_a_confidence_outside_0_1_exits_2_with_the_range(tmp_path: Path, confidence: str) -> None:
    result = search(tmp_path, "--budget", "2ms", f"--confidence={confidence}")
    assert result.returncode == 2, result.stderr
    if confidence == "abc":  # not a number: the option parser's own message
        assert "Invalid value for '--confidence'" in result.stderr
    else:
        assert "confidence must be between 0 and 1 (exclusive)" in result.stderr
        assert "--confidence" in result.stderr and result.stderr.count("\n") == 1
    assert "Traceback" not in result.stderr + result.stdout
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("budget", ["2ms@p42x", "2ms@p42"])
def test_an_unknown_percentile_exits_2(tmp_path: Path, budget: str) -> None:
    result = search(tmp_path, "--budget", budget)
    assert result.returncode == 2, result.stderr
    assert "unknown latency percentile" in result.stderr and ALLOWED in result.stderr
    assert "--budget" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "run").exists()


def test_a_percentile_budget_is_read_by_the_cli(tmp_path: Path) -> None:
    # The budget is read before the controller is checked: an error about the controller
    # means "2ms@p90" was accepted.
    result = search(tmp_path, "--budget", "2ms@p90", "--controller", "nsga3")
    assert result.returncode == 2 and "unknown controller 'nsga3'" in result.stderr
    # ... and its percentile was kept: with a confidence too it is refused as both.
    both = search(tmp_path, "--budget", "2 ms @ p90", "--confidence", "0.9")
    assert both.returncode == 2 and "not both" in both.stderr, both.stderr


def test_no_subnet_fitting_the_budget_exits_2_with_its_reason(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import nasvit.searching.pipeline as pipeline
    from nasvit.cli import main

    reason = "no candidate measured within 2 ms; the closest, r32_x, measured 2.15 ms"

    def no_fit(*args: object, **kwargs: object) -> SearchResult:
        raise NoSubnetFitsError(reason)

    monkeypatch.setattr(pipeline, "run_search", no_fit)
    monkeypatch.setenv("NASVIT_HOME", str(tmp_path / "home"))
    args = ["search", "--space", "efficientformer", "--budget", "2ms@p90"]
    with pytest.raises(SystemExit) as exited:
        main([*args, "--out", str(tmp_path / "run")])
    assert exited.value.code == 2
    captured = capsys.readouterr()
    assert reason in captured.err and "under" not in captured.out + captured.err


# ---------------------------------------------------------------------- the summary line
def _result(
    measured_ms: float, low: float | None, high: float | None, statistic: float | None = None
) -> SearchResult:
    best = Trial(3, {}, "r32_best", 0.709, 0.9, 0.709, 1.02, True, low, high, high or 1.02)
    report: dict = {"best": {"test_accuracy": 0.695}}
    if statistic is not None:  # what the decision compared with the budget
        report["best"]["statistic_ms"] = statistic
    return SearchResult(best, measured_ms, [], [best], report)


def _plain(text: str) -> str:
    from rich.console import Console

    console = Console(width=400, record=True, file=io.StringIO())
    console.print(text)
    return console.export_text().strip()


def test_the_summary_says_under_only_of_a_measurement_within_the_budget() -> None:
    from nasvit.cli.search import best_summary

    at_p90 = request(budget="2ms@p90")
    line = _plain(best_summary(_result(1.17, 0.95, 1.12, statistic=1.31), at_p90))
    assert line == (
        "best: r32_best 0.709 acc (0.695 test), measured 1.17 ms (p90 of calls 1.31 ms, "
        "predicted 1.02 ms, 90% interval 950 us-1.12 ms) under 2 ms at p90"
    )
    # The median within the budget, the percentile of calls not: not "under".
    tail = _plain(best_summary(_result(1.17, 0.95, 1.12, statistic=2.3), at_p90))
    assert "under" not in tail and tail.endswith("OVER 2 ms at p90")
    at_confidence = request(budget="2ms", budget_confidence=0.9)
    confident = _plain(best_summary(_result(1.17, 0.95, 1.12, statistic=1.17), at_confidence))
    assert confident.endswith("under 2 ms at 90% confidence")
    over = _plain(best_summary(_result(2.15, 0.95, 1.12), request(budget="2ms")))
    assert "under" not in over and "measured 2.15 ms" in over and over.endswith("OVER 2 ms")
    unvalidated = _plain(best_summary(_result(1.17, None, None), request(budget="2ms")))
    assert "never validated" in unvalidated and "interval 0" not in unvalidated
    assert unvalidated.endswith("under 2 ms")

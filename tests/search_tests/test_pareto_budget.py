"""Pareto utilities and budget parsing against hand-computed answers."""

from __future__ import annotations

import pytest

from nasvit.errors import NasvitError
from nasvit.searching.budget import parse_budget
from nasvit.searching.pareto import (
    crowding_distance,
    hypervolume,
    non_dominated_sort,
    pareto_front,
)

POINTS = [(0.9, 3.0), (0.8, 1.0), (0.85, 2.0), (0.7, 2.5), (0.95, 5.0), (0.6, 0.5)]


@pytest.mark.parametrize(
    ("text", "ms"),
    [
        ("2ms", 2.0),
        ("2 ms", 2.0),
        ("1500us", 1.5),
        ("0.002s", 2.0),
        ("250 µs", 0.25),  # the micro sign
        ("250 \u03bcs", 0.25),  # the Greek mu (a KeyError once)
        ("2 MS", 2.0),
        ("1e-3s", 1),
    ],
)
def test_budgets_parse_to_milliseconds(text: str, ms: float) -> None:
    assert parse_budget(text) == pytest.approx(ms)


@pytest.mark.parametrize("text", ["2", "fast", "-2ms", "0ms", "2 hours", ""])
def test_bad_budgets_are_explained(text: str) -> None:
    with pytest.raises(NasvitError, match="budget"):
        parse_budget(text)


def test_front_and_sorting() -> None:
    assert pareto_front(POINTS) == [5, 1, 2, 0, 4]
    assert pareto_front(POINTS, budget=2.0) == [5, 1, 2]
    fronts = non_dominated_sort(POINTS)
    assert sorted(fronts[0]) == [0, 1, 2, 4, 5] and fronts[1] == [3]


def test_budget_makes_feasible_points_dominate() -> None:
    fronts = non_dominated_sort(POINTS, budget=2.0)
    assert sorted(fronts[0]) == [1, 2, 5]
    # Infeasible points follow, ordered by how far they exceed the budget.
    assert [sorted(f) for f in fronts[1:]] == [[3], [0], [4]]


def test_hypervolume_by_hand() -> None:
    # Staircase under the reference (accuracy 0.5, latency 4): points (0.6,0.5), (0.8,1), (0.85,2),
    # (0.9,3); (0.7,2.5) is dominated and (0.95,5) lies outside the box.
    expected = 0.5 * 0.1 + 1.0 * 0.3 + 1.0 * 0.35 + 1.0 * 0.4
    assert hypervolume(POINTS, reference_latency=4.0, reference_accuracy=0.5) == pytest.approx(
        expected
    )
    assert hypervolume([], 4.0) == 0.0
    assert hypervolume(POINTS[:1] + POINTS[:1], 4.0) == pytest.approx(0.9 * 1.0)


def test_crowding_distance_prefers_boundaries() -> None:
    distance = crowding_distance([(0.6, 0.5), (0.8, 1.0), (0.85, 2.0), (0.9, 3.0)])
    assert distance[0] == distance[3] == float("inf")
    assert 0 < distance[2] < float("inf") and 0 < distance[1] < float("inf")

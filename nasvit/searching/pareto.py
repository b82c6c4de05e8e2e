"""Pareto fronts of (accuracy up, latency down) with a latency budget as a hard constraint."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def dominates(a: tuple[float, float], b: tuple[float, float]) -> bool:
    """``a`` = (accuracy, latency) is no worse than ``b`` in both and better in one."""
    return a[0] >= b[0] and a[1] <= b[1] and (a[0] > b[0] or a[1] < b[1])


def constrained_dominates(
    a: tuple[float, float], b: tuple[float, float], budget: float | None
) -> bool:
    """Deb's rule: a feasible point beats an infeasible one; of two infeasible points the one
    closer to the budget wins; two feasible points compare by Pareto dominance."""
    if budget is None:
        return dominates(a, b)
    violation_a, violation_b = max(0.0, a[1] - budget), max(0.0, b[1] - budget)
    if violation_a == 0 and violation_b == 0:
        return dominates(a, b)
    return violation_a < violation_b


def non_dominated_sort(
    points: Sequence[tuple[float, float]], budget: float | None = None
) -> list[list[int]]:
    """Indices of ``points`` grouped into fronts (front 0 is the best), NSGA-II style."""
    n = len(points)
    dominated_by_me: list[list[int]] = [[] for _ in range(n)]
    domination_count = [0] * n
    for i in range(n):
        for j in range(i + 1, n):
            if constrained_dominates(points[i], points[j], budget):
                dominated_by_me[i].append(j)
                domination_count[j] += 1
            elif constrained_dominates(points[j], points[i], budget):
                dominated_by_me[j].append(i)
                domination_count[i] += 1
    fronts: list[list[int]] = [[i for i in range(n) if domination_count[i] == 0]]
    while fronts[-1]:
        following = []
        for i in fronts[-1]:
            for j in dominated_by_me[i]:
                domination_count[j] -= 1
                if domination_count[j] == 0:
                    following.append(j)
        fronts.append(following)
    return fronts[:-1]


def crowding_distance(points: Sequence[tuple[float, float]]) -> np.ndarray:
    """Per-point crowding distance within one front (boundary points get infinity)."""
    values = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    distance = np.zeros(len(values))
    if len(values) <= 2:
        return np.full(len(values), np.inf)
    for column in range(2):
        order = np.argsort(values[:, column], kind="stable")
        span = values[order[-1], column] - values[order[0], column]
        distance[order[0]] = distance[order[-1]] = np.inf
        if span > 0:
            gaps = (values[order[2:], column] - values[order[:-2], column]) / span
            distance[order[1:-1]] += gaps
    return distance


def non_dominated_mask(points: Sequence[tuple[float, float]]) -> list[bool]:
    """Per (score up, latency down) point: is no other point at least as good in both and
    better in one? O(n log n), unlike a pairwise scan, so large searches stay cheap to poll."""
    order = sorted(range(len(points)), key=lambda i: (points[i][1], -points[i][0]))
    result = [False] * len(points)
    best_faster = float("-inf")  # best score among strictly faster points
    start = 0
    while start < len(order):
        end = start
        latency = points[order[start]][1]
        while end < len(order) and points[order[end]][1] == latency:
            end += 1
        top = points[order[start]][0]  # the group is sorted by score, best first
        for i in order[start:end]:
            result[i] = points[i][0] == top and top > best_faster
        best_faster = max(best_faster, top)
        start = end
    return result


def pareto_front(points: Sequence[tuple[float, float]], budget: float | None = None) -> list[int]:
    """Indices of the non-dominated points within the budget, sorted by latency."""
    feasible = [i for i, p in enumerate(points) if budget is None or p[1] <= budget]
    on_front = non_dominated_mask([points[i] for i in feasible])
    front = [i for i, keep in zip(feasible, on_front, strict=True) if keep]
    return sorted(front, key=lambda i: (points[i][1], -points[i][0]))


def hypervolume(
    points: Sequence[tuple[float, float]], reference_latency: float, reference_accuracy: float = 0.0
) -> float:
    """Area dominated by ``points`` and bounded by the reference point (accuracy floor,
    latency ceiling — use the budget). Points outside the reference box add nothing."""
    inside = sorted(
        (p for p in points if p[1] < reference_latency and p[0] > reference_accuracy),
        key=lambda p: (p[1], -p[0]),
    )
    area, best_accuracy = 0.0, reference_accuracy
    for index, (accuracy, latency) in enumerate(inside):
        if accuracy <= best_accuracy:
            continue
        # The slab from this latency to the next improving point's latency (or the ceiling).
        best_accuracy = accuracy
        next_latency = next(
            (p[1] for p in inside[index + 1 :] if p[0] > accuracy), reference_latency
        )
        area += (next_latency - latency) * (accuracy - reference_accuracy)
    return area

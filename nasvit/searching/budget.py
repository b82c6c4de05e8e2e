"""Latency budgets as users write them: "2ms", "2 ms", "1500us", "0.002s", and with a
percentile of single calls: "2ms@p90", "2 ms @ p99"."""

from __future__ import annotations

import math
import re

from nasvit.errors import NasvitError
from nasvit.guarantees import BUDGET_PERCENTILES, check_percentile
from nasvit.guarantees import format_ms as format_ms  # re-exported: callers format budgets here

#: Units as users write them, in milliseconds ("µs" with the micro sign).
BUDGET_UNITS = {"s": 1e3, "ms": 1.0, "us": 1e-3, "µs": 1e-3}
# Looked up casefolded: the micro sign and the Greek mu both fold to the Greek mu, which the
# case-insensitive pattern also matches.
_UNITS_TO_MS = {unit.casefold(): ms for unit, ms in BUDGET_UNITS.items()}
_PATTERN = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:e[-+]?[0-9]+)?)\s*(s|ms|us|µs)\s*$", re.IGNORECASE)
# "<budget> @ p<digits>"; what follows "@" is checked apart so a bad percentile gets its own
# message (naming the allowed ones) instead of "cannot read latency budget".
_PERCENTILE = re.compile(r"^\s*p([0-9]+)\s*$", re.IGNORECASE)


def parse_budget(text: str) -> float:
    """The budget in milliseconds; a number without a unit is refused (ambiguous)."""
    match = _PATTERN.match(text)
    if match is None:
        raise NasvitError(
            f"cannot read latency budget '{text}': write a number and a unit, "
            "e.g. 2ms, 2 ms, 1500us or 0.002s",
            argument="budget",
        )
    value = float(match.group(1)) * _UNITS_TO_MS[match.group(2).casefold()]
    if not math.isfinite(value) or value <= 0:
        raise NasvitError(f"latency budget must be positive, got '{text}'", argument="budget")
    return value


def parse_budget_spec(text: str) -> tuple[float, int | None]:
    """The budget in milliseconds and the percentile it names (None without ``@pNN``).

    ``"2ms"`` -> ``(2.0, None)``; ``"2ms@p90"`` and ``"2 ms @ p90"`` -> ``(2.0, 90)``.

    Raises:
        NasvitError: a budget :func:`parse_budget` refuses, or a percentile not in
            :data:`nasvit.guarantees.BUDGET_PERCENTILES`.
    """
    budget, at, percentile = text.partition("@")
    budget_ms = parse_budget(budget)
    if not at:
        return budget_ms, None
    match = _PERCENTILE.match(percentile)
    if match is None:
        allowed = ", ".join(f"p{p}" for p in BUDGET_PERCENTILES)
        raise NasvitError(
            f"unknown latency percentile '{percentile.strip()}' in budget '{text}': "
            f"use one of {allowed} (e.g. 2ms@p90)",
            argument="budget",
        )
    return budget_ms, check_percentile(int(match.group(1)))

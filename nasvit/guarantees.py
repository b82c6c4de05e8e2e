"""How a latency budget must hold: at the median, at a confidence, or at a percentile of calls.

A prediction is a guess with a known error (see ``nasvit.latency_db.error_model``), so a user
can ask for more than "predicted under 2 ms":

- ``Guarantee()``: the point prediction meets the budget (the default);
- ``Guarantee(confidence=0.9)``: the one-sided upper bound at 90% meets it, so a subnet's
  measured median exceeds the budget in at most about 1 case in 10;
- ``Guarantee(percentile=90)``: 90% of single inference calls, over fresh sessions, are
  predicted to finish within the budget (``2ms@p90``): the model's error *and* the spread of
  whole-network timings.

A leaf module: the request (import-light) and the latency tables both use it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from nasvit.errors import NasvitError

#: The percentiles a budget may name (``2ms@p90``); validation stores a factor for each.
BUDGET_PERCENTILES = (50, 75, 90, 95, 99)

#: The confidence of the intervals shown with every prediction.
DEFAULT_CONFIDENCE = 0.9


@dataclass(frozen=True)
class Guarantee:
    """What "meets the budget" means for a search; at most one of the two is set.

    Attributes:
        confidence: the one-sided upper bound at this confidence must meet the budget.
        percentile: this percentile of single calls must meet the budget.
    """

    confidence: float | None = None
    percentile: int | None = None

    def __post_init__(self) -> None:
        if self.confidence is not None:
            check_confidence(self.confidence)
        if self.percentile is not None:
            check_percentile(self.percentile)
        if self.confidence is not None and self.percentile is not None:
            raise NasvitError(
                "state a budget at a confidence or at a percentile, not both", argument="confidence"
            )

    @property
    def plain(self) -> bool:
        """The point prediction is judged (no confidence, no percentile)."""
        return self.confidence is None and self.percentile is None

    def describe(self) -> str:
        """ "", " at 90% confidence" or " at p90": appended to a budget's text."""
        if self.confidence is not None:
            return f" at {100 * self.confidence:g}% confidence"
        if self.percentile is not None:
            return f" at p{self.percentile}"
        return ""


def check_confidence(value: object) -> float:
    """``value`` as a confidence strictly between 0 and 1 (NasvitError otherwise)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise NasvitError(
            f"confidence must be a number between 0 and 1 (exclusive), got {value!r}",
            argument="confidence",
        )
    if not 0.0 < float(value) < 1.0:
        raise NasvitError(
            f"confidence must be between 0 and 1 (exclusive), e.g. 0.9; got {value}",
            argument="confidence",
        )
    return float(value)


def check_percentile(value: object) -> int:
    """``value`` as one of :data:`BUDGET_PERCENTILES` (NasvitError otherwise)."""
    allowed = ", ".join(f"p{p}" for p in BUDGET_PERCENTILES)
    if isinstance(value, bool) or not isinstance(value, int) or value not in BUDGET_PERCENTILES:
        raise NasvitError(
            f"unknown latency percentile {value!r}: use one of {allowed}", argument="budget"
        )
    return value


def format_ms(value: float) -> str:
    """``0.25`` -> "250 us", ``2.0`` -> "2 ms", ``1500`` -> "1.5 s"."""
    if value < 1:
        return f"{value * 1e3:.0f} us"
    return f"{value:.3g} ms" if value < 1000 else f"{value / 1e3:.3g} s"

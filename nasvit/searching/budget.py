"""Latency budgets as users write them: "2ms", "2 ms", "1500us", "0.002s"."""

from __future__ import annotations

import math
import re

from nasvit.errors import NasvitError

_UNITS_TO_MS = {"s": 1e3, "ms": 1.0, "us": 1e-3, "µs": 1e-3}
_PATTERN = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:e[-+]?[0-9]+)?)\s*(s|ms|us|µs)\s*$", re.IGNORECASE)


def parse_budget(text: str) -> float:
    """The budget in milliseconds; a number without a unit is refused (ambiguous)."""
    match = _PATTERN.match(text)
    if match is None:
        raise NasvitError(
            f"cannot read latency budget '{text}': write a number and a unit, "
            "e.g. 2ms, 2 ms, 1500us or 0.002s"
        )
    value = float(match.group(1)) * _UNITS_TO_MS[match.group(2).lower()]
    if not math.isfinite(value) or value <= 0:
        raise NasvitError(f"latency budget must be positive, got '{text}'")
    return value


def format_ms(value: float) -> str:
    return f"{value * 1e3:.0f} us" if value < 1 else f"{value:.3g} ms"

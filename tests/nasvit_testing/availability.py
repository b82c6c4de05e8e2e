"""The one rule for a real part of a test (a database server, a browser) that cannot be started."""

from __future__ import annotations

import os
from typing import NoReturn

import pytest

#: Values of ``CI`` that mean "this is a CI run" (compared case-insensitively).
CI_VALUES = frozenset({"1", "true"})


def in_ci() -> bool:
    """Whether this run is a CI run (``CI=true`` or ``CI=1`` in the environment)."""
    return os.environ.get("CI", "").strip().lower() in CI_VALUES


def unavailable(reason: str) -> NoReturn:
    """Give up on a test whose real part cannot be installed or started.

    A developer's machine may lack root or apt, so there the test skips, saying why. In CI the
    part must be there: a skip would let the run go green without the test, so it fails instead.

    Args:
        reason: what is missing and why, e.g. ``"PostgreSQL unavailable: initdb failed: ..."``.

    Raises:
        pytest.fail.Exception: in CI.
        pytest.skip.Exception: elsewhere.
    """
    __tracebackhide__ = True  # the report points at the fixture that gave up, not at this helper
    if in_ci():
        pytest.fail(f"{reason} (CI run: a real part that cannot start fails the run)")
    pytest.skip(reason)

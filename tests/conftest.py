"""Root of the test tree: loads the shared fixture plugins of ``nasvit_testing`` (tests/ is on
``sys.path`` through pyproject's ``[tool.pytest.ini_options] pythonpath``).

A real part a test needs (PostgreSQL, Chromium) that cannot be installed or started skips the
test on a developer's machine and fails it in CI (``CI=true``); see
``nasvit_testing.availability.unavailable``.
"""

from __future__ import annotations

import os

import pytest

# `workers=auto` (the default) starts Ray with one actor per core. The suite runs dozens of
# searches whose subject is not where candidates run, and Ray's start-up in each would cost
# minutes, so they evaluate in-process; the tests of auto and of Ray clear or override this.
os.environ.setdefault("NASVIT_AUTO_WORKERS", "1")

# Before anything imports them, so the helpers' asserts report their operands like the tests'.
pytest.register_assert_rewrite("nasvit_testing")

pytest_plugins = ["nasvit_testing.postgres", "nasvit_testing.chromium", "nasvit_testing.assets"]

"""Root of the test tree: loads the shared fixture plugins of ``nasvit_testing`` (tests/ is on
``sys.path`` through pyproject's ``[tool.pytest.ini_options] pythonpath``).

A real part a test needs (PostgreSQL, Chromium) that cannot be installed or started skips the
test on a developer's machine and fails it in CI (``CI=true``); see
``nasvit_testing.availability.unavailable``.
"""

from __future__ import annotations

import pytest

# Before anything imports them, so the helpers' asserts report their operands like the tests'.
pytest.register_assert_rewrite("nasvit_testing")

pytest_plugins = ["nasvit_testing.postgres", "nasvit_testing.chromium"]

"""A real part of a test that cannot start skips the test locally and fails it in CI."""

from __future__ import annotations

import pytest

from nasvit_testing.availability import unavailable


@pytest.mark.parametrize("value", ["true", "TRUE", "1", " True "])
def test_in_ci_it_fails(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv("CI", value)
    with pytest.raises(pytest.fail.Exception, match="PostgreSQL unavailable: no apt-get"):
        unavailable("PostgreSQL unavailable: no apt-get")


@pytest.mark.parametrize("value", [None, "", "false", "0"])
def test_elsewhere_it_skips(monkeypatch: pytest.MonkeyPatch, value: str | None) -> None:
    if value is None:
        monkeypatch.delenv("CI", raising=False)
    else:
        monkeypatch.setenv("CI", value)
    with pytest.raises(pytest.skip.Exception, match="^Chromium unavailable: no apt-get$"):
        unavailable("Chromium unavailable: no apt-get")

"""Errors a user can fix. The CLI prints them as one line and exits with code 2; the API maps
them to HTTP 4xx. Anything else is a bug and keeps its traceback."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class NasvitError(Exception):
    """Base class for errors caused by input the user can correct."""


class UnknownNameError(NasvitError, KeyError):
    """A name (space, device, controller, ...) that is not registered."""

    def __init__(self, kind: str, name: str, known: Iterable[str]):
        known_sorted = sorted(known)
        close = difflib.get_close_matches(name, known_sorted, n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        message = f"unknown {kind} '{name}'{hint}; known: {', '.join(known_sorted) or 'none'}"
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:  # KeyError would quote the message
        return self.message

"""Errors a user can fix. The CLI prints them as one line and exits with code 2; the API maps
them to HTTP 4xx. Anything else is a bug and keeps its traceback."""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Sequence
from pathlib import Path


class NasvitError(Exception):
    """Base class for errors caused by input the user can correct.

    Args:
        message: what is wrong and how to fix it, in the library's terms (never a CLI flag).
        argument: the function argument whose value fixes the error, if one does (for
            example ``device_name``); the CLI words it as its flag.
    """

    argument: str | None = None

    def __init__(self, *args: object, argument: str | None = None):
        super().__init__(*args)
        self.argument = argument


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


class OutputExistsError(NasvitError):
    """An output folder that already holds a search, given to a search that does not resume.

    Attributes:
        path: the folder.
    """

    def __init__(self, path: Path):
        super().__init__(f"{path} already holds a search; resume it or write to another folder")
        self.path = path


class DeviceNotLocalError(NasvitError):
    """A named device that is not this machine (another host, runtime or setting), asked to
    measure here.

    Attributes:
        device: the device's name.
        differences: each differing setting, as ``name=value (here value)``.
    """

    def __init__(self, device: str, differences: Sequence[str]):
        self.device = device
        self.differences = list(differences)
        super().__init__(
            f"{self.description}; measure it where it was profiled, or leave the device unset "
            "to measure this machine"
        )

    @property
    def description(self) -> str:
        return f"device '{self.device}' is not this machine: {', '.join(self.differences)}"


class DeviceSilentError(NasvitError):
    """A device whose agents stopped answering while work for it waited.

    Attributes:
        device: the device's name.
    """

    def __init__(self, device: str, silent_s: float, pending: str):
        self.device = device
        super().__init__(
            f"device '{device}' has not been seen for {silent_s:.0f} s while {pending} waited "
            f"for it; start its agent (`nasvit agent --server URL --token DEVICE_TOKEN`) and "
            "try again"
        )


class NoSubnetFitsError(NasvitError):
    """No candidate of a search meets its budget: none is predicted within it, or none of
    those exported and measured end to end measured within it. The message names the closest
    candidate and its latency against the budget."""

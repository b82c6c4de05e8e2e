"""Library errors in the command line's words.

The library names its arguments (``resume``, ``out``, ``device``); a user at the command line
knows the flags. :func:`cli_message` rewords the errors whose fix is a flag; every other
:class:`~nasvit.errors.NasvitError` is printed as it is.
"""

from __future__ import annotations

from nasvit.errors import DeviceNotLocalError, NasvitError, OutputExistsError

# Library arguments -> the flag that sets them, where the two names differ in more than dashes.
_FLAGS: dict[str, str] = {
    "budget_ms": "--budget",
    "budget_percentile": "--budget",  # the percentile is part of the budget's text: 2ms@p90
    "budget_confidence": "--confidence",
}


def _flag(argument: str) -> str:
    return _FLAGS.get(argument, "--" + argument.replace("_", "-"))


def cli_message(error: NasvitError) -> str:
    """The one line ``nasvit`` prints for ``error``."""
    if isinstance(error, OutputExistsError):
        return f"{error.path} already holds a search; pass --resume or choose another --out"
    if isinstance(error, DeviceNotLocalError):
        return f"{error.description}; measure it where it was profiled, or omit --device"
    if error.argument is not None:
        return f"{error} with {_flag(error.argument)}"
    return str(error)

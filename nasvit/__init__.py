"""nasvit: latency-aware neural architecture search.

The Python API (:mod:`nasvit.api`), imported on first use::

    import nasvit

    result = nasvit.search("efficientformer", "2ms")  # a nasvit.SearchResult
    nasvit.profile("efficientformer", resolutions=[64])
    nasvit.predict_latency(result.best.arch, "efficientformer", num_classes=10, in_channels=1)

The distribution maps one import namespace onto the repository's folders:
``nasvit`` (nasvit/), ``nasvit.search_spaces`` (search_spaces/), ``nasvit.latency_db``
(latency_db/) and ``nasvit.server`` (server/). Keep this module free of heavy imports: every
subpackage imports it first, and ``import nasvit`` must not load torch, Ray or a database.
"""

from __future__ import annotations

from importlib import import_module
from importlib.metadata import PackageNotFoundError, version
from typing import Any

try:
    __version__ = version("nasvit")
except PackageNotFoundError:  # a source tree that was never installed
    __version__ = "0+unknown"

# Public name -> the module that defines it (imported when the name is first used).
_LAZY = {
    "search": "nasvit.api",
    "profile": "nasvit.api",
    "predict_latency": "nasvit.api",
    "ProfileSummary": "nasvit.api",
    "SearchRequest": "nasvit.searching.request",
    "SearchResult": "nasvit.searching.request",
    "FrontPoint": "nasvit.searching.request",
    "Trial": "nasvit.searching.request",
    "Settings": "nasvit.settings",
    "NasvitError": "nasvit.errors",
    "get_space": "nasvit.search_spaces",
}

__all__ = ["__version__", *sorted(_LAZY)]


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'nasvit' has no attribute '{name}'")
    value = getattr(import_module(_LAZY[name]), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})

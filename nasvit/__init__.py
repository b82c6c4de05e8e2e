"""nasvit: latency-aware neural architecture search.

The distribution maps one import namespace onto the repository's folders:
``nasvit`` (nasvit/), ``nasvit.search_spaces`` (search_spaces/), ``nasvit.latency_db``
(latency_db/) and ``nasvit.server`` (server/). Keep this module free of heavy imports: every
subpackage imports it first.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("nasvit")
except PackageNotFoundError:  # a source tree that was never installed
    __version__ = "0+unknown"

__all__ = ["__version__"]

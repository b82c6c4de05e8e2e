"""The agent as one file: a zipapp the server serves at ``/api/v1/agent.pyz``.

A device needs Python, numpy and onnxruntime, then ``python nasvit-agent.pyz --server URL
--token T``. Why a zipapp rather than a distribution of its own: the file always matches the
server it came from (the work protocol and the timing code move together), nothing has to be
published or versioned separately, and a device without access to the package index can
still fetch it from the server it reports to.

The archive holds ``nasvit/agent/*.py``, an empty ``nasvit/__init__.py`` (the real one knows
the whole library; the agent needs none of it) and a ``__main__.py`` that runs
:func:`nasvit.agent.__main__.main`. Entries carry a fixed timestamp, so the same sources give
the same bytes.
"""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

#: Written before the archive (Python skips it): the file runs as ``./nasvit-agent.pyz``.
SHEBANG = b"#!/usr/bin/env python3\n"
#: Timestamp of every entry (zip's epoch starts in 1980).
ENTRY_TIME = (1980, 1, 1, 0, 0, 0)

MAIN = """\
import sys

from nasvit.agent.__main__ import main

sys.exit(main(sys.argv[1:], prog="nasvit-agent.pyz"))
"""


def agent_sources() -> list[Path]:
    """The agent's modules, in name order."""
    return sorted(Path(__file__).resolve().parent.glob("*.py"))


def build_zipapp() -> bytes:
    """The agent zipapp's bytes."""
    buffer = io.BytesIO()
    buffer.write(SHEBANG)
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:

        def add(name: str, data: bytes) -> None:
            info = zipfile.ZipInfo(name, date_time=ENTRY_TIME)
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            archive.writestr(info, data)

        add("__main__.py", MAIN.encode("utf-8"))
        add("nasvit/__init__.py", b"")
        for source in agent_sources():
            add(f"nasvit/agent/{source.name}", source.read_bytes())
    return buffer.getvalue()

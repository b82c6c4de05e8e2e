"""What the agent reads about the machine it runs on: CPU model, memory and the last-level cache
(part of a device's fingerprint), and the cache flusher of streamed (cold) timings.

Standard library and numpy only: a device runs this without torch.
"""

from __future__ import annotations

import os
import platform
import subprocess
from pathlib import Path

import numpy as np


def cpu_model() -> str:
    """``model name`` from /proc/cpuinfo, else what ``platform`` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8").splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def memory_gib() -> int:
    """Physical memory, rounded to GiB (0: unknown)."""
    try:
        pages = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        return round(pages / 2**30)
    except (ValueError, OSError, AttributeError):
        return 0


#: Flush buffer used when the cache size cannot be read.
DEFAULT_FLUSH_BYTES = 64 * 2**20


def _parse_size(text: str) -> int:
    """``"32768K"`` / ``"32 MiB"`` / ``"1024"`` -> bytes (0 when unreadable)."""
    text = text.strip().split("(")[0].strip().replace(" ", "")
    units = {"K": 2**10, "KB": 2**10, "KIB": 2**10, "M": 2**20, "MB": 2**20, "MIB": 2**20}
    units |= {"G": 2**30, "GB": 2**30, "GIB": 2**30}
    number = text.rstrip("KMGIBkmgib")
    unit = text[len(number) :].upper()
    try:
        return int(float(number) * units.get(unit, 1))
    except ValueError:
        return 0


def last_level_cache_bytes() -> int:
    """Size of the largest (last-level) data/unified cache of CPU 0 in bytes; 0 if unknown.

    Read from ``/sys/devices/system/cpu/cpu0/cache/index*/`` (Linux), else from ``lscpu``.
    """
    best = 0
    root = Path("/sys/devices/system/cpu/cpu0/cache")
    for index in sorted(root.glob("index*")) if root.is_dir() else []:
        try:
            kind = (index / "type").read_text().strip()
            size = _parse_size((index / "size").read_text())
        except OSError:
            continue
        if kind in ("Unified", "Data"):
            best = max(best, size)
    if best:
        return best
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=5).stdout
    except (OSError, subprocess.SubprocessError):
        return 0
    for line in out.splitlines():
        if line.startswith("L3 cache:"):
            return _parse_size(line.split(":", 1)[1])
    return 0


class CacheFlusher:
    """Evicts the caches by reading through a buffer (twice the last-level cache by default).

    Reading, not writing: a written buffer leaves the cache full of dirty lines, and the timed
    run that follows would pay their write-backs, which a network (whose evicted lines are
    mostly clean weights) does not."""

    def __init__(self, nbytes: int | None = None):
        if nbytes is None:
            cache = last_level_cache_bytes()
            nbytes = 2 * cache if cache else DEFAULT_FLUSH_BYTES
        self.nbytes = int(nbytes)
        self._buffer = np.ones(max(self.nbytes // 4, 1), dtype=np.float32)

    def __call__(self) -> float:
        return float(self._buffer.sum())


def machine_fingerprint(
    *,
    runtime: str,
    runtime_version: str,
    provider: str,
    threads: int,
    optimization: str,
    precision: str = "fp32",
    accelerator: str = "",
    batch: int = 1,
    clock: str = "wall",
) -> dict[str, str | int]:
    """The fields of a device fingerprint (``nasvit.latency_db.DeviceFingerprint``) for this
    machine running the given runtime settings. The kernel release is left out on purpose: a
    kernel update should not orphan a table."""
    return {
        "cpu_model": cpu_model(),
        "cores": os.cpu_count() or 1,
        "memory_gib": memory_gib(),
        "os": f"{platform.system()} {platform.machine()}",
        "runtime": runtime,
        "runtime_version": runtime_version,
        "provider": provider,
        "threads": threads,
        "optimization": optimization,
        "precision": precision,
        "accelerator": accelerator,
        "batch": batch,
        "cache_bytes": last_level_cache_bytes(),
        "clock": clock,
    }

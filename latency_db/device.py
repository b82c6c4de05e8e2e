"""Device fingerprints: what a latency table is valid for.

A *device* is the host hardware plus the runtime configuration (runtime and version, execution
provider, threads, graph optimisation level, precision, batch). Changing any of them changes
latencies, so each combination gets its own stable id (a hash of the fingerprint) and its own
table. The readable name (``local-cpu-ort-1t``) is for people; the id is what rows reference.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from typing import Any

from nasvit.agent.hardware import machine_fingerprint
from nasvit.latency_db.profilers import RuntimeSettings

_SHORT_RUNTIME = {"onnxruntime": "ort", "torch": "torch"}


@dataclass(frozen=True)
class DeviceFingerprint:
    """Everything that changes a measured latency.

    Attributes:
        cpu_model: ``model name`` from /proc/cpuinfo.
        cores: logical CPUs visible to the process.
        memory_gib: physical memory, rounded to GiB.
        os: operating system and machine (kernel release is left out on purpose: a kernel
            update should not orphan a table).
        runtime, runtime_version, provider, threads, optimization, precision, accelerator: see
            :class:`~nasvit.latency_db.profilers.RuntimeSettings`.
        batch: batch size of the measured inputs.
        cache_bytes: last-level cache size (0: unknown); the residency model of network
            predictions is stated relative to it (see :mod:`nasvit.latency_db.cache`).
        clock: ``"wall"`` or ``"thread"`` (CPU time of the inference thread).
    """

    cpu_model: str
    cores: int
    memory_gib: int
    os: str
    runtime: str
    runtime_version: str
    provider: str
    threads: int
    optimization: str
    precision: str = "fp32"
    accelerator: str = ""
    batch: int = 1
    cache_bytes: int = 0
    clock: str = "wall"

    @classmethod
    def local(cls, settings: RuntimeSettings, batch: int = 1) -> DeviceFingerprint:
        """The fingerprint of this machine running ``settings`` (what an agent reports for
        its device, from the same code)."""
        return cls.from_dict(
            machine_fingerprint(
                runtime=settings.runtime,
                runtime_version=settings.version,
                provider=settings.provider,
                threads=settings.threads,
                optimization=settings.optimization,
                precision=settings.precision,
                accelerator=settings.accelerator,
                batch=batch,
                clock=settings.clock,
            )
        )

    def to_dict(self) -> dict[str, str | int]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DeviceFingerprint:
        """Inverse of :meth:`to_dict`; unknown fields raise ``TypeError``."""
        return cls(**data)

    @property
    def device_id(self) -> str:
        """Stable id: the first 16 hex digits of a SHA-256 over the canonical JSON."""
        canonical = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()[:16]

    def default_name(self) -> str:
        """``local-cpu-ort-1t``; non-default settings are appended (``-optbasic``, ``-b8``)."""
        where = "cuda" if self.accelerator or "cuda" in self.provider.lower() else "cpu"
        runtime = _SHORT_RUNTIME.get(self.runtime, self.runtime)
        parts = ["local", where, runtime, f"{self.threads}t"]
        if self.optimization not in ("all", "eager"):
            parts.append(f"opt{self.optimization}")
        if self.precision != "fp32":
            parts.append(self.precision)
        if self.batch != 1:
            parts.append(f"b{self.batch}")
        return "-".join(parts)

    def same_host(self, other: DeviceFingerprint) -> bool:
        """Whether ``other`` describes the same hardware (runtime settings may differ)."""
        return (self.cpu_model, self.cores, self.os, self.accelerator) == (
            other.cpu_model,
            other.cores,
            other.os,
            other.accelerator,
        )

"""Whole-network readings: how validation networks and end-to-end candidates are timed.

A *reading* is one fresh session of a whole network (the network protocol's warm-up and timed
calls). Validation takes ``K`` readings of each network in ``K`` rounds, each round visiting
every network once in a seeded random order, so one network's readings are spread over the run
(this machine's noise changes by the minute, and readings taken back to back would share it).

Two readers follow that schedule: :class:`LocalReader` times on this machine with a profiler;
``nasvit.latency_db.remote.AgentMeasurer`` hands the same schedule to a device's agents.
"""

from __future__ import annotations

import dataclasses
import pickle
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np

from nasvit.agent.measurement import MeasurementProtocol
from nasvit.latency_db.profilers import ModelSource, Profiler, with_protocol

#: Per network: its readings' medians in the order taken, and every timed call of them.
Readings = tuple[tuple[float, ...], tuple[float, ...]]
#: A network to read: the model (a module, ONNX bytes or an ONNX file) and its input shape.
NetworkModel = tuple[ModelSource, tuple[int, ...]]
#: Called with (steps done, steps) over the exports and the readings.
StepCallback = Callable[[int, int], None]


def reading_rounds(count: int, readings: int, seed: int) -> list[list[int]]:
    """The schedule: for each of ``readings`` rounds, the order its networks are read in."""
    rng = np.random.default_rng(seed)
    return [[int(i) for i in rng.permutation(count)] for _ in range(readings)]


@runtime_checkable
class NetworkReader(Protocol):
    """Takes readings of whole networks on one device."""

    def read_networks(
        self,
        models: Iterable[NetworkModel],
        count: int,
        readings: int,
        *,
        seed: int = 0,
        protocol: MeasurementProtocol | None = None,
        progress: StepCallback | None = None,
    ) -> list[Readings]:
        """``readings`` readings of each of the ``count`` networks ``models`` yields (they
        may be built lazily), on the :func:`reading_rounds` schedule. ``protocol``: one
        reading's warm-up and timed calls (default :meth:`MeasurementProtocol.network`; its
        ``sessions`` is ignored). ``progress`` counts one step per export and per reading."""
        ...


class LocalReader:
    """Readings on this machine with ``profiler``. Exported networks wait in a temporary
    folder (a few hundred MB each at the large end of a space), not in memory."""

    def __init__(self, profiler: Profiler):
        self.profiler = profiler

    def read_networks(
        self,
        models: Iterable[NetworkModel],
        count: int,
        readings: int,
        *,
        seed: int = 0,
        protocol: MeasurementProtocol | None = None,
        progress: StepCallback | None = None,
    ) -> list[Readings]:
        base = protocol or MeasurementProtocol.network()
        single = with_protocol(self.profiler, dataclasses.replace(base, sessions=1))
        steps = count * (1 + readings)
        done = 0
        medians: list[list[float]] = [[] for _ in range(count)]
        calls: list[list[float]] = [[] for _ in range(count)]
        with tempfile.TemporaryDirectory(prefix="nasvit-readings-") as folder:
            files = []
            for index, (model, shape) in enumerate(models):
                # A file is read by each reading as it stands; anything else is prepared
                # (exported) once, and waits in the folder.
                staged = model if isinstance(model, Path) else single.prepare(model, shape)
                files.append(Path(folder) / f"{index}.pickle")
                files[-1].write_bytes(pickle.dumps((staged, shape)))
                done += 1
                if progress:
                    progress(done, steps)
            if len(files) != count:
                raise ValueError(f"expected {count} networks, got {len(files)}")
            for order in reading_rounds(count, readings, seed):
                for index in order:
                    staged, shape = pickle.loads(files[index].read_bytes())
                    measurement = single.measure(staged, shape)
                    medians[index].append(measurement.median_ms)
                    calls[index].extend(measurement.runs_ms)
                    done += 1
                    if progress:
                        progress(done, steps)
        return [(tuple(m), tuple(c)) for m, c in zip(medians, calls, strict=True)]


def as_reader(measurer: Profiler | NetworkReader) -> NetworkReader:
    """A profiler reads locally; a reader (an agent's) is used as it is."""
    if isinstance(measurer, NetworkReader):
        return measurer
    return LocalReader(measurer)

"""Where candidate accuracies are computed: in this process, or on Ray actors.

Both executors take a batch of architectures and return (accuracy, loss) pairs in order, so
the search loop does not care where the work runs.

The Ray executor puts everything an actor needs into the object store once: the supernet
weights *and the evaluation data* (the calibration and validation splits), so a node needs
neither the driver's files nor a shared filesystem. It keeps one long-lived actor per worker,
each holding the supernet and the data, so a candidate costs a method call, not a model load.

Failures: an actor that dies (its process killed, its node lost) loses only the chunk it was
evaluating. That chunk goes back to the queue and is re-run by a surviving or replacement actor,
and its results are kept only once, so the batch's results equal an undisturbed run. Losses are
bounded: after :data:`MAX_CHUNK_ATTEMPTS` deaths on one chunk, or more deaths than the executor
has actors (at least :data:`MIN_LOSSES_TOLERATED`), the search fails naming what died.
"""

from __future__ import annotations

import logging
import os
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

from nasvit.data import Dataset
from nasvit.errors import NasvitError
from nasvit.evaluation.evaluator import SubnetEvaluator
from nasvit.search_spaces import Architecture

log = logging.getLogger(__name__)

#: How many times one chunk may be lost with its actor before the search gives up on it.
MAX_CHUNK_ATTEMPTS = 3
#: Actor deaths tolerated in one search, whatever the number of actors.
MIN_LOSSES_TOLERATED = 2
#: How long the executor waits for a replacement actor when no other actor is working.
ACTOR_START_TIMEOUT_S = 120.0
# Chunks per actor in one batch: enough to even out unequal candidates and to bound what one
# lost actor costs, few enough that the per-call overhead stays negligible.
CHUNKS_PER_WORKER = 4


class Executor(Protocol):
    workers: int

    def evaluate(self, archs: Sequence[Architecture]) -> list[tuple[float, float]]: ...

    def report(self) -> dict[str, Any]: ...

    def close(self) -> None: ...


def available_cores() -> int:
    """Cores this process may run on (its CPU affinity, which containers and taskset narrow)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS and Windows have no affinity call
        return os.cpu_count() or 1


def _accuracy_and_loss(evaluator: SubnetEvaluator, arch: Architecture) -> tuple[float, float]:
    result = evaluator.evaluate(arch)
    return result.accuracy, result.loss


class InProcessExecutor:
    """Evaluates candidates one after another in this process."""

    workers = 1

    def __init__(self, evaluator: SubnetEvaluator):
        self.evaluator = evaluator

    def evaluate(self, archs: Sequence[Architecture]) -> list[tuple[float, float]]:
        return [_accuracy_and_loss(self.evaluator, arch) for arch in archs]

    def report(self) -> dict[str, Any]:
        import torch

        return {"where": "in-process", "workers": 1, "threads": torch.get_num_threads()}

    def close(self) -> None:
        pass


def shippable_dataset(evaluator: SubnetEvaluator) -> Dataset:
    """The part of the evaluator's dataset an actor needs (the calibration split and the
    evaluated one), without resized copies: what goes into the object store."""
    dataset = evaluator.dataset
    keep = {"train", evaluator.split}
    splits = {name: tensors for name, tensors in dataset.splits.items() if name in keep}
    return replace(dataset, splits=splits, _cache={})


class EvaluatorActor:
    """A Ray actor: rebuilds the evaluator from the shared payload once, then serves chunks.

    Each answer names the node and process that computed it, so the driver can report where the
    candidates ran and name an actor that later dies."""

    def __init__(self, payload: dict[str, Any], threads: int):
        import ray
        import torch

        from nasvit.search_spaces import get_space

        torch.set_num_threads(threads)
        space = get_space(payload["space"])
        if payload["restrictions"]:
            space = space.restrict(**payload["restrictions"])
        supernet = space.build_supernet(payload["num_classes"], payload["in_channels"])
        supernet.load_state_dict(payload["state_dict"])
        supernet.eval()
        # A GPU share from Ray shows as CUDA_VISIBLE_DEVICES, so "cuda" is the one assigned.
        device = "cuda" if ray.get_gpu_ids() and torch.cuda.is_available() else "cpu"
        supernet.to(device)
        self.space = space
        self.evaluator = SubnetEvaluator(
            space, supernet, payload["dataset"], payload["split"], device=device
        )
        self.where = {
            "node": ray.get_runtime_context().get_node_id(),
            "pid": os.getpid(),
            "device": device,
        }

    def ready(self) -> dict[str, Any]:
        return self.where

    def evaluate(self, arch_dicts: list[dict[str, Any]]) -> dict[str, Any]:
        results = [_accuracy_and_loss(self.evaluator, self.space.validate(a)) for a in arch_dicts]
        return {**self.where, "results": results}


@dataclass
class _Chunk:
    indices: list[int]
    attempts: int = 0


@dataclass
class RayLog:
    """What a Ray executor did: where candidates ran and what it recovered from."""

    candidates_per_node: dict[str, int] = field(default_factory=dict)
    lost_actors: list[str] = field(default_factory=list)
    rerun_chunks: int = 0
    rerun_candidates: int = 0


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


class RayExecutor:
    """Spreads batches of candidates over Ray actors, in chunks pulled by free actors.

    Args:
        evaluator: the local evaluator whose supernet and data the actors replicate.
        workers: number of actors (one CPU each); None: one per CPU of the cluster (or of this
            machine, for a local Ray).
        address: a running cluster's GCS address (``HOST:PORT``, or ``auto``); None starts a
            local Ray limited to ``workers`` CPUs.
        actor_class: the actor to run (tests substitute one that fails on purpose).
        on_event: told of each lost actor and re-run chunk, in words (default: logged).
    """

    def __init__(
        self,
        evaluator: SubnetEvaluator,
        workers: int | None,
        address: str | None = None,
        actor_class: type = EvaluatorActor,
        on_event: Callable[[str], None] | None = None,
    ):
        import ray

        self._on_event = on_event or log.warning
        self._started_ray = not ray.is_initialized()
        if self._started_ray:
            connect(address, workers)
        resources = ray.cluster_resources()
        cpus = int(resources.get("CPU", 0))
        self.workers = workers or max(1, cpus)
        if self.workers > cpus:
            if self._started_ray:
                ray.shutdown()
            raise NasvitError(
                f"{self.workers} evaluation workers need {self.workers} CPUs, but the Ray "
                f"cluster has {cpus}",
                argument="workers",
            )
        gpus = float(resources.get("GPU", 0))
        # A share of the cluster's GPUs per actor (several small subnets fit on one GPU).
        self._gpus_per_actor = min(1.0, gpus / self.workers) if gpus else 0.0
        payload = {
            "space": evaluator.space.name,
            "restrictions": evaluator.space.restrictions,
            "num_classes": evaluator.supernet.num_classes,
            "in_channels": evaluator.supernet.in_channels,
            # Weights and data enter the object store once; every actor reads the same copy,
            # on whichever node it runs.
            "state_dict": {k: v.cpu() for k, v in evaluator.supernet.state_dict().items()},
            "dataset": shippable_dataset(evaluator),
            "split": evaluator.split,
        }
        self._payload = ray.put(payload)
        self._actor_class: Any = ray.remote(actor_class)
        self.log = RayLog()
        self._losses_tolerated = max(MIN_LOSSES_TOLERATED, self.workers)
        self._idle: list[Any] = [self._new_actor() for _ in range(self.workers)]
        self._starting: dict[Any, Any] = {}  # ready() future -> replacement actor
        self._where: dict[Any, dict[str, Any]] = {}  # actor -> its last answer's node and pid
        self._failed_starts = 0  # replacements in a row that died before they started

    def _new_actor(self) -> Any:
        # SPREAD: actors go to different nodes first, so one lost node costs as few as possible.
        return self._actor_class.options(  # type: ignore[attr-defined]
            num_cpus=1,
            num_gpus=self._gpus_per_actor,
            max_restarts=0,
            scheduling_strategy="SPREAD",
        ).remote(self._payload, 1)

    def evaluate(self, archs: Sequence[Architecture]) -> list[tuple[float, float]]:
        import ray
        from ray.exceptions import RayActorError

        # Candidates differ in cost by 10x or more (a 0.1 ms subnet next to a 4 ms one), so a
        # fixed split leaves one actor idle while the other finishes. Small chunks handed to
        # whichever actor is free balance the load, and bound what a lost actor costs; each
        # chunk still holds several candidates, so a call's overhead (about a millisecond)
        # stays small against its work.
        size = max(1, -(-len(archs) // (self.workers * CHUNKS_PER_WORKER)))
        pending = deque(
            _Chunk(list(range(i, min(i + size, len(archs))))) for i in range(0, len(archs), size)
        )
        running: dict[Any, tuple[Any, _Chunk]] = {}
        results: list[tuple[float, float]] = [(0.0, 0.0)] * len(archs)
        while pending or running:
            while pending and self._idle:
                actor, chunk = self._idle.pop(), pending.popleft()
                future = actor.evaluate.remote([archs[i].to_dict() for i in chunk.indices])
                running[future] = (actor, chunk)
            waiting = [*running, *self._starting]
            if not waiting:
                raise NasvitError("no evaluation actor is left and none could be started")
            # Only replacements left: wait for one to start, but not forever (the cluster may
            # have lost the CPUs it would run on).
            timeout = None if running else ACTOR_START_TIMEOUT_S
            done, _ = ray.wait(waiting, num_returns=1, timeout=timeout)
            if not done:
                raise NasvitError(
                    f"no replacement evaluation actor started within {ACTOR_START_TIMEOUT_S:.0f} "
                    f"s (cluster CPUs: {ray.cluster_resources().get('CPU', 0):g}); "
                    f"actors lost: {'; '.join(self.log.lost_actors)}"
                )
            future = done[0]
            if future in self._starting:
                actor = self._starting.pop(future)
                try:
                    self._where[actor] = ray.get(future)
                    self._idle.append(actor)
                    self._failed_starts = 0
                except RayActorError as exc:
                    self._failed_start(actor, exc)
                continue
            actor, chunk = running.pop(future)
            try:
                answer = ray.get(future)
            except RayActorError as exc:
                self._lose(actor, exc, chunk)
                pending.appendleft(chunk)
                continue
            self._where[actor] = {"node": answer["node"], "pid": answer["pid"]}
            counts = self.log.candidates_per_node
            counts[answer["node"]] = counts.get(answer["node"], 0) + len(chunk.indices)
            for index, value in zip(chunk.indices, answer["results"], strict=True):
                results[index] = (value[0], value[1])
            self._idle.append(actor)
        return results

    def _lose(self, actor: Any, error: BaseException, chunk: _Chunk) -> None:
        """Record an actor that died with ``chunk``, start its replacement, and fail once the
        losses pass the bounds."""
        where = self._where.pop(actor, None)
        place = f" on node {where['node'][:12]} (pid {where['pid']})" if where else ""
        name = f"evaluation actor {actor._actor_id.hex()[:12]}{place}"
        self.log.lost_actors.append(f"{name}: {_first_line(error)}")
        _kill_quietly(actor)
        chunk.attempts += 1
        self.log.rerun_chunks += 1
        self.log.rerun_candidates += len(chunk.indices)
        lost = "; ".join(self.log.lost_actors)
        if chunk.attempts >= MAX_CHUNK_ATTEMPTS:
            raise NasvitError(
                f"{chunk.attempts} evaluation actors died in turn on the same "
                f"{len(chunk.indices)} candidates; giving up. Lost: {lost}"
            )
        if len(self.log.lost_actors) > self._losses_tolerated:
            raise NasvitError(
                f"{len(self.log.lost_actors)} evaluation actors died (at most "
                f"{self._losses_tolerated} are tolerated); lost: {lost}"
            )
        self._replace()
        self._on_event(
            f"{name} died ({_first_line(error)}); re-running its {len(chunk.indices)} candidates"
        )

    def _failed_start(self, actor: Any, error: BaseException) -> None:
        """A replacement that died before it started (placed on a node that was dying, or
        unable to load the supernet): no work lost, but only so many in a row."""
        _kill_quietly(actor)
        self._failed_starts += 1
        if self._failed_starts >= MAX_CHUNK_ATTEMPTS:
            raise NasvitError(
                f"{self._failed_starts} replacement evaluation actors in a row died before "
                f"starting; the last: {_first_line(error)}. Lost before them: "
                + "; ".join(self.log.lost_actors)
            )
        self._replace()

    def _replace(self) -> None:
        replacement = self._new_actor()
        self._starting[replacement.ready.remote()] = replacement

    def report(self) -> dict[str, Any]:
        return {
            "where": "ray",
            "workers": self.workers,
            "gpus_per_actor": self._gpus_per_actor,
            "candidates_per_node": dict(self.log.candidates_per_node),
            "lost_actors": list(self.log.lost_actors),
            "rerun_chunks": self.log.rerun_chunks,
            "rerun_candidates": self.log.rerun_candidates,
        }

    def close(self) -> None:
        import ray

        for actor in [*self._idle, *self._starting.values()]:
            _kill_quietly(actor)
        self._idle, self._starting = [], {}
        if self._started_ray:
            ray.shutdown()


def _kill_quietly(actor: Any) -> None:
    import ray

    try:
        ray.kill(actor, no_restart=True)
    except Exception:  # an actor of a lost node cannot be reached; gone is what we want
        pass


def connect(address: str | None, workers: int | None) -> None:
    """Join the cluster at ``address``, or start a local Ray with ``workers`` CPUs (default:
    this machine's available cores).

    Raises:
        NasvitError: the cluster cannot be reached or refuses this process (a missing or
            different token when the cluster has token authentication on).
    """
    import ray
    from ray.exceptions import AuthenticationError

    if not address:
        ray.init(
            num_cpus=workers or available_cores(), include_dashboard=False, log_to_driver=False
        )
        return
    try:
        ray.init(address=address, log_to_driver=False)
    except (AuthenticationError, ConnectionError, RuntimeError, ValueError) as exc:
        if _refused_token(exc):
            raise NasvitError(
                f"the Ray cluster at {address} refused this process: its authentication token "
                "is missing or wrong. Set RAY_AUTH_MODE=token and the cluster's token in "
                "RAY_AUTH_TOKEN (or a file named by RAY_AUTH_TOKEN_PATH) before running nasvit",
                argument="ray_address",
            ) from None
        raise NasvitError(
            f"cannot join the Ray cluster at {address}: {_first_line(exc)} (nasvit must run on "
            "a node of the cluster: the head, or a machine that joined it with ray start "
            "--address)",
            argument="ray_address",
        ) from None


def _refused_token(error: BaseException | None) -> bool:
    """Whether Ray gave up joining because the cluster refused the token (Ray wraps the
    refusal in a ConnectionError whose cause holds it as text)."""
    from ray.exceptions import AuthenticationError

    while error is not None:
        if isinstance(error, AuthenticationError) or "InvalidAuthToken" in str(error):
            return True
        error = error.__cause__ or error.__context__
    return False

"""Where candidate accuracies are computed: in this process, or on Ray workers.

Both executors take a batch of architectures and return (accuracy, loss) pairs in order, so
the search loop does not care where the work runs. The Ray executor puts the supernet weights into
the object store once and keeps one long-lived actor per worker (each holds the supernet and
the resized data), so per-candidate overhead is a method call, not a model load.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

from nasvit.evaluation.evaluator import SubnetEvaluator
from nasvit.search_spaces import Architecture


class Executor(Protocol):
    workers: int

    def evaluate(self, archs: Sequence[Architecture]) -> list[tuple[float, float]]: ...

    def close(self) -> None: ...


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

    def close(self) -> None:
        pass


class _EvaluatorActor:
    """A Ray actor: rebuilds the evaluator from the shared payload once, then serves batches."""

    def __init__(self, payload: dict[str, Any], threads: int):
        import torch

        from nasvit.data import load_dataset
        from nasvit.search_spaces import get_space

        torch.set_num_threads(threads)
        space = get_space(payload["space"])
        if payload["restrictions"]:
            space = space.restrict(**payload["restrictions"])
        supernet = space.build_supernet(payload["num_classes"], payload["in_channels"])
        supernet.load_state_dict(payload["state_dict"])
        supernet.eval()
        dataset = load_dataset(payload["data"], seed=payload["data_seed"])
        self.space = space
        self.evaluator = SubnetEvaluator(space, supernet, dataset, payload["split"])

    def evaluate(self, arch_dicts: list[dict[str, Any]]) -> list[tuple[float, float]]:
        return [_accuracy_and_loss(self.evaluator, self.space.validate(a)) for a in arch_dicts]


# Chunks per actor in one batch: enough to even out unequal candidates, few enough that the
# per-call overhead stays negligible.
CHUNKS_PER_WORKER = 4


class RayExecutor:
    """Spreads batches of candidates over ``workers`` Ray actors, in chunks pulled by free actors.

    Args:
        evaluator: the local evaluator whose supernet and data the workers replicate.
        data: the dataset source the evaluator was built from (``digits`` or a path).
        data_seed: the split seed of that dataset.
        workers: number of actors (one CPU each).
        address: an existing cluster (``ray://...`` or ``auto``); default starts a local Ray
            limited to ``workers`` CPUs.
    """

    def __init__(
        self,
        evaluator: SubnetEvaluator,
        data: str,
        data_seed: int,
        workers: int,
        address: str | None = None,
    ):
        import ray

        self.workers = workers
        self._started_ray = not ray.is_initialized()
        if self._started_ray:
            if address:
                ray.init(address=address, log_to_driver=False)
            else:
                ray.init(num_cpus=workers, include_dashboard=False, log_to_driver=False)
        payload = {
            "space": evaluator.space.name,
            "restrictions": evaluator.space.restrictions,
            "num_classes": evaluator.supernet.num_classes,
            "in_channels": evaluator.supernet.in_channels,
            # Weights enter the object store once; every actor reads the same copy.
            "state_dict": {k: v.cpu() for k, v in evaluator.supernet.state_dict().items()},
            "data": data,
            "data_seed": data_seed,
            "split": evaluator.split,
        }
        payload_ref = ray.put(payload)
        actor_class = ray.remote(num_cpus=1)(_EvaluatorActor)
        self._actors = [actor_class.remote(payload_ref, 1) for _ in range(workers)]

    def evaluate(self, archs: Sequence[Architecture]) -> list[tuple[float, float]]:
        import ray

        # Candidates differ in cost by 10x or more (a 0.1 ms subnet next to a 4 ms one), so a
        # fixed split leaves one actor idle while the other finishes. Small chunks handed to
        # whichever actor is free balance the load; each chunk still holds several candidates,
        # so a remote call's overhead (about a millisecond) stays small against its work.
        size = max(1, -(-len(archs) // (self.workers * CHUNKS_PER_WORKER)))
        pending = [list(range(i, min(i + size, len(archs)))) for i in range(0, len(archs), size)]
        pending.reverse()  # pop() hands chunks out in order
        running: dict[Any, tuple[Any, list[int]]] = {}
        results: list[tuple[float, float]] = [(0.0, 0.0)] * len(archs)

        def submit(actor: Any) -> None:
            chunk = pending.pop()
            future = actor.evaluate.remote([archs[i].to_dict() for i in chunk])
            running[future] = (actor, chunk)

        for actor in self._actors[: len(pending)]:
            submit(actor)
        while running:
            [done], _ = ray.wait(list(running), num_returns=1)
            actor, chunk = running.pop(done)
            for index, value in zip(chunk, ray.get(done), strict=True):
                results[index] = (value[0], value[1])
            if pending:
                submit(actor)
        return results

    def close(self) -> None:
        import ray

        for actor in self._actors:
            # ray.remote's overloads type the created actors as possibly the class itself.
            ray.kill(actor)  # type: ignore[arg-type]
        if self._started_ray:
            ray.shutdown()

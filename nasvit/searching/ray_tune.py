"""Run any nasvit controller as a Ray Tune searcher (suggest / on_trial_complete).

Tune passes the architecture to the trainable as canonical JSON under ``config["arch"]``; the
trainable reports ``accuracy`` and ``latency_ms``. Use it where a team already runs Ray Tune
(schedulers, clusters, loggers) and wants nasvit's controllers and spaces.
"""

from __future__ import annotations

from typing import Any

from ray.tune.search import Searcher

from nasvit.search_spaces import Architecture
from nasvit.searching.controllers.base import Controller


class ControllerSearcher(Searcher):
    """Adapts the ask/tell :class:`~nasvit.searching.controllers.Controller` to Tune's Searcher
    API."""

    def __init__(self, controller: Controller, metric: str = "accuracy", mode: str = "max"):
        super().__init__(metric=metric, mode=mode)
        self.controller = controller
        self._live: dict[str, Architecture] = {}

    # Tune's annotation omits the FINISHED sentinel (a str) that its own protocol returns.
    def suggest(self, trial_id: str) -> dict[str, Any] | str | None:  # type: ignore[override]
        archs = self.controller.ask(1)
        if not archs:
            return Searcher.FINISHED
        self._live[trial_id] = archs[0]
        return {"arch": self.controller.space.to_json(archs[0])}

    def on_trial_complete(
        self, trial_id: str, result: dict[str, Any] | None = None, error: bool = False
    ) -> None:
        arch = self._live.pop(trial_id, None)
        if arch is None or error or not result:
            return
        self.controller.tell(arch, float(result["accuracy"]), float(result["latency_ms"]))

"""Bayesian and evolutionary search through Optuna's samplers, driven by ask/tell."""

from __future__ import annotations

from typing import Any

from nasvit.search_spaces import Architecture, ArchitectureError, SearchSpace
from nasvit.searching.adapters import (
    arch_from_parameters,
    optuna_distributions,
    parameters_from_arch,
)
from nasvit.searching.controllers.base import Controller

# Optuna samples every parameter independently, so some proposals break a constraint of the
# space (e.g. more attention blocks than blocks). Told as failed, they would be ignored and the
# sampler would keep proposing them; told as infeasible (a violated "space" constraint, worst
# objectives), the sampler learns to avoid them. They are then asked again.
_MAX_ASKS_PER_PROPOSAL = 200
_INFEASIBLE_ACCURACY = 0.0


class OptunaController(Controller):
    """Two objectives (accuracy up, latency down) with the budget as Optuna's constraint.

    Args:
        sampler: ``"tpe"`` (multi-objective TPE) or ``"nsga2"`` (Optuna's NSGA-II), each with
            its defaults apart from the seed and the constraint.
        storage: an Optuna storage URL (e.g. the nasvit database) to persist the study.
        study_name: the study to create or continue.
    """

    def __init__(
        self,
        space: SearchSpace,
        budget_ms: float | None,
        seed: int = 0,
        sampler: str = "tpe",
        storage: str | None = None,
        study_name: str | None = None,
    ):
        import optuna

        super().__init__(space, budget_ms, seed)
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        if sampler == "tpe":
            chosen: Any = optuna.samplers.TPESampler(seed=seed)
        elif sampler == "nsga2":
            chosen = optuna.samplers.NSGAIISampler(seed=seed)
        else:
            raise ValueError(f"unknown Optuna sampler {sampler!r}")
        self.name = f"optuna-{sampler}" if sampler != "tpe" else "tpe"
        self.study = optuna.create_study(
            directions=["maximize", "minimize"],
            sampler=chosen,
            storage=storage,
            study_name=study_name,
            load_if_exists=study_name is not None,
        )
        self._distributions = optuna_distributions(space)
        self._pending: dict[Architecture, Any] = {}
        self._known: dict[Architecture, tuple[float, float]] = {}

    def ask(self, n: int) -> list[Architecture]:
        import optuna

        out: list[Architecture] = []
        for _ in range(n * _MAX_ASKS_PER_PROPOSAL):
            if len(out) == n:
                break
            trial = self.study.ask(self._distributions)
            try:
                arch = arch_from_parameters(self.space, trial.params)
            except ArchitectureError:
                self._tell_trial(trial, _INFEASIBLE_ACCURACY, self._worst_latency(), in_space=False)
                continue
            if arch in self._known:  # seen: answer from memory so the sampler still learns
                self._tell_trial(trial, *self._known[arch])
                continue
            if arch in self._pending or arch in out:
                self.study.tell(trial, state=optuna.trial.TrialState.PRUNED)
                continue
            self._pending[arch] = trial
            self._proposed.add(arch)
            out.append(arch)
        return out

    def tell(self, arch: Architecture, accuracy: float, latency_ms: float) -> None:
        first_time = arch not in self._known
        super().tell(arch, accuracy, latency_ms)
        self._known[arch] = (accuracy, latency_ms)
        trial = self._pending.pop(arch, None)
        if trial is not None:
            self._tell_trial(trial, accuracy, latency_ms)
        elif first_time:
            import optuna

            # Not asked by this study (the search's extremes, or a resumed trial): added as a
            # finished trial, so the sampler learns from it like from its own.
            frozen = optuna.trial.create_trial(
                params=parameters_from_arch(self.space, arch),
                distributions=self._distributions,
                values=[accuracy, latency_ms],
                constraints={"latency_budget": self._over_budget(latency_ms), "space": 0.0},
            )
            self.study.add_trial(frozen)

    def _over_budget(self, latency_ms: float) -> float:
        return 0.0 if self.budget_ms is None else latency_ms - self.budget_ms

    def _worst_latency(self) -> float:
        seen = [o.latency_ms for o in self.observations]
        return 2 * max(seen + [self.budget_ms or 1.0])

    def _tell_trial(
        self, trial: Any, accuracy: float, latency_ms: float, in_space: bool = True
    ) -> None:
        # Optuna counts a constraint value <= 0 as satisfied; every trial sets both keys.
        over_budget = self._over_budget(latency_ms) if in_space else 0.0
        trial.set_constraint("latency_budget", over_budget)
        trial.set_constraint("space", 0.0 if in_space else 1.0)
        self.study.tell(trial, [accuracy, latency_ms])

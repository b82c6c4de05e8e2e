"""Every controller obeys the ask/tell contract; guided ones beat random search on a synthetic
problem whose accuracy and latency both grow with model capacity (deterministic seeds)."""

from __future__ import annotations

import numpy as np
import pytest

from nasvit.errors import UnknownNameError
from nasvit.search_spaces import Architecture
from nasvit.searching.adapters import (
    arch_from_parameters,
    categorical_parameters,
    parameters_from_arch,
)
from nasvit.searching.controllers import CONTROLLERS, Controller, Observation, make_controller
from nasvit.searching.controllers.evolution import EvolutionController
from nasvit.searching.controllers.predictor_assisted import PredictorAssistedController
from nasvit.searching.pareto import hypervolume

from nasvit_testing.synthetic import BUDGET_MS, SPACE, synthetic_latency, synthetic_objectives


def run_search(
    name: str,
    evaluations: int,
    seed: int,
    batch: int = 16,
    table: bool = True,
    controller: Controller | None = None,
) -> list[Observation]:
    """``table``: give latency-screening controllers the latency function (as the pipeline
    gives them the device's lookup table). ``controller``: run this one instead of ``name``."""
    latency = synthetic_latency if table else None
    if controller is None:
        controller = make_controller(name, SPACE, BUDGET_MS, seed, latency=latency)
    while len(controller.observations) < evaluations:
        archs = controller.ask(min(batch, evaluations - len(controller.observations)))
        assert archs, "controller ran dry"
        for arch in archs:
            controller.tell(arch, *synthetic_objectives(arch))
    return controller.observations


def front_hypervolume(observations: list[Observation]) -> float:
    return hypervolume([o.point for o in observations], reference_latency=BUDGET_MS)


@pytest.mark.parametrize("name", sorted(CONTROLLERS))
def test_contract_new_valid_architectures_and_seeded(name: str) -> None:
    first = run_search(name, 48, seed=3)
    archs = [o.arch for o in first]
    assert len(set(archs)) == 48
    assert all(SPACE.contains(a) for a in archs)
    assert [o.arch for o in run_search(name, 48, seed=3)] == archs


# TPE's cost grows with the trial count, so it gets a shorter (still decisive) run.
@pytest.mark.parametrize(
    ("name", "evaluations"), [("nsga2", 240), ("tpe", 100), ("optuna-nsga2", 240)]
)
def test_guided_search_beats_random_at_equal_evaluations(name: str, evaluations: int) -> None:
    seeds = range(3)
    guided = np.mean([front_hypervolume(run_search(name, evaluations, s)) for s in seeds])
    random = np.mean([front_hypervolume(run_search("random", evaluations, s)) for s in seeds])
    assert guided > random


@pytest.mark.parametrize(("table", "evaluations"), [(True, 96), (False, 128)])
def test_predictor_assisted_search_needs_far_fewer_evaluations_than_nsga2(
    table: bool, evaluations: int
) -> None:
    """The issue's goal in miniature: the surrogate-screened search reaches NSGA-II's
    hypervolume at 240 evaluations within 96 (with the latency function) or 128 (latency
    learned from told values, as a Ray Tune searcher sees it). The controller ranks picks by
    hypervolume gain, so it is told this test's reference accuracy (0, as the pipeline's report
    uses; by default it takes a low quantile of its warm-up, as the benchmark's floor is)."""
    seeds = range(3)
    nsga2 = np.mean([front_hypervolume(run_search("nsga2", 240, s)) for s in seeds])
    latency = synthetic_latency if table else None
    assisted = np.mean(
        [
            front_hypervolume(
                run_search(
                    "predictor",
                    evaluations,
                    s,
                    controller=PredictorAssistedController(
                        SPACE, BUDGET_MS, s, latency=latency, reference_accuracy=0.0
                    ),
                )
            )
            for s in seeds
        ]
    )
    assert assisted >= nsga2


def test_predictor_assisted_screens_with_the_latency_function() -> None:
    """After the warm-up, every screened proposal was priced by the latency function, and the
    batch respects the budget far more often than random sampling does."""
    priced: list[Architecture] = []

    def latency(arch: Architecture) -> float:
        priced.append(arch)
        return synthetic_latency(arch)

    controller = make_controller("predictor", SPACE, BUDGET_MS, seed=0, latency=latency)
    rng = np.random.default_rng(0)
    for arch in controller.ask(32):  # warm-up: random, nothing priced
        controller.tell(arch, *synthetic_objectives(arch))
    assert priced == []
    batch = controller.ask(16)
    screened = batch[: 16 - 2]  # explore_share 1/8 of 16: the last two are unscreened
    assert set(screened) <= set(priced)
    feasible = np.mean([synthetic_latency(a) <= BUDGET_MS for a in screened])
    random_feasible = np.mean(
        [synthetic_latency(SPACE.sample(rng)) <= BUDGET_MS for _ in range(200)]
    )
    assert feasible > random_feasible


def test_single_objective_evolution_finds_a_more_accurate_feasible_model_than_random() -> None:
    def best_feasible(observations: list[Observation]) -> float:
        return max(o.accuracy for o in observations if o.latency_ms <= BUDGET_MS)

    seeds = range(3)
    evolved = np.mean([best_feasible(run_search("evolution", 240, s)) for s in seeds])
    random = np.mean([best_feasible(run_search("random", 240, s)) for s in seeds])
    assert evolved > random


def test_survivors_put_feasible_fronts_first() -> None:
    controller = EvolutionController(SPACE, BUDGET_MS, population=3)
    rng = np.random.default_rng(0)
    archs = [SPACE.sample(rng) for _ in range(5)]
    points = [(0.9, 3.0), (0.8, 1.0), (0.85, 2.0), (0.7, 2.5), (0.6, 0.5)]
    pool = [Observation(a, acc, lat) for a, (acc, lat) in zip(archs, points, strict=True)]
    survivors = controller.select_survivors(pool, 3)
    assert {s.point for s in survivors} == {(0.8, 1.0), (0.85, 2.0), (0.6, 0.5)}
    single = EvolutionController(SPACE, BUDGET_MS, single_objective=True)
    assert [s.point for s in single.select_survivors(pool, 2)] == [(0.85, 2.0), (0.8, 1.0)]


def test_parameter_adapter_round_trips() -> None:
    rng = np.random.default_rng(0)
    names = categorical_parameters(SPACE)
    assert "widths[3]" in names and "mlp_ratio[37]" in names
    for _ in range(20):
        arch = SPACE.sample(rng)
        assert arch_from_parameters(SPACE, parameters_from_arch(SPACE, arch)) == arch


def test_unknown_controller_is_named() -> None:
    with pytest.raises(UnknownNameError, match="did you mean 'random'"):
        make_controller("randm", SPACE, 2.0)


@pytest.mark.parametrize("name", ["tpe", "optuna-nsga2"])
def test_optuna_studies_learn_from_architectures_they_did_not_ask_for(name: str) -> None:
    # The pipeline tells every controller about the space's extremes and about resumed trials.
    from nasvit.searching.controllers.optuna_samplers import OptunaController

    controller = make_controller(name, SPACE, BUDGET_MS, seed=0)
    assert isinstance(controller, OptunaController)
    largest = SPACE.largest()
    accuracy, latency = synthetic_objectives(largest)
    assert latency > BUDGET_MS  # the constraint has something to record
    controller.tell(largest, accuracy, latency)
    controller.tell(largest, accuracy, latency)  # told twice, stored once
    [trial] = controller.study.trials
    assert trial.values == [accuracy, latency]
    assert arch_from_parameters(SPACE, trial.params) == largest
    assert trial.system_attrs["constraints:latency_budget"] == pytest.approx(latency - BUDGET_MS)
    proposed = controller.ask(8)
    assert len(proposed) == 8 and largest not in proposed
    assert len(controller.study.trials) >= 9  # its own asks join the added trial

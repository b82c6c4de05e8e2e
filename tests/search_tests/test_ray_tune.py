"""A nasvit controller driving a real (local) Ray Tune run."""

from __future__ import annotations

import sys

import pytest

from nasvit.search_spaces import get_space
from nasvit.searching.adapters import ray_tune_space
from nasvit.searching.controllers import make_controller

from nasvit_testing.synthetic import BUDGET_MS, SPACE, synthetic_objectives


def objective(config: dict) -> None:
    from ray import tune

    arch = get_space("efficientformer").parse(config["arch"])
    accuracy, latency = synthetic_objectives(arch)
    tune.report({"accuracy": accuracy, "latency_ms": latency})


def test_controller_runs_as_a_tune_searcher(tmp_path) -> None:
    import ray
    from ray import cloudpickle, tune

    from nasvit.searching.ray_tune import ControllerSearcher

    # Test modules and nasvit_testing are not importable by name in Ray's workers: ship them
    # by value.
    for module in (sys.modules[__name__], sys.modules[synthetic_objectives.__module__]):
        cloudpickle.register_pickle_by_value(module)
    controller = make_controller("nsga2", SPACE, BUDGET_MS, seed=0)
    ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False)
    try:
        tuner = tune.Tuner(
            objective,
            tune_config=tune.TuneConfig(
                search_alg=ControllerSearcher(controller),
                num_samples=6,
                max_concurrent_trials=1,
                reuse_actors=True,  # one worker process: Tune's overhead is per actor
                trial_dirname_creator=lambda trial: trial.trial_id,
            ),
            run_config=tune.RunConfig(storage_path=str(tmp_path), verbose=0),
        )
        results = tuner.fit()
    finally:
        ray.shutdown()
    assert len(results) == 6 and not results.errors
    assert len(controller.observations) == 6
    told = {controller.space.to_json(o.arch): o.accuracy for o in controller.observations}
    for result in results:
        assert told[result.config["arch"]] == pytest.approx(result.metrics["accuracy"])


def test_ray_tune_domains_cover_every_parameter() -> None:
    domains = ray_tune_space(SPACE)
    assert domains["resolution"].categories == [32, 64, 96]
    assert len(domains) == SPACE.encoding_length

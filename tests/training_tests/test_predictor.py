"""Accuracy predictors: encodings, ranking on an analytic target and on real supernet
measurements, persistence and the measurement cache."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from nasvit.data import Dataset
from nasvit.errors import NasvitError
from nasvit.evaluation.evaluator import SubnetEvaluator
from nasvit.evaluation.predictor import (
    AccuracyPredictor,
    choice_counts,
    fit_and_score,
    load_predictor,
    measure_pairs,
    one_hot,
    predictor_path,
    target_values,
)
from nasvit.search_spaces import SearchSpace, get_space
from nasvit.training.checkpoint import load_supernet


def test_one_hot_marks_one_choice_per_present_position(tiny_space: SearchSpace) -> None:
    rng = np.random.default_rng(0)
    archs = [tiny_space.sample(rng) for _ in range(20)]
    encodings = np.stack([tiny_space.encode(a) for a in archs])
    features = one_hot(tiny_space, encodings)
    counts = choice_counts(tiny_space)
    assert features.shape == (20, sum(counts))
    present = (encodings >= 0).sum(axis=1)
    assert np.array_equal(features.sum(axis=1), present)  # absent layers are all zeros
    with pytest.raises(NasvitError, match="positions"):
        one_hot(tiny_space, encodings[:, :3])


def _analytic_accuracy(space: SearchSpace, arch) -> float:
    """A known, nonlinear, saturating function of capacity with interactions (and MLP ratios
    mattering less than widths and depths), standing in for accuracy."""
    full = get_space("efficientformer")
    choices = full.dimension("widths").choices  # type: ignore[attr-defined]
    widths = [w / max(c) for w, c in zip(arch["widths"], choices, strict=True)]
    depth = sum(arch["depths"]) / 38
    capacity = 2.0 * np.mean(widths) + 1.5 * depth + 0.2 * np.mean(arch["mlp_ratio"]) / 4
    capacity += 0.8 * widths[3] * arch["vit_num"] / 8
    return float(0.99 - 0.5 * np.exp(-capacity))


@pytest.mark.parametrize("kind", ["mlp", "gbt"])
def test_predictors_rank_an_analytic_target(kind: str) -> None:
    space = get_space("efficientformer").restrict(resolution=[32])
    rng = np.random.default_rng(0)
    archs = [space.sample(rng) for _ in range(600)]
    noise = np.random.default_rng(1).normal(0, 0.002, len(archs))
    accuracies = [_analytic_accuracy(space, a) + e for a, e in zip(archs, noise, strict=True)]
    _, report = fit_and_score(space, archs, accuracies, kind, test_size=200)  # type: ignore[arg-type]
    assert report.test_size == 200 and report.train_size == 400
    assert report.spearman > 0.9, report
    assert report.kendall > 0.7, report


def test_predictor_ranks_real_supernet_measurements(
    trained_checkpoint: Path, digits: Dataset, tmp_path: Path
) -> None:
    space, supernet, _ = load_supernet(trained_checkpoint)
    evaluator = SubnetEvaluator(space, supernet, digits, "val", calibration_size=128)
    pairs = measure_pairs(evaluator, 120, seed=0, cache=tmp_path / "pairs.jsonl", cache_key="k")
    assert len({p.short for p in pairs}) == 120
    archs, accuracies = [p.arch for p in pairs], [p.accuracy for p in pairs]
    assert np.std(accuracies) > 0.005  # the supernet's subnets differ
    _, report = fit_and_score(space, archs, accuracies, "gbt", test_size=40, seed=0)
    assert report.spearman > 0.3, report
    losses = target_values(pairs, "neg_loss")
    assert losses == [-p.loss for p in pairs]
    predictor, by_loss = fit_and_score(
        space, archs, losses, "gbt", test_size=40, seed=0, target="neg_loss"
    )
    assert by_loss.target == "neg_loss" and predictor.target == "neg_loss"
    assert by_loss.spearman > 0.5, by_loss
    # The search's score: accuracy, ties broken by the loss (higher is better).
    scores = target_values(pairs, "score")
    for i in range(len(pairs) - 1):
        a, b = pairs[i], pairs[i + 1]
        assert scores[i] == pytest.approx(a.accuracy - 1e-3 * min(a.loss, 2.5))
        if a.accuracy == b.accuracy and a.loss != b.loss:
            assert (scores[i] > scores[i + 1]) == (a.loss < b.loss)
    _, by_score = fit_and_score(space, archs, scores, "gbt", test_size=40, seed=0, target="score")
    assert by_score.target == "score" and by_score.spearman > 0.3, by_score

    def fail(_arch):  # the second call must come entirely from the cache
        raise AssertionError("re-measured a cached arch")

    evaluator.evaluate = fail  # type: ignore[method-assign]
    again = measure_pairs(evaluator, 120, seed=0, cache=tmp_path / "pairs.jsonl", cache_key="k")
    assert [p.accuracy for p in again] == accuracies


def test_save_and_load_round_trip(tmp_path: Path, tiny_space: SearchSpace) -> None:
    rng = np.random.default_rng(0)
    archs = [tiny_space.sample(rng) for _ in range(30)]
    accuracies = [float(sum(a["widths"])) / 200 for a in archs]
    predictor = AccuracyPredictor(tiny_space, "gbt")
    predictor.fit(archs, accuracies)
    path = predictor.save(predictor_path(tmp_path / "net.pt", "gbt"))
    assert path.name == "net.predictor-gbt.joblib"
    loaded = load_predictor(path)
    assert loaded.kind == "gbt" and loaded.space.restrictions == {"resolution": [32]}
    assert np.array_equal(loaded.predict(archs), predictor.predict(archs))
    (tmp_path / "junk.joblib").write_bytes(b"junk")
    with pytest.raises(NasvitError, match="cannot read predictor"):
        load_predictor(tmp_path / "junk.joblib")
    with pytest.raises(NasvitError, match="predictor not found"):
        load_predictor(tmp_path / "none.joblib")
    with pytest.raises(NasvitError, match="not fitted"):
        AccuracyPredictor(tiny_space).predict(archs)
    assert predictor_path(tmp_path / "net.pt", "mlp", "neg_loss").name == (
        "net.predictor-mlp-neg_loss.joblib"
    )
    with pytest.raises(NasvitError, match="unknown predictor target"):
        AccuracyPredictor(tiny_space, "gbt", target="top5")  # type: ignore[arg-type]
    with pytest.raises(NasvitError, match="unknown predictor kind"):
        AccuracyPredictor(tiny_space, "svm")  # type: ignore[arg-type]

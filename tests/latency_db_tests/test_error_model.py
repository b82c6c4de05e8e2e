"""The error model: physical bounds, the regularised residency fit, per-band model choice,
split-conformal intervals, budget guarantees, the truth's noise ceiling, the measured overhead."""

from __future__ import annotations

import json

import numpy as np
import pytest

from nasvit.errors import NasvitError
from nasvit.guarantees import BUDGET_PERCENTILES, Guarantee
from nasvit.latency_db import Measurement, OnnxRuntimeProfiler
from nasvit.latency_db.cache import CacheModel
from nasvit.latency_db.error_model import (
    MAX_EXCESS,
    ErrorModel,
    NetworkMatrix,
    ValidationSample,
    band_edges,
    band_of,
    conformal_lower,
    conformal_upper,
    fit_error_model,
    fit_residency,
    physical_bounds,
    residency_model,
    sum_model,
    truth_noise_ceiling,
)

MB = 2**20
CACHE = 32 * MB
OVERHEAD = 0.006


def _network(rng: np.random.Generator, weight_mb: float) -> tuple:
    """Block inputs of a random network holding ``weight_mb`` MiB of weights."""
    blocks = int(rng.integers(4, 24))
    warm = rng.uniform(0.01, 0.3, blocks)
    weights = rng.dirichlet(np.ones(blocks)) * weight_mb * MB
    cold = warm + weights / (40 * MB)  # a DRAM-bandwidth-like penalty
    return (list(warm), list(cold), list(weights), 2e5)


def _networks(rng: np.random.Generator, n: int, low_mb: float = 1, high_mb: float = 400) -> list:
    return [
        _network(rng, float(np.exp(rng.uniform(np.log(low_mb), np.log(high_mb))))) for _ in range(n)
    ]


TRUE_RESIDENCY = CacheModel(CACHE, onset=0.5, width=3.0, overhead_ms=OVERHEAD, excess=0.05,
                            activation_weight=1.0)  # fmt: skip


def _truth(networks: list) -> np.ndarray:
    return residency_model(NetworkMatrix.of(networks), TRUE_RESIDENCY, OVERHEAD)


def _samples(rng: np.random.Generator, networks: list, noise: float, judged_every: int = 2):
    truth = _truth(networks)
    return [
        ValidationSample(
            arch=f"n{i}",
            inputs=net,
            readings_ms=tuple(t * np.exp(rng.normal(0, noise, 3))),
            calls_ms=tuple(t * np.exp(rng.normal(0, 2 * noise, 40))),
            judged=i % judged_every == 1,
        )
        for i, (net, t) in enumerate(zip(networks, truth, strict=True))
    ]


def test_predictions_stay_within_physical_bounds_even_under_a_deliberately_bad_fit() -> None:
    rng = np.random.default_rng(1)
    matrix = NetworkMatrix.of(_networks(rng, 200, 0.1, 2000))
    lower, upper = physical_bounds(matrix, OVERHEAD)
    assert (lower > 0).all() and (upper >= lower).all()
    np.testing.assert_allclose(
        lower, np.maximum(matrix.warm.sum(1) - (matrix.counts - 1) * OVERHEAD, matrix.warm.max(1))
    )
    np.testing.assert_allclose(sum_model(matrix, OVERHEAD), lower)
    absurd = [
        CacheModel(
            CACHE, onset=-50.0, width=1e-6, excess=40.0, overhead_ms=OVERHEAD
        ),  # all cold, x41
        CacheModel(CACHE, onset=1e9, width=1.0, overhead_ms=OVERHEAD),  # never cold
        CacheModel(CACHE, onset=0.0, width=1.0, excess=1.0, overhead_ms=5.0),  # huge overhead
    ]
    for model in absurd:
        predicted = residency_model(matrix, model, OVERHEAD)
        assert (predicted >= lower - 1e-12).all() and (predicted <= upper + 1e-12).all()
    # The all-cold model, 41x over for networks past two caches, hits the ceiling there: the
    # cold sum plus MAX_EXCESS.
    ceiling = np.maximum(matrix.cold, matrix.warm).sum(1) * (1 + MAX_EXCESS)
    beyond = matrix.weights.sum(1) > 2 * CACHE
    assert beyond.sum() > 20
    np.testing.assert_allclose(
        residency_model(matrix, absurd[0], OVERHEAD)[beyond], ceiling[beyond]
    )


def test_residency_fit_is_pulled_toward_the_sum_model_when_the_data_do_not_need_it() -> None:
    rng = np.random.default_rng(2)
    networks = _networks(rng, 20)
    matrix = NetworkMatrix.of(networks)
    sums = sum_model(matrix, OVERHEAD)
    # Truth equals the sum model: the fitted model must stay on it.
    flat = fit_residency(matrix, sums * np.exp(rng.normal(0, 0.02, sums.size)), CACHE, OVERHEAD)
    assert np.abs(residency_model(matrix, flat, OVERHEAD) / sums - 1).max() < 0.05
    # Truth with a real residency effect: the fit recovers it on fresh networks.
    fitted = fit_residency(matrix, _truth(networks), CACHE, OVERHEAD)
    fresh = NetworkMatrix.of(_networks(np.random.default_rng(3), 200))
    predicted = residency_model(fresh, fitted, OVERHEAD)
    truth = residency_model(fresh, TRUE_RESIDENCY, OVERHEAD)
    assert np.median(np.abs(predicted / truth - 1)) < 0.03
    assert fitted.overhead_ms == OVERHEAD  # measured, never fitted
    with pytest.raises(ValueError, match="three"):
        fit_residency(NetworkMatrix.of(networks[:2]), sums[:2], CACHE, OVERHEAD)


def test_conformal_quantiles_follow_the_finite_sample_rule() -> None:
    residuals = tuple(float(x) for x in range(1, 20))  # n = 19
    assert conformal_upper(residuals, 0.9) == 18.0  # ceil(20 * 0.9) = 18th
    assert conformal_lower(residuals, 0.1) == 2.0  # floor(20 * 0.1) = 2nd
    assert conformal_upper(residuals[:5], 0.95) == 5.0  # too few: the largest
    assert conformal_lower(residuals[:5], 0.01) == 1.0
    edges = band_edges([1.0, 10.0, 100.0], 2)
    assert edges == pytest.approx((1.0, 10.0, 100.0))
    assert list(band_of(edges, [0.5, 1.0, 9.9, 10.0, 500.0])) == [0, 0, 0, 1, 1]


def test_intervals_are_calibrated_on_fresh_networks_and_the_band_choice_is_honest() -> None:
    rng = np.random.default_rng(4)
    samples = _samples(rng, _networks(rng, 120), noise=0.06, judged_every=2)
    model = fit_error_model(samples, CACHE, OVERHEAD)
    assert model.n_fit == 60 and model.judged.n == 60
    assert len(model.bands) == 4 and sum(b.n_judged for b in model.bands) == 60
    # Intervals rest on all 120 networks, the fit ones predicted by jackknife refits: a band
    # holds its own networks' residuals, or the pooled 120.
    own = [b for b in model.bands if not b.pooled]
    assert own and all(len(b.residuals) == 120 for b in model.bands if b.pooled)
    assert sum(len(b.residuals) for b in own) > sum(b.n_judged for b in own)
    # The judged figures of the per-band choice are never worse than the sum model's.
    assert model.judged.mape <= model.sum_judged.mape + 1e-9
    # Fresh networks from the same machine, their truth the median of three readings as in
    # validation: nominal 80% and 90% intervals cover about that share of them.
    fresh_networks = _networks(np.random.default_rng(5), 2000)
    noise = np.median(np.random.default_rng(6).normal(0, 0.06, (2000, 3)), axis=1)
    truth = _truth(fresh_networks) * np.exp(noise)
    matrix = NetworkMatrix.of(fresh_networks)
    points, _, bands = model.points(matrix)
    lower, upper = physical_bounds(matrix, OVERHEAD)
    assert (points >= lower).all() and (points <= upper).all()  # centring stays in bounds
    for confidence in (0.8, 0.9):
        low, high = model.interval_logs(bands, confidence)
        covered = ((truth >= points * np.exp(low)) & (truth <= points * np.exp(high))).mean()
        assert confidence - 0.06 <= covered <= confidence + 0.06, (confidence, covered)
    # A one-sided bound at 90%: about 90% of fresh networks measure under it.
    upper = points * np.exp(model.judged_logs(bands, Guarantee(confidence=0.9)))
    assert 0.84 <= (truth <= upper).mean() <= 0.96
    # Percentile factors grow with the percentile.
    p = [model.judged_logs(bands, Guarantee(percentile=q)) for q in BUDGET_PERCENTILES]
    assert all((a <= b).all() for a, b in zip(p, p[1:], strict=False))
    # Stored as JSON and read back, it predicts the same.
    again = ErrorModel.from_dict(json.loads(json.dumps(model.to_dict())))
    np.testing.assert_allclose(again.points(matrix)[0], points)
    assert again.describe_bands() == model.describe_bands()


def test_the_sum_model_is_kept_in_bands_where_the_residency_model_does_not_beat_it() -> None:
    rng = np.random.default_rng(7)
    networks = _networks(rng, 80, 0.5, 400)
    sums = sum_model(NetworkMatrix.of(networks), OVERHEAD)
    # Small networks measure exactly their sum; large ones pay a residency effect that the fit
    # set (only large networks) teaches; the fit would also lift the small ones, wrongly.
    truth = np.where(sums < np.median(sums), sums, _truth(networks) * 1.1)
    large = sums >= np.median(sums)
    samples = [
        ValidationSample(f"n{i}", net, (t, t * 1.01, t * 0.99), judged=not large[i] or i % 2 == 1)
        for i, (net, t) in enumerate(zip(networks, truth, strict=True))
    ]
    model = fit_error_model(samples, CACHE, OVERHEAD, bands=2)
    assert model.residency is not None
    assert [b.model for b in model.bands][0] == "sum"
    first_band = band_of(model.edges_ms, sums) == 0
    assert first_band.sum() >= 5
    small = NetworkMatrix.of([n for n, first in zip(networks, first_band, strict=True) if first])
    # The sum model, scaled by the band's centre (the median of its residuals) only.
    assert abs(model.bands[0].centre) < 0.05
    np.testing.assert_allclose(
        model.points(small)[0], sum_model(small, OVERHEAD) * np.exp(model.bands[0].centre)
    )


def test_fit_error_model_refuses_what_it_cannot_judge() -> None:
    rng = np.random.default_rng(8)
    networks = _networks(rng, 6)
    with pytest.raises(ValueError, match="judged"):
        fit_error_model([ValidationSample("a", n, (1.0,)) for n in networks], CACHE, OVERHEAD)
    with pytest.raises(ValueError, match="positive"):
        fit_error_model([ValidationSample("a", networks[0], (0.0,), judged=True)], CACHE, OVERHEAD)


def test_truth_noise_ceiling_matches_simulated_median_of_three_errors() -> None:
    rng = np.random.default_rng(9)
    true_ms = rng.uniform(0.1, 5.0, 3000)
    readings = true_ms[:, None] * np.exp(rng.normal(0, 0.08, (3000, 3)))
    truth = np.median(readings, axis=1)
    actual = np.abs(truth / true_ms - 1)
    ceiling = truth_noise_ceiling(readings.tolist())
    assert ceiling.n == 3000 and ceiling.spearman is None
    assert ceiling.within_10 == pytest.approx((actual <= 0.10).mean(), abs=0.02)
    assert ceiling.within_5 == pytest.approx((actual <= 0.05).mean(), abs=0.03)
    assert truth_noise_ceiling([[1.0, 1.0, 1.0], [2.0, 2.0]]).within_5 == 1.0
    with pytest.raises(ValueError, match="twice"):
        truth_noise_ceiling([[1.0], [2.0]])


def test_guarantees_check_their_values() -> None:
    assert Guarantee().plain and not Guarantee(confidence=0.9).plain
    assert Guarantee(percentile=90).describe() == " at p90"
    for bad in (0.0, 1.0, 1.5, -0.1, float("nan"), True):
        with pytest.raises(NasvitError, match="between 0 and 1"):
            Guarantee(confidence=bad)
    with pytest.raises(NasvitError, match="p50, p75, p90, p95, p99"):
        Guarantee(percentile=42)
    with pytest.raises(NasvitError, match="not both"):
        Guarantee(confidence=0.9, percentile=90)


def test_measurement_keeps_its_runs_for_percentiles() -> None:
    m = Measurement.from_sessions([[1.0, 2.0, 3.0], [4.0, 5.0]])
    assert m.runs_ms == (1.0, 2.0, 3.0, 4.0, 5.0)
    assert m.percentile_ms(50) == 3.0 and m.percentile_ms(100) == 5.0
    with pytest.raises(ValueError, match="no runs"):
        Measurement(1.0, 0.0, 1, 1).percentile_ms(90)


def test_per_call_overhead_is_measured_from_chained_copies() -> None:
    profiler = OnnxRuntimeProfiler()
    overhead = profiler.measure_overhead()
    single = profiler.measure(_one_by_one_conv(), (1, 8, 8, 8))
    assert overhead.sessions == profiler.protocol.sessions and overhead.n >= overhead.sessions
    # Positive, and a fraction of one call of the tiny block it was measured with.
    assert 0.0 < overhead.median_ms < single.median_ms


def _one_by_one_conv():
    from torch import nn

    return nn.Conv2d(8, 8, 1).eval()

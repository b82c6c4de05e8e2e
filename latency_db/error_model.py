"""Predictions with an honest error: two simple models, physical bounds, bands and intervals.

A network's latency is predicted from its blocks' table entries (:func:`cache_inputs` in
:mod:`~nasvit.latency_db.table`) by one of two models:

- the **sum model**: the warm block medians summed, minus ``(N - 1)`` *measured* per-call
  overheads (each block was timed in a call of its own; the network makes one call). No
  parameter is fitted.
- the **residency model** (:class:`~nasvit.latency_db.cache.CacheModel`): the sum model plus
  the share of each block's warm-to-cold gap it pays when the rest of the network has evicted
  its weights from the cache. Three parameters (where evictions start, how fast, how much more a
  network far beyond the cache pays), fitted with a penalty that pulls it toward the sum model,
  so sparse data cannot push it far.

Every prediction lies within **physical bounds**: at least the sum model (every block at its
warm time, the measured overheads saved) and at most the cold (DRAM-streamed) sum plus
:data:`MAX_EXCESS`. A bad fit can make a prediction poor, never absurd.

The error is learned from whole networks measured in a validation run, split in two sets: the
*fit* set fits the residency model, and the *judged* set, never fitted on, decides everything
else. The range of the sum model is cut into log-uniform **bands**; in each band the residency
model is used only if it beat the sum model on the judged networks there. Out-of-sample log
residuals ``log(measured / predicted)`` give split-conformal **intervals**: the judged networks'
as predicted, and the fit networks' from residency models refitted without each of them (a
jackknife), so all validation networks count; per band when the band has
:data:`MIN_BAND_NETWORKS` of them, else pooled over all bands. A network's
"measured" latency, its *truth*, is the median of several readings in fresh sessions
interleaved over the run; :func:`truth_noise_ceiling` says how good that truth itself is.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from functools import cached_property
from typing import Any

import numpy as np

from nasvit.guarantees import BUDGET_PERCENTILES, DEFAULT_CONFIDENCE, Guarantee
from nasvit.latency_db.cache import CacheModel

#: ``(warm_ms, cold_ms, weight_bytes, activation_bytes)`` of a network's blocks.
NetworkInputs = tuple[Sequence[float], Sequence[float], Sequence[float], float]

#: How far above its cold (DRAM-streamed) block sum a network may be predicted. Networks that
#: stream several caches' worth of weights ran up to 16% over their cold sums here.
MAX_EXCESS = 0.25
DEFAULT_BANDS = 4
#: Residuals a band needs for intervals of its own: with fewer, the finite-sample ranks of 80%,
#: 90% and 95% intervals all fall on the smallest and largest residual (coverage then differs
#: from the level asked for); bands with fewer share the pooled residuals of all bands.
MIN_BAND_NETWORKS = 20
#: Residuals a band needs to centre its predictions on their median (else the pooled median).
MIN_CENTRE_NETWORKS = 10
#: Judged networks a band needs to choose its own model (else the choice over all bands).
MIN_CHOICE_NETWORKS = 3
#: Weight of the penalty pulling the residency model toward the sum model (mean squared log
#: ratio of the two predictions, against the mean squared log error).
REGULARISATION = 0.05
MODELS = ("sum", "residency")


# ---------------------------------------------------------------------- error figures
@dataclass(frozen=True)
class ErrorStats:
    """How far predictions were from whole-network measurements.

    Attributes:
        n: networks compared.
        mape: mean absolute percentage error, in percent.
        within_5: share (0..1) of networks predicted within ±5%.
        within_10: share (0..1) within ±10%.
        spearman: rank correlation of predicted and measured (None below 3 networks).
    """

    n: int
    mape: float
    within_5: float
    within_10: float
    spearman: float | None = None


def error_stats(
    predicted_ms: Sequence[float] | np.ndarray, measured_ms: Sequence[float] | np.ndarray
) -> ErrorStats:
    """MAPE (percent), shares within ±5% / ±10% of measured, and Spearman rho."""
    predicted = np.asarray(predicted_ms, dtype=float)
    measured = np.asarray(measured_ms, dtype=float)
    if predicted.shape != measured.shape or predicted.size == 0:
        raise ValueError("need as many predictions as measurements, at least one")
    relative = np.abs(predicted - measured) / measured
    rho = None
    if predicted.size >= 3 and np.ptp(predicted) > 0 and np.ptp(measured) > 0:
        from scipy import stats  # imported here: it costs every search ~1 s of start-up

        rho = float(stats.spearmanr(predicted, measured).statistic)
    return ErrorStats(
        n=int(predicted.size),
        mape=float(100 * relative.mean()),
        within_5=float((relative <= 0.05).mean()),
        within_10=float((relative <= 0.10).mean()),
        spearman=rho,
    )


def _stats_of_errors(relative_errors: np.ndarray, n: int) -> ErrorStats:
    errors = np.abs(relative_errors)
    return ErrorStats(
        n=n,
        mape=float(100 * errors.mean()),
        within_5=float((errors <= 0.05).mean()),
        within_10=float((errors <= 0.10).mean()),
    )


def truth_noise_ceiling(
    readings_ms: Sequence[Sequence[float]], seed: int = 0, draws: int = 4000
) -> ErrorStats:
    """What a perfect predictor would score against the median-of-K truth of this run.

    Each network's readings, as log deviations from their mean (scaled by sqrt(K / (K - 1)) to
    undo the mean's own share), sample one reading's error; the pooled samples are drawn K at
    a time and their median is one draw of the truth's error. The shares of those errors
    within ±5% / ±10% are the best any predictor could show against this truth: report them
    next to every accuracy figure. Networks with one reading are skipped.

    Raises:
        ValueError: no network has two readings, or a reading is not positive.
    """
    groups = [np.asarray(r, dtype=float) for r in readings_ms if len(r) >= 2]
    if not groups:
        raise ValueError("a noise ceiling needs networks measured at least twice")
    if any((g <= 0).any() for g in groups):
        raise ValueError("measured latencies must be positive")
    k = int(np.median([g.size for g in groups]))
    deviations = np.concatenate(
        [(np.log(g) - np.log(g).mean()) * math.sqrt(g.size / (g.size - 1)) for g in groups]
    )
    rng = np.random.default_rng(seed)
    truth_errors = np.median(rng.choice(deviations, size=(draws, k)), axis=1)
    return _stats_of_errors(np.expm1(truth_errors), len(groups))


# ---------------------------------------------------------------------- the two models
@dataclass(frozen=True)
class NetworkMatrix:
    """Many networks' block inputs as padded (networks x blocks) arrays; padding is zero."""

    warm: np.ndarray
    cold: np.ndarray
    weights: np.ndarray
    activations: np.ndarray  # (networks, 1)
    counts: np.ndarray  # (networks,) blocks per network

    @classmethod
    def of(cls, networks: Sequence[NetworkInputs]) -> NetworkMatrix:
        if not networks or min(len(n[0]) for n in networks) == 0:
            raise ValueError("need at least one network of at least one block")
        width = max(len(n[0]) for n in networks)
        arrays = np.zeros((3, len(networks), width))
        for i, (warm, cold, weights, _) in enumerate(networks):
            arrays[0, i, : len(warm)] = warm
            arrays[1, i, : len(cold)] = cold
            arrays[2, i, : len(weights)] = weights
        return cls(
            warm=arrays[0],
            cold=arrays[1],
            weights=arrays[2],
            activations=np.array([[float(n[3])] for n in networks]),
            counts=np.array([len(n[0]) for n in networks], dtype=float),
        )


def physical_bounds(matrix: NetworkMatrix, overhead_ms: float) -> tuple[np.ndarray, np.ndarray]:
    """Per network, the least and the most it can take: the warm sum minus the saved per-call
    overheads (never below its slowest block), and the cold sum (every block called on its
    own with its weights in DRAM) plus :data:`MAX_EXCESS`."""
    saved = (matrix.counts - 1) * overhead_ms
    lower = np.maximum(matrix.warm.sum(axis=1) - saved, matrix.warm.max(axis=1))
    cold = np.maximum(matrix.cold, matrix.warm)
    upper = np.maximum(cold.sum(axis=1) * (1 + MAX_EXCESS), lower)
    return lower, upper


def sum_model(matrix: NetworkMatrix, overhead_ms: float) -> np.ndarray:
    """The sum model: warm block sum minus the measured overheads (= the lower bound)."""
    return physical_bounds(matrix, overhead_ms)[0]


def residency_model(matrix: NetworkMatrix, model: CacheModel, overhead_ms: float) -> np.ndarray:
    """The residency model's predictions, clipped to the physical bounds."""
    lower, upper = physical_bounds(matrix, overhead_ms)
    gap = np.maximum(matrix.cold - matrix.warm, 0.0)
    share = model.cold_shares(matrix.weights, matrix.activations)
    raw = matrix.warm.sum(axis=1) + (share * gap).sum(axis=1) - (matrix.counts - 1) * overhead_ms
    return np.asarray(np.clip(raw, lower, upper))


def fit_residency(
    matrix: NetworkMatrix, truth_ms: np.ndarray, cache_bytes: int, overhead_ms: float
) -> CacheModel:
    """The residency model with the least mean squared log error on ``truth_ms``, plus
    :data:`REGULARISATION` times its mean squared log distance from the sum model.

    Three parameters: ``onset`` in [0, 8] cache sizes, ``width`` in [0.25, 16], ``excess`` in
    [0, MAX_EXCESS]; the per-call overhead is the measured one and activations count as much
    as weights. A coarse grid, then Nelder-Mead from its best point.
    """
    from scipy.optimize import minimize

    if truth_ms.size < 3:
        raise ValueError("fitting a residency model needs at least three measured networks")
    log_truth = np.log(truth_ms)
    log_sum = np.log(sum_model(matrix, overhead_ms))

    def model_of(params: Sequence[float]) -> CacheModel:
        onset, log_width, excess = (float(p) for p in params)
        return CacheModel(
            cache_bytes,
            onset=min(max(onset, 0.0), 8.0),
            width=math.exp(min(max(log_width, math.log(0.25)), math.log(16.0))),
            power=1.0,
            activation_weight=1.0,
            overhead_ms=overhead_ms,
            excess=min(max(excess, 0.0), MAX_EXCESS),
        )

    def loss(params: Sequence[float]) -> float:
        log_predicted = np.log(residency_model(matrix, model_of(params), overhead_ms))
        fit = np.mean((log_predicted - log_truth) ** 2)
        return float(fit + REGULARISATION * np.mean((log_predicted - log_sum) ** 2))

    grid = itertools.product((0.0, 0.5, 1.0, 2.0, 4.0), np.log([0.5, 1.0, 2.0, 4.0, 8.0]),
                             (0.0, 0.1))  # fmt: skip
    start = min(grid, key=loss)
    result = minimize(loss, np.array(start), method="Nelder-Mead",
                      options={"maxiter": 600, "xatol": 1e-3, "fatol": 1e-7})  # fmt: skip
    return model_of(result.x if result.fun <= loss(start) else start)


# ---------------------------------------------------------------------- bands and intervals
def band_edges(
    sum_ms: Sequence[float] | np.ndarray, bands: int = DEFAULT_BANDS
) -> tuple[float, ...]:
    """``bands + 1`` log-uniform edges from the least to the greatest of ``sum_ms``."""
    values = np.asarray(sum_ms, dtype=float)
    if values.size == 0 or (values <= 0).any():
        raise ValueError("band edges need positive latencies")
    if bands < 1:
        raise ValueError("need at least one band")
    low, high = float(values.min()), float(values.max())
    high = max(high, low * 1.0001)
    return tuple(float(x) for x in np.geomspace(low, high, bands + 1))


def band_of(edges: Sequence[float], sum_ms: Any) -> np.ndarray:
    """The band index of each sum-model latency; outside the edges, the nearest end band."""
    inner = np.asarray(edges[1:-1], dtype=float)
    return np.searchsorted(inner, np.asarray(sum_ms, dtype=float), side="right")


def conformal_upper(sorted_residuals: Sequence[float], level: float) -> float:
    """The split-conformal ``level`` quantile: the ceil((n + 1) level)-th smallest residual
    (the largest when there are too few for that level)."""
    n = len(sorted_residuals)
    k = min(max(math.ceil((n + 1) * level), 1), n)
    return float(sorted_residuals[k - 1])


def conformal_lower(sorted_residuals: Sequence[float], level: float) -> float:
    """The mirror of :func:`conformal_upper`: the floor((n + 1) level)-th smallest residual
    (the smallest when there are too few)."""
    n = len(sorted_residuals)
    k = min(max(math.floor((n + 1) * level), 1), n)
    return float(sorted_residuals[k - 1])


@dataclass(frozen=True)
class Band:
    """One band of the sum model's range and what the judged networks in it showed.

    Attributes:
        low_ms, high_ms: the band's edges (sum-model latency).
        model: "sum" or "residency": the model predictions in this band use.
        n_judged: judged networks in the band.
        residuals: sorted out-of-sample ``log(truth / prediction)`` the band's intervals come
            from: its own networks', or all bands' when it has fewer than MIN_BAND_NETWORKS.
        pooled: the residuals are the pooled ones.
        call_log_factors: per budget percentile, the percentile of ``log(call / prediction)``
            over every timed call of those networks (the spread of single calls included).
        judged: the chosen model's error on the band's judged networks (None: none judged).
        median_bias: median of ``prediction / truth - 1`` there (None: none judged).
        centre: the log factor the band's predictions are scaled by: the median of its
            out-of-sample residuals, so a prediction is the middle of its interval's
            distribution (``residuals`` and ``call_log_factors`` are relative to the centred
            prediction).
    """

    low_ms: float
    high_ms: float
    model: str
    n_judged: int
    residuals: tuple[float, ...]
    pooled: bool
    call_log_factors: dict[int, float]
    judged: ErrorStats | None = None
    median_bias: float | None = None
    centre: float = 0.0


@dataclass(frozen=True)
class NetworkPrediction:
    """One network's prediction from an :class:`ErrorModel` (or the sum model alone)."""

    latency_ms: float
    sum_ms: float
    lower_bound_ms: float
    upper_bound_ms: float
    model: str
    band: int | None = None
    low_ms: float | None = None
    high_ms: float | None = None


@dataclass(frozen=True)
class ErrorModel:
    """What a validation learned: the models per band and the judged errors behind intervals.

    Attributes:
        overhead_ms: the measured per-call overhead the models use.
        residency: the fitted residency model (None: too few fit networks or no cache size).
        edges_ms: the band edges (sum-model latency), ``len(bands) + 1`` of them.
        bands: per band, the model used and its judged residuals.
        sum_judged, residency_judged, judged: errors on the judged networks of the sum model,
            the residency model, and the per-band choice.
        n_fit: networks the residency model was fitted on.
    """

    overhead_ms: float
    residency: CacheModel | None
    edges_ms: tuple[float, ...]
    bands: tuple[Band, ...]
    sum_judged: ErrorStats
    residency_judged: ErrorStats | None
    judged: ErrorStats
    n_fit: int
    confidence: float = DEFAULT_CONFIDENCE

    # ---- predictions
    def points(self, matrix: NetworkMatrix) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(prediction, sum model, band index) of each network."""
        points, lower, _, bands = self._points_and_bounds(matrix)
        return points, lower, bands  # the sum model is the lower bound

    def _points_and_bounds(
        self, matrix: NetworkMatrix
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(prediction, lower bound, upper bound, band index) of each network."""
        lower, upper = physical_bounds(matrix, self.overhead_ms)
        bands = band_of(self.edges_ms, lower)
        chosen = lower
        if self.residency is not None and any(b.model == "residency" for b in self.bands):
            residency = residency_model(matrix, self.residency, self.overhead_ms)
            chosen = np.where(self._uses_residency[bands], residency, lower)
        centred = np.clip(chosen * np.exp(self._centres[bands]), lower, upper)
        return centred, lower, upper, bands

    def interval_logs(self, bands: np.ndarray, confidence: float) -> tuple[np.ndarray, np.ndarray]:
        """Two-sided split-conformal log offsets at ``confidence`` for each band index."""
        tail = (1.0 - confidence) / 2
        low = [conformal_lower(b.residuals, tail) for b in self.bands]
        high = [conformal_upper(b.residuals, 1.0 - tail) for b in self.bands]
        return np.asarray(low)[bands], np.asarray(high)[bands]

    def judged_logs(self, bands: np.ndarray, guarantee: Guarantee) -> np.ndarray:
        """The log factor a guarantee puts on each prediction (0 for a plain budget)."""
        if guarantee.confidence is not None:
            one_sided = [conformal_upper(b.residuals, guarantee.confidence) for b in self.bands]
            return np.asarray(np.asarray(one_sided)[bands])
        if guarantee.percentile is not None:
            factors = [b.call_log_factors[guarantee.percentile] for b in self.bands]
            return np.asarray(np.asarray(factors)[bands])
        return np.zeros(np.shape(bands))

    def predict(self, inputs: NetworkInputs, confidence: float | None = None) -> NetworkPrediction:
        """One network's prediction with its interval at ``confidence`` (default: the model's)."""
        points, lower, upper, bands = self._points_and_bounds(NetworkMatrix.of([inputs]))
        low, high = self.interval_logs(bands, confidence or self.confidence)
        point = float(points[0])
        band = int(bands[0])
        return NetworkPrediction(
            latency_ms=point,
            sum_ms=float(lower[0]),
            lower_bound_ms=float(lower[0]),
            upper_bound_ms=float(upper[0]),
            model=self.bands[band].model,
            band=band,
            low_ms=point * math.exp(float(low[0])),
            high_ms=point * math.exp(float(high[0])),
        )

    @cached_property
    def _uses_residency(self) -> np.ndarray:
        return np.array([b.model == "residency" for b in self.bands])

    @cached_property
    def _centres(self) -> np.ndarray:
        return np.array([b.centre for b in self.bands])

    # ---- what users read
    def describe_bands(self) -> list[dict[str, Any]]:
        """Per band: its range, the model used, judged count, MAPE, within ±10%, median bias
        and the relative width of its interval at the model's confidence."""
        rows = []
        for index, band in enumerate(self.bands):
            low, high = self.interval_logs(np.array([index]), self.confidence)
            rows.append({
                "band": index,
                "low_ms": band.low_ms,
                "high_ms": band.high_ms,
                "model": band.model,
                "n_judged": band.n_judged,
                "mape": band.judged.mape if band.judged else None,
                "within_10": band.judged.within_10 if band.judged else None,
                "median_bias": band.median_bias,
                "interval_width": float(math.exp(high[0]) - math.exp(low[0])),
                "n_residuals": len(band.residuals),
                "pooled_interval": band.pooled,
            })  # fmt: skip
        return rows

    # ---- storage
    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["residency"] = None if self.residency is None else self.residency.to_dict()
        for band in data["bands"]:
            band["call_log_factors"] = {str(p): v for p, v in band["call_log_factors"].items()}
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ErrorModel:
        def stats(value: dict[str, Any] | None) -> ErrorStats | None:
            return None if value is None else ErrorStats(**value)

        bands = tuple(
            Band(
                **{
                    **b,
                    "residuals": tuple(b["residuals"]),
                    "call_log_factors": {int(p): v for p, v in b["call_log_factors"].items()},
                    "judged": stats(b.get("judged")),
                }
            )
            for b in data["bands"]
        )
        residency = data.get("residency")
        return cls(
            overhead_ms=data["overhead_ms"],
            residency=None if residency is None else CacheModel.from_dict(residency),
            edges_ms=tuple(data["edges_ms"]),
            bands=bands,
            sum_judged=ErrorStats(**data["sum_judged"]),
            residency_judged=stats(data.get("residency_judged")),
            judged=ErrorStats(**data["judged"]),
            n_fit=data["n_fit"],
            confidence=data.get("confidence", DEFAULT_CONFIDENCE),
        )


# ---------------------------------------------------------------------- fitting
@dataclass(frozen=True)
class ValidationSample:
    """One validation network: its block inputs and its whole-network readings.

    Attributes:
        arch: the architecture's short string.
        inputs: its blocks' ``(warm, cold, weight bytes, activation bytes)``.
        readings_ms: K fresh-session medians, interleaved with other networks' over the run.
        calls_ms: every timed call of those readings (percentile budgets).
        judged: in the judged (held-out) set; else in the fit set.
        origin: "stratified", "smallest", "largest" or "reference:<name>".
    """

    arch: str
    inputs: NetworkInputs
    readings_ms: tuple[float, ...]
    calls_ms: tuple[float, ...] = ()
    judged: bool = False
    origin: str = "stratified"

    @property
    def truth_ms(self) -> float:
        """The median of the readings: the network's measured latency."""
        return float(np.median(self.readings_ms))


def fit_error_model(
    samples: Sequence[ValidationSample],
    cache_bytes: int,
    overhead_ms: float,
    bands: int = DEFAULT_BANDS,
    confidence: float = DEFAULT_CONFIDENCE,
) -> ErrorModel:
    """Fit the residency model on the fit set; choose models, and learn intervals, per band on
    the judged set (see the module docstring).

    Raises:
        ValueError: no judged network, a sample without readings, or a non-positive reading.
    """
    if any(not s.readings_ms or min(s.readings_ms) <= 0 for s in samples):
        raise ValueError("every validation network needs positive readings")
    fit = [s for s in samples if not s.judged]
    judged = [s for s in samples if s.judged]
    if not judged:
        raise ValueError("an error model needs judged (held-out) networks")
    everything = NetworkMatrix.of([s.inputs for s in samples])
    lower, upper = physical_bounds(everything, overhead_ms)
    sums = lower  # the sum model is the lower bound
    edges = band_edges(sums, bands)

    residency = None
    if len(fit) >= 3 and cache_bytes > 0:
        fit_truth = np.array([s.truth_ms for s in fit])
        residency = fit_residency(
            NetworkMatrix.of([s.inputs for s in fit]), fit_truth, cache_bytes, overhead_ms
        )

    # Every network's prediction by each model, out of sample: the sum model fits nothing; the
    # residency model predicts the judged networks as fitted, and each fit network from a refit
    # without it (a jackknife), so the intervals rest on all validation networks, not half.
    truth = np.array([s.truth_ms for s in samples])
    is_judged = np.array([s.judged for s in samples])
    band_index = band_of(edges, sums)
    candidates = {"sum": sums}
    out_of_sample = np.ones(len(samples), dtype=bool)
    if residency is not None:
        candidates["residency"] = residency_model(everything, residency, overhead_ms)
        jackknife = _jackknife(samples, cache_bytes, overhead_ms)
        if jackknife is None:
            out_of_sample = is_judged.copy()
        else:
            candidates["residency"][~is_judged] = jackknife
    errors = {name: np.abs(p / truth - 1) for name, p in candidates.items()}

    # Per band, the residency model only where it beat the sum model on that band's judged
    # networks; where a band has too few judged networks to tell, whichever did better over
    # all of them.
    def better(members: np.ndarray) -> str:
        return min(candidates, key=lambda name: (errors[name][members].mean(), name != "sum"))

    overall = better(is_judged)
    chosen_names = [
        better(is_judged & (band_index == b))
        if (is_judged & (band_index == b)).sum() >= MIN_CHOICE_NETWORKS
        else overall
        for b in range(bands)
    ]
    chosen = np.array([candidates[chosen_names[b]][i] for i, b in enumerate(band_index)])
    usable = out_of_sample | np.array([chosen_names[b] == "sum" for b in band_index])
    raw_residuals = np.log(truth / chosen)
    # Each band's predictions are centred on the median of its out-of-sample residuals, so a
    # model's bias in one band (e.g. +4% for the largest networks) does not stay in the point.
    pooled_centre = float(np.median(raw_residuals[usable]))
    centres = []
    for b in range(bands):
        members = (band_index == b) & usable
        own = members.sum() >= MIN_CENTRE_NETWORKS
        centres.append(float(np.median(raw_residuals[members])) if own else pooled_centre)
    chosen = np.clip(chosen * np.exp(np.array(centres)[band_index]), lower, upper)
    residuals = np.log(truth / chosen)
    call_residuals = [
        np.log(np.asarray(s.calls_ms or s.readings_ms, dtype=float) / p)
        for s, p in zip(samples, chosen, strict=True)
    ]

    def call_factors(members: np.ndarray) -> dict[int, float]:
        pooled = np.concatenate([call_residuals[i] for i in np.flatnonzero(members)])
        return {p: float(np.percentile(pooled, p)) for p in BUDGET_PERCENTILES}

    band_records = []
    for b in range(bands):
        in_band = band_index == b
        judged_here = in_band & is_judged
        count = int(judged_here.sum())
        own = int((in_band & usable).sum()) >= MIN_BAND_NETWORKS
        members = (in_band & usable) if own else usable
        band_records.append(
            Band(
                low_ms=edges[b],
                high_ms=edges[b + 1],
                model=chosen_names[b],
                n_judged=count,
                residuals=tuple(float(r) for r in np.sort(residuals[members])),
                pooled=not own,
                call_log_factors=call_factors(members),
                judged=error_stats(chosen[judged_here], truth[judged_here]) if count else None,
                median_bias=float(np.median(chosen[judged_here] / truth[judged_here] - 1))
                if count
                else None,
                centre=centres[b],
            )
        )
    judged_truth = truth[is_judged]
    return ErrorModel(
        overhead_ms=overhead_ms,
        residency=residency,
        edges_ms=edges,
        bands=tuple(band_records),
        sum_judged=error_stats(sums[is_judged], judged_truth),
        residency_judged=error_stats(candidates["residency"][is_judged], judged_truth)
        if residency
        else None,
        judged=error_stats(chosen[is_judged], judged_truth),
        n_fit=len(fit),
        confidence=confidence,
    )


def _jackknife(
    samples: Sequence[ValidationSample], cache_bytes: int, overhead_ms: float
) -> np.ndarray | None:
    """Each fit network's residency prediction from a model fitted on the other fit networks
    (None when fewer than four: a refit needs three)."""
    fit = [s for s in samples if not s.judged]
    if len(fit) < 4:
        return None
    predictions = []
    for left_out in range(len(fit)):
        others = [s for i, s in enumerate(fit) if i != left_out]
        model = fit_residency(
            NetworkMatrix.of([s.inputs for s in others]),
            np.array([s.truth_ms for s in others]),
            cache_bytes,
            overhead_ms,
        )
        one = NetworkMatrix.of([fit[left_out].inputs])
        predictions.append(float(residency_model(one, model, overhead_ms)[0]))
    return np.array(predictions)

"""Accuracy predictors: architecture -> estimated accuracy, trained on supernet measurements.

Two models, as in the anchors: an MLP on a one-hot encoding (once-for-all uses 3 x 400 on
1-4K samples) and gradient-boosted trees on the choice-index encoding (mixFormer). Both report
rank agreement (Spearman rho, Kendall tau) on held-out archs, because a search only needs the
ranking to be right. A predictor remembers its space and restrictions and refuses archs of
another space; it is saved with joblib next to the supernet checkpoint.

Targets: ``accuracy`` (top-1 on the evaluated split); ``score``, what the search maximises
(:func:`nasvit.evaluation.ranking.ranking_score`: accuracy with the validation loss as a
tie-break); and
``neg_loss`` (minus the mean cross-entropy). On a small validation split accuracy is coarse and
noisy: digits' 179 val images give 6 distinct accuracies over 600 random subnets of the default
supernet (they differ by a handful of images), so no model can rank them; the loss is
continuous and is the part of the score that separates subnets (bench/bench_training.py
``predictor`` reports all three and how well val ranks agree with test ranks).
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import joblib
import numpy as np
from scipy import stats

from nasvit.errors import NasvitError
from nasvit.search_spaces import Choice, ChoiceList, LayerChoices, SearchSpace

if TYPE_CHECKING:
    from nasvit.evaluation.evaluator import ArchAccuracy, SubnetEvaluator

PredictorKind = Literal["mlp", "gbt"]
# What a predictor estimates (higher is better for all): top-1 accuracy, the search's ranking
# score, or minus the mean cross-entropy. On small validation splits accuracy is coarsely
# quantised (digits' 179 val images give a handful of distinct values across subnets), while the
# loss keeps the ranking signal.
PredictorTarget = Literal["accuracy", "score", "neg_loss"]
TARGETS: tuple[str, ...] = ("accuracy", "score", "neg_loss")
PREDICTOR_FORMAT = "nasvit.evaluation.predictor/1"


def choice_counts(space: SearchSpace) -> list[int]:
    """Number of choices at each position of :meth:`SearchSpace.encode` (same order)."""
    counts: list[int] = []
    for dim in space.searched_dimensions:
        if isinstance(dim, Choice):
            counts.append(len(dim.choices))
        elif isinstance(dim, ChoiceList):
            counts.extend(len(c) for c in dim.choices)
        else:
            assert isinstance(dim, LayerChoices)
            # encode() pads every layer list to its maximum length (a private helper of the
            # core; a public accessor would be better).
            counts.extend([len(dim.choices)] * space.max_layer_count(dim))
    if len(counts) != space.encoding_length:
        raise NasvitError(f"space '{space.name}': cannot map its encoding to choice counts")
    return counts


def one_hot(space: SearchSpace, encodings: np.ndarray) -> np.ndarray:
    """One-hot encoding of index encodings (rows of :meth:`SearchSpace.encode`).

    Every position becomes ``count`` indicator columns; an absent layer (-1) is all zeros, so
    depth is visible to a linear layer.
    """
    encodings = np.atleast_2d(np.asarray(encodings))
    counts = choice_counts(space)
    if encodings.shape[1] != len(counts):
        raise NasvitError(
            f"encoding has {encodings.shape[1]} positions, space '{space.name}' has {len(counts)}"
        )
    columns = []
    for position, count in enumerate(counts):
        index = np.rint(encodings[:, position]).astype(np.int64)
        block = np.zeros((encodings.shape[0], count), dtype=np.float32)
        present = index >= 0
        block[np.flatnonzero(present), index[present]] = 1.0
        columns.append(block)
    return np.concatenate(columns, axis=1)


@dataclass(frozen=True)
class RankReport:
    """Agreement between predicted and measured accuracy on held-out archs."""

    kind: str
    target: str
    train_size: int
    test_size: int
    spearman: float
    kendall: float
    mae: float  # mean absolute error, accuracy points in [0, 1]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class AccuracyPredictor:
    """A fitted regressor from architectures of one space to accuracy in [0, 1].

    Args:
        space: the space (with restrictions) whose archs it scores.
        kind: ``mlp`` (one-hot input, scikit-learn MLPRegressor) or ``gbt``
            (index input, scikit-learn gradient boosting).
        seed: seed of the model's initialisation / subsampling.
        target: ``accuracy`` or ``neg_loss`` (what :meth:`predict` returns).
    """

    def __init__(
        self,
        space: SearchSpace,
        kind: PredictorKind = "mlp",
        seed: int = 0,
        target: PredictorTarget = "accuracy",
    ):
        if kind not in ("mlp", "gbt"):
            raise NasvitError(f"unknown predictor kind '{kind}'; known: mlp, gbt")
        if target not in TARGETS:
            raise NasvitError(f"unknown predictor target '{target}'; known: {', '.join(TARGETS)}")
        self.target = target
        self.space = space
        self.kind = kind
        self.seed = seed
        self.model: Any = None

    def _features(self, archs: Sequence[Mapping[str, Any]]) -> np.ndarray:
        encodings = np.stack([self.space.encode(self.space.validate(a)) for a in archs])
        return one_hot(self.space, encodings) if self.kind == "mlp" else encodings

    def _new_model(self) -> Any:
        if self.kind == "gbt":
            from sklearn.ensemble import GradientBoostingRegressor

            return GradientBoostingRegressor(
                n_estimators=400,
                learning_rate=0.05,
                max_depth=3,
                subsample=0.8,
                random_state=self.seed,
            )
        from sklearn.compose import TransformedTargetRegressor
        from sklearn.neural_network import MLPRegressor
        from sklearn.preprocessing import StandardScaler

        # Strong L2 (alpha=1) with early stopping: a few hundred one-hot samples overfit a
        # lightly regularised MLP (Spearman 0.90 vs 0.95-0.97 on an analytic target).
        mlp = MLPRegressor(
            hidden_layer_sizes=(128, 128),
            alpha=1.0,
            max_iter=1000,
            early_stopping=True,
            n_iter_no_change=20,
            random_state=self.seed,
        )
        # Accuracies cluster in a narrow band; standardising the target keeps the MLP's
        # gradients well scaled whatever the band.
        return TransformedTargetRegressor(regressor=mlp, transformer=StandardScaler())

    def fit(self, archs: Sequence[Mapping[str, Any]], accuracies: Sequence[float]) -> None:
        """Fit on measured (arch, accuracy) pairs."""
        if len(archs) != len(accuracies) or len(archs) < 2:
            raise NasvitError(
                f"need at least 2 (arch, accuracy) pairs of equal count, got {len(archs)} "
                f"archs and {len(accuracies)} accuracies"
            )
        self.model = self._new_model()
        self.model.fit(self._features(archs), np.asarray(accuracies, dtype=np.float64))

    def predict(self, archs: Sequence[Mapping[str, Any]]) -> np.ndarray:
        """Estimated accuracies, one per arch."""
        if self.model is None:
            raise NasvitError("predictor is not fitted")
        return np.asarray(self.model.predict(self._features(archs)), dtype=np.float64)

    def score(
        self, archs: Sequence[Mapping[str, Any]], accuracies: Sequence[float], train_size: int = 0
    ) -> RankReport:
        """Rank agreement with measured accuracies of (held-out) archs."""
        predicted = self.predict(archs)
        measured = np.asarray(accuracies, dtype=np.float64)
        return RankReport(
            kind=self.kind,
            target=self.target,
            train_size=train_size,
            test_size=len(measured),
            spearman=float(stats.spearmanr(predicted, measured).statistic),
            kendall=float(stats.kendalltau(predicted, measured).statistic),
            mae=float(np.abs(predicted - measured).mean()),
        )

    def save(self, path: str | Path) -> Path:
        """Write atomically with joblib (a pickle: load only files you trust)."""
        if self.model is None:
            raise NasvitError("predictor is not fitted")
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        payload = {
            "format": PREDICTOR_FORMAT,
            "space": self.space.name,
            "restrictions": self.space.restrictions,
            "kind": self.kind,
            "seed": self.seed,
            "target": self.target,
            "model": self.model,
        }
        temporary = path.with_suffix(path.suffix + ".tmp")
        joblib.dump(payload, temporary)
        temporary.replace(path)
        return path


def load_predictor(path: str | Path) -> AccuracyPredictor:
    """Load a predictor written by :meth:`AccuracyPredictor.save`."""
    from nasvit.search_spaces import get_space

    path = Path(path)
    if not path.is_file():
        raise NasvitError(f"predictor not found: {path}")
    try:
        payload = joblib.load(path)
    except Exception as exc:
        raise NasvitError(f"cannot read predictor {path}: {exc}".splitlines()[0]) from None
    if not isinstance(payload, dict) or payload.get("format") != PREDICTOR_FORMAT:
        raise NasvitError(f"{path} is not a nasvit predictor ({PREDICTOR_FORMAT})")
    space = get_space(payload["space"])
    if payload["restrictions"]:
        space = space.restrict(**payload["restrictions"])
    predictor = AccuracyPredictor(
        space, payload["kind"], payload["seed"], payload.get("target", "accuracy")
    )
    predictor.model = payload["model"]
    return predictor


def predictor_path(
    checkpoint: str | Path, kind: PredictorKind = "mlp", target: PredictorTarget = "accuracy"
) -> Path:
    """Where the predictor of a supernet checkpoint lives: beside it, named after it."""
    checkpoint = Path(checkpoint)
    suffix = "" if target == "accuracy" else f"-{target}"
    return checkpoint.with_name(f"{checkpoint.stem}.predictor-{kind}{suffix}.joblib")


def target_values(results: Sequence[ArchAccuracy], target: PredictorTarget) -> list[float]:
    """The values a predictor of ``target`` is fitted on, one per measured arch."""
    if target not in TARGETS:
        raise NasvitError(f"unknown predictor target '{target}'; known: {', '.join(TARGETS)}")
    if target == "accuracy":
        return [r.accuracy for r in results]
    if target == "neg_loss":
        return [-r.loss for r in results]
    from nasvit.evaluation.ranking import ranking_score

    return [ranking_score(r.accuracy, r.loss) for r in results]


def fit_and_score(
    space: SearchSpace,
    archs: Sequence[Mapping[str, Any]],
    accuracies: Sequence[float],
    kind: PredictorKind = "mlp",
    test_size: int | float = 0.2,
    seed: int = 0,
    target: PredictorTarget = "accuracy",
) -> tuple[AccuracyPredictor, RankReport]:
    """Fit on a seeded random part of the pairs and report ranking on the rest.

    Args:
        test_size: held-out count (int) or fraction (float).
    """
    n = len(archs)
    held = int(round(n * test_size)) if isinstance(test_size, float) else int(test_size)
    if not 2 <= held <= n - 2:
        raise NasvitError(f"cannot hold out {held} of {n} pairs (need >= 2 on each side)")
    order = np.random.default_rng(seed).permutation(n)
    test, train = order[:held], order[held:]
    predictor = AccuracyPredictor(space, kind, seed, target)
    predictor.fit([archs[i] for i in train], [accuracies[i] for i in train])
    report = predictor.score(
        [archs[i] for i in test], [accuracies[i] for i in test], train_size=len(train)
    )
    return predictor, report


def measure_pairs(
    evaluator: SubnetEvaluator,
    count: int,
    seed: int = 0,
    cache: str | Path | None = None,
    cache_key: str = "",
    progress: bool = False,
) -> list[ArchAccuracy]:
    """Measure ``count`` distinct random archs (seeded) with ``evaluator``.

    With ``cache``, results are appended to a JSONL file as they are measured and reused by
    the next call with the same ``cache_key`` (e.g. the checkpoint's size and mtime), so an
    interrupted or repeated run measures only what is missing.
    """
    from nasvit.evaluation.evaluator import ArchAccuracy

    space = evaluator.space
    rng = np.random.default_rng(seed)
    archs: dict[str, Any] = {}
    for _ in range(count * 20):  # small spaces may not have `count` distinct archs
        if len(archs) == count:
            break
        arch = space.sample(rng)
        archs.setdefault(space.short_string(arch), arch)
    known: dict[str, ArchAccuracy] = {}
    header = {"cache_key": cache_key, "split": evaluator.split, "space": space.name}
    path = Path(cache) if cache else None
    if path is not None and path.is_file():
        lines = path.read_text().splitlines()
        if lines and json.loads(lines[0]) == header:
            for line in lines[1:]:
                with contextlib.suppress(json.JSONDecodeError, TypeError):  # torn last line
                    result = ArchAccuracy(**json.loads(line))
                    known[result.short] = result
    missing = [a for s, a in archs.items() if s not in known]
    if path is not None and (not path.is_file() or len(known) == 0):
        path.write_text(json.dumps(header) + "\n")
    if missing:
        log = path.open("a") if path is not None else contextlib.nullcontext()
        with log as handle:
            for result in _evaluate_each(evaluator, missing, progress):
                known[result.short] = result
                if handle is not None:
                    handle.write(json.dumps(result.to_dict()) + "\n")
                    handle.flush()
    return [known[s] for s in archs]


def _evaluate_each(
    evaluator: SubnetEvaluator, archs: Sequence[Mapping[str, Any]], progress: bool
) -> Iterator[ArchAccuracy]:
    if not progress:
        yield from (evaluator.evaluate(a) for a in archs)
        return
    from rich.progress import Progress

    with Progress(transient=True) as bar:
        task = bar.add_task("measuring subnets", total=len(archs))
        for arch in archs:
            yield evaluator.evaluate(arch)
            bar.advance(task)

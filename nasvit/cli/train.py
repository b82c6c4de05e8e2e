"""``nasvit train``, ``nasvit eval`` and ``nasvit predictor``: command functions registered by
:mod:`nasvit.cli`. Bad input raises :class:`~nasvit.errors.NasvitError` (exit code 2)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any, cast

import typer
from rich.console import Console
from rich.table import Table

from nasvit.errors import NasvitError

console = Console()
err_console = Console(stderr=True)


def _restrictions(text: str | None) -> dict[str, Any]:
    if not text:
        return {}
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise NasvitError(f"--restrict is not valid JSON: {exc.msg} (char {exc.pos})") from None
    if not isinstance(value, dict):
        raise NasvitError("--restrict takes a JSON object, e.g. '{\"resolution\": [32]}'")
    return value


def _load_checkpoint(ckpt: Path) -> tuple[Any, Any, dict[str, Any]]:
    from nasvit.training.checkpoint import load_supernet

    return load_supernet(ckpt)


def _dataset_for(extra: dict[str, Any], data: str | None) -> Any:
    """``--data`` if given, else the dataset (and split seed) the checkpoint was trained on."""
    from nasvit.data import load_dataset

    trained = json.loads(extra["dataset"]) if "dataset" in extra else {}
    seed = int(trained.get("split_seed", 0))
    return load_dataset(data or trained.get("name", "digits"), seed=seed)


def train_command(
    space_name: Annotated[str, typer.Option("--space", help="Search space name.")],
    out: Annotated[Path, typer.Option("--out", help="Checkpoint to write (every epoch).")],
    data: Annotated[
        str, typer.Option("--data", help="'digits', a CIFAR-10 batches dir, ImageFolder, .npz.")
    ] = "digits",
    epochs: Annotated[int, typer.Option("--epochs", min=1)] = 10,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1)] = 64,
    lr: Annotated[float, typer.Option("--lr", min=0.0, help="Peak AdamW learning rate.")] = 2e-3,
    sampling: Annotated[
        str, typer.Option("--sampling", help="sandwich (largest+smallest+k random) | uniform.")
    ] = "sandwich",
    num_random: Annotated[int, typer.Option("--num-random", min=0)] = 2,
    restrict: Annotated[
        str | None,
        typer.Option("--restrict", help='Train on fewer choices: JSON, e.g. {"resolution":[32]}.'),
    ] = None,
    default_recipe: Annotated[
        bool, typer.Option("--default-recipe", help="Use the default supernet's restrictions.")
    ] = False,
    teacher: Annotated[
        Path | None, typer.Option("--teacher", help="Supernet checkpoint to distil from.")
    ] = None,
    feature_weight: Annotated[
        float, typer.Option("--feature-weight", min=0.0, help="L1 hidden-feature loss weight.")
    ] = 1.0,
    recipe: Annotated[
        str,
        typer.Option(
            "--recipe",
            help="one-stage | two-stage (LightHuBERT: stage 1 distils --teacher into the "
            "largest subnet, writing <out>.stage1.pt; stage 2 trains once-for-all from it).",
        ),
    ] = "one-stage",
    stage: Annotated[
        int | None,
        typer.Option(
            "--stage",
            min=1,
            max=2,
            help="Run one stage of the two-stage recipe: 1 (needs --teacher) or 2 (needs --init).",
        ),
    ] = None,
    stage1_epochs: Annotated[
        int | None,
        typer.Option(
            "--stage1-epochs", min=1, help="Stage-1 epochs of two-stage (default --epochs)."
        ),
    ] = None,
    init: Annotated[
        Path | None,
        typer.Option("--init", help="Start from this checkpoint's weights (same space)."),
    ] = None,
    seed: Annotated[int, typer.Option("--seed")] = 0,
    resume: Annotated[bool, typer.Option("--resume", help="Continue from --out.")] = False,
    device: Annotated[str, typer.Option("--device", help="auto | cpu | cuda")] = "auto",
    metrics: Annotated[
        Path | None, typer.Option("--metrics", help="JSONL log (default: <out>.metrics.jsonl).")
    ] = None,
    progress: Annotated[bool, typer.Option(help="Show progress bars.")] = True,
    ddp_workers: Annotated[
        int,
        typer.Option(
            "--ddp-workers",
            min=1,
            help="Data-parallel processes on this machine (one per GPU; Gloo on CPU). "
            "Under torchrun, leave at 1: each process trains as its rank.",
        ),
    ] = 1,
) -> None:
    """Train a once-for-all supernet and checkpoint it every epoch."""
    from nasvit.data import load_dataset
    from nasvit.search_spaces import ArchitectureError, get_space
    from nasvit.training import TrainConfig, TrainResult, train_supernet, train_two_stage

    if sampling not in ("sandwich", "uniform"):
        raise NasvitError(f"unknown --sampling '{sampling}'; known: sandwich, uniform")
    _check_recipe(recipe, stage, stage1_epochs, teacher, init)
    space = get_space(space_name)
    allowed = _restrictions(restrict)
    if default_recipe:
        from nasvit.training.default_supernet import recipe_for

        allowed = {**recipe_for(space_name).restrictions, **allowed}
    if allowed:
        try:
            space = space.restrict(**allowed)
        except ArchitectureError as exc:
            raise NasvitError(f"--restrict: {exc}") from None
    if teacher is not None and not teacher.is_file():
        raise NasvitError(f"teacher checkpoint not found: {teacher}")
    if init is not None and not init.is_file():
        raise NasvitError(f"--init checkpoint not found: {init}")
    dataset = load_dataset(data)
    config = TrainConfig(
        epochs=epochs,
        batch_size=batch_size,
        lr=lr,
        sampling=sampling,  # type: ignore[arg-type]
        num_random=num_random,
        seed=seed,
        teacher=str(teacher) if teacher else None,
        feature_distill_weight=feature_weight,
        device=device,
        objective="teacher_features" if stage == 1 else "ofa",
        init=str(init) if init else None,
    )
    results: tuple[TrainResult, ...]
    if recipe == "two-stage":
        results = train_two_stage(
            space, dataset, config, out, stage1_epochs, resume, progress, metrics, ddp_workers
        )
    else:
        results = (
            train_supernet(
                space, dataset, config, out, resume, progress, metrics, workers=ddp_workers
            ),
        )
    for result in results:
        last = result.history[-1] if result.history else {}
        keys = ("val_largest", "val_smallest")
        summary = ", ".join(f"{k} {last[k]:.2%}" for k in keys if k in last)
        if stage == 1 or result.checkpoint != out:  # stage 1: its loss is the feature L1
            summary = f"feature L1 {last.get('loss', float('nan')):.4f}"
        console.print(
            f"wrote {result.checkpoint} after {result.epochs} epochs "
            f"({result.seconds:.0f}s) {summary}"
        )


def _check_recipe(
    recipe: str,
    stage: int | None,
    stage1_epochs: int | None,
    teacher: Path | None,
    init: Path | None,
) -> None:
    """The combinations of --recipe, --stage, --stage1-epochs, --teacher and --init that mean
    something; anything else is a one-line error."""
    if recipe not in ("one-stage", "two-stage"):
        raise NasvitError(f"unknown --recipe '{recipe}'; known: one-stage, two-stage")
    if recipe == "two-stage":
        if stage is not None:
            raise NasvitError("--stage runs one stage alone; drop it with --recipe two-stage")
        if init is not None:
            raise NasvitError("--recipe two-stage starts stage 2 from stage 1; drop --init")
        if teacher is None:
            raise NasvitError("--recipe two-stage needs --teacher (a checkpoint of this space)")
    elif stage1_epochs is not None:
        raise NasvitError("--stage1-epochs applies only to --recipe two-stage")
    if stage == 1 and teacher is None:
        raise NasvitError("--stage 1 needs --teacher (a checkpoint of this space)")
    if stage == 1 and init is not None:
        raise NasvitError("--stage 1 starts from fresh weights; drop --init")
    if stage == 2 and init is None:
        raise NasvitError("--stage 2 needs --init (the stage-1 checkpoint)")


def eval_command(
    ckpt: Annotated[Path, typer.Option("--ckpt", help="Supernet checkpoint.")],
    arch_texts: Annotated[
        list[str] | None,
        typer.Option("--arch", help="Architecture (JSON or short string); repeatable."),
    ] = None,
    random_count: Annotated[
        int, typer.Option("--random", min=0, help="Also evaluate N random archs.")
    ] = 0,
    data: Annotated[
        str | None,
        typer.Option("--data", help="Dataset (see nasvit train); default: the training data."),
    ] = None,
    split: Annotated[str, typer.Option("--split", help="val | test")] = "val",
    calibration: Annotated[
        int, typer.Option("--calibration-size", min=1, help="Images for BN recalibration.")
    ] = 256,
    seed: Annotated[int, typer.Option("--seed")] = 0,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """Accuracy of subnets of a trained supernet (BatchNorm recalibrated per subnet)."""
    import numpy as np

    from nasvit.evaluation.evaluator import SubnetEvaluator
    from nasvit.search_spaces import ArchitectureError

    if split not in ("val", "test"):
        raise NasvitError(f"unknown --split '{split}'; known: val, test")
    space, supernet, extra = _load_checkpoint(ckpt)
    try:
        archs = [space.parse(text) for text in arch_texts or []]
    except ArchitectureError as exc:
        raise NasvitError(f"--arch: {exc}") from None
    rng = np.random.default_rng(seed)
    archs += [space.sample(rng) for _ in range(random_count)]
    if not archs:
        raise NasvitError("give --arch (repeatable) and/or --random N")
    evaluator = SubnetEvaluator(
        space, supernet, _dataset_for(extra, data), split, calibration_size=calibration, seed=seed
    )
    results = evaluator.evaluate_many(archs, progress=not as_json and len(archs) > 1)
    if as_json:
        print(json.dumps([r.to_dict() for r in results], indent=2))
        return
    table = Table("architecture", f"{split} accuracy", "loss", "images")
    for r in results:
        table.add_row(r.short, f"{r.accuracy:.2%}", f"{r.loss:.3f}", str(r.samples))
    console.print(table)


def predictor_command(
    ckpt: Annotated[Path, typer.Option("--ckpt", help="Supernet checkpoint.")],
    samples: Annotated[
        int, typer.Option("--samples", min=4, help="Random archs measured in total.")
    ] = 1000,
    test_size: Annotated[
        int, typer.Option("--test-size", min=2, help="Held-out archs for the ranking report.")
    ] = 200,
    kind: Annotated[str, typer.Option("--kind", help="mlp | gbt | both")] = "both",
    target: Annotated[
        str,
        typer.Option(
            "--target",
            help="accuracy | score (what the search ranks by: accuracy, ties broken by the "
            "val loss) | neg_loss (minus val loss; finer-grained).",
        ),
    ] = "accuracy",
    data: Annotated[
        str | None,
        typer.Option("--data", help="Dataset (see nasvit train); default: the training data."),
    ] = None,
    seed: Annotated[int, typer.Option("--seed")] = 0,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """Measure random archs with the supernet, fit accuracy predictors, save them beside the
    checkpoint and report Spearman / Kendall tau on held-out archs."""
    from nasvit.evaluation.evaluator import SubnetEvaluator
    from nasvit.evaluation.predictor import (
        TARGETS,
        PredictorKind,
        fit_and_score,
        measure_pairs,
        predictor_path,
        target_values,
    )

    kinds = ["mlp", "gbt"] if kind == "both" else [kind]
    if any(k not in ("mlp", "gbt") for k in kinds):
        raise NasvitError(f"unknown --kind '{kind}'; known: mlp, gbt, both")
    known_kinds = cast(list[PredictorKind], kinds)  # (checked just above)
    if target not in TARGETS:
        raise NasvitError(f"unknown --target '{target}'; known: {', '.join(TARGETS)}")
    if test_size > samples - 2:
        raise NasvitError(f"--test-size {test_size} leaves too few of --samples {samples}")
    space, supernet, extra = _load_checkpoint(ckpt)
    evaluator = SubnetEvaluator(space, supernet, _dataset_for(extra, data), "val", seed=seed)
    stat = ckpt.stat()
    pairs = measure_pairs(
        evaluator,
        samples,
        seed,
        cache=ckpt.with_name(f"{ckpt.stem}.pairs.jsonl"),
        # A retrained checkpoint (new size or mtime) or other data invalidates the cache.
        cache_key=f"{stat.st_size}:{stat.st_mtime_ns}:{evaluator.dataset.name}:{seed}",
        progress=not as_json,
    )
    archs = [p.arch for p in pairs]
    values = target_values(pairs, target)  # type: ignore[arg-type]
    reports = []
    for k in known_kinds:
        predictor, report = fit_and_score(
            space,
            archs,
            values,
            k,
            test_size,
            seed,
            target,  # type: ignore[arg-type]
        )
        predictor.fit(archs, values)  # the saved model learns from every measured pair
        saved = predictor.save(predictor_path(ckpt, k, target))  # type: ignore[arg-type]
        reports.append({**report.to_dict(), "path": str(saved)})
    if as_json:
        print(json.dumps(reports, indent=2))
        return
    table = Table(
        "predictor", "target", "train", "held out", "Spearman", "Kendall tau", "MAE", "saved to"
    )
    for r in reports:
        table.add_row(
            r["kind"],
            r["target"],
            str(r["train_size"]),
            str(r["test_size"]),
            f"{r['spearman']:.3f}",
            f"{r['kendall']:.3f}",
            f"{r['mae']:.4f}",
            r["path"],
        )
    console.print(table)

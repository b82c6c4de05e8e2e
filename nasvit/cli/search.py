"""``nasvit search``: the main job from the command line."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from nasvit.search.defaults import DEFAULT_EVALUATIONS, DEFAULT_VALIDATE_NETWORKS

console = Console()
err_console = Console(stderr=True)


def search_command(
    space: Annotated[str, typer.Option("--space", help="Search space name.")],
    budget: Annotated[str, typer.Option("--budget", help="Latency budget: 2ms, 1500us, 0.002s.")],
    device: Annotated[
        str | None, typer.Option("--device", help="Latency table's device (default: this CPU).")
    ] = None,
    controller: Annotated[
        str,
        typer.Option(
            "--controller", help="nsga2 | evolution | predictor | tpe | optuna-nsga2 | random"
        ),
    ] = "nsga2",
    evaluations: Annotated[
        int, typer.Option("--evaluations", min=1, max=100_000, help="Candidates to evaluate.")
    ] = DEFAULT_EVALUATIONS,
    workers: Annotated[int, typer.Option("--workers", min=1, max=256, help="Ray workers.")] = 1,
    seed: Annotated[int, typer.Option("--seed")] = 0,
    ckpt: Annotated[
        Path | None, typer.Option("--ckpt", help="Supernet checkpoint (default: trained once).")
    ] = None,
    data: Annotated[
        str, typer.Option("--data", help="digits, or a dataset path matching --ckpt.")
    ] = "digits",
    out: Annotated[Path, typer.Option("--out", help="Output folder.")] = Path("nasvit-search"),
    resume: Annotated[bool, typer.Option("--resume", help="Continue the search in --out.")] = False,
    ray_address: Annotated[
        str | None, typer.Option("--ray-address", help="Join an existing Ray cluster.")
    ] = None,
    validate_networks: Annotated[
        int,
        typer.Option(
            "--validate-networks",
            min=0,
            max=1000,
            help="Whole networks measured to validate a table never validated on this space "
            "(0: skip).",
        ),
    ] = DEFAULT_VALIDATE_NETWORKS,
    as_json: Annotated[bool, typer.Option("--json", help="Print report.json.")] = False,
) -> None:
    """Search SPACE for the most accurate architectures under BUDGET on the device."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

    from nasvit.errors import UnknownNameError
    from nasvit.search.budget import format_ms, parse_budget
    from nasvit.search.controllers import CONTROLLERS
    from nasvit.search.pipeline import SearchRequest, run_search
    from nasvit.search_spaces import get_space

    budget_ms = parse_budget(budget)
    get_space(space)  # fail fast on a misspelt space
    if controller not in CONTROLLERS:
        raise UnknownNameError("controller", controller, CONTROLLERS)
    request = SearchRequest(
        space=space,
        budget_ms=budget_ms,
        device=device,
        controller=controller,
        evaluations=evaluations,
        workers=workers,
        seed=seed,
        checkpoint=ckpt,
        data=data,
        out=out,
        resume=resume,
        ray_address=ray_address,
        validate_networks=validate_networks,
    )
    bar = Progress(
        "{task.description}",
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=err_console,
        transient=True,
    )
    tasks: dict[str, Any] = {}

    def progress(stage: str, done: int, total: int) -> None:
        if stage not in tasks:
            tasks[stage] = bar.add_task(stage, total=total)
        bar.update(tasks[stage], completed=done, total=total)

    with bar:
        result = run_search(request, progress)
    if as_json:
        print(json.dumps(result.report, indent=2))
        return
    table = Table(
        "latency (predicted)",
        "measured",
        "accuracy",
        "",
        "architecture",
        title=f"Pareto front ({len(result.trials)} evaluations)",
    )
    for point in result.front:
        measured = point["measured_ms"]
        marker = (
            "best"
            if point["short"] == result.best.short
            else ("" if point["feasible"] else "over budget")
        )
        table.add_row(
            format_ms(point["predicted_ms"]),
            "" if measured is None else format_ms(measured),
            f"{point['accuracy']:.3f}",
            marker,
            point["short"],
        )
    console.print(table)
    best = result.report["best"]
    console.print(
        f"best under {format_ms(budget_ms)}: [bold]{result.best.short}[/bold]\n"
        f"  accuracy {best['accuracy']:.3f} (val), {best['test_accuracy']:.3f} (test); latency "
        f"{format_ms(best['predicted_ms'])} predicted, {format_ms(best['measured_ms'])} measured "
        f"end to end\n  artifacts in {out}/: best.onnx best.json pareto.csv trials.csv report.json"
    )

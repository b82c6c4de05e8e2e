"""``nasvit search``: the main job from the command line."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from nasvit.searching.request import RequestOption, request_option
from nasvit.settings import Settings

console = Console()
err_console = Console(stderr=True)

# The options' defaults, bounds and help come from nasvit.searching.request.SearchRequest: the
# service's request schema reads the same definitions.
SPACE = request_option("space")
BUDGET = request_option("budget_ms")
DEVICE = request_option("device")
CONTROLLER = request_option("controller")
EVALUATIONS = request_option("evaluations")
WORKERS = request_option("workers")
SEED = request_option("seed")
CHECKPOINT = request_option("checkpoint")
DATA = request_option("data")
OUT = request_option("out")
RESUME = request_option("resume")
RAY_ADDRESS = request_option("ray_address")
VALIDATE_NETWORKS = request_option("validate_networks")
# The service caps evaluations with its max_evaluations setting; the CLI with that default.
MAX_EVALUATIONS: int = Settings.model_fields["max_evaluations"].default


def _bounded(flag: str, option: RequestOption) -> Any:
    return typer.Option(flag, min=option.ge, max=option.le, help=option.help)


def search_command(
    space: Annotated[str, typer.Option("--space", help=SPACE.help)],
    budget: Annotated[str, typer.Option("--budget", help=BUDGET.help)],
    device: Annotated[str | None, typer.Option("--device", help=DEVICE.help)] = DEVICE.default,
    controller: Annotated[
        str, typer.Option("--controller", help=CONTROLLER.help)
    ] = CONTROLLER.default,
    evaluations: Annotated[
        int,
        typer.Option(
            "--evaluations", min=EVALUATIONS.ge, max=MAX_EVALUATIONS, help=EVALUATIONS.help
        ),
    ] = EVALUATIONS.default,
    workers: Annotated[int, _bounded("--workers", WORKERS)] = WORKERS.default,
    seed: Annotated[int, _bounded("--seed", SEED)] = SEED.default,
    ckpt: Annotated[Path | None, typer.Option("--ckpt", help=CHECKPOINT.help)] = CHECKPOINT.default,
    data: Annotated[str, typer.Option("--data", help=DATA.help)] = DATA.default,
    out: Annotated[Path, typer.Option("--out", help=OUT.help)] = OUT.default,
    resume: Annotated[bool, typer.Option("--resume", help=RESUME.help)] = RESUME.default,
    ray_address: Annotated[
        str | None, typer.Option("--ray-address", help=RAY_ADDRESS.help)
    ] = RAY_ADDRESS.default,
    validate_networks: Annotated[
        int, _bounded("--validate-networks", VALIDATE_NETWORKS)
    ] = VALIDATE_NETWORKS.default,
    as_json: Annotated[bool, typer.Option("--json", help="Print report.json.")] = False,
) -> None:
    """Search SPACE for the most accurate architectures under BUDGET on the device."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

    from nasvit.searching.budget import format_ms, parse_budget
    from nasvit.searching.pipeline import SearchRequest, run_search

    budget_ms = parse_budget(budget)
    request = SearchRequest(  # checks the space, the controller and the bounds
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
        marker = (
            "best"
            if point.short == result.best.short
            else ("" if point.feasible else "over budget")
        )
        table.add_row(
            format_ms(point.predicted_ms),
            "" if point.measured_ms is None else format_ms(point.measured_ms),
            f"{point.accuracy:.3f}",
            marker,
            point.short,
        )
    console.print(table)
    best = result.report["best"]
    console.print(
        f"best under {format_ms(budget_ms)}: [bold]{result.best.short}[/bold]\n"
        f"  accuracy {best['accuracy']:.3f} (val), {best['test_accuracy']:.3f} (test); latency "
        f"{format_ms(best['predicted_ms'])} predicted, {format_ms(best['measured_ms'])} measured "
        f"end to end\n  artifacts in {out}/: best.onnx best.json pareto.csv trials.csv report.json"
    )

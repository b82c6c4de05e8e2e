"""``nasvit search``: the main job from the command line."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from nasvit.errors import NasvitError
from nasvit.guarantees import DEFAULT_CONFIDENCE
from nasvit.searching.budget import format_ms
from nasvit.searching.request import (
    DEVICES_FILE,
    WORKERS_AUTO,
    RequestOption,
    SearchRequest,
    SearchResult,
    request_option,
)
from nasvit.settings import Settings

console = Console()
err_console = Console(stderr=True)

# The options' defaults, bounds and help come from nasvit.searching.request.SearchRequest: the
# service's request schema reads the same definitions.
SPACE = request_option("space")
BUDGET = request_option("budget_ms")
CONFIDENCE = request_option("budget_confidence")
DEVICE = request_option("device")
DEVICES = request_option("devices")
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
MEASURE_TOP = request_option("measure_top")
# The service caps evaluations with its max_evaluations setting; the CLI with that default.
MAX_EVALUATIONS: int = Settings.model_fields["max_evaluations"].default


def _bounded(flag: str, option: RequestOption) -> Any:
    return typer.Option(flag, min=option.ge, max=option.le, help=option.help)


def _workers_value(text: str) -> str:
    """``--workers``: auto or a whole number within the request's bounds (else exit 2)."""
    if text == WORKERS_AUTO:
        return text
    if not text.isdigit() or not WORKERS.ge <= int(text) <= WORKERS.le:  # type: ignore[operator]
        raise typer.BadParameter(
            f"{text!r} is not auto or a number from {WORKERS.ge} to {WORKERS.le}"
        )
    return text


def search_command(
    space: Annotated[str, typer.Option("--space", help=SPACE.help)],
    budget: Annotated[str, typer.Option("--budget", help=BUDGET.help)],
    # No click range here: the bounds are open (0 < C < 1), which typer cannot state, and the
    # request's own check words the error with the allowed range.
    confidence: Annotated[
        float | None, typer.Option("--confidence", help=CONFIDENCE.help)
    ] = CONFIDENCE.default,
    device: Annotated[str | None, typer.Option("--device", help=DEVICE.help)] = DEVICE.default,
    devices: Annotated[
        str | None,
        typer.Option(
            "--devices",
            help=f"{DEVICES.help} Written NAME=BUDGET,NAME=BUDGET (e.g. pi=20ms,jetson=5ms@p90; "
            "a NAME alone takes --budget); not with --device.",
        ),
    ] = None,
    controller: Annotated[
        str, typer.Option("--controller", help=CONTROLLER.help)
    ] = CONTROLLER.default,
    evaluations: Annotated[
        int,
        typer.Option(
            "--evaluations", min=EVALUATIONS.ge, max=MAX_EVALUATIONS, help=EVALUATIONS.help
        ),
    ] = EVALUATIONS.default,
    workers: Annotated[
        str, typer.Option("--workers", help=WORKERS.help, callback=_workers_value)
    ] = WORKERS.default,
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
    measure_top: Annotated[int, _bounded("--measure-top", MEASURE_TOP)] = MEASURE_TOP.default,
    as_json: Annotated[bool, typer.Option("--json", help="Print report.json.")] = False,
    server: Annotated[
        str | None,
        typer.Option(
            "--server",
            help="Run the search on this nasvit service (e.g. http://host:8000) and download "
            "its artifacts into --out; with --device, a device whose agent reports there.",
        ),
    ] = None,
    token: Annotated[
        str | None,
        typer.Option(
            "--token", envvar="NASVIT_TOKEN", help="API token for --server ($NASVIT_TOKEN)."
        ),
    ] = None,
) -> None:
    """Search SPACE for the most accurate architectures under BUDGET on the device."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

    # Reads the budget's text (2ms, 2ms@p90) and checks the space, the controller, the
    # confidence and the bounds, as the API and the service do.
    request = SearchRequest.from_mapping(
        {
            "space": space,
            "budget": budget,
            "budget_confidence": confidence,
            "device": device,
            "devices": None if devices is None else parse_devices(devices),
            "controller": controller,
            "evaluations": evaluations,
            "workers": workers if workers == WORKERS_AUTO else int(workers),
            "seed": seed,
            "checkpoint": ckpt,
            "data": data,
            "out": out,
            "resume": resume,
            "ray_address": ray_address,
            "validate_networks": validate_networks,
            "measure_top": measure_top,
        }
    )
    if server is not None:
        if request.devices:
            raise NasvitError(
                "--devices runs here; on a service, POST /api/v1/searches with devices"
            )
        _search_on_server(server, token, request, budget, out, as_json)
        return
    from nasvit.searching.pipeline import run_search  # heavy: only for a valid request

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
    if request.devices:
        _print_devices(result, request, out, as_json)
        return
    if as_json:
        print(json.dumps(result.report, indent=2))
        return
    points = [point.to_dict() for point in result.front]
    console.print(_front_table(points, result.best.short, request.budget_ms, len(result.trials)))
    console.print(best_summary(result, request))
    console.print(
        f"  artifacts in {out}/: best.onnx best.json pareto.csv trials.csv report.json",
        highlight=False,
    )


def parse_devices(text: str) -> list[dict[str, str]]:
    """``--devices pi=20ms,jetson=5ms@p90`` as the request's ``devices``; a name without
    ``=BUDGET`` takes the search's budget."""
    targets = []
    for part in text.split(","):
        name, equals, budget = (piece.strip() for piece in part.partition("="))
        if not name or (equals and not budget):
            raise NasvitError(
                f"cannot read --devices {text!r}: write NAME=BUDGET pairs separated by commas, "
                "e.g. pi=20ms,jetson=5ms",
                argument="devices",
            )
        targets.append({"name": name, "budget": budget} if equals else {"name": name})
    return targets


def _print_devices(result: SearchResult, request: SearchRequest, out: Path, as_json: bool) -> None:
    """One front per device, then each device's best in a line."""
    if as_json:
        print((out / DEVICES_FILE).read_text())
        return
    for target in request.devices:
        sub, device_result = request.for_device(target), result.per_device[target.name]
        table = _front_table(
            [point.to_dict() for point in device_result.front],
            device_result.best.short,
            sub.budget_ms,
            len(device_result.trials),
        )
        table.title = f"{target.name}: {table.title}"
        console.print(table)
    for target in request.devices:
        sub, device_result = request.for_device(target), result.per_device[target.name]
        console.print(f"{target.name} {best_summary(device_result, sub)}")
    names = " ".join(f"{t.name}/" for t in request.devices)
    console.print(f"  artifacts in {out}/: {DEVICES_FILE} {names}", highlight=False)


def _search_on_server(
    server: str,
    token: str | None,
    request: SearchRequest,
    budget: str,
    out: Path,
    as_json: bool,
) -> None:
    """Queue the request on ``server``, follow it, and print its front as a local run does."""
    from nasvit.cli.remote import run_remote_search

    if request.checkpoint is not None or request.resume:
        raise NasvitError("--ckpt and --resume are local options; the service uses its own")
    body = {
        "space": request.space,
        "budget": budget,
        "budget_confidence": request.budget_confidence,
        "device": request.device,
        "controller": request.controller,
        "evaluations": request.evaluations,
        "seed": request.seed,
        "workers": request.workers,
    }
    report = run_remote_search(
        server, token, body, out, lambda line: err_console.print(line, highlight=False)
    )
    if as_json:
        print(json.dumps(report, indent=2))
        return
    best = report["best"]
    points = report["pareto_front"]
    table = _front_table(points, best["short"], request.budget_ms, int(report["evaluations"]))
    console.print(table)
    console.print(
        f"best on {report['device']}: {best['short']} measured {format_ms(best['measured_ms'])} "
        f"there (predicted {format_ms(best['predicted_ms'])}), accuracy {best['accuracy']:.3f}",
        highlight=False,
    )
    console.print(f"  artifacts in {out}/", highlight=False)


def _front_table(
    front: list[dict[str, Any]], best: str, budget_ms: float, evaluations: int
) -> Table:
    """The front as printed, from its points as ``report.json`` holds them."""
    table = Table(
        "latency (predicted)",
        f"{100 * DEFAULT_CONFIDENCE:g}% interval",
        "measured",
        "accuracy",
        "",
        "architecture",
        title=f"Pareto front ({evaluations} evaluations)",
    )
    for point in front:
        measured = point.get("measured_ms")
        table.add_row(
            format_ms(point["predicted_ms"]),
            _interval(point.get("low_ms"), point.get("high_ms")),
            "" if measured is None else format_ms(measured),
            f"{point['accuracy']:.3f}",
            _marker(point, best, budget_ms),
            point["short"],
        )
    return table


def _interval(low_ms: float | None, high_ms: float | None) -> str:
    if low_ms is None or high_ms is None:
        return "not validated"
    return f"{format_ms(low_ms)}-{format_ms(high_ms)}"


def _marker(point: dict[str, Any], best: str, budget_ms: float) -> str:
    # A measurement outranks the prediction: a point measured over the budget says so even
    # when its prediction was feasible.
    measured = point.get("measured_ms")
    if point["short"] == best:
        return "best"
    if measured is not None and measured > budget_ms:
        return "measured over budget"
    return "" if point["feasible"] else "over budget"


def best_summary(result: SearchResult, request: SearchRequest) -> str:
    """The chosen subnet in one line: what it scored, what it measured, what was predicted
    with its interval, and how that compares with the budget as it was stated. "under" is
    only said of a measurement within the budget (for a percentile budget, that percentile of
    the measured calls)."""
    best, measured = result.best, result.best_measured_ms
    reported = result.report.get("best", {})
    test_accuracy = reported.get("test_accuracy")
    accuracy = f"{best.accuracy:.3f} acc" + (
        "" if test_accuracy is None else f" ({test_accuracy:.3f} test)"
    )
    guarantee = request.guarantee
    # What the decision compared with the budget: the median of the readings, or the
    # percentile of their calls.
    statistic = float(reported.get("statistic_ms", measured))
    details = []
    if guarantee.percentile is not None:
        details.append(f"p{guarantee.percentile} of calls {format_ms(statistic)}")
    details.append(f"predicted {format_ms(best.latency_ms)}")
    if best.low_ms is None or best.high_ms is None:
        details.append("no interval: the table was never validated")
    else:
        confidence = f"{100 * DEFAULT_CONFIDENCE:g}%"
        details.append(f"{confidence} interval {_interval(best.low_ms, best.high_ms)}")
    budget = f"{format_ms(request.budget_ms)}{guarantee.describe()}"
    verdict = "under" if statistic <= request.budget_ms else "OVER"
    return (
        f"best: [bold]{best.short}[/bold] {accuracy}, measured {format_ms(measured)} "
        f"({', '.join(details)}) {verdict} {budget}"
    )

"""The ``nasvit`` command line.

Errors the user can fix (:class:`~nasvit.errors.NasvitError`) print one line and exit with
code 2; usage errors are typer's own (also code 2).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from nasvit.defaults import DEFAULT_EVALUATIONS, DEFAULT_VALIDATE_NETWORKS
from nasvit.errors import NasvitError

app = typer.Typer(
    name="nasvit",
    help="Latency-aware neural architecture search.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console()
err_console = Console(stderr=True)


def _count_parameters(module: Any) -> int:
    return sum(p.numel() for p in module.parameters())


@app.command("spaces")
def spaces_command(
    name: Annotated[str | None, typer.Argument(help="Show one space in detail.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """List search spaces, or show one space's dimensions and reference architectures."""
    from nasvit.search_spaces import get_space, space_names

    if name is None:
        summaries = [get_space(n).describe() for n in space_names()]
        if as_json:
            print(json.dumps(summaries, indent=2))
            return
        table = Table("space", "dimensions", "description")
        table.add_column("architectures", no_wrap=True, justify="right")
        for s in summaries:
            dims = ", ".join(d["name"] for d in s["dimensions"])
            table.add_row(s["name"], dims, s["description"], f"{s['size']:.3g}")
        console.print(table)
        return

    space = get_space(name)
    summary = space.describe()
    references = []
    for ref_name, arch in space.reference_archs().items():
        subnet = space.build_subnet(arch)
        references.append(
            {
                "name": ref_name,
                "parameters": _count_parameters(subnet),
                "short": space.short_string(arch),
                "arch": arch.to_dict(),
            }
        )
    summary["reference_archs"] = references
    if as_json:
        print(json.dumps(summary, indent=2))
        return
    console.print(f"[bold]{space.name}[/bold]: {space.description}")
    console.print(f"{summary['size']:,} architectures")
    table = Table("dimension", "kind", "allowed values", "meaning")
    for d in summary["dimensions"]:
        table.add_row(d["name"], d["kind"], d["allowed"], d["doc"])
    console.print(table)
    for constraint in summary["constraints"]:
        console.print(f"constraint: {constraint}")
    refs = Table("reference", "parameters (1000 classes)", "architecture")
    for ref in references:
        refs.add_row(ref["name"], f"{ref['parameters'] / 1e6:.2f}M", ref["short"])
    console.print(refs)


@app.command("export")
def export_command(
    space_name: Annotated[str, typer.Option("--space", help="Search space name.")],
    arch_text: Annotated[
        str, typer.Option("--arch", help="Architecture: canonical JSON or short string.")
    ],
    out: Annotated[Path, typer.Option("--out", help="Where to write the ONNX file.")],
    ckpt: Annotated[
        Path | None, typer.Option("--ckpt", help="Supernet checkpoint (random init without).")
    ] = None,
    num_classes: Annotated[
        int, typer.Option("--num-classes", min=1, help="Classes when no checkpoint is given.")
    ] = 1000,
    verify: Annotated[
        bool, typer.Option(help="Check onnxruntime reproduces the torch output.")
    ] = True,
) -> None:
    """Extract a subnet and export it to ONNX at its input resolution."""
    import torch

    from nasvit.checkpoint import load_supernet
    from nasvit.onnx_export import export_onnx, run_onnx
    from nasvit.search_spaces import get_space

    if ckpt is not None:
        space, supernet, _ = load_supernet(ckpt)
        if space.name != space_name:
            raise NasvitError(f"checkpoint {ckpt} is for space '{space.name}', not '{space_name}'")
        arch = space.parse(arch_text)
        subnet = supernet.extract(arch).eval()
        in_channels = supernet.in_channels
    else:
        space = get_space(space_name)
        arch = space.parse(arch_text)
        subnet = space.build_subnet(arch, num_classes=num_classes)
        in_channels = 3
    shape = space.input_shape(arch, batch=1, in_channels=in_channels)
    path = export_onnx(subnet, shape, out)
    message = f"wrote {path} ({_count_parameters(subnet):,} parameters, input {list(shape)})"
    if verify:
        example = torch.randn(shape)
        with torch.no_grad():
            expected = subnet(example).numpy()
        difference = float(abs(run_onnx(path, example.numpy()) - expected).max())
        message += f"; onnxruntime max abs diff {difference:.2e}"
    console.print(message)


@app.command("search")
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

    from nasvit.budget import format_ms, parse_budget
    from nasvit.controllers import CONTROLLERS
    from nasvit.errors import UnknownNameError
    from nasvit.pipeline import SearchRequest, run_search
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


def _register_subcommands() -> None:
    # Imported here, not at the top, so `nasvit --help` and `nasvit spaces` stay fast.
    from nasvit.cli_latency import latency_app, profile_command
    from nasvit.cli_server import serve_command, token_app, worker_command
    from nasvit.cli_train import eval_command, predictor_command, train_command

    app.command("profile")(profile_command)
    app.add_typer(latency_app, name="latency")
    app.command("train")(train_command)
    app.command("eval")(eval_command)
    app.command("predictor")(predictor_command)
    app.command("serve")(serve_command)
    app.command("worker")(worker_command)
    app.add_typer(token_app, name="token")


_register_subcommands()


def main(argv: list[str] | None = None) -> None:
    """Entry point of the ``nasvit`` console script."""
    try:
        app(args=argv, prog_name="nasvit")
    except NasvitError as exc:
        err_console.print(f"error: {exc}", markup=False, highlight=False, soft_wrap=True)
        sys.exit(2)


if __name__ == "__main__":
    main()

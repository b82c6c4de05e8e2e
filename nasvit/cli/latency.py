"""CLI for the latency database: ``nasvit profile`` and ``nasvit latency validate|show|export|
import``.

``nasvit/cli/__init__.py`` mounts :data:`latency_app` as ``nasvit latency`` and registers
:func:`profile_command` as ``nasvit profile``. Bad input raises :class:`NasvitError` (one-line
message); the main CLI turns it into exit code 2.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from nasvit.errors import NasvitError
from nasvit.guarantees import DEFAULT_CONFIDENCE
from nasvit.settings import load_settings

if TYPE_CHECKING:
    from nasvit.latency_db import LatencyStore, ProgressCallback, ValidationRecord

# The latency database (torch, scipy, SQLAlchemy; pandas for export/import) is imported by the
# commands that use it: this module is imported by every `nasvit` command at start-up.

latency_app = typer.Typer(
    name="latency", help="Latency tables: validate, show, export, import.", no_args_is_help=True
)
console = Console(stderr=True)

DeviceOption = Annotated[
    str | None, typer.Option("--device", help="device name or id (default: this machine)")
]
UrlOption = Annotated[
    str | None,
    typer.Option("--database-url", help="SQLAlchemy URL (default: $NASVIT_DATABASE_URL or SQLite)"),
]


def open_store(database_url: str | None) -> LatencyStore:
    """The latency store at ``--database-url``, else the settings' database (``NASVIT_*``)."""
    from nasvit.latency_db import LatencyStore

    return LatencyStore.open(database_url or load_settings().resolved_database_url)


def parse_resolutions(text: str | None) -> list[int] | None:
    """``"32,64"`` -> ``[32, 64]``; None stays None (all resolutions of the space)."""
    if text is None or not text.strip():
        return None
    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise NasvitError(f"--resolutions must be comma-separated integers, got '{text}'") from None


class _Bar:
    """A rich progress bar with ETA, driven by (done, total) callbacks."""

    def __init__(self, description: str):
        self.progress = Progress(
            TextColumn(description),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TextColumn("eta"),
            TimeRemainingColumn(),
            console=console,
            transient=False,
        )
        self.task = self.progress.add_task(description, total=None)

    def __enter__(self) -> ProgressCallback:
        self.progress.start()

        def update(done: int, total: int) -> None:
            self.progress.update(self.task, completed=done, total=total)

        return update

    def describe(self, text: str) -> None:
        """Change the bar's label (e.g. to say it waits for a remote device)."""
        self.progress.update(self.task, description=text)

    def __exit__(self, *exc: object) -> None:
        self.progress.stop()


def profile_command(
    space: Annotated[str, typer.Option("--space", help="search space name")],
    device: DeviceOption = None,
    resolutions: Annotated[
        str | None, typer.Option("--resolutions", help="e.g. 32,64 (default: all of the space)")
    ] = None,
    threads: Annotated[int, typer.Option("--threads", help="intra-op threads")] = 1,
    runtime: Annotated[
        str, typer.Option("--runtime", help="onnxruntime | torch | cuda | onnxruntime-cuda")
    ] = "onnxruntime",
    optimization: Annotated[
        str, typer.Option("--optimization", help="graph optimisation level (onnxruntime)")
    ] = "all",
    database_url: UrlOption = None,
) -> None:
    """Measure every block of a space that the device's latency table lacks (resumable)."""
    from nasvit.api import profile
    from nasvit.settings import Settings

    chosen = parse_resolutions(resolutions)
    settings = None if database_url is None else Settings(database_url=database_url)
    bar = _Bar(f"profiling {space}")

    def show(stage: str, done: int, total: int) -> None:
        # A remote device's stage says what is waited for ("waiting for device pi: blocks").
        bar.describe(stage)
        update(done, total)

    with bar as update:
        report = profile(
            space,
            device=device,
            settings=settings,
            progress=show,
            threads=threads,
            resolutions=chosen,
            runtime=runtime,
            optimization=optimization,
        )
    console.print(
        f"{report.device}: {report.measured} block(s) measured, {report.already_present} already "
        f"present ({report.refreshed} of them re-measured: cold timing of an older protocol), "
        f"{report.requested} in the space; {report.remeasured_batches} batch re-measure(s) for "
        f"drift; {report.elapsed_s:.1f} s"
    )


@latency_app.command("validate")
def validate_command(
    space: Annotated[str, typer.Option("--space", help="search space name")],
    n: Annotated[
        int,
        typer.Option(
            "--n",
            min=1,
            help="networks to measure: the space's smallest and largest, its reference "
            "architectures, and the rest stratified over latency bands",
        ),
    ] = 40,
    device: DeviceOption = None,
    seed: Annotated[int, typer.Option("--seed")] = 0,
    resolutions: Annotated[
        str | None, typer.Option("--resolutions", help="restrict the networks, e.g. 32")
    ] = None,
    readings: Annotated[
        int,
        typer.Option(
            "--readings",
            min=1,
            help="fresh-session readings per network, interleaved over the run; their median "
            "is the network's measured latency",
        ),
    ] = 3,
    as_json: Annotated[bool, typer.Option("--json", help="print JSON")] = False,
    database_url: UrlOption = None,
) -> None:
    """Measure whole networks, fit the table's error model on some of them and judge it on the
    others: predictions then carry intervals and the judged error of their latency band."""
    from nasvit.evaluation.latency import resolve_measurer, validate_table
    from nasvit.search_spaces import get_space

    search_space = get_space(space)
    store = open_store(database_url)
    record, profiler = resolve_measurer(store, device, space=search_space.identity)
    with _Bar(f"validating on {record.name}") as progress:
        result = validate_table(
            search_space,
            store,
            profiler,
            store.device(record.id),
            n,
            seed=seed,
            resolutions=parse_resolutions(resolutions),
            readings=readings,
            progress=progress,
        )
    if as_json:
        # The run in full: every network's readings and the error model, beside the summary.
        summary = {"device": record.name, **result.to_dict(), "details": result.details}
        typer.echo(json.dumps(summary, indent=2))
        return
    networks = result.details["networks"]
    judged = [network for network in networks if network["role"] == "judged"]
    origins = Counter(_origin_kind(network["origin"]) for network in judged)
    typer.echo(
        f"{record.name}, {result.space}: {len(networks)} networks, "
        f"{result.details['readings']} fresh-session reading(s) each, interleaved; "
        f"fitted on {result.n_fit}, judged on {len(judged)} "
        f"({', '.join(f'{count} {kind}' for kind, count in origins.items())})"
    )
    Console().print(_band_table(result, "judged networks per latency band"))
    typer.echo(_judged_line(result))
    ceiling = result.noise_ceiling
    if ceiling is not None:
        typer.echo(
            f"noise ceiling of that truth (median of {result.details['readings']} readings): "
            f"a perfect predictor would score {100 * ceiling.within_10:.1f}% within ±10%, "
            f"{100 * ceiling.within_5:.1f}% within ±5% (MAPE {ceiling.mape:.2f}%) on this "
            "machine now"
        )


def _origin_kind(origin: str) -> str:
    """``"reference:efficientformer_l1"`` -> ``"reference"``; other origins unchanged."""
    return origin.split(":", 1)[0]


def _band_table(validation: ValidationRecord, title: str) -> Table:
    """The error model's judged figures per band: what a prediction in that band carries."""
    model = validation.error_model
    confidence = DEFAULT_CONFIDENCE if model is None else model.confidence
    table = Table(
        "band", "sum model", "model used", "judged", "MAPE", "±10%", "median bias",
        f"{100 * confidence:g}% interval width", title=title, title_justify="left",
    )  # fmt: skip
    for band in [] if model is None else model.describe_bands():
        pooled = " (pooled)" if band["pooled_interval"] else ""
        table.add_row(
            str(band["band"] + 1),
            f"{_ms(band['low_ms'])}-{_ms(band['high_ms'])}",
            band["model"],
            str(band["n_judged"]),
            "-" if band["mape"] is None else f"{band['mape']:.1f}%",
            _percent(band["within_10"], 0),
            "-" if band["median_bias"] is None else f"{100 * band['median_bias']:+.1f}%",
            f"{100 * band['interval_width']:.1f}%{pooled}",
        )
    return table


def _ms(value: float) -> str:
    return f"{1000 * value:.0f} µs" if value < 1 else f"{value:.3g} ms"


def _percent(share: float | None, digits: int) -> str:
    return "-" if share is None else f"{100 * share:.{digits}f}%"


def _judged_line(validation: ValidationRecord) -> str:
    """The judged networks' error overall, with the sum model's (and the residency model's)
    beside it."""
    model = validation.error_model
    judged = validation.prediction_error
    text = (
        f"judged overall ({judged.n} networks): MAPE {judged.mape:.2f}%, "
        f"{100 * judged.within_10:.1f}% within ±10%, {100 * judged.within_5:.1f}% within ±5%"
    )
    if model is not None:
        rivals = [f"sum model alone MAPE {model.sum_judged.mape:.2f}%"]
        if model.residency_judged is not None:
            rivals.append(f"residency model {model.residency_judged.mape:.2f}%")
        text += f" ({', '.join(rivals)})"
    return text


@latency_app.command("show")
def show_command(
    as_json: Annotated[bool, typer.Option("--json", help="print JSON")] = False,
    database_url: UrlOption = None,
) -> None:
    """List devices, their entry counts, per-call overhead and latest validation, with the
    judged error and interval width per latency band."""

    store = open_store(database_url)
    rows: list[dict[str, Any]] = []
    validations: dict[str, ValidationRecord] = {}
    for device in store.devices():
        validation = store.latest_validation(device.id)
        if validation is not None and validation.error_model is not None:
            validations[device.id] = validation
        rows.append(
            {
                "name": device.name,
                "id": device.id,
                "fingerprint": device.fingerprint.to_dict(),
                "entries": store.entry_count(device.id),
                "overhead_ms": device.overhead_ms,
                "validated": device.id in validations,
                "latest_validation": validation.to_dict() if validation else None,
            }
        )
    if as_json:
        typer.echo(json.dumps({"devices": rows}, indent=2))
        return
    console_out = Console()
    table = Table("device", "id", "runtime", "entries", "overhead", "latest validation")
    for row in rows:
        fp = row["fingerprint"]
        overhead = "-" if row["overhead_ms"] is None else f"{1000 * row['overhead_ms']:.1f} µs"
        runtime = f"{fp['runtime']} {fp['runtime_version']} {fp['threads']}t {fp['optimization']}"
        table.add_row(
            row["name"], row["id"], runtime, str(row["entries"]), overhead,
            _validation_cell(validations.get(row["id"])),
        )  # fmt: skip
    console_out.print(table)
    names = {row["id"]: row["name"] for row in rows}
    for device_id, validation in validations.items():
        console_out.print(
            _band_table(
                validation, f"{names[device_id]}, {validation.space}: judged error per band"
            )
        )


def _validation_cell(validation: ValidationRecord | None) -> str:
    """A device's latest validation in one cell; "never validated" without an error model
    (never run, or run before predictions had intervals): no figure to show then."""
    if validation is None:
        return "never validated"
    judged = validation.prediction_error
    return (
        f"{validation.space}: judged MAPE {judged.mape:.1f}%, {100 * judged.within_10:.0f}% "
        f"±10% ({judged.n} networks)"
    )


@latency_app.command("export")
def export_command(
    device: Annotated[str, typer.Option("--device", help="device name or id")],
    out: Annotated[Path, typer.Option("--out", help="table.csv or table.json")],
    database_url: UrlOption = None,
) -> None:
    """Write a device's table to CSV or JSON."""
    from nasvit.latency_db.transfer import export_table

    store = open_store(database_url)
    count = export_table(store, device, out)
    console.print(f"wrote {count} entries to {out}")


@latency_app.command("import")
def import_command(
    file: Annotated[Path, typer.Argument(help="a table written by `nasvit latency export`")],
    device_name: Annotated[
        str | None, typer.Option("--device-name", help="store under this device name")
    ] = None,
    database_url: UrlOption = None,
) -> None:
    """Import a table measured elsewhere (validated first; all or nothing)."""
    from nasvit.latency_db.transfer import import_table

    store = open_store(database_url)
    result = import_table(store, file, device_name)
    console.print(
        f"{result.device}: {result.inserted} entries imported, {result.skipped} already present"
    )

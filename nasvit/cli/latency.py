"""CLI for the latency database: ``nasvit profile`` and ``nasvit latency validate|show|export|
import``.

``nasvit/cli/__init__.py`` mounts :data:`latency_app` as ``nasvit latency`` and registers
:func:`profile_command` as ``nasvit profile``. Bad input raises :class:`NasvitError` (one-line
message); the main CLI turns it into exit code 2.
"""

from __future__ import annotations

import json
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
from nasvit.settings import load_settings

if TYPE_CHECKING:
    from nasvit.latency_db import LatencyStore, ProgressCallback

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
    with _Bar(f"profiling {space}") as update:
        report = profile(
            space,
            device=device,
            settings=settings,
            progress=lambda stage, done, total: update(done, total),
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
    n: Annotated[int, typer.Option("--n", min=1, help="networks to sample and measure")] = 20,
    device: DeviceOption = None,
    seed: Annotated[int, typer.Option("--seed")] = 0,
    resolutions: Annotated[
        str | None, typer.Option("--resolutions", help="restrict sampled networks, e.g. 32")
    ] = None,
    repeat: Annotated[
        int,
        typer.Option(
            "--repeat",
            min=0,
            help="measure this many of the networks twice, interleaved, and report the noise "
            "ceiling: what a perfect predictor would score against one measurement here",
        ),
    ] = 0,
    as_json: Annotated[bool, typer.Option("--json", help="print JSON")] = False,
    database_url: UrlOption = None,
) -> None:
    """Measure sampled whole networks and compare them with the table's predictions."""
    from nasvit.evaluation.latency import resolve_device, validate_table
    from nasvit.search_spaces import get_space

    search_space = get_space(space)
    store = open_store(database_url)
    record, profiler = resolve_device(store, device)
    with _Bar(f"validating on {record.name}") as progress:
        result = validate_table(
            search_space,
            store,
            profiler,
            store.device(record.id),
            n,
            seed=seed,
            resolutions=parse_resolutions(resolutions),
            progress=progress,
            repeat=repeat,
        )
    summary = {"device": record.name, **result.to_dict()}
    if as_json:
        typer.echo(json.dumps(summary, indent=2))
        return
    raw = result.raw
    typer.echo(
        f"{record.name}: {raw.n} networks, MAPE {raw.mape:.2f}%, "
        f"{100 * raw.within_5:.1f}% within ±5%, {100 * raw.within_10:.1f}% within ±10%, "
        f"Spearman {raw.spearman if raw.spearman is None else round(raw.spearman, 3)}"
    )
    if result.calibrated_test is not None and result.raw_test is not None:
        cal, held = result.calibrated_test, result.raw_test
        typer.echo(
            f"held-out {cal.n}: raw MAPE {held.mape:.2f}% -> calibrated {cal.mape:.2f}%, "
            f"{100 * cal.within_10:.1f}% within ±10% (slope {result.slope:.3f}, "
            f"intercept {result.intercept:.3f} ms)"
        )
    if result.cache_test is not None and result.cache_model is not None:
        cache = result.cache_test
        typer.echo(
            f"held-out {cache.n}: cache-aware MAPE {cache.mape:.2f}%, "
            f"{100 * cache.within_5:.1f}% within ±5%, {100 * cache.within_10:.1f}% within ±10%"
            f" ({'used' if result.cache_model_helps else 'not used'} by predictions)"
        )
    used = result.prediction_error
    typer.echo(
        f"predictions on this table now use the {result.prediction_path}: expected MAPE "
        f"{used.mape:.2f}%, {100 * used.within_10:.1f}% within ±10%"
    )
    ceiling = result.noise_ceiling
    if ceiling is not None:
        typer.echo(
            f"noise ceiling ({ceiling.n} networks measured twice): a perfect predictor would "
            f"score {100 * ceiling.within_10:.1f}% within ±10%, {100 * ceiling.within_5:.1f}% "
            f"within ±5% (MAPE {ceiling.mape:.2f}%) against one measurement on this machine now"
        )


@latency_app.command("show")
def show_command(
    as_json: Annotated[bool, typer.Option("--json", help="print JSON")] = False,
    database_url: UrlOption = None,
) -> None:
    """List devices, their entry counts, per-call overhead and latest validation."""

    store = open_store(database_url)
    rows: list[dict[str, Any]] = []
    checks: dict[str, str] = {}
    for device in store.devices():
        validation = store.latest_validation(device.id)
        if validation is not None:
            # What predictions carry (the held-out error of their correction), not the raw sum.
            error = validation.prediction_error
            checks[device.id] = (
                f"{validation.space}: {validation.prediction_path}, MAPE {error.mape:.1f}%, "
                f"{100 * error.within_10:.0f}% ±10%"
            )
        rows.append(
            {
                "name": device.name,
                "id": device.id,
                "fingerprint": device.fingerprint.to_dict(),
                "entries": store.entry_count(device.id),
                "overhead_ms": device.overhead_ms,
                "latest_validation": validation.to_dict() if validation else None,
            }
        )
    if as_json:
        typer.echo(json.dumps({"devices": rows}, indent=2))
        return
    table = Table("device", "id", "runtime", "entries", "overhead", "latest validation")
    for row in rows:
        fp = row["fingerprint"]
        checked = checks.get(row["id"], "never")
        overhead = "-" if row["overhead_ms"] is None else f"{1000 * row['overhead_ms']:.1f} µs"
        runtime = f"{fp['runtime']} {fp['runtime_version']} {fp['threads']}t {fp['optimization']}"
        table.add_row(row["name"], row["id"], runtime, str(row["entries"]), overhead, checked)
    Console().print(table)


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

"""CLI for the job service: ``nasvit serve``, ``nasvit worker`` and ``nasvit token
create|list|revoke``.

Settings come from ``NASVIT_*`` environment variables (:class:`nasvit.settings.Settings`), read
once per command and passed on; an unusable value is a one-line error (exit code 2), like every
other bad input.
"""

from __future__ import annotations

import logging
import signal
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from nasvit.settings import load_settings

token_app = typer.Typer(
    name="token", help="API tokens for the job service's write endpoints.", no_args_is_help=True
)
console = Console()


def serve_command(
    host: Annotated[str, typer.Option("--host", help="Interface to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", min=1, max=65535, help="TCP port.")] = 8000,
    log_level: Annotated[str, typer.Option("--log-level", help="uvicorn log level.")] = "info",
    workers: Annotated[
        int, typer.Option("--workers", min=1, max=64, help="Server processes (one per core).")
    ] = 1,
) -> None:
    """Run the REST API and dashboard (uvicorn). Searches run in `nasvit worker` processes."""
    import uvicorn

    from nasvit.server.app import create_app

    settings = load_settings()  # bad settings fail here, once, as a one-line error
    if workers == 1:
        app = create_app(settings)
        uvicorn.run(app, host=host, port=port, log_level=log_level, access_log=False)
        return
    # Several processes: each builds its app from the same environment.
    uvicorn.run(
        "nasvit.server.app:app_from_environment",
        factory=True,
        workers=workers,
        host=host,
        port=port,
        log_level=log_level,
        access_log=False,
    )


def worker_command(
    once: Annotated[
        bool, typer.Option("--once", help="Run at most one job; exit when none is queued.")
    ] = False,
    poll: Annotated[
        float, typer.Option("--poll", min=0.05, max=3600, help="Seconds between queue checks.")
    ] = 2.0,
    name: Annotated[
        str | None, typer.Option("--name", help="Worker name shown on jobs (default host:pid).")
    ] = None,
    ray_address: Annotated[
        str | None,
        typer.Option(
            "--ray-address",
            envvar="NASVIT_RAY_ADDRESS",
            help="Evaluate candidates on this Ray cluster: its head's GCS address HOST:PORT "
            "(run the worker on a node of the cluster).",
        ),
    ] = None,
) -> None:
    """Claim queued searches from the database and run them, one at a time."""
    from nasvit.searching.request import check_ray_address
    from nasvit.server.worker import Worker

    check_ray_address(ray_address)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    worker = Worker(load_settings(), name=name, ray_address=ray_address)

    def stop(_signum: int, _frame: Any) -> None:
        # First signal: finish cleanly, a running job goes back to the queue at its next
        # progress point (seconds). A second Ctrl-C stops at once (the job is still released).
        if worker.shutdown.is_set():
            raise KeyboardInterrupt
        worker.stop()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    try:
        ran = worker.run(once=once, poll_seconds=poll)
    except KeyboardInterrupt:
        raise typer.Exit(130) from None
    finally:
        worker.close()
    console.print(f"worker {worker.name} ran {ran} job(s)")


@token_app.command("create")
def token_create(
    name: Annotated[str, typer.Argument(help="Who or what the token is for.")],
) -> None:
    """Issue a token and print it once (only its SHA-256 digest is stored)."""
    from nasvit.server.db import Database
    from nasvit.server.jobs import TokenStore

    database = Database.open(load_settings().resolved_database_url)
    try:
        token = TokenStore(database).create(name)
    finally:
        database.close()
    print(token)


@token_app.command("list")
def token_list() -> None:
    """Token names, when they were created and whether they are revoked."""
    from nasvit.server.db import Database
    from nasvit.server.jobs import TokenStore

    database = Database.open(load_settings().resolved_database_url)
    try:
        tokens = TokenStore(database).list()
    finally:
        database.close()
    table = Table("name", "created", "revoked")
    for token in tokens:
        revoked = "" if token.revoked_at is None else token.revoked_at.isoformat(timespec="seconds")
        table.add_row(token.name, token.created_at.isoformat(timespec="seconds"), revoked)
    console.print(table)


@token_app.command("revoke")
def token_revoke(name: Annotated[str, typer.Argument(help="Name of the token.")]) -> None:
    """Revoke a token: requests carrying it get 401 from now on."""
    from nasvit.server.db import Database
    from nasvit.server.jobs import TokenStore

    database = Database.open(load_settings().resolved_database_url)
    try:
        TokenStore(database).revoke(name)
    finally:
        database.close()
    console.print(f"revoked token '{name}'")

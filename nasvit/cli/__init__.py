"""The ``nasvit`` command line: one module per command group, mounted here.

Errors the user can fix (:class:`~nasvit.errors.NasvitError`) print one line and exit with
code 2; usage errors are typer's own (also code 2).
"""

from __future__ import annotations

import sys

import typer
from rich.console import Console

from nasvit.cli.messages import cli_message
from nasvit.errors import NasvitError

app = typer.Typer(
    name="nasvit",
    help="Latency-aware neural architecture search.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
err_console = Console(stderr=True)


def _register_subcommands() -> None:
    # Imported here, not at the top, so `nasvit --help` and `nasvit spaces` stay fast.
    from nasvit.cli.agent import AGENT_CONTEXT, agent_command
    from nasvit.cli.devices import device_app
    from nasvit.cli.latency import latency_app, profile_command
    from nasvit.cli.search import search_command
    from nasvit.cli.server import serve_command, token_app, worker_command
    from nasvit.cli.spaces import export_command, spaces_command
    from nasvit.cli.train import eval_command, predictor_command, train_command

    app.command("spaces")(spaces_command)
    app.command("export")(export_command)
    app.command("search")(search_command)
    app.command("profile")(profile_command)
    app.add_typer(latency_app, name="latency")
    app.command("train")(train_command)
    app.command("eval")(eval_command)
    app.command("predictor")(predictor_command)
    app.command("serve")(serve_command)
    app.command("worker")(worker_command)
    app.add_typer(token_app, name="token")
    app.add_typer(device_app, name="device")
    app.command("agent", context_settings=AGENT_CONTEXT)(agent_command)


_register_subcommands()


def main(argv: list[str] | None = None) -> None:
    """Entry point of the ``nasvit`` console script."""
    try:
        app(args=argv, prog_name="nasvit")
    except NasvitError as exc:
        message = cli_message(exc)
        err_console.print(f"error: {message}", markup=False, highlight=False, soft_wrap=True)
        sys.exit(2)


if __name__ == "__main__":
    main()

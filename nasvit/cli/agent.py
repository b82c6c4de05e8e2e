"""CLI: ``nasvit agent --server URL --token T ...``, the device agent.

The agent's own parser (:func:`nasvit.agent.__main__.main`, argparse) reads the arguments, so
``nasvit agent``, ``python -m nasvit.agent`` and the served zipapp take the same options and
print the same help; typer only hands them over.
"""

from __future__ import annotations

from typing import Any

import typer


def agent_command(ctx: typer.Context) -> None:
    """Run a device agent: time work items for a nasvit server (see `nasvit agent --help`)."""
    from nasvit.agent.__main__ import main

    code = main(list(ctx.args))
    if code:
        raise typer.Exit(code)


#: Mount with ``app.command("agent", context_settings=AGENT_CONTEXT)(agent_command)``: every
#: argument, --help included, goes to the agent's own parser.
AGENT_CONTEXT: dict[str, Any] = {
    "allow_extra_args": True,
    "ignore_unknown_options": True,
    "help_option_names": [],
}

"""CLI: ``nasvit device add NAME`` issues a device token for an agent (``nasvit agent``), and
``nasvit device list|revoke`` manage them.

A device token acts for one device name: its agent registers that device with its fingerprint
and does the device's work, nothing else (it is not an API token). Only its SHA-256 digest is
stored, so the token is printed once.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, TypeVar

import typer
from rich.console import Console
from rich.table import Table

from nasvit.settings import load_settings

device_app = typer.Typer(
    name="device", help="Device tokens for on-device agents (`nasvit agent`).", no_args_is_help=True
)
console = Console()
T = TypeVar("T")


def _with_tokens(action: Callable[..., T]) -> T:
    """Run ``action(store)`` on the device tokens of the configured database."""
    from nasvit.server.db import Database
    from nasvit.server.jobs import DeviceTokenStore

    database = Database.open(load_settings().resolved_database_url)
    try:
        return action(DeviceTokenStore(database))
    finally:
        database.close()


@device_app.command("add")
def device_add(
    name: Annotated[str, typer.Argument(help="The device's name (its agent registers it).")],
    label: Annotated[
        str | None,
        typer.Option("--label", help="The token's label (default: the name, numbered if taken)."),
    ] = None,
) -> None:
    """Issue a device token for the device NAME and print it once."""
    _label, token = _with_tokens(lambda store: store.create(name, label))
    print(token)


@device_app.command("list")
def device_list(
    name: Annotated[str | None, typer.Argument(help="Only this device's tokens.")] = None,
) -> None:
    """Device tokens: label, device, when created and whether revoked."""
    tokens = _with_tokens(lambda store: store.list(name))
    table = Table("label", "device", "created", "revoked")
    for token in tokens:
        revoked = "" if token.revoked_at is None else token.revoked_at.isoformat(timespec="seconds")
        table.add_row(
            token.name, token.device, token.created_at.isoformat(timespec="seconds"), revoked
        )
    console.print(table)


@device_app.command("revoke")
def device_revoke(label: Annotated[str, typer.Argument(help="The token's label.")]) -> None:
    """Revoke a device token: its agent gets 401 from now on."""
    _with_tokens(lambda store: store.revoke(label))
    console.print(f"revoked device token '{label}'")

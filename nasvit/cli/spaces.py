"""``nasvit spaces`` (what each search space holds) and ``nasvit export`` (a subnet to ONNX)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from nasvit.errors import NasvitError

console = Console()


def _count_parameters(module: Any) -> int:
    return sum(p.numel() for p in module.parameters())


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
    references: list[dict[str, Any]] = []
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

    from nasvit.onnx_export import export_onnx, run_onnx
    from nasvit.search_spaces import get_space
    from nasvit.training.checkpoint import load_supernet

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

"""The console script, run as a user runs it: exit codes, one-line errors, real ONNX files."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from nasvit.onnx_export import run_onnx
from nasvit.search_spaces import get_space
from nasvit.training.checkpoint import save_supernet

NASVIT = shutil.which("nasvit", path=str(Path(sys.executable).parent))
SMALL_ARCH = "r64_w16-32-64-128_d1-1-1-2_v1_m3-4-3-4-4"


def run(*args: str) -> subprocess.CompletedProcess[str]:
    assert NASVIT, "the nasvit console script is not installed next to this python"
    return subprocess.run([NASVIT, *args], capture_output=True, text=True, timeout=300)


def test_spaces_lists_every_space_as_json() -> None:
    result = run("spaces", "--json")
    assert result.returncode == 0, result.stderr
    listed = {s["name"]: s for s in json.loads(result.stdout)}
    assert listed["efficientformer"]["size"] == get_space("efficientformer").size()


def test_one_space_shows_dimensions_and_reference_parameters() -> None:
    result = run("spaces", "efficientformer", "--json")
    assert result.returncode == 0, result.stderr
    detail = json.loads(result.stdout)
    assert [d["name"] for d in detail["dimensions"]] == [
        "resolution",
        "widths",
        "depths",
        "vit_num",
        "mlp_ratio",
    ]
    parameters = {r["name"]: r["parameters"] for r in detail["reference_archs"]}
    assert round(parameters["efficientformer_l1"] / 1e6, 1) == 12.3
    table = run("spaces", "efficientformer")
    assert table.returncode == 0 and "efficientformer_l7" in table.stdout


def test_export_random_init_writes_a_model_onnxruntime_runs(tmp_path: Path) -> None:
    out = tmp_path / "nested" / "model.onnx"
    result = run("export", "--space", "efficientformer", "--arch", SMALL_ARCH, "--out", str(out))
    assert result.returncode == 0, result.stderr
    assert "max abs diff" in result.stdout
    output = run_onnx(out, np.random.rand(1, 3, 64, 64).astype(np.float32))
    assert output.shape == (1, 1000)


def test_export_from_a_checkpoint_keeps_the_trained_weights(tmp_path: Path) -> None:
    space = get_space("efficientformer")
    torch.manual_seed(0)
    supernet = space.build_supernet(num_classes=10, in_channels=1).eval()
    ckpt = save_supernet(tmp_path / "supernet.pt", space, supernet)
    arch = space.parse(SMALL_ARCH)
    arch_json = space.to_json(arch)
    out = tmp_path / "subnet.onnx"
    result = run(
        "export",
        "--space",
        "efficientformer",
        "--arch",
        arch_json,
        "--ckpt",
        str(ckpt),
        "--out",
        str(out),
    )
    assert result.returncode == 0, result.stderr
    x = torch.randn(1, 1, 64, 64)
    with torch.no_grad():
        expected = supernet(x, arch).numpy()
    assert np.abs(run_onnx(out, x.numpy()) - expected).max() <= 1e-4


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["spaces", "efficientformr"], "did you mean 'efficientformer'"),
        (["export", "--space", "nope", "--arch", SMALL_ARCH, "--out", "x.onnx"], "unknown search"),
        (["export", "--space", "efficientformer", "--arch", "{bad", "--out", "x.onnx"], "JSON"),
        (
            ["export", "--space", "efficientformer", "--arch", "r64_w1", "--out", "x.onnx"],
            "widths needs 4 values",
        ),
        (
            [
                "export",
                "--space",
                "efficientformer",
                "--arch",
                SMALL_ARCH.replace("v1", "v3"),
                "--out",
                "x.onnx",
            ],
            "constraint 'vit_num <= depths[3]' violated",
        ),
        (
            [
                "export",
                "--space",
                "efficientformer",
                "--arch",
                SMALL_ARCH,
                "--ckpt",
                "missing.pt",
                "--out",
                "x.onnx",
            ],
            "checkpoint not found",
        ),
        (["export", "--space", "efficientformer"], "Missing option"),
    ],
)
def test_bad_input_exits_2_with_a_one_line_reason(
    args: list[str], message: str, tmp_path: Path
) -> None:
    result = subprocess.run(
        [NASVIT, *args], capture_output=True, text=True, timeout=300, cwd=tmp_path
    )
    assert result.returncode == 2
    assert message in result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    assert not list(tmp_path.iterdir())  # nothing written


def test_corrupt_checkpoint_is_reported(tmp_path: Path) -> None:
    ckpt = tmp_path / "broken.pt"
    ckpt.write_bytes(b"not a checkpoint")
    result = run(
        "export",
        "--space",
        "efficientformer",
        "--arch",
        SMALL_ARCH,
        "--ckpt",
        str(ckpt),
        "--out",
        str(tmp_path / "x.onnx"),
    )
    assert result.returncode == 2 and "cannot read checkpoint" in result.stderr
    assert result.stderr.count("\n") == 1


def test_checkpoint_round_trip_keeps_the_restricted_space(tmp_path: Path) -> None:
    from nasvit.training.checkpoint import load_supernet

    space = get_space("efficientformer").restrict(resolution=[32, 64])
    supernet = space.build_supernet(num_classes=10, in_channels=1)
    path = save_supernet(tmp_path / "s.pt", space, supernet, extra={"epochs": 3})
    loaded_space, loaded, extra = load_supernet(path)
    assert loaded_space.restrictions == {"resolution": [32, 64]}
    assert extra == {"epochs": 3} and loaded.num_classes == 10 and loaded.in_channels == 1
    assert not (tmp_path / "s.pt.tmp").exists()
    for key, value in supernet.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value)

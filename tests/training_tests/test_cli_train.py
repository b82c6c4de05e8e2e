"""``train`` / ``eval`` / ``predictor`` command functions, run through typer like the CLI does
(the lead's nasvit.cli registers them; errors mirror its main(): NasvitError -> exit 2)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from nasvit.cli.train import eval_command, predictor_command, train_command
from nasvit.errors import NasvitError
from nasvit.training.checkpoint import load_supernet

from nasvit_testing.availability import unavailable
from nasvit_testing.tiny_space import TINY

app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
app.command("train")(train_command)
app.command("eval")(eval_command)
app.command("predictor")(predictor_command)


def run(*args: str) -> tuple[int, str]:
    """(exit code, output) the way nasvit.cli.main reports them."""
    result = CliRunner().invoke(app, list(args))
    if isinstance(result.exception, NasvitError):
        return 2, f"error: {result.exception}"
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result.exit_code, result.output


def test_train_then_eval(tmp_path: Path) -> None:
    out = tmp_path / "net.pt"
    code, text = run(
        "train",
        "--space",
        TINY,
        "--restrict",
        '{"resolution": [32]}',
        "--epochs",
        "1",
        "--out",
        str(out),
        "--no-progress",
    )
    assert code == 0, text
    assert "wrote" in text and "val_largest" in text and out.is_file()
    space, _, extra = load_supernet(out)
    assert space.restrictions == {"resolution": [32]} and extra["epoch"] == 1
    code, text = run(
        "train",
        "--space",
        TINY,
        "--restrict",
        '{"resolution": [32]}',
        "--epochs",
        "1",
        "--out",
        str(out),
        "--resume",
        "--no-progress",
    )
    assert code == 0, text  # resuming a finished run is a no-op

    largest = space.short_string(space.largest())
    code, text = run("eval", "--ckpt", str(out), "--arch", largest, "--random", "2", "--json")
    assert code == 0, text
    results = json.loads(text)
    assert len(results) == 3 and results[0]["short"] == largest
    assert all(0.0 <= r["accuracy"] <= 1.0 and r["split"] == "val" for r in results)
    code, text = run("eval", "--ckpt", str(out), "--arch", largest, "--split", "test")
    assert code == 0 and "test accuracy" in text


def test_predictor_command_saves_beside_the_checkpoint(trained_checkpoint: Path) -> None:
    code, text = run(
        "predictor",
        "--ckpt",
        str(trained_checkpoint),
        "--samples",
        "30",
        "--test-size",
        "8",
        "--kind",
        "gbt",
        "--json",
    )
    assert code == 0, text
    (report,) = json.loads(text)
    assert report["kind"] == "gbt" and report["test_size"] == 8 and report["train_size"] == 22
    assert Path(report["path"]).parent == trained_checkpoint.parent
    assert trained_checkpoint.with_name(f"{trained_checkpoint.stem}.pairs.jsonl").is_file()
    code, text = run(
        "predictor",
        "--ckpt",
        str(trained_checkpoint),
        "--samples",
        "30",
        "--test-size",
        "8",
        "--kind",
        "gbt",
        "--target",
        "neg_loss",
        "--json",
    )
    assert code == 0, text  # reuses the measured pairs
    (report,) = json.loads(text)
    assert report["target"] == "neg_loss" and report["path"].endswith("-gbt-neg_loss.joblib")
    code, text = run("predictor", "--ckpt", str(trained_checkpoint), "--target", "top5")
    assert code == 2 and "unknown --target 'top5'" in text


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("train", "--space", TINY, "--out", "x.pt", "--sampling", "bogus"), "unknown --sampling"),
        (("train", "--space", TINY, "--out", "x.pt", "--restrict", "{bad"), "not valid JSON"),
        (
            ("train", "--space", TINY, "--out", "x.pt", "--restrict", '{"resolution": [31]}'),
            "--restrict: ",
        ),
        (("train", "--space", "nope", "--out", "x.pt"), "unknown search space 'nope'"),
        (
            ("train", "--space", TINY, "--out", "x.pt", "--data", "missing-dir"),
            "dataset not found: missing-dir",
        ),
        (("train", "--space", TINY, "--out", "x.pt", "--resume"), "cannot resume: no checkpoint"),
        (("eval", "--ckpt", "missing.pt", "--arch", "x"), "checkpoint not found: missing.pt"),
        (("predictor", "--ckpt", "missing.pt", "--kind", "svm"), "unknown --kind 'svm'"),
    ],
)
def test_bad_input_is_one_line_exit_2(
    args: tuple[str, ...], message: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    code, text = run(*args)
    assert code == 2 and message in text, text


def test_eval_rejects_bad_architectures(trained_checkpoint: Path) -> None:
    code, text = run("eval", "--ckpt", str(trained_checkpoint), "--arch", "r99")
    assert code == 2 and "--arch:" in text
    code, text = run("eval", "--ckpt", str(trained_checkpoint))
    assert code == 2 and "give --arch" in text
    code, text = run("eval", "--ckpt", str(trained_checkpoint), "--random", "1", "--split", "x")
    assert code == 2 and "unknown --split" in text


def test_eval_defaults_to_the_data_the_checkpoint_was_trained_on(tmp_path: Path) -> None:
    import numpy as np

    x = np.random.default_rng(0).integers(0, 256, (80, 8, 8, 3), dtype=np.uint8)
    np.savez(tmp_path / "rgb.npz", x=x, y=np.arange(80) % 4)
    out = tmp_path / "rgb.pt"
    code, text = run(
        "train",
        "--space",
        TINY,
        "--restrict",
        '{"resolution": [32]}',
        "--epochs",
        "1",
        "--data",
        str(tmp_path / "rgb.npz"),
        "--out",
        str(out),
        "--no-progress",
    )
    assert code == 0, text
    code, text = run("eval", "--ckpt", str(out), "--random", "1", "--json")
    assert code == 0, text
    assert json.loads(text)[0]["samples"] == 8  # the .npz's val split, not digits
    code, text = run("eval", "--ckpt", str(out), "--random", "1", "--data", "digits")
    assert code == 2 and "4 classes but dataset digits has 10" in text


def test_the_installed_nasvit_script_runs_the_commands(tmp_path: Path) -> None:
    import subprocess
    import sys

    script = Path(sys.executable).parent / "nasvit"
    if not script.is_file():
        unavailable("the nasvit console script is not installed next to this interpreter")
    done = subprocess.run(
        [str(script), "eval", "--ckpt", str(tmp_path / "missing.pt"), "--random", "1"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2
    assert done.stderr.strip() == f"error: checkpoint not found: {tmp_path / 'missing.pt'}"
    assert "Traceback" not in done.stderr
    helped = subprocess.run(
        [str(script), "train", "--help"], capture_output=True, text=True, timeout=120
    )
    assert helped.returncode == 0 and "--sampling" in helped.stdout

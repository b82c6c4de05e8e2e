"""LightHuBERT's two-stage recipe on a tiny LightHuBERT space: hidden-state capture, stage 1
(teacher -> largest subnet, L1 on hidden features), stage 2 (once-for-all from stage 1's
weights), and the CLI around them."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
import typer
from typer.testing import CliRunner

from nasvit.cli.train import train_command
from nasvit.data import Dataset
from nasvit.errors import NasvitError
from nasvit.nn.front_ends import PatchEmbedding
from nasvit.search_spaces import get_space, registry
from nasvit.search_spaces.attention_variants import AttentionVariantsConfig, AttentionVariantsSpace
from nasvit.search_spaces.lighthubert import LightHuBERTConfig, LightHuBERTSpace
from nasvit.training import TrainConfig, stage1_path, train_supernet, train_two_stage
from nasvit.training.checkpoint import load_supernet, save_supernet
from nasvit.training.distillation import HiddenStateDistiller, Teacher, capture_features

from nasvit_testing.tiny_space import TINY

TINY_LH = "tiny-lighthubert-test"
# LightHuBERT's structure (post-LN, group-of-four layer drop over 12 layers, per-layer heads and
# FFN ratio, global width) at 32 wide: 4 tokens of 8x8 digits upsampled to 32, patch 16.
TINY_LH_CONFIG = LightHuBERTConfig(
    embed_dims=(16, 32),
    heads=(1, 2),
    ffn_ratios=(1.5, 2.0),
    layers=(10, 12),
    resolutions=(32,),
    supernet_dim=32,
    supernet_heads=2,
    supernet_ffn=64,
    head_dim=8,
    front_end=PatchEmbedding(patch=16, max_resolution=32, norm=True),
)
QUICK = TrainConfig(epochs=1, batch_size=32, train_limit=128, lr=3e-3, eval_every_epoch=False)

app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
app.command("train")(train_command)  # the only command: invoked without its name


def run(*args: str) -> tuple[int, str]:
    """(exit code, output) the way nasvit.cli.main reports them."""
    result = CliRunner().invoke(app, [*args, "--no-progress"])
    if isinstance(result.exception, NasvitError):
        return 2, f"error: {result.exception}"
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result.exit_code, result.output


@pytest.fixture(scope="module", autouse=True)
def _tiny_lighthubert() -> Iterator[None]:
    with pytest.MonkeyPatch.context() as patch:
        patch.setitem(registry._FACTORIES, TINY_LH, lambda: LightHuBERTSpace(TINY_LH_CONFIG, "t"))
        get_space.cache_clear()
        yield
    get_space.cache_clear()


def _train(config: TrainConfig, out: Path, digits: Dataset) -> Path:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # module fixtures run before the per-test _one_thread
    try:
        train_supernet(get_space(TINY_LH), digits, config, out, progress=False)
    finally:
        torch.set_num_threads(threads)
    return out


@pytest.fixture(scope="module")
def teacher_ckpt(tmp_path_factory: pytest.TempPathFactory, digits: Dataset) -> Path:
    """A tiny LightHuBERT supernet trained briefly the one-stage way (uniform sampling)."""
    out = tmp_path_factory.mktemp("teacher") / "teacher.pt"
    config = TrainConfig(
        epochs=2, batch_size=32, train_limit=256, lr=3e-3, sampling="uniform", seed=1
    )
    return _train(config, out, digits)


@pytest.fixture(scope="module")
def stage1(
    tmp_path_factory: pytest.TempPathFactory, digits: Dataset, teacher_ckpt: Path
) -> tuple[Path, list[float]]:
    """Stage 1 for 4 short epochs; returns the checkpoint and its per-epoch L1 losses."""
    out = tmp_path_factory.mktemp("stage1") / "s1.pt"
    config = TrainConfig(
        epochs=4,
        batch_size=32,
        train_limit=64,
        lr=3e-3,
        eval_every_epoch=False,
        teacher=str(teacher_ckpt),
        objective="teacher_features",
    )
    _train(config, out, digits)
    _, _, extra = load_supernet(out)
    return out, [record["loss"] for record in json.loads(extra["history"])]


def _batch(digits: Dataset, n: int = 16) -> torch.Tensor:
    return digits.images("val", 32, torch.arange(n))


def test_capture_features_records_each_encoder_layer_the_subnet_runs(digits: Dataset) -> None:
    space = get_space(TINY_LH)
    supernet = space.build_supernet(10, 1).eval()
    x = _batch(digits, 4)
    for arch, depth in ((space.largest(), 12), (space.smallest(), 10)):
        with torch.no_grad(), capture_features(supernet) as captured:
            logits = supernet(x, arch)
        width = int(arch["embed_dim"])
        assert len(captured) == depth  # a dropped layer records nothing
        assert all(h.shape == (4, 4, width) for h in captured)  # (batch, tokens, width)
        assert logits.shape == (4, 10)
    # A pre-LN space with per-layer mixers and first-k depth: one state per layer too.
    variants = AttentionVariantsSpace(
        AttentionVariantsConfig(
            resolutions=(32,), embed_dims=(16,), depths=(3,), heads=(1,), mlp_ratios=(2,)
        )
    )
    arch = variants.sample(np.random.default_rng(0))
    net = variants.build_supernet(10, 1).eval()
    with torch.no_grad(), capture_features(net) as captured:
        net(x, arch)
    assert len(captured) == 3 and captured[-1].shape == (4, 4, 16)


def test_distiller_projects_student_width_to_the_teacher_target() -> None:
    head = HiddenStateDistiller(student_dim=32, teacher_dim=16, teacher_layers=2)
    teacher = [torch.full((2, 4, 16), float(v)) for v in (9.0, 1.0, 3.0)]
    # Identity on the shared channels: a 16-wide student equal to the target costs nothing.
    assert head([torch.full((2, 4, 16), 2.0)], teacher).item() == 0.0  # mean of the last two
    assert head([torch.zeros(2, 4, 24)], teacher).item() == pytest.approx(2.0)  # another width


def test_stage1_l1_feature_loss_decreases(stage1: tuple[Path, list[float]]) -> None:
    out, losses = stage1
    assert len(losses) == 4 and all(np.isfinite(losses))
    assert losses[-1] < 0.8 * losses[0], losses
    space, _, extra = load_supernet(out)
    assert space.name == TINY_LH and "feature_head" in extra  # the projection is kept


def test_stage1_trains_only_the_largest_subnet_on_features(
    tmp_path: Path, digits: Dataset, teacher_ckpt: Path
) -> None:
    config = TrainConfig(
        epochs=1,
        batch_size=32,
        train_limit=64,
        eval_every_epoch=False,
        teacher=str(teacher_ckpt),
        objective="teacher_features",
    )
    result = train_supernet(get_space(TINY_LH), digits, config, tmp_path / "s.pt", progress=False)
    assert result.history[0]["steps"] == 2
    _, trained, _ = load_supernet(tmp_path / "s.pt")
    torch.manual_seed(config.seed)  # the trainer's seeded initial weights
    fresh = get_space(TINY_LH).build_supernet(10, 1)
    # No labels or logits in the loss: the classifier never moves.
    assert torch.equal(trained.head.head.weight, fresh.head.head.weight)
    assert not torch.equal(trained.layers[11].ffn.fc1.weight, fresh.layers[11].ffn.fc1.weight)
    with pytest.raises(NasvitError, match="needs a teacher"):
        no_teacher = TrainConfig(epochs=1, train_limit=32, objective="teacher_features")
        train_supernet(get_space(TINY_LH), digits, no_teacher, tmp_path / "n.pt", progress=False)


def test_stage2_starts_from_the_stage1_weights(
    tmp_path: Path, digits: Dataset, stage1: tuple[Path, list[float]], teacher_ckpt: Path
) -> None:
    """With lr 0 a stage-2 epoch changes nothing: its checkpoint shows the weights it started
    from, which are stage 1's (and differ from a fresh seeded init)."""
    stage1_out, _ = stage1
    space, first, _ = load_supernet(stage1_out)
    frozen = TrainConfig(
        epochs=1,
        batch_size=32,
        train_limit=32,
        lr=0.0,
        eval_every_epoch=False,
        sampling="uniform",
        teacher=str(teacher_ckpt),
    )
    _train(replace(frozen, init=str(stage1_out)), tmp_path / "s2.pt", digits)
    _train(frozen, tmp_path / "fresh.pt", digits)
    _, second, extra = load_supernet(tmp_path / "s2.pt")
    _, fresh, _ = load_supernet(tmp_path / "fresh.pt")
    x = _batch(digits)
    largest = space.largest()
    with torch.no_grad():
        assert torch.equal(second(x, largest), first(x, largest))
        assert not torch.allclose(fresh(x, largest), first(x, largest))
    _, _, first_extra = load_supernet(stage1_out)
    for key, value in first_extra["feature_head"].items():  # the projection carries over too
        assert torch.equal(extra["feature_head"][key], value)


def test_teacher_of_another_space_is_refused(
    tmp_path: Path, digits: Dataset, teacher_ckpt: Path
) -> None:
    other = tmp_path / "other.pt"
    save_supernet(other, get_space(TINY), get_space(TINY).build_supernet(10, 1))
    with pytest.raises(NasvitError, match="supernet of space 'tiny-efficientformer-test'"):
        Teacher(str(other), torch.device("cpu")).check_student(TINY_LH, 10, 1)
    config = TrainConfig(epochs=1, train_limit=32, init=str(other))
    with pytest.raises(NasvitError, match="init checkpoint .* space 'tiny-efficientformer"):
        train_supernet(get_space(TINY_LH), digits, config, tmp_path / "x.pt", progress=False)
    with pytest.raises(NasvitError, match="needs a teacher"):
        train_two_stage(get_space(TINY_LH), digits, config, tmp_path / "y.pt", progress=False)


def test_cli_two_stage_end_to_end(tmp_path: Path, teacher_ckpt: Path) -> None:
    out = tmp_path / "c.pt"
    common = ("--space", TINY_LH, "--epochs", "1", "--batch-size", "64", "--lr", "3e-3")
    code, text = run(
        *common, "--sampling", "uniform", "--recipe", "two-stage", "--teacher", str(teacher_ckpt),
        "--out", str(out),
    )  # fmt: skip
    assert code == 0, text
    first = stage1_path(out)
    assert first.name == "c.stage1.pt" and first.is_file() and out.is_file()
    assert "feature L1" in text and "val_largest" in text
    _, _, extra = load_supernet(out)
    config = json.loads(extra["train_config"])
    assert config["init"] == str(first) and config["objective"] == "ofa"
    assert json.loads(load_supernet(first)[2]["train_config"])["objective"] == "teacher_features"
    # The same two stages run one at a time.
    alone = tmp_path / "alone1.pt"
    code, text = run(*common, "--stage", "1", "--teacher", str(teacher_ckpt), "--out", str(alone))
    assert code == 0 and "feature L1" in text, text
    code, text = run(
        *common, "--stage", "2", "--init", str(alone), "--out", str(tmp_path / "a2.pt")
    )
    assert code == 0 and "val_largest" in text, text


def test_cli_bad_input_exits_2_with_one_line(tmp_path: Path, teacher_ckpt: Path) -> None:
    other = tmp_path / "other.pt"
    save_supernet(other, get_space(TINY), get_space(TINY).build_supernet(10, 1))
    out = ("--space", TINY_LH, "--epochs", "1", "--out", str(tmp_path / "c.pt"))
    cases = {
        "teacher checkpoint not found": ("--recipe", "two-stage", "--teacher", "no.pt"),
        "teacher is a supernet of space": ("--recipe", "two-stage", "--teacher", str(other)),
        "needs --teacher": ("--recipe", "two-stage"),
        "unknown --recipe 'three'": ("--recipe", "three"),
        "--stage 2 needs --init": ("--stage", "2"),
        "--init checkpoint not found": ("--stage", "2", "--init", "missing.pt"),
        "init checkpoint .* space": ("--stage", "2", "--init", str(other)),
        "--stage1-epochs applies only": ("--stage1-epochs", "2"),
        "drop --init": ("--recipe", "two-stage", "--teacher", str(teacher_ckpt), "--init", "x"),
    }
    for expected, args in cases.items():
        code, text = run(*out, *args)
        assert code == 2 and re.search(expected, text), (args, text)
        assert "\n" not in text.strip(), text

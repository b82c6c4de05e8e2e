"""Supernet training: learning, determinism, resume, sampling recipes, teacher distillation."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch

from nasvit.data import Dataset
from nasvit.errors import NasvitError
from nasvit.search_spaces import SearchSpace
from nasvit.training import TrainConfig, train_supernet
from nasvit.training.checkpoint import load_supernet

QUICK = TrainConfig(epochs=2, train_limit=96, batch_size=32, eval_every_epoch=False)


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return load_supernet(path)[1].state_dict()


def _assert_same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, different[:5]


def test_training_lifts_the_largest_subnet_far_above_chance(trained_checkpoint: Path) -> None:
    _, _, extra = load_supernet(trained_checkpoint)
    history = json.loads(extra["history"])
    assert [h["epoch"] for h in history] == [1, 2, 3]
    assert history[-1]["val_largest"] > 0.7  # chance is 0.1
    assert history[-1]["val_smallest"] > 0.5
    assert history[-1]["loss"] < history[0]["loss"]
    assert extra["complete"] and "resume_state" not in extra  # the final file is lean
    log = trained_checkpoint.with_name(trained_checkpoint.name + ".metrics.jsonl")
    assert [json.loads(line)["epoch"] for line in log.read_text().splitlines()] == [1, 2, 3]


def test_same_seed_gives_identical_weights(
    tmp_path: Path, tiny_space: SearchSpace, digits: Dataset
) -> None:
    config = TrainConfig(epochs=1, train_limit=64, batch_size=32, eval_every_epoch=False)
    train_supernet(tiny_space, digits, config, tmp_path / "a.pt", progress=False)
    train_supernet(tiny_space, digits, config, tmp_path / "b.pt", progress=False)
    _assert_same(_weights(tmp_path / "a.pt"), _weights(tmp_path / "b.pt"))
    other = TrainConfig(epochs=1, train_limit=64, batch_size=32, eval_every_epoch=False, seed=1)
    train_supernet(tiny_space, digits, other, tmp_path / "c.pt", progress=False)
    a, c = _weights(tmp_path / "a.pt"), _weights(tmp_path / "c.pt")
    assert any(not torch.equal(a[k], c[k]) for k in a)


def test_resume_continues_exactly_where_it_stopped(
    tmp_path: Path, tiny_space: SearchSpace, digits: Dataset
) -> None:
    straight = train_supernet(tiny_space, digits, QUICK, tmp_path / "straight.pt", progress=False)
    first = train_supernet(
        tiny_space, digits, QUICK, tmp_path / "resumed.pt", progress=False, stop_after=1
    )
    assert first.epochs == 1
    _, _, extra = load_supernet(tmp_path / "resumed.pt")
    assert extra["epoch"] == 1 and not extra["complete"] and "resume_state" in extra
    with (tmp_path / "resumed.pt.metrics.jsonl").open("a") as log:
        log.write('{"epoch": 2, "killed": "after logging, before saving"}\n')
    # Reporting val accuracy does not change the weights, so it may differ on resume.
    reporting = dataclasses.replace(QUICK, eval_every_epoch=True)
    second = train_supernet(
        tiny_space, digits, reporting, tmp_path / "resumed.pt", resume=True, progress=False
    )
    assert "val_largest" in second.history[1] and "val_largest" not in second.history[0]
    assert second.epochs == 2
    assert [h["epoch"] for h in second.history] == [1, 2]
    assert [h["loss"] for h in second.history] == [h["loss"] for h in straight.history]
    _assert_same(_weights(tmp_path / "straight.pt"), _weights(tmp_path / "resumed.pt"))
    log = (tmp_path / "resumed.pt.metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in log] == [1, 2]


def test_resume_refuses_what_it_cannot_continue(
    tmp_path: Path, tiny_space: SearchSpace, digits: Dataset
) -> None:
    with pytest.raises(NasvitError, match="cannot resume: no checkpoint at"):
        train_supernet(tiny_space, digits, QUICK, tmp_path / "none.pt", resume=True)
    train_supernet(tiny_space, digits, QUICK, tmp_path / "x.pt", progress=False, stop_after=1)
    changed = TrainConfig(epochs=2, train_limit=96, batch_size=32, eval_every_epoch=False, lr=1)
    with pytest.raises(NasvitError, match="settings differ from the checkpoint's: lr"):
        train_supernet(tiny_space, digits, changed, tmp_path / "x.pt", resume=True)
    wider = tiny_space.restrict(vit_num=[0])
    with pytest.raises(NasvitError, match="it was trained on space"):
        train_supernet(wider, digits, QUICK, tmp_path / "x.pt", resume=True)


def test_uniform_sampling_trains_one_subnet_per_step(
    tmp_path: Path, tiny_space: SearchSpace, digits: Dataset
) -> None:
    config = TrainConfig(epochs=1, train_limit=64, batch_size=32, sampling="uniform")
    result = train_supernet(tiny_space, digits, config, tmp_path / "u.pt", progress=False)
    assert result.history[0]["steps"] == 2
    assert 0.0 <= result.history[0]["val_largest"] <= 1.0
    with pytest.raises(NasvitError, match="unknown sampling 'bogus'"):
        bogus = TrainConfig(epochs=1, train_limit=32, sampling="bogus")  # type: ignore[arg-type]
        train_supernet(tiny_space, digits, bogus, tmp_path / "b.pt", progress=False)


def test_teacher_checkpoint_adds_feature_distillation(
    tmp_path: Path, tiny_space: SearchSpace, digits: Dataset, trained_checkpoint: Path
) -> None:
    base = TrainConfig(epochs=1, train_limit=64, batch_size=32, eval_every_epoch=False)
    plain = train_supernet(tiny_space, digits, base, tmp_path / "plain.pt", progress=False)
    taught_config = TrainConfig(
        epochs=1,
        train_limit=64,
        batch_size=32,
        eval_every_epoch=False,
        teacher=str(trained_checkpoint),
        feature_distill_weight=1.0,
    )
    taught = train_supernet(tiny_space, digits, taught_config, tmp_path / "t.pt", progress=False)
    # Same seed and batches: the extra KL + L1 feature terms show up in the loss.
    assert taught.history[0]["loss"] > plain.history[0]["loss"]
    assert torch.isfinite(torch.tensor(taught.history[0]["loss"]))
    missing = TrainConfig(epochs=1, train_limit=32, teacher=str(tmp_path / "no.pt"))
    with pytest.raises(NasvitError, match="checkpoint not found"):
        train_supernet(tiny_space, digits, missing, tmp_path / "m.pt", progress=False)

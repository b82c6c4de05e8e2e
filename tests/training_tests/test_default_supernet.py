"""The default supernet: trained once, cached under NASVIT_HOME, reused, resumed, locked."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from nasvit.errors import NasvitError
from nasvit.search_spaces import get_space
from nasvit.training import TrainConfig, train_supernet
from nasvit.training import default_supernet as module
from nasvit.training.default_supernet import (
    Recipe,
    default_supernet,
    default_supernet_path,
    ensure_default_supernet,
    nasvit_home,
    recipe_for,
)

from nasvit_testing.tiny_space import TINY

RECIPE = Recipe(
    restrictions={"resolution": [32]},
    train=TrainConfig(epochs=2, train_limit=64, batch_size=32, eval_every_epoch=False),
)


def test_trains_once_then_loads_from_the_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    space, supernet, extra = default_supernet(TINY, tmp_path, progress=False, recipe=RECIPE)
    path = default_supernet_path(TINY, tmp_path, RECIPE)
    assert path.is_file() and path.parent == tmp_path / "supernets"
    assert path.name == f"{TINY}-digits-{RECIPE.fingerprint()}.pt"
    assert not path.with_name(path.name + ".partial").exists()
    assert space.restrictions == {"resolution": [32]} and extra["complete"]
    assert (supernet.num_classes, supernet.in_channels) == (10, 1)

    def no_training(*_args: object, **_kwargs: object) -> None:
        raise AssertionError("trained again")

    monkeypatch.setattr(module, "train_supernet", no_training)
    _, again, _ = default_supernet(TINY, tmp_path, progress=False, recipe=RECIPE)
    first, second = supernet.state_dict(), again.state_dict()
    assert all(torch.equal(first[k], second[k]) for k in first)


def test_home_comes_from_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NASVIT_HOME", str(tmp_path))
    assert nasvit_home() == tmp_path
    assert default_supernet_path(TINY, recipe=RECIPE).parent == tmp_path / "supernets"
    monkeypatch.delenv("NASVIT_HOME")
    assert nasvit_home() == Path.home() / ".nasvit"


def test_the_file_name_follows_the_recipe() -> None:
    longer = Recipe(RECIPE.restrictions, TrainConfig(epochs=3))
    elsewhere = Recipe(RECIPE.restrictions, TrainConfig(epochs=2, device="cuda"))
    assert longer.fingerprint() != RECIPE.fingerprint()
    assert (
        elsewhere.fingerprint() == Recipe(RECIPE.restrictions, TrainConfig(epochs=2)).fingerprint()
    )


def test_an_interrupted_training_is_resumed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = default_supernet_path(TINY, tmp_path, RECIPE)
    partial = path.with_name(path.name + ".partial")
    space = get_space(TINY).restrict(**RECIPE.restrictions)
    from nasvit.data import load_digits

    train_supernet(space, load_digits(), RECIPE.train, partial, progress=False, stop_after=1)
    calls: list[bool] = []

    def recording(*args: object, **kwargs: object) -> object:
        calls.append(bool(kwargs["resume"]))
        return train_supernet(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(module, "train_supernet", recording)
    assert ensure_default_supernet(TINY, tmp_path, progress=False, recipe=RECIPE) == path
    assert calls == [True] and path.is_file() and not partial.exists()


def test_two_processes_train_it_once(tmp_path: Path) -> None:
    script = textwrap.dedent(
        f"""
        import torch
        torch.set_num_threads(1)
        from nasvit.training import default_supernet as module
        from nasvit.search_spaces import registry
        from nasvit.search_spaces.efficientformer import EfficientFormerSpace
        from tests_conf import TINY, TINY_CONFIG, RECIPE
        registry._FACTORIES[TINY] = lambda: EfficientFormerSpace(TINY_CONFIG)
        real = module.train_supernet
        def train(*args, **kwargs):
            print("trained", flush=True)
            return real(*args, **kwargs)
        module.train_supernet = train
        module.ensure_default_supernet(TINY, {str(tmp_path)!r}, progress=False, recipe=RECIPE)
        """
    )
    (tmp_path / "tests_conf.py").write_text(
        "from nasvit.search_spaces.efficientformer import EfficientFormerConfig\n"
        "from nasvit.training.default_supernet import Recipe\n"
        "from nasvit.training import TrainConfig\n"
        f"TINY = {TINY!r}\n"
        "TINY_CONFIG = EfficientFormerConfig(resolutions=(16, 32), widths=((8, 16), (16, 24), "
        "(16, 32), (32, 48)), depths=((1, 2), (1, 2), (1, 2, 3), (1, 2)), vit_nums=(0, 1), "
        "num_heads=2, key_dim=8)\n"
        "RECIPE = Recipe({'resolution': [32]}, TrainConfig(epochs=2, train_limit=64, "
        "batch_size=32, eval_every_epoch=False))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    runs = [
        subprocess.Popen(
            [sys.executable, "-c", script], cwd=tmp_path, env=env, stdout=subprocess.PIPE, text=True
        )
        for _ in range(2)
    ]
    outputs = [run.communicate(timeout=300)[0] for run in runs]
    assert [run.returncode for run in runs] == [0, 0]
    assert sum(o.count("trained") for o in outputs) == 1
    assert default_supernet_path(TINY, tmp_path, RECIPE).is_file()


def test_efficientformer_recipe_keeps_a_binding_latency_range() -> None:
    recipe = recipe_for("efficientformer")
    space = get_space("efficientformer").restrict(**recipe.restrictions)
    largest, smallest = space.largest(), space.smallest()
    assert largest["resolution"] == smallest["resolution"] == 64
    assert largest["widths"] == (48, 112, 224, 448)  # the smaller half of each stage's widths
    assert largest["depths"] == (4, 4, 8, 4) and largest["vit_num"] == 4
    assert smallest["depths"] == (1, 1, 1, 1) and smallest["vit_num"] == 0
    assert recipe.train.sampling == "sandwich" and recipe.data == "digits-affine"


def test_unknown_space_is_a_user_error(tmp_path: Path) -> None:
    with pytest.raises(NasvitError, match="unknown search space"):
        default_supernet("efficientformr", tmp_path, progress=False)


def test_default_evaluator_scores_on_the_training_split(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(module, "recipe_for", lambda _name: RECIPE)
    evaluator = module.default_evaluator(TINY, tmp_path, progress=False)
    assert evaluator.split == "val" and evaluator.dataset.name == "digits"
    result = evaluator.evaluate(evaluator.space.smallest())
    assert 0.0 <= result.accuracy <= 1.0

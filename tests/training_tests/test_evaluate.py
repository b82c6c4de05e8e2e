"""Subnet evaluation: extracted and in-supernet paths agree, standalone modules agree, errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from nasvit.data import Dataset, load_dataset
from nasvit.errors import NasvitError
from nasvit.evaluation.evaluator import SubnetEvaluator, accuracy_of, accuracy_spread
from nasvit.training.checkpoint import load_supernet


def test_supernet_path_matches_extracted_subnet(trained_checkpoint: Path, digits: Dataset) -> None:
    space, supernet, _ = load_supernet(trained_checkpoint)
    before = {k: v.clone() for k, v in supernet.state_dict().items()}
    extract = SubnetEvaluator(space, supernet, digits, "test", mode="extract")
    inside = SubnetEvaluator(space, supernet, digits, "test", mode="supernet")
    rng = np.random.default_rng(0)
    archs = [space.largest(), space.smallest()] + [space.sample(rng) for _ in range(4)]
    for arch in archs:
        a, b = extract.evaluate(arch), inside.evaluate(arch)
        assert abs(a.accuracy - b.accuracy) <= 0.005, space.short_string(arch)
        assert a.loss == pytest.approx(b.loss, rel=1e-3, abs=1e-4)
        assert a.samples == digits.size("test") and a.split == "test"
    after = supernet.state_dict()  # neither path leaves a trace in the supernet
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_standalone_subnet_reproduces_the_evaluator(
    trained_checkpoint: Path, digits: Dataset
) -> None:
    space, supernet, _ = load_supernet(trained_checkpoint)
    evaluator = SubnetEvaluator(space, supernet, digits, "val")
    arch = space.sample(np.random.default_rng(3))
    module = evaluator.subnet(arch)
    assert not module.training
    standalone = accuracy_of(module, digits.batches("val", 32, 64), torch.device("cpu"))
    result = evaluator.evaluate(arch)
    assert standalone[0] == pytest.approx(result.accuracy, abs=0.005)
    assert result.short == space.short_string(arch)
    assert result.to_dict()["arch"] == arch.to_dict()


def test_batched_evaluation_reuses_resized_data(trained_checkpoint: Path) -> None:
    dataset = load_dataset("digits")
    space, supernet, _ = load_supernet(trained_checkpoint)
    evaluator = SubnetEvaluator(space, supernet, dataset, "val", calibration_size=64)
    rng = np.random.default_rng(1)
    results = evaluator.evaluate_many([space.sample(rng) for _ in range(5)])
    assert set(dataset._cache) == {("train", 32), ("val", 32)}
    spread = accuracy_spread(results)
    assert spread["count"] == 5 and 0 <= spread["min"] <= spread["mean"] <= spread["max"] <= 1


def test_mismatched_data_and_bad_settings_are_refused(
    trained_checkpoint: Path, tmp_path: Path, digits: Dataset
) -> None:
    space, supernet, _ = load_supernet(trained_checkpoint)
    x = np.random.default_rng(0).integers(0, 255, (40, 8, 8, 3), dtype=np.uint8)
    np.savez(tmp_path / "rgb.npz", x=x, y=np.arange(40) % 10)
    with pytest.raises(NasvitError, match="1-channel input but dataset .* has 3 channels"):
        SubnetEvaluator(space, supernet, load_dataset(tmp_path / "rgb.npz"))
    np.savez(tmp_path / "two.npz", x=x[..., 0], y=np.arange(40) % 2)
    with pytest.raises(NasvitError, match="10 classes but dataset .* has 2"):
        SubnetEvaluator(space, supernet, load_dataset(tmp_path / "two.npz"))
    with pytest.raises(NasvitError, match="unknown split"):
        SubnetEvaluator(space, supernet, digits, "dev")
    with pytest.raises(NasvitError, match="unknown evaluation mode"):
        SubnetEvaluator(space, supernet, digits, mode="fast")  # type: ignore[arg-type]


def test_channels_last_evaluation_matches_contiguous(
    trained_checkpoint: Path, digits: Dataset
) -> None:
    """Evaluations run in channels-last memory format; the numbers are those of the plain
    (contiguous) path up to float rounding, and the supernet is left untouched."""
    space, supernet, _ = load_supernet(trained_checkpoint)
    before = {k: v.clone() for k, v in supernet.state_dict().items()}
    fast = SubnetEvaluator(space, supernet, digits, "val")
    plain = SubnetEvaluator(space, supernet, digits, "val", channels_last=False)
    rng = np.random.default_rng(2)
    for arch in [space.largest(), space.smallest()] + [space.sample(rng) for _ in range(4)]:
        a, b = fast.evaluate(arch), plain.evaluate(arch)
        assert a.accuracy == b.accuracy, space.short_string(arch)
        assert a.loss == pytest.approx(b.loss, rel=1e-4)
    assert not fast.subnet(space.smallest()).training
    assert all(torch.equal(before[k], v) for k, v in supernet.state_dict().items())


def test_recalibration_runs_only_up_to_the_last_batchnorm(
    trained_checkpoint: Path, digits: Dataset
) -> None:
    from nasvit.evaluation.evaluator import _calibration_part

    space, supernet, _ = load_supernet(trained_checkpoint)
    arch = space.largest()
    subnet = supernet.extract(arch)
    part = _calibration_part(subnet)
    assert part is not None and 0 < len(part) < len(subnet)
    assert all(a is b for a, b in zip(part, subnet, strict=False))  # the same modules
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in subnet[len(part) :].modules())
    assert _calibration_part(torch.nn.Sequential(torch.nn.Linear(2, 2))) is None


def test_supernet_without_batchnorm_is_not_recalibrated(
    trained_checkpoint: Path, digits: Dataset, monkeypatch: pytest.MonkeyPatch
) -> None:
    """BatchNorm-free subnets skip the calibration forward (it could change nothing); the
    accuracy is the plain forward's."""
    import nasvit.evaluation.evaluator as evaluate

    def without_batchnorm(module: torch.nn.Module) -> torch.nn.Module:
        for parent in module.modules():
            for name, child in list(parent.named_children()):
                if isinstance(child, torch.nn.BatchNorm2d):
                    setattr(parent, name, torch.nn.Identity())
        return module

    space, supernet, _ = load_supernet(trained_checkpoint)
    calls: list[int] = []
    original = evaluate.recalibrate_batchnorm
    monkeypatch.setattr(
        evaluate, "recalibrate_batchnorm", lambda *a, **k: calls.append(1) or original(*a, **k)
    )
    arch = space.smallest()
    extract = supernet.extract
    monkeypatch.setattr(supernet, "extract", lambda a: without_batchnorm(extract(a)))
    result = SubnetEvaluator(space, supernet, digits, "val").evaluate(arch)
    plain = accuracy_of(
        without_batchnorm(extract(arch)).eval(), digits.batches("val", 32, 256), torch.device("cpu")
    )
    assert (result.accuracy, result.loss) == pytest.approx(plain[:2], rel=1e-4)
    without_batchnorm(supernet)  # the in-supernet path: elastic BatchNorms -> identity
    SubnetEvaluator(space, supernet, digits, "val", mode="supernet").evaluate(arch)
    assert calls == []

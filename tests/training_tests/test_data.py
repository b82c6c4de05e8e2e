"""Datasets: the digits split, resizing, and the CIFAR-10 / ImageFolder / .npz loaders."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from nasvit.data import Dataset, load_dataset, load_digits
from nasvit.errors import NasvitError


def test_digits_split_is_fixed_by_seed_stratified_and_disjoint(digits: Dataset) -> None:
    again = load_digits(seed=0)
    other = load_digits(seed=1)
    for split in ("train", "val", "test"):
        assert torch.equal(digits.splits[split][0], again.splits[split][0])
    assert not torch.equal(digits.splits["val"][0], other.splits["val"][0])
    sizes = {s: digits.size(s) for s in ("train", "val", "test")}
    assert sum(sizes.values()) == 1797
    assert sizes["test"] == pytest.approx(0.2 * 1797, abs=10)
    for split in ("val", "test"):  # every class is represented in proportion
        counts = np.bincount(digits.labels(split).numpy(), minlength=10)
        assert counts.min() >= 0.8 * counts.mean()
    rows = {s: {tuple(x.flatten().tolist()) for x in digits.splits[s][0]} for s in sizes}
    assert not rows["test"] & rows["val"]
    assert digits.describe()["in_channels"] == 1 and digits.num_classes == 10


def test_train_split_is_normalised(digits: Dataset) -> None:
    images = digits.splits["train"][0]
    assert abs(float(images.mean())) < 1e-4
    assert float(images.std()) == pytest.approx(1.0, abs=0.2)


def test_images_are_resized_and_cached_per_resolution(digits: Dataset) -> None:
    small = digits.images("val", 32)
    assert small.shape == (digits.size("val"), 1, 32, 32)
    assert digits.images("val", 32) is small  # cached
    index = torch.tensor([3, 1])
    assert torch.equal(digits.images("val", 32, index), small[index])
    batches = list(digits.batches("val", 16, batch_size=50))
    assert sum(len(y) for _, y in batches) == digits.size("val")
    assert batches[0][0].shape[-1] == 16
    with pytest.raises(NasvitError, match="unknown split 'dev'"):
        digits.images("dev", 32)


def test_npz_channel_last_uint8(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, size=(60, 12, 10, 3), dtype=np.uint8)
    y = np.repeat(np.arange(3), 20)
    np.savez(tmp_path / "data.npz", x=x, y=y)
    dataset = load_dataset(tmp_path / "data.npz")
    assert (dataset.num_classes, dataset.in_channels, dataset.native_size) == (3, 3, (12, 10))
    assert sum(dataset.size(s) for s in ("train", "val", "test")) == 60
    assert dataset.images("train", 16).shape[1:] == (3, 16, 16)


def test_npz_grayscale_channels_first(tmp_path: Path) -> None:
    x = np.random.default_rng(0).random((30, 1, 8, 8)).astype(np.float32)
    np.savez(tmp_path / "g.npz", x=x, y=np.arange(30) % 2)
    assert load_dataset(tmp_path / "g.npz").in_channels == 1


@pytest.mark.parametrize(
    ("arrays", "message"),
    [
        ({"x": np.zeros((4, 8, 8))}, "missing array\\(s\\) y"),
        ({"x": np.zeros((4, 8, 8)), "y": np.zeros(5, dtype=int)}, "4 images but 5 labels"),
        ({"x": np.zeros((4, 8)), "y": np.zeros(4, dtype=int)}, "x must be"),
        ({"x": np.zeros((4, 5, 8, 8)), "y": np.zeros(4, dtype=int)}, "channel axis"),
        ({"x": np.zeros((4, 8, 8)), "y": np.zeros(4)}, "integer array"),
    ],
)
def test_malformed_npz_names_path_and_problem(tmp_path: Path, arrays: dict, message: str) -> None:
    path = tmp_path / "bad.npz"
    np.savez(path, **arrays)
    with pytest.raises(NasvitError, match=message) as info:
        load_dataset(path)
    assert str(path) in str(info.value)


def test_corrupt_or_missing_files(tmp_path: Path) -> None:
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(NasvitError, match="junk.npz: not a readable .npz"):
        load_dataset(tmp_path / "junk.npz")
    with pytest.raises(NasvitError, match="dataset not found: .*nothing"):
        load_dataset(tmp_path / "nothing")
    (tmp_path / "data.csv").write_text("1,2\n")
    with pytest.raises(NasvitError, match="unsupported dataset file"):
        load_dataset(tmp_path / "data.csv")


def _cifar_batch(path: Path, n: int, seed: int, data: object = None) -> None:
    rng = np.random.default_rng(seed)
    batch = {
        b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8) if data is None else data,
        b"labels": [int(i % 10) for i in range(n)],
    }
    path.write_bytes(pickle.dumps(batch))


def test_cifar_batches_keep_their_test_batch(tmp_path: Path) -> None:
    _cifar_batch(tmp_path / "data_batch_1", 100, 0)
    _cifar_batch(tmp_path / "data_batch_2", 100, 1)
    _cifar_batch(tmp_path / "test_batch", 40, 2)
    names = [f"c{i}".encode() for i in range(10)]
    (tmp_path / "batches.meta").write_bytes(pickle.dumps({b"label_names": names}))
    dataset = load_dataset(tmp_path)
    assert (dataset.num_classes, dataset.in_channels, dataset.native_size) == (10, 3, (32, 32))
    assert dataset.size("test") == 40
    assert dataset.size("train") + dataset.size("val") == 200
    assert dataset.class_names[3] == "c3"


def test_malformed_cifar_batches(tmp_path: Path) -> None:
    _cifar_batch(tmp_path / "data_batch_1", 10, 0, data=np.zeros((10, 100), dtype=np.uint8))
    _cifar_batch(tmp_path / "test_batch", 10, 1)
    with pytest.raises(NasvitError, match="data_batch_1: data must be uint8 of shape"):
        load_dataset(tmp_path)
    _cifar_batch(tmp_path / "data_batch_1", 10, 0)
    (tmp_path / "test_batch").write_bytes(b"garbage")
    with pytest.raises(NasvitError, match="test_batch: not a CIFAR-10 python batch"):
        load_dataset(tmp_path)
    (tmp_path / "test_batch").unlink()
    with pytest.raises(NasvitError, match="CIFAR-10 batch missing: .*test_batch"):
        load_dataset(tmp_path)


def _png(path: Path, value: int, size: tuple[int, int] = (10, 10), mode: str = "RGB") -> None:
    Image.new(mode, size, (value,) * 3 if mode == "RGB" else value).save(path)


def test_image_folder(tmp_path: Path) -> None:
    for label, name in enumerate(["cat", "dog"]):
        (tmp_path / name).mkdir()
        for i in range(6):
            _png(tmp_path / name / f"{i}.png", 40 * label + i, size=(10, 10) if i else (12, 9))
    dataset = load_dataset(tmp_path)
    assert dataset.class_names == ("cat", "dog")
    assert (dataset.num_classes, dataset.in_channels, dataset.native_size) == (2, 3, (9, 12))
    assert sum(dataset.size(s) for s in ("train", "val", "test")) == 12


def test_grayscale_image_folder_has_one_channel(tmp_path: Path) -> None:
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        for i in range(5):
            _png(tmp_path / name / f"{i}.png", i * 10, mode="L")
    assert load_dataset(tmp_path).in_channels == 1


def test_malformed_image_folder(tmp_path: Path) -> None:
    with pytest.raises(NasvitError, match="not a dataset directory"):
        load_dataset(tmp_path)
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    _png(tmp_path / "a" / "0.png", 1)
    with pytest.raises(NasvitError, match="b: class folder holds no images"):
        load_dataset(tmp_path)
    (tmp_path / "b" / "broken.png").write_bytes(b"\x89PNG not really")
    with pytest.raises(NasvitError, match="broken.png: cannot read image"):
        load_dataset(tmp_path)


def test_digits_affine_copies_each_split_of_digits_and_is_seeded(digits: Dataset) -> None:
    from nasvit.data import AFFINE_COPIES, AFFINE_SIZE, load_digits_affine

    affine = load_dataset("digits-affine", seed=0)
    assert affine.native_size == (AFFINE_SIZE, AFFINE_SIZE) and affine.num_classes == 10
    for split in ("train", "val", "test"):
        # The split is drawn over source digits first: each split holds copies of exactly the
        # digits plain digits puts there, so no digit's copies reach two splits.
        expected = np.repeat(digits.labels(split).numpy(), AFFINE_COPIES[split])
        assert np.array_equal(affine.labels(split).numpy(), expected)
    images = affine.splits["train"][0]
    assert not torch.equal(images[0], images[1])  # two copies, two distortions
    assert torch.equal(load_digits_affine(seed=0).splits["val"][0], affine.splits["val"][0])
    assert not torch.equal(load_digits_affine(seed=1).splits["val"][0], affine.splits["val"][0])
    assert abs(float(images.mean())) < 1e-4  # normalised like every other source

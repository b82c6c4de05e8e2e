"""Image classification data for supernet training and subnet evaluation.

Every dataset is held in memory as normalised float tensors at its native size, split once into
train / val / test with a seeded, stratified permutation (so a seed always gives the same
split), and resized on the fly to the resolution of the subnet being trained or evaluated.
Resized copies are cached per (split, resolution) while they stay small.

Sources (see :func:`load_dataset`):

- ``digits`` (default): scikit-learn's 1,797 8x8 grayscale digits, shipped with the package.
- ``digits-affine``: the same digits on a 32x32 canvas, randomly rotated, scaled, shifted and
  noised (two copies per digit in train and test, one in validation; what the default
  efficientformer supernet trains on).
- a directory of CIFAR-10 python batches (``data_batch_1..5`` and ``test_batch``).
- an ImageFolder tree: ``root/<class name>/<image>`` (needs Pillow).
- an ``.npz`` file with arrays ``x`` (N,H,W | N,H,W,C | N,C,H,W) and ``y`` (N integer labels).

Missing or malformed data raises :class:`~nasvit.errors.NasvitError` naming the path.
"""

from __future__ import annotations

import pickle
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from nasvit.errors import NasvitError

SPLITS = ("train", "val", "test")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")
# Resized copies above this size are produced per batch instead of cached (e.g. CIFAR at 224).
_CACHE_LIMIT_BYTES = 256 * 2**20


@dataclass
class Dataset:
    """An in-memory classification dataset with fixed splits.

    Attributes:
        name: ``digits``, or the path it was loaded from.
        num_classes: labels are ``0..num_classes-1``.
        in_channels: channels of every image (1 for grayscale, 3 for RGB).
        native_size: (height, width) the images are stored at.
        splits: split name -> (images N,C,H,W float32 normalised, labels N int64).
        class_names: one name per label.
    """

    name: str
    num_classes: int
    in_channels: int
    native_size: tuple[int, int]
    splits: dict[str, tuple[Tensor, Tensor]]
    class_names: tuple[str, ...] = ()
    split_seed: int = 0
    _cache: dict[tuple[str, int], Tensor] = field(default_factory=dict, repr=False)

    def size(self, split: str) -> int:
        return int(self._split(split)[1].shape[0])

    def labels(self, split: str) -> Tensor:
        return self._split(split)[1]

    def images(self, split: str, resolution: int, indices: Tensor | None = None) -> Tensor:
        """Images of ``split`` resized to ``resolution`` (all, or the rows ``indices``)."""
        images = self._split(split)[0]
        key = (split, resolution)
        cached = self._cache.get(key)
        if cached is None:
            resized_bytes = images.shape[0] * images.shape[1] * resolution * resolution * 4
            if resized_bytes > _CACHE_LIMIT_BYTES:
                chosen = images if indices is None else images[indices]
                return _resize(chosen, resolution)
            cached = _resize(images, resolution)
            self._cache[key] = cached
        return cached if indices is None else cached[indices]

    def batches(
        self,
        split: str,
        resolution: int,
        batch_size: int,
        rng: np.random.Generator | None = None,
        limit: int | None = None,
    ) -> Iterator[tuple[Tensor, Tensor]]:
        """(images, labels) batches; shuffled with ``rng`` when given, else in order.

        Args:
            limit: use only the first ``limit`` samples (after shuffling).
        """
        n = self.size(split)
        order = rng.permutation(n) if rng is not None else np.arange(n)
        if limit is not None:
            order = order[:limit]
        labels = self.labels(split)
        for start in range(0, len(order), batch_size):
            index = torch.as_tensor(order[start : start + batch_size], dtype=torch.long)
            yield self.images(split, resolution, index), labels[index]

    def describe(self) -> dict[str, object]:
        """JSON-ready summary, stored in checkpoints."""
        return {
            "name": self.name,
            "num_classes": self.num_classes,
            "in_channels": self.in_channels,
            "native_size": list(self.native_size),
            "sizes": {s: self.size(s) for s in self.splits},
            "split_seed": self.split_seed,
        }

    def _split(self, split: str) -> tuple[Tensor, Tensor]:
        if split not in self.splits:
            raise NasvitError(f"unknown split '{split}'; known: {', '.join(self.splits)}")
        return self.splits[split]


def _resize(images: Tensor, resolution: int) -> Tensor:
    if images.shape[-2:] == (resolution, resolution):
        return images
    # Antialiasing only matters when shrinking; bilinear upsampling of 8x8 digits is smooth.
    shrinking = min(images.shape[-2:]) > resolution
    return F.interpolate(
        images,
        size=(resolution, resolution),
        mode="bilinear",
        align_corners=False,
        antialias=shrinking,
    ).contiguous()


def stratified_split(
    labels: np.ndarray, fractions: tuple[float, float], seed: int
) -> dict[str, np.ndarray]:
    """Indices of train/val/test: per class, a seeded permutation cut at the given (val, test)
    fractions, so every split keeps the class balance and a seed always gives the same split."""
    rng = np.random.default_rng(seed)
    parts: dict[str, list[np.ndarray]] = {s: [] for s in SPLITS}
    for label in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == label))
        n_val = int(round(len(members) * fractions[0]))
        n_test = int(round(len(members) * fractions[1]))
        parts["val"].append(members[:n_val])
        parts["test"].append(members[n_val : n_val + n_test])
        parts["train"].append(members[n_val + n_test :])
    return {s: np.sort(np.concatenate(p)) for s, p in parts.items()}


def _build(
    name: str,
    x: np.ndarray,
    y: np.ndarray,
    seed: int,
    fractions: tuple[float, float],
    test: tuple[np.ndarray, np.ndarray] | None = None,
    class_names: tuple[str, ...] = (),
) -> Dataset:
    """Split (x, y), normalise with the train split's per-channel mean/std, wrap as tensors.

    ``x`` is N,C,H,W float in [0, 1]; with ``test`` given, the test split is that pair and
    (x, y) is cut into train/val only.
    """
    if test is None:
        index = stratified_split(y, fractions, seed)
        raw = {s: (x[index[s]], y[index[s]]) for s in SPLITS}
    else:
        val_fraction = fractions[0] / (1.0 - fractions[1])
        index = stratified_split(y, (val_fraction, 0.0), seed)
        raw = {
            "train": (x[index["train"]], y[index["train"]]),
            "val": (x[index["val"]], y[index["val"]]),
        }
        raw["test"] = test
    return _normalised(name, raw, seed, class_names)


def _normalised(
    name: str,
    raw: dict[str, tuple[np.ndarray, np.ndarray]],
    seed: int,
    class_names: tuple[str, ...] = (),
) -> Dataset:
    """Normalise split arrays (N,C,H,W in [0, 1]) with the train split's per-channel mean/std
    and wrap them as tensors."""
    mean = raw["train"][0].mean(axis=(0, 2, 3), keepdims=True)
    std = raw["train"][0].std(axis=(0, 2, 3), keepdims=True) + 1e-6
    splits = {
        s: (
            torch.from_numpy(((images - mean) / std).astype(np.float32)),
            torch.from_numpy(labels.astype(np.int64)),
        )
        for s, (images, labels) in raw.items()
    }
    num_classes = max(int(labels.max()) for _, labels in raw.values() if labels.size) + 1
    x = raw["train"][0]
    return Dataset(
        name=name,
        num_classes=num_classes,
        in_channels=int(x.shape[1]),
        native_size=(int(x.shape[2]), int(x.shape[3])),
        splits=splits,
        class_names=class_names or tuple(str(i) for i in range(num_classes)),
        split_seed=seed,
    )


def load_digits(seed: int = 0, fractions: tuple[float, float] = (0.1, 0.2)) -> Dataset:
    """scikit-learn's digits (1,797 images, 8x8, 1 channel, 10 classes)."""
    from sklearn.datasets import load_digits as sklearn_digits

    bunch = sklearn_digits()
    x = (bunch.images.astype(np.float32) / 16.0)[:, None]  # pixel values are 0..16
    return _build("digits", x, bunch.target.astype(np.int64), seed, fractions)


# digits-affine: each source digit appears this many times per split, each with its own
# distortion. Copies enlarge the training set; in the validation split, which every candidate
# of a search is scored on, one copy keeps an evaluation a third cheaper.
AFFINE_COPIES = {"train": 2, "val": 1, "test": 2}
AFFINE_SIZE = 32  # canvas side; the 8x8 digit is scaled to 24x24 before the distortion
AFFINE_MAX_ROTATION_DEG = 30.0
AFFINE_SCALES = (0.75, 1.15)
AFFINE_MAX_SHIFT_PX = 4.0
AFFINE_NOISE_STD = 0.3  # Gaussian pixel noise on a 0..1 scale


def load_digits_affine(
    seed: int = 0,
    fractions: tuple[float, float] = (0.1, 0.2),
    copies: dict[str, int] | None = None,
) -> Dataset:
    """scikit-learn's digits made harder: each digit on a 32x32 canvas, randomly rotated,
    scaled and shifted, with pixel noise, ``copies[split]`` times (default
    :data:`AFFINE_COPIES`).

    Plain digits are too easy to rank subnets: every subnet of the default efficientformer
    space, the smallest included, reached the same 98.3% after 30 epochs, so no latency budget
    changes which subnet is best. With the distortions, accuracy and loss track capacity. The
    split is drawn over the source digits before they are copied, so no digit reaches two
    splits; the distortions are seeded, so a seed always gives the same images.
    """
    from sklearn.datasets import load_digits as sklearn_digits

    bunch = sklearn_digits()
    images = torch.from_numpy(bunch.images.astype(np.float32) / 16.0)[:, None]
    labels = bunch.target.astype(np.int64)
    index = stratified_split(labels, fractions, seed)
    generator = torch.Generator().manual_seed(seed)
    raw = {}
    for split in SPLITS:
        chosen = np.repeat(index[split], (copies or AFFINE_COPIES)[split])
        distorted = _distort(images[torch.from_numpy(chosen)], generator)
        raw[split] = (distorted.numpy(), labels[chosen])
    return _normalised("digits-affine", raw, seed)


def _distort(images: Tensor, generator: torch.Generator) -> Tensor:
    """Random rotation, scale and shift of each image on an :data:`AFFINE_SIZE` canvas, plus
    Gaussian noise, clipped to 0..1."""
    n = images.shape[0]
    inner = AFFINE_SIZE * 3 // 4
    canvas = F.pad(_resize(images, inner), [(AFFINE_SIZE - inner) // 2] * 4)

    def uniform(low: float, high: float) -> Tensor:
        return low + (high - low) * torch.rand(n, generator=generator)

    angle = torch.deg2rad(uniform(-AFFINE_MAX_ROTATION_DEG, AFFINE_MAX_ROTATION_DEG))
    scale = uniform(*AFFINE_SCALES)
    shift = 2 * AFFINE_MAX_SHIFT_PX / AFFINE_SIZE  # grid coordinates span -1..1
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0] = torch.cos(angle) / scale
    theta[:, 0, 1] = -torch.sin(angle) / scale
    theta[:, 1, 0] = torch.sin(angle) / scale
    theta[:, 1, 1] = torch.cos(angle) / scale
    theta[:, 0, 2] = uniform(-shift, shift)
    theta[:, 1, 2] = uniform(-shift, shift)
    grid = F.affine_grid(theta, list(canvas.shape), align_corners=False)
    warped = F.grid_sample(canvas, grid, mode="bilinear", align_corners=False)
    noise = AFFINE_NOISE_STD * torch.randn(warped.shape, generator=generator)
    return (warped + noise).clamp(0.0, 1.0)


# Datasets that ship with nasvit's dependencies, by name.
_BUNDLED_LOADERS = {"digits": load_digits, "digits-affine": load_digits_affine}
BUNDLED_DATASETS = tuple(_BUNDLED_LOADERS)


def load_dataset(
    source: str | Path = "digits", seed: int = 0, fractions: tuple[float, float] = (0.1, 0.2)
) -> Dataset:
    """Load a bundled dataset by name or the dataset at a path (CIFAR-10 batches dir,
    ImageFolder, .npz).

    Args:
        source: ``"digits"``, ``"digits-affine"`` or a path.
        seed: seed of the stratified split.
        fractions: (val, test) fractions of the data (CIFAR-10 keeps its own test batch).

    Raises:
        NasvitError: the path is missing, of an unknown kind, or its contents are malformed.
    """
    loader = _BUNDLED_LOADERS.get(str(source))
    if loader is not None:
        return loader(seed, fractions)
    path = Path(source)
    if not path.exists():
        names = ", ".join(f"'{name}'" for name in BUNDLED_DATASETS)
        raise NasvitError(f"dataset not found: {path} (give {names}, a directory or an .npz)")
    if path.is_file():
        if path.suffix != ".npz":
            raise NasvitError(f"{path}: unsupported dataset file (expected an .npz with x and y)")
        return _load_npz(path, seed, fractions)
    if (path / "data_batch_1").exists() or (path / "test_batch").exists():
        return _load_cifar(path, seed, fractions)
    return _load_image_folder(path, seed, fractions)


def _load_npz(path: Path, seed: int, fractions: tuple[float, float]) -> Dataset:
    try:
        with np.load(path, allow_pickle=False) as archive:
            missing = [k for k in ("x", "y") if k not in archive.files]
            if missing:
                raise NasvitError(
                    f"{path}: missing array(s) {', '.join(missing)} (found: "
                    f"{', '.join(archive.files) or 'none'})"
                )
            x, y = archive["x"], archive["y"]
    except NasvitError:
        raise
    except Exception as exc:  # zipfile / numpy raise several types for corrupt archives
        raise NasvitError(f"{path}: not a readable .npz file ({exc})".splitlines()[0]) from None
    images = _channels_first(path, x)
    labels = _labels(path, y, images.shape[0])
    return _build(str(path), images, labels, seed, fractions)


def _channels_first(path: Path | str, x: np.ndarray) -> np.ndarray:
    """N,H,W / N,H,W,C / N,C,H,W (C in 1, 3) -> N,C,H,W float32 scaled to [0, 1] if uint8."""
    if not np.issubdtype(x.dtype, np.number) or x.ndim not in (3, 4) or x.shape[0] == 0:
        raise NasvitError(
            f"{path}: x must be a non-empty numeric array N,H,W or N,H,W,C or N,C,H,W; "
            f"got shape {x.shape} dtype {x.dtype}"
        )
    if x.ndim == 3:
        x = x[:, None]
    elif x.shape[-1] in (1, 3) and x.shape[1] not in (1, 3):
        x = np.transpose(x, (0, 3, 1, 2))
    elif x.shape[1] not in (1, 3):
        raise NasvitError(f"{path}: cannot find a channel axis of size 1 or 3 in x {x.shape}")
    scale = 255.0 if x.dtype == np.uint8 else 1.0
    return np.ascontiguousarray(x, dtype=np.float32) / scale


def _labels(path: Path | str, y: np.ndarray, n: int) -> np.ndarray:
    if y.ndim != 1 or not np.issubdtype(y.dtype, np.integer):
        raise NasvitError(f"{path}: y must be a 1-D integer array, got shape {y.shape} {y.dtype}")
    if y.shape[0] != n:
        raise NasvitError(f"{path}: {n} images but {y.shape[0]} labels")
    if y.min() < 0:
        raise NasvitError(f"{path}: labels must be >= 0, found {int(y.min())}")
    return y.astype(np.int64)


def _read_cifar_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    if not path.is_file():
        raise NasvitError(f"CIFAR-10 batch missing: {path}")
    try:
        with path.open("rb") as handle:
            # The CIFAR-10 python format is a pickle; only load directories you trust.
            batch = pickle.load(handle, encoding="bytes")
    except Exception as exc:
        raise NasvitError(f"{path}: not a CIFAR-10 python batch ({exc})".splitlines()[0]) from None
    if not isinstance(batch, dict) or b"data" not in batch or b"labels" not in batch:
        raise NasvitError(f"{path}: a CIFAR-10 batch is a dict with b'data' and b'labels'")
    data = np.asarray(batch[b"data"])
    if data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or data.dtype != np.uint8:
        raise NasvitError(
            f"{path}: data must be uint8 of shape (N, 3072), got {data.shape} {data.dtype}"
        )
    labels = _labels(path, np.asarray(batch[b"labels"]), data.shape[0])
    return data.reshape(-1, 3, 32, 32).astype(np.float32) / 255.0, labels


def _load_cifar(path: Path, seed: int, fractions: tuple[float, float]) -> Dataset:
    train_files = sorted(path.glob("data_batch_*"))
    if not train_files:
        raise NasvitError(f"{path}: no data_batch_* files next to test_batch")
    parts = [_read_cifar_batch(f) for f in train_files]
    x = np.concatenate([p[0] for p in parts])
    y = np.concatenate([p[1] for p in parts])
    test = _read_cifar_batch(path / "test_batch")
    names: tuple[str, ...] = ()
    meta = path / "batches.meta"
    if meta.is_file():
        try:
            with meta.open("rb") as handle:
                raw = pickle.load(handle, encoding="bytes")
            names = tuple(n.decode() for n in raw[b"label_names"])
        except Exception:  # the class names are cosmetic; a bad meta file is not fatal
            names = ()
    return _build(str(path), x, y, seed, fractions, test=test, class_names=names)


def _load_image_folder(path: Path, seed: int, fractions: tuple[float, float]) -> Dataset:
    try:
        from PIL import Image
    except ImportError:
        raise NasvitError("ImageFolder datasets need Pillow: pip install pillow") from None
    classes = sorted(d.name for d in path.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not classes:
        raise NasvitError(
            f"{path}: not a dataset directory (expected CIFAR-10 batches or one subfolder "
            "per class with images)"
        )
    arrays: list[np.ndarray] = []
    labels: list[int] = []
    size: tuple[int, int] | None = None
    mode = "RGB"
    for label, name in enumerate(classes):
        files = sorted(f for f in (path / name).iterdir() if f.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise NasvitError(
                f"{path / name}: class folder holds no images ({', '.join(IMAGE_SUFFIXES)})"
            )
        for file in files:
            try:
                with Image.open(file) as image:
                    image.load()
                    if size is None:
                        # Grayscale trees stay 1-channel; the first image decides for all.
                        mode = "L" if image.mode in ("1", "L", "I", "I;16", "F") else "RGB"
                        size = image.size
                    converted = image.convert(mode)
                    if converted.size != size:
                        converted = converted.resize(size, Image.Resampling.BILINEAR)
            except Exception as exc:
                raise NasvitError(f"{file}: cannot read image ({exc})".splitlines()[0]) from None
            array = np.asarray(converted, dtype=np.uint8)
            arrays.append(array[None] if array.ndim == 2 else array.transpose(2, 0, 1))
            labels.append(label)
    x = np.stack(arrays).astype(np.float32) / 255.0
    return _build(str(path), x, np.asarray(labels), seed, fractions, class_names=tuple(classes))

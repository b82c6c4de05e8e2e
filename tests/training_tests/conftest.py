"""Shared fixtures: a tiny registered EfficientFormer space, digits, and one trained supernet.

The real efficientformer supernet has ~118M parameters whatever its restrictions; these tests
use the same family at a few thousand parameters so a training epoch takes seconds.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from nasvit.data import Dataset, load_digits
from nasvit.search_spaces import SearchSpace, get_space, registry
from nasvit.search_spaces.efficientformer import EfficientFormerConfig, EfficientFormerSpace
from nasvit.training.loop import TrainConfig, train_supernet

TINY = "tiny-efficientformer-test"
TINY_CONFIG = EfficientFormerConfig(
    resolutions=(16, 32),
    widths=((8, 16), (16, 24), (16, 32), (32, 48)),
    depths=((1, 2), (1, 2), (1, 2, 3), (1, 2)),
    vit_nums=(0, 1),
    num_heads=2,
    key_dim=8,
)


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    # The machines have 2 shared cores; oversubscribed OpenMP threads make torch several times
    # slower, and one thread also keeps CPU results reproducible across runs.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def tiny_registered(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Register the tiny space for one test (checkpoints reload spaces by name)."""
    monkeypatch.setitem(registry._FACTORIES, TINY, lambda: EfficientFormerSpace(TINY_CONFIG))
    get_space.cache_clear()
    yield
    get_space.cache_clear()


@pytest.fixture
def tiny_space() -> SearchSpace:
    return get_space(TINY).restrict(resolution=[32])


@pytest.fixture(scope="session")
def digits() -> Dataset:
    return load_digits()


@pytest.fixture(scope="session")
def trained_checkpoint(tmp_path_factory: pytest.TempPathFactory, digits: Dataset) -> Path:
    """A tiny supernet trained 3 epochs on all of digits (shared by evaluation tests)."""
    out = tmp_path_factory.mktemp("trained") / "tiny.pt"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # session fixtures run before the per-test _one_thread
    with pytest.MonkeyPatch.context() as patch:
        patch.setitem(registry._FACTORIES, TINY, lambda: EfficientFormerSpace(TINY_CONFIG))
        get_space.cache_clear()
        space = get_space(TINY).restrict(resolution=[32])
        train_supernet(space, digits, TrainConfig(epochs=3, lr=3e-3), out, progress=False)
    get_space.cache_clear()
    torch.set_num_threads(threads)
    return out

"""Fixtures of the training tests: the tiny EfficientFormer space (nasvit_testing.tiny_space)
registered for each test, digits, and one trained supernet."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from nasvit.data import Dataset, load_digits
from nasvit.search_spaces import SearchSpace, get_space, registry
from nasvit.search_spaces.efficientformer import EfficientFormerSpace
from nasvit.training import TrainConfig, train_supernet

from nasvit_testing.tiny_space import TINY, TINY_CONFIG


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

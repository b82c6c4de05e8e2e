"""Uniform random sampling: the baseline every other controller must beat."""

from __future__ import annotations

from nasvit.search_spaces import Architecture
from nasvit.searching.controllers.base import Controller


class RandomController(Controller):
    """Uniform samples of the space (the baseline every other controller must beat)."""

    name = "random"

    def ask(self, n: int) -> list[Architecture]:
        return self._fill(n, lambda: self.space.sample(self.rng))

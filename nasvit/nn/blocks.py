"""Block specifications: the only thing the latency database knows about architectures.

A search space *lowers* an architecture to an ordered list of :class:`BlockSpec`. Each spec has a
versioned canonical key (so a lookup table entry can be shared by every architecture that contains
the same block at the same shape) and can build a standalone module for profiling. The latency
database depends on this module only, never on a search space.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import torch
from torch import nn

#: Bump when the meaning of a key changes (block code, key fields), so stale table entries are
#: never matched against new blocks.
BLOCK_KEY_SCHEMA = "nasvit-block/1"

ParamValue = int | float | str | bool


def _format_shape(shape: tuple[int, ...]) -> str:
    return "x".join(str(d) for d in shape)


# Searches lower thousands of candidates per second, and the same few hundred blocks recur in
# all of them: formatting each key once instead of per lookup made lowering several times cheaper.
@functools.lru_cache(maxsize=65536)
def _canonical_key(
    kind: str,
    input_shape: tuple[int, ...],
    output_shape: tuple[int, ...],
    params: tuple[tuple[str, ParamValue], ...],
) -> str:
    param_text = ",".join(f"{name}={value}" for name, value in params)
    return (
        f"{BLOCK_KEY_SCHEMA}|{kind}|in={_format_shape(input_shape)}"
        f"|out={_format_shape(output_shape)}|{param_text}"
    )


@dataclass(frozen=True)
class BlockSpec:
    """One block of a lowered architecture.

    Attributes:
        kind: block type within its family, e.g. ``"efficientformer.mb4d"``.
        input_shape: full input shape including batch, e.g. ``(1, 48, 56, 56)``.
        output_shape: full output shape including batch.
        params: the block's own hyper-parameters (channels, kernel, ratio, ...).
        builder: builds a fresh module (random weights are fine: latency does not depend on them).
    """

    kind: str
    input_shape: tuple[int, ...]
    output_shape: tuple[int, ...]
    params: Mapping[str, ParamValue] = field(default_factory=dict)
    builder: Callable[[], nn.Module] | None = field(default=None, compare=False, repr=False)

    @functools.cached_property  # specs are reused across lowerings; frozen fields never change
    def key(self) -> str:
        """Versioned canonical key: schema, kind, shapes and sorted params."""
        return _canonical_key(
            self.kind, self.input_shape, self.output_shape, tuple(sorted(self.params.items()))
        )

    def build(self) -> nn.Module:
        """A fresh module in eval mode that maps ``input_shape`` to ``output_shape``."""
        if self.builder is None:
            raise ValueError(f"block {self.kind} has no builder")
        return self.builder().eval()

    def example_input(self) -> torch.Tensor:
        return torch.randn(self.input_shape)

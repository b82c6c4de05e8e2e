"""A tiny EfficientFormer space for training tests.

The real efficientformer supernet has ~118M parameters whatever its restrictions; this is the
same family at a few thousand parameters, so a training epoch takes seconds. Checkpoints reload
spaces by name, so tests register it as ``TINY`` (tests/training_tests/conftest.py does).
"""

from __future__ import annotations

from nasvit.search_spaces.efficientformer import EfficientFormerConfig

TINY = "tiny-efficientformer-test"
TINY_CONFIG = EfficientFormerConfig(
    resolutions=(16, 32),
    widths=((8, 16), (16, 24), (16, 32), (32, 48)),
    depths=((1, 2), (1, 2), (1, 2, 3), (1, 2)),
    vit_nums=(0, 1),
    num_heads=2,
    key_dim=8,
)

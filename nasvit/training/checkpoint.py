"""Supernet checkpoints: weights plus what is needed to rebuild the module around them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from nasvit.errors import NasvitError
from nasvit.nn import Supernet
from nasvit.search_spaces import SearchSpace, get_space

CHECKPOINT_FORMAT = "nasvit.supernet/1"


def save_supernet(
    path: str | Path, space: SearchSpace, supernet: Supernet, extra: dict[str, Any] | None = None
) -> Path:
    """Write atomically (temp file + rename) so an interrupted save never leaves a torn file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "format": CHECKPOINT_FORMAT,
        "space": space.name,
        # The choices the supernet was trained on (e.g. resolutions); the search stays inside.
        "restrictions": space.restrictions,
        "num_classes": supernet.num_classes,
        "in_channels": supernet.in_channels,
        "state_dict": supernet.state_dict(),
        "extra": extra or {},
    }
    temporary = path.with_suffix(path.suffix + ".tmp")
    torch.save(payload, temporary)
    temporary.replace(path)
    return path


def load_supernet(path: str | Path) -> tuple[SearchSpace, Supernet, dict[str, Any]]:
    """Rebuild the supernet saved at ``path``; returns (space, supernet in eval mode, extra)."""
    path = Path(path)
    if not path.is_file():
        raise NasvitError(f"checkpoint not found: {path}")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for foreign or truncated files
        raise NasvitError(f"cannot read checkpoint {path}: {exc}".splitlines()[0]) from exc
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        raise NasvitError(f"{path} is not a nasvit supernet checkpoint ({CHECKPOINT_FORMAT})")
    space = get_space(payload["space"])
    if payload.get("restrictions"):
        space = space.restrict(**payload["restrictions"])
    supernet = space.build_supernet(payload["num_classes"], payload["in_channels"])
    supernet.load_state_dict(payload["state_dict"])
    supernet.eval()
    return space, supernet, payload.get("extra", {})

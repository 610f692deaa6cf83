"""Sample images for napari's *File > Open Sample > PFN instance segmentation* (the manifest's
display name; see ``sample_data/README.md``)."""

from __future__ import annotations

import numpy as np

from ..samples import SAMPLES, load_sample


def _layer(key: str) -> list[tuple[np.ndarray, dict, str]]:
    return [(load_sample(key), {"name": SAMPLES[key][1], "rgb": True}, "image")]


def skaters() -> list[tuple[np.ndarray, dict, str]]:
    """Five skateboarders at a graffiti wall (500 x 375)."""
    return _layer("skaters")


def horses() -> list[tuple[np.ndarray, dict, str]]:
    """Two riders on rearing horses (381 x 500)."""
    return _layer("horses")


def bench() -> list[tuple[np.ndarray, dict, str]]:
    """A man on a park bench (500 x 375)."""
    return _layer("bench")

"""Sample images for napari's *File > Open Sample > PFN instance segmentation* (the manifest's
display name; see ``sample_data/README.md``)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

SAMPLE_DIR = Path(__file__).resolve().parents[1] / "sample_data"

#: key -> (file, layer name): three COCO photographs holding VOC classes, at most 500 px.
SAMPLES = {
    "skaters": ("skaters.jpg", "skaters (COCO 77)"),
    "horses": ("horses.jpg", "horses (COCO 49)"),
    "cat": ("cat.jpg", "cat (COCO 443)"),
}


def load_sample(key: str) -> np.ndarray:
    """``(H, W, 3)`` uint8 RGB of sample ``key`` (one of :data:`SAMPLES`)."""
    from PIL import Image

    file = SAMPLE_DIR / SAMPLES[key][0]
    with Image.open(file) as img:
        return np.asarray(img.convert("RGB"))


def _layer(key: str) -> list[tuple[np.ndarray, dict, str]]:
    return [(load_sample(key), {"name": SAMPLES[key][1], "rgb": True}, "image")]


def skaters() -> list[tuple[np.ndarray, dict, str]]:
    """Five skateboarders at a graffiti wall (500 x 375)."""
    return _layer("skaters")


def horses() -> list[tuple[np.ndarray, dict, str]]:
    """Two riders on rearing horses (381 x 500)."""
    return _layer("horses")


def cat() -> list[tuple[np.ndarray, dict, str]]:
    """A cat on a lap on a sofa (500 x 375)."""
    return _layer("cat")

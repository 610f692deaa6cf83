"""The three sample photos shipped in ``pfn_napari/sample_data`` (see its README.md), for
every front end: napari's *File > Open Sample*, the notebook, the tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np

SAMPLE_DIR = Path(__file__).resolve().parent / "sample_data"

#: key -> (file, layer name): three COCO photographs of the classes the shipped model shows
#: (people, horses), at most 500 px.
SAMPLES = {
    "skaters": ("skaters.jpg", "skaters (COCO 77)"),
    "horses": ("horses.jpg", "horses (COCO 49)"),
    "bench": ("bench.jpg", "bench (COCO 510)"),
}


def load_sample(key: str) -> np.ndarray:
    """``(H, W, 3)`` uint8 RGB of sample ``key`` (one of :data:`SAMPLES`)."""
    from PIL import Image

    file = SAMPLE_DIR / SAMPLES[key][0]
    with Image.open(file) as img:
        return np.asarray(img.convert("RGB"))

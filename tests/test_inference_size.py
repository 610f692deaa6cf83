"""The shipped model answers the same for the same objects, whatever the canvas (issue 14).

The same photo padded onto larger canvases (the objects unchanged) must give the same counts
and the same decoded boxes in pixels; the photo resized must give boxes resized by the same
factor. The first shipped model failed the first: on this photo its boxes moved by 51 and 103
pixels (median over the people's cells) on 1.5x and 2x canvases and its person count fell to
0.40x; the shipped model (v6) moves them by 0.2 pixels and keeps the count (1.00x).
"""

from __future__ import annotations

import numpy as np
import pytest

from pfn_napari.demo import SAMPLE_DIR
from pfn_napari.inference import PAD_RGB, default_weights_path, load_model, run_network
from pfn_napari.structures import grid_size

SAMPLE = SAMPLE_DIR / "skaters.jpg"


@pytest.fixture(scope="module")
def model():
    if not default_weights_path().is_file():
        pytest.skip(f"no shipped weights at {default_weights_path()}")
    return load_model(device="cpu")


@pytest.fixture(scope="module")
def photo() -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.open(SAMPLE).convert("RGB"))


def pixel_boxes(model, image: np.ndarray, grid: tuple[int, int] | None = None):
    """``(locations in pixels (6, h, w), counts (C,), foreground (h, w))`` of the top-left
    ``grid`` cells (default: all of them)."""
    out = run_network(model, image)
    H, W = out.image_size
    gh, gw = grid or out.locations.shape[1:]
    pixels = out.locations[:, :gh, :gw] * np.array([W, H] * 3, np.float32)[:, None, None]
    foreground = out.class_probs[:, :gh, :gw].argmax(0) > 0
    return pixels, out.counts, foreground


def on_canvas(image: np.ndarray, factor: float) -> np.ndarray:
    """``image`` in the top-left corner of a canvas ``factor`` times larger, padded with the
    colour inference pads with."""
    h, w = image.shape[:2]
    canvas = np.empty((round(h * factor), round(w * factor), 3), np.uint8)
    canvas[:] = np.asarray(PAD_RGB, np.uint8)
    canvas[:h, :w] = image
    return canvas


def test_counts_and_boxes_stay_the_same_on_a_bigger_canvas(model, photo):
    h, w = photo.shape[:2]
    grid = (grid_size(h), grid_size(w))
    base, counts, fg = pixel_boxes(model, photo)
    assert fg.sum() > 50, "the model should find the skaters"
    present = counts > 0.5
    assert present.any()
    for factor in (1.5, 2.0):
        big, big_counts, _ = pixel_boxes(model, on_canvas(photo, factor), grid)
        shift = np.median(np.abs(big - base)[:, fg])  # pixels, over the foreground cells
        assert shift < 6.0, f"boxes moved by {shift:.1f} px on a {factor}x canvas"
        ratio = big_counts[present].sum() / counts[present].sum()
        assert 0.8 < ratio < 1.25, f"counts x{ratio:.2f} on a {factor}x canvas"


def test_boxes_scale_with_the_image(model, photo):
    from PIL import Image

    base, counts, fg = pixel_boxes(model, photo)
    widths = (base[4] - base[2])[fg]  # rx - lx over the foreground, pixels
    h, w = photo.shape[:2]
    small = np.asarray(Image.fromarray(photo).resize((round(w * 0.75), round(h * 0.75)),
                                                     Image.BILINEAR))
    s_base, s_counts, s_fg = pixel_boxes(model, small)
    s_widths = (s_base[4] - s_base[2])[s_fg]
    ratio = np.median(s_widths) / np.median(widths)
    assert 0.6 < ratio < 0.9, f"boxes scaled by {ratio:.2f} when the image was scaled by 0.75"
    # Per-cell counts may follow the apparent size: the v4 weights fell to 0.61x at 0.75x the
    # size, the v6 weights (share count targets) keep 0.94x (docs/model.md). Bound it loosely.
    present = counts > 0.5
    assert 0.5 < s_counts[present].sum() / counts[present].sum() < 1.5

"""What the widget tells the user about bad weights, missing or odd images (never a
traceback), over a ``ViewerModel`` (no window, no OpenGL) with the tiny hand-set model."""

from __future__ import annotations

import json
import torch  # noqa: F401  (loaded before any OpenGL context, see pfn_napari.napari._hide_triton)
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("napari")
pytest.importorskip("pytestqt")

from napari_helpers import (COUNT, PERSON, add_image, make_tiny_weights, small_image,  # noqa: E402,F401
                            tiny_weights, widget)

from pfn_napari.napari import _layers as L  # noqa: E402

pytestmark = pytest.mark.gui




@pytest.mark.parametrize("content, expected", [
    (None, "weights file not found"),
    (b"not a checkpoint at all", "tiny_bad.pt"),
])
def test_bad_weights_give_a_message_not_a_traceback(widget, tmp_path, content, expected):
    bad = tmp_path / "tiny_bad.pt"
    if content is not None:
        bad.write_bytes(content)
    widget.weights_edit.setText(str(bad))
    add_image(widget, small_image(64, 64))
    widget.run_sync()  # must not raise
    assert widget.last_error is not None and expected in widget.last_error
    assert "Traceback" not in widget.last_error and widget.last_error.startswith("PFN: ")
    assert widget.message_label.text() == widget.last_error
    assert L.INSTANCES not in widget.viewer.layers and widget.run_button.isEnabled()


def test_truncated_weights_give_a_message(widget, tiny_weights, tmp_path):
    cut = tmp_path / "cut.pt"
    cut.write_bytes(tiny_weights.read_bytes()[:5000])
    widget.weights_edit.setText(str(cut))
    add_image(widget, small_image(64, 64))
    widget.run_sync()
    assert widget.last_error is not None and "cut.pt" in widget.last_error


def test_no_image_layer_gives_a_message(widget):
    widget.run_sync()
    assert widget.last_error is not None and "no image layer" in widget.last_error


def test_grayscale_and_rgba_are_converted_with_a_note(widget):
    rgb = small_image(64, 80)
    add_image(widget, rgb.mean(axis=2).astype(np.uint8), name="gray")
    widget.run_sync()
    assert widget.last_error is None and "grayscale" in widget.last_message
    assert widget.viewer.layers[L.INSTANCES].data.shape == (64, 80)
    rgba = np.concatenate([rgb, np.full((64, 80, 1), 255, np.uint8)], axis=2)
    add_image(widget, rgba, name="rgba")
    widget.run_sync()
    assert widget.last_error is None and "alpha" in widget.last_message


def test_a_stack_is_refused_with_a_message(widget):
    add_image(widget, np.zeros((4, 32, 32), np.uint8), name="stack")
    widget.run_sync()
    assert widget.last_error is not None and "shape (4, 32, 32)" in widget.last_error


def test_huge_image_is_resized_and_layers_scaled_back(widget, monkeypatch):
    import pfn_napari.inference as inference

    monkeypatch.setattr(inference, "MAX_SIDE", 80)  # a 160-px image counts as 'huge'
    monkeypatch.setattr(inference.fit_image, "__defaults__", (80, "image"))
    add_image(widget, small_image(120, 160))
    widget.run_sync()
    assert widget.last_error is None, widget.last_error
    assert "resized to 80x60" in widget.last_message
    layers = widget.viewer.layers
    assert layers[L.INSTANCES].data.shape == (120, 160)  # masks back at the image's size
    assert layers[L.LOCATIONS].data.shape == (6, 8, 10)  # the 80x60 image's grid
    assert tuple(layers[L.LOCATIONS].scale) == (1.0, 16.0, 16.0)

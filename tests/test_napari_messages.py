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

from napari_helpers import (COUNT, NAPARI_WARNINGS_ARE_ERRORS, PERSON, add_image,  # noqa: E402,F401
                            make_tiny_weights, small_image, tiny_weights, widget)

from pfn_napari import layer_data as L  # noqa: E402

pytestmark = [pytest.mark.gui, *NAPARI_WARNINGS_ARE_ERRORS]




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
    assert widget.layer(L.INSTANCES) is None and widget.run_button.isEnabled()
    assert [layer.name for layer in widget.viewer.layers] == ["photo"]


def test_truncated_weights_give_a_message(widget, tiny_weights, tmp_path):
    cut = tmp_path / "cut.pt"
    cut.write_bytes(tiny_weights.read_bytes()[:5000])
    widget.weights_edit.setText(str(cut))
    add_image(widget, small_image(64, 64))
    widget.run_sync()
    assert widget.last_error is not None and "cut.pt" in widget.last_error


def test_no_image_layer_gives_a_message(widget):
    npe2 = pytest.importorskip("npe2")
    widget.run_sync()
    assert widget.last_error is not None and "no image layer" in widget.last_error
    # the menu path it gives is napari's: File > Open Sample > <the manifest's display_name>
    display_name = npe2.PluginManifest.from_distribution("pfn-napari").display_name
    assert f"File > Open Sample > {display_name}" in widget.last_error


def test_grayscale_and_rgba_are_converted_with_a_note(widget):
    rgb = small_image(64, 80)
    add_image(widget, rgb.mean(axis=2).astype(np.uint8), name="gray")
    widget.run_sync()
    assert widget.last_error is None and "grayscale" in widget.last_message
    assert widget.layer(L.INSTANCES).data.shape == (64, 80)
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
    assert widget.layer(L.INSTANCES).data.shape == (120, 160)  # masks back at the image's size
    assert widget.layer(L.LOCATIONS).data.shape == (8, 10)  # the 80x60 image's grid
    assert tuple(widget.layer(L.LOCATIONS).scale) == (16.0, 16.0)


def test_status_line_follows_the_result_in_english(widget):
    add_image(widget, small_image(120, 160))
    widget.run_sync()
    assert widget.last_message.startswith("photo: 2 instances (PFN ran on cpu in ")
    widget.set_count(PERSON, 3)
    assert widget.last_message.startswith("photo: 3 instances after re-clustering in ")
    assert "3 instances" in widget.timing_label.text()
    widget.set_count(PERSON, 1)
    assert widget.last_message.startswith("photo: 1 instance after re-clustering")
    assert "1 instance " in widget.timing_label.text() and "1 instances" not in widget.last_message
    widget.sigma_spin.setValue(0.3)  # a knob: the line still tells the current number
    assert widget.last_message.startswith("photo: 1 instance after re-clustering")
    assert widget.message_label.text() == widget.last_message


def test_plural():
    assert [L.plural(n, "instance") for n in (0, 1, 2)] == ["0 instances", "1 instance",
                                                             "2 instances"]

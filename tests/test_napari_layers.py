"""The plugin's pure parts: manifest, sample data, layer geometry, image preparation, writer.
No window and no OpenGL needed."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from pfn_napari.config import VOC_CLASSES as VOC
from pfn_napari.errors import PFNError
from pfn_napari import layer_data as L
from pfn_napari.session import TuneParams, prepare_image
from pfn_napari.structures import NetworkOutput

REPO = Path(__file__).resolve().parents[1]


# ----------------------------------------------------------------------------- packaging
def test_manifest_is_valid_and_found_through_the_entry_point():
    npe2 = pytest.importorskip("npe2")
    manifest = npe2.PluginManifest.from_distribution("pfn-napari")
    assert manifest.name == "pfn-napari"
    manifest.validate_imports()  # every python_name imports
    contrib = manifest.contributions
    assert [w.display_name for w in contrib.widgets] == ["PFN instance segmentation"]
    assert [s.key for s in contrib.sample_data] == ["skaters", "horses", "bench"]
    assert contrib.writers[0].layer_types == ["labels"]
    # the top-level napari.yaml is the package's file (a link), not a copy that can drift
    top = REPO / "napari.yaml"
    assert top.resolve() == (REPO / "pfn_napari" / "napari.yaml").resolve()


def test_sample_images_are_small_real_photos_with_a_readme():
    from pfn_napari import samples as S
    from pfn_napari.napari import _sample_data as N

    shapes = {"skaters": (375, 500, 3), "horses": (500, 381, 3), "bench": (375, 500, 3)}
    readme = (S.SAMPLE_DIR / "README.md").read_text()
    for key, shape in shapes.items():
        data, meta, kind = getattr(N, key)()[0]
        assert data.shape == shape and data.dtype == np.uint8 and kind == "image" and meta["rgb"]
        assert data.std() > 20  # a photo, not a blank
        assert S.SAMPLES[key][0] in readme
    assert "CC BY 4.0" in readme and "Flickr" in readme


# ----------------------------------------------------------------------------- geometry
def test_geometry_scales_grid_layers_onto_the_image():
    same = L.Geometry((375, 500), (375, 500))
    assert same.grid_scale == (8.0, 8.0) and not same.resized
    half = L.Geometry((400, 600), (200, 300))
    assert half.ratio == (2.0, 2.0) and half.grid_scale == (16.0, 16.0) and half.resized


def _net(locations: np.ndarray, size: tuple[int, int], encoding: str = "box6") -> NetworkOutput:
    gh, gw = locations.shape[1:]
    probs = np.zeros((3, gh, gw), np.float32)
    probs[1] = 1.0
    return NetworkOutput(class_probs=probs, locations=locations.astype(np.float32),
                         counts=np.array([1.0, 0.0], np.float32), image_size=size,
                         encoding=encoding)


def test_locations_become_napari_pixel_coordinates():
    values = np.array([0.5, 0.25, 0.1, 0.2, 0.9, 0.8])  # cx cy lx ly rx ry
    net = _net(np.broadcast_to(values[:, None, None], (6, 2, 3)), (9, 17))
    geom = L.Geometry((9, 17), (9, 17))
    data, kw = L.locations_layer(net, geom)
    # x channels * W - 0.5, y channels * H - 0.5 (pixel centers sit on integers in napari)
    expected = [0.5 * 17 - 0.5, 0.25 * 9 - 0.5, 0.1 * 17 - 0.5, 0.2 * 9 - 0.5,
                0.9 * 17 - 0.5, 0.8 * 9 - 0.5]
    np.testing.assert_allclose(data[:, 1, 2], expected, rtol=1e-6)
    assert kw["scale"] == (1.0, 8.0, 8.0)
    assert kw["metadata"]["channels"] == ("cx", "cy", "lx", "ly", "rx", "ry")
    # offsets are lengths: scaled, not shifted
    off = _net(np.stack([np.full((2, 3), 0.1), np.full((2, 3), -0.2)]), (9, 17), "offsets2")
    np.testing.assert_allclose(L.locations_in_pixels(off, geom)[:, 0, 0], [1.7, -1.8], rtol=1e-6)


def test_vectors_run_from_grid_pixels_to_predicted_centers():
    geom = L.Geometry((24, 32), (24, 32))  # grid 3 x 4
    centers = np.stack([np.full((3, 4), 0.5), np.full((3, 4), 0.25)])  # x = 16, y = 6 (continuous)
    fg = np.ones((3, 4), bool)
    fg[2, 2] = False
    assignment = np.zeros((3, 4), np.int32)
    assignment[0, 0] = 1
    data, kw = L.vectors_layer(centers, fg, assignment, geom, step=2)
    # cells (0,0), (0,2), (2,0) at pixels (0,0), (0,16), (16,0); (2,2) is background
    np.testing.assert_allclose(data[:, 0], [[0, 0], [0, 16], [16, 0]])
    np.testing.assert_allclose(data[:, 0] + data[:, 1], [[5.5, 15.5]] * 3)
    cmap = L.instance_colormap(1)
    np.testing.assert_allclose(kw["edge_color"][0], cmap[1])
    np.testing.assert_allclose(kw["edge_color"][1], cmap[None])  # grey: in no instance
    assert list(kw["features"]["instance"]) == [1, 0, 0]


def test_arrows_stop_where_they_leave_the_image():
    geom = L.Geometry((10, 20), (10, 20))  # napari extent: rows [-0.5, 9.5], cols [-0.5, 19.5]
    start = np.array([[4.5, 9.5], [4.5, 9.5], [0.0, 0.0]], np.float32)
    end = np.array([[4.5, 29.5], [-5.5, 19.5], [3.0, 4.0]], np.float32)
    new, cut = L.clip_vectors(start, end, geom)
    # right by 20 -> cut at col 19.5; up-right (-10, +10) -> leaves through the top at t = 0.5
    np.testing.assert_allclose(new, [[4.5, 19.5], [-0.5, 14.5], [3.0, 4.0]])
    assert cut.tolist() == [True, True, False]


def test_a_center_right_of_a_640_wide_photo_is_clipped_and_marked():
    geom = L.Geometry((480, 640), (480, 640))
    gh, gw = 60, 80
    centers = np.zeros((2, gh, gw), np.float32)
    centers[0], centers[1] = 692.5 / 640, 0.5  # x = 692 (napari) on a 640-wide image
    fg = np.zeros((gh, gw), bool)
    fg[10, 70] = fg[20, 20] = True
    centers[0, 20, 20] = 100.5 / 640  # inside
    data, kw = L.vectors_layer(centers, fg, np.ones((gh, gw), np.int32), geom, step=2)
    ends = data[:, 0] + data[:, 1]
    assert ends[:, 1].max() <= 639.5 + 1e-4
    assert kw["features"]["clipped"].tolist() == [True, False]  # cells (10, 70), (20, 20)
    # (10, 70) sits on pixel (80, 560) and points at (239.5, 692): cut where col = 639.5
    t = (639.5 - 560) / (692 - 560)
    np.testing.assert_allclose(ends[0], [80 + t * 159.5, 639.5], atol=1e-3)
    np.testing.assert_allclose(ends[1], [239.5, 100.0], atol=1e-4)  # inside: untouched


def test_one_location_channel_per_layer_named_in_its_metadata():
    values = np.array([0.5, 0.25, 0.1, 0.2, 0.9, 0.8])  # cx cy lx ly rx ry
    net = _net(np.broadcast_to(values[:, None, None], (6, 2, 3)), (9, 17))
    geom = L.Geometry((9, 17), (9, 17))
    data, kw = L.location_channel_layer(net, geom, "ly")
    assert data.shape == (2, 3) and kw["scale"] == (8.0, 8.0)
    np.testing.assert_allclose(data, 0.2 * 9 - 0.5, rtol=1e-6)
    assert kw["metadata"]["channel"] == "ly"
    assert kw["metadata"]["meaning"]["ly"] == "box top edge, row"
    assert L.layer_name(L.LOCATIONS, "photo", "ly") == "PFN locations (ly): photo"
    assert L.layer_name(L.INSTANCES, "photo") == "PFN instances: photo"
    with pytest.raises(ValueError, match="'w' is not one of"):
        L.location_channel_layer(net, geom, "w")


def test_category_layer_names_classes_and_uses_voc_colours():
    probs = np.zeros((3, 2, 2), np.float32)
    probs[2, 0, 0] = probs[1, 0, 1] = probs[0, 1] = 1.0
    net = NetworkOutput(probs, np.zeros((6, 2, 2), np.float32), np.zeros(2, np.float32), (9, 9))
    data, kw = L.category_layer(net, L.Geometry((9, 9), (9, 9)), ("cat", "dog"))
    np.testing.assert_array_equal(data, [[2, 1], [0, 0]])
    assert kw["scale"] == (8.0, 8.0)  # no full-resolution probabilities: the grid
    assert kw["features"]["class"] == ["background", "cat", "dog"]
    np.testing.assert_allclose(kw["colormap"][1][:3], np.array([128, 0, 0]) / 255)  # VOC class 1
    assert kw["colormap"][0][3] == 0  # background transparent


# ----------------------------------------------------------------------------- images
def test_prepare_image_converts_and_says_so():
    gray = np.arange(20, dtype=np.uint8).reshape(4, 5)
    rgb, notes = prepare_image(gray)
    assert rgb.shape == (4, 5, 3) and (rgb[..., 0] == gray).all() and (rgb[..., 2] == gray).all()
    assert "grayscale" in notes.converted[0]
    rgba = np.zeros((4, 5, 4), np.uint8)
    rgba[..., 3] = 7
    rgb, notes = prepare_image(rgba, rgb=True)
    assert rgb.shape == (4, 5, 3) and rgb.max() == 0 and "alpha" in notes.converted[0]
    rgb, notes = prepare_image(np.full((4, 5, 3), 0.5, np.float32), rgb=True)
    assert rgb.max() == 127 and "rescaled" in notes.converted[0]
    with pytest.raises(PFNError, match=r"shape \(4, 32, 32\)"):
        prepare_image(np.zeros((4, 32, 32)), rgb=False, name="stack")


def test_tune_params_override_only_the_exposed_fields():
    from pfn_napari.config import GroupingConfig

    base = GroupingConfig(n_init=3, scoring="ones")
    cfg = TuneParams("vote", 0.1, 0.7, 0.02, ((15, 3),)).grouping_config(base)
    assert (cfg.method, cfg.sigma, cfg.tau, cfg.min_size_frac) == ("vote", 0.1, 0.7, 0.02)
    assert (cfg.n_init, cfg.scoring) == (3, "ones")
    assert TuneParams(count_override=((15, 3),)).overrides() == {15: 3}
    assert TuneParams().overrides() is None
    # the ImageNet step: untouched (None / True) or off (False), never switched on from nothing
    from pfn_napari.config import ImageNetConfig

    with_step, without = ImageNetConfig(weight=5.0), ImageNetConfig()
    assert TuneParams().imagenet_config(with_step).active
    assert TuneParams(imagenet=True).imagenet_config(with_step).active
    assert not TuneParams(imagenet=False).imagenet_config(with_step).active
    assert not TuneParams(imagenet=True).imagenet_config(without).active


# ----------------------------------------------------------------------------- writer
def _edited_labels() -> tuple[np.ndarray, dict]:
    labels = np.zeros((6, 8), np.int32)
    labels[0:2, 0:3] = 1  # person, 6 px
    labels[3:6, 4:8] = 3  # dog, 12 px (id 2 was erased by hand)
    labels[5, 0] = 9  # painted by hand, no features row
    features = {"index": [0, 1, 2, 3], "class_id": [0, 15, 12, 12],
                "class": ["background", "person", "dog", "dog"], "score": [0, 0.9, 0.8, 0.7]}
    return labels, features


def test_instances_from_edited_labels():
    labels, features = _edited_labels()
    inst, ids = L.instances_from_labels(labels, features, image_id="x")
    assert ids == [1, 3, 9]
    assert inst.classes.tolist() == [15, 12, 12]  # id 9 takes the last described class
    np.testing.assert_allclose(inst.scores, [0.9, 0.7, 1.0])
    assert inst.masks.sum(axis=(1, 2)).tolist() == [6, 12, 1]


def test_an_id_painted_beyond_pfns_gets_its_own_colour():
    """The ids PFN made keep their colours; an id above them (the layer's *new* button, the
    next free id) is coloured too, not grey, and unlike its neighbours (issue 28)."""
    from pfn_napari.structures import Instances

    Labels = pytest.importorskip("napari.layers").Labels
    masks = np.zeros((3, 4, 6), bool)
    for k in range(3):
        masks[k, :, 2 * k:2 * k + 2] = True
    data, kw = L.instances_layer(Instances(masks, np.array([15, 15, 12]),
                                           np.ones(3, np.float32), "x"), VOC)
    cmap = Labels(data, colormap=kw["colormap"]).colormap  # what napari makes of it
    rgba = cmap.map(np.array([0, 1, 2, 3, 4, 5, 999, 1000, 1001]))  # (9, 4)
    assert rgba[0, 3] == 0  # background transparent
    for k in (1, 2, 3):  # PFN's ids: the colours of the arrows and of the overlays
        np.testing.assert_allclose(rgba[k], L.instance_colormap(3)[k], atol=1e-6)
    # id 4, the next free id: hue (3 * 0.618 + 0.3) % 1 = 0.154 at s 0.85, v 0.95
    np.testing.assert_allclose(rgba[4] * 255, [242, 227, 36, 255], atol=0.51)
    for k in (4, 7):  # ids 4 and 1000
        assert rgba[k, 3] == 1.0 and np.ptp(rgba[k, :3]) > 0.5  # opaque, saturated: not grey
        assert np.abs(rgba[k] - rgba[k - 1]).max() > 0.3  # unlike the id below ...
        assert np.abs(rgba[k] - rgba[k + 1]).max() > 0.3  # ... and the id above


def test_a_chosen_class_rewrites_the_instances_features_row():
    """Set class: the row's class and class_id change; a class the model lacks is numbered
    after the model's (21, 22 with the 20 VOC classes) and renumbered when no longer used."""
    labels, features = _edited_labels()
    table = L.with_instance_class(features, 3, "kayak", VOC)
    assert table["class"].tolist() == ["background", "person", "dog", "kayak"]
    assert table["class_id"].tolist() == [0, 15, 12, 21]
    table = L.with_instance_class(table, 9, "canoe", VOC)  # painted, no row yet: one added
    assert table["index"].tolist() == [0, 1, 2, 3, 9]
    assert table["class_id"].tolist()[3:] == [21, 22] and table["score"].tolist()[4] == 1.0
    assert L.feature_classes(table, VOC) == (*VOC, "kayak", "canoe")
    table = L.with_instance_class(table, 3, "cat", VOC)  # kayak no longer used: canoe is 21
    assert table["class_id"].tolist() == [0, 15, 12, 8, 21]
    assert L.feature_classes(table, VOC) == (*VOC, "canoe")
    inst, ids = L.instances_from_labels(labels, table)
    assert ids == [1, 3, 9] and inst.classes.tolist() == [15, 8, 21]


def test_a_painted_id_gets_a_features_row_with_the_last_class():
    labels, features = _edited_labels()
    table = L.with_painted_rows(labels, features, VOC)
    assert table["index"].tolist() == [0, 1, 2, 3, 9]
    assert table.iloc[4][["class_id", "class", "score"]].tolist() == [12, "dog", 1.0]
    assert L.with_painted_rows(labels, table, VOC) is None  # every id has its row


def test_writer_writes_instance_png_and_coco_json(tmp_path):
    from PIL import Image
    from pycocotools.coco import COCO

    from pfn_napari.config import VOC_CLASSES
    from pfn_napari.napari._writer import write_instances

    labels, features = _edited_labels()
    meta = {"features": features, "metadata": {"class_names": VOC_CLASSES, "image_layer": "pets"}}
    written = write_instances(str(tmp_path / "pets.json"), labels, meta)
    assert written == [str(tmp_path / "pets.png"), str(tmp_path / "pets.json")]
    np.testing.assert_array_equal(np.asarray(Image.open(written[0])), labels)
    coco = COCO(written[1])
    anns = {a["id"]: a for a in coco.loadAnns(coco.getAnnIds())}
    assert sorted(anns) == [1, 3, 9]  # annotation id = id in the PNG
    assert anns[3]["category_id"] == 12 and anns[3]["area"] == 12.0
    assert anns[3]["bbox"] == [4.0, 3.0, 4.0, 3.0]  # x, y, w, h
    assert anns[1]["score"] == pytest.approx(0.9)
    doc = json.loads(Path(written[1]).read_text())
    assert doc["images"] == [{"id": 1, "file_name": "pets", "height": 6, "width": 8}]
    assert doc["categories"][11] == {"id": 12, "name": "dog"}


def test_writer_through_npe2(tmp_path):
    npe2 = pytest.importorskip("npe2")
    npe2.PluginManager.instance().discover()  # napari does this at start-up
    labels, features = _edited_labels()
    out = npe2.write(tmp_path / "seg.png", [(labels, {"features": features}, "labels")],
                     plugin_name="pfn-napari")
    assert sorted(Path(p).name for p in out) == ["seg.json", "seg.png"]


def test_writer_refuses_a_3d_layer(tmp_path):
    from pfn_napari.napari._writer import write_instances

    with pytest.raises(PFNError, match="2-D"):
        write_instances(str(tmp_path / "x.png"), np.zeros((2, 3, 4), np.int32), {})


def test_location_channel_is_foreground_only_with_its_range():
    values = np.array([0.5, 0.25, 0.1, 0.2, 0.9, 0.8])  # cx cy lx ly rx ry
    net = _net(np.broadcast_to(values[:, None, None], (6, 2, 3)), (9, 17))
    net.class_probs[:, 0, 0] = [1.0, 0.0, 0.0]  # cell (0, 0) is background
    geom = L.Geometry((9, 17), (9, 17))
    data, kw = L.location_channel_layer(net, geom, "cx")
    assert np.isnan(data[0, 0]) and np.isfinite(data.ravel()[1:]).all()
    np.testing.assert_allclose(data[1], 0.5 * 17 - 0.5)
    assert kw["contrast_limits"] == (-0.5, 16.5)  # columns of a 17-wide image
    assert L.location_channel_layer(net, geom, "ry")[1]["contrast_limits"] == (-0.5, 8.5)
    assert kw["metadata"]["scale"] == ("cx (instance center, column): turbo colours, blue "
                                       "-0.5 px to red 16.5 px; background transparent")


def test_objects_of_the_imagenet_step_get_arrows_to_their_box_center():
    geom = L.Geometry((24, 32), (24, 32))  # grid 3 x 4, cells on pixels (8i, 8j)
    centers = np.zeros((2, 3, 4), np.float32)
    fg = np.zeros((3, 4), bool)  # no network object
    mask = np.zeros((1, 24, 32), bool)
    mask[0, 0:20, 0:20] = True  # rows 0..19, cols 0..19: box center (9.5, 9.5)
    data, kw = L.vectors_layer(centers, fg, np.zeros((3, 4), np.int32), geom, step=1,
                               prior=(mask, np.array([3])))
    # grid pixels inside the mask: (0,0) (0,8) (0,16) (8,0) (8,8) (8,16) (16,0) (16,8) (16,16)
    starts = [[r, c] for r in (0, 8, 16) for c in (0, 8, 16)]
    np.testing.assert_allclose(data[:, 0], starts)
    np.testing.assert_allclose(data[:, 0] + data[:, 1], [[9.5, 9.5]] * 9)
    assert list(kw["features"]["instance"]) == [3] * 9 and all(kw["features"]["prior"])
    np.testing.assert_allclose(kw["edge_color"][0], L.instance_colormap(3)[3])


def test_reclustering_marks_the_instances_the_imagenet_step_named():
    from types import SimpleNamespace

    from pfn_napari.session import _from_prior
    from pfn_napari.structures import Instances

    masks = np.zeros((3, 4, 4), bool)
    masks[0, 0, :] = masks[1, 1, :] = masks[2, 3, :] = True  # rows 0, 1, 3
    inst = Instances(masks, np.array([15, 15, 12]), np.ones(3, np.float32))
    prior = np.zeros((4, 4), np.uint8)
    prior[3, :] = 12  # the third instance's pixels: named by the prior
    result = SimpleNamespace(instances=inst, label_map=inst.label_map(), prior_labels=prior)
    assert _from_prior(result).tolist() == [False, False, True]
    assert _from_prior(SimpleNamespace(instances=inst, label_map=None,
                                       prior_labels=None)).tolist() == [False] * 3

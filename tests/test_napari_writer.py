"""The napari export (instance PNG + COCO JSON) reads back with ``pfn``: as ``coco:`` data and
as ``pfn evaluate --predictions`` (issue 30, item 13)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from napari_helpers import small_image, tiny_weights, widget  # noqa: F401 (fixtures)

from pfn_napari.cli import main
from pfn_napari.config import VOC_CLASSES
from pfn_napari.data import open_dataset
from pfn_napari.errors import PFNError
from pfn_napari.evaluate import read_coco_results
from pfn_napari.napari._writer import write_instances

PERSON, DOG = 15, 12


def edited_labels() -> tuple[np.ndarray, dict]:
    """Ids 1 (person, 6 px), 3 (dog, 12 px) and 9 (painted by hand, 1 px: the last described
    class, dog)."""
    labels = np.zeros((6, 8), np.int32)
    labels[0:2, 0:3] = 1
    labels[3:6, 4:8] = 3
    labels[5, 0] = 9
    features = {"index": [0, 1, 2, 3], "class_id": [0, PERSON, DOG, DOG],
                "class": ["background", "person", "dog", "dog"], "score": [0, 0.9, 0.8, 0.7]}
    return labels, features


def export(tmp_path: Path, **metadata) -> tuple[Path, Path]:
    """A photo ``photos/pets.jpg`` and the export of its labels to ``out/pets.png``."""
    photos, out = tmp_path / "photos", tmp_path / "out"
    photos.mkdir(parents=True)
    out.mkdir()
    Image.fromarray(np.full((6, 8, 3), 77, np.uint8)).save(photos / "pets.jpg", quality=100)
    labels, features = edited_labels()
    meta = {"features": features, "metadata": {"class_names": VOC_CLASSES, **metadata}}
    write_instances(str(out / "pets.png"), labels, meta)
    return photos, out / "pets.json"


def test_export_names_the_photo_with_an_integer_id(tmp_path):
    photos, js = export(tmp_path, image_path=str(tmp_path / "photos" / "pets.jpg"))
    doc = json.loads(js.read_text())
    assert doc["images"] == [{"id": 1, "file_name": "pets.jpg", "height": 6, "width": 8}]
    assert [a["image_id"] for a in doc["annotations"]] == [1, 1, 1]
    assert [a["category_name"] for a in doc["annotations"]] == ["person", "dog", "dog"]


def test_export_reads_back_as_coco_data(tmp_path):
    photos, js = export(tmp_path, image_path=str(tmp_path / "photos" / "pets.jpg"))
    ds = open_dataset(f"coco:{js}:{photos}")
    assert ds.classes == VOC_CLASSES and ds.image_ids == [1]
    sample = ds[0]
    assert abs(int(sample.image[0, 0, 0]) - 77) <= 1  # the photo, not the label PNG
    # painted largest first: dog (12 px) -> 1, person (6 px) -> 2, dog (1 px) -> 3
    assert sample.instance_classes.tolist() == [DOG, PERSON, DOG]
    assert (sample.instance_map[3:6, 4:8] == 1).all() and (sample.instance_map[0:2, 0:3] == 2).all()
    assert sample.instance_map[5, 0] == 3 and (sample.instance_map > 0).sum() == 19


def test_export_evaluates_as_predictions_on_itself_at_100(tmp_path):
    photos, js = export(tmp_path, image_path=str(tmp_path / "photos" / "pets.jpg"))
    out = tmp_path / "eval"
    assert main(["evaluate", "--predictions", str(js), "--data", f"coco:{js}:{photos}",
                 "--out", str(out)]) == 0
    data = json.loads((out / "metrics.json").read_text())
    assert data["per_class"]["person"]["ap_r"]["0.9"] == 100.0
    assert data["per_class"]["dog"]["ap_r"]["0.9"] == 100.0 and data["num_pred"] == 3


def test_export_as_predictions_on_coco_ids_and_names(tmp_path):
    """Against ground truth with COCO's ids (image 42, person 1, dog 18): the image is found by
    its file name and the classes by name."""
    photos, js = export(tmp_path, image_path=str(tmp_path / "photos" / "pets.jpg"))
    gt = tmp_path / "gt.json"
    gt.write_text(json.dumps({
        "images": [{"id": 5, "file_name": "other.jpg", "height": 6, "width": 8},
                   {"id": 42, "file_name": "pets.jpg", "height": 6, "width": 8}],
        "categories": [{"id": 1, "name": "person"}, {"id": 18, "name": "dog"}],
        "annotations": []}))
    Image.fromarray(np.zeros((6, 8, 3), np.uint8)).save(photos / "other.jpg")
    ds = open_dataset(f"coco:{gt}:{photos}")
    other, pets = read_coco_results(js, ds)
    assert len(other) == 0 and pets.image_id == 42
    assert [ds.classes[c - 1] for c in pets.classes] == ["person", "dog", "dog"]
    assert pets.masks.sum(axis=(1, 2)).tolist() == [6, 12, 1]


def test_a_class_the_model_lacks_gets_its_own_category(tmp_path):
    """A class typed in the Teach group (class_id 21 after the 20 VOC classes, named by the
    features' class) is written as category 21, not refused as outside 1..20 (issue 28)."""
    labels, features = edited_labels()
    features = {**features, "class_id": [0, PERSON, DOG, 21],
                "class": ["background", "person", "dog", "kayak"]}
    write_instances(str(tmp_path / "boats.png"), labels,
                    {"features": features, "metadata": {"class_names": VOC_CLASSES}})
    doc = json.loads((tmp_path / "boats.json").read_text())
    assert doc["categories"][-2:] == [{"id": 20, "name": "tvmonitor"}, {"id": 21, "name": "kayak"}]
    # ids 1 person, 3 kayak, 9 painted without a row: the last described class, kayak
    assert [(a["id"], a["category_id"], a["category_name"]) for a in doc["annotations"]] == \
        [(1, PERSON, "person"), (3, 21, "kayak"), (9, 21, "kayak")]


def test_export_without_a_photo_file_names_the_image_layer(tmp_path):
    _, js = export(tmp_path, pfn_image="street")
    assert json.loads(js.read_text())["images"][0]["file_name"] == "street"
    _, js = export(tmp_path / "b")
    assert json.loads(js.read_text())["images"][0]["file_name"] == "pets"  # not the label PNG


def test_export_over_the_photo_is_refused(tmp_path):
    photo = tmp_path / "pets.png"
    Image.fromarray(np.full((6, 8, 3), 77, np.uint8)).save(photo)
    labels, features = edited_labels()
    with pytest.raises(PFNError, match=r"pets\.json: the export would overwrite the photo "
                                       r".*pets\.png; choose another name"):
        write_instances(str(tmp_path / "pets.json"), labels,
                        {"features": features, "metadata": {"image_path": str(photo)}})
    assert np.asarray(Image.open(photo))[0, 0, 0] == 77


@pytest.mark.gui
def test_widget_export_names_the_photo_it_was_opened_from(widget, tmp_path):
    """The dock's Export passes the image layer's source file: the JSON reads back as data."""
    photos = tmp_path / "photos"
    photos.mkdir()
    Image.fromarray(small_image(120, 160)).save(photos / "skaters.png")
    npe2 = pytest.importorskip("npe2")
    npe2.PluginManager.instance().discover()  # napari does this at start-up
    widget.viewer.open(str(photos / "skaters.png"), plugin="napari")
    widget.image_combo.setCurrentText("skaters")
    widget.run_sync()
    written = widget.export(str(tmp_path / "out.png"))
    doc = json.loads(Path(written[1]).read_text())
    assert doc["images"] == [{"id": 1, "file_name": "skaters.png", "height": 120, "width": 160}]
    sample = open_dataset(f"coco:{written[1]}:{photos}")[0]
    np.testing.assert_array_equal(sample.image, small_image(120, 160))
    assert sample.num_instances == len(doc["annotations"]) > 0

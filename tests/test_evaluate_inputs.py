"""``pfn evaluate --predictions`` inputs: categories by name (``pfn predict``'s class indices are
not COCO's ids), images by file, polygons checked before decoding (issue 30, items 1 and 8)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pycocotools.mask as mask_utils
import pytest
from PIL import Image

from pfn_napari.cli import main
from pfn_napari.config import VOC_CLASSES
from pfn_napari.data import open_dataset
from pfn_napari.errors import DatasetError
from pfn_napari.evaluate import instances_to_coco_results, load_coco_results, read_coco_results
from pfn_napari.structures import Instances

H, W = 20, 30
PERSON, DOG = VOC_CLASSES.index("person") + 1, VOC_CLASSES.index("dog") + 1  # 15, 12


def box(r0: int, r1: int, c0: int, c1: int) -> np.ndarray:
    m = np.zeros((H, W), bool)
    m[r0:r1, c0:c1] = True
    return m


def rle(mask: np.ndarray) -> dict:
    enc = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": enc["size"], "counts": enc["counts"].decode("ascii")}


def make_coco(tmp_path: Path) -> tuple[str, Path]:
    """COCO-style ids: person 1, bench 15, dog 18 (15 is VOC's person); images named by
    12-digit ids as in COCO. Image 42: a person (rows 2..9, cols 2..9) and a dog (rows
    10..17, cols 15..27); image 7: one dog (rows 0..5, cols 0..5)."""
    images = tmp_path / "images"
    images.mkdir()
    for i in (42, 7):
        Image.fromarray(np.full((H, W, 3), 90, np.uint8)).save(images / f"{i:012d}.jpg")
    data = {"images": [{"id": 42, "file_name": "000000000042.jpg", "height": H, "width": W},
                       {"id": 7, "file_name": "000000000007.jpg", "height": H, "width": W}],
            "categories": [{"id": 1, "name": "person"}, {"id": 15, "name": "bench"},
                           {"id": 18, "name": "dog"}],
            "annotations": [
                {"id": 1, "image_id": 42, "category_id": 1, "iscrowd": 0,
                 "segmentation": [[2, 2, 10, 2, 10, 10, 2, 10]]},
                {"id": 2, "image_id": 42, "category_id": 18, "iscrowd": 0,
                 "segmentation": rle(box(10, 18, 15, 28))},
                {"id": 3, "image_id": 7, "category_id": 18, "iscrowd": 0,
                 "segmentation": rle(box(0, 6, 0, 6))}]}
    ann = tmp_path / "instances.json"
    ann.write_text(json.dumps(data))
    return f"coco:{ann}:{images}", images


def predict_style_results(sample_masks: dict[str, list[tuple[np.ndarray, int]]]) -> list[dict]:
    """What ``pfn predict`` writes: image_id = file stem, category_id = VOC class index, and
    category_name."""
    instances = [Instances(np.stack([m for m, _ in items]), [c for _, c in items],
                           [0.9] * len(items), stem)
                 for stem, items in sample_masks.items()]
    return instances_to_coco_results(instances, list(range(1, 21)), VOC_CLASSES)


def perfect_predictions() -> list[dict]:
    return predict_style_results({
        "000000000042": [(box(2, 10, 2, 10), PERSON), (box(10, 18, 15, 28), DOG)],
        "000000000007": [(box(0, 6, 0, 6), DOG)]})


def test_instances_to_coco_results_writes_the_category_name():
    entry = predict_style_results({"x": [(box(0, 2, 0, 2), PERSON)]})[0]
    assert entry["category_id"] == 15 and entry["category_name"] == "person"
    assert entry["image_id"] == "x" and entry["segmentation"]["size"] == [H, W]


def test_predict_results_on_coco_data_map_by_name_and_file_stem(tmp_path):
    """VOC's person (index 15) is not COCO's bench (id 15); stems find COCO's numeric ids."""
    spec, _ = make_coco(tmp_path)
    ds = open_dataset(spec)
    assert ds.classes == ("person", "bench", "dog") and ds.category_ids == (1, 15, 18)
    path = tmp_path / "predictions.json"
    path.write_text(json.dumps(perfect_predictions()))
    first, second = read_coco_results(path, ds)
    assert [ds.classes[c - 1] for c in first.classes] == ["person", "dog"]
    assert first.image_id == 42 and first.masks[0].sum() == 64
    assert [ds.classes[c - 1] for c in second.classes] == ["dog"] and second.image_id == 7


def test_readme_round_trip_on_coco_data_scores_100(tmp_path):
    spec, _ = make_coco(tmp_path)
    path = tmp_path / "pred" / "predictions.json"
    path.parent.mkdir()
    path.write_text(json.dumps(perfect_predictions()))
    out = tmp_path / "eval"
    assert main(["evaluate", "--predictions", str(path), "--data", spec, "--out", str(out)]) == 0
    data = json.loads((out / "metrics.json").read_text())
    assert data["per_class"]["person"]["ap_r"]["0.5"] == 100.0
    assert data["per_class"]["dog"]["ap_r"]["0.9"] == 100.0
    assert data["per_class"]["bench"]["num_pred"] == 0 and data["num_pred"] == 3
    assert data["ap_r_vol"] == 100.0


def test_results_without_names_use_the_datasets_category_ids(tmp_path):
    spec, _ = make_coco(tmp_path)
    ds = open_dataset(spec)
    entries = perfect_predictions()
    for e in entries:
        del e["category_name"]
        e["category_id"] = {PERSON: 1, DOG: 18}[e["category_id"]]  # COCO's ids
        e["image_id"] = int(e["image_id"])
    path = tmp_path / "p.json"
    path.write_text(json.dumps(entries))
    first = read_coco_results(path, ds)[0]
    assert [ds.classes[c - 1] for c in first.classes] == ["person", "dog"]
    entries[0]["category_id"] = 12
    path.write_text(json.dumps(entries))
    with pytest.raises(DatasetError, match=r"p\.json: entry 0: category_id 12 unknown to the "
                                           r"dataset \(known: \[1, 15, 18\]\)"):
        load_coco_results(path, ds)


def test_names_the_dataset_does_not_have(tmp_path):
    """Predictions of a class the data does not score are left out (one warning); a file none
    of whose names is a class of the dataset is refused."""
    spec, _ = make_coco(tmp_path)
    ds = open_dataset(spec)
    entries = perfect_predictions()
    entries[1]["category_name"] = "giraffe"
    path = tmp_path / "p.json"
    path.write_text(json.dumps(entries))
    with pytest.warns(UserWarning, match=r"p\.json: left out 1 of 3 predictions whose category "
                                         r"is not a class of the dataset: giraffe \(1\)"):
        first = read_coco_results(path, ds)[0]
    assert [ds.classes[c - 1] for c in first.classes] == ["person"]
    for e in entries:
        e["category_name"] = "Giraffe"
    path.write_text(json.dumps(entries))
    with pytest.raises(DatasetError, match=r"p\.json: none of its 3 predictions is of a class of "
                                           r"the dataset \(its categories: Giraffe \(3\); the "
                                           r"dataset's classes: person, bench, dog\)"):
        load_coco_results(path, ds)
    entries[0]["category_name"] = 15
    path.write_text(json.dumps(entries))
    with pytest.raises(DatasetError, match=r"entry 0: category_name must be a string, got 15"):
        load_coco_results(path, ds)


def test_predict_ids_found_through_images_json(tmp_path):
    """``pfn predict`` gives inputs sharing a stem other ids; its images.json names the file."""
    spec, images = make_coco(tmp_path)
    ds = open_dataset(spec)
    entries = perfect_predictions()
    for e in entries:
        e["image_id"] = f"run_{e['image_id']}"
    pred = tmp_path / "pred"
    pred.mkdir()
    (pred / "predictions.json").write_text(json.dumps(entries))
    with pytest.raises(DatasetError, match=r"entry 0: image_id 'run_000000000042' is not an "
                                           "image of the dataset"):
        load_coco_results(pred / "predictions.json", ds)
    (pred / "images.json").write_text(json.dumps([
        {"image_id": "run_000000000042", "file": str(images / "000000000042.jpg")},
        {"image_id": "run_000000000007", "file": "/elsewhere/000000000007.jpg"}]))
    first, second = read_coco_results(pred / "predictions.json", ds)
    assert len(first) == 2 and len(second) == 1  # by path, then by the file's stem


@pytest.mark.parametrize("polygon, message", [
    ([2, 2, 10, 2, float("nan"), 10], "polygon 0 holds the coordinate nan"),
    ([2, 2, 10, 2, 10, float("-inf")], "polygon 0 holds the coordinate -inf"),
    ([2, 2, 10, 2, 10, -1e300], r"polygon 0 has y = -1e\+300, far outside"),
    ([2, 2, 3e9, 2, 10, 10], r"polygon 0 has x = 3000000000\.0, far outside the 30x20 image"),
    ([2, 2, 10, 2], "polygon 0 has 4 coordinates"),
])
def test_prediction_polygons_are_checked_before_decoding(tmp_path, polygon, message):
    """NaN, infinite or huge polygon coordinates made pycocotools allocate without bound."""
    spec, _ = make_coco(tmp_path)
    ds = open_dataset(spec)
    entries = perfect_predictions()
    entries[2]["segmentation"] = [polygon]
    path = tmp_path / "p.json"
    path.write_text(json.dumps(entries))
    results = load_coco_results(path, ds)
    assert len(results.encoded(0, (H, W))) == 2
    with pytest.raises(DatasetError, match=message) as info:
        results.encoded(1, (H, W))
    assert str(info.value).startswith(f"{path}: entry 2 (image_id 7): ")

"""COCO reader: polygon, compressed and uncompressed RLE, crowd -> void, overlaps, class mapping."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pycocotools.mask as mask_utils
import pytest
from PIL import Image

from pfn_napari.config import VOC_CLASSES
from pfn_napari.data import open_dataset
from pfn_napari.errors import DatasetError

H, W = 20, 30


def box(r0: int, r1: int, c0: int, c1: int) -> np.ndarray:
    m = np.zeros((H, W), np.uint8)
    m[r0:r1, c0:c1] = 1
    return m


def rle(mask: np.ndarray) -> dict:
    enc = mask_utils.encode(np.asfortranarray(mask))
    return {"size": enc["size"], "counts": enc["counts"].decode("ascii")}


def uncompressed_rle(mask: np.ndarray) -> dict:
    """COCO's uncompressed RLE: run lengths over the column-major pixels, zeros first."""
    flat = mask.flatten(order="F")
    counts, value, run = [], 0, 0
    for v in flat:
        if v == value:
            run += 1
        else:
            counts.append(run)
            value, run = v, 1
    counts.append(run)
    return {"size": [H, W], "counts": counts}


def make_coco(tmp_path: Path, annotations: list | None = None) -> tuple[Path, Path]:
    images = tmp_path / "images"
    images.mkdir(exist_ok=True)
    Image.fromarray(np.full((H, W, 3), 90, np.uint8)).save(images / "p1.jpg")
    Image.fromarray(np.full((H, W, 3), 90, np.uint8)).save(images / "p2.jpg")
    if annotations is None:
        annotations = [
            # 1: polygon square ~ rows/cols 2..12, airplane
            {"id": 11, "image_id": 7, "category_id": 1, "iscrowd": 0,
             "segmentation": [[2, 2, 12, 2, 12, 12, 2, 12]]},
            # 2: compressed RLE rows 10..14, cols 15..24 (50 px), couch
            {"id": 12, "image_id": 7, "category_id": 2, "iscrowd": 0,
             "segmentation": rle(box(10, 15, 15, 25))},
            # 3: uncompressed RLE, 4 px inside #2: the smaller one wins, person
            {"id": 13, "image_id": 7, "category_id": 5, "iscrowd": 0,
             "segmentation": uncompressed_rle(box(12, 14, 20, 22))},
            # crowd person, uncompressed RLE: void
            {"id": 14, "image_id": 7, "category_id": 5, "iscrowd": 1,
             "segmentation": uncompressed_rle(box(0, 3, 25, 30))},
            # giraffe, 9 px: not a VOC class
            {"id": 15, "image_id": 7, "category_id": 7, "iscrowd": 0,
             "segmentation": rle(box(16, 19, 2, 5))},
        ]
    data = {"images": [{"id": 7, "file_name": "p1.jpg", "height": H, "width": W},
                       {"id": 3, "file_name": "p2.jpg", "height": H, "width": W}],
            "annotations": annotations,
            "categories": [{"id": 7, "name": "giraffe"}, {"id": 1, "name": "airplane"},
                           {"id": 2, "name": "couch"}, {"id": 5, "name": "person"}]}
    path = tmp_path / "instances.json"
    path.write_text(json.dumps(data))
    return path, images


def test_coco_native_classes_and_masks(tmp_path: Path) -> None:
    ann, images = make_coco(tmp_path)
    ds = open_dataset(f"coco:{ann}:{images}")
    assert ds.classes == ("airplane", "couch", "person", "giraffe")  # category id order
    assert ds.category_ids == (1, 2, 5, 7) and ds.image_ids == [7, 3]
    s = ds[0]
    assert s.image_id == 7 and s.image.shape == (H, W, 3)
    # painted largest first: polygon (id 1), couch (2), giraffe (3), person (4) on top
    assert s.instance_classes.tolist() == [1, 2, 4, 3]
    assert s.instance_map[7, 7] == 1 and 81 <= (s.instance_map == 1).sum() <= 121
    assert (s.instance_map[12:14, 20:22] == 4).all() and (s.instance_map == 2).sum() == 46
    assert (s.instance_map[16:19, 2:5] == 3).all()
    assert (s.instance_map[0:3, 25:30] == 255).all() and (s.class_map[0:3, 25:30] == 255).all()
    assert s.class_map[12, 20] == 3 and s.class_map[10, 15] == 2
    empty = ds[1]
    assert empty.num_instances == 0 and not empty.class_map.any()


def test_coco_to_voc_names(tmp_path: Path) -> None:
    ann, images = make_coco(tmp_path)
    ds = open_dataset(f"coco:{ann}:{images}", classes=VOC_CLASSES)
    aero, sofa, person = (VOC_CLASSES.index(n) + 1 for n in ("aeroplane", "sofa", "person"))
    assert ds.category_ids[aero - 1] == 1 and ds.category_ids[sofa - 1] == 2
    assert ds.category_ids[person - 1] == 5
    assert ds.category_ids[1] == 7 + 2  # bicycle: no category, max COCO id + its index
    assert len(set(ds.category_ids)) == 20
    s = ds[0]
    assert s.instance_classes.tolist() == [aero, sofa, person]  # giraffe is background
    assert (s.instance_map[16:19, 2:5] == 0).all() and (s.class_map[16:19, 2:5] == 0).all()


def test_coco_bad_inputs_name_the_file(tmp_path: Path) -> None:
    ann, images = make_coco(tmp_path)
    with pytest.raises(DatasetError, match="expected coco:ANNOTATIONS.json:IMAGE_DIR"):
        open_dataset(f"coco:{images}")
    with pytest.raises(DatasetError, match="image folder not found"):
        open_dataset(f"coco:{ann}:{tmp_path / 'nope'}")
    bad = tmp_path / "bad.json"
    bad.write_text('{"images": [')
    with pytest.raises(DatasetError, match=r"bad\.json: malformed JSON"):
        open_dataset(f"coco:{bad}:{images}")
    bad.write_text('{"images": [{"id": 1}], "annotations": [], "categories": []}')
    with pytest.raises(DatasetError, match=r"bad\.json: an image, category or annotation"):
        open_dataset(f"coco:{bad}:{images}")
    ds = open_dataset(f"coco:{ann}:{images}")
    (images / "p2.jpg").unlink()
    with pytest.raises(DatasetError, match=r"p2\.jpg: image not found"):
        ds[1]
    Image.fromarray(np.zeros((5, 5, 3), np.uint8)).save(images / "p2.jpg")
    with pytest.raises(DatasetError, match=r"p2\.jpg: 5x5 pixels but instances\.json says 30x20"):
        ds[1]
    assert len(ds.check_files()) == 1
    with pytest.warns(UserWarning, match=r"skipped 1 bad sample.*p2\.jpg"):
        good = list(ds.iter_valid())
    assert [s.image_id for s in good] == [7] and len(ds.skipped) == 1


def test_coco_more_than_254_instances(tmp_path: Path) -> None:
    pixels = [(r, c) for r in range(H) for c in range(W)][:255]
    anns = [{"id": i, "image_id": 3, "category_id": 5, "iscrowd": 0,
             "segmentation": rle(box(r, r + 1, c, c + 1))} for i, (r, c) in enumerate(pixels)]
    ann, images = make_coco(tmp_path, anns)
    ds = open_dataset(f"coco:{ann}:{images}")
    assert ds[0].num_instances == 0
    with pytest.raises(DatasetError, match=r"p2\.jpg: 255 instances"):
        ds[1]


def test_real_coco_json(shared_data: Path) -> None:
    coco = shared_data / "coco128-train" / "coco"
    ds = open_dataset(f"coco:{coco / 'instances.json'}:{coco / 'images'}")
    assert len(ds) == 100 and len(ds.classes) == 80 and ds.category_ids[-1] == 90
    # 746 annotations = 740 instances + 6 crowd regions (void); no instance is fully hidden
    assert sum(ds[i].num_instances for i in range(len(ds))) == 740


def test_real_coco_as_voc_matches_voc_layout(shared_data: Path, voc_coco_root: Path) -> None:
    coco = shared_data / "coco128-train" / "coco"
    ds = open_dataset(f"coco:{coco / 'instances.json'}:{coco / 'images'}", classes=VOC_CLASSES)
    voc = open_dataset(f"voc:{voc_coco_root}", "val")
    index = {image_id: i for i, image_id in enumerate(ds.image_ids)}
    for stem in voc.image_ids[:4]:
        a, b = ds[index[int(stem)]], voc[voc.image_ids.index(stem)]
        assert np.array_equal(a.class_map, b.class_map)
        assert sorted(a.instance_classes.tolist()) == sorted(b.instance_classes.tolist())


def _one_annotation(tmp_path: Path, segmentation) -> object:
    ann, images = make_coco(tmp_path, [{"id": 21, "image_id": 7, "category_id": 5, "iscrowd": 0,
                                        "segmentation": segmentation}])
    return open_dataset(f"coco:{ann}:{images}")


def test_coco_bad_rle_is_a_named_error_not_garbage(tmp_path: Path) -> None:
    ds = _one_annotation(tmp_path, {"size": [H, W], "counts": ""})
    with pytest.raises(DatasetError, match=r"annotation 21 of image 7: corrupt compressed RLE "
                                           r"\(empty 'counts'\)"):
        ds[0]
    short = uncompressed_rle(box(2, 5, 2, 5))
    short["counts"][-1] -= 7  # runs add up to 593 of 600 pixels
    ds = _one_annotation(tmp_path, short)
    with pytest.raises(DatasetError, match=r"RLE runs add up to 593 pixels, but the image has "
                                           r"20 x 30 = 600"):
        ds[0]
    small = mask_utils.encode(np.asfortranarray(np.ones((10, 10), np.uint8)))
    ds = _one_annotation(tmp_path, {"size": [H, W], "counts": small["counts"].decode()})
    with pytest.raises(DatasetError, match=r"RLE runs add up to 100 pixels"):
        ds[0]
    ds = _one_annotation(tmp_path, {"size": [10, 10], "counts": small["counts"].decode()})
    with pytest.raises(DatasetError, match=r"mask size \[10, 10\] \(height, width\) but the "
                                           r"image is \[20, 30\]"):
        ds[0]
    ds = _one_annotation(tmp_path, rle(box(2, 5, 2, 5)))  # a good one still reads
    assert ds[0].num_instances == 1 and (ds[0].instance_map == 1).sum() == 9


def test_coco_ids_must_be_unique_integers_and_annotations_on_listed_images(tmp_path):
    ann, images = make_coco(tmp_path)
    data = json.loads(ann.read_text())
    spec = f"coco:{ann}:{images}"
    twice = dict(data, images=data["images"] + [data["images"][0]])
    ann.write_text(json.dumps(twice))
    with pytest.raises(DatasetError, match=r"image id\(s\) 7 listed more than once"):
        open_dataset(spec)
    orphan = dict(data, annotations=data["annotations"] + [dict(data["annotations"][0], id=99,
                                                                image_id=42)])
    ann.write_text(json.dumps(orphan))
    with pytest.raises(DatasetError, match=r"annotation\(s\) 99 refer to image id\(s\) 42, "
                                           r"not in 'images'"):
        open_dataset(spec)
    named = dict(data, images=[dict(data["images"][0], id="p1")] + data["images"][1:])
    ann.write_text(json.dumps(named))
    with pytest.raises(DatasetError, match=r"image 0 has id 'p1'; COCO ids must be integers"):
        open_dataset(spec)


def polygon_ann(coords: list) -> list:
    return [{"id": 21, "image_id": 7, "category_id": 5, "iscrowd": 0, "segmentation": [coords]}]


@pytest.mark.parametrize("coords, message", [
    ([2, 2, 12, 2, float("nan"), 12], r"polygon 0 holds the coordinate nan; coordinates must be "
                                      "finite"),
    ([2, 2, 12, 2, 12, float("inf")], r"polygon 0 holds the coordinate inf"),
    ([2, 2, 2.0 ** 31, 2, 12, 12], r"polygon 0 has x = 2147483648\.0, far outside the 30x20 "
                                   r"image \(x must lie in \[-94, 124\] and y in \[-84, 104\]\)"),
    ([2, 2, 12, 2, 12, -85], r"polygon 0 has y = -85, far outside"),
    ([2, 2, 12, 2], r"polygon 0 has 4 coordinates; a polygon needs an even number of them, at "
                    "least 6"),
    ([2, 2, 12, 2, 12, 12, 5], r"polygon 0 has 7 coordinates"),
    ([2, 2, "12", 2, 12, 12], r"polygon 0 holds '12'; coordinates must be numbers"),
    ([-94, -84, 124, -84, 124, 104, -94, 104] * 40,  # 40 x (218 + 188 + 218 + 188) px
     r"polygon edges 32480 pixels long in all, more than 100 x \(height \+ width\) = 5000"),
])
def test_coco_polygon_checked_before_decoding(tmp_path: Path, coords: list, message: str) -> None:
    """Bad polygon coordinates made pycocotools allocate without bound (issue 30, item 1)."""
    ann, images = make_coco(tmp_path, polygon_ann(coords))
    ds = open_dataset(f"coco:{ann}:{images}", classes=["person"])
    with pytest.raises(DatasetError, match=message) as info:
        ds[0]
    assert str(info.value).startswith(f"{ann}: annotation 21 of image 7: ")


def test_coco_polygon_a_little_outside_the_image_is_clipped(tmp_path: Path) -> None:
    """COCO allows points outside the image (clipped): up to one image size + 64 px beyond."""
    ann, images = make_coco(tmp_path, polygon_ann([-94, -84, 124, -84, 124, 104, -94, 104]))
    sample = open_dataset(f"coco:{ann}:{images}", classes=["person"])[0]
    assert (sample.instance_map == 1).all()


@pytest.mark.parametrize("file_name", ["../p1.jpg", "sub/../../p1.jpg", "/etc/hostname",
                                       "C:\\photos\\p1.jpg", "..\\p1.jpg", "", 3])
def test_coco_file_name_outside_the_image_folder_is_refused(tmp_path: Path, file_name) -> None:
    """A file_name outside the image folder is not read (issue 30, item 2)."""
    ann, images = make_coco(tmp_path)
    (images / "inner").mkdir()
    data = json.loads(ann.read_text())
    data["images"][1]["file_name"] = file_name
    ann.write_text(json.dumps(data))
    with pytest.raises(DatasetError, match=r"instances\.json: image 3 \(entry 1\) has "
                                           "file_name ") as info:
        open_dataset(f"coco:{ann}:{images / 'inner'}")
    assert repr(file_name) in str(info.value)
    assert len(str(info.value).splitlines()) == 1


def test_coco_file_name_in_a_subfolder_is_read(tmp_path: Path) -> None:
    ann, images = make_coco(tmp_path)
    (images / "sub").mkdir()
    (images / "p2.jpg").rename(images / "sub" / "p2.jpg")
    data = json.loads(ann.read_text())
    data["images"][1]["file_name"] = "sub/./p2.jpg"
    ann.write_text(json.dumps(data))
    ds = open_dataset(f"coco:{ann}:{images}")
    assert ds[1].image.shape == (H, W, 3) and ds.source_of(1).endswith("sub/p2.jpg")

"""Folder reader: Penn-Fudan-like images + instance-id PNGs, classes.json, splits, conversions."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pfn_napari.data import open_dataset
from pfn_napari.errors import DatasetError

H, W = 6, 8


def make_folder(tmp_path: Path) -> tuple[Path, Path]:
    """Images a..e in several modes; masks with/without '_mask'; e has no mask."""
    images, masks = tmp_path / "PNGImages", tmp_path / "PedMasks"
    images.mkdir()
    masks.mkdir()
    Image.fromarray(np.full((H, W, 3), 200, np.uint8)).save(images / "a.png")  # RGB
    Image.fromarray(np.full((H, W), 77, np.uint8)).save(images / "b.jpg", quality=100)  # L
    rgba = np.zeros((H, W, 4), np.uint8)
    rgba[..., 0], rgba[..., 3] = 10, 0  # fully transparent: alpha is dropped, not composited
    Image.fromarray(rgba, mode="RGBA").save(images / "c.png")
    Image.fromarray(np.full((H, W), 257 * 100, np.uint16)).save(images / "d.png")  # 16-bit
    pal = Image.fromarray(np.ones((H, W), np.uint8), mode="P")
    pal.putpalette([0, 0, 0, 1, 2, 3] + [0] * 762)
    pal.save(images / "e.png")  # palette image: colour (1, 2, 3)
    m = np.zeros((H, W), np.uint8)
    m[0:2, 0:2], m[3:5, 4:8] = 1, 2
    Image.fromarray(m).save(masks / "a_mask.png")
    Image.fromarray(m).save(masks / "b.png")  # stem without _mask
    m_void = m.copy()
    m_void[5, :] = 255
    Image.fromarray(m_void).save(masks / "c_mask.png")
    m16 = np.zeros((H, W), np.uint16)
    m16[0:3, 0:3], m16[4:6, 4:6] = 1000, 300  # 16-bit ids, renumbered by value: 300 -> 1
    Image.fromarray(m16).save(masks / "d_mask.png")
    return images, masks


def test_folder_reads_masks_and_converts_images(tmp_path: Path) -> None:
    images, masks = make_folder(tmp_path)
    ds = open_dataset(f"folder:{images}:{masks}", "all", classes=["person"])
    assert ds.classes == ("person",) and ds.image_ids == ["a", "b", "c", "d", "e"]
    a = ds[0]
    assert a.instance_classes.tolist() == [1, 1] and (a.instance_map[3:5, 4:8] == 2).all()
    assert (a.class_map == (a.instance_map > 0)).all()
    assert ds[1].image.shape == (H, W, 3) and abs(int(ds[1].image[2, 2, 0]) - 77) <= 1
    c = ds[2]
    assert (c.image[0, 0] == [10, 0, 0]).all()
    assert (c.instance_map[5] == 255).all() and (c.class_map[5] == 255).all()
    d = ds[3]
    assert (d.image == 100).all()  # 16-bit 25700 -> 100
    assert (d.instance_map[4:6, 4:6] == 1).all() and (d.instance_map[0:3, 0:3] == 2).all()
    with pytest.raises(DatasetError, match=r"e\.png: no mask for this image"):
        ds[4]
    with pytest.warns(UserWarning, match=r"skipped 1 bad sample.*e\.png"):
        good = ds.drop_bad()
    assert good.image_ids == ["a", "b", "c", "d"] and good[3].image_id == "d"


def test_folder_builtin_and_file_splits(tmp_path: Path) -> None:
    images, masks = make_folder(tmp_path)
    spec = f"folder:{images}:{masks}"
    assert open_dataset(spec, "val").image_ids == ["e"]  # position 4 of the sorted stems
    assert open_dataset(spec, "train").image_ids == ["a", "b", "c", "d"]
    with pytest.raises(DatasetError, match="not a built-in split"):
        open_dataset(spec, "test")
    (tmp_path / "test.txt").write_text("b\nc\n")  # in the parent of IMAGE_DIR
    assert open_dataset(spec, "test").image_ids == ["b", "c"]
    (masks / "test.txt").write_text("d\nzz\n")  # MASK_DIR comes first; zz is unknown
    with pytest.raises(DatasetError, match=r"PedMasks/test\.txt: 1 listed image"):
        open_dataset(spec, "test")


def test_folder_class_json(tmp_path: Path) -> None:
    images, masks = make_folder(tmp_path)
    spec = f"folder:{images}:{masks}"
    (masks / "classes.json").write_text(json.dumps({
        "classes": ["person", "bicycle"],
        "instances": {"a": ["bicycle", "person"], "b": {"1": 2, "2": "person"},
                      "c": [1, 1], "d": {"300": "person", "1000": "bicycle"}}}))
    ds = open_dataset(spec, "all")
    assert ds.classes == ("person", "bicycle")
    assert ds[0].instance_classes.tolist() == [2, 1] and ds[0].class_map[0, 0] == 2
    assert ds[1].instance_classes.tolist() == [2, 1]
    assert ds[3].instance_classes.tolist() == [1, 2]
    only = open_dataset(spec, "all", classes=["bicycle"])
    a = only[0]
    assert a.instance_classes.tolist() == [1] and (a.instance_map[3:5, 4:8] == 0).all()
    (masks / "classes.json").write_text(json.dumps({
        "classes": ["person", "bicycle"], "instances": {"a": {"1": "person"}}}))
    ds = open_dataset(spec, "all")
    with pytest.raises(DatasetError, match=r"a_mask\.png: mask ids \[2\] have no class"):
        ds[0]
    with pytest.raises(DatasetError, match=r"classes\.json: no classes for image b"):
        ds[1]
    (masks / "classes.json").write_text("{not json")
    with pytest.raises(DatasetError, match=r"classes\.json: malformed JSON"):
        open_dataset(spec, "all")


def test_folder_bad_inputs(tmp_path: Path) -> None:
    images, masks = make_folder(tmp_path)
    with pytest.raises(DatasetError, match="mask folder not found"):
        open_dataset(f"folder:{images}:{tmp_path / 'nope'}")
    with pytest.raises(DatasetError, match=r"carry no classes; give one class name"):
        open_dataset(f"folder:{images}:{masks}", classes=["person", "car"])
    data = (images / "a.png").read_bytes()
    (images / "a.png").write_bytes(data[: len(data) // 2])
    ds = open_dataset(f"folder:{images}:{masks}", "all")
    with pytest.raises(DatasetError, match=r"a\.png: corrupt or truncated image"):
        ds[0]
    big = np.arange(1, 257, dtype=np.uint16).reshape(16, 16)  # 255 ids besides the void 255
    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(images / "b.jpg")
    Image.fromarray(big).save(masks / "b.png")
    with pytest.raises(DatasetError, match=r"b\.png: 255 instances"):
        ds[1]
    Image.fromarray(np.zeros((H, W, 3), np.uint8)).save(masks / "c_mask.png")
    with pytest.raises(DatasetError, match=r"c_mask\.png: label image of mode RGB"):
        ds[2]
    Image.fromarray(np.zeros((3, 3), np.uint8)).save(masks / "d_mask.png")
    with pytest.raises(DatasetError, match=r"d_mask\.png: 3x3 pixels but the image d\.png is 8x6"):
        ds[3]


def test_pennfudan(shared_data: Path) -> None:
    root = shared_data / "pennfudan"
    spec = f"folder:{root / 'PNGImages'}:{root / 'PedMasks'}"
    ds = open_dataset(spec, "all", classes=["person"])
    assert len(ds) == 170 and ds.classes == ("person",)
    assert sum(ds[i].num_instances for i in range(len(ds))) == 423
    train, val = open_dataset(spec, "train", ["person"]), open_dataset(spec, "val", ["person"])
    assert (len(train), len(val)) == (136, 34) and not set(train.image_ids) & set(val.image_ids)


def test_folder_class_names_in_spec(tmp_path: Path) -> None:
    images, masks = make_folder(tmp_path)
    ds = open_dataset(f"folder:{images}:{masks}:person", "train")
    assert ds.classes == ("person",) and ds[0].instance_classes.tolist() == [1, 1]
    # the spec's name is mapped onto a longer list by name, also inside a concatenation
    both = open_dataset(f"synthetic:1@0+folder:{images}:{masks}:person", "train",
                        classes=("disc", "square", "triangle", "person"))
    assert len(both) == 5 and both[1].instance_classes.tolist() == [4, 4]
    merged = open_dataset(f"synthetic:1@0+folder:{images}:{masks}:person", "train")
    assert merged.classes == ("disc", "square", "triangle", "person")
    # several names need classes.json's per-image table
    with pytest.raises(DatasetError, match=r"classes\.json: not found; 2 class names"):
        open_dataset(f"folder:{images}:{masks}:person,bicycle")
    (masks / "classes.json").write_text(json.dumps({"instances": {"a": ["bicycle", "person"]}}))
    ds = open_dataset(f"folder:{images}:{masks}:person,bicycle", "all")
    assert ds.classes == ("person", "bicycle") and ds[0].instance_classes.tolist() == [2, 1]
    with pytest.raises(DatasetError, match="expected folder:IMAGE_DIR:MASK_DIR"):
        open_dataset(f"folder:{images}:{masks}:person:extra")


def _photo(path: Path, value: int = 50) -> None:
    Image.fromarray(np.full((H, W, 3), value, np.uint8)).save(path)


def _mask(path: Path) -> None:
    m = np.zeros((H, W), np.uint8)
    m[1:3, 1:3] = 1
    Image.fromarray(m).save(path)


def test_folder_masks_beside_photos_are_not_images(tmp_path: Path) -> None:
    """Photos and their _mask PNGs in ONE folder: 3 images, not 6 (issue 30, item 10)."""
    both = tmp_path / "both"
    both.mkdir()
    for stem in ("p1", "p2", "p3"):
        _photo(both / f"{stem}.png")
        _mask(both / f"{stem}_mask.png")
    ds = open_dataset(f"folder:{both}:{both}:person", "all")
    assert ds.image_ids == ["p1", "p2", "p3"]
    assert ds[2].instance_classes.tolist() == [1] and ds[2].image[0, 0, 0] == 50
    # a JPEG photo with its mask named S.png in the same folder: the PNG is the mask
    jpg = tmp_path / "jpg"
    jpg.mkdir()
    _photo(jpg / "q.jpg")
    _mask(jpg / "q.png")
    ds = open_dataset(f"folder:{jpg}:{jpg}:person", "all")
    assert ds.image_ids == ["q"] and ds[0].instance_map[1, 1] == 1


def test_folder_skips_odd_files_and_earlier_predict_outputs(tmp_path: Path) -> None:
    """Hidden files, links that go nowhere or in circles and `pfn predict` outputs in the image
    folder are not images; nothing crashes (issue 30, item 7)."""
    images, masks = tmp_path / "img", tmp_path / "masks"
    images.mkdir()
    masks.mkdir()
    _photo(images / "a.jpg")
    _mask(masks / "a_mask.png")
    for kind in ("instances", "classes", "overlay", "arrows"):
        _mask(images / f"a_{kind}.png")  # what `pfn predict IMG --out IMG` leaves
    (images / "predictions.json").write_text("[]")
    (images / "._a.jpg").write_bytes(b"\x00\x05\x16\x07 AppleDouble")  # macOS resource fork
    (images / "gone.jpg").symlink_to(tmp_path / "nowhere.jpg")
    (images / "loop1.png").symlink_to(images / "loop2.png")
    (images / "loop2.png").symlink_to(images / "loop1.png")
    (images / "sub.png").mkdir()
    ds = open_dataset(f"folder:{images}:{masks}:person", "all")
    assert ds.image_ids == ["a"]
    assert ds[0].instance_classes.tolist() == [1]
    assert len(open_dataset(f"folder:{images}:{masks}:person", "train")) == 1


def test_folder_refuses_two_images_of_one_stem(tmp_path: Path) -> None:
    images, masks = tmp_path / "img", tmp_path / "masks"
    images.mkdir()
    masks.mkdir()
    _photo(images / "a.jpg")
    _photo(images / "a.png")
    with pytest.raises(DatasetError, match=r"img: two images named 'a' \(a\.jpg and a\.png\)"):
        open_dataset(f"folder:{images}:{masks}:person", "all")


def test_folder_split_file_listing_an_id_twice_is_refused(tmp_path: Path) -> None:
    images, masks = make_folder(tmp_path)
    (masks / "val.txt").write_text("a\nb\n\na\n")
    with pytest.raises(DatasetError, match=r"PedMasks/val\.txt: image id 'a' is listed twice "
                                           r"\(lines 1 and 4\)"):
        open_dataset(f"folder:{images}:{masks}", "val")


def test_folder_per_image_class_tables(tmp_path: Path) -> None:
    """MASK_DIR/STEM.json gives one image's classes; it takes the place of the image's entry in
    classes.json, and its new names follow the JSON's classes, sorted."""
    images, masks = make_folder(tmp_path)
    (masks / "a.json").write_text(json.dumps({"classes": {"1": "zebra", "2": "person"}}))
    (masks / "b.json").write_text(json.dumps({"classes": {"1": "cat", "2": "cat"}}))
    (masks / "classes.json").write_text(json.dumps(
        {"classes": ["person"], "instances": {"a": ["person", "person"], "c": [1, 1],
                                              "d": [1, 1]}}))
    ds = open_dataset(f"folder:{images}:{masks}", "all")
    assert ds.classes == ("person", "cat", "zebra")
    assert ds[0].instance_classes.tolist() == [3, 1]  # a.json wins over classes.json
    assert ds[1].instance_classes.tolist() == [2, 2]
    assert ds[2].instance_classes.tolist() == [1, 1]  # c from classes.json
    one = open_dataset(f"folder:{images}:{masks}:horse", "all")  # one NAME: no table read
    assert one.classes == ("horse",) and one[0].instance_classes.tolist() == [1, 1]
    (masks / "classes.json").unlink()
    with pytest.raises(DatasetError, match=r"a\.json: class 'zebra' is not one of the spec's"):
        open_dataset(f"folder:{images}:{masks}:person,cat", "all")
    (masks / "b.json").write_text(json.dumps({"classes": {"1": "cat"}}))
    with pytest.raises(DatasetError, match=r"mask ids \[2\] have no class in .*b\.json"):
        open_dataset(f"folder:{images}:{masks}", "all")[1]
    (masks / "b.json").write_text(json.dumps({"classes": ["cat"]}))
    with pytest.raises(DatasetError, match=r"b\.json: expected \{\"classes\": \{mask value"):
        open_dataset(f"folder:{images}:{masks}", "all")

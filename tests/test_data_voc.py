"""VOC reader: hand-built palette PNGs in tmp_path, and the real VOC-layout data."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pfn_napari.config import VOC_CLASSES
from pfn_napari.data import open_dataset
from pfn_napari.errors import DatasetError


def voc_palette() -> list[int]:
    """PASCAL VOC's colour map (bit-interleaved), 256 entries."""
    pal = []
    for i in range(256):
        r = g = b = 0
        c = i
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        pal += [r, g, b]
    return pal


def save_palette_png(path: Path, labels: np.ndarray) -> None:
    im = Image.fromarray(labels.astype(np.uint8), mode="P")
    im.putpalette(voc_palette())
    im.save(path)


def make_voc(root: Path, n: int = 2) -> Path:
    """A tiny VOC2012 folder under root: images 8x10, person (15) + dog (12), void border."""
    voc = root / "VOC2012"
    for sub in ("JPEGImages", "SegmentationClass", "SegmentationObject", "ImageSets/Segmentation"):
        (voc / sub).mkdir(parents=True, exist_ok=True)
    ids = [f"img{i}" for i in range(n)]
    for stem in ids:
        Image.fromarray(np.full((8, 10, 3), 100, np.uint8)).save(voc / "JPEGImages" / f"{stem}.jpg")
        cls = np.zeros((8, 10), np.uint8)
        obj = np.zeros((8, 10), np.uint8)
        cls[1:4, 1:4] = 15
        obj[1:4, 1:4] = 1
        cls[4:7, 5:9] = 12
        obj[4:7, 5:9] = 2
        cls[4, 5] = 15  # one disagreeing pixel: majority keeps dog for object 2
        cls[0, :] = obj[0, :] = 255
        save_palette_png(voc / "SegmentationClass" / f"{stem}.png", cls)
        save_palette_png(voc / "SegmentationObject" / f"{stem}.png", obj)
    (voc / "ImageSets/Segmentation/train.txt").write_text("\n".join(ids) + "\n")
    return voc


def test_voc_reads_palette_indices_and_majority_class(tmp_path: Path) -> None:
    make_voc(tmp_path)
    ds = open_dataset(f"voc:{tmp_path}", "train")  # parent of VOC2012 is accepted
    assert len(ds) == 2 and ds.image_ids == ["img0", "img1"]
    assert ds.classes == VOC_CLASSES and ds.category_ids == tuple(range(1, 21))
    s = ds[0]
    assert s.image.shape == (8, 10, 3) and s.image.dtype == np.uint8
    assert s.instance_classes.tolist() == [15, 12]
    assert s.class_map[2, 2] == 15 and s.class_map[5, 6] == 12 and s.class_map[4, 5] == 15
    assert (s.instance_map[0] == 255).all() and (s.class_map[0] == 255).all()
    assert (s.instance_map[1:4, 1:4] == 1).all() and (s.instance_map[4:7, 5:9] == 2).all()
    assert s.instance_map.dtype == np.int32 and s.class_map.dtype == np.uint8
    # the VOC2012 folder itself works too
    assert open_dataset(f"voc:{tmp_path / 'VOC2012'}").image_ids == ["img0", "img1"]


def test_voc_class_subset_maps_others_to_background(tmp_path: Path) -> None:
    make_voc(tmp_path)
    s = open_dataset(f"voc:{tmp_path}", "train", classes=["dog"])[0]
    assert s.instance_classes.tolist() == [1]
    assert (s.instance_map[1:4, 1:4] == 0).all() and (s.instance_map[5:7, 5:9] == 1).all()
    assert s.class_map[2, 2] == 0 and s.class_map[5, 6] == 1 and s.class_map[0, 0] == 255


def test_voc_errors_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="not found"):
        open_dataset(f"voc:{tmp_path / 'nope'}")
    voc = make_voc(tmp_path)
    with pytest.raises(DatasetError, match=r"val\.txt: split file not found"):
        open_dataset(f"voc:{tmp_path}", "val")
    (voc / "SegmentationObject" / "img1.png").unlink()
    ds = open_dataset(f"voc:{tmp_path}")
    with pytest.raises(DatasetError, match=r"img1\.png: annotation not found"):
        ds[1]
    (voc / "JPEGImages" / "img0.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    with pytest.raises(DatasetError, match=r"img0\.jpg: corrupt or truncated image"):
        ds[0]
    assert len(ds.check_files()) == 2
    with pytest.warns(UserWarning, match="skipped 2 bad"):
        assert len(ds.drop_bad()) == 0


def test_voc_unknown_class_id_is_rejected(tmp_path: Path) -> None:
    voc = make_voc(tmp_path, n=1)
    cls = np.zeros((8, 10), np.uint8)
    cls[2, 2] = 42
    save_palette_png(voc / "SegmentationClass" / "img0.png", cls)
    with pytest.raises(DatasetError, match=r"SegmentationClass/img0\.png: class ids \[42\]"):
        open_dataset(f"voc:{tmp_path}")[0]


def test_voc_sample_2007_000063(shared_data: Path) -> None:
    ds = open_dataset(f"voc:{shared_data / 'voc-sample'}", "val")
    s = ds[0]
    assert s.image_id == "2007_000063" and s.image.shape == (375, 500, 3)
    names = [VOC_CLASSES[c - 1] for c in s.instance_classes]
    assert sorted(names) == ["chair", "dog"]
    assert set(np.unique(s.instance_map).tolist()) == {0, 1, 2, 255}
    assert set(np.unique(s.class_map).tolist()) == {0, 9, 12, 255}
    # void border: every void pixel of the class map is void in the instance map too
    assert ((s.class_map == 255) <= (s.instance_map == 255)).all()
    for k, c in enumerate(s.instance_classes, start=1):  # each instance's pixels carry its class
        assert (s.class_map[s.instance_map == k] == c).mean() > 0.99


def test_voc_coco_derived_val(voc_coco_root: Path) -> None:
    ds = open_dataset(f"voc:{voc_coco_root}", "val")
    assert len(ds) == 17 and len(open_dataset(f"voc:{voc_coco_root.parent}", "train")) == 60
    counts = [s.num_instances for s in ds]
    assert all(k >= 1 for k in counts)
    assert sum(counts) == 64  # measured
    trainval = open_dataset(f"voc:{voc_coco_root}", "trainval")
    assert len(trainval) == 77 and sum(s.num_instances for s in trainval) == 354  # the README


def test_voc_split_listing_an_id_twice_is_refused(tmp_path: Path) -> None:
    """A repeated id would be evaluated twice (issue 30, item 9)."""
    voc = make_voc(tmp_path, n=3)
    (voc / "ImageSets/Segmentation/val.txt").write_text("img0\nimg1\nimg2\nimg1\n")
    with pytest.raises(DatasetError, match=r"val\.txt: image id 'img1' is listed twice "
                                           r"\(lines 2 and 4\)"):
        open_dataset(f"voc:{tmp_path}", "val")


def test_voc_split_id_with_a_folder_is_refused(tmp_path: Path) -> None:
    voc = make_voc(tmp_path)
    (voc / "ImageSets/Segmentation/val.txt").write_text("img0\n../../secret\n")
    with pytest.raises(DatasetError, match=r"val\.txt: line 2 lists '\.\./\.\./secret'; an image "
                                           "id is a file name"):
        open_dataset(f"voc:{tmp_path}", "val")

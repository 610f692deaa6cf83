"""open_dataset: spec parsing, concatenation with merged classes, sequences, image conversion."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pfn_napari.data import PFNDataset, open_dataset
from pfn_napari.data.base import class_lookup, normalise_class_name, read_image, to_rgb_uint8
from pfn_napari.errors import DatasetError


def test_sequence_protocol() -> None:
    ds = open_dataset("synthetic:6@2")
    assert isinstance(ds, PFNDataset) and len(ds) == 6
    assert np.array_equal(ds[-1].image, ds[5].image)
    part = ds[1:4]
    assert len(part) == 3 and part.image_ids == ds.image_ids[1:4] and part.classes == ds.classes
    assert np.array_equal(part[0].instance_map, ds[1].instance_map)
    assert [s.image_id for s in ds.subset([4, 0])] == [ds.image_ids[4], ds.image_ids[0]]
    with pytest.raises(IndexError):
        ds[6]
    assert ds.check_files() == []
    assert ds.drop_bad() is ds


def test_concat_merges_classes_by_name(tmp_path: Path) -> None:
    images, masks = tmp_path / "im", tmp_path / "m"
    images.mkdir()
    masks.mkdir()
    Image.fromarray(np.zeros((9, 9, 3), np.uint8)).save(images / "x.png")
    mask = np.zeros((9, 9), np.uint8)
    mask[2:5, 2:5] = 1
    Image.fromarray(mask).save(masks / "x_mask.png")
    spec = f"synthetic:2@0+folder:{images}:{masks}"
    ds = open_dataset(spec, "all", classes=None)
    # the folder part without a class list is one class named "object"
    assert ds.classes == ("disc", "square", "triangle", "object")
    assert len(ds) == 3 and ds.image_ids[-1] == "x" and ds.category_ids == (1, 2, 3, 4)
    x = ds[2]
    assert x.instance_classes.tolist() == [4] and x.class_map[3, 3] == 4
    raw = open_dataset("synthetic:2@0", "all")[1]
    assert np.array_equal(ds[1].class_map, raw.class_map)  # first part keeps its indices
    # with a class list, every part is mapped onto it (a class-less folder names its one
    # class in classes.json to take part in a multi-class list)
    (masks / "classes.json").write_text('{"classes": ["object"]}')
    ds = open_dataset(f"folder:{images}:{masks}+synthetic:2@0", "all",
                      classes=["triangle", "object"])
    assert ds.classes == ("triangle", "object") and ds[0].instance_classes.tolist() == [2]
    assert set(np.unique(ds[2].class_map).tolist()) <= {0, 1}


@pytest.mark.parametrize("spec", ["", "voc", "bogus:x", "synthetic:2+", "folder:onlyone"])
def test_bad_specs(spec: str) -> None:
    with pytest.raises(DatasetError):
        open_dataset(spec)


def test_class_names_and_aliases() -> None:
    assert normalise_class_name("Dining Table") == "diningtable"
    assert normalise_class_name("tv") == normalise_class_name("tvmonitor") == "tvmonitor"
    lut = class_lookup(["airplane", "motorcycle", "couch", "potted plant", "zebra"],
                       ["aeroplane", "sofa", "motorbike", "pottedplant"])
    assert lut[:6].tolist() == [0, 1, 3, 2, 4, 0] and lut[255] == 255


def test_image_conversion(tmp_path: Path) -> None:
    gray16 = Image.fromarray(np.array([[0, 257, 65535]], np.uint16))
    assert to_rgb_uint8(gray16).tolist() == [[[0, 0, 0], [1, 1, 1], [255, 255, 255]]]
    f = Image.fromarray(np.array([[0.0, 0.5, 1.0]], np.float32))
    assert to_rgb_uint8(f)[0, :, 0].tolist() == [0, 128, 255]
    la = Image.fromarray(np.array([[[9, 0]]], np.uint8), mode="LA")
    assert to_rgb_uint8(la).tolist() == [[[9, 9, 9]]]
    bw = Image.fromarray(np.array([[True, False]]))
    assert to_rgb_uint8(bw)[0, :, 0].tolist() == [255, 0]
    path = tmp_path / "cmyk.jpg"
    Image.new("CMYK", (4, 3), (0, 0, 0, 0)).save(path)
    img = read_image(path)
    assert img.shape == (3, 4, 3) and img.dtype == np.uint8 and img.min() > 240
    (tmp_path / "junk.png").write_bytes(b"not an image at all")
    with pytest.raises(DatasetError, match=r"junk\.png: corrupt or truncated image"):
        read_image(tmp_path / "junk.png")


def test_16_bit_images_are_scaled_by_their_range() -> None:
    """12-bit data in 16 bits (maximum <= 4095) is scaled by 4095, not 65535 (which leaves it
    near black); values of 8-bit range by 255; anything higher by 65535."""
    twelve = Image.fromarray(np.array([[0, 2048, 4095]], np.uint16))
    assert to_rgb_uint8(twelve)[0, :, 0].tolist() == [0, 128, 255]
    eight = Image.fromarray(np.array([[0, 100, 255]], np.uint16))
    assert to_rgb_uint8(eight)[0, :, 0].tolist() == [0, 100, 255]
    sixteen = Image.fromarray(np.array([[0, 4096, 65535]], np.uint16))
    assert to_rgb_uint8(sixteen)[0, :, 0].tolist() == [0, 16, 255]


def test_read_image_turns_a_photo_by_its_exif_orientation_only_when_asked(tmp_path: Path) -> None:
    """Photos to segment are read as shown (EXIF orientation applied); dataset images keep
    the stored pixels their annotations refer to."""
    stored = np.zeros((2, 3, 3), np.uint8)
    stored[0, 0] = 255  # top-left as stored
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to show
    path = tmp_path / "phone.png"
    Image.fromarray(stored).save(path, exif=exif)
    assert read_image(path).tolist() == stored.tolist()
    shown = read_image(path, exif=True)
    assert shown.shape == (3, 2, 3)
    assert shown.tolist() == np.rot90(stored, k=-1).tolist()  # top-left went to top-right
    assert shown[0, 1].tolist() == [255, 255, 255]

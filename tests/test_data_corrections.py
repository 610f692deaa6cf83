"""The training set of corrected images: save_correction round trips through the folder reader,
writes each file atomically and never overwrites another photo's files."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from pfn_napari.data import open_dataset
from pfn_napari.data import corrections
from pfn_napari.data.corrections import correction_spec, safe_name, save_correction
from pfn_napari.errors import DatasetError

H, W = 6, 8


def photo(value: int) -> np.ndarray:
    img = np.zeros((H, W, 3), np.uint8)
    img[..., 0], img[..., 2] = value, 255 - value
    return img


def labels() -> np.ndarray:
    lab = np.zeros((H, W), np.int64)
    lab[0:2, 0:3] = 7  # ids need not be consecutive
    lab[3:6, 4:8] = 300
    return lab


def test_round_trip_through_the_folder_reader_with_new_class_names(tmp_path: Path) -> None:
    first = save_correction(tmp_path, photo(10), labels(), {7: "person", 300: "kayak"}, "a")
    lab = np.zeros((H, W), np.int32)
    lab[1:4, 1:4] = 2
    save_correction(tmp_path, photo(20), lab, {2: "person", 5: "unused"}, "b")
    assert first == tmp_path / "images" / "a.png"
    assert json.loads((tmp_path / "masks" / "a.json").read_text()) == \
        {"classes": {"1": "person", "2": "kayak"}}  # ids renumbered 1..K by increasing id
    ds = open_dataset(correction_spec(tmp_path), "all")
    assert ds.classes == ("kayak", "person") and ds.image_ids == ["a", "b"]  # names sorted
    a, b = ds[0], ds[1]
    assert (a.image == photo(10)).all()
    assert a.instance_classes.tolist() == [2, 1]  # instance 1 person, instance 2 kayak
    assert (a.instance_map[0:2, 0:3] == 1).all() and (a.instance_map[3:6, 4:8] == 2).all()
    assert int((a.class_map == 1).sum()) == 12 and int((a.class_map == 2).sum()) == 6
    assert b.instance_classes.tolist() == [2] and int((b.instance_map == 1).sum()) == 9
    # mapped onto a model's classes by name; a class the list lacks becomes background
    mapped = open_dataset(correction_spec(tmp_path), "all", classes=["dog", "person"])
    assert np.unique(mapped[0].class_map).tolist() == [0, 2]


def test_same_name_other_photo_is_never_overwritten_same_photo_is_updated(tmp_path) -> None:
    save_correction(tmp_path, photo(10), labels(), {7: "person", 300: "person"}, "img")
    other = save_correction(tmp_path, photo(99), labels(), {7: "cat", 300: "cat"}, "img")
    assert other.name == "img_2.png"
    lab = np.zeros((H, W), np.int64)
    lab[0:6, 0:2] = 1
    again = save_correction(tmp_path, photo(10), lab, {1: "dog"}, "img")  # a newer correction
    assert again.name == "img.png"
    assert sorted(p.name for p in (tmp_path / "images").iterdir()) == ["img.png", "img_2.png"]
    ds = open_dataset(correction_spec(tmp_path), "all")
    assert ds.classes == ("cat", "dog")
    assert ds[0].instance_classes.tolist() == [2] and int((ds[0].instance_map == 1).sum()) == 12
    assert ds[1].instance_classes.tolist() == [1, 1]  # img_2 keeps its own files
    assert not [p for p in tmp_path.rglob("*") if p.name.startswith(".")]  # no temporaries


def test_a_failed_write_leaves_no_image_and_no_temporary(tmp_path, monkeypatch) -> None:
    save_correction(tmp_path, photo(10), labels(), {7: "person", 300: "person"}, "old")
    calls = []

    def failing(array, fh):
        calls.append(array.shape)
        if array.ndim == 3:  # the photo, written last
            fh.write(b"\x89PNG half")
            raise OSError(28, "No space left on device")
        return real(array, fh)

    real = corrections._save_png
    monkeypatch.setattr(corrections, "_save_png", failing)
    with pytest.raises(Exception, match="new.png"):
        save_correction(tmp_path, photo(50), labels(), {7: "person", 300: "person"}, "new")
    assert sorted(p.name for p in (tmp_path / "images").iterdir()) == ["old.png"]
    assert open_dataset(correction_spec(tmp_path), "all").image_ids == ["old"]  # still readable
    assert not [p for p in tmp_path.rglob("*") if p.name.startswith(".")]


def test_bad_inputs_name_the_argument(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match=r"instances \[300\] have no class name"):
        save_correction(tmp_path, photo(1), labels(), {7: "person"}, "x")
    with pytest.raises(DatasetError, match=r"labels have shape \(6, 7\).*6x8"):
        save_correction(tmp_path, photo(1), labels()[:, :7], {7: "a", 300: "b"}, "x")
    with pytest.raises(DatasetError, match="image is float64, expected uint8"):
        save_correction(tmp_path, photo(1).astype(float), labels(), {7: "a", 300: "b"}, "x")
    assert not (tmp_path / "images").exists()  # nothing written


def test_names_are_safe_and_never_taken_for_derived_files() -> None:
    assert safe_name("my photo/1:2") == "my_photo_1_2"
    assert safe_name("street_mask") == "street-mask"  # the reader would skip S_mask beside S
    assert safe_name("...") == "image"

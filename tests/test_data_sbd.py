"""SBD reader on tiny .mat files written with scipy.io.savemat in SBD's struct layout."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import scipy.io
import scipy.sparse
from PIL import Image

from pfn_napari.config import VOC_CLASSES
from pfn_napari.data import open_dataset
from pfn_napari.errors import DatasetError


def boundaries(seg: np.ndarray, k: int) -> np.ndarray:
    """A MATLAB cell array (k x 1) of sparse boundary maps, as SBD stores them."""
    cells = np.empty((k, 1), dtype=object)
    for i in range(k):
        cells[i, 0] = scipy.sparse.csc_matrix((seg == i + 1).astype(np.float64))
    return cells


def write_sbd_mats(root: Path, stem: str, cls: np.ndarray, inst: np.ndarray,
                   categories: list[int]) -> None:
    scipy.io.savemat(root / "cls" / f"{stem}.mat", {"GTcls": {
        "Segmentation": cls.astype(np.uint8), "Boundaries": boundaries(cls, 20),
        "CategoriesPresent": np.unique(cls[cls > 0]).reshape(-1, 1).astype(np.uint8)}})
    scipy.io.savemat(root / "inst" / f"{stem}.mat", {"GTinst": {
        "Segmentation": inst.astype(np.uint8), "Boundaries": boundaries(inst, len(categories)),
        "Categories": np.asarray(categories, np.uint8).reshape(-1, 1)}})


def make_sbd(tmp_path: Path) -> Path:
    """SBD 'dataset' folder: 2 images 6x8; img a: cat (8) + two persons (15); img b: one dog."""
    root = tmp_path / "dataset"
    for sub in ("img", "cls", "inst"):
        (root / sub).mkdir(parents=True)
    cls = np.zeros((6, 8), np.uint8)
    inst = np.zeros((6, 8), np.uint8)
    cls[0:3, 0:3], inst[0:3, 0:3] = 8, 1
    cls[3:6, 0:2], inst[3:6, 0:2] = 15, 2
    cls[3:6, 5:8], inst[3:6, 5:8] = 15, 3
    write_sbd_mats(root, "a", cls, inst, [8, 15, 15])
    cls_b = np.zeros((6, 8), np.uint8)
    cls_b[1:5, 2:6] = 12
    write_sbd_mats(root, "b", cls_b, (cls_b > 0).astype(np.uint8), [12])  # one instance
    for stem in ("a", "b"):
        Image.fromarray(np.full((6, 8, 3), 50, np.uint8)).save(root / "img" / f"{stem}.jpg")
    (root / "train.txt").write_text("a\nb\n")
    (root / "val.txt").write_text("b\n")
    return root


def test_sbd_reads_struct_arrays(tmp_path: Path) -> None:
    make_sbd(tmp_path)
    ds = open_dataset(f"sbd:{tmp_path}", "train")  # parent of dataset/ is accepted
    assert len(ds) == 2 and ds.image_ids == ["a", "b"] and ds.classes == VOC_CLASSES
    a = ds[0]
    assert a.image.shape == (6, 8, 3)
    assert a.instance_classes.tolist() == [8, 15, 15]
    assert (a.instance_map[3:6, 5:8] == 3).all() and a.class_map[4, 6] == 15
    assert not (a.instance_map == 255).any()  # SBD has no void
    b = ds[1]  # a single instance: Categories squeezes to a scalar in MATLAB files
    assert b.instance_classes.tolist() == [12] and (b.instance_map[1:5, 2:6] == 1).all()
    assert open_dataset(f"sbd:{tmp_path / 'dataset'}", "val").image_ids == ["b"]


def test_sbd_class_subset(tmp_path: Path) -> None:
    make_sbd(tmp_path)
    a = open_dataset(f"sbd:{tmp_path}", classes=["person"])[0]
    assert a.instance_classes.tolist() == [1, 1]
    assert (a.instance_map[0:3, 0:3] == 0).all() and (a.instance_map[3:6, 0:2] == 1).all()


def test_sbd_bad_inputs_name_the_file(tmp_path: Path) -> None:
    root = make_sbd(tmp_path)
    with pytest.raises(DatasetError, match=r"test\.txt: split file not found"):
        open_dataset(f"sbd:{root}", "test")
    with pytest.raises(DatasetError, match="SBD folder not found"):
        open_dataset(f"sbd:{tmp_path / 'missing'}")
    ds = open_dataset(f"sbd:{root}")
    (root / "inst" / "a.mat").write_bytes(b"MATLAB 5.0 garbage" * 3)
    with pytest.raises(DatasetError, match=r"inst/a\.mat: not a readable MATLAB"):
        ds[0]
    scipy.io.savemat(root / "inst" / "a.mat", {"other": np.zeros(3)})
    with pytest.raises(DatasetError, match=r"inst/a\.mat: no GTinst struct"):
        ds[0]
    inst = np.zeros((6, 8), np.uint8)
    inst[0, 0], inst[1, 1] = 1, 2
    write_sbd_mats(root, "a", np.zeros((6, 8), np.uint8), inst, [15])  # id 2 has no category
    with pytest.raises(DatasetError, match=r"inst/a\.mat: instance ids up to 2"):
        ds[0]
    (root / "cls" / "b.mat").unlink()
    with pytest.raises(DatasetError, match=r"cls/b\.mat: annotation not found"):
        ds[1]


def test_exclude_ids_from_a_voc_root_a_file_or_the_val_data(tmp_path: Path) -> None:
    from pfn_napari.data.sbd import read_exclude_ids

    root = make_sbd(tmp_path)
    voc = tmp_path / "VOCdevkit" / "VOC2012" / "ImageSets" / "Segmentation"
    voc.mkdir(parents=True)
    (voc / "val.txt").write_text("a\nz\n")
    ids, source = read_exclude_ids(str(tmp_path / "VOCdevkit"))
    assert ids == {"a", "z"} and source.endswith("VOC2012/ImageSets/Segmentation/val.txt")
    assert read_exclude_ids(f"voc:{tmp_path / 'VOCdevkit' / 'VOC2012'}")[0] == {"a", "z"}
    assert read_exclude_ids(str(voc / "val.txt"))[0] == {"a", "z"}
    assert read_exclude_ids("val", f"sbd:{root}", "val") == ({"b"}, f"sbd:{root} [val]")
    assert read_exclude_ids("") == (frozenset(), "")
    with pytest.raises(DatasetError, match=r"data.train_exclude='nowhere': not 'val', a VOC root"):
        read_exclude_ids("nowhere")
    with pytest.raises(DatasetError, match=r"data.train_exclude=.*without ImageSets"):
        read_exclude_ids(str(root))
    with pytest.raises(DatasetError, match=r"data.train_exclude='val' reads the ids of data.val"):
        read_exclude_ids("val", f"sbd:{tmp_path / 'missing'}", "val")


def test_drop_sbd_images_only_touches_sbd_parts(tmp_path: Path) -> None:
    from pfn_napari.data.sbd import drop_sbd_images

    root = make_sbd(tmp_path)
    sbd = open_dataset(f"sbd:{root}", "train")
    kept, dropped = drop_sbd_images(sbd, {"a", "z"})
    assert dropped == 1 and kept.image_ids == ["b"]
    assert kept[0].instance_classes.tolist() == [12]  # image b, read through the subset
    assert drop_sbd_images(sbd, {"z"}) == (sbd, 0)  # no overlap: the same dataset
    both = open_dataset(f"sbd:{root}+synthetic:2", "train", VOC_CLASSES + ("disc", "square",
                                                                         "triangle"))
    kept, dropped = drop_sbd_images(both, {"a", "b", "synthetic_0_0_000000"})
    assert dropped == 2 and len(kept) == 2  # the synthetic images stay, whatever their ids
    assert kept.classes == both.classes
    synthetic = open_dataset("synthetic:2", "train")
    assert drop_sbd_images(synthetic, {str(i) for i in synthetic.image_ids}) == (synthetic, 0)


def test_sbd_list_naming_an_id_twice_is_refused_but_an_exclude_list_may(tmp_path: Path) -> None:
    """A repeated id in a split list would be evaluated twice (issue 30, item 9); in a list of
    ids to leave out a repeat is harmless."""
    from pfn_napari.data.sbd import read_exclude_ids

    root = make_sbd(tmp_path)
    (root / "val.txt").write_text("b\na\n  b  \n")
    with pytest.raises(DatasetError, match=r"val\.txt: image id 'b' is listed twice "
                                           r"\(lines 1 and 3\)"):
        open_dataset(f"sbd:{root}", "val")
    assert read_exclude_ids(str(root / "val.txt"))[0] == {"a", "b"}

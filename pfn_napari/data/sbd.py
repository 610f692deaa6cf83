"""Semantic Boundaries Dataset (Hariharan et al.) layout: ``sbd:ROOT``.

``ROOT`` is SBD's ``dataset`` folder (or a folder holding ``dataset/``) with ``img/{id}.jpg``,
``cls/{id}.mat``, ``inst/{id}.mat`` and the split lists ``ROOT/{split}.txt`` (SBD ships
``train.txt`` and ``val.txt``). The .mat files are MATLAB v5 struct arrays, read with
:func:`scipy.io.loadmat`:

* ``GTcls`` (1x1 struct): ``Segmentation`` (H, W) uint8 class map 0..20 (also
  ``Boundaries``, ``CategoriesPresent``, not used);
* ``GTinst`` (1x1 struct): ``Segmentation`` (H, W) uint8 instance ids 0..K and
  ``Categories`` (K, 1) the VOC class of id k at row k - 1 (also ``Boundaries``, not used).

SBD has no void label; a value 255 in either map is still read as void. The classes are the 20
VOC classes (mapped by name when ``classes`` is given).

SBD's ``train.txt`` holds images of VOC 2012 segmentation val, the paper's test set: training
code drops them with :func:`read_exclude_ids` + :func:`drop_sbd_images` (``data.train_exclude``).
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from pathlib import Path

import numpy as np
import scipy.io

from ..config import VOC_CLASSES, VOID
from ..errors import DatasetError
from ..structures import Sample
from .base import ConcatDataset, PFNDataset, class_lookup, compact_instances, read_image, \
    read_split_file, remap_sample_classes

#: Where a VOC root keeps the ids of VOC 2012 segmentation val, under the root or its
#: ``VOC2012`` / ``VOCdevkit/VOC2012`` folder.
VOC_VAL_LIST = Path("ImageSets") / "Segmentation" / "val.txt"


def read_mat_struct_field(path: Path, variable: str, field: str) -> np.ndarray:
    """``variable.field`` of a MATLAB v5 file holding a 1x1 struct ``variable``."""
    if not path.is_file():
        raise DatasetError(f"{path}: annotation not found")
    try:
        mat = scipy.io.loadmat(str(path), variable_names=[variable])
    except Exception as exc:  # noqa: BLE001 - any decoding failure of a user's file
        raise DatasetError(f"{path}: not a readable MATLAB v5 .mat file ({exc})") from None
    if variable not in mat:
        raise DatasetError(f"{path}: no {variable} struct in the file")
    struct = mat[variable]
    names = getattr(struct.dtype, "names", None)
    if struct.size < 1 or names is None or field not in names:
        raise DatasetError(f"{path}: {variable} is not a struct with a {field} field "
                           f"(fields: {', '.join(names or ()) or 'none'})")
    return np.asarray(struct.flat[0][field])


def find_sbd_root(root: str | Path) -> Path:
    root = Path(root).expanduser()
    for candidate in (root, root / "dataset"):
        if (candidate / "img").is_dir():
            return candidate
    if not root.exists():
        raise DatasetError(f"{root}: SBD folder not found")
    raise DatasetError(f"{root}: not an SBD folder (no img/ in it or in dataset/)")


class SBDDataset(PFNDataset):
    """One split of SBD (see the module docstring)."""

    def __init__(self, root: str | Path, split: str = "train",
                 classes: Sequence[str] | None = None, name: str | None = None) -> None:
        self.root = find_sbd_root(root)
        for sub in ("cls", "inst"):
            if not (self.root / sub).is_dir():
                raise DatasetError(f"{self.root / sub}: folder not found (SBD needs {sub}/)")
        split_file = self.root / f"{split}.txt"
        if not split_file.is_file():
            have = sorted(p.stem for p in self.root.glob("*.txt"))
            raise DatasetError(f"{split_file}: split file not found (splits here: "
                               f"{', '.join(have) or 'none'})")
        target = tuple(classes) if classes is not None else VOC_CLASSES
        self.lut = class_lookup(VOC_CLASSES, target)
        self._identity = target == VOC_CLASSES
        super().__init__(name or f"sbd:{root}", target, read_split_file(split_file))

    def source_of(self, index: int) -> str:
        return str(self.root / "inst" / f"{self.image_ids[index]}.mat")

    def load(self, index: int) -> Sample:
        stem = self.image_ids[index]
        cls_path = self.root / "cls" / f"{stem}.mat"
        inst_path = self.root / "inst" / f"{stem}.mat"
        class_map = read_mat_struct_field(cls_path, "GTcls", "Segmentation")
        inst = read_mat_struct_field(inst_path, "GTinst", "Segmentation")
        categories = read_mat_struct_field(inst_path, "GTinst", "Categories")
        image = read_image(self.root / "img" / f"{stem}.jpg")
        h, w = image.shape[:2]
        for path, arr in ((cls_path, class_map), (inst_path, inst)):
            if arr.shape != (h, w) or not np.issubdtype(arr.dtype, np.number):
                raise DatasetError(f"{path}: Segmentation of shape {arr.shape} ({arr.dtype}) does "
                                   f"not match the {w}x{h} image {stem}.jpg")
        try:
            categories = categories.astype(np.int64).reshape(-1)
        except (TypeError, ValueError):
            raise DatasetError(f"{inst_path}: GTinst.Categories is not a list of class "
                               "numbers") from None
        n_cls = len(VOC_CLASSES)
        bad = np.unique(class_map[(class_map > n_cls) & (class_map != VOID)])
        if bad.size or class_map.min() < 0:
            raise DatasetError(f"{cls_path}: class ids {bad.tolist()} unknown to the {n_cls} "
                               "VOC classes")
        if categories.size and (categories.min() < 1 or categories.max() > n_cls):
            raise DatasetError(f"{inst_path}: GTinst.Categories {categories.tolist()} outside "
                               f"1..{n_cls}")
        inst = inst.astype(np.int64)
        ids = np.unique(inst[(inst > 0) & (inst != VOID)])
        if ids.size and (ids.min() < 0 or ids.max() > len(categories)):
            raise DatasetError(f"{inst_path}: instance ids up to {int(ids.max())} but "
                               f"GTinst.Categories lists {len(categories)} classes")
        if len(categories) > 254:
            raise DatasetError(f"{inst_path}: {len(categories)} instances, more than the 254 an "
                               "instance map can hold")
        class_map = class_map.astype(np.uint8)
        inst = inst.astype(np.int32)
        inst[class_map == VOID] = VOID
        instance_map, instance_classes = compact_instances(inst, categories)
        sample = Sample(image, class_map, instance_map, instance_classes, stem, str(inst_path))
        return sample if self._identity else remap_sample_classes(sample, self.lut)


def read_exclude_ids(value: str, val_spec: str = "", val_split: str = "val"
                     ) -> tuple[frozenset[str], str]:
    """The image ids ``data.train_exclude`` names, and where they came from.

    ``value``: ``""`` (none); ``"val"``: the ids of the validation data ``val_spec`` (split
    ``val_split``), e.g. ``voc:/data/VOC2012`` -> its 1,449 val ids; a VOC root (its
    ``ImageSets/Segmentation/val.txt``, also under ``VOC2012/`` or ``VOCdevkit/VOC2012/``); or a
    text file of ids, one a line. Raises :class:`DatasetError` naming the value otherwise.
    """
    if not value:
        return frozenset(), ""
    if value == "val":
        from . import open_dataset

        try:
            ids = open_dataset(val_spec, val_split).image_ids
        except DatasetError as exc:
            raise DatasetError(f"data.train_exclude='val' reads the ids of data.val={val_spec!r} "
                               f"(split {val_split!r}): {exc}") from None
        return frozenset(str(i) for i in ids), f"{val_spec} [{val_split}]"
    path = Path(value.removeprefix("voc:")).expanduser()
    if path.is_dir():
        found = [d / VOC_VAL_LIST for d in (path, path / "VOC2012", path / "VOCdevkit" / "VOC2012")
                 if (d / VOC_VAL_LIST).is_file()]
        if not found:
            raise DatasetError(f"data.train_exclude={value!r}: a folder without {VOC_VAL_LIST} "
                               "(expected a VOC 2012 root)")
        path = found[0]
    if not path.is_file():
        raise DatasetError(f"data.train_exclude={value!r}: not 'val', a VOC root or a file of "
                           "image ids (no such file or folder)")
    return frozenset(read_split_file(path, unique=False)), str(path)


def drop_sbd_images(dataset: PFNDataset, ids: Collection[str]) -> tuple[PFNDataset, int]:
    """``dataset`` without the SBD images whose id is in ``ids`` (in every SBD part of a
    concatenation; other readers' images are kept), and how many were dropped."""
    if isinstance(dataset, SBDDataset):
        keep = [i for i, stem in enumerate(dataset.image_ids) if str(stem) not in ids]
        dropped = len(dataset) - len(keep)
        return (dataset.subset(keep) if dropped else dataset), dropped
    if isinstance(dataset, ConcatDataset):
        parts = [drop_sbd_images(part, ids) for part in dataset.parts]
        dropped = sum(n for _, n in parts)
        if not dropped:
            return dataset, 0
        return ConcatDataset([part for part, _ in parts], dataset.classes), dropped
    return dataset, 0

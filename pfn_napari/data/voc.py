"""PASCAL VOC 2012 segmentation layout: ``voc:ROOT``.

``ROOT`` is the ``VOC2012`` folder itself or a folder holding ``VOC2012/`` (or
``VOCdevkit/VOC2012/``). Read: ``JPEGImages/{id}.jpg``, ``SegmentationClass/{id}.png`` and
``SegmentationObject/{id}.png`` (palette PNGs: the palette *index* is the label, 255 void), for
the ids in ``ImageSets/Segmentation/{split}.txt``.

Instances are the ids of SegmentationObject (renumbered 1..K in increasing order); each takes the
majority class of its non-void, non-background SegmentationClass pixels. The class map is
SegmentationClass as it is; pixels void in either map are void in the instance map.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..config import VOC_CLASSES, VOID
from ..errors import DatasetError
from ..structures import Sample
from .base import PFNDataset, class_lookup, read_image, read_label_png, read_split_file, \
    remap_sample_classes


def find_voc_root(root: str | Path) -> Path:
    """The ``VOC2012``-like folder (holding ``JPEGImages``) at or under ``root``."""
    root = Path(root).expanduser()
    for candidate in (root, root / "VOC2012", root / "VOCdevkit" / "VOC2012"):
        if (candidate / "JPEGImages").is_dir():
            return candidate
    if not root.exists():
        raise DatasetError(f"{root}: VOC folder not found")
    raise DatasetError(f"{root}: not a VOC 2012 folder (no JPEGImages/ in it, nor in VOC2012/ "
                       "or VOCdevkit/VOC2012/ under it)")


def instances_from_voc_maps(class_map: np.ndarray, object_map: np.ndarray, where: str
                            ) -> tuple[np.ndarray, np.ndarray]:
    """SegmentationClass + SegmentationObject -> (instance map (H, W) int32, classes (K,) int64).

    Object ids are renumbered 1..K in increasing order; id k's class is the most frequent
    class among its pixels that are neither background nor void in ``class_map``.
    """
    void = (object_map == VOID) | (class_map == VOID)
    ids = np.unique(object_map[(object_map > 0) & ~void])
    instance_map = np.zeros(object_map.shape, dtype=np.int32)
    classes = []
    for k, obj in enumerate(ids, start=1):
        pixels = (object_map == obj) & ~void
        votes = np.bincount(class_map[pixels & (class_map > 0)].ravel(), minlength=1)
        if votes.sum() == 0:
            raise DatasetError(f"{where}: object {int(obj)} covers only background pixels of "
                               "SegmentationClass (the two maps disagree)")
        classes.append(int(votes.argmax()))
        instance_map[pixels] = k
    instance_map[void] = VOID
    return instance_map, np.asarray(classes, dtype=np.int64)


class VOCDataset(PFNDataset):
    """One split of a VOC 2012 segmentation folder (see the module docstring)."""

    def __init__(self, root: str | Path, split: str = "train",
                 classes: Sequence[str] | None = None, name: str | None = None) -> None:
        self.root = find_voc_root(root)
        split_file = self.root / "ImageSets" / "Segmentation" / f"{split}.txt"
        if not split_file.is_file():
            have = sorted(p.stem for p in split_file.parent.glob("*.txt"))
            raise DatasetError(f"{split_file}: split file not found (splits here: "
                               f"{', '.join(have) or 'none'})")
        for sub in ("SegmentationClass", "SegmentationObject"):
            if not (self.root / sub).is_dir():
                raise DatasetError(f"{self.root / sub}: folder not found (VOC needs {sub}/)")
        target = tuple(classes) if classes is not None else VOC_CLASSES
        self.lut = class_lookup(VOC_CLASSES, target)
        self._identity = target == VOC_CLASSES
        super().__init__(name or f"voc:{root}", target, read_split_file(split_file))

    def source_of(self, index: int) -> str:
        return str(self.root / "SegmentationObject" / f"{self.image_ids[index]}.png")

    def load(self, index: int) -> Sample:
        stem = self.image_ids[index]
        image_path = self.root / "JPEGImages" / f"{stem}.jpg"
        cls_path = self.root / "SegmentationClass" / f"{stem}.png"
        obj_path = self.root / "SegmentationObject" / f"{stem}.png"
        for path in (cls_path, obj_path):
            if not path.is_file():
                raise DatasetError(f"{path}: annotation not found for image {stem}")
        image = read_image(image_path)
        class_map = read_label_png(cls_path)
        object_map = read_label_png(obj_path)
        h, w = image.shape[:2]
        for path, arr in ((cls_path, class_map), (obj_path, object_map)):
            if arr.shape != (h, w):
                raise DatasetError(f"{path}: {arr.shape[1]}x{arr.shape[0]} pixels but the image "
                                   f"{image_path.name} is {w}x{h}")
        bad = np.unique(class_map[(class_map > len(VOC_CLASSES)) & (class_map != VOID)])
        if bad.size:
            raise DatasetError(f"{cls_path}: class ids {bad.tolist()} unknown to the "
                               f"{len(VOC_CLASSES)} VOC classes")
        if np.any((object_map < 0) | (object_map > VOID)):
            raise DatasetError(f"{obj_path}: object ids outside 0..255")
        instance_map, instance_classes = instances_from_voc_maps(class_map, object_map,
                                                                 str(obj_path))
        sample = Sample(image, class_map.astype(np.uint8), instance_map, instance_classes,
                        stem, str(obj_path))
        return sample if self._identity else remap_sample_classes(sample, self.lut)

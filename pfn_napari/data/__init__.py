"""Dataset readers -> :class:`~pfn_napari.structures.Sample`, and joint transforms.

One entry point, :func:`open_dataset`, takes the spec strings of the CLI (``--data SPEC
--split S``); see ``docs/data.md`` for every format::

    voc:ROOT                          PASCAL VOC 2012 segmentation layout
    sbd:ROOT                          SBD (img/, cls/, inst/ .mat files)
    coco:ANNOTATIONS.json:IMAGE_DIR   COCO instances JSON (polygons, RLE, crowd -> void)
    folder:IMAGE_DIR:MASK_DIR[:NAMES] images + one instance-id PNG each (e.g. Penn-Fudan)
    synthetic:N[@SEED][:SIZE]         the embedded shapes dataset (no files)
    SPEC+SPEC+...                     concatenation, classes merged by name

>>> ds = open_dataset("synthetic:4@0", split="train")
>>> len(ds), ds.classes
(4, ('disc', 'square', 'triangle'))
>>> ds[0].image.dtype
dtype('uint8')
"""

from __future__ import annotations

from collections.abc import Sequence

from ..errors import DatasetError
from .base import (CLASS_ALIASES, ConcatDataset, PFNDataset, SubsetDataset, class_lookup,
                   compact_instances, normalise_class_name, read_image)

__all__ = ["open_dataset", "PFNDataset", "DatasetError", "SubsetDataset", "ConcatDataset",
           "CLASS_ALIASES", "class_lookup", "compact_instances", "normalise_class_name",
           "read_image", "DATASET_KINDS"]

#: The spec prefixes :func:`open_dataset` understands.
DATASET_KINDS = ("voc", "sbd", "coco", "folder", "synthetic")


def open_dataset(spec: str, split: str = "train",
                 classes: Sequence[str] | None = None) -> PFNDataset:
    """Open the dataset named by ``spec`` (see the module docstring and docs/data.md).

    Args:
        spec: ``KIND:ARGS``, or several joined with ``+``.
        split: the split to read ("train", "val", ...; its meaning per format in docs/data.md).
        classes: names of classes 1..C to map the data onto (by name, with COCO->VOC aliases;
            classes of the data not in the list become background). ``None``: the data's own.

    Returns:
        A lazy :class:`PFNDataset` (``Sequence[Sample]``; nothing is decoded until indexed).

    Raises:
        DatasetError: an unknown kind, a missing folder or split file, a malformed annotation
            file (problems of single images are raised when that image is indexed).
    """
    spec = str(spec).strip()
    parts = [p.strip() for p in spec.split("+")]
    if not spec or any(not p for p in parts):
        raise DatasetError(f"dataset spec {spec!r}: empty part (expected KIND:ARGS[+KIND:ARGS])")
    if len(parts) > 1:
        opened = [_open_one(p, split, classes) for p in parts]
        return ConcatDataset(opened, classes)
    return _open_one(spec, split, classes)


def _open_one(spec: str, split: str, classes: Sequence[str] | None) -> PFNDataset:
    kind, sep, rest = spec.partition(":")
    kind = kind.strip().lower()
    if not sep or kind not in DATASET_KINDS or not rest:
        raise DatasetError(f"dataset spec {spec!r}: expected one of "
                           + ", ".join(f"{k}:..." for k in DATASET_KINDS)
                           + " (see docs/data.md)")
    if kind == "synthetic":
        from .synthetic import SyntheticDataset, parse_synthetic_spec

        count, seed, size = parse_synthetic_spec(rest)
        ds: PFNDataset = SyntheticDataset(count, seed, split, size, name=spec)
        if classes is not None:
            return ConcatDataset([ds], classes)
        return ds
    if kind == "voc":
        from .voc import VOCDataset

        return VOCDataset(rest, split, classes, name=spec)
    if kind == "sbd":
        from .sbd import SBDDataset

        return SBDDataset(rest, split, classes, name=spec)
    if kind == "coco":
        from .coco import COCODataset, split_coco_spec

        annotations, image_dir = split_coco_spec(rest)
        return COCODataset(annotations, image_dir, classes, name=spec)
    from .folder import FolderDataset, split_folder_spec

    image_dir, mask_dir, names = split_folder_spec(rest)
    return FolderDataset(image_dir, mask_dir, split, classes, name=spec, names=names)

"""What a training run learns from and is measured on, settled before any step: the classes
(the user's data or the ``--init`` checkpoint unless given), validation on the held-back part
of the training data unless given, the SBD images to leave out, and a refusal of data that
teaches or measures nothing. ``pfn train`` and ``pfn finetune`` share it."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

from .checkpoint import config_of, read_checkpoint
from .config import VOC_CLASSES, PFNConfig
from .data import normalise_class_name, open_dataset
from .data.folder import held_back
from .data.sbd import drop_sbd_images, read_exclude_ids
from .errors import DatasetError, PFNError


def exclude_images(dataset, cfg: PFNConfig, note):
    """The training data without the SBD images ``data.train_exclude`` names (e.g. those of
    VOC 2012 val, the paper's test set); says how many of them overlapped."""
    d = cfg.data
    ids, source = read_exclude_ids(d.train_exclude, d.val, d.val_split)
    kept, dropped = drop_sbd_images(dataset, ids)
    note(f"data.train_exclude={d.train_exclude!r}: {dropped} of the {len(dataset)} training "
         f"images are among the {len(ids)} ids of {source} and were dropped "
         f"({len(kept)} remain; only SBD images are checked)")
    return kept


def data_classes(dataset: Any) -> tuple[str, ...]:
    """The classes ``dataset`` is labelled with before they are mapped onto ``data.classes``
    (read from the readers' tables, no image decoded): a folder's names, a COCO file's
    categories, the VOC classes of VOC and SBD, the union over the parts of a concatenation."""
    for inner in ("parts", "parent"):  # ConcatDataset, SubsetDataset
        if getattr(dataset, inner, None) is not None:
            parts = dataset.parts if inner == "parts" else [dataset.parent]
            return tuple(dict.fromkeys(c for part in parts for c in data_classes(part)))
    if getattr(dataset, "native_classes", None) is not None:  # FolderDataset
        return tuple(dataset.native_classes)
    if getattr(dataset, "coco", None) is not None:  # COCODataset
        return tuple(str(c["name"]) for c in dataset.coco.dataset["categories"])
    if getattr(dataset, "lut", None) is not None:  # VOCDataset, SBDDataset
        return VOC_CLASSES
    return tuple(dataset.classes)


def data_defaults(cfg: PFNConfig, given: set[str], note: Callable[[str], None]) -> PFNConfig:
    """What follows from the user's own training data (``data.train`` in ``given``, the
    ``section.key`` names the user set): without ``data.classes`` (and ``model.num_classes``)
    the classes are those of the ``train.init`` checkpoint the run continues (its networks
    have their channels), else the data's own; without ``data.val`` validation reads the
    held-back part of the same data (its ``val`` split: for a folder every
    :data:`~pfn_napari.data.folder.VAL_EVERY`-th image, which its ``train`` split leaves out). Each change is said in
    one ``note`` line."""
    if "data.train" not in given:
        return cfg
    d, m = cfg.data, cfg.model
    if not given & {"data.classes", "model.num_classes"}:
        own, source = _init_classes(cfg.train.init), f"the --init checkpoint {cfg.train.init}"
        if not own:
            try:
                own = data_classes(open_dataset(d.train, d.train_split, None))
            except DatasetError:  # said by the run itself, after the output folder's checks
                own = ()
            source = f"the training data {d.train!r}"
        if own and tuple(own) != tuple(d.classes):
            d, m = dataclasses.replace(d, classes=tuple(own)), \
                dataclasses.replace(m, num_classes=len(own))
            note(f"data.classes={list(own)} and model.num_classes={len(own)}, from {source} "
                 "(set data.classes to choose others)")
    if "data.val" not in given:
        d = dataclasses.replace(d, val=d.train, val_split="val",
                                train_split=d.train_split if "data.train_split" in given
                                else "train")
        note(f"validation on the held-back images of the training data (data.val={d.train!r}, "
             f"split 'val'; the 'train' split leaves them out; set data.val to choose others)")
    return dataclasses.replace(cfg, data=d, model=m)


def _init_classes(init: str) -> tuple[str, ...]:
    """The classes of the checkpoint ``init`` ('' or an unreadable file: none; the run itself
    then says what is wrong with it)."""
    if not init:
        return ()
    try:
        return tuple(config_of(read_checkpoint(init), init).data.classes)
    except PFNError:
        return ()


def held_back_indices(image_ids: Sequence[str]) -> list[int]:
    """The indices of the images held back for validation when none is given: every
    :data:`~pfn_napari.data.folder.VAL_EVERY`-th of the ids in sorted order (positions 4, 9, 14, ...), the folder
    reader's built-in ``val`` split, so the same images are held back everywhere."""
    order = sorted(range(len(image_ids)), key=lambda i: str(image_ids[i]))
    return sorted(i for k, i in enumerate(order) if held_back(k))


def has_labelled_object(dataset: Any, num_classes: int) -> bool:
    """True when a sample of ``dataset`` has a pixel of a class 1..``num_classes`` (samples
    are decoded in order until one has; usually the first does)."""
    for i in range(len(dataset)):
        class_map = dataset[i].class_map  # (H, W) uint8: 0 background, 255 void
        if bool(((class_map >= 1) & (class_map <= num_classes)).any()):
            return True
    return False


def check_labels(dataset: Any, cfg: PFNConfig, role: str) -> None:
    """Refuse, before any training, a data set (``role``: 'train' or 'val') that teaches or
    measures nothing: its classes are none of ``data.classes``, or none of its images has a
    labelled object (training would learn background only; validation would report a
    perfect mIoU of 100). Raises :class:`DatasetError` naming the data spec."""
    d = cfg.data
    spec, split = (d.train, d.train_split) if role == "train" else (d.val, d.val_split)
    own = data_classes(dataset)
    if own and not {normalise_class_name(c) for c in own} & \
            {normalise_class_name(c) for c in d.classes}:
        fix = (f"to train on them: --set data.classes=[{','.join(own)}] "
               f"--set model.num_classes={len(own)}" if role == "train"
               else "pass a data.val labelled with the classes of data.train")
        raise DatasetError(f"data.{role}={spec!r}: its classes {list(own)} are none of the "
                           f"config's data.classes {list(d.classes)}; {fix}")
    if not has_labelled_object(dataset, len(d.classes)):
        raise DatasetError(f"data.{role}={spec!r} (split {split!r}): none of its "
                           f"{len(dataset)} images has a labelled object of data.classes "
                           f"{list(d.classes)}; check its masks or annotations")


def check_val_labels(cfg: PFNConfig) -> None:
    """:func:`check_labels` of ``data.val`` before training; a set that cannot be opened is
    left to the validations (each says why it was skipped)."""
    try:
        val = open_dataset(cfg.data.val, cfg.data.val_split, tuple(cfg.data.classes))
    except DatasetError:
        return
    check_labels(val, cfg, "val")

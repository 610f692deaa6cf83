"""A training set of hand-corrected images on disk: what napari's "add to training set" writes.

The layout is the folder reader's (:mod:`pfn_napari.data.folder`)::

    FOLDER/images/NAME.png      the photo, RGB
    FOLDER/masks/NAME.png       its instance ids: 0 background, 1..K one instance each
    FOLDER/masks/NAME.json      {"classes": {"1": "person", "2": "horse"}}: class per id

so ``folder:FOLDER/images:FOLDER/masks`` (:func:`correction_spec`) reads it for ``pfn train``,
``pfn finetune`` and ``pfn evaluate``. Each image has its own files: adding one never rewrites
another's (no shared table), and each file is written atomically (a temporary file in the same
folder, then a rename), so a reader never sees half a file.

Names: NAME is kept to letters, digits, ``.``, ``-`` and ``_``. A NAME already taken by another
photo becomes ``NAME_2``, ``NAME_3``, ... . Saving the SAME photo (pixel for pixel) under the
same NAME again is a newer correction of it: its mask and class table are replaced, the photo
stays, so fixing an image twice never trains on two versions of it.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image

from ..errors import DatasetError, OutputError
from ..output import atomic_write, atomic_write_text, temporary_prefix, write_error
from .base import MAX_INSTANCES, read_image
from .folder import DERIVED_KINDS, IMAGE_SUFFIXES

IMAGES, MASKS = "images", "masks"


def correction_spec(folder: str | Path) -> str:
    """The data spec that reads the training set in ``folder``:
    ``folder:FOLDER/images:FOLDER/masks`` (absolute paths)."""
    root = Path(folder).expanduser().absolute()
    if ":" in str(root):
        raise DatasetError(f"{root}: a training-set folder whose path holds ':' cannot be "
                           "named in a data spec; choose another folder")
    return f"folder:{root / IMAGES}:{root / MASKS}"


def save_correction(folder: str | Path, image: np.ndarray, labels: np.ndarray,
                    instance_classes: Mapping[int, str], name: str) -> Path:
    """Add one corrected image to the training set in ``folder``; return the image's path.

    Args:
        image: ``(H, W, 3)`` uint8 RGB (``(H, W)`` gray and ``(H, W, 4)`` RGBA are converted).
        labels: ``(H, W)`` integer instance ids, 0 background; ids need not be consecutive
            (they are renumbered 1..K in increasing order).
        instance_classes: ``{instance id -> class name}`` for every id in ``labels`` (names may
            be classes the model does not have yet); ids not in ``labels`` are ignored.
        name: the image's name (e.g. the layer's), made safe for a file name.

    Writes ``FOLDER/masks/NAME.png``, ``FOLDER/masks/NAME.json`` and then
    ``FOLDER/images/NAME.png``, each atomically (see the module docstring for taken names).
    Raises :class:`DatasetError` for inputs that do not fit (naming the argument, the value
    and what is expected) and :class:`OutputError` when the folder cannot be written.
    """
    rgb = _rgb(image)
    mask, table = _mask_and_table(labels, instance_classes, rgb.shape[:2])
    images, masks = Path(folder) / IMAGES, Path(folder) / MASKS
    for sub in (images, masks):
        try:
            sub.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise write_error(sub, exc) from None
    stem = safe_name(name)
    for k in range(1, 10_000):
        candidate = stem if k == 1 else f"{stem}_{k}"
        taken = _image_files(images, candidate)
        if taken:
            if not _same_photo(taken, rgb):
                continue  # another photo's name
            _write_labels(masks, candidate, mask, table)  # a newer correction of this photo
            return taken[0]
        if not _claim(masks / f"{candidate}.png", lambda fh: _save_png(mask, fh)):
            continue  # a mask without its image: another save is under way
        atomic_write_text(masks / f"{candidate}.json", _table_json(table))
        return atomic_write(images / f"{candidate}.png", lambda fh: _save_png(rgb, fh))
    raise OutputError(f"{images}: no free name for {stem!r} (tried {stem}_2 ... {stem}_9999)")


def safe_name(name: str) -> str:
    """``name`` as a file stem: other characters than letters, digits, ``.-_`` become ``_``;
    a name the folder reader would take for a file made from another image (``S_mask``,
    ``S_overlay``, ...) ends in ``-KIND`` instead."""
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", str(name)).strip("._") or "image"
    base, sep, kind = stem.rpartition("_")
    if sep and base and kind in DERIVED_KINDS:
        stem = f"{base}-{kind}"
    return stem[:120]


# --------------------------------------------------------------------------- checks

def _rgb(image: np.ndarray) -> np.ndarray:
    a = np.asarray(image)
    if a.dtype != np.uint8:
        raise DatasetError(f"save_correction: image is {a.dtype}, expected uint8 RGB values "
                           "0..255")
    if a.ndim == 2:
        a = np.repeat(a[..., None], 3, axis=2)
    elif a.ndim == 3 and a.shape[2] == 4:
        a = a[..., :3]
    if a.ndim != 3 or a.shape[2] != 3 or min(a.shape[:2]) < 1:
        raise DatasetError(f"save_correction: image has shape {tuple(np.shape(image))}, "
                           "expected (H, W, 3) RGB")
    return np.ascontiguousarray(a)


def _mask_and_table(labels: np.ndarray, instance_classes: Mapping[int, str],
                    size: tuple[int, int]) -> tuple[np.ndarray, dict[int, str]]:
    """The ``(H, W)`` uint8 mask with ids renumbered 1..K and ``{new id: class name}``."""
    lab = np.asarray(labels)
    if lab.shape != size:
        raise DatasetError(f"save_correction: labels have shape {lab.shape}, but the image is "
                           f"{size[0]}x{size[1]} (H x W); expected labels of the image's size")
    if not np.issubdtype(lab.dtype, np.integer):
        raise DatasetError(f"save_correction: labels are {lab.dtype}, expected integer "
                           "instance ids (0 background)")
    ids = np.unique(lab[lab != 0])
    if ids.size and ids.min() < 0:
        raise DatasetError(f"save_correction: labels hold negative ids ({int(ids.min())}); "
                           "expected 0 (background) or positive instance ids")
    if ids.size > MAX_INSTANCES:
        raise DatasetError(f"save_correction: {ids.size} instances, more than the "
                           f"{MAX_INSTANCES} a mask can hold")
    names = {int(k): str(v).strip() for k, v in instance_classes.items()}
    missing = [int(i) for i in ids if not names.get(int(i))]
    if missing:
        raise DatasetError(f"save_correction: instances {missing[:5]} have no class name in "
                           "instance_classes; give every instance a class")
    mask = np.zeros(size, dtype=np.uint8)
    table: dict[int, str] = {}
    for new, old in enumerate(ids.tolist(), start=1):
        mask[lab == old] = new
        table[new] = names[int(old)]
    return mask, table


# --------------------------------------------------------------------------- writing

def _table_json(table: Mapping[int, str]) -> str:
    return json.dumps({"classes": {str(k): v for k, v in table.items()}}, indent=1) + "\n"


def _save_png(array: np.ndarray, fh: BinaryIO) -> None:
    Image.fromarray(array).save(fh, format="PNG")


def _write_labels(masks: Path, stem: str, mask: np.ndarray, table: Mapping[int, str]) -> None:
    """Replace the mask and class table of ``stem`` (each atomically)."""
    atomic_write(masks / f"{stem}.png", lambda fh: _save_png(mask, fh))
    atomic_write_text(masks / f"{stem}.json", _table_json(table))


def _image_files(images: Path, stem: str) -> list[Path]:
    """The images of ``images`` named ``stem`` (any image suffix)."""
    return [p for p in (images / f"{stem}{s}" for s in IMAGE_SUFFIXES) if p.is_file()]


def _same_photo(files: list[Path], rgb: np.ndarray) -> bool:
    """Whether the saved image of a stem holds exactly ``rgb``."""
    try:
        saved = read_image(files[0])
    except (DatasetError, OSError):
        return False
    return saved.shape == rgb.shape and bool(np.array_equal(saved, rgb))


def _claim(path: Path, write: Callable[[BinaryIO], None]) -> bool:
    """Write ``path`` only if it does not exist, atomically (a temporary file linked to the
    name, which fails when the name is taken); False when it was taken."""
    try:
        fd, tmp = tempfile.mkstemp(prefix=temporary_prefix(path), suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise write_error(path, exc) from None
    try:
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o644)
        try:
            os.link(tmp, path)
        except FileExistsError:
            return False
        except OSError:  # a file system without hard links: exclusive create, then replace
            try:
                os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
            except FileExistsError:
                return False
            os.replace(tmp, path)
        return True
    except OSError as exc:
        raise write_error(path, exc) from None
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)

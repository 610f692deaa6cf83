"""A folder of images with one instance-id PNG each: ``folder:IMAGE_DIR:MASK_DIR[:NAMES]``.

The Penn-Fudan layout (``PNGImages/FudanPed00001.png`` + ``PedMasks/FudanPed00001_mask.png``)
is the model: image files (.png .jpg .jpeg .bmp .tif .tiff) in ``IMAGE_DIR``, for each one a
mask PNG in ``MASK_DIR`` named by the image's stem, with or without a ``_mask`` suffix. Mask
values: 0 background, 255 void, any other value one instance (ids are renumbered 1..K in
increasing order; 16-bit masks may use values above 255, at most 254 instances).

What counts as an image of ``IMAGE_DIR`` (:func:`list_images`): a file with an image suffix,
not hidden (``.name``), not a link that goes nowhere or in circles, and not made from another
image ``S`` of the folder: ``S_mask.png`` and the outputs of ``pfn predict``
(``S_instances.png``, ``S_classes.png``, ``S_overlay.png``, ``S_arrows.png``) are left out, and
so is ``S.png`` beside a photo ``S.jpg`` when ``MASK_DIR`` is ``IMAGE_DIR`` (the photo's mask).
Two images of one stem (``a.jpg`` and ``a.png``) are refused: masks and ids go by the stem.

Classes:

* ``:NAMES`` in the spec (``folder:PNGImages:PedMasks:person``) names the folder's classes,
  comma-separated: one name makes every instance that class (``classes.json`` is not read);
  several need the per-image ``"instances"`` table of ``classes.json`` below (its ``"classes"``,
  if present, must list the same names). The names are then mapped onto ``classes`` by name,
  which is how a class-less folder joins a multi-class ``+`` concatenation;
* without NAMES and without a ``classes.json`` in ``MASK_DIR`` every instance is of class 1,
  named by the one entry of ``classes`` (the CLI's ``--classes person``; ``"object"`` when
  ``classes`` is None); more than one class needs NAMES or the JSON;
* ``MASK_DIR/classes.json`` gives several::

      {"classes": ["person", "bicycle"],
       "instances": {"img001": ["person", "bicycle"],        # by increasing mask value
                     "img002": {"1": "bicycle", "7": 1}}}     # by mask value; 1-based indices ok

  an image missing from ``"instances"`` is an error when there is more than one class, else
  all its instances take the single class. With ``classes`` given, the JSON's names are mapped
  onto it by name (names not in the list become background);
* ``MASK_DIR/STEM.json`` beside an image's mask (what
  :func:`~pfn_napari.data.corrections.save_correction` writes, one file per image, so adding an
  image never rewrites another's table) gives that image's classes by mask value::

      {"classes": {"1": "person", "2": "cat"}}

  It takes the place of the image's entry in ``classes.json``. Without NAMES the folder's
  classes are those of ``classes.json`` followed by the other names of the per-image files,
  sorted; with several NAMES their names must be among them. One NAME still makes every
  instance that class (no table is read).

Splits: ``{split}.txt`` (one stem per line) is looked for in ``MASK_DIR``, ``IMAGE_DIR`` and
the parent of ``IMAGE_DIR``, in that order. Without one, ``all``/``trainval`` is every image,
and ``train``/``val`` split the images sorted by stem: every 5th (positions 4, 9, 14, ...) is
``val``, the rest ``train`` (Penn-Fudan: 136 train, 34 val).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..config import VOID
from ..errors import DatasetError
from ..structures import Sample
from .base import MAX_INSTANCES, PFNDataset, class_lookup, read_image, read_label_png, \
    read_split_file, remap_sample_classes, require_dir

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
#: ``S_KIND.png`` beside an image ``S`` is made from it, not an image: its mask, or what
#: ``pfn predict`` writes (instances, classes, overlay, arrows).
DERIVED_KINDS = ("mask", "instances", "classes", "overlay", "arrows")
VAL_EVERY = 5  # every 5th image (sorted by stem) is held out as "val" without split files


def split_folder_spec(rest: str) -> tuple[Path, Path, tuple[str, ...] | None]:
    """``"IMAGE_DIR:MASK_DIR[:NAME,NAME...]"`` -> (image folder, mask folder, names or None)."""
    parts = rest.split(":")
    if len(parts) not in (2, 3) or not all(p.strip() for p in parts):
        raise DatasetError(f"folder:{rest}: expected folder:IMAGE_DIR:MASK_DIR or "
                           "folder:IMAGE_DIR:MASK_DIR:CLASS[,CLASS...]")
    names = None
    if len(parts) == 3:
        names = tuple(n.strip() for n in parts[2].split(",") if n.strip())
        if not names:
            raise DatasetError(f"folder:{rest}: empty class name list")
    return Path(parts[0]).expanduser(), Path(parts[1]).expanduser(), names


def held_back(position: int) -> bool:
    """Whether the image at ``position`` of the sorted ids is held out as "val" (every
    ``VAL_EVERY``-th: positions 4, 9, 14, ...); the one rule of the built-in split and of the
    validation images ``pfn train`` and ``pfn finetune`` hold back."""
    return position % VAL_EVERY == VAL_EVERY - 1


def builtin_split(stems: Sequence[str], split: str, where: Path) -> list[str]:
    """The documented split of sorted stems: every ``VAL_EVERY``-th to "val"."""
    ordered = sorted(stems)
    if split in ("all", "trainval"):
        return ordered
    if split == "val":
        return [s for i, s in enumerate(ordered) if held_back(i)]
    if split == "train":
        return [s for i, s in enumerate(ordered) if not held_back(i)]
    raise DatasetError(f"{where}: no {split}.txt split file, and {split!r} is not a built-in "
                       "split (train, val, all, trainval)")


def list_images(image_dir: Path, mask_dir: Path) -> dict[str, Path]:
    """``stem -> file`` of the images in ``image_dir`` (see the module docstring): image
    suffixes only; hidden files, links that go nowhere or in circles, other images' masks
    and ``pfn predict`` outputs are left out. Two images of one stem are refused."""
    try:
        entries = sorted(image_dir.iterdir())
    except OSError as exc:
        raise DatasetError(f"{image_dir}: unreadable image folder ({exc})") from None
    files = [p for p in entries if p.suffix.lower() in IMAGE_SUFFIXES
             and not p.name.startswith(".") and _is_file(p)]
    stems = {p.stem for p in files}
    # with masks in the image folder, S.png beside a photo S.jpg is the photo's mask
    photos = {p.stem for p in files if p.suffix.lower() != ".png"} \
        if _same_folder(image_dir, mask_dir) else set()
    images: dict[str, Path] = {}
    for path in files:
        if _derived(path, stems, photos):
            continue
        if path.stem in images:
            raise DatasetError(f"{image_dir}: two images named {path.stem!r} "
                               f"({images[path.stem].name} and {path.name}); masks and image "
                               "ids go by the name without extension, so rename one")
        images[path.stem] = path
    if not images:
        raise DatasetError(f"{image_dir}: no images ({', '.join(IMAGE_SUFFIXES)})")
    return images


def _derived(path: Path, stems: set[str], photos: set[str]) -> bool:
    """Whether ``path`` is made from another image of the folder: ``S_mask.png`` or a
    ``pfn predict`` output ``S_instances.png`` (...) of an image ``S`` (a stem in ``stems``),
    or ``S.png`` where ``S`` is in ``photos`` (non-PNG images whose masks share the folder)."""
    if path.suffix.lower() != ".png":
        return False
    base, sep, kind = path.stem.rpartition("_")
    return bool(sep and kind in DERIVED_KINDS and base in stems) or path.stem in photos


def _is_file(path: Path) -> bool:
    try:
        return path.is_file()
    except OSError:  # a link in circles on some systems, a file we may not look at
        return False


def _same_folder(a: Path, b: Path) -> bool:
    try:
        return a.resolve() == b.resolve()
    except (OSError, RuntimeError):
        return False


class FolderDataset(PFNDataset):
    """Images + instance-id masks (see the module docstring)."""

    def __init__(self, image_dir: str | Path, mask_dir: str | Path, split: str = "train",
                 classes: Sequence[str] | None = None, name: str | None = None,
                 names: Sequence[str] | None = None) -> None:
        self.image_dir = require_dir(Path(image_dir), "image")
        self.mask_dir = require_dir(Path(mask_dir), "mask")
        self.images = list_images(self.image_dir, self.mask_dir)
        self.instance_table: dict[str, Any] = {}
        self._sidecar_stems: frozenset[str] = frozenset()
        if names is not None and len(names) == 1:
            native: tuple[str, ...] | None = tuple(names)  # every instance is this class
        else:
            native = self._read_class_tables(names)
        if native is None:
            if classes is not None and len(classes) != 1:
                raise DatasetError(f"{self.mask_dir}: the masks carry no classes; give one class "
                                   f"name (e.g. --classes person), not {len(classes)}, or name "
                                   "it in the spec (folder:IMAGE_DIR:MASK_DIR:person), or write "
                                   f"{self.mask_dir / 'classes.json'} (see docs/data.md)")
            target = tuple(classes) if classes is not None else ("object",)
            native = target
        else:
            target = tuple(classes) if classes is not None else native
        self.native_classes = native
        self.lut = class_lookup(native, target)
        self._identity = tuple(target) == tuple(native)
        stems = self._split_stems(split)
        super().__init__(name or f"folder:{image_dir}:{mask_dir}", target, stems)

    # -- set-up
    def _read_class_tables(self, names: Sequence[str] | None) -> tuple[str, ...] | None:
        """The folder's classes from ``classes.json`` and the per-image ``STEM.json`` files
        (None: neither exists); fills :attr:`instance_table` (stem -> classes)."""
        sidecars = self._read_sidecars()
        if not sidecars:
            return self._read_class_json(names)
        listed = self._read_class_json(names) if (self.mask_dir / "classes.json").is_file() \
            else None
        known = tuple(listed or names or ())
        found = {c for entry in sidecars.values() for c in entry.values()}
        extra = sorted(found - set(known))
        if names is not None and extra:
            stem = next(s for s, e in sidecars.items() if set(e.values()) & set(extra))
            raise DatasetError(f"{self.mask_dir / (stem + '.json')}: class {extra[0]!r} is not "
                               f"one of the spec's {list(names)}")
        self.instance_table.update(sidecars)
        self._sidecar_stems = frozenset(sidecars)
        return known + tuple(extra)

    def _read_sidecars(self) -> dict[str, dict[str, str]]:
        """``stem -> {mask value: class name}`` of the images that have a ``MASK_DIR/STEM.json``."""
        tables: dict[str, dict[str, str]] = {}
        for stem in self.images:
            path = self.mask_dir / f"{stem}.json"
            if not path.is_file():
                continue
            try:
                data = json.loads(path.read_text(encoding="utf-8"))
            except (json.JSONDecodeError, UnicodeDecodeError, OSError) as exc:
                raise DatasetError(f"{path}: malformed JSON ({exc})") from None
            entry = data.get("classes") if isinstance(data, dict) else None
            if not isinstance(entry, dict) or not all(
                    str(k).isdigit() and isinstance(v, str) and v.strip()
                    for k, v in entry.items()):
                raise DatasetError(f"{path}: expected {{\"classes\": {{mask value: class name}}}}, "
                                   "e.g. {\"classes\": {\"1\": \"person\", \"2\": \"cat\"}}")
            tables[stem] = {str(int(k)): v.strip() for k, v in entry.items()}
        return tables

    def _read_class_json(self, names: Sequence[str] | None = None) -> tuple[str, ...] | None:
        path = self.mask_dir / "classes.json"
        if not path.is_file():
            if names is not None:
                raise DatasetError(f"{path}: not found; {len(names)} class names in the spec "
                                   "need its per-image \"instances\" table (see docs/data.md)")
            return None
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError, OSError) as exc:
            raise DatasetError(f"{path}: malformed JSON ({exc})") from None
        listed = data.get("classes", names) if isinstance(data, dict) else None
        table = data.get("instances", {}) if isinstance(data, dict) else None
        if not isinstance(listed, (list, tuple)) or not listed \
                or not all(isinstance(n, str) for n in listed) or not isinstance(table, dict):
            raise DatasetError(f"{path}: expected {{\"classes\": [names...], \"instances\": "
                               "{stem: [class per instance] or {mask value: class}}}")
        if names is not None and tuple(listed) != tuple(names):
            raise DatasetError(f"{path}: classes {list(listed)} differ from the spec's "
                               f"{list(names)}")
        self.instance_table = table
        return tuple(listed)

    def _split_stems(self, split: str) -> list[str]:
        for folder in (self.mask_dir, self.image_dir, self.image_dir.parent):
            split_file = folder / f"{split}.txt"
            if split_file.is_file():
                stems = read_split_file(split_file)
                missing = [s for s in stems if s not in self.images]
                if missing:
                    raise DatasetError(f"{split_file}: {len(missing)} listed image(s) not in "
                                       f"{self.image_dir}, e.g. {missing[0]}")
                return stems
        return builtin_split(list(self.images), split, self.mask_dir)

    # -- reading
    def mask_path(self, stem: str) -> Path | None:
        for name in (f"{stem}_mask.png", f"{stem}.png"):
            if (self.mask_dir / name).is_file():
                return self.mask_dir / name
        return None

    def source_of(self, index: int) -> str:
        return str(self.images[self.image_ids[index]])

    def _classes_of(self, stem: str, values: np.ndarray, where: Path) -> np.ndarray:
        """Native class (1-based) of each mask value in ``values`` (sorted)."""
        native = self.native_classes
        entry = self.instance_table.get(stem)
        table = self.mask_dir / (f"{stem}.json" if stem in self._sidecar_stems else "classes.json")
        if entry is None:
            if len(native) == 1:
                return np.ones(len(values), dtype=np.int64)
            raise DatasetError(f"{table}: no classes for image {stem} "
                               f"({len(values)} instances in {where.name}); add its entry or "
                               f"write {self.mask_dir / (stem + '.json')}")

        def index_of(c: Any) -> int:
            if isinstance(c, str) and c in native:
                return native.index(c) + 1
            if isinstance(c, int) and not isinstance(c, bool) and 1 <= c <= len(native):
                return c
            raise DatasetError(f"{table}: image {stem}: class {c!r} "
                               f"is not one of {list(native)}")

        if isinstance(entry, list):
            if len(entry) != len(values):
                raise DatasetError(f"{table}: image {stem} lists "
                                   f"{len(entry)} classes but {where.name} has {len(values)} "
                                   "instances")
            return np.asarray([index_of(c) for c in entry], dtype=np.int64)
        if isinstance(entry, dict):
            by_value = {str(k): v for k, v in entry.items()}
            unknown = [int(v) for v in values if str(int(v)) not in by_value]
            if unknown:
                raise DatasetError(f"{where}: mask ids {unknown} have no class in "
                                   f"{table}")
            return np.asarray([index_of(by_value[str(int(v))]) for v in values], dtype=np.int64)
        raise DatasetError(f"{table}: image {stem}: expected a list or "
                           "a mapping of classes")

    def load(self, index: int) -> Sample:
        stem = self.image_ids[index]
        image_path = self.images[stem]
        mask_path = self.mask_path(stem)
        if mask_path is None:
            raise DatasetError(f"{image_path}: no mask for this image in {self.mask_dir} "
                               f"(looked for {stem}_mask.png and {stem}.png)")
        image = read_image(image_path)
        mask = read_label_png(mask_path)
        h, w = image.shape[:2]
        if mask.shape != (h, w):
            raise DatasetError(f"{mask_path}: {mask.shape[1]}x{mask.shape[0]} pixels but the "
                               f"image {image_path.name} is {w}x{h}")
        values = np.unique(mask[(mask > 0) & (mask != VOID)])
        if values.size and values.min() < 0:
            raise DatasetError(f"{mask_path}: negative mask values")
        if len(values) > MAX_INSTANCES:
            raise DatasetError(f"{mask_path}: {len(values)} instances, more than the "
                               f"{MAX_INSTANCES} an instance map can hold")
        classes = self._classes_of(stem, values, mask_path)
        instance_map = np.zeros((h, w), dtype=np.int32)
        instance_map[mask == VOID] = VOID
        class_map = np.zeros((h, w), dtype=np.uint8)
        class_map[mask == VOID] = VOID
        for k, (value, cls) in enumerate(zip(values, classes), start=1):
            pixels = mask == value
            instance_map[pixels] = k
            class_map[pixels] = cls
        sample = Sample(image, class_map, instance_map, classes, stem, str(mask_path))
        return sample if self._identity else remap_sample_classes(sample, self.lut)

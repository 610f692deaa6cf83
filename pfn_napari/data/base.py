"""The dataset container every reader returns, and the helpers readers share.

:class:`PFNDataset` is a lazy ``Sequence[Sample]``: constructing one lists the images (cheap,
no decoding); ``dataset[i]`` decodes image ``i`` and its annotation. Every problem a user can
cause (a missing file, a corrupt image, an inconsistent annotation) raises
:class:`~pfn_napari.errors.DatasetError` naming the file.

Skipping bad images (``skip_bad`` mode): :meth:`PFNDataset.check_files` decodes every sample and
returns one message per bad image instead of raising; :meth:`PFNDataset.drop_bad` returns the
dataset without them (warning once with their count and names); :meth:`PFNDataset.iter_valid`
iterates once, skipping bad samples and warning at the end. Indexing a bad sample always raises.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import overload

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from ..config import VOID
from ..errors import DatasetError
from ..structures import Sample

#: Most instances one image may hold: ids 1..254, 255 is void.
MAX_INSTANCES = 254

#: COCO (and other) class names -> the PASCAL VOC name of the same class. Matching is done on
#: normalised names (lower case, letters and digits only), so "dining table" == "diningtable".
CLASS_ALIASES: dict[str, str] = {
    "airplane": "aeroplane",
    "motorcycle": "motorbike",
    "couch": "sofa",
    "tv": "tvmonitor",
    "diningtable": "diningtable",
    "pottedplant": "pottedplant",
}


def normalise_class_name(name: str) -> str:
    """``"Dining Table"`` -> ``"diningtable"``; ``"tv"`` -> ``"tvmonitor"`` (via aliases)."""
    key = re.sub(r"[^a-z0-9]", "", str(name).lower())
    return CLASS_ALIASES.get(key, key)


def class_lookup(native: Sequence[str], target: Sequence[str]) -> np.ndarray:
    """``(256,)`` uint8 table: native class index 1..N -> target index 1..C (0: not in target).

    Index 0 (background) maps to 0 and 255 (void) to 255; names are matched with
    :func:`normalise_class_name`.
    """
    position = {normalise_class_name(n): i for i, n in enumerate(target, start=1)}
    lut = np.zeros(256, dtype=np.uint8)
    lut[VOID] = VOID
    for i, name in enumerate(native, start=1):
        lut[i] = position.get(normalise_class_name(name), 0)
    return lut


def kept_instance_ids(instance_map: np.ndarray, instance_classes: np.ndarray) -> np.ndarray:
    """``(K',)`` int64 the ids 1..K that :func:`compact_instances` keeps, in order: those with a
    pixel in ``instance_map`` and a class other than 0."""
    classes = np.asarray(instance_classes, dtype=np.int64).reshape(-1)
    present = np.bincount(np.asarray(instance_map).ravel().clip(0, 255), minlength=256)
    ids = np.arange(1, len(classes) + 1)
    return ids[(present[ids] > 0) & (classes > 0)]


def compact_instances(instance_map: np.ndarray, instance_classes: np.ndarray,
                      kept: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Drop instance ids with no pixel (or with class 0) and renumber the rest 1..K in order.

    ``instance_map`` ``(H, W)`` int (0 background, ids, 255 void); ``instance_classes[k - 1]`` is
    the class of id ``k``. Returns a new ``(H, W)`` int32 map and ``(K,)`` int64 classes.
    Pixels of a dropped id (class 0) become background. ``kept``: the ids
    :func:`kept_instance_ids` gives, when the caller has them already.
    """
    instance_map = np.asarray(instance_map)
    classes = np.asarray(instance_classes, dtype=np.int64).reshape(-1)
    if kept is None:
        kept = kept_instance_ids(instance_map, classes)  # (K',)
    lut = np.zeros(256, dtype=np.int32)
    lut[VOID] = VOID
    lut[kept] = np.arange(1, kept.size + 1)
    return lut[instance_map], classes[kept - 1]


def remap_sample_classes(sample: Sample, lut: np.ndarray) -> Sample:
    """Apply a class table from :func:`class_lookup` to the class map and instance classes;
    instances whose class maps to 0 become background (and ids are renumbered)."""
    class_map = lut[sample.class_map]
    classes = lut[sample.instance_classes.clip(0, 255)].astype(np.int64)
    instance_map, classes = compact_instances(sample.instance_map, classes)
    return Sample(sample.image, class_map, instance_map, classes, sample.image_id, sample.source)


def check_sample(sample: Sample, num_classes: int) -> Sample:
    """Check shapes, dtypes and ranges; raise :class:`DatasetError` naming ``sample.source``."""
    where = sample.source or str(sample.image_id)
    h, w = sample.image.shape[:2]
    if sample.image.shape != (h, w, 3) or sample.image.dtype != np.uint8:
        raise DatasetError(f"{where}: image of shape {sample.image.shape} {sample.image.dtype}, "
                           "expected (H, W, 3) uint8")
    for name, arr in (("class map", sample.class_map), ("instance map", sample.instance_map)):
        if arr.shape != (h, w):
            raise DatasetError(f"{where}: {name} is {arr.shape[1] if arr.ndim > 1 else '?'}x"
                               f"{arr.shape[0]} pixels but the image is {w}x{h}")
    bad = np.unique(sample.class_map[(sample.class_map > num_classes) & (sample.class_map != VOID)])
    if bad.size:
        raise DatasetError(f"{where}: class ids {bad.tolist()} unknown to the {num_classes} "
                           "classes")
    k = sample.num_instances
    if k > MAX_INSTANCES:
        raise DatasetError(f"{where}: {k} instances, more than the {MAX_INSTANCES} an instance map "
                           "can hold (ids 1..254, 255 is void)")
    ids = sample.instance_map
    bad = np.unique(ids[((ids < 0) | (ids > k)) & (ids != VOID)])
    if bad.size:
        raise DatasetError(f"{where}: instance ids {bad.tolist()} without a class "
                           f"({k} instances annotated)")
    if k and (sample.instance_classes.min() < 1 or sample.instance_classes.max() > num_classes):
        raise DatasetError(f"{where}: instance classes {sample.instance_classes.tolist()} outside "
                           f"1..{num_classes}")
    sample.class_map = sample.class_map.astype(np.uint8, copy=False)
    sample.instance_map = sample.instance_map.astype(np.int32, copy=False)
    sample.instance_classes = sample.instance_classes.astype(np.int64, copy=False)
    return sample


# ----------------------------------------------------------------------------- file decoding

def to_rgb_uint8(image: Image.Image) -> np.ndarray:
    """Any PIL image -> ``(H, W, 3)`` uint8 RGB.

    Grayscale and palette images are expanded, the alpha channel of RGBA/LA is dropped (not
    composited), and 16/32-bit integer images (modes ``I;16*``, ``I``) are scaled by their
    range (:func:`integer_range`: 255 when their maximum is at most 255, 4095 for 12-bit data
    (maximum at most 4095), else 65535); float images (mode ``F``) are taken as 0..1 when their
    maximum is at most 1, else as 0..255, and clipped.
    """
    mode = image.mode
    if mode.startswith("I") or mode == "F":
        arr = np.asarray(image, dtype=np.float64)
        if mode == "F":
            scale = 255.0 if arr.size and np.nanmax(arr) <= 1.0 else 1.0
        else:
            scale = 255.0 / integer_range(arr.max(initial=0))
        gray = np.nan_to_num(arr * scale).round().clip(0, 255).astype(np.uint8)
        return np.repeat(gray[..., None], 3, axis=2)
    if mode != "RGB":
        image = image.convert("RGB")
    return np.asarray(image, dtype=np.uint8).copy()


def integer_range(maximum: float) -> float:
    """The full-scale value of integer pixels whose largest value is ``maximum``: 255 (8-bit
    data, whatever the container), 4095 (12-bit data in 16 bits, as many cameras and
    microscopes write it), else 65535."""
    return 255.0 if maximum <= 255 else 4095.0 if maximum <= 4095 else 65535.0


def _open(path: Path, what: str) -> Image.Image:
    if not path.is_file():
        raise DatasetError(f"{path}: {what} not found")
    try:
        image = Image.open(path)
        image.load()
    except Image.DecompressionBombError as exc:
        raise DatasetError(f"{path}: too large to read ({exc}); shrink the image first") from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        raise DatasetError(f"{path}: corrupt or truncated {what} ({exc})") from None
    return image


def read_image(path: str | Path, exif: bool = False) -> np.ndarray:
    """Decode an image file to ``(H, W, 3)`` uint8 RGB (see :func:`to_rgb_uint8`).

    ``exif``: turn the image as its EXIF orientation tag says (``ImageOps.exif_transpose``),
    the way viewers show a phone photo; photos to segment are read so. Datasets read the
    stored pixels (the default), which their annotations refer to.
    """
    path = Path(path)
    image = _open(path, "image")
    try:
        if exif:
            image = ImageOps.exif_transpose(image)
        return to_rgb_uint8(image)
    except (OSError, ValueError, SyntaxError) as exc:
        raise DatasetError(f"{path}: cannot convert image mode {image.mode} to RGB "
                           f"({exc})") from None


def read_label_png(path: str | Path) -> np.ndarray:
    """Read a label PNG as its raw values ``(H, W)`` int32: the palette INDEX of a palette PNG
    (VOC), the value of a grayscale or 16-bit one. Colour (RGB) label images are rejected."""
    path = Path(path)
    image = _open(path, "annotation")
    if image.mode in ("P", "L", "1") or image.mode.startswith("I"):
        return np.asarray(image).astype(np.int32)
    raise DatasetError(f"{path}: label image of mode {image.mode}; expected a palette or "
                       "grayscale PNG whose values are the labels (not colours)")


def read_split_file(path: Path, unique: bool = True) -> list[str]:
    """Image ids, one per line (blank lines and surrounding spaces ignored).

    ``unique``: an id listed twice is a :class:`DatasetError` naming it and both lines (it
    would be read, trained on and evaluated twice); ``False`` keeps repeats (lists of ids to
    leave out, where a repeat is harmless).
    """
    if not path.is_file():
        raise DatasetError(f"{path}: split file not found")
    try:
        lines = path.read_text().split("\n")
    except (OSError, UnicodeDecodeError) as exc:
        raise DatasetError(f"{path}: unreadable split file ({exc})") from None
    first_line: dict[str, int] = {}
    ids = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        image_id = line.split()[0]
        if "/" in image_id or "\\" in image_id or image_id in (".", ".."):
            raise DatasetError(f"{path}: line {number} lists {image_id!r}; an image id is a file "
                               "name without folder or extension (e.g. 2007_000033)")
        if unique and image_id in first_line:
            raise DatasetError(f"{path}: image id {image_id!r} is listed twice (lines "
                               f"{first_line[image_id]} and {number}); each image may be listed "
                               "once")
        first_line.setdefault(image_id, number)
        ids.append(image_id)
    return ids


def require_dir(path: Path, what: str) -> Path:
    if not path.is_dir():
        raise DatasetError(f"{path}: {what} folder not found")
    return path


# ----------------------------------------------------------------------------- the datasets

class PFNDataset(Sequence[Sample]):
    """A lazy sequence of :class:`~pfn_napari.structures.Sample`.

    Attributes:
        name: the spec it was opened from (e.g. ``"voc:/data/VOC2012"``).
        classes: names of classes 1..C.
        category_ids: id written to COCO results JSON for class 1..C (the COCO category id for
            COCO data, else the class index itself; see docs/data.md).
        image_ids: one id per sample (file stem, or COCO image id), known without decoding.
    """

    name: str
    classes: tuple[str, ...]
    category_ids: tuple[int, ...]
    image_ids: list[str | int]

    def __init__(self, name: str, classes: Sequence[str], image_ids: Sequence[str | int],
                 category_ids: Sequence[int] | None = None) -> None:
        self.name = name
        self.classes = tuple(classes)
        self.category_ids = tuple(int(c) for c in category_ids) if category_ids is not None \
            else tuple(range(1, len(self.classes) + 1))
        self.image_ids = list(image_ids)

    # -- the reader's part
    def load(self, index: int) -> Sample:
        """Decode sample ``index`` (0 <= index < len); readers override this."""
        raise NotImplementedError

    def source_of(self, index: int) -> str:
        """The file of sample ``index`` (for messages); readers may override."""
        return str(self.image_ids[index])

    # -- Sequence
    def __len__(self) -> int:
        return len(self.image_ids)

    @overload
    def __getitem__(self, index: int) -> Sample: ...

    @overload
    def __getitem__(self, index: slice) -> "PFNDataset": ...

    def __getitem__(self, index: int | slice) -> Sample | "PFNDataset":
        if isinstance(index, slice):
            return self.subset(range(len(self))[index])
        n = len(self)
        i = int(index)
        if i < 0:
            i += n
        if not 0 <= i < n:
            raise IndexError(f"{self.name}: index {index} out of range for {n} samples")
        return check_sample(self.load(i), len(self.classes))

    def __iter__(self) -> Iterator[Sample]:
        for i in range(len(self)):
            yield self[i]

    def __repr__(self) -> str:
        return (f"{type(self).__name__}({getattr(self, 'name', '?')!r}, "
                f"{len(getattr(self, 'image_ids', ()))} images, "
                f"{len(getattr(self, 'classes', ()))} classes)")

    # -- subsets and bad samples
    def subset(self, indices: Sequence[int]) -> "PFNDataset":
        """The samples at ``indices`` (a view: nothing is decoded)."""
        return SubsetDataset(self, indices)

    def check_files(self, progress: bool = False) -> list[str]:
        """Decode every sample; return one ``"file: problem"`` message per bad sample (empty
        when all are good). Nothing is raised for bad samples."""
        return [msg for _, msg in self._scan(progress)]

    def drop_bad(self, progress: bool = False) -> "PFNDataset":
        """This dataset without its bad samples (see :meth:`check_files`); warns once with the
        count and the files skipped. Returns ``self`` when every sample is good."""
        bad = self._scan(progress)
        if not bad:
            return self
        _warn_skipped(self.name, [msg for _, msg in bad])
        skip = {i for i, _ in bad}
        return self.subset([i for i in range(len(self)) if i not in skip])

    def iter_valid(self, progress: bool = False) -> Iterator[Sample]:
        """Iterate once over the good samples, skipping bad ones (one warning at the end with
        their count and files). The messages are kept in ``self.skipped`` afterwards."""
        self.skipped: list[str] = []
        for i in _progress(range(len(self)), progress, f"reading {self.name}"):
            try:
                sample = self[i]
            except DatasetError as exc:
                self.skipped.append(str(exc))
                continue
            yield sample
        if self.skipped:
            _warn_skipped(self.name, self.skipped)

    def _scan(self, progress: bool) -> list[tuple[int, str]]:
        bad = []
        for i in _progress(range(len(self)), progress, f"checking {self.name}"):
            try:
                self[i]
            except DatasetError as exc:
                bad.append((i, str(exc)))
        return bad


class SubsetDataset(PFNDataset):
    """Some samples of another dataset, in the given order."""

    def __init__(self, parent: PFNDataset, indices: Sequence[int]) -> None:
        self.parent = parent
        n = len(parent)
        self.indices = [int(i) + n if int(i) < 0 else int(i) for i in indices]
        for i in self.indices:
            if not 0 <= i < n:
                raise IndexError(f"{parent.name}: index {i} out of range for {n} samples")
        super().__init__(parent.name, parent.classes, [parent.image_ids[i] for i in self.indices],
                         parent.category_ids)

    def load(self, index: int) -> Sample:
        return self.parent.load(self.indices[index])

    def source_of(self, index: int) -> str:
        return self.parent.source_of(self.indices[index])


class ConcatDataset(PFNDataset):
    """Datasets one after the other, each part's classes remapped (by name) to ``classes``."""

    def __init__(self, parts: Sequence[PFNDataset], classes: Sequence[str] | None = None) -> None:
        if not parts:
            raise DatasetError("empty dataset spec")
        if classes is None:
            merged: list[str] = []
            seen: set[str] = set()
            for part in parts:
                for name in part.classes:
                    if normalise_class_name(name) not in seen:
                        seen.add(normalise_class_name(name))
                        merged.append(name)
            classes = merged
        classes = tuple(classes)
        # category id of each merged class: from the first part that has the class, unless
        # that gives duplicates (then the class index itself)
        ids: list[int] = []
        for c, name in enumerate(classes, start=1):
            cid = c
            for part in parts:
                found = [i for n, i in zip(part.classes, part.category_ids)
                         if normalise_class_name(n) == normalise_class_name(name)]
                if found:
                    cid = found[0]
                    break
            ids.append(cid)
        if len(set(ids)) != len(ids):
            ids = list(range(1, len(classes) + 1))
        self.parts = list(parts)
        self.luts = [class_lookup(p.classes, classes) for p in parts]
        self.offsets = np.cumsum([0] + [len(p) for p in parts])
        super().__init__("+".join(p.name for p in parts), classes,
                         [i for p in parts for i in p.image_ids], ids)

    def _locate(self, index: int) -> tuple[int, int]:
        part = int(np.searchsorted(self.offsets, index, side="right")) - 1
        return part, index - int(self.offsets[part])

    def load(self, index: int) -> Sample:
        part, local = self._locate(index)
        sample = self.parts[part][local]
        lut, n = self.luts[part], len(self.parts[part].classes)
        if n == len(self.classes) and np.array_equal(lut[:n + 1], np.arange(n + 1)):
            return sample  # same classes in the same order
        return remap_sample_classes(sample, lut)

    def source_of(self, index: int) -> str:
        part, local = self._locate(index)
        return self.parts[part].source_of(local)


def _progress(items: range, enabled: bool, desc: str):
    if not enabled:
        return items
    from tqdm import tqdm

    return tqdm(items, desc=desc, unit="img")


def _warn_skipped(name: str, messages: list[str]) -> None:
    shown = "; ".join(messages[:10]) + (f"; ... and {len(messages) - 10} more"
                                        if len(messages) > 10 else "")
    warnings.warn(f"{name}: skipped {len(messages)} bad sample(s): {shown}", stacklevel=3)


"""COCO instances JSON: ``coco:ANNOTATIONS.json:IMAGE_DIR``.

Masks are decoded by pycocotools (polygons, compressed and uncompressed RLE) after
:func:`decode_segmentation` checks each RLE: its size is the image's and its runs add up to
H x W. Ids are integers, each image is listed once and every annotation's image is listed;
anything else is a :class:`DatasetError` naming the ids. The JSON file is the split: ``split`` is not used (every image of the file is read, in the
file's order; images without annotations are background-only samples).

* Classes: the JSON's categories in increasing id order, ``category_ids`` their COCO ids; or,
  when ``classes`` is given, categories are matched to it by name (with the COCO->VOC aliases
  of :data:`~pfn_napari.data.base.CLASS_ALIASES`) and categories not in the list are background;
  ``category_ids[c - 1]`` is then the COCO id of the category matched to class c; a class no
  category matched gets ``max COCO id + c``, so ids stay unique and collide with no category.
* Crowd annotations (``iscrowd = 1``) of kept categories are void (255) in both maps.
* Overlaps: instances are painted over the crowd void in decreasing order of mask area, so where
  two masks overlap the SMALLER one keeps the pixels (ties: the later annotation wins). An
  instance left with no visible pixel is dropped; ids are 1..K in painting order.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
from collections.abc import Sequence
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any

import numpy as np

from ..config import VOID
from ..errors import DatasetError
from ..structures import Sample
from .base import MAX_INSTANCES, PFNDataset, compact_instances, normalise_class_name, read_image


#: Polygon points may lie this many pixels beyond one image size outside the image.
POLYGON_MARGIN = 64
#: Most edge length of an annotation's polygons, in units of the image's height + width.
MAX_POLYGON_WALK = 100


def split_coco_spec(rest: str) -> tuple[Path, Path]:
    """``"ANN.json:IMAGE_DIR"`` -> (annotation file, image folder)."""
    marker = ".json:"
    at = rest.lower().rfind(marker)
    if at < 0:
        raise DatasetError(f"coco:{rest}: expected coco:ANNOTATIONS.json:IMAGE_DIR")
    return Path(rest[:at + len(".json")]).expanduser(), Path(rest[at + len(marker):]).expanduser()


def _compressed_runs(counts: bytes) -> np.ndarray:
    """The run lengths of a compressed COCO RLE string (pycocotools' ``rleFrString``, in
    NumPy): 6-bit characters from ``'0'``, 5 value bits + a continuation bit, sign-extended;
    runs after the second are stored as differences to the run two before."""
    if not counts:
        raise ValueError("empty 'counts'")
    c = np.frombuffer(counts, dtype=np.uint8).astype(np.int64) - 48
    if c.min() < 0 or c.max() > 63:
        raise ValueError("'counts' holds characters outside the RLE alphabet '0'..'o'")
    end = (c & 0x20) == 0  # the last character of a number
    if not end[-1]:
        raise ValueError("'counts' ends in the middle of a number (truncated)")
    group = np.concatenate([[0], np.cumsum(end)[:-1]])  # (L,) number each character belongs to
    starts = np.flatnonzero(np.concatenate([[True], end[:-1]]))
    k = np.arange(c.size) - starts[group]  # position of the character within its number
    if k.max() > 11:
        raise ValueError("'counts' holds a number too large for an image")
    x = np.zeros(starts.size, dtype=np.int64)
    np.add.at(x, group, (c & 0x1F) << (5 * k))
    last = c[end]
    negative = (last & 0x10) != 0
    x[negative] -= np.int64(1) << (5 * (k[end][negative] + 1))  # sign extension
    runs = x.copy()
    runs[1::2] = np.cumsum(x[1::2])  # run i (i >= 3) = value i + run i-2
    runs[2::2] = np.cumsum(x[2::2])
    return runs


def decode_segmentation(seg: Any, height: int, width: int, where: str,
                        error: type[Exception] = DatasetError) -> np.ndarray:
    """A COCO segmentation (polygons, uncompressed or compressed RLE) as an ``(H, W)`` bool mask,
    checked by :func:`segmentation_rle`."""
    from pycocotools import mask as mask_utils

    rle = segmentation_rle(seg, height, width, where, error)
    try:
        mask = mask_utils.decode(rle)
    except Exception as exc:  # noqa: BLE001 - pycocotools raises bare TypeError/ValueError
        raise error(f"{where}: unreadable segmentation ({exc})") from None
    if mask.shape[:2] != (height, width):
        raise error(f"{where}: mask is {mask.shape[1]}x{mask.shape[0]} but the image is "
                    f"{width}x{height}")
    return mask.astype(bool)


def segmentation_rle(seg: Any, height: int, width: int, where: str,
                     error: type[Exception] = DatasetError) -> dict:
    """A COCO segmentation (polygons, uncompressed or compressed RLE) as a checked pycocotools
    RLE (``{"size": [H, W], "counts": bytes}``), without decoding it.

    An RLE must state ``size`` ``[height, width]`` and its runs must be non-negative and add up
    to ``height * width`` (pycocotools decodes anything, even ``"counts": ""``, into garbage);
    anything else raises ``error`` with ``where`` (the file and the entry) in the message.
    """
    from pycocotools import mask as mask_utils

    try:
        if isinstance(seg, dict):
            size = seg.get("size")
            if not (isinstance(size, list) and len(size) == 2
                    and all(isinstance(s, int) and not isinstance(s, bool) for s in size)):
                raise error(f"{where}: RLE 'size' must be [height, width], got {size!r}")
            if size != [height, width]:
                raise error(f"{where}: mask size {size} (height, width) but the image is "
                            f"[{height}, {width}]")
            counts = seg.get("counts")
            if isinstance(counts, list):
                if not all(isinstance(n, int) and not isinstance(n, bool) for n in counts):
                    raise error(f"{where}: uncompressed RLE 'counts' must be integers")
                runs = np.asarray(counts, dtype=np.int64)
            elif isinstance(counts, (str, bytes)):
                counts = counts.encode("ascii") if isinstance(counts, str) else counts
                try:
                    runs = _compressed_runs(counts)
                except ValueError as exc:
                    raise error(f"{where}: corrupt compressed RLE ({exc})") from None
            else:
                raise error(f"{where}: RLE 'counts' must be a string or a list of integers")
            if runs.size and runs.min() < 0:
                raise error(f"{where}: RLE has a negative run length ({int(runs.min())})")
            if int(runs.sum()) != height * width:
                raise error(f"{where}: RLE runs add up to {int(runs.sum())} pixels, but the "
                            f"image has {height} x {width} = {height * width}")
            rle = (mask_utils.frPyObjects(seg, height, width) if isinstance(counts, list)
                   else {"size": size, "counts": counts})
        elif isinstance(seg, list) and seg and all(isinstance(p, list) for p in seg):
            check_polygons(seg, height, width, where, error)
            rle = mask_utils.merge(mask_utils.frPyObjects(seg, height, width))
        else:
            raise error(f"{where}: segmentation must be an RLE dict or a list of polygons")
    except error:
        raise
    except Exception as exc:  # noqa: BLE001 - pycocotools raises bare TypeError/ValueError
        raise error(f"{where}: unreadable segmentation ({exc})") from None
    return rle


def check_polygons(polygons: list[list], height: int, width: int, where: str,
                   error: type[Exception] = DatasetError) -> None:
    """Refuse polygons pycocotools would misread or decode with unbounded memory.

    Each polygon is an even number (at least 6) of finite numbers ``x1, y1, x2, y2, ...``.
    Points may lie outside the image (pycocotools clips them), by up to the image's own size
    plus :data:`POLYGON_MARGIN` pixels: ``-(W + 64) <= x <= 2 W + 64``, the same for y with H.
    The edges of all polygons together may not be longer than :data:`MAX_POLYGON_WALK` times
    ``H + W`` (pycocotools stores 5 points per pixel of edge).
    """
    size = np.array([width, height], dtype=np.float64)
    low, high = -(size + POLYGON_MARGIN), 2 * size + POLYGON_MARGIN
    walk = 0.0
    for p, poly in enumerate(polygons):
        bad = next((v for v in poly if not _is_number(v)), None)
        if bad is not None:
            raise error(f"{where}: polygon {p} holds {bad!r:.24}; coordinates must be numbers")
        if len(poly) < 6 or len(poly) % 2:
            raise error(f"{where}: polygon {p} has {len(poly)} coordinates; a polygon needs an "
                        "even number of them, at least 6 (x1, y1, x2, y2, x3, y3, ...)")
        bad = next((v for v in poly if not _finite(v)), None)
        if bad is not None:
            raise error(f"{where}: polygon {p} holds the coordinate {bad!r:.24}; coordinates must "
                        "be finite numbers")
        xy = np.asarray(poly, dtype=np.float64).reshape(-1, 2)  # (P, 2) x, y
        outside = (xy < low) | (xy > high)
        if outside.any():
            row, axis = np.argwhere(outside)[0]
            value = poly[2 * row + axis]
            raise error(f"{where}: polygon {p} has {'xy'[axis]} = {value!r:.24}, far outside "
                        f"the {width}x{height} image (x must lie in [{low[0]:g}, {high[0]:g}] "
                        f"and y in [{low[1]:g}, {high[1]:g}])")
        walk += float(np.abs(xy - np.roll(xy, 1, axis=0)).max(axis=1).sum())
    if walk > MAX_POLYGON_WALK * (height + width):
        raise error(f"{where}: polygon edges {walk:.0f} pixels long in all, more than "
                    f"{MAX_POLYGON_WALK} x (height + width) = {MAX_POLYGON_WALK * (height + width)}"
                    " for this image; too large to decode")


def _finite(value: int | float) -> bool:
    try:
        return math.isfinite(value)
    except OverflowError:  # an int too large for a float
        return False


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def load_coco(path: Path):
    """A ``pycocotools.coco.COCO`` for ``path``, with bad files as :class:`DatasetError`."""
    from pycocotools.coco import COCO

    if not path.is_file():
        raise DatasetError(f"{path}: COCO annotation file not found")
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DatasetError(f"{path}: malformed JSON ({exc})") from None
    except OSError as exc:
        raise DatasetError(f"{path}: unreadable ({exc})") from None
    if not isinstance(data, dict) or not isinstance(data.get("images"), list) \
            or not isinstance(data.get("categories"), list) \
            or not isinstance(data.get("annotations", []), list):
        raise DatasetError(f"{path}: not a COCO instances file (needs lists 'images', "
                           "'annotations' and 'categories')")
    data.setdefault("annotations", [])
    try:
        for im in data["images"]:
            im["id"], im["file_name"], im["height"], im["width"]  # noqa: B018
        for cat in data["categories"]:
            cat["id"], cat["name"]  # noqa: B018
        for ann in data["annotations"]:
            ann["image_id"], ann["category_id"], ann["segmentation"]  # noqa: B018
    except (KeyError, TypeError) as exc:
        raise DatasetError(f"{path}: an image, category or annotation entry lacks {exc} "
                           "(COCO needs images[id, file_name, height, width], categories[id, "
                           "name], annotations[image_id, category_id, segmentation])") from None
    _check_ids(path, data)
    coco = COCO()
    coco.dataset = data
    try:
        with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress
            coco.createIndex()
    except (KeyError, TypeError) as exc:
        raise DatasetError(f"{path}: inconsistent COCO file ({exc!r})") from None
    return coco


def _check_ids(path: Path, data: dict) -> None:
    """Integer ids, each image listed once, every annotation on a listed image."""
    for kind, entries, key in (("image", data["images"], "id"),
                               ("category", data["categories"], "id"),
                               ("annotation", data["annotations"], "image_id"),
                               ("annotation", data["annotations"], "category_id")):
        for n, entry in enumerate(entries):
            if not _is_int(entry[key]):
                raise DatasetError(f"{path}: {kind} {n} has {key} {entry[key]!r}; COCO ids must "
                                   "be integers")
    seen: set[int] = set()
    twice = sorted({im["id"] for im in data["images"] if im["id"] in seen or seen.add(im["id"])})
    if twice:
        raise DatasetError(f"{path}: image id(s) {_few(twice)} listed more than once in "
                           "'images' (each image would be evaluated twice); keep one entry each")
    orphans = sorted({a["image_id"] for a in data["annotations"]} - seen)
    if orphans:
        ann_ids = [a.get("id", n) for n, a in enumerate(data["annotations"])
                   if a["image_id"] in set(orphans)]
        raise DatasetError(f"{path}: annotation(s) {_few(ann_ids)} refer to image id(s) "
                           f"{_few(orphans)}, not in 'images'; add the images or drop the "
                           "annotations")


def check_file_names(path: Path, images: list[dict]) -> None:
    """Each image's ``file_name`` is a relative path inside the image folder: a string, not
    absolute, without ``..`` (COCO's names are plain file names)."""
    for n, im in enumerate(images):
        name = im["file_name"]
        if not isinstance(name, str) or not name.strip():
            raise DatasetError(f"{path}: image {im['id']} (entry {n}) has file_name {name!r}; "
                               "expected the image's file name in the image folder")
        posix, windows = PurePosixPath(name), PureWindowsPath(name)
        if posix.is_absolute() or windows.is_absolute() or windows.drive \
                or ".." in posix.parts or ".." in windows.parts:
            raise DatasetError(f"{path}: image {im['id']} (entry {n}) has file_name {name!r}, "
                               "which points outside the image folder; file_name must be a "
                               "path inside it (no absolute path, no '..')")


def _few(values: Sequence[Any], n: int = 5) -> str:
    shown = ", ".join(str(v) for v in values[:n])
    return shown + (f", ... ({len(values)} in all)" if len(values) > n else "")


class COCODataset(PFNDataset):
    """Every image of a COCO instances JSON (see the module docstring)."""

    def __init__(self, annotations: str | Path, image_dir: str | Path,
                 classes: Sequence[str] | None = None, name: str | None = None) -> None:
        self.annotation_file = Path(annotations)
        self.image_dir = Path(image_dir)
        if not self.image_dir.is_dir():
            raise DatasetError(f"{self.image_dir}: COCO image folder not found")
        self.coco = load_coco(self.annotation_file)
        check_file_names(self.annotation_file, self.coco.dataset["images"])
        cats = sorted(self.coco.dataset["categories"], key=lambda c: c["id"])
        if classes is None:
            target = tuple(str(c["name"]) for c in cats)
            ids = [int(c["id"]) for c in cats]
            self.cat_to_class = {int(c["id"]): i for i, c in enumerate(cats, start=1)}
        else:
            target = tuple(classes)
            position = {normalise_class_name(n): i for i, n in enumerate(target, start=1)}
            self.cat_to_class = {}
            top = max((int(c["id"]) for c in cats), default=0)
            ids = [top + k for k in range(1, len(target) + 1)]  # unmatched: unique, not COCO's
            for c in cats:
                k = position.get(normalise_class_name(c["name"]), 0)
                if k:
                    if k in self.cat_to_class.values():
                        continue  # two categories of one name: the first (lowest id) is used
                    self.cat_to_class[int(c["id"])] = k
                    ids[k - 1] = int(c["id"])
        image_ids = [int(im["id"]) for im in self.coco.dataset["images"]]
        super().__init__(name or f"coco:{annotations}:{image_dir}", target, image_ids, ids)

    def source_of(self, index: int) -> str:
        info = self.coco.imgs[self.image_ids[index]]
        return str(self.image_dir / info["file_name"])

    def load(self, index: int) -> Sample:
        image_id = self.image_ids[index]
        info = self.coco.imgs[image_id]
        image_path = self.image_dir / info["file_name"]
        image = read_image(image_path)
        h, w = image.shape[:2]
        if (int(info["height"]), int(info["width"])) != (h, w):
            raise DatasetError(f"{image_path}: {w}x{h} pixels but {self.annotation_file.name} "
                               f"says {info['width']}x{info['height']}")
        crowd: list[np.ndarray] = []
        things: list[tuple[int, int, int, np.ndarray]] = []  # (area, order, class, mask)
        for order, ann in enumerate(self.coco.imgToAnns.get(image_id, [])):
            if ann["category_id"] not in self.coco.cats:
                raise DatasetError(f"{self.annotation_file}: annotation {ann.get('id')} of image "
                                   f"{image_id} has category {ann['category_id']}, not in "
                                   "'categories'")
            cls = self.cat_to_class.get(int(ann["category_id"]), 0)
            if cls == 0:
                continue
            mask = decode_segmentation(  # (H, W) bool
                ann["segmentation"], h, w,
                f"{self.annotation_file}: annotation {ann.get('id')} of image {image_id}")
            if ann.get("iscrowd", 0):
                crowd.append(mask)
            else:
                things.append((int(mask.sum()), order, cls, mask))
        if len(things) > MAX_INSTANCES:
            raise DatasetError(f"{image_path}: {len(things)} instances in "
                               f"{self.annotation_file.name}, more than the {MAX_INSTANCES} an "
                               "instance map can hold")
        things.sort(key=lambda t: (-t[0], t[1]))  # largest first: smaller ones are painted over
        instance_map = np.zeros((h, w), dtype=np.int32)
        class_map = np.zeros((h, w), dtype=np.uint8)
        for mask in crowd:
            instance_map[mask] = VOID
            class_map[mask] = VOID
        classes = np.zeros(len(things), dtype=np.int64)
        for k, (_, _, cls, mask) in enumerate(things, start=1):
            instance_map[mask] = k
            class_map[mask] = cls
            classes[k - 1] = cls
        instance_map, classes = compact_instances(instance_map, classes)
        return Sample(image, class_map, instance_map, classes, image_id, str(image_path))

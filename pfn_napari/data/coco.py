"""COCO instances JSON: ``coco:ANNOTATIONS.json:IMAGE_DIR``.

Masks are decoded by pycocotools (``COCO.annToMask``: polygons, compressed and uncompressed
RLE). The JSON file is the split: ``split`` is not used (every image of the file is read, in the
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
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..config import VOID
from ..errors import DatasetError
from ..structures import Sample
from .base import MAX_INSTANCES, PFNDataset, compact_instances, normalise_class_name, read_image


def split_coco_spec(rest: str) -> tuple[Path, Path]:
    """``"ANN.json:IMAGE_DIR"`` -> (annotation file, image folder)."""
    marker = ".json:"
    at = rest.lower().rfind(marker)
    if at < 0:
        raise DatasetError(f"coco:{rest}: expected coco:ANNOTATIONS.json:IMAGE_DIR")
    return Path(rest[:at + len(".json")]).expanduser(), Path(rest[at + len(marker):]).expanduser()


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
    coco = COCO()
    coco.dataset = data
    try:
        with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress
            coco.createIndex()
    except (KeyError, TypeError) as exc:
        raise DatasetError(f"{path}: inconsistent COCO file ({exc!r})") from None
    return coco


class COCODataset(PFNDataset):
    """Every image of a COCO instances JSON (see the module docstring)."""

    def __init__(self, annotations: str | Path, image_dir: str | Path,
                 classes: Sequence[str] | None = None, name: str | None = None) -> None:
        self.annotation_file = Path(annotations)
        self.image_dir = Path(image_dir)
        if not self.image_dir.is_dir():
            raise DatasetError(f"{self.image_dir}: COCO image folder not found")
        self.coco = load_coco(self.annotation_file)
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
            try:
                mask = self.coco.annToMask(ann).astype(bool)  # (H, W)
            except Exception as exc:  # noqa: BLE001 - pycocotools raises many kinds
                raise DatasetError(f"{self.annotation_file}: annotation {ann.get('id')} of image "
                                   f"{image_id}: undecodable segmentation ({exc!r})") from None
            if mask.shape != (h, w):
                raise DatasetError(f"{self.annotation_file}: annotation {ann.get('id')} of image "
                                   f"{image_id}: mask {mask.shape} for a {h}x{w} image")
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

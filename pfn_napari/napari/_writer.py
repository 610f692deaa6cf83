"""Writer for instance Labels: an instance-id PNG and a COCO JSON next to it.

``write_instances("out/cat.png", labels, meta)`` writes

* ``out/cat.png``: the ids as a grayscale PNG (8-bit, or 16-bit when an id exceeds 255),
  0 background, 1..N instances (:func:`pfn_napari.visualize.save_label_png`);
* ``out/cat.json``: a COCO *dataset* dict (``images``, ``categories``, ``annotations``) whose
  annotations are :func:`pfn_napari.evaluate.instances_to_coco_results` entries plus ``id``,
  ``area``, ``bbox`` and ``iscrowd = 0``, so it loads with ``pycocotools.coco.COCO`` as ground
  truth (annotators) and still carries each instance's ``score`` (predictions).

The JSON reads back with ``pfn``: as data, ``coco:out/cat.json:PHOTO_FOLDER``, and as
predictions, ``pfn evaluate --predictions out/cat.json``. Its one image has id 1 (COCO ids
are integers) and ``file_name`` the photo's file name: ``metadata['image_path']`` (the widget
passes the image layer's source file) when known, else the image layer's name
(``metadata['pfn_image']``, as the widget tags its layers, or ``['image_layer']``), else the
export's stem; rename it to the photo's name when the photo was not opened from a file. An
export that would overwrite the photo is refused.

Classes come from the layer's features (``class_id`` per instance id, as the widget writes
them); hand-painted ids without a row take the class of the last described instance. Category
ids are the class indices 1..C of ``metadata['class_names']`` (the 20 VOC classes by default),
then C+1, C+2, ... for classes typed in the Teach group that the model lacks (their name is the
row's ``class``, :func:`pfn_napari.layer_data.feature_classes`); each annotation also carries
its ``category_name``, by which ``--predictions`` maps it onto a dataset's classes.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from ..config import VOC_CLASSES
from ..errors import PFNError
from ..layer_data import IMAGE_KEY, feature_classes, instances_from_labels

#: The image id of an export (one image per file; COCO ids are integers).
IMAGE_ID = 1


def coco_dataset(instances, class_names: tuple[str, ...], file_name: str,
                 ids: list[int] | None = None) -> dict[str, Any]:
    """COCO dataset dict of one image's instances (``instances.image_id`` is its id); annotation
    ``id`` is the instance's id in the PNG (``ids``, default 1..N)."""
    from pycocotools import mask as mask_utils

    from ..evaluate import instances_to_coco_results

    h, w = instances.image_size
    results = instances_to_coco_results([instances], list(range(1, len(class_names) + 1)),
                                        class_names)
    annotations = []
    ids = list(ids) if ids is not None else list(range(1, len(results) + 1))
    for k, res in zip(ids, results):
        rle = {"size": res["segmentation"]["size"], "counts": res["segmentation"]["counts"].encode()}
        annotations.append({"id": k, **res, "iscrowd": 0,
                            "area": float(mask_utils.area(rle)),
                            "bbox": [float(v) for v in mask_utils.toBbox(rle)]})
    return {
        "images": [{"id": instances.image_id, "file_name": file_name, "height": h, "width": w}],
        "categories": [{"id": c, "name": n} for c, n in enumerate(class_names, start=1)],
        "annotations": annotations,
        "info": {"description": "instances exported by the pfn-napari plugin (PNG ids = annotation ids)"},
    }


def photo_name(metadata: dict[str, Any], default: str) -> str:
    """The ``file_name`` of the exported image: the photo's file name when the metadata names
    its file, else the image layer's name, else ``default``."""
    path = metadata.get("image_path")
    if path:
        return Path(str(path)).name
    return str(metadata.get(IMAGE_KEY) or metadata.get("image_layer") or default)


def write_instances(path: str, data: Any, meta: dict[str, Any]) -> list[str]:
    """npe2 writer for one Labels layer: ``STEM.png`` + ``STEM.json``; returns both paths."""
    from ..visualize import save_label_png

    labels = np.asarray(data)
    if labels.ndim != 2:
        raise PFNError(f"{path}: instance layers must be 2-D, this one has shape {labels.shape}")
    if labels.min(initial=0) < 0 or labels.max(initial=0) > 65535:
        raise PFNError(f"{path}: instance ids must lie in 0..65535")
    out = Path(path)
    stem = out.with_suffix("") if out.suffix.lower() in (".png", ".json") else out
    png, js = stem.with_suffix(".png"), stem.with_suffix(".json")
    metadata = dict(meta.get("metadata") or {})
    class_names = feature_classes(meta.get("features"),
                                  tuple(metadata.get("class_names") or VOC_CLASSES))
    instances, ids = instances_from_labels(labels, meta.get("features"), image_id=IMAGE_ID)
    bad = [int(c) for c in instances.classes if not 1 <= c <= len(class_names)]
    if bad:
        raise PFNError(f"{path}: instance classes {sorted(set(bad))} are outside 1..{len(class_names)}")
    photo = metadata.get("image_path")
    if photo and os.path.realpath(str(photo)) in (os.path.realpath(png), os.path.realpath(js)):
        raise PFNError(f"{path}: the export would overwrite the photo {photo}; choose another name")
    save_label_png(png, labels.astype(np.int64))
    doc = coco_dataset(instances, class_names, photo_name(metadata, stem.name), ids)
    tmp = js.with_name(f".{js.name}.tmp")
    tmp.write_text(json.dumps(doc))
    os.replace(tmp, js)
    return [str(png), str(js)]

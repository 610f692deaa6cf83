"""Writer for instance Labels: an instance-id PNG and a COCO JSON next to it.

``write_instances("out/cat.png", labels, meta)`` writes

* ``out/cat.png``: the ids as a grayscale PNG (8-bit, or 16-bit when an id exceeds 255),
  0 background, 1..N instances (:func:`pfn_napari.visualize.save_label_png`);
* ``out/cat.json``: a COCO *dataset* dict (``images``, ``categories``, ``annotations``) whose
  annotations are :func:`pfn_napari.evaluate.instances_to_coco_results` entries plus ``id``,
  ``area``, ``bbox`` and ``iscrowd = 0``, so it loads with ``pycocotools.coco.COCO`` as ground
  truth (annotators) and still carries each instance's ``score`` (predictions).

Classes come from the layer's features (``class_id`` per instance id, as the widget writes
them); hand-painted ids without a row take the class of the last described instance. Category
ids are the class indices 1..C of ``metadata['class_names']`` (the 20 VOC classes by default).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from ..config import VOC_CLASSES
from ..errors import PFNError
from ._layers import instances_from_labels


def coco_dataset(instances, class_names: tuple[str, ...], file_name: str,
                 ids: list[int] | None = None) -> dict[str, Any]:
    """COCO dataset dict of one image's instances (``instances.image_id`` is its id); annotation
    ``id`` is the instance's id in the PNG (``ids``, default 1..N)."""
    from pycocotools import mask as mask_utils

    from ..evaluate import instances_to_coco_results

    h, w = instances.image_size
    results = instances_to_coco_results([instances], list(range(1, len(class_names) + 1)))
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
    class_names = tuple(metadata.get("class_names") or VOC_CLASSES)
    image_id = str(metadata.get("image_layer") or stem.name)
    instances, ids = instances_from_labels(labels, meta.get("features"), image_id=image_id)
    bad = [int(c) for c in instances.classes if not 1 <= c <= len(class_names)]
    if bad:
        raise PFNError(f"{path}: instance classes {sorted(set(bad))} are outside 1..{len(class_names)}")
    save_label_png(png, labels.astype(np.int64))
    doc = coco_dataset(instances, class_names, png.name, ids)
    tmp = js.with_name(f".{js.name}.tmp")
    tmp.write_text(json.dumps(doc))
    os.replace(tmp, js)
    return [str(png), str(js)]

"""Whether the networks see small people better on an enlarged photo (issue 26, "input scale").

Each labelled photo no model was trained on (the 129 of the cross-validation,
docs/experiments/cv-settings.md: the real val splits and the COCO photos without a VOC object)
is resized by each ``--scales`` factor (bicubic), run through the weights as shipped (their
test-time settings), and the masks (area-averaged, > 0.5) and the class map (nearest) are
brought back to the photo's size and scored as ``scripts/tune_grouping.py`` scores them. Prints
one row per scale: AP^r@0.5 of COCO (with and without a VOC object pooled) and its people,
Penn-Fudan and the horses, the person / horse IoU of the class map, the precision of the shown
objects and the false objects per photo. Nothing is chosen here.

    python benchmarks/input_scale.py --weights default --scales 0.75 1 1.25 1.5
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))

import tune_grouping as tg  # noqa: E402

from pfn_napari.demo import find_shared_data  # noqa: E402
from pfn_napari.errors import PFNError  # noqa: E402
from pfn_napari.predictor import Predictor  # noqa: E402
from pfn_napari.producers import class_lut, to_data_classes  # noqa: E402
from pfn_napari.structures import Instances  # noqa: E402


def resized_photo(image: np.ndarray, scale: float) -> np.ndarray:
    """``(H, W, 3)`` uint8 -> ``(round(H s), round(W s), 3)`` (bicubic); unchanged at 1."""
    if scale == 1.0:
        return image
    h, w = image.shape[:2]
    return np.asarray(Image.fromarray(image).resize((round(w * scale), round(h * scale)),
                                                    Image.BICUBIC))


def back_to_size(inst: Instances, class_map: np.ndarray, size: tuple[int, int]
                 ) -> tuple[Instances, np.ndarray]:
    """Masks ``(N, h, w)`` -> ``(N, H, W)`` (area average > 0.5), class map ``(h, w)`` ->
    ``(H, W)`` (nearest)."""
    h, w = size
    if inst.image_size == size:
        return inst, class_map
    masks = torch.from_numpy(inst.masks.astype(np.float32))[None]  # (1, N, h, w)
    masks = (F.interpolate(masks, size=(h, w), mode="area")[0].numpy() > 0.5 if len(inst)
             else np.zeros((0, h, w), dtype=bool))  # (N, H, W)
    cmap = np.asarray(Image.fromarray(class_map.astype(np.uint8)).resize((w, h), Image.NEAREST))
    return Instances(masks, inst.classes, inst.scores, inst.image_id), cmap


def scale_photos(predictor: Predictor, sets: list, scale: float) -> tuple[list, list[str]]:
    """The :class:`tune_grouping.PhotoScore` of every photo of ``sets`` run at ``scale``,
    and each photo's source."""
    classes = tuple(predictor.class_names)
    photos, sources = [], []
    for source, ds, labelled in sets:
        lut = class_lut(classes, tuple(ds.classes))
        for index in range(len(ds)):
            sample = ds[index]
            predictor.set_image(resized_photo(sample.image, scale), name=str(sample.image_id),
                                image_id=sample.image_id)
            inst, cmap = back_to_size(predictor.instances(), predictor.class_map(),
                                      sample.image.shape[:2])
            photos.append(tg.score_photo(sample, to_data_classes(inst, lut, sample.image_id),
                                         lut[cmap].astype(np.uint8), labelled))
            sources.append(source)
    return photos, sources


def class_iou(photos, sources, names, k: int) -> float:
    """IoU (percent) of class id ``k`` in the pooled class maps of the photos of ``names``."""
    c = np.sum([tg.labelled_confusion(p) for p, s in zip(photos, sources) if s in names], axis=0)
    return 100 * c[k, k] / (c[k, :].sum() + c[:, k].sum() - c[k, k])


def class_ap(photos, sources, names, k: int) -> float:
    """AP^r@0.5 (percent) of class id ``k`` over the photos of ``names``."""
    only = []
    for p, s in zip(photos, sources):
        if s in names:
            keep = p.classes == k
            gt = np.where(np.arange(len(p.num_gt)) == k - 1, p.num_gt, 0)
            only.append(p._replace(scores=p.scores[keep], classes=p.classes[keep],
                                   tp=p.tp[keep], right=p.right[keep], num_gt=gt))
    return tg.ap_half(only)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--weights", default="default")
    ap.add_argument("--scales", type=float, nargs="+", default=[0.75, 1.0, 1.25, 1.5])
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    try:
        predictor = Predictor(args.weights)
    except PFNError as exc:  # a missing, truncated or foreign file: one line naming it
        print(f"input_scale: {exc}", file=sys.stderr)
        return 2
    classes = tuple(predictor.class_names)
    person, horse = classes.index("person") + 1, classes.index("horse") + 1
    sets = tg.pooled_sets(find_shared_data(), classes)
    coco = tg.AP_SOURCES["coco"]
    print("| input scale | COCO AP^r@0.5 | COCO people | Penn-Fudan | horses | person IoU COCO "
          "| person IoU Penn-Fudan | horse IoU | precision % | false / photo |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for scale in args.scales:
        photos, sources = scale_photos(predictor, sets, scale)
        m = tg.photo_metrics(photos, sources)
        print(f"| {scale:g} | {m['coco']:.1f} | {class_ap(photos, sources, coco, person):.1f} "
              f"| {m['pennfudan']:.1f} | {m['horses']:.1f} "
              f"| {class_iou(photos, sources, coco, person):.1f} "
              f"| {class_iou(photos, sources, ('pennfudan',), person):.1f} "
              f"| {class_iou(photos, sources, ('horses',), horse):.1f} "
              f"| {m['precision']:.1f} | {m['false']:.2f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""What the ImageNet classifier already knows about the VOC classes, pixel by pixel.

The shipped category network is trained on 60 COCO photos that hold no cat, cow, sheep or
tvmonitor pixel and almost no bus; on the COCO val photos it labels those objects background.
The EfficientNet-Lite0 ImageNet file it starts from also holds the classifier (``_fc``,
1000 classes), which has seen buses, cats, dogs, planes, birds. This probe runs that classifier
densely (``pfn_napari.model.imagenet_prior.ImageNetPrior``: the frozen ImageNet trunk at stride
32, ``_fc`` as a 1x1 conv), sums its softmax over
the ImageNet classes of each VOC class (``VOC_SYNSETS``, person has none), and, for every
non-person object of the val photos, reports the VOC class with the most evidence over the
object's pixels and the evidence for the true class: a prior the category head could be given.
Measured on the 17 COCO val photos: 7 of 14 non-person objects have their own class on top
(cat, both buses, aeroplane, dog, bird, motorbike; the category network finds 1 of them), the
furniture and bottles do not (the 118 dog synsets win there). Fused into the category logits
everywhere it raised COCO val mIoU to 14-17 but lowered every AP^r; the shipped model uses it
only where the category map says background (``pfn_napari.model.imagenet_prior``,
``pfn_napari.imagenet``; docs/model.md, "The ImageNet prior").

    python benchmarks/imagenet_prior.py [--data voc:../shared/data/coco128-train/voc/VOC2012]

``--picture OUT.png [--weights W]`` instead draws what a model's prior names (the shipped
model's by default): up to ``--max`` photos of the split where it names something, the objects
it added tinted and labelled; ``--data`` may also name a real val set of ``pfn demo``
(``coco-voc``, ``pennfudan``, ``horses``). docs/images/prior-pennfudan.png is
``python benchmarks/imagenet_prior.py --data pennfudan --picture docs/images/prior-pennfudan.png``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pfn_napari.data import open_dataset  # noqa: E402
from pfn_napari.errors import PFNError  # noqa: E402
from pfn_napari.grouping.geometry import upsample_bilinear  # noqa: E402
from pfn_napari.model.imagenet_prior import (VOC_SYNSETS, ImageNetPrior,  # noqa: E402
                                             load_imagenet_prior)

DEFAULT_DATA = "voc:" + str(Path(__file__).resolve().parents[2] / "shared" / "data" /
                            "coco128-train" / "voc" / "VOC2012")
def voc_evidence(prior: ImageNetPrior, image: np.ndarray) -> np.ndarray:
    """``(K, H, W)`` the prior's evidence for its classes, upsampled as the grouping does."""
    x = torch.from_numpy(image).permute(2, 0, 1)[None].float()  # (1, 3, H, W)
    ev = prior(x)[0].numpy()  # (K, h32, w32)
    return upsample_bilinear(ev, image.shape[:2], 32)


def draw_fills(data: str, split: str, weights: str | None, out: Path, most: int) -> int:
    """A grid of the photos where the model's ImageNet prior names objects, those tinted red
    and labelled with their class; prints which classes it named on how many photos."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from pfn_napari.predictor import Predictor

    predictor = Predictor(weights)
    if not predictor.imagenet.active:
        print(f"{predictor.model.path}: it has no ImageNet step (imagenet.weight 0)",
              file=sys.stderr)
        return 2
    from pfn_napari.demo import find_shared_data, open_set, real_specs

    sets = {es.name: es for es in real_specs(find_shared_data())}
    ds = open_set(sets[data], split, predictor.class_names) if data in sets else \
        open_dataset(data, split, predictor.class_names)
    shown, named = [], {}
    for i in range(len(ds)):
        s = ds[i]
        predictor.set_image(s.image)
        labels = predictor.group().prior_labels  # (H, W) at the networks' size
        classes = [predictor.class_names[c - 1] for c in np.unique(labels) if c] \
            if labels is not None else []
        for c in classes:
            named[c] = named.get(c, 0) + 1
        if classes and len(shown) < most:
            shown.append((s, labels, classes))
    print(f"{sum(1 for _ in named)} classes named: "
          + ", ".join(f"{c} on {n} photo(s)" for c, n in sorted(named.items())))
    if not shown:
        print("nothing named on this split: no picture written")
        return 0
    cols = min(3, len(shown))
    rows = (len(shown) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.4 * rows), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for ax, (s, labels, classes) in zip(axes.ravel(), shown):
        image = s.image.copy()
        if labels.shape != image.shape[:2]:
            from pfn_napari.inference import resize_labels

            labels = resize_labels(labels, image.shape[:2])
        tint = labels > 0
        image[tint] = (0.45 * image[tint] + 0.55 * np.array([230, 30, 30])).astype(np.uint8)
        ax.imshow(image)
        ax.set_title(f"{s.image_id}: {', '.join(classes)}", fontsize=9)
    fig.suptitle("named by the ImageNet prior (red); the networks' own objects not shown",
                 fontsize=10)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    from PIL import Image

    tmp = out.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=70)
    plt.close(fig)
    Image.open(tmp).convert("RGB").quantize(256).save(tmp, optimize=True)  # 256 colours, small
    tmp.replace(out)
    print(f"-> {out}")
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", default=DEFAULT_DATA)
    ap.add_argument("--split", default="val")
    ap.add_argument("--picture", type=Path, default=None,
                    help="draw what the model's prior names on the split's photos (PNG)")
    ap.add_argument("--weights", default=None, help="with --picture: the model (default: shipped)")
    ap.add_argument("--max", type=int, default=6, help="with --picture: at most this many photos")
    args = ap.parse_args(argv)
    if args.picture is not None:
        try:
            return draw_fills(args.data, args.split, args.weights, args.picture, args.max)
        except PFNError as exc:  # a missing weights file or data folder: one line
            print(f"benchmarks/imagenet_prior.py: {exc}", file=sys.stderr)
            return 2
    voc = list(VOC_SYNSETS)
    prior = load_imagenet_prior(tuple(voc))
    ds = open_dataset(args.data, args.split)
    print("| image | object class | pixels | top VOC class by ImageNet evidence | its mean | true class's mean |")
    print("|---|---|---:|---|---:|---:|")
    right = total = 0
    for i in range(len(ds)):
        s = ds[i]
        ev = voc_evidence(prior, s.image)
        for c in np.unique(s.class_map):
            name = ds.classes[c - 1] if 0 < c <= len(ds.classes) else None
            if name is None or name not in VOC_SYNSETS:
                continue
            m = s.class_map == c
            mean = ev[:, m].mean(axis=1)  # (19,)
            top = voc[int(mean.argmax())]
            right, total = right + (top == name), total + 1
            print(f"| {s.image_id} | {name} | {int(m.sum())} | {top} | {mean.max():.2f} | "
                  f"{mean[voc.index(name)]:.2f} |")
    print(f"\n{right} of {total} non-person class regions have their own class on top.")
    return 0


if __name__ == "__main__":
    sys.exit(main())

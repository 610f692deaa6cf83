"""The widget's state without the widget: model, image, cached network output, grouping.

:class:`PFNSession` is what the dock widget drives and what ``benchmarks/recluster.py`` times.
It only wires library calls together:

* :func:`pfn_napari.inference.load_model` / :func:`~pfn_napari.inference.run_network` once per
  image (the slow part: the networks);
* :class:`pfn_napari.grouping.Grouper` on the cached :class:`~pfn_napari.structures.NetworkOutput`
  for every change of sigma, tau, size threshold, method or instance counts (the fast part);
* :func:`pfn_napari.inference.resize_instances` back to the viewer image when the networks saw
  it resized (images over :data:`pfn_napari.inference.MAX_SIDE`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from ..config import GroupingConfig
from ..errors import PFNError
from ..structures import Instances, NetworkOutput
from ._layers import Geometry


@dataclass(frozen=True)
class TuneParams:
    """The test-time knobs the widget exposes (the rest of GroupingConfig comes from the model).

    ``count_override`` maps class id (1..C) to the number of instances to cluster it into.
    """

    method: str = "spectral"
    sigma: float = 0.5
    tau: float = 0.5
    min_size_frac: float = 0.001
    count_override: tuple[tuple[int, int], ...] = ()

    def overrides(self) -> dict[int, int] | None:
        return dict(self.count_override) or None

    def grouping_config(self, base: GroupingConfig) -> GroupingConfig:
        return replace(base, method=self.method, sigma=float(self.sigma), tau=float(self.tau),
                       min_size_frac=float(self.min_size_frac))


@dataclass
class ImageNotes:
    """What was done to the layer's data before the networks saw it (shown to the user)."""

    converted: list[str] = field(default_factory=list)  # e.g. "grayscale -> RGB"
    resized_to: tuple[int, int] | None = None  # (h, w) the networks saw, when resized

    def messages(self, size: tuple[int, int]) -> list[str]:
        out = list(self.converted)
        if self.resized_to is not None:
            from ..inference import MAX_SIDE

            out.append(f"the image is {size[1]}x{size[0]}: the networks saw it resized to "
                       f"{self.resized_to[1]}x{self.resized_to[0]} (longest side at most "
                       f"{MAX_SIDE} px); the layers are scaled back onto the image")
        return out


def prepare_image(data: Any, rgb: bool | None = None, name: str = "image") -> tuple[np.ndarray, ImageNotes]:
    """A napari image layer's data -> ``(H, W, 3)`` uint8 RGB, and what was converted.

    Accepts 2-D grayscale, ``(H, W, 3)`` RGB and ``(H, W, 4)`` RGBA (alpha dropped), any dtype
    :func:`pfn_napari.inference.as_rgb_uint8` takes. Anything else (stacks, volumes, channel-first
    arrays) raises :class:`PFNError` saying what to do.
    """
    from ..inference import as_rgb_uint8

    arr = np.asarray(data)
    notes = ImageNotes()
    if arr.ndim == 2:
        notes.converted.append("grayscale image: its channel was repeated to make RGB")
    elif arr.ndim == 3 and arr.shape[-1] == 4 and rgb is not False:
        notes.converted.append("RGBA image: the alpha channel was dropped")
    elif arr.ndim == 3 and arr.shape[-1] == 3 and rgb is not False:
        pass
    else:
        raise PFNError(f"layer {name!r} has shape {arr.shape}: PFN needs one 2-D image, RGB "
                       "(H, W, 3), RGBA (H, W, 4) or grayscale (H, W); pick such a layer or "
                       "take one plane of the stack first")
    if arr.dtype != np.uint8:
        notes.converted.append(f"{arr.dtype} pixels were rescaled to 0..255 uint8")
    rgb_image = as_rgb_uint8(arr, name)
    if not rgb_image.flags.writeable:  # torch.from_numpy warns on read-only arrays
        rgb_image = rgb_image.copy()
    return rgb_image, notes


def predicted_centers(net: NetworkOutput) -> np.ndarray:
    """``(2, gh, gw)`` normalised (x, y) instance center each grid cell predicts."""
    from ..targets import decode_locations, grid_pixel_positions

    dec = decode_locations(net.locations, net.encoding, pixel_xy=grid_pixel_positions(net.image_size))
    return np.stack([dec["cx"], dec["cy"]]).astype(np.float32)


@dataclass
class Clustering:
    """One re-clustering's outcome, everything the layers need, at the viewer's resolution."""

    instances: Instances  # (N, H, W) masks of the viewer image
    refined: np.ndarray  # (gh, gw) uint8 grid class map after refinement by the counts
    refined_full: np.ndarray  # (h, w) uint8 the same at the network image's resolution
    assignment: np.ndarray  # (gh, gw) int32 instance id 1..N of each grid cell (0 none/dropped)
    params: TuneParams
    seconds: float  # wall time of the grouping (and the resize back)
    timings: dict[str, float] = field(default_factory=dict)  # Grouper's steps -> seconds


class PFNSession:
    """Model + image + cached network output + grouper; no Qt.

    >>> s = PFNSession()                                   # doctest: +SKIP
    >>> s.load_model("weights/pfn-lite0-voc.pt", "cpu")    # doctest: +SKIP
    >>> s.run_network(image)                               # doctest: +SKIP
    >>> s.recluster(TuneParams(sigma=0.1)).instances       # doctest: +SKIP
    """

    def __init__(self) -> None:
        self.model = None  # inference.PFNModel
        self.model_key: tuple[str, str] | None = None  # (weights path or '', device asked)
        self.image: np.ndarray | None = None  # (H, W, 3) uint8, the viewer image
        self.notes = ImageNotes()
        self.net: NetworkOutput | None = None
        self.geom: Geometry | None = None
        self.centers: np.ndarray | None = None  # (2, gh, gw) normalised (x, y)
        self.network_seconds = 0.0
        self._grouper: Any = None
        self.clustering: Clustering | None = None

    # ------------------------------------------------------------------ model
    def load_model(self, weights: str | Path | None = None, device: str = "auto"):
        """Load (or keep, when unchanged) the model; ``weights`` None/'' = shipped default."""
        from ..inference import load_model

        key = (str(weights or ""), device)
        if self.model is None or key != self.model_key:
            self.model = load_model(str(weights) if weights else None, device)
            self.model_key = key
        return self.model

    @property
    def class_names(self) -> tuple[str, ...]:
        return tuple(self.model.class_names) if self.model is not None else ()

    def default_params(self) -> TuneParams:
        g = self.model.config.grouping if self.model is not None else GroupingConfig()
        return TuneParams(method=g.method, sigma=g.sigma, tau=g.tau, min_size_frac=g.min_size_frac)

    # ------------------------------------------------------------------ network
    def run_network(self, data: Any, rgb: bool | None = None, name: str = "image") -> NetworkOutput:
        """Run the networks once on a layer's data; caches the output for re-clustering."""
        from ..inference import run_network

        if self.model is None:
            raise PFNError("no model loaded: choose weights first")
        image, notes = prepare_image(data, rgb, name)
        t0 = time.perf_counter()
        net = run_network(self.model, image, name=name)
        self.network_seconds = time.perf_counter() - t0
        if tuple(net.image_size) != image.shape[:2]:
            notes.resized_to = tuple(int(v) for v in net.image_size)
        self.image, self.notes, self.net = image, notes, net
        self.geom = Geometry(image.shape[:2], tuple(int(v) for v in net.image_size))
        self.centers = predicted_centers(net)
        self._grouper, self.clustering = None, None
        return net

    def predicted_counts(self) -> np.ndarray:
        """``(C,)`` the count network's raw instance numbers."""
        return np.asarray(self.net.counts, dtype=np.float32) if self.net is not None else np.zeros(0)

    # ------------------------------------------------------------------ grouping
    @property
    def grouper(self):
        """The :class:`~pfn_napari.grouping.Grouper` of the cached output (it caches per-class
        data, affinities and clusterings, so a changed count re-runs only k-means)."""
        from ..grouping import Grouper

        if self._grouper is None:
            self._grouper = Grouper(self.net, eager=True)
        return self._grouper

    def recluster(self, params: TuneParams) -> Clustering:
        """Test-time steps only (refinement, clustering, size filter) on the cached output."""
        from ..inference import resize_instances

        if self.net is None or self.model is None:
            raise PFNError("run the network first (no cached network output)")
        cfg = params.grouping_config(self.model.config.grouping)
        t0 = time.perf_counter()
        result = self.grouper.run(cfg, params.overrides())
        inst = resize_instances(result.instances, self.image.shape[:2])
        seconds = time.perf_counter() - t0
        self.clustering = Clustering(inst, np.asarray(result.refined_class_map, np.uint8),
                                     np.asarray(result.full_class_map, np.uint8),
                                     np.asarray(result.grid_labels, np.int32), params, seconds,
                                     dict(result.timings))
        return self.clustering

"""A front end's state without the front end: a predictor, the image notes, the last grouping.

Library code that the napari dock widget and the notebook both drive (siblings; neither
imports the other). :class:`PFNSession` is also what ``benchmarks/recluster.py`` times.
It holds a :class:`pfn_napari.predictor.Predictor` (the one path from image to instances the
command line uses too): the networks run once per image (the slow part), and every change of
sigma, tau, size threshold, method or instance counts re-runs only the grouping on the cached
output (:func:`recluster`, the fast part; the ImageNet step after it when on), masks brought back to the viewer image when the
networks saw it resized (images over :data:`pfn_napari.inference.MAX_SIDE`).
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from .config import GroupingConfig, ImageNetConfig
from .errors import PFNError
from .layer_data import Geometry
from .structures import Instances, NetworkOutput


@dataclass(frozen=True)
class TuneParams:
    """The test-time knobs the front ends expose (the rest of the grouping and ImageNet
    settings comes from the model).

    ``count_override`` maps class id (1..C) to the number of instances to cluster it into.
    """

    method: str = "spectral"
    sigma: float = 0.5
    tau: float = 0.5
    min_size_frac: float = 0.001
    count_override: tuple[tuple[int, int], ...] = ()
    # the ImageNet step's switch (False: off; True / None: the model's own imagenet settings,
    # which name nothing for a model without the step: imagenet.weight 0)
    imagenet: bool | None = None

    def overrides(self) -> dict[int, int] | None:
        return dict(self.count_override) or None

    def grouping_config(self, base: GroupingConfig) -> GroupingConfig:
        return replace(base, method=self.method, sigma=float(self.sigma), tau=float(self.tau),
                       min_size_frac=float(self.min_size_frac))

    def imagenet_config(self, base: ImageNetConfig) -> ImageNetConfig:
        """``base`` switched on or off as the knob says (None: as ``base``); a model without
        the step (``weight`` 0) names nothing, switched on or not."""
        return base if self.imagenet is None else replace(base, enabled=self.imagenet)


def params_of(g: GroupingConfig, imagenet: ImageNetConfig | None = None) -> TuneParams:
    """The knobs of grouping settings ``g`` and ImageNet settings ``imagenet`` (a model's
    own, with no count override)."""
    return TuneParams(method=g.method, sigma=g.sigma, tau=g.tau, min_size_frac=g.min_size_frac,
                      imagenet=None if imagenet is None else imagenet.active)


@dataclass
class ImageNotes:
    """What was done to the layer's data before the networks saw it (shown to the user)."""

    converted: list[str] = field(default_factory=list)  # e.g. "grayscale -> RGB"
    resized_to: tuple[int, int] | None = None  # (h, w) the networks saw, when resized

    def messages(self, size: tuple[int, int]) -> list[str]:
        out = list(self.converted)
        if self.resized_to is not None:
            from .inference import MAX_SIDE

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
    from .inference import as_rgb_uint8

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


@dataclass
class Reclustering:
    """One re-clustering's outcome: the grouping's maps (named as in
    :class:`~pfn_napari.grouping.GroupingResult`) and the instances at the viewer's size."""

    instances: Instances  # (N, H, W) masks of the viewer image
    refined_class_map: np.ndarray  # (gh, gw) uint8 grid class map after refinement by the counts
    full_class_map: np.ndarray  # (h, w) uint8 the same at the network image's resolution
    grid_labels: np.ndarray  # (gh, gw) int32 instance id 1..N of each grid cell (0 none/dropped)
    params: TuneParams
    seconds: float  # wall time of the grouping (and the resize back)
    timings: dict[str, float] = field(default_factory=dict)  # Grouper's steps -> seconds
    # class -> the number of clusters it was split into (the override, the head's rounded
    # count, or the votes': grouping.count_source)
    cluster_counts: dict[int, int] = field(default_factory=dict)
    # (N,) bool: instance n was named by the ImageNet step (it has no grid cells)
    from_prior: np.ndarray = field(default_factory=lambda: np.zeros(0, bool))


def recluster(runner: Any, base: GroupingConfig, params: TuneParams,
              image_size: tuple[int, int], imagenet: ImageNetConfig | None = None
              ) -> Reclustering:
    """``params`` on ``base``, masks brought to ``image_size`` (the viewer's): what the widget
    and the notebook both run. ``runner``: a :class:`~pfn_napari.predictor.Predictor` (the
    grouping, then the ImageNet step: ``imagenet``, default the predictor's, with ``params``'
    switch) or a bare :class:`~pfn_napari.grouping.Grouper` (the grouping alone: a network
    output without a model)."""
    from .inference import resize_instances
    from .predictor import Predictor

    t0 = time.perf_counter()
    cfg, overrides = params.grouping_config(base), params.overrides()
    if isinstance(runner, Predictor):
        step = params.imagenet_config(imagenet or runner.imagenet)
        result = runner.group(cfg, overrides, step)
    else:
        result = runner.run(cfg, overrides)
    instances = resize_instances(result.instances, image_size)
    return Reclustering(instances, np.asarray(result.refined_class_map, np.uint8),
                        np.asarray(result.full_class_map, np.uint8),
                        np.asarray(result.grid_labels, np.int32), params,
                        time.perf_counter() - t0, dict(result.timings),
                        dict(result.cluster_counts), _from_prior(result))


def _from_prior(result: Any) -> np.ndarray:
    """``(N,)`` bool: which instances of a GroupingResult the ImageNet step named (their
    pixels are the ones of ``prior_labels``, disjoint from the clustered instances')."""
    flags = np.zeros(len(result.instances), dtype=bool)
    if result.prior_labels is not None and len(flags):
        ids = np.unique(result.label_map[np.asarray(result.prior_labels) > 0])
        flags[ids[ids > 0] - 1] = True
    return flags


@lru_cache(maxsize=8)
def _stored_config(path: str, mtime_ns: int, size: int) -> Any:
    from .checkpoint import config_of, read_checkpoint

    return config_of(read_checkpoint(path), path)


def weights_grouping(weights: str | Path | None = None
                     ) -> tuple[Path, GroupingConfig, ImageNetConfig]:
    """The file ``weights`` (None/'': the shipped default) names and the grouping and ImageNet
    settings stored in it, without building the model (cached per file and modification
    time).

    Raises :class:`~pfn_napari.errors.CheckpointError` as :func:`pfn_napari.inference.load_model`.
    """
    from .errors import CheckpointError
    from .inference import default_weights_path

    file = default_weights_path() if not weights or str(weights) == "default" else Path(weights)
    if not file.is_file():
        raise CheckpointError(f"{file}: weights file not found")
    stat = file.stat()
    cfg = _stored_config(str(file), stat.st_mtime_ns, stat.st_size)
    return file, cfg.grouping, cfg.imagenet


class PFNSession:
    """A :class:`~pfn_napari.predictor.Predictor` (model, image, cached network output and
    grouper) and what the layers need besides; no Qt.

    >>> s = PFNSession()                                   # doctest: +SKIP
    >>> s.load_model("weights/pfn-lite0-voc.pt", "cpu")    # doctest: +SKIP
    >>> s.run_network(image)                               # doctest: +SKIP
    >>> s.recluster(TuneParams(sigma=0.1)).instances       # doctest: +SKIP
    """

    def __init__(self) -> None:
        self.predictor: Any = None  # predictor.Predictor, eager (a new count re-runs k-means only)
        self.model_key: tuple[str, str] | None = None  # (weights path or '', device asked)
        self.notes = ImageNotes()
        self.geom: Geometry | None = None
        self.centers: np.ndarray | None = None  # (2, gh, gw) normalised (x, y)
        self.clustering: Reclustering | None = None
        self._network_seconds = 0.0

    # ------------------------------------------------------------------ model
    @property
    def model(self):
        """The loaded :class:`~pfn_napari.inference.PFNModel` (None before the first run)."""
        return self.predictor.model if self.predictor is not None else None

    @model.setter
    def model(self, model) -> None:
        from .predictor import Predictor

        self.predictor = Predictor(model, eager=True)
        self.geom = self.centers = self.clustering = None

    def load_model(self, weights: str | Path | None = None, device: str = "auto"):
        """Load (or keep, when unchanged) the model; ``weights`` None/'' = shipped default."""
        from .inference import load_model

        key = (str(weights or ""), device)
        if self.predictor is None or key != self.model_key:
            self.model = load_model(str(weights) if weights else None, device)
            self.model_key = key
        return self.model

    @property
    def class_names(self) -> tuple[str, ...]:
        return tuple(self.model.class_names) if self.model is not None else ()

    def default_params(self) -> TuneParams:
        if self.model is None:
            return params_of(GroupingConfig(), ImageNetConfig())
        return params_of(self.model.config.grouping, self.model.config.imagenet)

    # ------------------------------------------------------------------ network
    @property
    def net(self) -> NetworkOutput | None:
        """The cached network output of the current image."""
        return self.predictor.net if self.predictor is not None else None

    @property
    def image(self) -> np.ndarray | None:
        """``(H, W, 3)`` uint8, the viewer image as the networks got it."""
        return self.predictor.image if self.predictor is not None else None

    @property
    def network_seconds(self) -> float:
        """Wall time of the networks on the current image."""
        return self._network_seconds

    def run_network(self, data: Any, rgb: bool | None = None, name: str = "image") -> NetworkOutput:
        """Run the networks once on a layer's data; caches the output for re-clustering."""
        from .targets import predicted_centers

        if self.predictor is None:
            raise PFNError("no model loaded: choose weights first")
        image, notes = prepare_image(data, rgb, name)
        t0 = time.perf_counter()
        net = self.predictor.set_image(image, name=name)
        self._network_seconds = time.perf_counter() - t0
        if self.predictor.resized:
            notes.resized_to = tuple(int(v) for v in net.image_size)
        self.notes = notes
        self.geom = Geometry(image.shape[:2], tuple(int(v) for v in net.image_size))
        self.centers = predicted_centers(net)
        self.clustering = None
        return net

    def use_network_output(self, net: NetworkOutput) -> None:
        """Group ``net`` in place of the networks' output on the current image (e.g. the
        ground truth as an oracle, :func:`pfn_napari.grouping.oracle_network_output`)."""
        from .targets import predicted_centers

        if self.image is None:
            raise PFNError("run the network first: the oracle replaces the output on its image")
        self.predictor.set_network_output(net)
        self.geom = Geometry(self.image.shape[:2], tuple(int(v) for v in net.image_size))
        self.centers = predicted_centers(net)
        self.clustering = None
        self._network_seconds = 0.0

    def predicted_counts(self) -> np.ndarray:
        """``(C,)`` the count network's raw instance numbers."""
        return np.asarray(self.net.counts, dtype=np.float32) if self.net is not None else np.zeros(0)

    # ------------------------------------------------------------------ grouping
    @property
    def grouper(self):
        """The predictor's :class:`~pfn_napari.grouping.Grouper` of the cached output (it
        caches per-class data, affinities and clusterings, so a changed count re-runs only
        k-means)."""
        return self.predictor.grouper

    def instance_numbers(self, params: TuneParams) -> dict[int, int]:
        """``{class: k}`` the grouping uses with ``params``' knobs and no count override: the
        head's rounded count, or the votes' (``grouping.count_source``)."""
        if self.net is None or self.model is None:
            return {}
        return self.grouper.instance_numbers(params.grouping_config(self.model.config.grouping))

    def recluster(self, params: TuneParams) -> Reclustering:
        """Test-time steps only (refinement, clustering, size filter, the ImageNet step) on the
        cached output."""
        if self.net is None or self.model is None:
            raise PFNError("run the network first (no cached network output)")
        self.clustering = recluster(self.predictor, self.model.config.grouping, params,
                                    self.image.shape[:2], self.model.config.imagenet)
        return self.clustering


# ---------------------------------------------------------------------- corrections
def instance_classes(labels: np.ndarray, features: Any, class_names: tuple[str, ...],
                     chosen: Mapping[int, str] | None = None) -> dict[int, str]:
    """``{instance id: class name}`` of every id in a (hand-edited) instance label map
    ``labels`` ``(H, W)``: the name the user ``chosen`` for it, else the class the grouping
    gave it (the ``features`` row with that index; an id painted by hand takes the class of
    the last row with one, as :func:`~pfn_napari.layer_data.instances_from_labels`)."""
    from .layer_data import instances_from_labels

    instances, ids = instances_from_labels(labels, features)
    chosen = chosen or {}
    out = {}
    for label_id, cls in zip(ids, instances.classes):
        k = int(cls)
        name = class_names[k - 1] if 0 < k <= len(class_names) else str(k)
        out[label_id] = str(chosen.get(label_id, name))
    return out


def class_summary(classes: Mapping[int, str]) -> str:
    """``"3 person, 1 cat"``: instances per class name, most first (ties by name)."""
    counts: dict[str, int] = {}
    for name in classes.values():
        counts[name] = counts.get(name, 0) + 1
    return ", ".join(f"{n} {name}" for name, n in sorted(counts.items(),
                                                         key=lambda kv: (-kv[1], kv[0])))


def finetune_dir(training_set: str | Path, now: float | None = None) -> Path:
    """A new folder beside ``training_set`` for a fine-tune's output,
    ``<set>-finetuned-YYYYmmdd-HHMMSS`` (``-2``, ``-3`` ... when that name is taken): never
    one that exists."""
    folder = Path(training_set).expanduser()
    stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(now))
    base = folder.parent / f"{folder.name}-finetuned-{stamp}"
    out, k = base, 1
    while out.exists():
        k += 1
        out = base.with_name(f"{base.name}-{k}")
    return out

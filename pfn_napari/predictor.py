"""One path from image to instances: set the image once, run the networks once, group often.

:class:`Predictor` (in the spirit of segment-anything's ``SamPredictor``) is what ``pfn
predict``, ``pfn evaluate``, ``pfn demo``, validation during training, the benchmarks and the
napari session all use::

    >>> predictor = Predictor("weights/pfn-lite0-voc.pt", device="cpu")   # doctest: +SKIP
    >>> predictor.set_image(image)           # the networks, once (the slow part)
    >>> predictor.instances()                # grouping with the model's settings
    >>> predictor.instances(replace(predictor.grouping, sigma=0.2), count_override={15: 3})
    >>> predictor.instances(imagenet=replace(predictor.imagenet, enabled=False))

The steps, each a library function of its own module:

1. :func:`~pfn_napari.inference.run_network`: fit the image to ``MAX_SIDE``, pad to the
   8k+1 grid, both networks (+ dense CRF when asked) -> :class:`NetworkOutput`;
2. :class:`~pfn_napari.grouping.Grouper` on that output: refinement by the counts, per-class
   clustering, full-resolution masks; it caches per-class data and clusterings, so a new
   count or sigma re-runs only what depends on it;
3. the ImageNet step (:mod:`pfn_napari.imagenet`, when ``imagenet.active``) on the grouping's
   result; its classifier runs at the first grouping that needs it, once per image;
4. :func:`shown_only`: only the classes the model shows (``show.classes``) and the objects
   scored at least ``show.min_score``; the others are dropped and their pixels become
   background;
5. :func:`~pfn_napari.inference.resize_instances` back to the image's own size when the
   networks saw it resized.

``predict_files`` runs a list of image files with the next file decoded in a background
thread while the networks run on the current one.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from . import inference  # inference.run_network is looked up at each call (tests replace it)
from .config import CRFConfig, GroupingConfig, ImageNetConfig, ShowConfig
from .errors import CheckpointError, PFNError
from .grouping import Grouper, GroupingResult
from .imagenet import ImageNetStep, imagenet_evidence
from .inference import (PFNModel, as_rgb_uint8, fit_image, load_model, resize_instances,
                        resize_labels)
from .structures import Instances, NetworkOutput


@dataclass
class PredictorTimes:
    """Seconds spent, summed over the images a predictor has seen."""

    images: int = 0
    network_s: float = 0.0
    grouping_s: float = 0.0  # grouping and the resize back, per :meth:`Predictor.instances`
    per_step: dict[str, float] = field(default_factory=dict)  # the Grouper's steps

    @property
    def network_per_image(self) -> float:
        return self.network_s / max(1, self.images)

    @property
    def grouping_per_image(self) -> float:
        return self.grouping_s / max(1, self.images)


class Predictor:
    """A loaded model, the current image and its cached network output.

    Args:
        model: a :class:`PFNModel`, a checkpoint or weights path, or ``None``/``"default"``
            for the shipped weights.
        device: ``"auto"`` (CUDA when there is a GPU), ``"cpu"``, ``"cuda:1"``... (ignored when
            ``model`` is already loaded).
        grouping: the grouping settings :meth:`instances` uses by default (default: the
            model's own, ``model.config.grouping``).
        crf: the dense CRF on the category map: a :class:`CRFConfig` (its ``enabled`` and
            kernels; ``pfn predict --set crf.*`` passes one), ``True``/``False`` (on or off
            with the model's kernels), or ``None``: the model's own ``crf`` settings.
        eager: compute spectral embeddings even for classes of one instance, so that raising a
            count later re-runs only k-means (the napari widget's setting).
        imagenet: the ImageNet step's settings :meth:`instances` uses by default (default: the
            model's own, ``model.config.imagenet``).
        show: the classes shown (default: the model's own, ``model.config.show``); every
            grouping, its instances and its class map, ends with them (:func:`shown_only`).
    """

    def __init__(self, model: PFNModel | str | Path | None = None, device: str = "auto",
                 grouping: GroupingConfig | None = None,
                 crf: bool | CRFConfig | None = None, eager: bool = False,
                 imagenet: ImageNetConfig | None = None, show: ShowConfig | None = None) -> None:
        if not isinstance(model, PFNModel):
            model = load_model(None if model in (None, "", "default") else model, device)
        self.model = model
        self.grouping = grouping or model.config.grouping
        self.imagenet = imagenet or model.config.imagenet
        self.show = show or model.config.show
        self.crf = crf
        self.eager = eager
        self.times = PredictorTimes()
        self.image: np.ndarray | None = None  # (H, W, 3) uint8, the image as given
        self.image_id: str | int = ""
        self.net: NetworkOutput | None = None
        self._grouper: Grouper | None = None
        self._step: ImageNetStep | None = None
        self._evidence: np.ndarray | None = None  # (C, h32, w32) of the current image
        self._class_map: np.ndarray | None = None  # (h, w) the last grouping's full class map

    # ------------------------------------------------------------------ the model
    @property
    def class_names(self) -> tuple[str, ...]:
        return self.model.class_names

    @property
    def num_classes(self) -> int:
        return self.model.num_classes

    # ------------------------------------------------------------------ the image
    def set_image(self, image: np.ndarray, name: str = "image",
                  image_id: str | int = "") -> NetworkOutput:
        """Run the networks on ``image`` ``(H, W, 3)`` (uint8 RGB preferred; grayscale, RGBA,
        16-bit and float are converted) and keep the output for :meth:`instances`."""
        rgb = as_rgb_uint8(image, name)
        t0 = time.perf_counter()
        stage1 = {} if self.has_instances else {"class_maps_only": True}
        net = inference.run_network(self.model, rgb, crf=self.crf, name=name, **stage1)
        self.times.network_s += time.perf_counter() - t0
        self.times.images += 1
        self.image, self.image_id = rgb, image_id
        self._evidence = None
        self.set_network_output(net)
        return net

    def set_network_output(self, net: NetworkOutput, image: np.ndarray | None = None,
                           image_id: str | int | None = None) -> None:
        """Use ``net`` as the current network output (e.g. the model's with the true
        locations swapped in, :func:`~pfn_napari.grouping.with_true_locations`), on ``image``
        (default: the current one) named ``image_id`` (default: the current one)."""
        if image is not None:
            self.image = as_rgb_uint8(image)
            self._evidence = None
        if image_id is not None:
            self.image_id = image_id
        self._step = None  # the ImageNet step's caches are per network output
        self.net = net
        self._grouper = None
        self._class_map = None

    @property
    def image_size(self) -> tuple[int, int]:
        """``(H, W)`` of the image given to :meth:`set_image` (the networks may have seen it
        smaller: ``self.net.image_size``)."""
        self._require()
        return tuple(self.image.shape[:2]) if self.image is not None else tuple(self.net.image_size)

    @property
    def resized(self) -> bool:
        """Whether the networks saw the image resized (a side over ``MAX_SIDE``)."""
        return tuple(self.net.image_size) != self.image_size

    @property
    def has_instances(self) -> bool:
        """Whether the model predicts instances (a stage-1 checkpoint has only the category
        network: :meth:`class_map` works, :meth:`instances` does not)."""
        return getattr(self.model.system, "instance", None) is not None

    def _require(self) -> None:
        if self.net is None:
            raise PFNError("no image set: call Predictor.set_image(image) first")

    # ------------------------------------------------------------------ grouping
    @property
    def grouper(self) -> Grouper:
        """The :class:`Grouper` of the current output (it caches per-class data, affinities
        and clusterings)."""
        self._require()
        if not self.has_instances:
            raise CheckpointError(f"{self.model.path}: this checkpoint holds only the category "
                                  "network (stage 1); instances need a stage-2 (instance) or "
                                  "unified checkpoint")
        if self._grouper is None:
            self._grouper = Grouper(self.net, eager=self.eager)
        return self._grouper

    def network_image(self) -> np.ndarray | None:
        """``(h, w, 3)`` uint8 the photo as the networks saw it (None without a photo of the
        networks' size)."""
        if self.image is None:
            return None
        image, _ = fit_image(self.image)
        return image if image.shape[:2] == tuple(self.net.image_size) else None

    @property
    def imagenet_step(self) -> ImageNetStep | None:
        """The ImageNet step of the current image, with its caches (None without a photo: the
        step needs it). Its classifier runs at the first grouping that uses it."""
        if self._step is None:
            image = self.network_image()
            if image is None:
                return None
            self._step = ImageNetStep(lambda: self.grouper.full_probs, self.imagenet_evidence,
                                      image, self._classify_crops)
        return self._step

    def imagenet_evidence(self) -> np.ndarray:
        """``(C, h32, w32)`` the ImageNet classifier's dense evidence on the current photo, run
        at the first call and kept for the image (a swapped network output keeps it)."""
        if self._evidence is None:
            image = self.network_image()
            if image is None:
                raise PFNError("the ImageNet step needs the photo: call set_image first")
            self._evidence = imagenet_evidence(self.model, image)
        return self._evidence

    def _classify_crops(self, image: np.ndarray, boxes: np.ndarray) -> np.ndarray:
        """``ImageNetPrior.classify_crops`` of the model's prior (loaded at the first call)."""
        return self.model.imagenet_prior().classify_crops(image, boxes)

    def group(self, grouping: GroupingConfig | None = None,
              count_override: dict[int, int] | None = None,
              imagenet: ImageNetConfig | None = None) -> GroupingResult:
        """The grouping at the networks' resolution, then the ImageNet step (``imagenet``,
        default :attr:`imagenet`; skipped when it is off or there is no photo), then only the
        classes shown (:attr:`show`), with everything they produced (refined class maps, the
        instance of each grid cell, mean boxes, timings)."""
        result = self.grouper.run(grouping or self.grouping, count_override)
        step_cfg = imagenet or self.imagenet
        if step_cfg.active and self.imagenet_step is not None:
            result = self.imagenet_step.run(result, step_cfg)
        result = shown_only(result, self.shown_ids, self.show.min_score)
        self._class_map = result.full_class_map
        for step, seconds in result.timings.items():
            self.times.per_step[step] = self.times.per_step.get(step, 0.0) + seconds
        return result

    def instances(self, grouping: GroupingConfig | None = None,
                  count_override: dict[int, int] | None = None,
                  imagenet: ImageNetConfig | None = None) -> Instances:
        """Instances of the current image at its own size (``image_id`` set)."""
        t0 = time.perf_counter()
        result = self.group(grouping, count_override, imagenet)
        inst = resize_instances(result.instances, self.image_size)
        inst.image_id = self.image_id
        self.times.grouping_s += time.perf_counter() - t0
        return inst

    @property
    def shown_ids(self) -> tuple[int, ...] | None:
        """The ids 1..C of the classes :attr:`show` names; None: every class."""
        return self.show.ids(self.class_names)

    def class_map(self) -> np.ndarray:
        """``(H, W)`` uint8 the class of every pixel (0 background) at the image's own size:
        the full-resolution class map the last grouping ended with (``full_class_map``: the
        argmax of ``full_class_probs``, the CRF's when it ran, refined by the counts, with the
        ImageNet step's objects and checks); before any grouping, and for a stage-1
        checkpoint, the argmax alone. Classes not shown (:attr:`show`) are background."""
        self._require()
        if self._class_map is not None:
            full = self._class_map  # (h, w), already only the shown classes
        elif self.has_instances:  # the grouper's unrefined full map: the same argmax, cached
            full = hide_classes(self.grouper.full_class, self.shown_ids)  # (h, w)
        else:
            full = hide_classes(np.asarray(self.net.full_class_probs).argmax(0).astype(np.uint8),
                                self.shown_ids)  # (h, w)
        size = self.image_size
        if full.shape == size:
            return full
        return resize_labels(full, size)

    def save_arrows(self, path: str | Path, instances: Instances) -> Path:
        """The paper's Fig. 1 picture of the current image: an arrow from sampled foreground
        pixels to the center each predicts, coloured by ``instances`` (at the image's size),
        drawn at the size the networks saw."""
        from .visualize import save_arrows

        small, _ = fit_image(self.image)
        return save_arrows(path, small, self.net, resize_instances(instances, self.net.image_size))

    # ------------------------------------------------------------------ one call
    def predict(self, image: np.ndarray, grouping: GroupingConfig | None = None,
                count_override: dict[int, int] | None = None, name: str = "image",
                image_id: str | int = "", imagenet: ImageNetConfig | None = None
                ) -> Instances:
        """:meth:`set_image` then :meth:`instances`."""
        self.set_image(image, name=name, image_id=image_id)
        return self.instances(grouping, count_override, imagenet)

    def predict_files(self, paths: Iterable[Path], grouping: GroupingConfig | None = None,
                      image_ids: Sequence[str] | None = None) -> Iterator[FileResult]:
        """Each file in turn: read (the next one in a background thread while the networks
        run; turned as its EXIF orientation says, as viewers show it), networks, grouping. A
        failure on one file (unreadable, too large, out of memory, ...) is returned as its
        ``error``, and the others go on. ``image_ids``: the instances' ``image_id`` of each
        file (default: the file's stem)."""
        paths = [Path(p) for p in paths]
        ids = list(image_ids) if image_ids is not None else [p.stem for p in paths]
        if len(ids) != len(paths):
            raise PFNError(f"predict_files: {len(ids)} image ids for {len(paths)} files")
        with ThreadPoolExecutor(max_workers=1) as pool:
            pending = pool.submit(read_photo, paths[0]) if paths else None
            for i, path in enumerate(paths):
                future, pending = pending, (pool.submit(read_photo, paths[i + 1])
                                            if i + 1 < len(paths) else None)
                try:
                    image = future.result()
                    inst = self.predict(image, grouping, name=str(path), image_id=ids[i])
                    yield FileResult(path, image, inst, self.net, None)
                except Exception as exc:  # noqa: BLE001 - any failure on one image: report it
                    text = str(exc) if isinstance(exc, PFNError) else \
                        f"{type(exc).__name__}: {exc}"
                    message = text if str(path) in text else f"{path}: {text}"
                    yield FileResult(path, None, None, None, message)
                finally:
                    image = inst = None  # free this image before reading the next


def hide_classes(labels: np.ndarray, shown: Sequence[int] | None) -> np.ndarray:
    """``labels`` (a class map, any shape) with every class not in ``shown`` (ids 1..C; None:
    all shown) set to 0, background; a new array, or ``labels`` itself when nothing changes."""
    if shown is None:
        return labels
    hidden = (labels > 0) & ~np.isin(labels, shown)
    return np.where(hidden, 0, labels).astype(labels.dtype) if hidden.any() else labels


def shown_only(result: GroupingResult, shown: Sequence[int] | None,
               min_score: float = 0.0) -> GroupingResult:
    """``result`` with only the classes ``shown`` (ids 1..C; None: every class) and the
    objects scored at least ``min_score`` (``show.min_score``; 0: every object); ``result``
    itself when both keep everything. The other classes' instances are dropped and their
    pixels background in ``refined_class_map``, ``full_class_map`` and ``prior_labels``; so
    are a low-scored object's instance, its grid cells and its pixels. The kept instances are
    renumbered in order in ``grid_labels``; ``cluster_counts`` keeps the shown classes (the
    front ends offer a count box for each entry); ``counts`` stays the network's."""
    inst = result.instances
    low = np.asarray(inst.scores) < min_score  # (N,)
    if shown is None and not low.any():
        return result
    keep = ~low if shown is None else np.isin(inst.classes, shown) & ~low  # (N,)
    new_index = np.concatenate([[0], np.cumsum(keep) * keep]).astype(np.int32)  # old 1..N -> new
    refined, full, prior = (result.refined_class_map, result.full_class_map,
                            result.prior_labels)
    if low.any():  # the low-scored objects' cells and pixels become background
        dropped = np.flatnonzero(low)
        refined = np.where(np.isin(result.grid_labels, dropped + 1), 0, refined)
        gone = inst.masks[low].any(0)  # (H, W)
        full = np.where(gone, 0, full)
        prior = None if prior is None else np.where(gone, 0, prior)
    features = result.features
    return replace(
        result,
        instances=inst if keep.all() else Instances(inst.masks[keep], inst.classes[keep],
                                                    inst.scores[keep], inst.image_id),
        refined_class_map=hide_classes(refined, shown).astype(np.uint8, copy=False),
        full_class_map=hide_classes(full, shown).astype(np.uint8, copy=False),
        grid_labels=new_index[result.grid_labels],
        centers=result.centers[keep], boxes=result.boxes[keep],
        prior_labels=(None if prior is None
                      else hide_classes(prior, shown).astype(np.uint8, copy=False)),
        cluster_counts={c: k for c, k in result.cluster_counts.items()
                        if shown is None or c in shown},
        features=None if features is None else features[keep])


def read_photo(path: str | Path) -> np.ndarray:
    """A photo to segment, ``(H, W, 3)`` uint8 RGB, turned as its EXIF orientation says (the
    way viewers show it; datasets with annotations keep the stored pixels, which their
    annotations refer to)."""
    from . import data

    return data.read_image(path, exif=True)


@dataclass
class FileResult:
    """One file of :meth:`Predictor.predict_files`: its image and instances, or the error."""

    path: Path
    image: np.ndarray | None  # (H, W, 3) uint8
    instances: Instances | None
    net: NetworkOutput | None
    error: str | None  # one line naming the file, when it failed


def predict(model: PFNModel, image: np.ndarray, grouping: GroupingConfig | None = None,
            crf: bool | CRFConfig | None = None, image_id: str | int = "",
            count_override: dict[int, int] | None = None,
            imagenet: ImageNetConfig | None = None) -> Instances:
    """One image in, its instances out (full resolution of the given image).

    >>> model = load_model()                      # doctest: +SKIP
    >>> inst = predict(model, image)              # doctest: +SKIP
    >>> inst.masks.shape, inst.classes, inst.scores  # doctest: +SKIP

    For several groupings of one image, keep a :class:`Predictor` instead.
    """
    return Predictor(model, grouping=grouping, crf=crf, imagenet=imagenet).predict(
        image, count_override=count_override, image_id=image_id)

"""One image and one network output, ready to be re-clustered: the notebook's unit of study.

A :class:`StageView` holds what a :class:`~pfn_napari.session.PFNSession` (the napari plugin's
too) holds after *Run PFN*: the image, the cached :class:`~pfn_napari.structures.NetworkOutput`
and a :class:`~pfn_napari.grouping.Grouper` on it. The network output comes from the model
(:func:`run_pfn`, through a session) or from an annotated image's ground truth
(:func:`oracle_view`, :func:`pfn_napari.grouping.oracle_network_output`); either way
:meth:`StageView.recluster` runs only the test-time grouping, the session's
:class:`~pfn_napari.session.TuneParams` in, its :class:`~pfn_napari.session.Reclustering` out
(with the ImageNet step after the grouping for views made by the model, when it is on).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from ..config import GroupingConfig, ImageNetConfig
from ..errors import PFNError
from ..layer_data import Geometry
from ..session import PFNSession, Reclustering, TuneParams, params_of, recluster
from ..targets import predicted_centers
from ..structures import NetworkOutput, Sample

if TYPE_CHECKING:  # pragma: no cover
    from ..grouping import Grouper
    from ..inference import PFNModel

#: Steps of :func:`run_pfn`, shown on its progress line.
RUN_STEPS = ("loading the weights", "running the networks", "grouping")
#: The annotated image the tour prefers: COCO 77 (the skaters sample) of coco128-train.
TOUR_IMAGE_ID = "000000000077"
#: Where the embedded data stands in when the shared data is absent.
SYNTHETIC_SPEC = "synthetic:8@0"


@dataclass
class StageView:
    """An image, a network output on it, and a cached grouper.

    ``image`` is ``(H, W, 3)`` uint8; ``net.image_size`` is the ``(h, w)`` the networks saw
    (smaller than ``(H, W)`` only for images over ``inference.MAX_SIDE``); ``class_names`` are
    classes ``1..C``; ``grouping`` is the base config the knobs change (the model's).
    """

    image: np.ndarray  # (H, W, 3) uint8 RGB
    net: NetworkOutput
    class_names: tuple[str, ...]
    grouping: GroupingConfig = field(default_factory=GroupingConfig)
    title: str = ""
    network_seconds: float = 0.0  # time the networks took (0 for the oracle)
    session: PFNSession | None = None  # the plugin's session, for views made by the model
    # the ImageNet step's settings for views made by the model (None: the model's own)
    imagenet: ImageNetConfig | None = None
    _grouper: Any = field(default=None, repr=False)

    @property
    def grouper(self) -> "Grouper":
        """The cached :class:`~pfn_napari.grouping.Grouper` (eager: a changed count re-runs only
        k-means), shared with :attr:`session` when there is one."""
        if self._grouper is None:
            if self.session is not None and self.session.net is self.net:
                self._grouper = self.session.grouper
            else:
                from ..grouping import Grouper

                self._grouper = Grouper(self.net, eager=True)
        return self._grouper

    @property
    def geometry(self) -> Geometry:
        """The image's size against the size the networks saw."""
        return Geometry(tuple(self.image.shape[:2]), tuple(int(v) for v in self.net.image_size))

    @property
    def centers(self) -> np.ndarray:
        """``(2, gh, gw)`` normalised (x, y) instance center each grid cell predicts."""
        return predicted_centers(self.net)

    @property
    def by_model(self) -> bool:
        """Whether the network output is the session's (the ImageNet step can run on it)."""
        return self.session is not None and self.session.net is self.net

    def imagenet_config(self) -> ImageNetConfig | None:
        """The ImageNet step's settings of a view made by the model (None for the others)."""
        if not self.by_model:
            return None
        return self.imagenet or self.session.model.config.imagenet

    def default_params(self) -> TuneParams:
        """The base grouping config (and the ImageNet switch of a view made by the model) as
        the knobs' start values, no count override."""
        return params_of(self.grouping, self.imagenet_config())

    def predicted_counts(self) -> np.ndarray:
        """``(C,)`` float32 instance numbers of the count network (the truth for the oracle)."""
        return np.asarray(self.net.counts, dtype=np.float32).reshape(-1)

    def present_classes(self, tau: float | None = None) -> list[int]:
        """Classes 1..C the widget gives a count box: count over ``tau`` or on the category map."""
        tau = self.grouping.tau if tau is None else tau
        counts = self.predicted_counts()
        on_map = set(np.unique(self.net.class_probs.argmax(0)).tolist()) - {0}
        return [c for c in range(1, len(counts) + 1) if counts[c - 1] > tau or c in on_map]

    def counts_by_name(self, tau: float | None = None) -> dict[str, float]:
        """``{class name: predicted count}`` of the classes present (:meth:`present_classes`)."""
        counts = self.predicted_counts()
        return {self.class_names[c - 1]: round(float(counts[c - 1]), 2)
                for c in self.present_classes(tau)}

    def recluster(self, params: TuneParams | None = None, **changes: Any) -> Reclustering:
        """Group the cached network output: refinement, clustering, size filter; no networks.

        Args:
            params: the knobs (default :meth:`default_params`).
            **changes: fields of :class:`TuneParams` to replace, e.g. ``sigma=0.1`` or
                ``count_override={15: 3}`` (a dict is accepted for the counts).

        Returns:
            The plugin's :class:`Reclustering`: instances at the image's full resolution, the
            refined class map on the grid and at full resolution, each grid cell's instance, the
            wall time in seconds.
        """
        params = params or self.default_params()
        if "count_override" in changes and isinstance(changes["count_override"], dict):
            changes["count_override"] = tuple(sorted(
                (int(c), int(n)) for c, n in changes["count_override"].items()))
        params = replace(params, **changes) if changes else params
        runner = self.session.predictor if self.by_model else self.grouper
        return recluster(runner, self.grouping, params, self.image.shape[:2],
                         self.imagenet_config())


def _progress(total: int, desc: str, enabled: bool) -> Any:
    """A tqdm progress line (a widget bar in Jupyter, text elsewhere), or a silent stand-in."""
    if enabled:
        from tqdm.auto import tqdm

        return tqdm(total=total, desc=desc, bar_format="{desc} {bar} {n}/{total}{postfix}")

    class _Silent:
        def update(self, n: int = 1) -> None: ...
        def set_description_str(self, s: str) -> None: ...
        def set_postfix_str(self, s: str) -> None: ...
        def close(self) -> None: ...

    return _Silent()


def run_pfn(image: np.ndarray, model: "PFNModel | str | Path | None" = None,
            device: str = "auto", title: str = "", progress: bool = True) -> StageView:
    """Load the model (unless given), run the networks once, group once: the tour's first step.

    Args:
        image: ``(H, W, 3)`` uint8 RGB (grayscale, RGBA and other dtypes are converted as in the
            plugin).
        model: a loaded :class:`~pfn_napari.inference.PFNModel`, or a weights file (default: the
            shipped weights, ``weights/pfn-lite0-voc.pt`` or ``$PFN_WEIGHTS``).
        device: ``auto`` (CUDA when there is a GPU), ``cpu`` or ``cuda``; used when loading.
        title: a name for the figures.
        progress: show a progress line naming the step and the seconds each took.

    Returns:
        A :class:`StageView` whose ``session`` is the plugin's :class:`PFNSession` (so napari
        can adopt it) and whose grouper already holds the first grouping's caches.
    """
    from ..grouping.methods import warm_up_in_background
    from ..inference import PFNModel, default_weights_path

    warm_up_in_background()  # knn-spectral's imports, while the weights load and networks run
    bar = _progress(len(RUN_STEPS), "PFN", progress)
    done: list[str] = []
    try:
        session = PFNSession()
        t0 = time.perf_counter()
        bar.set_description_str(f"PFN: {RUN_STEPS[0]}")
        if isinstance(model, PFNModel):
            session.model = model
            shipped = model.path is not None and Path(model.path) == default_weights_path()
            # the key the plugin's Run compares with its weights box ('' = shipped weights)
            session.model_key = ("" if shipped else str(model.path or ""), device)
        else:
            session.load_model(model, device)
        done.append(f"weights {time.perf_counter() - t0:.1f} s")
        bar.update(1)
        bar.set_description_str(f"PFN: {RUN_STEPS[1]} ({session.model.device})")
        net = session.run_network(image, name=title or "image")
        done.append(f"networks {session.network_seconds:.2f} s")
        bar.set_postfix_str(", ".join(done))
        bar.update(1)
        bar.set_description_str(f"PFN: {RUN_STEPS[2]}")
        view = StageView(image=session.image, net=net, class_names=session.class_names,
                         grouping=session.model.config.grouping, title=title,
                         network_seconds=session.network_seconds, session=session)
        first = view.recluster()
        session.clustering = first
        done.append(f"grouping {first.seconds:.2f} s ({len(first.instances)} instances)")
        bar.set_description_str("PFN: done")
        bar.set_postfix_str(", ".join(done))
        bar.update(1)
    finally:
        bar.close()
    return view


def oracle_view(sample: Sample, class_names: Sequence[str], encoding: str = "box6",
                noise: float = 0.0, seed: int = 0, grouping: GroupingConfig | None = None,
                title: str = "") -> StageView:
    """The ground truth of ``sample`` dressed as the networks' output (the paper's upper bound).

    Classes are one-hot (at full resolution too, as a perfect CRF), the locations are the exact
    targets plus Gaussian ``noise`` (normalised units: 0.01 is 1 % of the image's width or
    height) drawn with ``seed``, the counts are the true numbers of instances.
    ``sample``'s classes must already be ``1..len(class_names)``.
    """
    from ..grouping import oracle_network_output

    if noise < 0:
        raise PFNError(f"oracle noise {noise}: must be >= 0 (normalised units, 0.01 = 1 % of "
                       "a side)")
    net = oracle_network_output(sample, len(class_names), encoding, noise=noise, rng=seed,
                                full_classes=True)
    name = title or f"ground truth of {sample.image_id}"
    return StageView(image=sample.image, net=net, class_names=tuple(class_names),
                     grouping=grouping or GroupingConfig(), title=name)


def shared_data_dir() -> Path:
    """``$PFN_SHARED_DATA``, else ``shared/data`` beside the repository (it may not exist)."""
    env = os.environ.get("PFN_SHARED_DATA")
    return Path(env) if env else Path(__file__).resolve().parents[3] / "shared" / "data"


def annotated_sample(class_names: Sequence[str], image_id: str = TOUR_IMAGE_ID,
                     data_dir: str | Path | None = None) -> tuple[Sample, str]:
    """An annotated image for the oracle, with its classes mapped onto ``class_names``.

    COCO ``image_id`` of ``coco128-train/voc/VOC2012`` in the shared data when it is there
    (77 is the skaters sample photo: five people); else the embedded synthetic data's image
    with the most instances whose classes ``class_names`` knows (``synthetic:8@0``, split val).

    Returns:
        The sample and one line saying where it came from.
    """
    from ..data import open_dataset

    root = Path(data_dir) if data_dir else shared_data_dir()
    voc = root / "coco128-train" / "voc" / "VOC2012"
    if (voc / "ImageSets" / "Segmentation" / "trainval.txt").is_file():
        ds = open_dataset(f"voc:{voc}", "trainval", tuple(class_names))
        if image_id in ds.image_ids:
            sample = ds[ds.image_ids.index(image_id)]
            return sample, (f"COCO {int(image_id)} from {voc} (ground truth of "
                            f"{sample.num_instances} instances)")
    ds = open_dataset(SYNTHETIC_SPEC, "val", tuple(class_names))
    best = max(range(len(ds)), key=lambda i: ds[i].num_instances)
    sample = ds[best]
    if sample.num_instances == 0:
        raise PFNError(f"{SYNTHETIC_SPEC}: none of the classes {tuple(class_names)[:4]}... is a "
                       "synthetic class (disc, square, triangle); pass the data's own classes")
    return sample, (f"the embedded synthetic data ({SYNTHETIC_SPEC}, val image {best}, "
                    f"{sample.num_instances} instances): shared data not found at {voc}")

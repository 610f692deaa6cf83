"""What gets evaluated, and the loop that evaluates it over a dataset.

A *producer* turns image ``index`` of a dataset (and its sample) into the prediction to
evaluate: the instances and, optionally, an ``(H, W)`` class map for the mean IoU (``None``:
the instances' own class map). ``pfn evaluate``, ``pfn demo``, validation during training and
``benchmarks/results.py`` all evaluate through :func:`evaluate_dataset`; they differ only in
the producer:

* :func:`oracle_producer`: the ground truth itself (must give 100);
* :func:`predictions_producer`: a COCO results file;
* :func:`model_producer`: a :class:`~pfn_napari.predictor.Predictor` (networks + grouping),
  optionally with the true counts or the true locations swapped in (the paper's bounds);
* :func:`oracle_locations_producer`: "perfect networks", ground-truth classes, counts and
  locations through the grouping alone.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np

from .config import GroupingConfig
from .errors import PFNError
from .structures import Instances, Sample

if TYPE_CHECKING:  # pragma: no cover
    from .data import PFNDataset
    from .evaluate import Metrics
    from .predictor import Predictor

Producer = Callable[[int, Sample], "tuple[Instances, np.ndarray | None]"]


def oracle_producer() -> Producer:
    """The ground truth as the prediction (``Instances.from_sample``, scores 1.0)."""

    def produce(index: int, sample: Sample) -> tuple[Instances, None]:
        return Instances.from_sample(sample), None

    return produce


def predictions_producer(path: str, dataset: PFNDataset) -> Producer:
    """Instances read from a COCO results file (checked against the dataset up front, masks
    decoded image by image)."""
    from .evaluate import load_coco_results

    results = load_coco_results(path, dataset)

    def produce(index: int, sample: Sample) -> tuple[Instances, None]:
        return results.encoded(index, tuple(sample.class_map.shape)), None  # RLEs, not masks

    return produce


def class_lut(model_classes: tuple[str, ...], data_classes: tuple[str, ...]) -> np.ndarray:
    """``(C_model + 1,)`` int64: the data's class id of each model class (0: background, or a
    class the data does not know)."""
    return np.array([0] + [data_classes.index(n) + 1 if n in data_classes else 0
                           for n in model_classes], dtype=np.int64)


def model_producer(predictor: Predictor, dataset: PFNDataset, oracle_counts: bool = False,
                   oracle_locations: bool = False, noise: float = 0.0, seed: int = 0,
                   grouping: GroupingConfig | None = None,
                   class_map_only: bool = False) -> Producer:
    """A model's networks + grouping (``grouping``: default the predictor's).

    ``class_map_only``: no instances (an empty prediction), only the category map, for the
    mean IoU of a stage-1 checkpoint (validation during stage 1).

    ``oracle_counts`` swaps in the true instance numbers, ``oracle_locations`` the true
    locations (+ Gaussian ``noise``) on the model's own segmentation
    (:func:`~pfn_napari.grouping.with_true_locations`). Model classes the data does not know are
    dropped; the others are renumbered to the data's ids.
    """
    from .grouping import with_true_locations

    if not set(predictor.class_names) & set(dataset.classes):
        raise PFNError(f"{predictor.model.path}: the model's classes "
                       f"({', '.join(predictor.class_names)}) share none with the data's "
                       f"({', '.join(dataset.classes)})")
    lut = class_lut(predictor.class_names, tuple(dataset.classes))
    rng = np.random.default_rng(seed)

    def produce(index: int, sample: Sample) -> tuple[Instances, np.ndarray]:
        predictor.set_image(sample.image, name=str(sample.image_id),
                            image_id=sample.image_id)
        if oracle_locations:
            predictor.set_network_output(with_true_locations(predictor.net, sample.instance_map,
                                                             noise, rng))
        override = None
        if oracle_counts:  # model class m is data class lut[m]; classes the data lacks keep theirs
            override = {m: int(np.sum(sample.instance_classes == lut[m]))
                        for m in range(1, predictor.num_classes + 1) if lut[m] > 0}
        if class_map_only:
            inst = Instances.empty(*predictor.image_size, image_id=sample.image_id)
        else:
            inst = predictor.instances(grouping, override)
        return to_data_classes(inst, lut, sample.image_id), lut[predictor.class_map()].astype(
            np.uint8)

    return produce


def to_data_classes(inst: Instances, lut: np.ndarray, image_id: str | int) -> Instances:
    """``inst`` with the model's class ids turned into the data's by ``lut``
    (:func:`class_lut`); instances of classes the data does not know are dropped."""
    keep = lut[inst.classes] > 0  # (K,)
    return Instances(inst.masks[keep], lut[inst.classes[keep]], inst.scores[keep], image_id)


def oracle_locations_producer(num_classes: int, grouping: GroupingConfig, encoding: str = "box6",
                              noise: float = 0.0, seed: int = 0, stride: int = 8,
                              full_classes: bool = True) -> Producer:
    """Ground-truth classes and location vectors (+ ``noise``) through the grouping alone."""
    from .grouping import group, oracle_network_output

    rng = np.random.default_rng(seed)

    def produce(index: int, sample: Sample) -> tuple[Instances, None]:
        net = oracle_network_output(sample, num_classes, encoding, noise=noise, rng=rng,
                                    stride=stride, full_classes=full_classes)
        inst = group(net, grouping)
        inst.image_id = sample.image_id
        return inst, None

    return produce


def evaluate_dataset(dataset: PFNDataset, produce: Producer,
                     thresholds: tuple[float, ...] = (0.5, 0.6, 0.7, 0.8, 0.9),
                     ap_style: str = "voc", desc: str = "evaluate", progress: bool = True,
                     limit: int | None = None, also: list | None = None,
                     on_image: Callable[[int, Sample, Instances], None] | None = None) -> Metrics:
    """Run ``produce`` on every image (a tqdm bar) and evaluate; returns ``Metrics``.

    ``limit``: the first images only. ``also``: more :class:`~pfn_napari.evaluate.Evaluator`
    objects fed the same predictions (e.g. one over several datasets). ``on_image``: called
    with each image's index, sample and instances (pictures, logs).
    """
    from tqdm import tqdm

    from .evaluate import Evaluator

    evaluator = Evaluator(dataset.classes, thresholds, ap_style)
    n = len(dataset) if limit is None else min(limit, len(dataset))
    for index in tqdm(range(n), desc=desc, unit="img", disable=not progress):
        sample = dataset[index]
        instances, semantic = produce(index, sample)
        for ev in [evaluator, *(also or [])]:
            ev.add(sample, instances, semantic)
        if on_image is not None:
            on_image(index, sample, instances)
    return evaluator.result()

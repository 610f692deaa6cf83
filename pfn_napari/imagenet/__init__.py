"""The ImageNet step, a stage after the grouping (beyond the paper; docs/model.md).

:func:`name_missed_objects` takes a :class:`~pfn_napari.grouping.GroupingResult` and returns
one: objects the category map left as background named with the ImageNet classifier's
evidence, the found objects checked on their crops, outlines fitted to the photo. Its settings
are ``PFNConfig.imagenet`` (:class:`~pfn_napari.config.ImageNetConfig`); ``imagenet.enabled``
switches it on or off everywhere (``--set imagenet.enabled=false``, ``Predictor(imagenet=...)``,
napari's "Name missed objects (ImageNet)", the notebook's box). The classifier itself is
:mod:`pfn_napari.model.imagenet_prior`; the pure region functions are :mod:`.regions`.

>>> result = predictor.grouper.run(cfg.grouping)                              # doctest: +SKIP
>>> result = name_missed_objects(result, cfg.imagenet, probs, evidence, image)  # doctest: +SKIP
"""

from .regions import GRABCUT_MISSING, check_instances, grabcut_shape, prior_fill
from .step import ImageNetStep, imagenet_evidence, name_missed_objects

__all__ = [
    "GRABCUT_MISSING",
    "ImageNetStep",
    "check_instances",
    "grabcut_shape",
    "imagenet_evidence",
    "name_missed_objects",
    "prior_fill",
]

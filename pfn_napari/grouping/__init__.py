"""Test-time grouping (paper section 3.4): class-map refinement by the counts, per-class
clustering of the predicted instance locations, instances at full resolution.

Pure numpy / scipy / scikit-learn (and pycocotools for box IoU): nothing here imports the
model. See ``docs/grouping.md``.

>>> from pfn_napari.grouping import group, Grouper, oracle_network_output   # doctest: +SKIP
>>> instances = group(net, cfg.grouping)                                     # doctest: +SKIP
"""

from .grouper import Grouper, GroupingResult, Objects, group
from .methods import (GROUPING_METHODS, KNOBS, ClassData, Clustering, GroupingMethod, Knob,
                      grouping_method, method_knobs, register_grouping_method)
from .oracle import box_agreement, oracle_network_output, own_box_share, with_true_locations
from .refine import present_classes, refine_class_map

__all__ = [
    "GROUPING_METHODS",
    "ClassData",
    "Clustering",
    "Grouper",
    "GroupingMethod",
    "GroupingResult",
    "KNOBS",
    "Knob",
    "Objects",
    "box_agreement",
    "group",
    "grouping_method",
    "method_knobs",
    "oracle_network_output",
    "own_box_share",
    "present_classes",
    "refine_class_map",
    "register_grouping_method",
    "with_true_locations",
]

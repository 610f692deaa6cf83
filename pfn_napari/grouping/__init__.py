"""Test-time grouping (paper section 3.4): class-map refinement by the counts, per-class
clustering of the predicted instance locations, instances at full resolution.

Pure numpy / scipy / scikit-learn: nothing here imports the model. See ``docs/grouping.md``.

>>> from pfn_napari.grouping import group, Grouper, oracle_network_output   # doctest: +SKIP
>>> instances = group(net, cfg.grouping)                                     # doctest: +SKIP
"""

from .grouper import GroupingResult, Grouper, check_config, group
from .methods import DEFAULT_ASSIGN, GROUPING_METHODS, ClassData, Clustering
from .oracle import oracle_network_output, with_true_locations
from .refine import present_classes, refine_class_map

__all__ = [
    "DEFAULT_ASSIGN",
    "GROUPING_METHODS",
    "ClassData",
    "Clustering",
    "Grouper",
    "GroupingResult",
    "check_config",
    "group",
    "oracle_network_output",
    "present_classes",
    "refine_class_map",
    "with_true_locations",
]

"""pfn-napari: the Proposal-Free Network (PFN) for instance segmentation, and a napari plugin.

The Python API (imported lazily, so ``import pfn_napari`` stays cheap for napari)::

    import pfn_napari as pfn
    predictor = pfn.Predictor("weights/pfn-lite0-voc.pt")   # or None: the shipped weights
    predictor.set_image(image)                     # image: (H, W, 3) uint8 RGB; networks once
    instances = predictor.instances()              # grouping; again with other settings: cheap
    instances = pfn.predict(pfn.load_model(), image)   # the same in one call
    data = pfn.open_dataset("voc:/data/VOC2012", split="val")
    metrics = pfn.evaluate(list(data), [pfn.Instances.from_sample(s) for s in data], ...)
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_LAZY = {
    "load_config": "pfn_napari.config",
    "PFNConfig": "pfn_napari.config",
    "Sample": "pfn_napari.structures",
    "Instances": "pfn_napari.structures",
    "NetworkOutput": "pfn_napari.structures",
    "open_dataset": "pfn_napari.data",
    "evaluate": "pfn_napari.evaluate",
    "load_model": "pfn_napari.inference",
    "run_network": "pfn_napari.inference",
    "predict": "pfn_napari.predictor",
    "Predictor": "pfn_napari.predictor",
    "evaluate_dataset": "pfn_napari.producers",
    "group": "pfn_napari.grouping",
}

__all__ = sorted(_LAZY) + ["__version__"]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'pfn_napari' has no attribute {name!r}")

"""The napari plugin: a dock widget over :mod:`pfn_napari.inference` and :mod:`pfn_napari.grouping`.

Contributions (declared in ``pfn_napari/napari.yaml``): the :class:`PFNWidget` dock widget,
three sample images (:mod:`._sample_data`) and a writer for instance Labels (:mod:`._writer`).
Qt is imported only when the widget is asked for. The Qt-free session and layer data it
drives are library code (:mod:`pfn_napari.session`, :mod:`pfn_napari.layer_data`) that the
notebook uses too.
"""

from __future__ import annotations

import os
import sys
from typing import Any


def _hide_triton() -> None:
    """Keep torch from importing triton inside napari.

    napari creates its OpenGL context before a plugin loads; with Mesa's software renderer
    (llvmpipe: Xvfb, VMs, remote desktops) the process then segfaults when triton's bundled
    LLVM is loaded, which ``import torchvision`` does through ``torch._dynamo``. The plugin
    runs eager inference and never compiles kernels, so torch is told triton is absent
    (``sys.modules['triton'] = None`` makes ``import triton`` raise ImportError). Set
    ``PFN_NAPARI_ALLOW_TRITON=1`` to keep triton visible.
    """
    if "triton" not in sys.modules and os.environ.get("PFN_NAPARI_ALLOW_TRITON") != "1":
        sys.modules["triton"] = None  # type: ignore[assignment]


_hide_triton()

__all__ = ["PFNWidget", "PFNSession", "TuneParams", "Reclustering", "recluster", "layers"]


def __getattr__(name: str) -> Any:
    if name == "PFNWidget":
        from ._widget import PFNWidget

        return PFNWidget
    if name in ("PFNSession", "TuneParams", "Reclustering", "recluster"):
        from .. import session

        return getattr(session, name)
    if name == "layers":  # the layer builders (data + napari keyword arguments), without Qt
        from .. import layer_data

        return layer_data
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

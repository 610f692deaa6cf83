"""One call from a notebook to the same result in napari: the image and the plugin's six layers.

:func:`open_in_napari` needs a desktop session (a display) and the ``napari`` extra; where there
is none (a server, CI, a browser-only Jupyter) it says why in one line and returns ``None``, so
a notebook runs top to bottom anywhere. The layers are built by the plugin's own functions
(:mod:`pfn_napari.layer_data`) and carry the plugin's names; for a view made by the model,
the PFN dock widget is added on the same session, so its knobs go on re-clustering the same
cached network output and update those layers in place.
"""

from __future__ import annotations

import os
import sys
from typing import Any

from .. import layer_data as L
from ..session import Reclustering
from .views import StageView

#: The plugin and its dock widget as napari.yaml names them.
PLUGIN, PLUGIN_WIDGET = "pfn-napari", "PFN instance segmentation"


def display_problem(allow_offscreen: bool = False) -> str | None:
    """Why a napari window cannot open here, or None when it can.

    On Linux a window needs ``$DISPLAY`` (X11) or ``$WAYLAND_DISPLAY``; ``QT_QPA_PLATFORM=
    offscreen`` (headless Qt, as in the tests and CI) counts as no display unless
    ``allow_offscreen``. macOS and Windows sessions always have one. napari must be installed.
    """
    platform = os.environ.get("QT_QPA_PLATFORM", "")
    if platform == "offscreen" and not allow_offscreen:
        return ("Qt is set to run offscreen (QT_QPA_PLATFORM=offscreen): no window can be "
                "shown; run the notebook in a desktop session to open napari")
    if sys.platform.startswith("linux") and platform != "offscreen" and not (
            os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
        return ("no display: neither $DISPLAY nor $WAYLAND_DISPLAY is set (a server, CI or a "
                "remote Jupyter); run the notebook in a desktop session to open napari")
    try:
        import napari  # noqa: F401
    except ImportError:
        return "napari is not installed: pip install -e '.[napari]'"
    return None


def _labels_kwargs(kwargs: dict[str, Any]) -> dict[str, Any]:
    """The plugin's ``{label: RGBA}`` colour dicts as napari label colormaps."""
    out = dict(kwargs)
    if isinstance(out.get("colormap"), dict):
        from napari.utils.colormaps import DirectLabelColormap

        out["colormap"] = DirectLabelColormap(color_dict=out["colormap"])
    return out


def add_layers(viewer: Any, view: StageView, clustering: Reclustering,
               image_name: str | None = None) -> dict[str, Any]:
    """Add the image and the plugin's six layers of ``view`` / ``clustering`` to ``viewer``
    (a ``napari.Viewer`` or a window-less ``napari.components.ViewerModel``).

    Returns ``{layer name: layer}``; the category, refined, locations and clusters layers start
    hidden, as in the plugin.
    """
    geom, names, net = view.geometry, view.class_names, view.net
    name = image_name or view.title or "image"
    layers = {name: viewer.add_image(view.image, name=name, rgb=True)}
    specs = [
        (L.CATEGORY, "labels", L.category_layer(net, geom, names), False),
        (L.REFINED, "labels", L.refined_layer(clustering.full_class_map, geom, names), False),
        (L.LOCATIONS, "image", L.locations_layer(net, geom), False),
        (L.CLUSTERS, "labels", L.clusters_layer(clustering.grid_labels, geom), False),
        (L.INSTANCES, "labels", L.instances_layer(clustering.instances, names), True),
        (L.VECTORS, "vectors", L.vectors_layer(view.centers, clustering.refined_class_map > 0,
                                               clustering.grid_labels, geom), True),
    ]
    for layer_name, kind, (data, kwargs), visible in specs:
        kwargs = _labels_kwargs(kwargs) if kind == "labels" else dict(kwargs)
        if layer_name == L.INSTANCES:
            kwargs["metadata"] = {"class_names": names, "image_layer": name,
                                  "params": clustering.params}
        add = getattr(viewer, f"add_{kind}")
        layers[layer_name] = add(data, name=layer_name, visible=visible, **kwargs)
    return layers


def open_in_napari(view: StageView, clustering: Reclustering | None = None, viewer: Any = None,
                   dock_widget: bool = True, allow_offscreen: bool = False) -> Any:
    """Open ``view`` and its grouping in a napari viewer, as the plugin shows them.

    Args:
        view: what to show (:func:`~pfn_napari.notebook.run_pfn` or
            :func:`~pfn_napari.notebook.oracle_view`).
        clustering: the grouping to show (default: ``view.recluster()`` with its config).
        viewer: an existing viewer (or ``ViewerModel``) to add to; default a new window.
        dock_widget: for views made by the model, add the PFN dock widget on the same session
            (its knobs re-cluster the cached output and update these layers in place).
        allow_offscreen: accept ``QT_QPA_PLATFORM=offscreen`` (tests).

    Returns:
        The viewer, or ``None`` (with one printed line saying why) where no window can open.
    """
    if viewer is None:
        problem = display_problem(allow_offscreen)
        if problem is not None:
            print(f"napari not opened: {problem}.")
            return None
        import napari

        viewer = napari.Viewer(title=f"pfn-napari: {view.title or 'notebook'}")
    clustering = clustering or view.recluster()
    image_name = view.title or "image"
    add_layers(viewer, view, clustering, image_name)
    window = getattr(viewer, "window", None)
    if dock_widget and view.session is not None and window is not None:
        # the plugin's dock widget through napari's plugin registry (the notebook and napari
        # are sibling front ends: neither imports the other)
        _, widget = window.add_plugin_dock_widget(PLUGIN, PLUGIN_WIDGET)
        widget.adopt_session(view.session, clustering, image_name)
    return viewer

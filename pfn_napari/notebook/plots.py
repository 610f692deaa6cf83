"""Matplotlib figures of PFN's stages, for a notebook: one function per stage.

Each ``plot_*`` function draws into ``ax`` when given (and returns its figure), else makes a
figure, closes it in pyplot (so Jupyter shows it once, as the cell's value) and returns it.
The data come from the same functions as the napari layers (:mod:`pfn_napari.layer_data`),
so a figure and a layer of the same name show the same numbers.

Coordinates: ``imshow`` puts the *center* of pixel ``(row, col)`` at ``(x, y) = (col, row)``,
as napari does; stride-8 grid cell ``(i, j)`` sits on pixel ``(8 i, 8 j)`` of the network's
image (times the resize ratio for images the networks saw resized).
"""

from __future__ import annotations

import io
from typing import TYPE_CHECKING, Sequence

import numpy as np

from .. import layer_data as L
from ..session import Reclustering
from ..structures import Instances
from ..visualize import instance_colors, overlay, voc_palette
from .views import StageView

if TYPE_CHECKING:  # pragma: no cover
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

#: Titles of the stage figures (and of the panels of :func:`plot_stages`).
TITLES = {
    "category": "category map",
    "refined": "refined category map",
    "locations": "location channels",
    "vectors": "velocity vectors",
    "clusters": "clusters (grid)",
    "instances": "instances",
}


def _new_axes(ax: "Axes | None", view: StageView, width: float = 5.0) -> "Axes":
    if ax is not None:
        return ax
    import matplotlib.pyplot as plt

    h, w = view.image.shape[:2]
    fig, ax = plt.subplots(figsize=(width, width * h / w + 0.4), dpi=80)
    plt.close(fig)  # shown once, as the returned value (not again by the inline backend)
    fig.subplots_adjust(0.01, 0.01, 0.99, 0.92)
    return ax


def _finish(ax: "Axes", view: StageView, title: str) -> None:
    h, w = view.image.shape[:2]
    ax.set_xlim(-0.5, w - 0.5)
    ax.set_ylim(h - 0.5, -0.5)
    ax.set_title(title, fontsize=10)
    ax.set_axis_off()


def _extent(shape: tuple[int, int], view: StageView) -> tuple[float, float, float, float]:
    """``imshow`` extent laying a map of ``shape`` over the image: a full-resolution map of the
    network's image (scaled by the resize ratio) or a stride-8 grid (cell i on pixel 8 i)."""
    geom = view.geometry
    if tuple(shape) == tuple(geom.net_size):
        sy, sx = geom.ratio
        h, w = shape
        return (-0.5 * sx, (w - 0.5) * sx, (h - 0.5) * sy, -0.5 * sy)
    sy, sx = geom.grid_scale
    gh, gw = shape
    return (-0.5 * sx, (gw - 0.5) * sx, (gh - 0.5) * sy, -0.5 * sy)


def class_rgba(class_map: np.ndarray, alpha: float = 0.65) -> np.ndarray:
    """``(h, w)`` classes -> ``(h, w, 4)`` float RGBA in VOC colours, background transparent."""
    pal = voc_palette(256).astype(np.float32) / 255.0
    rgba = np.zeros((*class_map.shape, 4), dtype=np.float32)
    rgba[..., :3] = pal[class_map.astype(np.int64)]
    rgba[..., 3] = np.where((class_map > 0) & (class_map != 255), alpha, 0.0)
    return rgba


def _class_legend(ax: "Axes", class_map: np.ndarray, names: Sequence[str]) -> None:
    from matplotlib.patches import Patch

    pal = voc_palette(256) / 255.0
    present = [int(c) for c in np.unique(class_map) if 0 < c <= len(names)]
    if present:
        ax.legend(handles=[Patch(color=pal[c], label=names[c - 1]) for c in present],
                  loc="lower right", fontsize=7, framealpha=0.8)
    else:
        ax.text(0.5, 0.5, "all background", transform=ax.transAxes, ha="center", va="center",
                fontsize=9, color="white", bbox=dict(facecolor="black", alpha=0.6, lw=0))


def category_map(view: StageView) -> np.ndarray:
    """The category network's argmax: ``(h, w)`` at full resolution when the output has it
    (upsampled or CRF probabilities), else ``(gh, gw)`` on the grid."""
    probs = view.net.full_class_probs if view.net.full_class_probs is not None \
        else view.net.class_probs
    return np.asarray(probs).argmax(0).astype(np.uint8)


def plot_category(view: StageView, ax: "Axes | None" = None) -> "Figure":
    """The category map (VOC colours, legend of the classes present) over the photograph."""
    ax = _new_axes(ax, view)
    cmap = category_map(view)
    ax.imshow(view.image)
    ax.imshow(class_rgba(cmap), extent=_extent(cmap.shape, view), interpolation="nearest")
    _class_legend(ax, cmap, view.class_names)
    _finish(ax, view, TITLES["category"])
    return ax.figure


def plot_refined(view: StageView, clustering: Reclustering, ax: "Axes | None" = None) -> "Figure":
    """The category map after refinement by the counts (what is clustered); the title gives
    tau and the classes present."""
    ax = _new_axes(ax, view)
    refined = clustering.full_class_map
    ax.imshow(view.image)
    ax.imshow(class_rgba(refined), extent=_extent(refined.shape, view), interpolation="nearest")
    _class_legend(ax, refined, view.class_names)
    _finish(ax, view, f"{TITLES['refined']} (tau {clustering.params.tau:g})")
    return ax.figure


def location_images(view: StageView) -> tuple[tuple[str, ...], np.ndarray]:
    """Channel names and ``(L, gh, gw)`` float32 locations in pixels of the image (as the napari
    layer), NaN on cells the category map calls background."""
    data = L.locations_in_pixels(view.net, view.geometry)  # (L, gh, gw)
    fg = np.asarray(view.net.class_probs).argmax(0) > 0  # (gh, gw)
    data = np.where(fg[None], data, np.nan).astype(np.float32)
    return L.location_channels(view.net.encoding), data


def plot_locations(view: StageView, channels: Sequence[str] | None = None,
                   ncols: int = 3) -> "Figure":
    """One panel per location channel (``cx, cy, lx, ly, rx, ry`` for box6), each named with
    its meaning, in pixels of the image on the stride-8 grid; background cells left out.
    A shared colour bar: 0 .. the image's longer side."""
    import matplotlib.pyplot as plt

    names, data = location_images(view)
    keep = [i for i, n in enumerate(names) if channels is None or n in channels]
    rows = (len(keep) + ncols - 1) // ncols
    h, w = view.image.shape[:2]
    panel = 3.2
    fig, axes = plt.subplots(rows, ncols, figsize=(panel * ncols + 0.8, panel * h / w * rows + 0.6),
                             dpi=80, squeeze=False)
    plt.close(fig)
    fig.subplots_adjust(0.01, 0.01, 0.88, 0.9, wspace=0.04, hspace=0.18)
    faded = (0.35 * view.image.astype(np.float32) + 0.65 * 255).astype(np.uint8)
    top = float(max(h, w))
    image = None
    for ax, k in zip(axes.flat, keep):
        ax.imshow(faded)
        image = ax.imshow(data[k], extent=_extent(data.shape[1:], view), cmap="turbo", vmin=0,
                          vmax=top, interpolation="nearest")
        _finish(ax, view, f"{names[k]}: {L.CHANNEL_MEANING.get(names[k], names[k])}")
        ax.title.set_fontsize(8)
    for ax in axes.flat[len(keep):]:
        ax.remove()
    if image is not None:
        cax = fig.add_axes((0.9, 0.1, 0.02, 0.75))
        fig.colorbar(image, cax=cax, label="pixels")
    fig.suptitle(f"{TITLES['locations']} ({view.net.encoding})", fontsize=10)
    return fig


def plot_vectors(view: StageView, clustering: Reclustering, step: int = 2,
                 ax: "Axes | None" = None) -> "Figure":
    """The paper's Fig. 1: from every ``step``-th foreground grid cell an arrow to the instance
    center it predicts, coloured like the instance the cell joined (grey: none)."""
    ax = _new_axes(ax, view)
    fg = clustering.refined_class_map > 0  # (gh, gw)
    data, kw = L.vectors_layer(view.centers, fg, clustering.grid_labels, view.geometry, step)
    faded = (0.6 * view.image.astype(np.float32) + 0.4 * 255).astype(np.uint8)
    ax.imshow(faded)
    if len(data):
        start, delta = data[:, 0], data[:, 1]  # (N, 2) (row, col) each
        ax.quiver(start[:, 1], start[:, 0], delta[:, 1], delta[:, 0], color=kw["edge_color"],
                  angles="xy", scale_units="xy", scale=1, width=0.004, headwidth=3.5,
                  headlength=4)
    _finish(ax, view, f"{TITLES['vectors']} ({len(data)} arrows)")
    return ax.figure


def plot_clusters(view: StageView, clustering: Reclustering, ax: "Axes | None" = None) -> "Figure":
    """Each grid cell's cluster (after the size filter), before the masks go to full resolution."""
    ax = _new_axes(ax, view)
    labels = clustering.grid_labels  # (gh, gw)
    colors = np.vstack([[0, 0, 0], instance_colors(max(int(labels.max(initial=0)), 1))]) / 255.0
    rgba = np.concatenate([colors[labels], np.where(labels > 0, 0.75, 0.0)[..., None]], -1)
    ax.imshow(view.image)
    ax.imshow(rgba, extent=_extent(labels.shape, view), interpolation="nearest")
    _finish(ax, view, f"{TITLES['clusters']}: {int(labels.max(initial=0))}")
    return ax.figure


def label_point(mask: np.ndarray) -> tuple[float, float]:
    """``(x, y)`` of the pixel of ``mask`` ``(H, W)`` farthest from its border (the first in
    row-major order on ties): the distance transform on the mask's bounding box plus a ring of
    background, not on the whole image (a 500 x 375 photo: 40 ms -> 2 ms for a small object)."""
    from scipy import ndimage

    ys, xs = np.nonzero(mask)
    y0, x0 = ys.min(), xs.min()
    crop = np.pad(mask[y0:ys.max() + 1, x0:xs.max() + 1], 1)
    dist = ndimage.distance_transform_edt(crop)[1:-1, 1:-1]
    y, x = np.unravel_index(int(np.argmax(dist)), dist.shape)
    return float(x0 + x), float(y0 + y)


def label_instances(ax: "Axes", instances: Instances, names: Sequence[str],
                    fontsize: float = 7) -> list:
    """Write ``class score`` inside each instance; returns the text artists (to remove later)."""
    colors = instance_colors(len(instances)) / 255.0
    texts = []
    for mask, c, s, color in zip(instances.masks, instances.classes, instances.scores, colors):
        if not mask.any():
            continue
        x, y = label_point(mask)
        name = names[c - 1] if 0 < c <= len(names) else str(c)
        texts.append(ax.text(x, y, f"{name} {s:.2f}", fontsize=fontsize, color="white",
                             ha="center", va="center",
                             bbox=dict(facecolor=color, alpha=0.8, pad=1, lw=0)))
    return texts


def instances_title(view: StageView, clustering: Reclustering) -> str:
    p = clustering.params
    head = f"{view.title}: " if view.title else ""
    n = len(clustering.instances)
    return (f"{head}{n} {'instance' if n == 1 else 'instances'} "
            f"({p.method}, sigma {p.sigma:.3g}, {clustering.seconds * 1000:.0f} ms)")


def plot_instances(view: StageView, clustering: Reclustering, ax: "Axes | None" = None) -> "Figure":
    """The instances over the photograph, each in its own colour, labelled ``class score``."""
    ax = _new_axes(ax, view)
    ax.imshow(overlay(view.image, clustering.instances))
    label_instances(ax, clustering.instances, view.class_names)
    _finish(ax, view, instances_title(view, clustering))
    return ax.figure


def plot_stages(view: StageView, clustering: Reclustering, channel: str = "cx") -> "Figure":
    """All stages on one figure, 2 x 3: category map, refined map, one location channel,
    velocity vectors, clusters on the grid, instances."""
    import matplotlib.pyplot as plt

    h, w = view.image.shape[:2]
    fig, axes = plt.subplots(2, 3, figsize=(12, 8 * h / w + 0.8), dpi=80)
    plt.close(fig)
    fig.subplots_adjust(0.01, 0.01, 0.99, 0.9 if view.title else 0.95, wspace=0.03, hspace=0.12)
    plot_category(view, axes[0, 0])
    plot_refined(view, clustering, axes[0, 1])
    names, data = location_images(view)
    k = names.index(channel) if channel in names else 0
    axes[0, 2].imshow((0.35 * view.image.astype(np.float32) + 0.65 * 255).astype(np.uint8))
    axes[0, 2].imshow(data[k], extent=_extent(data.shape[1:], view), cmap="turbo", vmin=0,
                      vmax=float(max(h, w)), interpolation="nearest")
    _finish(axes[0, 2], view, f"location {names[k]}: {L.CHANNEL_MEANING.get(names[k], '')}")
    plot_vectors(view, clustering, ax=axes[1, 0])
    plot_clusters(view, clustering, ax=axes[1, 1])
    plot_instances(view, clustering, ax=axes[1, 2])
    n = len(clustering.instances)
    axes[1, 2].set_title(f"{TITLES['instances']}: {n}", fontsize=10)
    if view.title:
        fig.suptitle(view.title, fontsize=11)
    return fig


def figure_png(fig: "Figure", dpi: int | None = None) -> bytes:
    """The figure as PNG bytes (Agg; works under any backend, or none)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    if not isinstance(fig.canvas, FigureCanvasAgg):
        FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi or fig.dpi)
    return buf.getvalue()


def figure_jpeg(fig: "Figure", quality: int = 90) -> bytes:
    """The figure as JPEG bytes, from the Agg canvas's own pixels (a 480 x 384 panel: about 1 ms
    to encode, where PNG took 0.1-0.4 s: the notebook's knobs redraw with this)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from PIL import Image

    canvas = fig.canvas if isinstance(fig.canvas, FigureCanvasAgg) else FigureCanvasAgg(fig)
    canvas.draw()
    rgb = np.asarray(canvas.buffer_rgba())[..., :3]  # (h, w, 3) uint8
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="jpeg", quality=quality)
    return buf.getvalue()


__all__ = ["TITLES", "category_map", "class_rgba", "figure_jpeg", "figure_png",
           "instances_title", "label_instances", "label_point", "location_images",
           "plot_category", "plot_clusters", "plot_instances", "plot_locations", "plot_refined",
           "plot_stages", "plot_vectors"]

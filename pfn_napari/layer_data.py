"""What each PFN layer shows, as plain data: ``(data, kwargs)`` pairs for napari layers.

Pure functions of a :class:`~pfn_napari.structures.NetworkOutput` and a grouping result; no Qt
here, so the benchmark and the tests call them without a window.

Coordinates. napari puts the *center* of pixel ``(row, col)`` at data coordinate
``(row, col)``. A continuous image position ``X`` (pixel ``i`` covers ``[i, i + 1)``, the
convention of :mod:`pfn_napari.structures`) is therefore napari coordinate ``X - 0.5``. The
stride-8 grid cell ``(i, j)`` sits on network-input pixel ``(8 i, 8 j)``; when the networks saw
the image resized by ``1 / ratio`` (images over :data:`pfn_napari.inference.MAX_SIDE`), that is
pixel ``(8 i ratio, 8 j ratio)`` of the image in the viewer. Grid layers therefore get
``scale = 8 * ratio`` and no translation (cell 0 on pixel 0), which lays them over the image.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np

from .config import ENCODING_CHANNELS
from .structures import STRIDE, Instances, NetworkOutput
from .visualize import instance_colors, voc_palette

#: Base names of the PFN layers. The widget names its layers ``"<base>: <image layer>"``
#: (:func:`layer_name`) and tags them with :data:`LAYER_KEY` and :data:`IMAGE_KEY` in their metadata, so a re-run
#: on the same image updates them in place and every image keeps its own set.
CATEGORY = "PFN category map"
REFINED = "PFN refined category map"
LOCATIONS = "PFN locations"
VECTORS = "PFN velocity vectors"
CLUSTERS = "PFN clusters (grid)"
INSTANCES = "PFN instances"
LAYER_NAMES = (CATEGORY, REFINED, LOCATIONS, VECTORS, CLUSTERS, INSTANCES)
#: The order the widget stacks a set of PFN layers in, bottom to top, right above their image:
#: the locations image lowest (it is opaque), the arrows on top.
STACK_ORDER = (LOCATIONS, CATEGORY, REFINED, CLUSTERS, INSTANCES, VECTORS)
#: Metadata keys of a widget-made layer: which PFN layer it is, and the image layer it shows.
LAYER_KEY, IMAGE_KEY = "pfn_layer", "pfn_image"


def layer_name(base: str, image: str, channel: str | None = None) -> str:
    """The name of PFN layer ``base`` of image layer ``image``: ``"PFN instances: photo"``;
    the locations layer also names its channel: ``"PFN locations (cx): photo"``."""
    return f"{base} ({channel}): {image}" if channel else f"{base}: {image}"


def plural(n: int, noun: str) -> str:
    """``"1 instance"``, ``"3 instances"``, ``"0 instances"`` (nouns with a plain -s plural)."""
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"

#: Which channels of a location encoding hold y (rows): names ending in 'y' or 'h'.
_Y_CHANNELS = ("cy", "ly", "ry", "try", "bly", "dy", "h")

#: What each location channel is, for the widget and the docs.
CHANNEL_MEANING = {
    "cx": "instance center, column", "cy": "instance center, row",
    "lx": "box left edge, column", "ly": "box top edge, row",
    "rx": "box right edge, column", "ry": "box bottom edge, row",
    "trx": "top-right corner, column", "try": "top-right corner, row",
    "blx": "bottom-left corner, column", "bly": "bottom-left corner, row",
    "dx": "center minus pixel, columns", "dy": "center minus pixel, rows",
    "w": "box width, columns", "h": "box height, rows",
}

LayerSpec = tuple[np.ndarray, dict[str, Any]]

#: The colormap of 'PFN locations' (the dock draws its colour bar).
LOCATION_COLORMAP = "turbo"


@dataclass(frozen=True)
class Geometry:
    """How the network's image relates to the image in the viewer.

    ``image_size`` is the viewer image ``(H, W)``; ``net_size`` the ``(h, w)`` the networks saw
    (``NetworkOutput.image_size``); ``ratio = H / h`` (1.0 unless the image was resized).
    """

    image_size: tuple[int, int]
    net_size: tuple[int, int]

    @property
    def ratio(self) -> tuple[float, float]:
        return (self.image_size[0] / self.net_size[0], self.image_size[1] / self.net_size[1])

    @property
    def grid_scale(self) -> tuple[float, float]:
        """napari ``scale`` of a stride-8 grid layer over the viewer image."""
        ry, rx = self.ratio
        return (STRIDE * ry, STRIDE * rx)

    @property
    def resized(self) -> bool:
        return tuple(self.image_size) != tuple(self.net_size)


def class_features(class_names: tuple[str, ...]) -> dict[str, list]:
    """Features table of a class map: row ``k`` describes label ``k`` (0 background)."""
    names = ("background", *class_names)
    return {"index": list(range(len(names))), "class": list(names)}


def voc_colormap(num_classes: int) -> dict[int | None, np.ndarray]:
    """``{label: RGBA}`` VOC colours for labels ``1..C``, transparent background and void."""
    pal = voc_palette(256).astype(np.float32) / 255.0
    cmap: dict[int | None, np.ndarray] = {0: np.zeros(4, np.float32), None: np.zeros(4, np.float32)}
    for c in range(1, num_classes + 1):
        cmap[c] = np.append(pal[c], 1.0).astype(np.float32)
    return cmap


def instance_colormap(n: int) -> dict[int | None, np.ndarray]:
    """``{id: RGBA}`` for instance ids ``1..n`` (the colours of :func:`visualize.instance_colors`)."""
    cols = instance_colors(max(n, 1)).astype(np.float32) / 255.0
    cmap: dict[int | None, np.ndarray] = {0: np.zeros(4, np.float32),
                                          None: np.array([0.6, 0.6, 0.6, 1.0], np.float32)}
    for k in range(1, n + 1):
        cmap[k] = np.append(cols[k - 1], 1.0).astype(np.float32)
    return cmap


#: Instance ids 1..PAINT_COLORS each have their own colour in 'PFN instances' (napari's most
#: for a label colour cycle: 65535 entries with the background); higher ids repeat them.
PAINT_COLORS = 65534


@lru_cache(maxsize=1)
def _palette(m: int) -> np.ndarray:
    pal = np.zeros((m + 1, 4), np.float32)
    pal[1:, :3] = instance_colors(m).astype(np.float32) / 255.0
    pal[1:, 3] = 1.0
    pal.flags.writeable = False
    return pal


def instance_palette(n: int) -> np.ndarray:
    """``(M + 1, 4)`` float32 RGBA of instance ids ``0..M``, ``M = max(n, PAINT_COLORS)``: row 0
    transparent, row ``k`` the colour of id ``k`` in :func:`instance_colormap` (so PFN's ids
    keep their colours), continued far beyond the ``n`` ids PFN made, so a label painted with
    a new id (the layer's *new* button, the next free id) has its own colour, never grey.

    napari reads a colour array as a cyclic label colormap: id ``k`` is row ``k`` up to ``M``.
    Computed once (read-only); neighbouring ids differ in hue by 0.38 (golden-ratio hues).
    """
    return _palette(max(int(n), PAINT_COLORS))


def category_layer(net: NetworkOutput, geom: Geometry, class_names: tuple[str, ...]) -> LayerSpec:
    """'PFN category map': argmax of the category network.

    At the network image's full resolution when ``net.full_class_probs`` is there (the bilinear
    upsampling, or the CRF), scaled by ``ratio``; else on the stride-8 grid. ``(H', W')`` uint8.
    """
    if net.full_class_probs is not None:
        data = net.full_class_probs.argmax(0).astype(np.uint8)  # (h, w)
        scale = geom.ratio
    else:
        data = net.class_probs.argmax(0).astype(np.uint8)  # (gh, gw)
        scale = geom.grid_scale
    return data, {"scale": scale, "features": class_features(class_names),
                  "colormap": voc_colormap(len(class_names)), "opacity": 0.6}


def refined_layer(refined: np.ndarray, geom: Geometry,
                  class_names: tuple[str, ...]) -> LayerSpec:
    """'PFN refined category map': the class map after refinement by the counts.

    ``refined`` is ``(h, w)`` at the network image's resolution (scaled by ``ratio``) or
    ``(gh, gw)`` on the grid (scaled by ``8 ratio``)."""
    data = np.asarray(refined, dtype=np.uint8)
    scale = geom.ratio if tuple(data.shape) == tuple(geom.net_size) else geom.grid_scale
    return data, {"scale": scale, "features": class_features(class_names),
                  "colormap": voc_colormap(len(class_names)), "opacity": 0.6}


def location_channels(encoding: str) -> tuple[str, ...]:
    return ENCODING_CHANNELS[encoding]


def locations_in_pixels(net: NetworkOutput, geom: Geometry) -> np.ndarray:
    """``(L, gh, gw)`` float32 location channels in napari pixel coordinates of the viewer image.

    Position channels (``cx``, ``ly``, ...) become ``X * W - 0.5`` (a napari coordinate, so a
    value reads like the cursor position); size/offset channels (``w``, ``h``, ``dx``, ``dy``)
    are only scaled.
    """
    names = location_channels(net.encoding)
    if len(names) != net.locations.shape[0]:
        raise ValueError(f"encoding {net.encoding!r} has {len(names)} channels, "
                         f"locations have {net.locations.shape[0]}")
    H, W = geom.image_size
    out = np.empty(net.locations.shape, dtype=np.float32)
    for k, name in enumerate(names):
        size = H if name in _Y_CHANNELS else W
        shift = 0.0 if name in ("dx", "dy", "w", "h") else 0.5
        out[k] = net.locations[k] * size - shift
    return out


def locations_layer(net: NetworkOutput, geom: Geometry) -> LayerSpec:
    """'PFN locations': ``(L, gh, gw)`` Image, channel axis first, grid scaled onto the image."""
    data = locations_in_pixels(net, geom)
    names = location_channels(net.encoding)
    H, W = geom.image_size
    return data, {
        "scale": (1.0, *geom.grid_scale), "colormap": "turbo",
        "contrast_limits": (0.0, float(max(H, W))), "opacity": 0.7,
        "metadata": {"channels": names,
                     "meaning": {n: CHANNEL_MEANING.get(n, n) for n in names}},
    }


def location_range(channel: str, geom: Geometry) -> tuple[float, float]:
    """Contrast limits of one location channel: the image's columns for x channels, its rows
    for y channels, in napari pixel coordinates (sizes and offsets: +-the side)."""
    H, W = geom.image_size
    side = float(H if channel in _Y_CHANNELS else W)
    if channel in ("dx", "dy"):
        return (-side / 2, side / 2)
    return (0.0, side) if channel in ("w", "h") else (-0.5, side - 0.5)


def location_channel_layer(net: NetworkOutput, geom: Geometry, channel: str) -> LayerSpec:
    """'PFN locations', one channel: a ``(gh, gw)`` float32 Image in viewer pixels, on the
    foreground of the category map only (background cells NaN: transparent).

    The widget shows one named channel at a time (picked in the dock), so the viewer gets no
    unlabelled channel slider; ``metadata`` lists every channel, says which one this is and
    gives the colour scale (``"scale"``: napari draws no colour bar, the dock shows it).
    """
    names = location_channels(net.encoding)
    if channel not in names:
        raise ValueError(f"channel {channel!r} is not one of {names} ({net.encoding})")
    data = locations_in_pixels(net, geom)[names.index(channel)]  # (gh, gw)
    data[np.asarray(net.class_probs).argmax(0) == 0] = np.nan  # background: transparent
    lo, hi = location_range(channel, geom)
    scale = (f"{channel} ({CHANNEL_MEANING.get(channel, channel)}): turbo colours, blue "
             f"{lo:g} px to red {hi:g} px; background transparent")
    return data, {
        "scale": geom.grid_scale, "colormap": LOCATION_COLORMAP,
        "contrast_limits": (lo, hi), "opacity": 0.8,
        "metadata": {"channels": names, "channel": channel, "scale": scale,
                     "meaning": {n: CHANNEL_MEANING.get(n, n) for n in names}},
    }


def clip_vectors(start: np.ndarray, end: np.ndarray,
                 geom: Geometry) -> tuple[np.ndarray, np.ndarray]:
    """Shorten arrows ``start -> end`` (``(N, 2)`` napari row, col) at the image's border.

    The image covers ``[-0.5, H - 0.5] x [-0.5, W - 0.5]`` in napari coordinates; a predicted
    center outside it (the networks are not bounded) is replaced by the point where the arrow
    leaves the image, on the same line. Returns the new ends ``(N, 2)`` and ``(N,)`` bool, True
    where an arrow was cut.
    """
    H, W = geom.image_size
    lo = np.array([-0.5, -0.5], np.float32)
    hi = np.array([H - 0.5, W - 0.5], np.float32)
    start = np.clip(np.asarray(start, np.float32).reshape(-1, 2), lo, hi)  # (N, 2)
    delta = np.asarray(end, np.float32).reshape(-1, 2) - start  # (N, 2)
    with np.errstate(divide="ignore", invalid="ignore"):
        room = np.where(delta > 0, (hi - start) / delta,
                        np.where(delta < 0, (lo - start) / delta, np.inf))  # (N, 2)
    t = np.minimum(1.0, room.min(axis=1)) if len(start) else np.ones(0, np.float32)  # (N,)
    return (start + t[:, None] * delta).astype(np.float32), t < 1.0


def grid_pixels(grid_hw: tuple[int, int], geom: Geometry) -> np.ndarray:
    """``(2, gh, gw)`` napari (row, col) of each grid cell's pixel in the viewer image."""
    gh, gw = grid_hw
    ry, rx = geom.grid_scale
    rows, cols = np.mgrid[0:gh, 0:gw].astype(np.float32)
    return np.stack([rows * ry, cols * rx])


def centers_in_pixels(centers_xy: np.ndarray, geom: Geometry) -> np.ndarray:
    """``(2, gh, gw)`` napari (row, col) of predicted centers given as normalised ``(x, y)``."""
    H, W = geom.image_size
    return np.stack([centers_xy[1] * H - 0.5, centers_xy[0] * W - 0.5]).astype(np.float32)


def prior_arrows(masks: np.ndarray, ids: np.ndarray, grid_hw: tuple[int, int], geom: Geometry,
                 step: int = 2) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Arrows of the objects the ImageNet prior named (they have no grid cells): from every
    ``step``-th grid pixel inside mask ``masks[n]`` to the center of its box.

    ``masks`` ``(N, H, W)`` bool at the viewer's size; ``ids`` ``(N,)`` their instance ids.
    Returns ``start (M, 2)``, ``end (M, 2)`` napari (row, col) and ``(M,)`` instance ids.
    """
    pix = grid_pixels(grid_hw, geom)[:, ::step, ::step].reshape(2, -1)  # (2, P)
    H, W = geom.image_size
    rows = np.clip(np.rint(pix[0]).astype(np.int64), 0, H - 1)
    cols = np.clip(np.rint(pix[1]).astype(np.int64), 0, W - 1)
    starts, ends, out_ids = [np.zeros((0, 2), np.float32)], [np.zeros((0, 2), np.float32)], []
    for mask, k in zip(masks, ids):
        ys, xs = np.nonzero(mask)
        if len(ys) == 0:
            continue
        inside = mask[rows, cols]  # (P,)
        center = np.array([(ys.min() + ys.max()) / 2, (xs.min() + xs.max()) / 2], np.float32)
        starts.append(pix[:, inside].T.astype(np.float32))
        ends.append(np.broadcast_to(center, (int(inside.sum()), 2)))
        out_ids.extend([int(k)] * int(inside.sum()))
    return (np.concatenate(starts), np.concatenate(ends).astype(np.float32),
            np.asarray(out_ids, np.int64))


def vectors_layer(centers_xy: np.ndarray, foreground: np.ndarray, assignment: np.ndarray,
                  geom: Geometry, step: int = 2,
                  prior: tuple[np.ndarray, np.ndarray] | None = None) -> LayerSpec:
    """'PFN velocity vectors': from every ``step``-th foreground grid cell to its predicted center.

    ``centers_xy`` ``(2, gh, gw)`` normalised (x, y) centers; ``foreground`` ``(gh, gw)`` bool;
    ``assignment`` ``(gh, gw)`` int instance id of each cell (0 none). Returns ``(N, 2, 2)``
    napari vectors ``[[row, col], [drow, dcol]]`` coloured like the instance layer (grey when
    a cell is in no instance). Arrows to a center outside the image stop at its border
    (:func:`clip_vectors`); the ``clipped`` feature marks them. ``prior``: ``(masks (M, H, W),
    ids (M,))`` of the objects the ImageNet prior named, whose arrows run from their pixels to
    their box's center (:func:`prior_arrows`; feature ``prior`` True).
    """
    gh, gw = foreground.shape
    sel = np.zeros((gh, gw), bool)
    sel[::step, ::step] = True
    sel &= foreground
    start = grid_pixels((gh, gw), geom)[:, sel].T  # (N, 2)
    end = centers_in_pixels(centers_xy, geom)[:, sel].T  # (N, 2)
    ids = np.asarray(assignment)[sel].astype(np.int64)  # (N,)
    n_cells = len(ids)
    n = int(assignment.max(initial=0))
    if prior is not None and len(prior[1]):
        p_start, p_end, p_ids = prior_arrows(prior[0], prior[1], (gh, gw), geom, step)
        start, end = np.concatenate([start, p_start]), np.concatenate([end, p_end])
        ids = np.concatenate([ids, p_ids])
        n = max(n, int(np.max(prior[1])))
    end, clipped = clip_vectors(start, end, geom)  # (N, 2), (N,)
    data = np.stack([start, end - start], axis=1).astype(np.float32)  # (N, 2, 2)
    cmap = instance_colormap(n)
    colors = np.array([cmap[int(k)] if k > 0 else cmap[None] for k in ids],
                      dtype=np.float32).reshape(-1, 4)
    from_prior = np.arange(len(ids)) >= n_cells
    return data, {"edge_color": colors if len(colors) else "yellow", "edge_width": 1.5,
                  "length": 1.0, "opacity": 0.9, "vector_style": "arrow",
                  "features": {"instance": ids, "clipped": clipped, "prior": from_prior},
                  "metadata": {"legend": VECTORS_LEGEND}}


#: What the arrows' colours mean (the vectors layer's metadata, the dock, the teaching text).
VECTORS_LEGEND = ("each arrow runs from a pixel to the instance center it predicts, in its "
                  "instance's colour; grey: a pixel in no instance (its cluster is under the "
                  "size threshold, or its vote is beyond sigma's reach); objects the ImageNet "
                  "step named get arrows from their pixels to their box's center")


def clusters_layer(assignment: np.ndarray, geom: Geometry) -> LayerSpec:
    """'PFN clusters (grid)': each grid cell's cluster id, before masks go to full resolution."""
    data = np.asarray(assignment, dtype=np.int32)
    return data, {"scale": geom.grid_scale, "colormap": instance_colormap(int(data.max(initial=0))),
                  "opacity": 0.7}


def instance_features(instances: Instances, class_names: tuple[str, ...]) -> dict[str, list]:
    """Row ``k`` describes instance id ``k`` (row 0: background)."""
    n = len(instances)
    return {"index": list(range(n + 1)),
            "class_id": [0, *[int(c) for c in instances.classes]],
            "class": ["background", *[class_names[int(c) - 1] if 0 < int(c) <= len(class_names)
                                       else str(int(c)) for c in instances.classes]],
            "score": [0.0, *[round(float(s), 4) for s in instances.scores]]}


def instances_layer(instances: Instances, class_names: tuple[str, ...]) -> LayerSpec:
    """'PFN instances': ``(H, W)`` int32 ids 1..N at the viewer image's resolution; every id a
    user may paint beyond N has a colour too (:func:`instance_palette`)."""
    return instances.label_map(), {"features": instance_features(instances, class_names),
                                   "colormap": instance_palette(len(instances)), "opacity": 0.6}


def instances_from_labels(labels: np.ndarray, features: Any,
                          image_id: str | int = "") -> tuple[Instances, list[int]]:
    """Back from a (possibly hand-edited) instance Labels layer to :class:`Instances` and the
    label id of each instance (ids may have gaps after erasing).

    Every id present in ``labels`` becomes an instance; its class and score come from the
    features row with that ``index`` (ids painted by hand with no row take the class of the
    features' last row with a class, score 1.0 — a painted instance is a confident one).
    """
    import pandas as pd

    table = pd.DataFrame(features) if not isinstance(features, pd.DataFrame) else features
    by_id: dict[int, tuple[int, float]] = {}
    if len(table) and {"index", "class_id"} <= set(table.columns):
        for _, row in table.iterrows():
            by_id[int(row["index"])] = (int(row["class_id"]), float(row.get("score", 1.0)))
    labels = np.asarray(labels)
    ids = [int(i) for i in np.unique(labels) if i > 0]
    fallback = next((c for _, (c, _) in sorted(by_id.items(), reverse=True) if c > 0), 1)
    masks = np.stack([labels == i for i in ids]) if ids else np.zeros((0, *labels.shape), bool)
    classes = [by_id.get(i, (fallback, 1.0))[0] or fallback for i in ids]
    scores = [by_id.get(i, (fallback, 1.0))[1] if i in by_id else 1.0 for i in ids]
    return Instances(masks, np.asarray(classes, np.int64), np.asarray(scores, np.float32),
                     image_id), ids


def _table(features: Any):
    """``features`` (a dict of columns, a DataFrame or None) as a new DataFrame of plain columns."""
    import pandas as pd

    if features is None:
        return pd.DataFrame()
    return pd.DataFrame({k: list(v) for k, v in dict(features).items()})


def feature_classes(features: Any, class_names: tuple[str, ...]) -> tuple[str, ...]:
    """The class names an instance layer's features use: ``class_names`` (``class_id``
    1..C), then the classes a user typed that the model lacks (``class_id`` C+1, C+2, ...,
    named by the row's ``class``, as :func:`with_instance_class` numbers them)."""
    table, names = _table(features), list(class_names)
    extra: dict[int, str] = {}
    if {"class_id", "class"} <= set(table.columns):
        for cid, name in zip(table["class_id"], table["class"]):
            if int(cid) > len(class_names):
                extra.setdefault(int(cid), str(name))
    while len(names) + 1 in extra:
        names.append(extra[len(names) + 1])
    return tuple(names)


def _numbered(table: Any, class_names: tuple[str, ...]) -> Any:
    """``table`` with each instance row's ``class_id`` set from its ``class``: the model's
    classes 1..C, classes it lacks C+1, C+2, ... in the order of the ids that first use them."""
    extra: list[str] = []
    ids = []
    for label_id, name in zip(table["index"], table["class"]):
        if int(label_id) == 0:
            ids.append(0)
        elif name in class_names:
            ids.append(class_names.index(name) + 1)
        else:
            extra += [] if name in extra else [name]
            ids.append(len(class_names) + extra.index(name) + 1)
    table["class_id"] = ids
    return table


def with_instance_class(features: Any, label_id: int, name: str,
                        class_names: tuple[str, ...]) -> Any:
    """The features table of 'PFN instances' with instance ``label_id`` of class ``name`` (a
    class the model lacks too): its row's ``class`` and ``class_id`` change (a row is added,
    score 1.0, for an id painted by hand), so the layer's status line and the export name it."""
    import pandas as pd

    table = _table(features)
    for col, default in (("index", 0), ("class_id", 0), ("score", 1.0)):
        if col not in table.columns:
            table[col] = [default] * len(table)
    if "class" not in table.columns:
        names = ("background", *feature_classes(table, class_names))
        table["class"] = [names[int(c)] if 0 <= int(c) < len(names) else str(int(c))
                          for c in table["class_id"]]
    rows = table["index"].astype(int) == int(label_id)
    if rows.any():
        table.loc[rows, "class"] = str(name)
    else:
        row = {c: [None] for c in table.columns}
        row.update({"index": [int(label_id)], "class": [str(name)], "class_id": [0],
                    "score": [1.0]})
        table = pd.concat([table, pd.DataFrame(row)], ignore_index=True)
    return _numbered(table, tuple(class_names))


def with_painted_rows(labels: np.ndarray, features: Any, class_names: tuple[str, ...]) -> Any:
    """The features table of 'PFN instances' with a row for every id in ``labels`` ``(H, W)``
    that has none (painted by hand): the class of the last row with one (as
    :func:`instances_from_labels` reads such ids), score 1.0. None when every id has a row."""
    table = _table(features)
    if "index" not in table.columns:
        return None
    have = {int(i) for i in table["index"]}
    new = [int(i) for i in np.unique(np.asarray(labels)) if i > 0 and int(i) not in have]
    if not new:
        return None
    described = (table[table["class_id"].astype(int) > 0].sort_values("index")
                 if "class_id" in table.columns else table.iloc[:0])
    name = (str(described["class"].iloc[-1]) if len(described) and "class" in table.columns
            else class_names[0] if class_names else "1")  # as instance_classes names class 1
    for label_id in new:
        table = with_instance_class(table, label_id, name, class_names)
    return table

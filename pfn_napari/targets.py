"""Pure label-map -> training-target functions (numpy only).

Every encoding the paper ablates is a key of :data:`pfn_napari.config.ENCODING_CHANNELS`, whose
value is the order of the location channels:

==============  =======================================================================
encoding        channels (all normalised: x by the image width W, y by the height H)
==============  =======================================================================
``offsets2``    ``dx, dy``: instance box center minus the pixel's own position
``centers2``    ``cx, cy``: the instance's box center
``center_wh4``  ``cx, cy, w, h``: center, box width and height
``center_tl4``  ``cx, cy, lx, ly``: center and top-left corner
``box6``        ``cx, cy, lx, ly, rx, ry``: center, top-left, bottom-right (the paper's)
``box10``       ``box6`` + ``trx, try`` (top-right) + ``blx, bly`` (bottom-left)
==============  =======================================================================

Geometry (see :mod:`pfn_napari.structures`): pixel column ``j`` sits at ``(j + 0.5) / W``; an
instance's box is ``[xmin / W, (xmax + 1) / W] x [ymin / H, (ymax + 1) / H]`` over its visible
pixels, and its center is the box center. Boxes are always computed at full resolution, then
the targets are sampled at pixels ``8 i`` of the stride-8 grid (:func:`build_targets`), so a
target keeps its meaning at every resolution.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from .config import ENCODING_CHANNELS, VOID
from .structures import STRIDE, NetworkOutput, Sample, Targets, grid_sample_indices

#: The encodings, in the order of the paper's ablation table.
ENCODINGS: tuple[str, ...] = tuple(ENCODING_CHANNELS)

#: Encodings whose channels determine the whole box (not only the center).
BOX_ENCODINGS: tuple[str, ...] = ("center_wh4", "center_tl4", "box6", "box10")


def _check_encoding(encoding: str) -> tuple[str, ...]:
    try:
        return ENCODING_CHANNELS[encoding]
    except KeyError:
        raise ValueError(f"unknown location encoding {encoding!r}; "
                         f"choose one of {ENCODINGS}") from None


def _num_instances(instance_map: np.ndarray) -> int:
    """Largest instance id in the map, void (255) excluded."""
    ids = instance_map[instance_map != VOID]
    return int(ids.max()) if ids.size else 0


def instance_boxes(instance_map: np.ndarray, num_instances: int | None = None) -> np.ndarray:
    """Normalised boxes of instances ``1..K`` over their visible pixels.

    Args:
        instance_map: ``(H, W)`` int, 0 background, 1..K instance ids, 255 void.
        num_instances: K; by default the largest id present.

    Returns:
        ``(K, 4)`` float64 ``[x1, y1, x2, y2]`` with ``x1 = xmin / W``, ``x2 = (xmax + 1) / W``
        (rows likewise by H). Row ``k - 1`` is instance ``k``; an id with no visible pixel gets
        a row of NaN.
    """
    instance_map = np.asarray(instance_map)
    if instance_map.ndim != 2:
        raise ValueError(f"instance_map must be (H, W), got shape {instance_map.shape}")
    height, width = instance_map.shape
    k = _num_instances(instance_map) if num_instances is None else int(num_instances)
    boxes = np.full((k, 4), np.nan, dtype=np.float64)
    if k == 0:
        return boxes
    labels = np.where(instance_map == VOID, 0, instance_map).astype(np.int64)  # (H, W)
    labels[labels > k] = 0
    for index, slices in enumerate(ndimage.find_objects(labels, max_label=k)):
        if slices is None:
            continue
        rows, cols = slices
        boxes[index] = (cols.start / width, rows.start / height,
                        cols.stop / width, rows.stop / height)
    return boxes


def pixel_positions(height: int, width: int, stride: int = 1,
                    image_size: tuple[int, int] | None = None) -> np.ndarray:
    """Normalised positions of the pixels under a (strided) grid.

    Args:
        height, width: size of the grid (``h, w``).
        stride: grid cell ``i`` sits on image pixel ``stride * i``.
        image_size: ``(H, W)`` of the full image the positions are normalised by; by default
            ``(height * stride, width * stride)``. For a stride-8 map of an image of ``(H, W)``
            pass ``stride=8, image_size=(H, W)``.

    Returns:
        ``(2, height, width)`` float64: channel 0 is x = ``(stride j + 0.5) / W``,
        channel 1 is y = ``(stride i + 0.5) / H``.
    """
    full_h, full_w = image_size if image_size is not None else (height * stride, width * stride)
    xs = (np.arange(width) * stride + 0.5) / full_w  # (w,)
    ys = (np.arange(height) * stride + 0.5) / full_h  # (h,)
    grid_x = np.broadcast_to(xs[None, :], (height, width))  # (h, w)
    grid_y = np.broadcast_to(ys[:, None], (height, width))  # (h, w)
    return np.stack([grid_x, grid_y])  # (2, h, w)


def grid_pixel_positions(image_size: tuple[int, int], stride: int = STRIDE) -> np.ndarray:
    """``(2, h, w)`` normalised (x, y) of the image pixels under the stride-``stride`` grid
    (cell i on pixel ``stride * i``): what :func:`decode_locations` needs for ``offsets2`` on
    the network's grid."""
    height, width = image_size
    rows = grid_sample_indices(height, stride)
    cols = grid_sample_indices(width, stride)
    return pixel_positions(len(rows), len(cols), stride, (height, width))


def _channels_from_boxes(boxes: np.ndarray, encoding: str) -> np.ndarray:
    """``(K, 4)`` boxes -> ``(K, L)`` per-instance channel values (``offsets2`` gives the
    centers; the pixel position is subtracted by the caller)."""
    x1, y1, x2, y2 = boxes.T  # each (K,)
    cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
    values = {
        "dx": cx, "dy": cy, "cx": cx, "cy": cy, "w": x2 - x1, "h": y2 - y1,
        "lx": x1, "ly": y1, "rx": x2, "ry": y2, "trx": x2, "try": y1, "blx": x1, "bly": y2,
    }
    return np.stack([values[name] for name in ENCODING_CHANNELS[encoding]], axis=1)  # (K, L)


def encode_locations(instance_map: np.ndarray, encoding: str = "box6") -> np.ndarray:
    """Per-pixel instance-location targets at the map's own resolution.

    Args:
        instance_map: ``(H, W)`` int, 0 background, 1..K instance ids, 255 void.
        encoding: a key of ``config.ENCODING_CHANNELS``.

    Returns:
        ``(L, H, W)`` float32 in the encoding's channel order; each instance pixel holds its
        instance's values, background and void pixels hold 0. For ``offsets2`` the pixel's own
        position ``((j + 0.5) / W, (i + 0.5) / H)`` is subtracted from the center.
    """
    channels = _check_encoding(encoding)
    instance_map = np.asarray(instance_map)
    height, width = instance_map.shape
    k = _num_instances(instance_map)
    out = np.zeros((len(channels), height, width), dtype=np.float64)  # (L, H, W)
    if k == 0:
        return out.astype(np.float32)
    boxes = instance_boxes(instance_map, k)  # (K, 4)
    table = np.zeros((k + 1, len(channels)))  # (K + 1, L), row 0 = off instances
    table[1:] = np.nan_to_num(_channels_from_boxes(boxes, encoding))
    ids = np.where(instance_map == VOID, 0, instance_map).astype(np.int64)  # (H, W)
    on = ids > 0  # (H, W)
    out = np.moveaxis(table[ids], -1, 0)  # (L, H, W)
    if encoding == "offsets2":
        out = out - pixel_positions(height, width) * on[None]  # (2, H, W)
    return out.astype(np.float32)


def decode_locations(locations: np.ndarray, encoding: str = "box6",
                     pixel_xy: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Recover each pixel's instance center and, where the encoding holds it, its box.

    Args:
        locations: ``(L, h, w)`` in the encoding's channel order (targets or predictions).
        encoding: a key of ``config.ENCODING_CHANNELS``.
        pixel_xy: ``(2, h, w)`` normalised (x, y) of each location's pixel; only ``offsets2``
            needs it. By default it is derived from the array shape as if the map were at full
            resolution (``(j + 0.5) / w``); for a stride-8 map pass
            :func:`grid_pixel_positions` of the image size.

    Returns:
        dict of ``(h, w)`` float arrays: ``"cx", "cy"`` always; ``"x1", "y1", "x2", "y2"``
        for the box encodings (:data:`BOX_ENCODINGS`). ``box10`` averages its redundant
        corners (x1 from lx and blx, y1 from ly and try, and so on).
    """
    channels = _check_encoding(encoding)
    locations = np.asarray(locations, dtype=np.float64)
    if locations.ndim != 3 or locations.shape[0] != len(channels):
        raise ValueError(f"{encoding} locations must be ({len(channels)}, h, w), "
                         f"got shape {locations.shape}")
    c = dict(zip(channels, locations))  # name -> (h, w)
    if encoding == "offsets2":
        if pixel_xy is None:
            pixel_xy = pixel_positions(*locations.shape[1:])
        return {"cx": c["dx"] + pixel_xy[0], "cy": c["dy"] + pixel_xy[1]}
    out = {"cx": c["cx"], "cy": c["cy"]}
    if encoding == "center_wh4":
        out.update(x1=c["cx"] - c["w"] / 2, y1=c["cy"] - c["h"] / 2,
                   x2=c["cx"] + c["w"] / 2, y2=c["cy"] + c["h"] / 2)
    elif encoding == "center_tl4":
        out.update(x1=c["lx"], y1=c["ly"], x2=2 * c["cx"] - c["lx"], y2=2 * c["cy"] - c["ly"])
    elif encoding == "box6":
        out.update(x1=c["lx"], y1=c["ly"], x2=c["rx"], y2=c["ry"])
    elif encoding == "box10":
        out.update(x1=(c["lx"] + c["blx"]) / 2, y1=(c["ly"] + c["try"]) / 2,
                   x2=(c["rx"] + c["trx"]) / 2, y2=(c["ry"] + c["bly"]) / 2)
    return out


def location_weights(class_map: np.ndarray, instance_map: np.ndarray | None = None
                     ) -> np.ndarray:
    """Where the location loss counts.

    Args:
        class_map: ``(H, W)`` 0 background, 1..C, 255 void.
        instance_map: optional ``(H, W)`` instance ids; when given, foreground pixels that
            belong to no instance (id 0 or 255) get weight 0 too (they have no location target).

    Returns:
        ``(H, W)`` float32: 1 on foreground, 0 on background and void.
    """
    class_map = np.asarray(class_map)
    on = (class_map != 0) & (class_map != VOID)  # (H, W)
    if instance_map is not None:
        instance_map = np.asarray(instance_map)
        on &= (instance_map != 0) & (instance_map != VOID)
    return on.astype(np.float32)


def instance_counts(instance_classes: np.ndarray, num_classes: int,
                    weights: np.ndarray | None = None) -> np.ndarray:
    """``(C,)`` float32: how many instances of each class 1..C (``instance_classes`` holds
    classes 1..C; other values are an error); with ``weights`` ``(K,)`` each instance counts
    its weight instead of 1."""
    classes = np.asarray(instance_classes, dtype=np.int64).reshape(-1)
    if classes.size and (classes.min() < 1 or classes.max() > num_classes):
        raise ValueError(f"instance classes must be in 1..{num_classes}, got {classes.tolist()}")
    counts = np.bincount(classes - 1, weights=weights, minlength=num_classes)
    return counts.astype(np.float32)[:num_classes]


def visible_instance_ids(sample: Sample) -> np.ndarray:
    """``(K',)`` int64 the ids 1..K of ``sample`` with at least one visible pixel."""
    k = sample.num_instances
    ids = sample.instance_map[(sample.instance_map > 0) & (sample.instance_map <= k)]
    return np.unique(ids).astype(np.int64)


def count_targets(sample: Sample, num_classes: int) -> np.ndarray:
    """``(C,)`` float32 the count target of ``sample``: its visible instances of each class,
    each counting 1, or its ``instance_share`` (the part of it inside the crop) when recorded."""
    ids = visible_instance_ids(sample)  # (K',)
    classes = np.asarray(sample.instance_classes, dtype=np.int64)[ids - 1]
    weights = None
    if sample.instance_share is not None:
        weights = np.asarray(sample.instance_share, np.float64)[ids - 1]
    return instance_counts(classes, num_classes, weights)


def build_targets(sample: Sample, num_classes: int, encoding: str = "box6",
                  stride: int = STRIDE) -> Targets:
    """Everything one (cropped, augmented) sample is trained against, on the stride-8 grid.

    Locations are encoded at full resolution (boxes over the visible pixels), then all maps
    are sampled at pixels ``stride * i`` (``h = grid_size(H)``). Counts are the instances of
    each class with at least one visible pixel (:func:`count_targets`: each counts its
    ``instance_share`` when the sample records one).

    Returns:
        :class:`~pfn_napari.structures.Targets` with ``class_map`` ``(h, w)`` int64 (0..C, 255
        ignore), ``locations`` ``(L, h, w)`` float32, ``location_weight`` ``(h, w)`` float32,
        ``counts`` ``(C,)`` float32.
    """
    _check_encoding(encoding)
    height, width = sample.class_map.shape
    if sample.instance_map.shape != (height, width):
        raise ValueError(f"class map {sample.class_map.shape} and instance map "
                         f"{sample.instance_map.shape} differ in size")
    rows = grid_sample_indices(height, stride)  # (h,)
    cols = grid_sample_indices(width, stride)  # (w,)
    locations = encode_locations(sample.instance_map, encoding)  # (L, H, W)
    class_map = sample.class_map[np.ix_(rows, cols)].astype(np.int64)  # (h, w)
    instance_map = sample.instance_map[np.ix_(rows, cols)]  # (h, w)
    return Targets(
        class_map=class_map,
        locations=np.ascontiguousarray(locations[:, rows][:, :, cols]),  # (L, h, w)
        location_weight=location_weights(class_map, instance_map),  # (h, w)
        counts=count_targets(sample, num_classes),  # (C,)
    )


def predicted_centers(net: NetworkOutput, pixels: bool = False) -> np.ndarray:
    """``(2, gh, gw)`` float32 the instance center (x, y) each grid cell of ``net`` predicts:
    normalised (x / W, y / H), or with ``pixels`` in pixel-index units (pixel j's center is j,
    as matplotlib and napari draw them)."""
    h, w = net.image_size
    dec = decode_locations(net.locations, net.encoding, pixel_xy=grid_pixel_positions((h, w)))
    if pixels:
        return np.stack([dec["cx"] * w - 0.5, dec["cy"] * h - 0.5]).astype(np.float32)
    return np.stack([dec["cx"], dec["cy"]]).astype(np.float32)

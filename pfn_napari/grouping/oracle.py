"""Oracle network outputs: ground truth dressed as a :class:`NetworkOutput`.

Two upper bounds, both fed to :func:`~pfn_napari.grouping.group`:

* :func:`oracle_network_output`, "perfect networks": ground-truth classes, counts and
  locations. It measures the grouping alone (``SPEC.md``'s "What we measured" table): what each
  method loses with perfect inputs, at the network's stride 8 or finer, and how it degrades
  with noise on the locations.
* :func:`with_true_locations`, the paper's "PFN upperbound instloc": a network's own output
  (its category map and counts) with the ground-truth locations as the clustered features.
"""

from __future__ import annotations

import numpy as np

from dataclasses import replace

from ..config import VOID
from ..structures import STRIDE, NetworkOutput, Sample, grid_sample_indices
from ..targets import BOX_ENCODINGS, build_targets, decode_locations, encode_locations
from .geometry import infer_stride
from .votes import box_iou_matrix


def _one_hot(class_map: np.ndarray, num_classes: int) -> np.ndarray:
    """``(h, w)`` classes (255 void counts as background) -> ``(C+1, h, w)`` float32."""
    labels = np.where(class_map == VOID, 0, class_map).astype(np.int64)
    labels = np.where(labels > num_classes, 0, labels)
    out = np.zeros((num_classes + 1, *labels.shape), dtype=np.float32)
    np.put_along_axis(out, labels[None], 1.0, axis=0)
    return out


def oracle_network_output(sample: Sample, num_classes: int, encoding: str = "box6",
                          noise: float = 0.0, rng: np.random.Generator | int | None = None,
                          stride: int = STRIDE, counts: str | np.ndarray = "gt",
                          full_classes: bool = False) -> NetworkOutput:
    """A :class:`NetworkOutput` holding the ground truth of ``sample``.

    Args:
        sample: an annotated image.
        num_classes: C.
        encoding: location encoding (a key of ``config.ENCODING_CHANNELS``).
        noise: std of Gaussian noise added to every location channel, in normalised units
            (1.0 = the image's width for x channels, height for y channels).
        rng: generator (or seed) for the noise; default ``np.random.default_rng(0)``.
        stride: grid stride: 8 is the network's; 4 or 1 give finer "networks" for the ceiling
            study. Maps are sampled at pixels ``stride * i`` (:func:`targets.build_targets`).
        counts: ``"gt"`` for the number of visible instances of each class, or a ``(C,)``
            array.
        full_classes: also set ``full_class_probs`` to the one-hot full-resolution ground-truth
            classes (as a perfect CRF would); otherwise grouping upsamples the grid's one-hot
            probabilities, as for a network without CRF.

    Returns:
        ``class_probs`` ``(C+1, h, w)`` one-hot of the ground-truth classes on the grid (void
        as background), ``locations`` ``(L, h, w)`` from ``targets.encode_locations`` sampled
        on the grid (0 on background) plus noise, ``counts`` ``(C,)``, ``image_size (H, W)``.
    """
    targets = build_targets(sample, num_classes, encoding, stride)
    locations = targets.locations.astype(np.float32)  # (L, h, w)
    if noise > 0:
        gen = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng or 0)
        locations = locations + gen.normal(0.0, noise, locations.shape).astype(np.float32)
    if isinstance(counts, str):
        if counts != "gt":
            raise ValueError(f"counts={counts!r}: 'gt' or a ({num_classes},) array")
        count_vec = targets.counts.astype(np.float32)
    else:
        count_vec = np.asarray(counts, dtype=np.float32).reshape(-1)
        if len(count_vec) != num_classes:
            raise ValueError(f"counts: {len(count_vec)} values for {num_classes} classes")
    height, width = sample.class_map.shape
    return NetworkOutput(
        class_probs=_one_hot(targets.class_map, num_classes),  # (C+1, h, w)
        locations=locations,
        counts=count_vec,
        image_size=(int(height), int(width)),
        encoding=encoding,
        full_class_probs=_one_hot(sample.class_map, num_classes) if full_classes else None,
    )


def _resize_nearest(labels: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """``(H0, W0)`` label map -> ``(H, W)``, each pixel taking the label under its center."""
    (h0, w0), (h, w) = labels.shape, size
    rows = np.minimum(((np.arange(h) + 0.5) * h0 / h).astype(np.int64), h0 - 1)  # (H,)
    cols = np.minimum(((np.arange(w) + 0.5) * w0 / w).astype(np.int64), w0 - 1)  # (W,)
    return labels[np.ix_(rows, cols)]


def with_true_locations(net: NetworkOutput, instance_map: np.ndarray, noise: float = 0.0,
                        rng: np.random.Generator | int | None = None) -> NetworkOutput:
    """The paper's "PFN upperbound instloc": the networks' output with ground-truth locations.

    The category map (``class_probs``, ``full_class_probs``) and the counts stay the network's,
    so the clustering runs on the *predicted* segmentation; only the features it clusters
    become the ground truth's.

    Args:
        net: a network output (``locations`` ``(L, h, w)`` on a stride-s grid of
            ``net.image_size``, in ``net.encoding``).
        instance_map: ``(H0, W0)`` ground-truth instance ids of the image (0 background, 255
            void); resized (nearest) to ``net.image_size`` when the network saw a resized image.
        noise: std of Gaussian noise added to the ground-truth locations (normalised units).
        rng: generator (or seed) for the noise; default ``np.random.default_rng(0)``.

    Returns:
        A copy of ``net`` whose ``locations`` ``(L, h, w)`` are the ground truth's (boxes over
        the visible pixels, ``targets.encode_locations``, read at the cells' pixels) at every
        cell inside a ground-truth instance, and the network's own elsewhere (background and
        void cells have no true location).
    """
    locations = np.asarray(net.locations, dtype=np.float32)  # (L, h, w)
    ids = np.asarray(instance_map)
    if ids.shape != tuple(net.image_size):
        ids = _resize_nearest(ids, net.image_size)  # (H, W)
    stride = infer_stride(locations.shape[1:], net.image_size)
    rows = grid_sample_indices(ids.shape[0], stride)  # (h,)
    cols = grid_sample_indices(ids.shape[1], stride)  # (w,)
    truth = encode_locations(ids, net.encoding)[:, rows][:, :, cols]  # (L, h, w)
    if noise > 0:
        gen = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng or 0)
        truth = truth + gen.normal(0.0, noise, truth.shape).astype(np.float32)
    cell_ids = ids[np.ix_(rows, cols)]  # (h, w)
    inside = (cell_ids > 0) & (cell_ids != VOID)  # (h, w)
    return replace(net, locations=np.where(inside[None], truth, locations).astype(np.float32))


def _truth_and_cell_ids(net: NetworkOutput, instance_map: np.ndarray
                        ) -> tuple[NetworkOutput, np.ndarray]:
    """``net`` with the true location at every instance cell (:func:`with_true_locations`),
    and the instance id of each of its grid cells ``(h, w)`` (``instance_map`` resized nearest
    to the network's input first when the network saw a resized image)."""
    truth = with_true_locations(net, instance_map)
    stride = infer_stride(net.locations.shape[1:], net.image_size)
    full = np.asarray(instance_map)
    if full.shape != tuple(net.image_size):
        full = _resize_nearest(full, net.image_size)
    rows = grid_sample_indices(full.shape[0], stride)  # (h,)
    cols = grid_sample_indices(full.shape[1], stride)  # (w,)
    return truth, full[np.ix_(rows, cols)]


def own_box_share(net: NetworkOutput, instance_map: np.ndarray,
                  ids: np.ndarray | list[int]) -> dict[int, tuple[float, int]]:
    """How well the predicted locations separate instances: for each instance of ``ids``, the
    share of its grid cells whose predicted location is nearer (Euclidean, over the ``L``
    channels of ``net.encoding``) its own true location than that of any other of ``ids``.

    ``ids`` are the instances competing with each other (e.g. the people of one image);
    ``instance_map`` ``(H0, W0)`` is the image's ground truth (resized nearest when the network
    saw a resized image). 1.0 for every instance when the locations are the truth's; with
    locations that all point at one place, only the instance nearest it scores.

    Returns:
        ``{id: (share, cells)}`` for each id with at least one grid cell (``cells`` > 0).
    """
    truth, cell_ids = _truth_and_cell_ids(net, instance_map)
    present = [int(k) for k in ids if (cell_ids == k).any()]
    if not present:
        return {}
    boxes = np.stack([truth.locations[:, cell_ids == k][:, 0] for k in present])  # (P, L)
    out = {}
    for j, k in enumerate(present):
        pred = np.asarray(net.locations)[:, cell_ids == k].T  # (n, L)
        dist = ((pred[:, None, :] - boxes[None]) ** 2).sum(-1)  # (n, P)
        out[k] = (float(np.mean(dist.argmin(1) == j)), int(pred.shape[0]))
    return out


def box_agreement(net: NetworkOutput, instance_map: np.ndarray, ids: np.ndarray | list[int],
                  iou: float = 0.6) -> dict[int, tuple[float, float, float, int]]:
    """How much the cells of each instance agree on its box, and how large that box is.

    The vote grouping clusters the boxes the cells vote for (:mod:`.votes`); what it needs is
    that the cells of one object vote for one box, more than that the box be the true one.
    For each instance of ``ids`` with a grid cell: the share of pairs of its cells whose
    decoded boxes overlap by IoU > ``iou`` (the agreement of ``grouping.votes.iou``, every
    pair with itself included), and the mean width and height of its cells' boxes over its
    true box's (1.0: the true size). ``net.encoding`` must hold boxes
    (:data:`~pfn_napari.targets.BOX_ENCODINGS`); ``instance_map`` as in :func:`own_box_share`.

    Returns:
        ``{id: (agreement, width ratio, height ratio, cells)}``.
    """
    if net.encoding not in BOX_ENCODINGS:
        raise ValueError(f"box_agreement needs a box encoding {BOX_ENCODINGS}, "
                         f"not {net.encoding!r}")
    truth, cell_ids = _truth_and_cell_ids(net, instance_map)

    def corners(locations: np.ndarray) -> np.ndarray:  # (4, h, w) x1, y1, x2, y2
        box = decode_locations(locations, net.encoding)
        return np.stack([box[k] for k in ("x1", "y1", "x2", "y2")])

    pred, true = corners(net.locations), corners(truth.locations)
    out = {}
    for k in ids:
        cells = cell_ids == int(k)
        if not cells.any():
            continue
        boxes, box = pred[:, cells].T, true[:, cells][:, 0]  # (n, 4), (4,)
        size = np.clip(boxes[:, 2:] - boxes[:, :2], 0, None).mean(axis=0)  # (2,) w, h
        true_size = np.maximum(box[2:] - box[:2], 1e-9)
        ratio = size / true_size
        agree = float(np.mean(box_iou_matrix(boxes) > iou))
        out[int(k)] = (agree, float(ratio[0]), float(ratio[1]), int(cells.sum()))
    return out

"""Grid results -> full resolution: step 3 of :meth:`~pfn_napari.grouping.Grouper.run`.

One job: lift what the grouping found on the stride-``s`` grid to the image's pixels. A
:class:`FullResolution` holds, for one :class:`~pfn_napari.structures.NetworkOutput`, the
full-resolution class probabilities (``full_class_probs``, or the grid's upsampled
bilinearly) and, per class, its pixels with their nearest class cell and their interpolated
box, each computed once and cached; :meth:`FullResolution.assign` gives every pixel of a class
one of its clusters:

* ``"cell"``: the cluster of the nearest class cell (exact Euclidean distance transform);
* ``"location"``: the cluster whose mean box is nearest to the pixel's own box, decoded from the
  class's locations interpolated bilinearly *among the class's cells only* (normalised
  convolution, so background cells' zeros do not leak in).

A cluster the size filter dropped takes no pixel; with a finite ``Clustering.reach``
(``vote``'s sigma) neither does a pixel whose box lies farther than it from its cluster's.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..structures import NetworkOutput
from ..targets import decode_locations
from .cache import cache_key, remember
from .geometry import nearest_cell_index, pixel_xy, upsample_bilinear
from .methods import ClassData, Clustering

def box_descriptors(locations: np.ndarray, encoding: str, xy: np.ndarray) -> np.ndarray:
    """``(n, L)`` locations of pixels at normalised ``xy`` ``(n, 2)`` -> ``(n, D)`` decoded
    boxes ``(cx, cy, x1, y1, x2, y2)``, or ``(cx, cy)`` for the center-only encodings."""
    dec = decode_locations(locations.T[:, :, None], encoding, pixel_xy=xy.T[:, :, None])
    names = ("cx", "cy", "x1", "y1", "x2", "y2") if "x1" in dec else ("cx", "cy")
    return np.stack([dec[name][:, 0] for name in names], axis=1)  # (n, D)


@dataclass
class ClassPixels:
    """One class's full-resolution pixels (``n_full`` of them, row-major order)."""

    py: np.ndarray  # (n_full,) row of each pixel
    px: np.ndarray  # (n_full,) column
    prob: np.ndarray  # (n_full,) the class's full-resolution probability there
    cell_mask: np.ndarray  # (h, w) bool the class's grid cells
    pixel_mask: np.ndarray  # (H, W) bool the class's pixels
    nearest: np.ndarray | None = None  # (n_full,) index of the nearest class cell (lazy)
    boxes: np.ndarray | None = None  # (n_full, D) interpolated decoded box (lazy)

    def __len__(self) -> int:
        return int(len(self.py))


class FullResolution:
    """The full-resolution side of one network output, with caches (see the module docstring).

    Args:
        net: the networks' output.
        stride: its grid stride (``Grouper.stride``).
    """

    def __init__(self, net: NetworkOutput, stride: int) -> None:
        self.net = net
        self.stride = stride
        self.image_size = (int(net.image_size[0]), int(net.image_size[1]))
        self.grid_shape = np.shape(net.class_probs)[1:]
        self._probs: np.ndarray | None = None
        self._class_map: np.ndarray | None = None
        self._pixels: dict[str, ClassPixels] = {}

    @property
    def probs(self) -> np.ndarray:
        """``(C+1, H, W)`` float32: ``full_class_probs``, or bilinearly upsampled
        ``class_probs``."""
        if self._probs is None:
            if self.net.full_class_probs is not None:
                self._probs = np.asarray(self.net.full_class_probs, dtype=np.float32)
            else:
                self._probs = upsample_bilinear(self.net.class_probs, self.image_size,
                                                self.stride)
        return self._probs

    @property
    def class_map(self) -> np.ndarray:
        """``(H, W)`` uint8 unrefined full-resolution class map."""
        if self._class_map is None:
            self._class_map = self.probs.argmax(0).astype(np.uint8)
        return self._class_map

    def pixels(self, cls: int, cell_mask: np.ndarray, pixel_mask: np.ndarray) -> ClassPixels:
        """Cached :class:`ClassPixels` of class ``cls``: its pixels ``pixel_mask`` ``(H, W)``
        beside its cells ``cell_mask`` ``(h, w)``."""
        key = cache_key(np.array([cls]), cell_mask, pixel_mask)
        found = self._pixels.get(key)
        if found is None:
            py, px = np.nonzero(pixel_mask)
            found = remember(self._pixels, key, ClassPixels(
                py, px, self.probs[cls, py, px], cell_mask, pixel_mask))
        return found

    def nearest(self, data: ClassData, pixels: ClassPixels) -> np.ndarray:
        """``(n_full,)`` index into ``data``'s cells of each pixel's nearest class cell."""
        if pixels.nearest is None:
            flat = nearest_cell_index(pixels.cell_mask, pixels.pixel_mask, self.stride)
            h, w = self.grid_shape
            lookup = np.full(h * w, -1, dtype=np.int64)
            lookup[data.rows * w + data.cols] = np.arange(len(data))
            pixels.nearest = lookup[flat]
        return pixels.nearest

    def pixel_boxes(self, data: ClassData, pixels: ClassPixels) -> np.ndarray:
        """``(n_full, D)`` decoded boxes of the class's pixels, from locations interpolated
        bilinearly among the class's own cells (normalised convolution); pixels with no class
        cell among their 4 grid neighbours take the nearest cell's location."""
        if pixels.boxes is not None:
            return pixels.boxes
        h, w = self.grid_shape
        s = self.stride
        py, px = pixels.py, pixels.px
        gy, gx = np.minimum(py / s, h - 1), np.minimum(px / s, w - 1)
        y0, x0 = np.floor(gy).astype(np.int64), np.floor(gx).astype(np.int64)
        y1, x1 = np.minimum(y0 + 1, h - 1), np.minimum(x0 + 1, w - 1)
        fy, fx = gy - y0, gx - x0
        mask = pixels.cell_mask
        locs = np.asarray(self.net.locations, dtype=np.float64)  # (L, h, w)
        num = np.zeros((len(py), locs.shape[0]))
        den = np.zeros(len(py))
        for yy, xx, wt in ((y0, x0, (1 - fy) * (1 - fx)), (y0, x1, (1 - fy) * fx),
                           (y1, x0, fy * (1 - fx)), (y1, x1, fy * fx)):
            wt = wt * mask[yy, xx]
            num += wt[:, None] * locs[:, yy, xx].T
            den += wt
        ok = den > 1e-9
        out = np.empty_like(num)
        out[ok] = num[ok] / den[ok, None]
        if not ok.all():
            out[~ok] = data.locations[self.nearest(data, pixels)[~ok]]
        xy = pixel_xy(self.image_size, py, px)
        pixels.boxes = box_descriptors(out, self.net.encoding, xy)
        return pixels.boxes

    def assign(self, data: ClassData, pixels: ClassPixels, clustering: Clustering,
               mean_box: np.ndarray, keep: np.ndarray, assign: str
               ) -> tuple[np.ndarray, np.ndarray]:
        """``(member (n,) bool, pix_label (n_full,))``: the cells inside an instance and the
        cluster 0..m-1 of each pixel (-1: none). A cluster dropped by the size filter
        (``keep`` ``(m,)`` False) takes no pixel; with a finite ``clustering.reach`` neither
        does a cell whose vote, nor a pixel whose box, lies farther than it (squared) from its
        cluster's mean box ``mean_box`` ``(m, D)`` (a pixel assigned by ``"cell"`` follows its
        nearest cell)."""
        labels, reach = clustering.labels, clustering.reach
        member = np.ones(len(labels), dtype=bool)
        if np.isfinite(reach):
            member = ((data.descriptors - mean_box[labels]) ** 2).sum(1) <= reach  # (n,)
        if assign == "cell":
            near = self.nearest(data, pixels)  # (n_full,)
            pix_label = np.where(keep[labels[near]] & member[near], labels[near], -1)
            return member, pix_label
        pix_boxes = self.pixel_boxes(data, pixels)  # (n_full, D)
        d2 = ((pix_boxes[:, None, :] - mean_box[None]) ** 2).sum(-1)  # (n_full, m)
        pix_label = d2.argmin(1)
        within = d2[np.arange(len(pix_label)), pix_label] <= reach if np.isfinite(reach) \
            else True
        return member, np.where(keep[pix_label] & within, pix_label, -1)

"""Grid <-> full-resolution geometry for grouping (numpy / scipy only).

A map of ``(h, w)`` cells on a stride-``s`` grid has cell ``(i, j)`` on image pixel
``(s i, s j)`` (:mod:`pfn_napari.structures`). Full-resolution pixel ``(y, x)`` therefore sits at
the continuous grid position ``(y / s, x / s)``; bilinear upsampling interpolates there (the
same as ``F.interpolate(..., align_corners=True)`` of the padded grid, which is what
:func:`pfn_napari.inference.run_network` does for the class probabilities).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from ..structures import grid_size

#: Strides tried, in this order, when a NetworkOutput's grid stride is read from its shapes.
CANDIDATE_STRIDES: tuple[int, ...] = (8, 4, 2, 1, 16, 32)


def infer_stride(grid_shape: tuple[int, int], image_size: tuple[int, int]) -> int:
    """The stride ``s`` with ``grid_size(H, s) == h`` and ``grid_size(W, s) == w``.

    Tries 8, 4, 2, 1, 16, 32 first, then every other stride up to the image side, so the
    network's stride-8 output and the oracle's stride-1/4 variants are both recognised.

    Raises:
        ValueError: no stride maps ``image_size`` to ``grid_shape``.
    """
    h, w = (int(v) for v in grid_shape)
    big_h, big_w = (int(v) for v in image_size)
    others = (s for s in range(3, max(big_h, big_w) + 1) if s not in CANDIDATE_STRIDES)
    for s in (*CANDIDATE_STRIDES, *others):
        if grid_size(big_h, s) == h and grid_size(big_w, s) == w:
            return s
    raise ValueError(f"a {h}x{w} grid is no stride-s grid of a {big_h}x{big_w} image "
                     f"(expected grid_size(H, s) x grid_size(W, s))")


def interpolation_matrix(n_full: int, n_grid: int, stride: int) -> np.ndarray:
    """``(n_full, n_grid)`` float32 linear-interpolation weights along one axis.

    Row ``y`` holds the weights of pixel ``y`` at grid position ``y / stride`` (clamped to the
    last cell, so pixels beyond the last cell take its value).
    """
    pos = np.minimum(np.arange(n_full) / stride, n_grid - 1)  # (n_full,)
    lo = np.floor(pos).astype(np.int64)  # (n_full,)
    hi = np.minimum(lo + 1, n_grid - 1)
    frac = (pos - lo).astype(np.float32)
    mat = np.zeros((n_full, n_grid), dtype=np.float32)
    rows = np.arange(n_full)
    np.add.at(mat, (rows, lo), 1.0 - frac)
    np.add.at(mat, (rows, hi), frac)
    return mat


def upsample_bilinear(grid: np.ndarray, image_size: tuple[int, int], stride: int) -> np.ndarray:
    """Bilinear upsampling of ``(..., h, w)`` grid maps to ``(..., H, W)`` float32.

    Separable: ``R @ grid @ C^T`` with the :func:`interpolation_matrix` of each axis (two small
    matrix products per channel instead of a 4-neighbour gather per pixel).
    """
    grid = np.asarray(grid, dtype=np.float32)
    h, w = grid.shape[-2:]
    big_h, big_w = image_size
    if stride == 1 and (h, w) == (big_h, big_w):
        return grid.copy()
    rows = interpolation_matrix(big_h, h, stride)  # (H, h)
    cols = interpolation_matrix(big_w, w, stride)  # (W, w)
    return np.matmul(np.matmul(rows, grid), cols.T)  # (..., H, W)


def nearest_cell_index(cell_mask: np.ndarray, pixel_mask: np.ndarray, stride: int) -> np.ndarray:
    """For each full-resolution pixel of ``pixel_mask``, the flat grid index of the nearest cell
    of ``cell_mask`` (Euclidean distance in image pixels, cell ``(i, j)`` at ``(s i, s j)``).

    Args:
        cell_mask: ``(h, w)`` bool, the candidate cells (at least one True).
        pixel_mask: ``(H, W)`` bool, the pixels to assign.
        stride: grid stride ``s``.

    Returns:
        ``(n,)`` int64 flat indices into the ``(h, w)`` grid, one per True pixel of
        ``pixel_mask`` in row-major order.
    """
    big_h, big_w = pixel_mask.shape
    h, w = cell_mask.shape
    ci, cj = np.nonzero(cell_mask)
    py, px = np.nonzero(pixel_mask)
    if stride == 1 and (h, w) == (big_h, big_w):
        seeds = cell_mask
    else:
        seeds = np.zeros((big_h, big_w), dtype=bool)
        seeds[ci * stride, cj * stride] = True
    if seeds.all():
        iy, ix = py, px
    else:
        _, (near_y, near_x) = ndimage.distance_transform_edt(~seeds, return_indices=True)
        iy, ix = near_y[py, px], near_x[py, px]
    return (iy // stride) * w + (ix // stride)


def pixel_xy(image_size: tuple[int, int], rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """``(n, 2)`` normalised (x, y) = ``((col + 0.5) / W, (row + 0.5) / H)`` of image pixels."""
    big_h, big_w = image_size
    return np.stack([(cols + 0.5) / big_w, (rows + 0.5) / big_h], axis=1)

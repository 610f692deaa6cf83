"""Pictures a person would rather look at than read: overlays, the paper's Fig. 1 arrows,
precision/recall and loss curves. Matplotlib with the Agg backend: no screen needed."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from .output import atomic_write
from .structures import STRIDE, Instances, NetworkOutput
from .targets import predicted_centers


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def voc_palette(n: int = 256) -> np.ndarray:
    """The PASCAL VOC colour map, ``(n, 3)`` uint8 (class 0 black, 255 cream)."""
    pal = np.zeros((n, 3), dtype=np.uint8)
    for i in range(n):
        c, r, g, b = i, 0, 0, 0
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        pal[i] = (r, g, b)
    return pal


def instance_colors(n: int, seed: int = 3) -> np.ndarray:
    """``(n, 3)`` uint8 distinct, saturated colours (golden-ratio hues)."""
    import colorsys

    hues = (np.arange(n) * 0.618033988749895 + seed * 0.1) % 1.0
    return np.array([[round(255 * v) for v in colorsys.hsv_to_rgb(h, 0.85, 0.95)] for h in hues],
                    dtype=np.uint8).reshape(n, 3)


def overlay(image: np.ndarray, instances: Instances, alpha: float = 0.5) -> np.ndarray:
    """Blend each instance in its own colour over ``image`` (H, W, 3) uint8, with a contour."""
    from scipy import ndimage

    out = image.astype(np.float32).copy()
    colors = instance_colors(len(instances)).astype(np.float32)
    for mask, color in zip(instances.masks, colors):
        out[mask] = (1 - alpha) * out[mask] + alpha * color
        edge = mask & ~ndimage.binary_erosion(mask, iterations=1)
        out[edge] = color
    return out.clip(0, 255).astype(np.uint8)


def _label_point(mask: np.ndarray) -> tuple[float, float]:
    """A point inside the mask (the pixel farthest from its border), as (x, y)."""
    from scipy import ndimage

    dist = ndimage.distance_transform_edt(np.pad(mask, 1))[1:-1, 1:-1]
    y, x = np.unravel_index(int(np.argmax(dist)), mask.shape)
    return float(x), float(y)


def _atomic_savefig(fig, path: Path, dpi: int) -> None:
    try:
        atomic_write(path, lambda fh: fig.savefig(fh, format=path.suffix.lstrip(".") or "png",
                                                  dpi=dpi, bbox_inches="tight", pad_inches=0.05))
    finally:
        _pyplot().close(fig)


#: Overlays of larger images are drawn at this longest side (they are for looking at; the
#: label PNGs and predictions.json keep the full resolution).
OVERLAY_MAX_SIDE = 2048


def shrink_for_display(image: np.ndarray, instances: Instances, max_side: int = OVERLAY_MAX_SIDE
                       ) -> tuple[np.ndarray, Instances]:
    """``image`` (H, W, 3) and ``instances`` subsampled (nearest pixel) so that the longest
    side is at most ``max_side``; unchanged when already small enough."""
    h, w = image.shape[:2]
    if max(h, w) <= max_side:
        return image, instances
    scale = max_side / max(h, w)
    nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
    rows = ((np.arange(nh) + 0.5) * h / nh).astype(np.int64)  # (nh,) source row of each row
    cols = ((np.arange(nw) + 0.5) * w / nw).astype(np.int64)  # (nw,)
    masks = instances.masks[:, rows][:, :, cols]  # (K, nh, nw)
    return (image[rows][:, cols],
            Instances(masks, instances.classes, instances.scores, instances.image_id))


def save_overlay(path: str | Path, image: np.ndarray, instances: Instances,
                 class_names: Sequence[str], title: str | None = None, dpi: int = 100,
                 max_side: int = OVERLAY_MAX_SIDE) -> Path:
    """Write a PNG of the instances over the image, each labelled ``class score``; images with
    a side over ``max_side`` are drawn at that size (see :func:`shrink_for_display`)."""
    plt = _pyplot()
    image, instances = shrink_for_display(image, instances, max_side)
    h, w = image.shape[:2]
    fig = plt.figure(figsize=(w / dpi, h / dpi), dpi=dpi)
    ax = fig.add_axes((0, 0, 1, 1))
    ax.imshow(overlay(image, instances))
    colors = instance_colors(len(instances)) / 255.0
    for mask, c, s, color in zip(instances.masks, instances.classes, instances.scores, colors):
        if not mask.any():
            continue
        x, y = _label_point(mask)
        name = class_names[c - 1] if 0 < c <= len(class_names) else str(c)
        ax.text(x, y, f"{name} {s:.2f}", fontsize=max(6, min(11, w // 60)), color="white",
                ha="center", va="center", bbox=dict(facecolor=color, alpha=0.8, pad=1, lw=0))
    if title:
        ax.text(4, 4, title, fontsize=8, color="white", va="top",
                bbox=dict(facecolor="black", alpha=0.6, pad=2, lw=0))
    ax.set_axis_off()
    out = Path(path)
    _atomic_savefig(fig, out, dpi)
    plt.close(fig)
    return out


def grid_pixel_xy(grid_hw: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Pixel (x, y) under each stride-8 grid cell: ``(gh, gw)`` arrays."""
    gh, gw = grid_hw
    ys, xs = np.mgrid[0:gh, 0:gw].astype(np.float32) * STRIDE
    return xs, ys


def save_arrows(path: str | Path, image: np.ndarray, net: NetworkOutput,
                instances: Instances | None = None, step: int = 2, dpi: int = 100) -> Path:
    """The paper's Fig. 1 view: an arrow from each sampled foreground pixel to the instance
    center it predicts, coloured by the instance the pixel was grouped into."""
    plt = _pyplot()
    h, w = net.image_size
    centers = predicted_centers(net, pixels=True)  # (2, gh, gw)
    xs, ys = grid_pixel_xy(centers.shape[1:])
    fg = net.class_probs.argmax(0) > 0  # (gh, gw)
    sel = np.zeros_like(fg)
    sel[::step, ::step] = True
    sel &= fg
    if instances is not None and len(instances):
        lab = instances.label_map()[np.clip(ys, 0, h - 1).astype(int), np.clip(xs, 0, w - 1).astype(int)]
        colors = np.vstack([[180, 180, 180], instance_colors(len(instances))]) / 255.0
        col = colors[lab[sel]]
    else:
        col = "yellow"
    fig = plt.figure(figsize=(w / dpi, h / dpi), dpi=dpi)
    ax = fig.add_axes((0, 0, 1, 1))
    ax.imshow(image[:h, :w] if instances is None else overlay(image[:h, :w], instances, 0.3))
    ax.quiver(xs[sel], ys[sel], centers[0][sel] - xs[sel], centers[1][sel] - ys[sel], color=col,
              angles="xy", scale_units="xy", scale=1, width=0.003, headwidth=4)
    ax.set_xlim(0, w)
    ax.set_ylim(h, 0)
    ax.set_axis_off()
    out = Path(path)
    _atomic_savefig(fig, out, dpi)
    plt.close(fig)
    return out


def plot_pr_curves(curves: Mapping[str, tuple[np.ndarray, np.ndarray]], path: str | Path,
                   title: str = "precision / recall") -> Path:
    """One line per entry of ``curves``: name -> (recall, precision)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4.5), dpi=100)
    for name, (rec, prec) in curves.items():
        ax.plot(np.asarray(rec), np.asarray(prec), label=name, lw=1.2)
    ax.set_xlabel("recall")
    ax.set_ylabel("precision")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    ax.set_title(title)
    if curves:
        ax.legend(fontsize=7, ncol=2 if len(curves) > 8 else 1, loc="lower left")
    out = Path(path)
    _atomic_savefig(fig, out, 100)
    plt.close(fig)
    return out


def plot_loss_curves(logs: Mapping[str, str | Path], path: str | Path) -> Path:
    """Loss against step from training CSV logs (``name -> log.csv``), every ``loss*`` column."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
    for name, log in logs.items():
        with open(log, newline="") as fh:
            rows = list(csv.DictReader(fh))
        if not rows:
            continue
        steps = np.array([float(r["step"]) for r in rows])
        for key in rows[0]:
            if key.startswith("loss"):
                vals = np.array([float(r[key]) if r[key] not in ("", None) else np.nan for r in rows])
                if np.isfinite(vals).any():
                    ax.plot(steps, vals, label=f"{name}: {key}", lw=1)
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_yscale("log")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    out = Path(path)
    _atomic_savefig(fig, out, 100)
    plt.close(fig)
    return out


def save_label_png(path: str | Path, labels: np.ndarray, palette: bool = False) -> Path:
    """Write an id map as PNG: uint8 (palette VOC colours when ``palette``) or 16-bit when the
    ids exceed 255. Written atomically."""
    from PIL import Image

    out = Path(path)
    if labels.max(initial=0) > 255:
        img = Image.fromarray(labels.astype(np.uint16))
    else:
        img = Image.fromarray(labels.astype(np.uint8), mode="P" if palette else "L")
        if palette:
            img.putpalette(voc_palette().reshape(-1).tolist())
    return atomic_write(out, lambda fh: img.save(fh, format="PNG"))

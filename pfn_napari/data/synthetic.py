"""The embedded dataset: overlapping discs, squares and triangles on textured backgrounds.

``synthetic:N[@SEED][:SIZE]`` gives ``N`` images, generated on demand with numpy only (about a
millisecond each), identical for an identical spec and split. Each image is ``H x W`` with
``H, W`` drawn from 129..200 (or ``SIZE x SIZE`` when ``:SIZE`` is given) and holds 1-6
shapes of 3 classes (1 "disc", 2 "square", 3 "triangle") in random colours, rotations and
sizes, painted in order so later shapes occlude earlier ones. The instance map holds the
*visible* part of every shape; a placement is retried when it would leave an earlier shape
less than 40% (or fewer than 40 pixels) visible, so every instance stays recognisable.
There is no void.

Why hand-written: the tests and the demo need data that is always there, exact, tiny and
learnable by a light network on a CPU in minutes; no library ships such a generator.

Splits draw from disjoint seed streams: sample ``i`` of split ``s`` uses
``numpy.random.default_rng([SEED, stream(s), i])`` with stream 0 for "train", 1 for "val",
2 for "test" and a CRC32 of the name (>= 3) for any other split, so "val" never repeats "train".
"""

from __future__ import annotations

import zlib

import numpy as np

from ..errors import DatasetError
from ..structures import Sample
from .base import PFNDataset

SYNTHETIC_CLASSES: tuple[str, ...] = ("disc", "square", "triangle")
MIN_SIZE, MAX_SIZE = 129, 200
MAX_SHAPES = 6
MIN_VISIBLE_FRACTION = 0.4
MIN_VISIBLE_PIXELS = 40
_SPLIT_STREAMS = {"train": 0, "val": 1, "test": 2}


def split_stream(split: str) -> int:
    """Seed stream of a split: train 0, val 1, test 2, others a CRC32 of the name (>= 3)."""
    if split in _SPLIT_STREAMS:
        return _SPLIT_STREAMS[split]
    return 3 + zlib.crc32(split.encode()) % (2**31)


def _shape_mask(kind: int, cx: float, cy: float, r: float, angle: float,
                xx: np.ndarray, yy: np.ndarray) -> np.ndarray:
    """``(H, W)`` bool mask of a shape centred at pixel position (cx, cy) with radius ``r``."""
    dx, dy = xx - cx, yy - cy  # (H, W) each
    if kind == 1:  # disc
        return dx * dx + dy * dy <= r * r
    cos, sin = np.cos(angle), np.sin(angle)
    u, v = cos * dx + sin * dy, -sin * dx + cos * dy  # rotated coordinates
    if kind == 2:  # square of half side 0.85 r
        a = 0.85 * r
        return (np.abs(u) <= a) & (np.abs(v) <= a)
    # equilateral triangle of circumradius 1.15 r: inside the three edges' half-planes
    rr = 1.15 * r
    inside = np.ones_like(dx, dtype=bool)
    for k in range(3):
        t = angle + np.pi / 2 + 2 * np.pi * k / 3  # direction of an edge's inward normal
        inside &= np.cos(t) * dx + np.sin(t) * dy <= rr / 2  # edge at distance rr/2 from centre
    return inside


def _background(rng: np.random.Generator, h: int, w: int,
                yy: np.ndarray, xx: np.ndarray) -> np.ndarray:
    """``(H, W, 3)`` float: a two-colour gradient with low-frequency waves and pixel noise."""
    c0, c1 = rng.uniform(0, 255, size=(2, 3))
    theta = rng.uniform(0, 2 * np.pi)
    t = (np.cos(theta) * xx / w + np.sin(theta) * yy / h)  # (H, W)
    t = (t - t.min()) / max(np.ptp(t), 1e-6)
    img = c0 + (c1 - c0) * t[..., None]  # (H, W, 3)
    for _ in range(3):  # texture: plane waves of random frequency and orientation
        f, phi = rng.uniform(0.03, 0.25), rng.uniform(0, 2 * np.pi)
        d = rng.uniform(0, 2 * np.pi)
        wave = np.sin(f * (np.cos(d) * xx + np.sin(d) * yy) + phi)  # (H, W)
        img += rng.uniform(5, 25) * wave[..., None] * rng.uniform(0.5, 1.0, size=3)
    return img


def make_synthetic_sample(seed: int, stream: int, index: int, size: int | None = None) -> Sample:
    """Sample ``index`` of the seed stream ``(seed, stream)``; pure function of its arguments."""
    rng = np.random.default_rng([seed, stream, index])
    if size is None:
        h, w = (int(v) for v in rng.integers(MIN_SIZE, MAX_SIZE + 1, size=2))
    else:
        h = w = int(size)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32) + 0.5  # pixel centres, (H, W) each
    image = _background(rng, h, w, yy, xx)  # (H, W, 3) float
    instance_map = np.zeros((h, w), dtype=np.int32)
    classes: list[int] = []
    full_area: list[int] = []
    side = min(h, w)
    for _ in range(int(rng.integers(1, MAX_SHAPES + 1))):
        kind = int(rng.integers(1, len(SYNTHETIC_CLASSES) + 1))
        for _attempt in range(30):
            r = rng.uniform(0.08, 0.2) * side
            cx, cy = rng.uniform(0.1 * w, 0.9 * w), rng.uniform(0.1 * h, 0.9 * h)
            mask = _shape_mask(kind, cx, cy, r, rng.uniform(0, 2 * np.pi), xx, yy)
            area = int(mask.sum())
            if area < 2 * MIN_VISIBLE_PIXELS:
                continue
            trial = np.where(mask, len(classes) + 1, instance_map)
            visible = np.bincount(trial.ravel(), minlength=len(classes) + 2)[1:len(classes) + 1]
            if all(v >= max(MIN_VISIBLE_FRACTION * a, MIN_VISIBLE_PIXELS)
                   for v, a in zip(visible, full_area)):
                break
        else:
            continue  # no placement keeps the others visible: leave this shape out
        # a colour far enough from the background under the shape
        under = image[mask].mean(axis=0)
        colour = rng.uniform(0, 255, size=3)
        for _ in range(10):
            if np.linalg.norm(colour - under) > 90:
                break
            colour = rng.uniform(0, 255, size=3)
        # a soft shading gradient across the shape, (M,) for its M pixels
        shade = 1.0 + 0.15 * ((xx - cx) / (r + 1))[mask] * rng.uniform(-1, 1)
        image[mask] = colour[None, :] * shade[:, None]
        instance_map = trial
        classes.append(kind)
        full_area.append(area)
    image += rng.normal(0.0, 6.0, size=image.shape)  # sensor noise
    instance_classes = np.asarray(classes, dtype=np.int64)
    lut = np.concatenate([[0], instance_classes]).astype(np.uint8)
    class_map = lut[instance_map]  # (H, W) uint8
    return Sample(image.round().clip(0, 255).astype(np.uint8), class_map, instance_map,
                  instance_classes, f"synthetic_{seed}_{stream}_{index:06d}",
                  f"synthetic seed {seed} stream {stream} image {index}")


def parse_synthetic_spec(rest: str) -> tuple[int, int, int | None]:
    """``"N[@SEED][:SIZE]"`` -> (N, SEED, SIZE or None)."""
    try:
        body, _, size_text = rest.partition(":")
        count_text, _, seed_text = body.partition("@")
        count = int(count_text)
        seed = int(seed_text) if seed_text else 0
        size = int(size_text) if size_text else None
    except ValueError:
        raise DatasetError(f"synthetic:{rest}: expected synthetic:N, synthetic:N@SEED or "
                           "synthetic:N@SEED:SIZE with whole numbers") from None
    if count < 1 or seed < 0 or (size is not None and not 33 <= size <= 4096):
        raise DatasetError(f"synthetic:{rest}: need N >= 1, SEED >= 0 and 33 <= SIZE <= 4096")
    return count, seed, size


class SyntheticDataset(PFNDataset):
    """``N`` synthetic images of one split (see the module docstring)."""

    def __init__(self, count: int, seed: int = 0, split: str = "train", size: int | None = None,
                 name: str | None = None) -> None:
        self.seed, self.stream, self.size = seed, split_stream(split), size
        ids = [f"synthetic_{seed}_{self.stream}_{i:06d}" for i in range(count)]
        super().__init__(name or f"synthetic:{count}@{seed}", SYNTHETIC_CLASSES, ids)

    def load(self, index: int) -> Sample:
        return make_synthetic_sample(self.seed, self.stream, index, self.size)

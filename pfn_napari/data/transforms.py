"""Joint transforms: image, class map and instance map change together, before targets.

Every transform maps a :class:`~pfn_napari.structures.Sample` to a new one (inputs are never
modified). Images are resized bilinearly (PIL), label maps by nearest neighbour on pixel centres;
padding puts the image's pad colour (default :data:`PAD_COLOUR`, about the ImageNet/DeepLab mean,
which the networks' own normalisation turns into ~0) at the bottom and right and marks the padded
label pixels void (255). Nothing is normalised here: networks take 0..255 RGB.

After any transform that can hide instances (resize, crop) the instance ids are renumbered
1..K over the instances still visible, in their old order, and ``instance_classes`` follows, so
boxes and counts built later (``targets.py``) describe only what is visible.

Randomness comes only from the ``numpy.random.Generator`` passed in, drawn in a fixed order
(scale, crop offset, flip), so a seeded generator gives identical outputs.
"""

from __future__ import annotations

import dataclasses

import numpy as np
from PIL import Image

from ..config import VOID
from ..structures import Sample, padded_size
from .base import compact_instances, kept_instance_ids

#: RGB pad colour of images: the ImageNet mean (123.7, 116.3, 103.5) ~ DeepLab's (122.7, 116.7,
#: 104.0), rounded.
PAD_COLOUR: tuple[int, int, int] = (123, 116, 104)


def _renumber(sample: Sample, image: np.ndarray, class_map: np.ndarray,
              instance_map: np.ndarray) -> Sample:
    kept = kept_instance_ids(instance_map, sample.instance_classes)  # (K',) ids 1..K
    share = sample.instance_share
    if share is not None:  # (K,) -> (K',) following the kept ids
        share = np.asarray(share, np.float32)[kept - 1]
    instance_map, classes = compact_instances(instance_map, sample.instance_classes, kept)
    return Sample(image, class_map, instance_map, classes, sample.image_id, sample.source, share)


def crop_shares(instance_map: np.ndarray, num_instances: int, window: tuple[slice, slice]
                ) -> np.ndarray:
    """``(K,)`` float32: the share of each instance's pixels that lies inside ``window`` (ids
    1..K of ``instance_map``; 0 for an id with no pixel)."""
    ids = np.asarray(instance_map).clip(0, VOID)
    whole = np.bincount(ids.ravel(), minlength=VOID + 1)[1:num_instances + 1]  # (K,)
    inside = np.bincount(ids[window].ravel(), minlength=VOID + 1)[1:num_instances + 1]  # (K,)
    return (inside / np.maximum(whole, 1)).astype(np.float32)


def _nearest_indices(n_out: int, n_in: int) -> np.ndarray:
    """Source index of each output pixel for a nearest resize on pixel centres."""
    return np.minimum(((np.arange(n_out) + 0.5) * n_in / n_out).astype(np.int64), n_in - 1)


def resize_sample(sample: Sample, size: float | tuple[int, int]) -> Sample:
    """Resize by a factor (``float``) or to ``(H, W)``.

    The image is resized bilinearly (PIL, antialiased when shrinking), the class and instance
    maps by nearest neighbour on pixel centres; instances that vanish are dropped (renumbered).
    A factor gives ``round(H * s) x round(W * s)`` (at least 1 x 1).
    """
    h, w = sample.class_map.shape
    if isinstance(size, tuple):
        new_h, new_w = int(size[0]), int(size[1])
    else:
        new_h, new_w = max(1, int(round(h * float(size)))), max(1, int(round(w * float(size))))
    if new_h < 1 or new_w < 1:
        raise ValueError(f"resize_sample: target size {new_h}x{new_w}")
    if (new_h, new_w) == (h, w):
        return sample
    image = np.asarray(Image.fromarray(sample.image).resize((new_w, new_h), Image.BILINEAR))
    rows, cols = _nearest_indices(new_h, h), _nearest_indices(new_w, w)
    class_map = sample.class_map[rows[:, None], cols[None, :]]  # (new_h, new_w)
    instance_map = sample.instance_map[rows[:, None], cols[None, :]]  # (new_h, new_w)
    return _renumber(sample, image, class_map, instance_map)


def pad_to(sample: Sample, height: int, width: int,
           pad_colour: tuple[int, int, int] = PAD_COLOUR) -> Sample:
    """Pad at the bottom and right to at least ``height x width`` (never crops).

    Image pixels added take ``pad_colour``; label pixels added are void (255).
    """
    h, w = sample.class_map.shape
    ph, pw = max(height - h, 0), max(width - w, 0)
    if ph == 0 and pw == 0:
        return sample
    image = np.empty((h + ph, w + pw, 3), dtype=np.uint8)
    image[...] = np.asarray(pad_colour, dtype=np.uint8)
    image[:h, :w] = sample.image
    class_map = np.full((h + ph, w + pw), VOID, dtype=np.uint8)
    class_map[:h, :w] = sample.class_map
    instance_map = np.full((h + ph, w + pw), VOID, dtype=np.int32)
    instance_map[:h, :w] = sample.instance_map
    return Sample(image, class_map, instance_map, sample.instance_classes.copy(),
                  sample.image_id, sample.source, sample.instance_share)


def crop(sample: Sample, top: int, left: int, height: int, width: int) -> Sample:
    """The window ``[top, top + height) x [left, left + width)`` (must lie inside the image);
    instances outside it are dropped and the rest renumbered."""
    h, w = sample.class_map.shape
    if top < 0 or left < 0 or top + height > h or left + width > w:
        raise ValueError(f"crop {height}x{width} at ({top}, {left}) outside a {h}x{w} image")
    window = (slice(top, top + height), slice(left, left + width))
    return _renumber(sample, sample.image[window].copy(), sample.class_map[window].copy(),
                     sample.instance_map[window].copy())


def hflip(sample: Sample) -> Sample:
    """Mirror left-right (ids and classes unchanged)."""
    return Sample(sample.image[:, ::-1].copy(), sample.class_map[:, ::-1].copy(),
                  sample.instance_map[:, ::-1].copy(), sample.instance_classes.copy(),
                  sample.image_id, sample.source, sample.instance_share)


class TrainTransform:
    """Random scale, pad-and-crop to a square ``crop_size``, random horizontal flip.

    Args:
        crop_size: side of the square crop; 8k+1 (321 in the paper) so the stride-8 grid
            lands on pixels 8i.
        scale_min, scale_max: the scale factor is uniform in [scale_min, scale_max].
        flip: mirror with probability 1/2.
        pad_colour: RGB of padded image pixels (labels are padded with void).
        count_share: record in ``instance_share`` the share of each instance's pixels (at the
            drawn scale) that the crop keeps, so its count target can be that share instead of
            1 (``data.count_targets='share'``, docs/training.md).

    Call: ``transform(sample, rng) -> Sample`` of shape ``(crop_size, crop_size)``.
    """

    def __init__(self, crop_size: int = 321, scale_min: float = 0.5, scale_max: float = 1.5,
                 flip: bool = True, pad_colour: tuple[int, int, int] = PAD_COLOUR,
                 count_share: bool = False) -> None:
        if crop_size < 1 or (crop_size - 1) % 8:
            raise ValueError(f"crop_size={crop_size}: must be 8k+1 (e.g. 321, 129)")
        if not 0 < scale_min <= scale_max:
            raise ValueError(f"scale range [{scale_min}, {scale_max}]: need 0 < min <= max")
        self.crop_size, self.scale_min, self.scale_max = crop_size, scale_min, scale_max
        self.flip, self.pad_colour, self.count_share = flip, pad_colour, count_share

    def __call__(self, sample: Sample, rng: np.random.Generator) -> Sample:
        scale = float(rng.uniform(self.scale_min, self.scale_max))
        sample = resize_sample(sample, scale)
        c = self.crop_size
        sample = pad_to(sample, c, c, self.pad_colour)
        h, w = sample.class_map.shape
        top = int(rng.integers(0, h - c + 1))
        left = int(rng.integers(0, w - c + 1))
        do_flip = bool(rng.random() < 0.5)
        if self.count_share:
            window = (slice(top, top + c), slice(left, left + c))
            shares = crop_shares(sample.instance_map, sample.num_instances, window)  # (K,)
            sample = dataclasses.replace(sample, instance_share=shares)
        sample = crop(sample, top, left, c, c)
        if self.flip and do_flip:
            sample = hflip(sample)
        return sample

    def __repr__(self) -> str:
        return (f"TrainTransform(crop_size={self.crop_size}, scale=[{self.scale_min}, "
                f"{self.scale_max}], flip={self.flip}, count_share={self.count_share})")


def copy_paste(target: Sample, source: Sample, rng: np.random.Generator,
               keep_prob: float = 0.5) -> Sample:
    """Simple Copy-Paste (Ghiasi et al., CVPR 2021): paste a random subset of ``source``'s
    instances onto ``target`` (both already augmented to the same size).

    Each source instance is kept with probability ``keep_prob`` (at least one is). Pasted pixels
    replace the target's image, class and instance labels; target instances hidden under them
    lose those pixels, and one hidden entirely is dropped. Source void and background pixels are
    not pasted. Ids are renumbered, so the boxes and counts built afterwards describe what is
    visible; an occluded instance keeps its ``instance_share`` (it still counts as in the crop).
    Draws from ``rng`` in a fixed order (the kept subset, then the fallback choice).
    """
    if source.class_map.shape != target.class_map.shape:
        raise ValueError(f"copy_paste: source {source.class_map.shape} and target "
                         f"{target.class_map.shape} differ in size")
    k_t, k_s = target.num_instances, source.num_instances
    if k_s == 0:
        return target
    keep = rng.random(k_s) < keep_prob  # (K_s,)
    if not keep.any():
        keep[int(rng.integers(k_s))] = True
    room = max(0, VOID - 1 - k_t)  # ids stay below the void label
    kept = np.flatnonzero(keep)[:room] + 1  # source ids 1..K_s
    if kept.size == 0:
        return target
    lut = np.zeros(max(VOID + 1, k_s + 1), dtype=np.int32)  # source id -> new id (0: not pasted)
    lut[kept] = k_t + np.arange(1, kept.size + 1)
    src_ids = np.where(source.instance_map == VOID, 0, source.instance_map)  # (H, W)
    new_ids = lut[src_ids]  # (H, W)
    pasted = new_ids > 0  # (H, W)
    image = np.where(pasted[..., None], source.image, target.image)
    class_map = np.where(pasted, source.class_map, target.class_map).astype(np.uint8)
    instance_map = np.where(pasted, new_ids, target.instance_map).astype(np.int32)
    classes = np.concatenate([target.instance_classes,
                              np.asarray(source.instance_classes, np.int64)[kept - 1]])
    share = None  # target's shares, then the pasted instances' (whole where not recorded)
    if target.instance_share is not None or source.instance_share is not None:
        share = np.concatenate([_shares(target), _shares(source)[kept - 1]])
    merged = Sample(image, class_map, instance_map, classes, target.image_id, target.source,
                    share)
    return _renumber(merged, image, class_map, instance_map)


def _shares(sample: Sample) -> np.ndarray:
    """``(K,)`` float32 ``instance_share``, or ones where it is not recorded."""
    if sample.instance_share is None:
        return np.ones(sample.num_instances, np.float32)
    return np.asarray(sample.instance_share, np.float32)


class EvalTransform:
    """Deterministic: optionally resize so the longer side is ``max_size``, then pad (bottom,
    right, void labels) to ``padded_size`` (8k+1) on each axis. ``rng`` is accepted and unused
    so it can stand where a :class:`TrainTransform` does."""

    def __init__(self, max_size: int | None = None,
                 pad_colour: tuple[int, int, int] = PAD_COLOUR) -> None:
        self.max_size, self.pad_colour = max_size, pad_colour

    def __call__(self, sample: Sample, rng: np.random.Generator | None = None) -> Sample:
        if self.max_size:
            h, w = sample.class_map.shape
            scale = self.max_size / max(h, w)
            if scale != 1.0:
                sample = resize_sample(sample, (max(1, round(h * scale)), max(1, round(w * scale))))
        h, w = sample.class_map.shape
        return pad_to(sample, padded_size(h), padded_size(w), self.pad_colour)

"""Oracle network outputs: ground truth dressed as a :class:`NetworkOutput`.

Feeding these to :func:`~pfn_napari.grouping.group` measures the grouping alone (the paper's
"upper bound" rows and ``SPEC.md``'s "What we measured" table): what each method loses with
perfect classes and locations, at the network's stride 8 or finer, and how it degrades with
noise on the locations.
"""

from __future__ import annotations

import numpy as np

from ..config import VOID
from ..structures import STRIDE, NetworkOutput, Sample
from ..targets import build_targets


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

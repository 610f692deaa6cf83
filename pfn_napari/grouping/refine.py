"""Refinement of the category map by the predicted instance numbers (paper section 3.4)."""

from __future__ import annotations

import numpy as np

from ..config import VOID


def present_classes(counts: np.ndarray, tau: float = 0.5) -> np.ndarray:
    """Classes ``c`` (1..C) whose predicted number ``g_c`` exceeds ``tau``, ascending ``(P,)``."""
    counts = np.asarray(counts, dtype=np.float64).reshape(-1)  # (C,)
    return np.nonzero(counts > tau)[0].astype(np.int64) + 1


def refine_class_map(class_map: np.ndarray, counts: np.ndarray, tau: float = 0.5) -> np.ndarray:
    """Make the class map agree with the instance numbers.

    Args:
        class_map: ``(h, w)`` int, 0 background, 1..C, 255 void (any resolution).
        counts: ``(C,)`` predicted instance numbers ``g``; class ``c`` is *present* when
            ``g[c - 1] > tau``.
        tau: the presence threshold (0.5 in the paper).

    Returns:
        A new ``(h, w)`` map of ``class_map``'s dtype:

        * two or more classes present: pixels of absent classes become background (0);
        * exactly one class present: every foreground pixel (1..C) takes that class;
        * no class present: unchanged (the paper is silent; we keep the segmentation).

        Background and void (255) pixels are never changed.
    """
    class_map = np.asarray(class_map)
    out = class_map.copy()
    present = present_classes(counts, tau)
    foreground = (class_map > 0) & (class_map != VOID)
    if len(present) >= 2:
        absent = foreground & ~np.isin(class_map, present)
        out[absent] = 0
    elif len(present) == 1:
        out[foreground] = present[0]
    return out

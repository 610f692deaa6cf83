"""Instance numbers read off the predicted boxes (beyond the paper; ``grouping.count_source``).

The paper takes the number of instances of a class from the count head. Every cell of a class
also votes for the box of its instance (the decoded location), so the number of *distinct*
boxes voted for is a second estimate that needs no training of its own: cells of one object
vote for nearly the same box, cells of two side-by-side objects for two boxes that barely
overlap. :func:`vote_count` counts them greedily, like non-maximum suppression run on the
votes with their support as the score:

1. ``A[i, j] = IoU(box_i, box_j) > iou``: which cells agree with which;
2. repeat: the cell that the most remaining cells agree with makes a cluster of those cells,
   which leave; stop when the largest such cluster holds fewer than ``min_frac`` of the cells
   (or 2): stray votes, not an object;
3. a cluster whose mean box overlaps an earlier cluster's mean box by IoU > ``merge_iou`` is
   the same object voted for twice (the front and the back of a large animal whose cells
   disagree on the far corner), not a new one.

:func:`combine_counts` turns the head's count and the votes into the ``k`` of the clustering.
Measured on the real val splits (docs/grouping.md) the votes count pedestrians better than the
shipped count head, which under-counts crowds. The head is the default of the paper's recipes;
``cpu-demo`` (the shipped weights' recipe) reads the ``'mean'``, which won on every held fold of
5-fold cross-validation for two of its models (docs/experiments/training.md). numpy +
pycocotools' box IoU; O(n^2) in the cells of a class, so at most ``max_voters`` cells vote (an
even subsample of a larger class).
"""

from __future__ import annotations

import numpy as np

#: ``grouping.count_source`` choices.
COUNT_SOURCES: tuple[str, ...] = ("head", "votes", "mean")
#: Cells of one class that vote at most (an even subsample of larger classes): 1,000 cells
#: make a 1M-entry agreement matrix (vote_count of 3,000 cells: about 15 ms here).
MAX_VOTERS = 1000


def box_ious(boxes: np.ndarray, others: np.ndarray) -> np.ndarray:
    """``(n, 4)`` and ``(m, 4)`` boxes ``(x1, y1, x2, y2)`` -> ``(n, m)`` IoU (0 for empty
    boxes), by pycocotools (C; 3x numpy broadcasting for 1,000 boxes)."""
    from pycocotools import mask as mask_utils

    def xywh(boxes: np.ndarray) -> np.ndarray:
        b = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
        return np.concatenate([b[:, :2], np.clip(b[:, 2:] - b[:, :2], 0, None)], axis=1)

    a, b = xywh(boxes), xywh(others)
    return np.asarray(mask_utils.iou(a, b, [0] * len(b)), dtype=np.float64).reshape(
        len(a), len(b))


def box_iou_matrix(boxes: np.ndarray) -> np.ndarray:
    """``(n, 4)`` boxes -> ``(n, n)`` pairwise IoU (:func:`box_ious` of the boxes with
    themselves)."""
    return box_ious(boxes, boxes)


def vote_count(boxes: np.ndarray, iou: float = 0.5, min_frac: float = 0.05,
               merge_iou: float = 0.3, max_voters: int = MAX_VOTERS) -> int:
    """The number of distinct boxes that the cells of one class vote for (module docstring).

    Args:
        boxes: ``(n, 4)`` the box ``(x1, y1, x2, y2)`` each cell votes for (any units).
        iou: two votes agree above this IoU.
        min_frac: a cluster needs at least this fraction of the (voting) cells, and 2 cells.
        merge_iou: a cluster whose mean box overlaps an earlier one's above this is not counted.
        max_voters: at most this many cells vote (every ``ceil(n / max_voters)``-th cell).

    Returns:
        At least 1 for ``n > 0`` cells; 0 for none.
    """
    boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
    if len(boxes) == 0:
        return 0
    boxes = boxes[::-(-len(boxes) // max_voters)]  # (n, 4), n <= max_voters
    n = len(boxes)
    agree = box_iou_matrix(boxes) > iou  # (n, n)
    left = np.ones(n, dtype=bool)
    support = agree.sum(axis=1)  # (n,) remaining cells agreeing with each cell
    means: list[np.ndarray] = []
    count = 0
    while left.any():
        members = agree[int(np.where(left, support, -1).argmax())] & left
        if members.sum() < max(2.0, min_frac * n):
            break
        support = support - agree[:, members].sum(axis=1)  # they leave: O(n m), not O(n^2)
        mean = boxes[members].mean(axis=0)
        if not means or box_iou_matrix(np.stack([mean, *means]))[0, 1:].max() <= merge_iou:
            count += 1
        means.append(mean)
        left &= ~members
    return max(count, 1)


def combine_counts(head: float, votes: int, source: str) -> int:
    """``k`` for the clustering: the head's count rounded (``'head'``, the paper), the votes
    (``'votes'``) or their mean rounded (``'mean'``); at least 1."""
    if source not in COUNT_SOURCES:
        raise ValueError(f"count source {source!r}: one of {COUNT_SOURCES}")
    value = {"head": head, "votes": float(votes), "mean": (head + votes) / 2}[source]
    return max(1, int(np.floor(value + 0.5)))

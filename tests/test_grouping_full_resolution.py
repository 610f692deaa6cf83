"""pfn_napari/grouping/full_resolution.py: grid clusters lifted to the image's pixels, on a
1 x 9 image whose two stride-8 cells (pixels 0 and 8) vote for the centers x = 0.1 and 0.9."""

from __future__ import annotations

import numpy as np
import pytest

from pfn_napari.grouping import Grouper
from pfn_napari.grouping.full_resolution import FullResolution
from pfn_napari.grouping.methods import Clustering
from pfn_napari.structures import NetworkOutput


def two_cells() -> NetworkOutput:
    probs = np.zeros((2, 1, 2), np.float32)
    probs[1] = 1.0  # (C+1, h, w): class 1 on both cells
    locations = np.array([[[0.1, 0.9]], [[0.5, 0.5]]], np.float32)  # (2, 1, 2) cx, cy
    return NetworkOutput(probs, locations, np.array([2.0], np.float32), (1, 9),
                         encoding="centers2")


def lifted():
    net = two_cells()
    full = FullResolution(net, stride=8)
    cells, pixels = np.ones((1, 2), bool), np.ones((1, 9), bool)
    data = Grouper(net).class_data(1, cells)
    return full, data, full.pixels(1, cells, pixels)


def test_probabilities_and_pixels_of_a_class() -> None:
    full, _, pixels = lifted()
    assert full.probs.shape == (2, 1, 9) and full.class_map.tolist() == [[1] * 9]
    assert pixels.px.tolist() == list(range(9)) and pixels.prob.tolist() == [1.0] * 9
    assert full.pixels(1, pixels.cell_mask, pixels.pixel_mask) is pixels  # cached


def test_nearest_cell_and_interpolated_box_of_each_pixel() -> None:
    full, data, pixels = lifted()
    near = full.nearest(data, pixels).tolist()
    assert near[:4] == [0] * 4 and near[5:] == [1] * 4  # pixel 4 is as near to either
    boxes = full.pixel_boxes(data, pixels)  # (9, 2): cx runs 0.1 -> 0.9 in steps of 0.1
    np.testing.assert_allclose(boxes[:, 0], 0.1 + 0.1 * np.arange(9), atol=1e-6)
    np.testing.assert_allclose(boxes[:, 1], 0.5, atol=1e-6)


@pytest.mark.parametrize("assign, keep, reach, expected", [
    ("cell", [True, True], np.inf, None),  # the nearest cell's cluster
    ("location", [True, True], np.inf, [0, 0, 0, 0, 0, 1, 1, 1, 1]),  # the tie goes to 0
    ("location", [True, False], np.inf, [0, 0, 0, 0, 0, -1, -1, -1, -1]),  # dropped: none
    ("location", [True, True], 0.05 ** 2, [0, -1, -1, -1, -1, -1, -1, -1, 1]),  # d > 0.05
])
def test_assign_gives_each_pixel_a_cluster_or_none(assign, keep, reach, expected) -> None:
    full, data, pixels = lifted()
    clustering = Clustering(np.array([0, 1]), np.ones(2), reach=reach)
    mean_box = data.descriptors.copy()  # (2, 2) each cluster is one cell
    member, labels = full.assign(data, pixels, clustering, mean_box, np.array(keep), assign)
    assert member.tolist() == [True, True]
    if expected is None:
        expected = full.nearest(data, pixels).tolist()
    assert labels.tolist() == expected

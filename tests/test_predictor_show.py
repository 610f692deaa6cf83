"""predictor.shown_only and hide_classes: the classes a model does not show leave every
output (instances, grid labels, class maps) in the one step all front ends go through."""

from __future__ import annotations

import numpy as np

from pfn_napari.grouping import GroupingResult
from pfn_napari.predictor import hide_classes, shown_only
from pfn_napari.structures import Instances


def hand_result() -> GroupingResult:
    """A 2 x 4 grid at stride 1: instances 1 (class 1, cells (0,0),(0,1)), 2 (class 2, cell
    (0,2)) and 3 (class 1, cell (1,0)); the ImageNet step named class 3 at (1,3)."""
    grid_labels = np.array([[1, 1, 2, 0], [3, 0, 0, 0]], np.int32)
    classes = np.array([1, 2, 1])
    masks = np.stack([grid_labels == k for k in (1, 2, 3)])
    class_map = np.array([[1, 1, 2, 0], [1, 0, 0, 3]], np.uint8)
    prior = np.array([[0, 0, 0, 0], [0, 0, 0, 3]], np.uint8)
    return GroupingResult(
        instances=Instances(masks, classes, [0.9, 0.8, 0.7], "img"),
        refined_class_map=class_map.copy(), full_class_map=class_map.copy(),
        grid_labels=grid_labels, centers=np.array([[0.5, 0], [2, 0], [0, 1]], np.float32),
        boxes=np.zeros((3, 4), np.float32), counts=np.array([2, 1, 0], np.float32),
        cluster_counts={1: 2, 2: 1}, stride=1, prior_labels=prior)


def test_shown_only_drops_other_classes_and_renumbers_the_rest():
    out = shown_only(hand_result(), (1,))
    assert out.instances.classes.tolist() == [1, 1]
    assert out.instances.scores.tolist() == [np.float32(0.9), np.float32(0.7)]
    np.testing.assert_array_equal(out.grid_labels, [[1, 1, 0, 0], [2, 0, 0, 0]])
    np.testing.assert_array_equal(out.full_class_map, [[1, 1, 0, 0], [1, 0, 0, 0]])
    np.testing.assert_array_equal(out.refined_class_map, out.full_class_map)
    np.testing.assert_array_equal(out.prior_labels, np.zeros((2, 4)))
    np.testing.assert_array_equal(out.centers, [[0.5, 0], [0, 1]])
    assert out.full_class_map.dtype == np.uint8 and out.grid_labels.dtype == np.int32
    assert out.instances.image_id == "img"
    assert out.cluster_counts == {1: 2}  # no count box for a class not shown
    assert out.counts.tolist() == [2, 1, 0]  # the network's counts stay


def test_every_class_shown_leaves_the_result_as_it_is():
    result = hand_result()
    assert shown_only(result, None) is result
    same = shown_only(result, (1, 2, 3))
    assert same.instances is result.instances
    np.testing.assert_array_equal(same.full_class_map, result.full_class_map)
    np.testing.assert_array_equal(same.grid_labels, result.grid_labels)


def test_hide_classes_sets_the_others_to_background():
    labels = np.array([[0, 1, 2], [3, 2, 1]], np.uint8)
    np.testing.assert_array_equal(hide_classes(labels, (2,)), [[0, 0, 2], [0, 2, 0]])
    assert hide_classes(labels, None) is labels

"""What ``grouping.sigma`` does in the ``vote`` method (pfn_napari/grouping/methods.py): how far
a vote may be from its cluster's mean box, ``exp(-d^2 / (D sigma^2)) >= 1/2``, before the cell
or pixel is left out of every instance. Hand-built votes with hand-computed answers."""

from __future__ import annotations

import math

import numpy as np
import pytest

from pfn_napari import config as config_module
from pfn_napari.config import GroupingConfig
from pfn_napari.grouping import (GROUPING_METHODS, Grouper, GroupingMethod,
                                 register_grouping_method)
from pfn_napari.grouping.methods import ClassData, vote, vote_reach
from pfn_napari.structures import NetworkOutput

#: The box every cell but one votes for: (cx, cy, x1, y1, x2, y2), image units (box6 order).
BOX = np.array([0.5, 0.5, 0.25, 0.25, 0.75, 0.75])


def class_data(descriptors: np.ndarray) -> ClassData:
    n = len(descriptors)
    return ClassData(cls=1, rows=np.zeros(n, np.int64), cols=np.arange(n), locations=descriptors,
                     descriptors=descriptors, t=descriptors, q=np.zeros((n, 2)))


def test_reach_is_where_the_similarity_falls_to_one_half():
    # D sigma^2 ln 2: the shipped sigma 0.5 reaches d = 1.02, farther than two boxes inside
    # the image usually are; 0.1 reaches 0.204
    assert vote_reach(0.5, 6) == pytest.approx(6 * 0.25 * math.log(2))
    assert math.sqrt(vote_reach(0.5, 6)) == pytest.approx(1.0197, abs=1e-4)
    assert math.sqrt(vote_reach(0.1, 6)) == pytest.approx(0.20394, abs=1e-5)
    d2 = vote_reach(0.07, 6)
    assert math.exp(-d2 / (6 * 0.07 ** 2)) == pytest.approx(0.5)


def test_vote_clusters_do_not_depend_on_sigma_but_its_reach_does():
    # four cells vote BOX, one BOX + 0.1 on every number: k = 1, mean BOX + 0.02;
    # the stray vote is d^2 = 6 * 0.08^2 = 0.0384 from it, the others 6 * 0.02^2 = 0.0024
    votes = np.vstack([np.tile(BOX, (4, 1)), BOX + 0.1])
    results = {s: vote(class_data(votes), 1, GroupingConfig(method="vote", sigma=s))
               for s in (0.5, 0.1, 0.05, 0.02)}
    for s, r in results.items():
        assert r.labels.tolist() == [0, 0, 0, 0, 0]
        assert r.reach == pytest.approx(6 * s ** 2 * math.log(2))
    d2 = ((votes - votes.mean(0)) ** 2).sum(1)
    inside = {s: (d2 <= r.reach).tolist() for s, r in results.items()}
    assert inside[0.5] == inside[0.1] == [True] * 5  # reach 1.04 and 0.0416 > 0.0384
    assert inside[0.05] == [True] * 4 + [False]  # reach 0.0104: the stray vote is out
    assert inside[0.02] == [False] * 5  # reach 0.00166 < 0.0024: every vote is out


def one_class_output(stray: float) -> NetworkOutput:
    """A 16 x 40 image of one class, every pixel; its 2 x 5 grid cells vote BOX, except cell
    (0, 0), which votes BOX + ``stray`` on every number."""
    locations = np.broadcast_to(BOX[:, None, None], (6, 2, 5)).astype(np.float32).copy()
    locations[:, 0, 0] += stray
    probs = np.zeros((2, 2, 5), np.float32)
    probs[1] = 1.0
    full = np.zeros((2, 16, 40), np.float32)
    full[1] = 1.0
    return NetworkOutput(probs, locations, np.array([1.0], np.float32), (16, 40),
                         full_class_probs=full)


@pytest.mark.parametrize("sigma, pixels, stray_cell_in", [
    (5.0, 640, True), (0.5, 640, True),  # the shipped sigma: every pixel, as before
    (0.1, 639, False),  # reach 0.0416: the stray cell and the pixel on it are out
    (0.05, 627, False),  # reach 0.0104: 13 pixels that mostly blend the stray vote
])
def test_smaller_sigma_leaves_out_the_pixels_whose_vote_strays(sigma, pixels, stray_cell_in):
    """The mean of the 10 votes is BOX + 0.01; a pixel interpolating the stray cell with
    weight w votes BOX + 0.1 w, at d^2 = 6 (0.1 w - 0.01)^2 from it. The weight is
    (1 - y/8)(1 - x/8) for y, x < 8: sigma 0.1 reaches w <= 0.933 (only pixel (0, 0), w = 1, is
    beyond), sigma 0.05 w <= 0.516, i.e. (8 - y)(8 - x) <= 33: 13 pixels beyond."""
    result = Grouper(one_class_output(0.1)).run(GroupingConfig(method="vote", sigma=sigma))
    assert len(result.instances) == 1
    mask = result.instances.masks[0]
    assert int(mask.sum()) == pixels
    assert bool(result.grid_labels[0, 0]) == stray_cell_in
    assert (result.grid_labels.ravel()[1:] == 1).all()  # the nine agreeing cells stay in
    if sigma == 0.05:
        y, x = np.mgrid[:16, :40]
        out = (y < 8) & (x < 8) & ((8 - y) * (8 - x) >= 34)
        np.testing.assert_array_equal(mask, ~out)


def test_a_sigma_below_every_vote_keeps_only_pixels_near_the_mean_box():
    # sigma 0.01: reach 0.000416, under even the agreeing votes' 6 * 0.01^2 = 0.0006: no cell
    # is in; a pixel is in when |0.1 w - 0.01| <= 0.00833, 0.0167 <= w <= 0.183: the 22 pixels
    # with 2 <= (8 - y)(8 - x) <= 11
    result = Grouper(one_class_output(0.1)).run(GroupingConfig(method="vote", sigma=0.01))
    assert not result.grid_labels.any()
    y, x = np.mgrid[:16, :40]
    ab = np.where((y < 8) & (x < 8), (8 - y) * (8 - x), 0)
    np.testing.assert_array_equal(result.instances.masks[0], (ab >= 2) & (ab <= 11))
    assert int(result.instances.masks[0].sum()) == 22


def test_pixels_assigned_by_cell_follow_their_cell():
    result = Grouper(one_class_output(0.1)).run(
        GroupingConfig(method="vote", sigma=0.1, assign="cell"))
    mask = result.instances.masks[0]
    assert not mask[0, 0] and mask[15, 39] and mask[0, 39]
    assert 0 < int((~mask).sum()) < 640 and result.grid_labels[0, 0] == 0


def test_other_methods_keep_every_pixel_and_each_method_says_what_sigma_does():
    for method in ("spectral", "knn-spectral", "kmeans"):
        result = Grouper(one_class_output(0.1)).run(GroupingConfig(method=method, sigma=0.05))
        assert int(result.instances.masks.sum()) == 640, method
    roles = {name: entry.sigma_role for name, entry in GROUPING_METHODS.items()}
    assert all(roles.values())
    assert "leaves out" in roles["vote"] and "splits more" in roles["spectral"]
    assert "sigma" in GROUPING_METHODS["vote"].cache_fields


# ------------------------------------------------------------------ what a re-clustering re-runs


def test_an_interactive_grouper_clusters_with_one_blas_thread(monkeypatch):
    """OpenBLAS's second thread turned 10-30 ms re-clusterings into 0.1-1.3 s on a busy 2-core
    machine; the napari widget's and the notebook's (eager) Grouper uses one."""
    from threadpoolctl import threadpool_info

    seen = []

    def spy(data, k, cfg):
        seen.append(max((i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"),
                        default=1))
        return vote(data, k, cfg)

    monkeypatch.setattr(config_module, "GROUPING_METHOD_NAMES",
                        list(config_module.GROUPING_METHOD_NAMES))
    monkeypatch.setitem(GROUPING_METHODS, "blas-spy", None)  # removed again after the test
    register_grouping_method("blas-spy", GroupingMethod(spy, ("sigma", "n_init", "seed"),
                                                        assign="location"))
    Grouper(one_class_output(0.1), eager=True).run(GroupingConfig(method="blas-spy"))
    assert seen == [1]

"""Tests of pfn_napari.grouping on tiny hand-built network outputs (and one real-data oracle
test, marked slow)."""

from __future__ import annotations

import time
from dataclasses import fields, replace

import numpy as np
import pytest

from pfn_napari.config import VOC_CLASSES, ConfigError, GroupingConfig
from pfn_napari.errors import PFNError
from pfn_napari.grouping import (GROUPING_METHODS, Grouper, box_agreement, group,
                                 oracle_network_output,
                                 own_box_share, refine_class_map, with_true_locations)
from pfn_napari.grouping.geometry import (infer_stride, nearest_cell_index, upsample_bilinear)
from pfn_napari.grouping.kmeans import kmeans_runs
from pfn_napari.grouping.spectral import (dense_affinity, normalise_by_max,
                                          select_by_similarity)
from pfn_napari.structures import NetworkOutput, Sample

METHODS = tuple(GROUPING_METHODS)


# ------------------------------------------------------------------ hand-built inputs

def make_sample(boxes: list[tuple[int, int, int, int, int]], size: tuple[int, int] = (40, 64)
                ) -> Sample:
    """Instances as ``(cls, y0, y1, x0, x1)`` half-open pixel boxes, ids 1..K in order."""
    class_map = np.zeros(size, np.uint8)
    instance_map = np.zeros(size, np.int32)
    for k, (cls, y0, y1, x0, x1) in enumerate(boxes, start=1):
        class_map[y0:y1, x0:x1] = cls
        instance_map[y0:y1, x0:x1] = k
    return Sample(np.zeros((*size, 3), np.uint8), class_map, instance_map,
                  np.array([b[0] for b in boxes], np.int64), "hand")


#: Two well-separated boxes of class 1 on a 40 x 64 image: A on cells rows 0-1 x cols 0-2,
#: B on cells rows 3-4 x cols 5-7 of the 5 x 8 stride-8 grid.
TWO_BOXES = [(1, 0, 16, 0, 24), (1, 24, 40, 40, 64)]


def two_box_output(**kwargs) -> tuple[Sample, NetworkOutput]:
    sample = make_sample(TWO_BOXES)
    kwargs.setdefault("full_classes", True)
    return sample, oracle_network_output(sample, num_classes=2, **kwargs)


# ------------------------------------------------------------------ refinement

def test_refine_two_present_classes_drop_absent_ones():
    cmap = np.array([[0, 1, 2], [3, 255, 1]], np.uint8)
    out = refine_class_map(cmap, np.array([2.0, 0.7, 0.2]), tau=0.5)
    np.testing.assert_array_equal(out, [[0, 1, 2], [0, 255, 1]])  # class 3 (g=0.2) -> bg


def test_refine_one_present_class_takes_every_foreground_pixel():
    cmap = np.array([[0, 1, 2], [3, 255, 0]], np.uint8)
    out = refine_class_map(cmap, np.array([0.1, 1.4, 0.3]), tau=0.5)
    np.testing.assert_array_equal(out, [[0, 2, 2], [2, 255, 0]])


def test_refine_no_present_class_leaves_the_map():
    cmap = np.array([[0, 1, 2], [3, 255, 0]], np.uint8)
    out = refine_class_map(cmap, np.array([0.1, 0.4, 0.5]), tau=0.5)  # 0.5 is not > 0.5
    np.testing.assert_array_equal(out, cmap)
    assert out is not cmap


def test_refine_off_keeps_an_absent_class():
    # class 2 is absent by the counts but present in the map: refine=False keeps it
    sample = make_sample([(1, 0, 16, 0, 24), (2, 24, 40, 40, 64)])
    net = oracle_network_output(sample, 2, counts=np.array([1.0, 0.0]), full_classes=True)
    on = Grouper(net).run(GroupingConfig(method="vote"))
    off = Grouper(net).run(GroupingConfig(method="vote", refine=False))
    assert on.instances.classes.tolist() == [1]  # 1 class present: class 2 becomes class 1
    assert sorted(off.instances.classes.tolist()) == [1, 2]
    assert (on.refined_class_map == 2).sum() == 0 and (off.refined_class_map == 2).sum() == 6


@pytest.mark.parametrize("method", ("spectral", "vote"))
def test_count_override_feeds_the_refinement(method):
    """The napari count boxes' documented effect: an override changes which classes the
    refinement keeps. Box A is class 1, box B class 2; the head says (1.0, 0.0)."""
    sample = make_sample([(1, 0, 16, 0, 24), (2, 24, 40, 40, 64)])
    net = oracle_network_output(sample, 2, counts=np.array([1.0, 0.0]), full_classes=True)
    grouper = Grouper(net)
    cfg = GroupingConfig(method=method)
    # as predicted: only class 1 is present, so box B's cells and pixels become class 1
    plain = grouper.run(cfg)
    assert plain.instances.classes.tolist() == [1]
    np.testing.assert_array_equal(plain.full_class_map, sample.class_map > 0)
    assert grouper.instance_numbers(cfg) == {1: 1}
    # overriding class 2 to 1 makes it present: both classes are kept, each one instance
    both = grouper.run(cfg, count_override={2: 1})
    assert both.instances.classes.tolist() == [1, 2]
    np.testing.assert_array_equal(both.full_class_map, sample.class_map)
    np.testing.assert_array_equal(both.instances.masks[1], sample.instance_map == 2)
    assert (both.refined_class_map == 2).sum() == 6  # box B's 2 x 3 cells
    np.testing.assert_array_equal(both.counts, [1.0, 1.0])
    assert grouper.instance_numbers(cfg, count_override={2: 1}) == {1: 1, 2: 1}
    # overriding class 1 to 0 with class 2 at 1: class 2 is the one present class
    swapped = grouper.run(cfg, count_override={1: 0, 2: 1})
    assert swapped.instances.classes.tolist() == [2]
    np.testing.assert_array_equal(swapped.full_class_map, 2 * (sample.class_map > 0))
    assert grouper.instance_numbers(cfg, count_override={1: 0, 2: 1}) == {2: 1}
    assert group(net, cfg, count_override={2: 1}).classes.tolist() == [1, 2]


# ------------------------------------------------------------------ geometry

def test_infer_stride():
    assert infer_stride((54, 80), (428, 640)) == 8
    assert infer_stride((107, 160), (428, 640)) == 4
    assert infer_stride((428, 640), (428, 640)) == 1
    with pytest.raises(ValueError):
        infer_stride((10, 10), (428, 640))


def test_upsample_bilinear_matches_align_corners_interpolation():
    torch = pytest.importorskip("torch")
    grid = np.random.default_rng(0).random((3, 4, 6)).astype(np.float32)  # (L, h, w)
    size = (8 * 3 + 1, 8 * 5 + 1)  # 8k+1: cell i on pixel 8i exactly
    ours = upsample_bilinear(grid, size, 8)
    ref = torch.nn.functional.interpolate(torch.from_numpy(grid)[None], size=size,
                                          mode="bilinear", align_corners=True)[0].numpy()
    np.testing.assert_allclose(ours, ref, atol=1e-5)
    # beyond the last cell (image not 8k+1) the last cell's value is kept
    wide = upsample_bilinear(grid, (27, 44), 8)
    np.testing.assert_allclose(wide[:, 26, 43], grid[:, 3, 5], atol=1e-6)


def test_nearest_cell_index_hand_computed():
    cells = np.array([[1, 0, 0], [0, 0, 1]], bool)  # cells (0,0) at px (0,0) and (1,2) at (4,8)
    pixels = np.zeros((6, 10), bool)
    pixels[0, 3] = pixels[5, 9] = pixels[2, 5] = True  # row-major: (0,3) (2,5) (5,9)
    idx = nearest_cell_index(cells, pixels, stride=4)
    # (0,3): d2 to (0,0) = 9, to (4,8) = 41 -> cell 0; (2,5): 29 vs 13 -> cell 5; (5,9) -> 5
    np.testing.assert_array_equal(idx, [0, 5, 5])


# ------------------------------------------------------------------ oracle

def test_oracle_output_hand_computed():
    sample, net = two_box_output(full_classes=False)
    assert net.class_probs.shape == (3, 5, 8) and net.locations.shape == (6, 5, 8)
    np.testing.assert_array_equal(net.counts, [2.0, 0.0])
    assert net.full_class_probs is None and net.image_size == (40, 64)
    # box A = [0, 24/64] x [0, 16/40]: (cx, cy, lx, ly, rx, ry)
    np.testing.assert_allclose(net.locations[:, 1, 2], [12 / 64, 8 / 40, 0, 0, 24 / 64, 16 / 40],
                               atol=1e-6)
    np.testing.assert_allclose(net.locations[:, 4, 7], [52 / 64, 32 / 40, 40 / 64, 24 / 40, 1, 1],
                               atol=1e-6)
    assert net.class_probs[1].sum() == 6 + 6 and net.class_probs[0, 2].all()
    noisy = oracle_network_output(sample, 2, noise=0.05, rng=3, stride=4)
    assert noisy.locations.shape == (6, 10, 16)
    # cell rows 4, 5 (pixel rows 16, 20) are background: pure noise
    assert 0.04 < np.std(noisy.locations[:, 4:6]) < 0.06
    full = oracle_network_output(sample, 2, stride=1, full_classes=True)
    assert full.class_probs.shape == (3, 40, 64) and full.full_class_probs.shape == (3, 40, 64)


def test_with_true_locations_keeps_the_predicted_map_and_counts():
    """The paper's 'upperbound instloc': a network that found box A only (and one background
    cell), with useless locations (all 0.3) and its own counts; the truth replaces the
    locations inside ground-truth instances and nowhere else."""
    sample = make_sample(TWO_BOXES)
    sample.instance_map[32, 48] = 255  # cell (4, 6) of box B is void
    probs = np.zeros((3, 5, 8), np.float32)
    probs[0] = 1.0
    probs[:, :2, :3] = np.array([0.0, 1.0, 0.0])[:, None, None]  # box A's cells: class 1
    probs[:, 2, 4] = [0.0, 1.0, 0.0]  # a false-positive cell on the background
    net = NetworkOutput(probs, np.full((6, 5, 8), 0.3, np.float32), np.array([1.0, 0.0]),
                        (40, 64))
    out = with_true_locations(net, sample.instance_map)
    assert out.class_probs is net.class_probs and out.counts is net.counts
    box_a = [12 / 64, 8 / 40, 0, 0, 24 / 64, 16 / 40]
    box_b = [52 / 64, 32 / 40, 40 / 64, 24 / 40, 1, 1]
    np.testing.assert_allclose(out.locations[:, 1, 2], box_a, atol=1e-6)
    np.testing.assert_allclose(out.locations[:, 4, 7], box_b, atol=1e-6)  # predicted background
    np.testing.assert_allclose(out.locations[:, 2, 4], 0.3)  # no true location: the network's
    np.testing.assert_allclose(out.locations[:, 4, 6], 0.3)  # void
    assert np.allclose(net.locations, 0.3)  # the input is not changed
    big = np.repeat(np.repeat(sample.instance_map, 2, axis=0), 2, axis=1)  # (80, 128)
    np.testing.assert_array_equal(with_true_locations(net, big).locations, out.locations)
    inst = group(out, GroupingConfig(method="vote"))
    assert inst.classes.tolist() == [1]  # one instance, on the predicted map, as counted
    noisy = with_true_locations(net, sample.instance_map, noise=0.05, rng=1)
    np.testing.assert_allclose(noisy.locations[:, 2, 4], 0.3)
    assert 0 < np.abs(noisy.locations[:, 1, 2] - box_a).max() < 0.25


def test_own_box_share_scores_separation():
    """The truth's locations separate both boxes (1.0 each, A with its 2 x 3 cells); locations
    that all point at box A leave B's cells nearer A (0.0); half of B's cells moved to B's
    box give 0.5; an id without a grid cell is left out."""
    sample, net = two_box_output(full_classes=False)
    shares = own_box_share(net, sample.instance_map, [1, 2, 7])
    assert shares == {1: (1.0, 6), 2: (1.0, 6)}
    box_a = net.locations[:, 1, 2].copy()  # (L,)
    flat = replace(net, locations=np.broadcast_to(box_a[:, None, None],
                                                  net.locations.shape).copy())
    assert own_box_share(flat, sample.instance_map, [1, 2]) == {1: (1.0, 6), 2: (0.0, 6)}
    half = flat.locations.copy()
    half[:, 3:5, 5] = net.locations[:, 4, 7][:, None]  # 2 of B's 6 cells...
    half[:, 3, 6] = net.locations[:, 4, 7]  # ...and a third: 3 of 6
    shares = own_box_share(replace(net, locations=half), sample.instance_map, [1, 2])
    assert shares[2] == (0.5, 6)


def test_box_agreement_scores_how_much_an_instances_cells_agree_and_their_box_size():
    """The truth: every pair of each box's 6 cells agrees, at the true size. Every cell of A
    voting for a box twice as wide (same center): they still agree, width ratio 2. Three of
    A's six cells voting for a box twice as wide: 18 of the 36 pairs (each with itself
    included) agree, the mean width is 1.5 times the true one."""
    sample, net = two_box_output(full_classes=False)
    assert box_agreement(net, sample.instance_map, [1, 2, 7]) == {
        1: (1.0, pytest.approx(1.0), pytest.approx(1.0), 6),
        2: (1.0, pytest.approx(1.0), pytest.approx(1.0), 6)}
    cx, lx, rx = net.locations[0], net.locations[2], net.locations[4]  # box6: cx, cy, lx, ...
    a_cells = np.isclose(net.locations, net.locations[:, 1, 2][:, None, None]).all(axis=0)
    assert a_cells.sum() == 6  # (h, w) A's cells: those of the box at cell (1, 2)
    wide = net.locations.copy()
    wide[2][a_cells] = cx[a_cells] - (cx[a_cells] - lx[a_cells]) * 2
    wide[4][a_cells] = cx[a_cells] + (rx[a_cells] - cx[a_cells]) * 2
    agree, width, height, cells = box_agreement(replace(net, locations=wide),
                                                sample.instance_map, [1])[1]
    assert (agree, cells) == (1.0, 6) and width == pytest.approx(2.0)
    assert height == pytest.approx(1.0)
    half = net.locations.copy()
    rows, cols = np.nonzero(a_cells)
    half[:, rows[:3], cols[:3]] = wide[:, rows[:3], cols[:3]]
    agree, width, _, _ = box_agreement(replace(net, locations=half), sample.instance_map, [1])[1]
    assert agree == pytest.approx(18 / 36) and width == pytest.approx(1.5)
    with pytest.raises(ValueError, match="box encoding"):
        box_agreement(replace(net, encoding="centers2", locations=net.locations[:2]),
                      sample.instance_map, [1])


# ------------------------------------------------------------------ grouping

@pytest.mark.parametrize("method", METHODS)
def test_two_separated_boxes_give_two_instances(method):
    sample, net = two_box_output()
    result = Grouper(net).run(GroupingConfig(method=method))
    inst = result.instances
    assert len(inst) == 2 and inst.classes.tolist() == [1, 1]
    np.testing.assert_array_equal(inst.masks[0], sample.instance_map == 1)
    np.testing.assert_array_equal(inst.masks[1], sample.instance_map == 2)
    np.testing.assert_allclose(inst.scores, 1.0)  # mean probability of one-hot classes
    expected = np.zeros((5, 8), np.int32)
    expected[0:2, 0:3] = 1
    expected[3:5, 5:8] = 2
    np.testing.assert_array_equal(result.grid_labels, expected)
    np.testing.assert_allclose(result.centers, [[12, 8], [52, 32]], atol=1e-4)  # pixels
    np.testing.assert_allclose(result.boxes[1], [40, 24, 64, 40], atol=1e-4)
    assert result.cluster_counts == {1: 2} and result.stride == 8


@pytest.mark.parametrize("method", ("spectral", "vote"))
def test_count_override_one_gives_one_instance(method):
    sample, net = two_box_output()
    inst = group(net, GroupingConfig(method=method), count_override={1: 1})
    assert len(inst) == 1
    np.testing.assert_array_equal(inst.masks[0], sample.class_map == 1)


def test_count_override_errors():
    _, net = two_box_output()
    with pytest.raises(PFNError, match="classes are 1..2"):
        group(net, GroupingConfig(method="vote"), count_override={3: 1})


def test_unknown_method_is_a_config_error():
    _, net = two_box_output()
    with pytest.raises(ConfigError, match="grouping.method='nope'"):
        group(net, GroupingConfig(method="nope"))


def test_grid_classes_upsampled_when_no_full_probs():
    sample, net = two_box_output(full_classes=False)
    inst = group(net, GroupingConfig(method="vote"))
    assert len(inst) == 2
    # box A covers cells at pixels 0, 8 (rows) and 0, 8, 16 (columns); the next cells (16, 24)
    # are background, so the bilinear class-1 probability is p(y) q(x) with p falling from 1 at
    # row 8 to 0 at row 16 and q from 1 at column 16 to 0 at column 24; class 1 wins where
    # p q > 0.5 (the ties at 0.5 go to background, class 0)
    p = np.clip(1 - (np.arange(40) - 8) / 8, 0, 1)
    q = np.clip(1 - (np.arange(64) - 16) / 8, 0, 1)
    expected = p[:, None] * q[None, :] > 0.5
    assert expected[:12, :20].sum() == 12 * 20 - 3 and not expected[12:].any()
    np.testing.assert_array_equal(inst.masks[0], expected)


def size_filter_output() -> tuple[Sample, NetworkOutput]:
    # a big box of 4 x 5 = 20 cells and a tiny instance on 1 cell, same class
    sample = make_sample([(1, 0, 32, 0, 40), (1, 32, 40, 56, 64)])
    return sample, oracle_network_output(sample, 1, full_classes=True)


@pytest.mark.parametrize("method", ("spectral", "vote"))
def test_size_filter_drops_a_tiny_cluster(method):
    sample, net = size_filter_output()
    cfg = GroupingConfig(method=method, sigma=0.1, min_size_frac=0.1)  # 1 cell < 0.1 x 21
    kept = Grouper(net).run(cfg)
    assert len(kept.instances) == 1
    np.testing.assert_array_equal(kept.instances.masks[0], sample.instance_map == 1)
    assert kept.grid_labels[4, 7] == 0  # the dropped cluster's cell is no instance
    unfiltered = Grouper(net).run(replace(cfg, size_filter=False))
    assert len(unfiltered.instances) == 2
    np.testing.assert_array_equal(unfiltered.instances.masks[1], sample.instance_map == 2)


def test_default_size_filter_keeps_the_tiny_cluster():
    _, net = size_filter_output()  # 1 of 21 cells is far above 0.1%
    assert len(group(net, GroupingConfig(method="vote"))) == 2


@pytest.mark.parametrize("method", METHODS)
def test_deterministic_with_seed(method):
    sample = make_sample([(1, 0, 24, 0, 24), (1, 0, 24, 32, 64), (1, 24, 40, 8, 56)])
    net = oracle_network_output(sample, 1, noise=0.08, rng=5, full_classes=True)
    cfg = GroupingConfig(method=method, seed=7)
    a = Grouper(net).run(cfg)
    b = Grouper(net).run(cfg)
    np.testing.assert_array_equal(a.grid_labels, b.grid_labels)
    np.testing.assert_array_equal(a.instances.masks, b.instances.masks)


def test_scoring_options():
    sample, net = two_box_output()
    probs = net.full_class_probs.copy()
    probs[1][sample.instance_map == 1] = 0.8  # still the argmax
    probs[1][sample.instance_map == 2] = 0.6
    probs[0][sample.class_map == 1] = 0.2
    net.full_class_probs = probs
    mean = group(net, GroupingConfig(method="vote"))
    np.testing.assert_allclose(mean.scores, [0.8, 0.6], atol=1e-6)
    ones = group(net, GroupingConfig(method="vote", scoring="ones"))
    np.testing.assert_allclose(ones.scores, [1.0, 1.0])
    sim = group(net, GroupingConfig(scoring="prob_x_similarity"))
    assert np.all(sim.scores < mean.scores) and np.all(sim.scores > 0)


def test_without_coordinates_the_affinity_drops_the_q_term():
    t = np.array([[0.0, 0, 0, 0, 0, 0], [0.3, 0, 0, 0, 0, 0]])
    q = np.array([[0.0, 0.0], [0.4, 0.0]])
    sigma = 0.5
    w = dense_affinity(t, q, sigma)
    expected = np.exp(-0.09 / (6 * 0.25)) + np.exp(-0.16 / (2 * 0.25))
    np.testing.assert_allclose(w, [[0, expected], [expected, 0]], rtol=1e-6)
    w_no = dense_affinity(t, None, sigma)
    np.testing.assert_allclose(w_no[0, 1], np.exp(-0.09 / 1.5), rtol=1e-6)


def test_use_coords_false_groups_by_location_alone():
    # two instances of one class with identical boxes far apart cannot be told apart by t:
    # without coordinates they become one cluster; with coordinates two
    sample = make_sample([(1, 0, 16, 0, 16), (1, 24, 40, 48, 64)])
    net = oracle_network_output(sample, 1, full_classes=True)
    net.locations[:, 3:5, 6:8] = net.locations[:, 0:2, 0:2]  # B votes for A's box
    with_q = Grouper(net).run(GroupingConfig(sigma=0.1))
    without = Grouper(net).run(GroupingConfig(sigma=0.1, use_coords=False))
    assert len(with_q.instances) == 2 and len(without.instances) == 1


def _three_components() -> tuple[np.ndarray, np.ndarray]:
    """Locations ``(20, 2)`` of three objects and their truth: A is 4 cells at (0, 0) and 4
    stray cells 0.15 around it (each linked to A's core only, by exp(-0.0225 / (2 0.05^2))
    = 0.011), B 4 cells at (1, 0), C 8 cells at (0, 1); with sigma 0.05 the objects are not
    linked at all (exp(-1 / 0.005) = 0 in float32)."""
    ring = 0.15 * np.array([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [0.0, -1.0]])
    t = np.concatenate([np.zeros((4, 2)), ring, np.tile([1.0, 0.0], (4, 1)),
                        np.tile([0.0, 1.0], (8, 1))])
    return t, np.repeat([0, 1, 2], [8, 4, 8])


def test_spectral_rows_are_normalised_to_unit_length(monkeypatch):
    """NJW's step 4: the embedding's rows are scaled to unit length before k-means. The
    eigenvectors of D^-1/2 W D^-1/2 on three unlinked objects are sqrt(degree) times their
    indicators (rotated): the stray cells of A (degree 4 x 0.011) have rows about
    sqrt(0.044 / 3.04) = 0.12 times as long as A's core (degree 3.04), and k-means on the raw
    rows puts them with another object; on the unit sphere each object is one point."""
    from pfn_napari.grouping import spectral

    t, truth = _three_components()
    w = dense_affinity(t, None, 0.05)
    vecs = spectral.njw_eigenvectors(w, 3 + 8)[1]
    norms = np.linalg.norm(vecs[:, :3], axis=1)
    assert norms[4:8].max() < 0.3 * norms[:4].min()  # the stray cells' rows are short
    seen = []

    def recording(x, k, **kwargs):
        seen.append(np.array(x))
        return kmeans_runs(x, k, **kwargs)

    monkeypatch.setattr(spectral, "kmeans_runs", recording)
    for seed in range(5):
        labels = spectral.spectral_partition(w, vecs, 3, n_init=20, seed=seed)
        relabel = {int(a): int(b) for a, b in zip(labels, truth)}
        assert len(relabel) == 3 and [relabel[int(a)] for a in labels] == truth.tolist()
    np.testing.assert_allclose(np.linalg.norm(seen[0], axis=1), 1.0, rtol=1e-6)
    np.testing.assert_array_equal(spectral.row_normalise(np.array([[3.0, 4.0], [0.0, 0.0]])),
                                  [[0.6, 0.8], [0.0, 0.0]])  # zero rows stay zero


def test_eigenvectors_fall_back_to_double_precision(monkeypatch):
    import scipy.linalg

    from pfn_napari.grouping import spectral

    real = scipy.linalg.eigh
    calls = []

    def flaky(a, *args, driver=None, **kwargs):
        calls.append((a.dtype, driver))
        if driver == "evr":
            raise np.linalg.LinAlgError("Internal Error.")
        return real(a, *args, driver=driver, **kwargs)

    rng = np.random.default_rng(0)
    w = dense_affinity(rng.random((30, 6)), rng.random((30, 2)), 0.05)
    expected_vals, expected_vecs = spectral.njw_eigenvectors(w, 3)
    monkeypatch.setattr(scipy.linalg, "eigh", flaky)
    vals, vecs = spectral.njw_eigenvectors(w, 3)
    assert calls == [(np.float32, "evr"), (np.float64, "evx")]
    np.testing.assert_allclose(vals, expected_vals, atol=1e-5)
    np.testing.assert_allclose(np.abs(vecs.T @ expected_vecs), np.eye(3), atol=1e-3)


def test_normalise_by_max_per_dimension():
    v = np.array([[0.2, -0.5, 0.0], [0.4, 0.25, 0.0]])
    np.testing.assert_allclose(normalise_by_max(v), [[0.5, -1.0, 0.0], [1.0, 0.5, 0.0]])


# ------------------------------------------------------------------ k-means and selection

def test_kmeans_runs_match_scikit_learn():
    from sklearn.cluster import KMeans

    rng = np.random.default_rng(0)
    x = np.concatenate([rng.normal(c, 0.3, (40, 2)) for c in ((0, 0), (3, 0), (0, 3), (3, 3))])
    runs = kmeans_runs(x, 4, n_init=20, seed=0)
    assert runs.labels.shape == (20, 160) and runs.centers.shape == (20, 4, 2)
    ref = KMeans(4, n_init=20, random_state=0).fit(x)
    assert runs.inertia.min() == pytest.approx(ref.inertia_, rel=1e-6)
    # the inertia reported is the labels' own
    s = int(np.argmin(runs.inertia))
    own = ((x - runs.centers[s][runs.labels[s]]) ** 2).sum()
    assert own == pytest.approx(runs.inertia[s], rel=1e-9)


def test_kmeans_plusplus_never_picks_a_chosen_point_again():
    # 5 copies each of 3 points: once a copy is a center, its copies are at distance 0 and
    # are never drawn while another point remains, so every seeding takes each point once
    from pfn_napari.grouping.kmeans import kmeans_plusplus

    x = np.repeat([[0.0, 0.0], [100.0, 0.0], [0.0, 200.0]], 5, axis=0)  # (15, 2)
    centers = kmeans_plusplus(x, 3, n_init=300, rng=np.random.default_rng(0))  # (300, 3, 2)
    chosen = np.sort(centers[..., 0] + centers[..., 1], axis=1)  # 0, 100, 200 identify them
    np.testing.assert_array_equal(chosen, np.tile([0.0, 100.0, 200.0], (300, 1)))


def test_kmeans_plusplus_draws_by_squared_distance():
    # points 0, 1, 3 on a line: after a first center at 0 the second is 1 with probability
    # 1 / (1 + 9) and 3 with 9 / 10 (uniform: 1/2 each; by distance: 1/4 and 3/4)
    from pfn_napari.grouping.kmeans import kmeans_plusplus

    x = np.array([[0.0], [1.0], [3.0]])
    centers = kmeans_plusplus(x, 2, n_init=6000, rng=np.random.default_rng(0))[..., 0]
    second = centers[centers[:, 0] == 0.0, 1]
    assert len(second) > 1500  # the first center is uniform: about 2,000 of 6,000
    assert np.mean(second == 3.0) == pytest.approx(0.9, abs=0.03)
    assert np.mean(second == 1.0) == pytest.approx(0.1, abs=0.03)


def test_kmeans_one_seeding_recovers_separated_blobs():
    # 4 blobs 10 apart, spread 0.05: k-means++ puts one seed in each blob (the chance of two
    # in one is below 1e-4 per seeding), so a single seeding finds the blobs every time
    rng = np.random.default_rng(3)
    corners = np.array([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0], [10.0, 10.0]])
    x = np.concatenate([c + rng.normal(0, 0.05, (25, 2)) for c in corners])
    truth = np.repeat(np.arange(4), 25)
    for seed in range(20):
        runs = kmeans_runs(x, 4, n_init=1, seed=seed)
        labels = runs.labels[0]
        assert len(set(zip(labels.tolist(), truth.tolist()))) == 4, f"seed {seed}"
        np.testing.assert_allclose(np.sort(runs.centers[0], axis=0), np.sort(
            np.stack([x[truth == j].mean(0) for j in range(4)]), axis=0), atol=1e-9)


def test_select_by_similarity_prefers_the_tight_partition():
    # points 0-1 similar, 2-3 similar, cross pairs dissimilar
    w = np.array([[0, .9, .1, .1], [.9, 0, .1, .1], [.1, .1, 0, .8], [.1, .1, .8, 0]], np.float32)
    labels = np.array([[0, 1, 0, 1], [1, 1, 0, 0], [0, 0, 1, 1]])
    best, scores = select_by_similarity(w, labels)
    assert best == 1  # same partition as row 2; ties go to the earliest seeding
    np.testing.assert_allclose(scores, [0.1, 0.85, 0.85], rtol=1e-6)


# ------------------------------------------------------------------ caches (napari)

def test_grouper_reuses_affinity_and_embedding_when_only_the_count_changes():
    sample = make_sample([(1, 0, 24, 0, 24), (1, 0, 24, 32, 64), (1, 24, 40, 8, 56)])
    net = oracle_network_output(sample, 1, noise=0.02, rng=1, full_classes=True)
    grouper = Grouper(net)
    cfg = GroupingConfig()
    first = grouper.run(cfg)
    assert len(first.instances) == 3
    (data,) = grouper._class_data.values()
    w_before = data.cache[("W", "dense", 0.5, True)]
    eig_before = data.cache[("eig", "dense", 0.5, True)]
    second = grouper.run(cfg, count_override={1: 2})
    assert len(second.instances) == 2
    assert data.cache[("W", "dense", 0.5, True)] is w_before
    assert data.cache[("eig", "dense", 0.5, True)] is eig_before
    grouper.run(replace(cfg, sigma=0.1))
    assert ("W", "dense", 0.5, True) not in data.cache  # only one sigma is kept
    assert ("W", "dense", 0.1, True) in data.cache


def test_eager_grouper_has_the_embedding_for_one_instance_classes():
    sample = make_sample([(1, 0, 24, 0, 24), (1, 0, 24, 32, 64)])
    net = oracle_network_output(sample, 1, counts=np.array([1.0]), full_classes=True)
    lazy, eager = Grouper(net), Grouper(net, eager=True)
    assert len(lazy.run(GroupingConfig()).instances) == 1
    assert len(eager.run(GroupingConfig()).instances) == 1
    (lazy_data,) = lazy._class_data.values()
    (eager_data,) = eager._class_data.values()
    key = ("eig", "dense", 0.5, True)
    assert key not in lazy_data.cache
    vecs = eager_data.cache[key]
    assert vecs.shape == (len(eager_data), 1 + 8)
    assert len(eager.run(GroupingConfig(sigma=0.5), count_override={1: 2}).instances) == 2
    assert eager_data.cache[key] is vecs


def _changed(value):
    """Another valid value of a GroupingConfig field."""
    if isinstance(value, bool):
        return not value
    if isinstance(value, int):
        return value + 1
    if isinstance(value, float):
        return value * 2
    raise TypeError(f"no other value known for {value!r}")


def _three_box_grouper() -> Grouper:
    sample = make_sample([(1, 0, 24, 0, 24), (1, 0, 24, 32, 64), (1, 24, 40, 8, 56)])
    return Grouper(oracle_network_output(sample, 1, noise=0.02, rng=1, full_classes=True))


@pytest.mark.parametrize("method", METHODS)
def test_every_declared_cache_field_recomputes_and_others_reuse(method, monkeypatch):
    entry = GROUPING_METHODS[method]
    assert entry.cache_fields and set(entry.cache_fields) <= {f.name for f in
                                                              fields(GroupingConfig)}
    calls = []

    def counting(data, k, cfg):
        calls.append(cfg)
        return entry.fn(data, k, cfg)

    monkeypatch.setitem(GROUPING_METHODS, method, replace(entry, fn=counting))
    grouper = _three_box_grouper()
    cfg = GroupingConfig(method=method)
    grouper.run(cfg)
    grouper.run(cfg)
    assert len(calls) == 1  # the same settings: the cached clustering
    for name in entry.cache_fields:
        calls.clear()
        grouper.run(replace(cfg, **{name: _changed(getattr(cfg, name))}))
        assert len(calls) == 1, f"{method}: a changed {name} served the cached clustering"
    calls.clear()
    # settings that only the Grouper reads (on the same class cells) reuse the clustering
    for change in ({"tau": 0.9}, {"size_filter": False}, {"min_size_frac": 0.01},
                   {"scoring": "ones"}, {"assign": "location"}):
        grouper.run(replace(cfg, **change))
    assert calls == []


class RecordingConfig:
    """A GroupingConfig that records the fields read from it."""

    def __init__(self, cfg: GroupingConfig) -> None:
        self._cfg = cfg
        self.read: set[str] = set()

    def __getattr__(self, name: str):
        self.read.add(name)
        return getattr(self._cfg, name)


@pytest.mark.parametrize("method", METHODS)
def test_a_method_reads_only_the_fields_it_declares(method):
    entry = GROUPING_METHODS[method]
    grouper = _three_box_grouper()
    data = grouper.class_data(1, grouper.grid_class == 1)
    read: set[str] = set()
    for use_coords in (True, False):
        for k in (1, 2, 3, 5):
            for eager in (False, True):
                fresh = replace(data, cache={"eager": eager})
                cfg = RecordingConfig(GroupingConfig(method=method, use_coords=use_coords))
                entry(fresh, k, cfg)
                read |= cfg.read
    undeclared = read - set(entry.cache_fields)
    assert not undeclared, f"{method} reads {sorted(undeclared)} but does not declare them"
    assert read == set(entry.cache_fields)  # and declares nothing it never reads


def test_widget_scale_recluster_is_fast():
    """A 375 x 500 image with three classes: after the first run, a count change re-runs
    k-means and the masks only (target < 0.2 s; asserted loosely on a shared CPU)."""
    rng = np.random.default_rng(0)
    boxes = []
    for k in range(7):
        y0, x0 = int(rng.integers(0, 300)), int(rng.integers(0, 420))
        height, width = int(rng.integers(40, 75)), int(rng.integers(40, 80))
        boxes.append((1 + k % 3, y0, y0 + height, x0, x0 + width))
    sample = make_sample(boxes, (375, 500))
    net = oracle_network_output(sample, 3, noise=0.01, rng=0)
    for method in ("spectral", "vote"):
        grouper = Grouper(net, eager=True)
        grouper.run(GroupingConfig(method=method))
        start = time.perf_counter()
        result = grouper.run(GroupingConfig(method=method), count_override={1: 1})
        elapsed = time.perf_counter() - start
        assert result.cluster_counts[1] == 1
        assert elapsed < 1.0, f"{method}: re-clustering took {elapsed:.2f} s"


# ------------------------------------------------------------------ real data

@pytest.mark.slow
@pytest.mark.realdata
def test_oracle_fast_grouping_reaches_95_ap(voc_coco_root):
    from pfn_napari.data import open_dataset
    from pfn_napari.evaluate import evaluate

    spec = f"voc:{voc_coco_root}"
    samples = list(open_dataset(spec, "train")) + list(open_dataset(spec, "val"))
    cfg = GroupingConfig(method="vote")
    preds = [group(oracle_network_output(s, 20, full_classes=True), cfg) for s in samples]
    metrics = evaluate(samples, preds, VOC_CLASSES)
    assert metrics.ap_r["0.5"] >= 95.0


def test_njw_eigenvectors_lanczos_path_equals_the_dense_solver():
    """Above ARPACK_MIN_CELLS the leading eigenpairs come from Lanczos: the same values and,
    up to sign, the same vectors as LAPACK's dense solver."""
    import scipy.linalg

    from pfn_napari.grouping.spectral import ARPACK_MIN_CELLS, njw_eigenvectors

    rng = np.random.default_rng(0)
    n = ARPACK_MIN_CELLS + 100
    centers = rng.random((4, 3))
    x = centers[rng.integers(0, 4, n)] + 0.05 * rng.standard_normal((n, 3))
    w = np.exp(-((x[:, None] - x[None]) ** 2).sum(-1) / 0.1).astype(np.float32)
    vals, vecs = njw_eigenvectors(w, 6)
    inv = 1 / np.sqrt(w.sum(1, dtype=np.float64))
    a = (w * inv[:, None] * inv[None, :]).astype(np.float64)
    ref_vals, ref_vecs = scipy.linalg.eigh(a, subset_by_index=[n - 6, n - 1])
    assert np.allclose(vals, ref_vals[::-1], atol=1e-5)
    assert vals[0] == pytest.approx(1.0, abs=1e-5) and np.all(np.diff(vals) <= 0)
    for j in range(4):  # the 4 well-separated leading vectors, up to sign
        assert abs(float(vecs[:, j] @ ref_vecs[:, ::-1][:, j])) == pytest.approx(1.0, abs=1e-3)

"""grouping/votes.py: instance numbers from the boxes the cells vote for, and the Grouper
reading them (grouping.count_source)."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from pfn_napari.config import ConfigError, GroupingConfig, VoteCountConfig, load_config
from pfn_napari.grouping import Grouper, oracle_network_output
from pfn_napari.grouping.votes import box_iou_matrix, combine_counts, vote_count
from pfn_napari.structures import Sample


def test_box_iou_matrix_hand_computed():
    boxes = np.array([[0, 0, 2, 2], [1, 0, 3, 2], [5, 5, 6, 6], [1, 1, 1, 1]], float)
    iou = box_iou_matrix(boxes)
    assert iou[0, 1] == pytest.approx(2 / 6)  # overlap 1x2, union 4 + 4 - 2
    assert iou[0, 0] == 1.0 and iou[0, 2] == 0.0
    assert iou[3, 3] == 0.0  # an empty box overlaps nothing, itself included
    np.testing.assert_allclose(iou, iou.T)


def _votes(box, n, jitter, rng):
    return np.asarray(box, float) + rng.normal(0, jitter, (n, 4))


def test_vote_count_counts_distinct_boxes_and_ignores_strays():
    rng = np.random.default_rng(0)
    a, b = [0, 0, 10, 20], [12, 0, 22, 20]  # two side-by-side people (IoU 0)
    strays = rng.uniform(0, 40, (3, 2)).repeat(2, axis=1) + [0, 0, 30, 30]  # 3 scattered votes
    boxes = np.concatenate([_votes(a, 60, 0.3, rng), _votes(b, 40, 0.3, rng), strays])
    assert vote_count(boxes) == 2
    assert vote_count(boxes[:60]) == 1
    # the smaller object under min_frac (40 of 103 cells < 50%) is not counted
    assert vote_count(boxes, min_frac=0.5) == 1
    assert vote_count(np.zeros((0, 4))) == 0
    assert vote_count(boxes[:1]) == 1  # one cell: at least one instance


def test_vote_count_merges_two_votes_for_one_object_and_subsamples():
    rng = np.random.default_rng(1)
    # the front and the back of one animal vote for boxes that overlap by IoU 0.6 (< iou 0.7)
    front, back = [0, 0, 20, 10], [4, 0, 24, 10]
    boxes = np.concatenate([_votes(front, 50, 0.1, rng), _votes(back, 50, 0.1, rng)])
    assert vote_count(boxes, iou=0.7, merge_iou=0.5) == 1
    assert vote_count(boxes, iou=0.7, merge_iou=0.7) == 2  # merging off
    many = np.concatenate([_votes([0, 0, 10, 10], 3000, 0.2, rng),
                           _votes([20, 0, 30, 10], 3000, 0.2, rng)])
    rng.shuffle(many)
    assert vote_count(many, max_voters=500) == 2


def test_combine_counts():
    assert combine_counts(1.4, 4, "head") == 1
    assert combine_counts(1.4, 4, "votes") == 4
    assert combine_counts(1.4, 4, "mean") == 3  # 2.7 rounds to 3
    assert combine_counts(0.2, 0, "head") == 1  # at least one
    with pytest.raises(ValueError, match="count source 'max'"):
        combine_counts(1.0, 1, "max")


def test_combine_counts_rounds_halves_up():
    # round half up (floor(x + 0.5)), not Python's round-half-to-even (2.5 -> 2, 4.5 -> 4)
    assert [combine_counts(x, 0, "head") for x in (1.5, 2.5, 3.5, 4.5, 2.49)] == [2, 3, 4, 5, 2]
    assert combine_counts(2.0, 3, "mean") == 3  # (2 + 3) / 2 = 2.5 -> 3
    assert combine_counts(0.5, 4, "mean") == 2  # 2.25 -> 2
    assert combine_counts(0.5, 0, "head") == 1


def test_vote_count_needs_two_cells_for_an_object():
    """With ``min_frac=0`` only the minimum of 2 cells stands between a stray vote and an
    object: two clusters of identical votes (6 and 2 cells) are objects, each single stray
    vote (IoU 0 with every other vote) is not."""
    a, b = [0, 0, 10, 20], [30, 0, 40, 20]
    strays = [[100, 100, 110, 110], [200, 0, 210, 10], [0, 200, 10, 210]]
    boxes = np.array([a] * 6 + [b] * 2 + strays, float)
    assert vote_count(boxes, min_frac=0.0) == 2
    assert vote_count(np.array([a] * 6 + strays, float), min_frac=0.0) == 1


def test_vote_count_min_frac_is_a_fraction_of_the_voters():
    # 12 voters, min_frac 0.25: a cluster needs 3 cells; 3 are enough, 2 are not
    a, b = [0, 0, 10, 20], [30, 0, 40, 20]
    assert vote_count(np.array([a] * 9 + [b] * 3, float), min_frac=0.25) == 2
    assert vote_count(np.array([a] * 10 + [b] * 2, float), min_frac=0.25) == 1
    assert vote_count(np.array([a] * 10 + [b] * 2, float), min_frac=0.1) == 2  # 2 >= 1.2


def three_people() -> Sample:
    """Three side-by-side boxes of class 1 on a 48 x 96 image."""
    class_map = np.zeros((48, 96), np.uint8)
    instance_map = np.zeros((48, 96), np.int32)
    for k, (x0, x1) in enumerate([(0, 24), (32, 56), (64, 96)], start=1):
        class_map[8:48, x0:x1] = 1
        instance_map[8:48, x0:x1] = k
    return Sample(np.zeros((48, 96, 3), np.uint8), class_map, instance_map,
                  np.array([1, 1, 1]), "three")


@pytest.mark.parametrize("source, k", [("head", 1), ("votes", 3), ("mean", 2)])
def test_grouper_takes_k_from_the_count_source(source, k):
    """The head says 1.2 for three people whose cells vote for three boxes."""
    net = oracle_network_output(three_people(), num_classes=2, full_classes=True)
    net.counts[:] = [1.2, 0.0]
    result = Grouper(net).run(GroupingConfig(method="vote", count_source=source))
    assert result.cluster_counts == {1: k} and len(result.instances) == k
    # a count the user sets is used as given, whatever the source
    fixed = Grouper(net).run(GroupingConfig(method="vote", count_source=source),
                             count_override={1: 2})
    assert fixed.cluster_counts == {1: 2}
    # without clustering: the same k (what the napari count boxes start at)
    assert Grouper(net).instance_numbers(GroupingConfig(count_source=source)) == {1: k}
    assert Grouper(net).instance_numbers(GroupingConfig(count_source=source), {1: 5}) == {1: 5}


def test_grouper_reads_the_votes_section():
    """grouping.votes.min_frac (grouping.vote_min_frac before issue 29): each person holds a
    third of the class's cells, under 0.4, so no vote cluster is an object and k falls back to
    1; the same Grouper (its cached vote count keyed by the section) gives 3 again at 0.05."""
    net = oracle_network_output(three_people(), num_classes=2, full_classes=True)
    grouper = Grouper(net)
    strict = load_config(None, ["grouping.method=vote", "grouping.count_source=votes",
                                "grouping.votes.min_frac=0.4"]).grouping
    assert strict.votes == VoteCountConfig(min_frac=0.4)
    assert grouper.instance_numbers(strict) == {1: 1}
    assert grouper.instance_numbers(replace(strict, votes=VoteCountConfig())) == {1: 3}


def test_center_only_encodings_keep_the_heads_count():
    net = oracle_network_output(three_people(), num_classes=2, encoding="centers2",
                                full_classes=True)
    net.counts[:] = [1.2, 0.0]
    result = Grouper(net).run(GroupingConfig(method="vote", count_source="votes"))
    assert result.cluster_counts == {1: 1}


@pytest.mark.parametrize("field, value, message", [
    ("count_source", "max", "grouping.count_source='max': one of"),
    ("votes.iou", 1.0, r"grouping.votes.iou=1.0: in \[0, 1\)"),
    ("votes.min_frac", -0.1, "grouping.votes.min_frac=-0.1"),
    ("votes.merge_iou", 1.5, "grouping.votes.merge_iou=1.5"),
    ("vote_iou", 1.0, r"grouping.votes.iou=1.0: in \[0, 1\)"),  # the name before issue 29
])
def test_bad_vote_settings_are_config_errors(field, value, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, [f"grouping.{field}={value}"])

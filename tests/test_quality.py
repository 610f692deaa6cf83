"""The mask-quality score (grouping/quality.py, grouping.scoring='quality') and the shown-object
threshold show.min_score (Predictor.group), on hand-made masks and a hand-made network
output."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest

from pfn_napari.config import (QUALITY_FEATURES, ConfigError, GroupingConfig, ShowConfig,
                               load_config)
from pfn_napari.grouping import Grouper
from pfn_napari.grouping.quality import (border_share, box_agreement, largest_part,
                                         object_features, quality_score)
from pfn_napari.structures import NetworkOutput
from pfn_napari.targets import encode_locations

H, W = 12, 16


def two_objects() -> tuple[np.ndarray, NetworkOutput]:
    """A 12 x 16 image at stride 1 with two objects of class 1: A rows 2-5, cols 2-5 (16
    pixels, probability 0.9) and B rows 6-11, cols 10-15 (36 pixels in the bottom-right
    corner, probability 0.6); exact box votes; the count head says 1.75 (k = 2)."""
    instance_map = np.zeros((H, W), np.int64)
    instance_map[2:6, 2:6] = 1
    instance_map[6:12, 10:16] = 2
    probs = np.zeros((2, H, W), np.float32)  # (C + 1, h, w)
    probs[0] = 1.0
    for ident, p in ((1, 0.9), (2, 0.6)):
        probs[:, instance_map == ident] = np.array([1 - p, p], np.float32)[:, None]
    net = NetworkOutput(probs, encode_locations(instance_map, "box6"),
                        np.array([1.75], np.float32), (H, W))
    return instance_map, net


VOTE = GroupingConfig(method="vote", scoring="quality")


def test_box_agreement_border_and_largest_part_by_hand():
    boxes = np.array([[0, 0, 2, 2], [0, 0, 1, 2]], float)
    assert box_agreement(boxes, np.array([0, 0, 2, 2.0])) == pytest.approx(0.75)  # IoU 1, 0.5
    assert box_agreement(np.zeros((0, 4)), np.zeros(0)) == 1.0  # a center-only encoding
    corner = np.zeros((H, W), bool)
    corner[0:2, 0:3] = True  # 4 of its 6 pixels on the image edge; box outline 2 (2 + 3)
    assert border_share(corner) == pytest.approx(4 / 10)
    inside = np.zeros((H, W), bool)
    inside[3:5, 3:5] = True
    assert border_share(inside) == 0.0
    pieces = np.zeros((H, W), bool)
    pieces[1, 1:4] = True  # 3 pixels
    pieces[6, 8] = True  # 1 pixel apart
    assert largest_part(pieces) == pytest.approx(0.75)
    pieces[2:6, 4:8] = np.eye(4, dtype=bool)  # a diagonal joins both (8-connected): one piece
    assert largest_part(pieces) == 1.0


def test_object_features_in_the_documented_order():
    mask = np.zeros((H, W), bool)
    mask[6:12, 10:16] = True
    feats = object_features(mask, 0.6, 0.8, np.array([[0, 0, 2, 2], [0, 0, 1, 2.0]]),
                            np.array([0, 0, 2, 2.0]), 1.75, 2)
    assert QUALITY_FEATURES == ("mean_prob", "log_area", "similarity", "box_agreement",
                                "border", "largest_part", "count_gap")
    np.testing.assert_allclose(feats, [0.6, math.log(36 / 192), 0.8, 0.75, 11 / 24, 1.0, -0.25])


def test_quality_score_is_the_logistic_of_bias_plus_weights_dot_features():
    assert quality_score([1.0, 2.0], [0.5, -0.25], 0.1) == pytest.approx(1 / (1 + math.exp(-0.1)))
    assert quality_score([0.0], [3.0], 0.0) == 0.5
    assert quality_score([1.0], [-2000.0], 0.0) == 0.0  # no overflow far out
    assert quality_score([1.0], [2000.0], 0.0) == 1.0
    with pytest.raises(ValueError, match=r"\(2,\) features for \(1,\) weights"):
        quality_score([1.0, 2.0], [1.0], 0.0)


def test_the_grouper_scores_by_quality_and_keeps_the_features():
    """Both objects of the hand-made output: their features as computed by hand (B: 11 of its
    pixels on the bottom and right edges, its box outline 24), and scores from cfg.quality."""
    _, net = two_objects()
    weights = (0.5, 2.0, 0.1, 0.0, 0.0, -1.0, 0.0, 0.4)
    result = Grouper(net).run(replace(VOTE, quality=weights))
    want = np.array([[0.9, math.log(16 / 192), 1.0, 1.0, 0.0, 1.0, -0.25],
                     [0.6, math.log(36 / 192), 1.0, 1.0, 11 / 24, 1.0, -0.25]])
    np.testing.assert_allclose(result.features, want, atol=1e-6)
    z = 0.5 + want @ np.array(weights[1:])
    np.testing.assert_allclose(result.instances.scores, 1 / (1 + np.exp(-z)), atol=1e-6)
    plain = Grouper(net).run(replace(VOTE, scoring="mean_prob"))
    assert plain.features is None
    np.testing.assert_allclose(plain.instances.scores, [0.9, 0.6], atol=1e-6)
    np.testing.assert_array_equal(plain.instances.masks, result.instances.masks)


def predictor_on(net: NetworkOutput, show: ShowConfig, grouping: GroupingConfig):
    """A Predictor whose current output is ``net`` (no networks, no photo)."""
    from types import SimpleNamespace

    import torch

    from pfn_napari.config import DataConfig, ModelConfig, PFNConfig
    from pfn_napari.inference import PFNModel
    from pfn_napari.predictor import Predictor

    cfg = PFNConfig(data=DataConfig(classes=("person",)), model=ModelConfig(num_classes=1),
                    grouping=grouping, show=show)
    model = PFNModel(system=SimpleNamespace(instance=object()), config=cfg,
                     device=torch.device("cpu"))
    predictor = Predictor(model)
    predictor.set_network_output(net)
    return predictor


def test_min_score_drops_a_low_scored_object_and_its_pixels():
    """show.min_score 0.7: B (mean probability 0.6) leaves the instances, its pixels the
    class map and its cells the grid labels; A (0.9) stays, renumbered 1. At 0 both stay."""
    instance_map, net = two_objects()
    grouping = replace(VOTE, scoring="mean_prob")
    everything = predictor_on(net, ShowConfig(), grouping).group()
    assert everything.instances.classes.tolist() == [1, 1]
    predictor = predictor_on(net, ShowConfig(min_score=0.7), grouping)
    result = predictor.group()
    assert result.instances.scores.tolist() == [pytest.approx(0.9)]
    np.testing.assert_array_equal(result.instances.masks[0], instance_map == 1)
    np.testing.assert_array_equal(result.full_class_map, (instance_map == 1).astype(np.uint8))
    np.testing.assert_array_equal(result.refined_class_map, instance_map == 1)
    np.testing.assert_array_equal(result.grid_labels, (instance_map == 1).astype(np.int32))
    np.testing.assert_array_equal(predictor.class_map(), instance_map == 1)
    assert result.full_class_map.dtype == np.uint8 and result.grid_labels.dtype == np.int32


def test_min_score_on_quality_scores_keeps_features_aligned():
    """With scoring 'quality' (weights: only border, -8) B, cut by the image edge, scores
    1 / (1 + e^(8 * 11/24)) = 0.025 and A 0.5: min_score 0.1 keeps A and A's features."""
    _, net = two_objects()
    grouping = replace(VOTE, quality=(0.0, 0.0, 0.0, 0.0, 0.0, -8.0, 0.0, 0.0))
    result = predictor_on(net, ShowConfig(min_score=0.1), grouping).group()
    assert result.instances.scores.tolist() == [0.5]
    np.testing.assert_allclose(result.features, [[0.9, math.log(16 / 192), 1, 1, 0, 1, -0.25]],
                               atol=1e-6)


@pytest.mark.parametrize("override, message", [
    ("grouping.quality=[1, 2]", "grouping.quality has 2 numbers: expected 8, the bias then one "
     "weight for each of mean_prob, log_area, similarity, box_agreement, border, largest_part, "
     "count_gap"),
    ("grouping.quality=[1, 2, 3, .nan, 5, 6, 7, 8]",
     "grouping.quality=[1.0, 2.0, 3.0, nan, 5.0, 6.0, 7.0, 8.0]: every number must be finite"),
    ("show.min_score=1.5",
     "show.min_score=1.5: in [0, 1] (scores are in [0, 1]; 0 shows every object)"),
    ("grouping.scoring=best", "grouping.scoring='best': one of ('mean_prob', "
     "'prob_x_similarity', 'ones', 'quality')"),
])
def test_config_errors_name_the_setting(override, message):
    with pytest.raises(ConfigError) as info:
        load_config(None, [override])
    assert str(info.value) == message


def test_the_defaults_score_as_before():
    cfg = load_config(None, ["grouping.scoring=quality"])
    assert cfg.grouping.scoring == "quality" and len(cfg.grouping.quality) == 8
    plain = load_config(None, [])
    assert plain.grouping.scoring == "mean_prob" and plain.show.min_score == 0.0


def fit_script():
    """scripts/fit_quality.py as a module."""
    from script_helpers import import_script

    return import_script("scripts/fit_quality.py")


def test_fit_quality_threshold_fit_and_config_text(tmp_path):
    """The threshold keeping a share of the right objects (right scores 0.9, 0.8, 0.3: 95 %
    needs all 3, 60 % needs 2); the fit on standardised features folded back to raw weights
    scores as the fitted model does; --save-config's text loads as a config."""
    script = fit_script()
    scores = np.array([0.9, 0.8, 0.7, 0.3])
    right = np.array([True, True, False, True])
    assert script.keep_threshold(scores, right, 0.95) == 0.3
    assert script.keep_threshold(scores, right, 0.6) == 0.8
    assert script.keep_threshold(scores, np.zeros(4, bool), 0.95) == 0.0
    rng = np.random.default_rng(0)
    x = rng.normal([0.5, -3.0, 1.0, 0.8, 0.1, 0.9, 0.0], [0.2, 1.0, 0.01, 0.1, 0.1, 0.1, 1.0],
                   size=(60, 7))
    y = x[:, 0] + 0.1 * x[:, 1] + rng.normal(0, 0.05, 60) > 0.2
    weights, bias = script.fit(x, y)
    from sklearn.linear_model import LogisticRegression

    mean, std = x.mean(0), x.std(0)
    model = LogisticRegression(max_iter=1000).fit((x - mean) / std, y)
    np.testing.assert_allclose(script.logistic(x, weights, bias),
                               model.predict_proba((x - mean) / std)[:, 1], atol=1e-9)
    assert script.logistic(x[:1], weights, bias)[0] == pytest.approx(
        quality_score(x[0], weights, bias))
    path = tmp_path / "q.yaml"
    path.write_text(script.config_text(weights, bias, 0.75, "w.pt", 60, 9))
    cfg = load_config(path)
    assert cfg.grouping.scoring == "quality" and cfg.show.min_score == 0.75
    np.testing.assert_allclose(cfg.grouping.quality, [bias, *weights], rtol=1e-3)

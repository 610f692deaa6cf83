"""scripts/tune_grouping.py: its grid, its numbers against the one evaluation loop, --save, and
the cross-validation of --folds (split, choice, the rule) on hand-made photos."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest

from pfn_napari.checkpoint import load_checkpoint
from pfn_napari.config import GroupingConfig, ImageNetConfig, PFNConfig
from pfn_napari.demo import open_set, real_specs
from pfn_napari.errors import PFNError
from pfn_napari.evaluate import Evaluator
from pfn_napari.inference import default_weights_path
from pfn_napari.predictor import Predictor
from pfn_napari.producers import evaluate_dataset, model_producer
from pfn_napari.structures import Instances, Sample
from script_helpers import import_script

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "tune_grouping.py"


def load_script():
    return import_script("scripts/tune_grouping.py")


def test_grid_holds_every_combination_over_the_base() -> None:
    base = GroupingConfig(method="vote", n_init=7)
    grid = [g for g, _ in load_script().settings_grid(base, [0.2, 0.5], [0.5, 1.0], [0.001],
                                                       ["vote"])]
    assert {(g.tau, g.sigma) for g in grid} == {(0.2, 0.5), (0.2, 1.0), (0.5, 0.5), (0.5, 1.0)}
    assert all(g.n_init == 7 and g.method == "vote" for g in grid)
    # the head's count ignores the vote settings: one row for it, one per vote setting
    grid = [g for g, _ in load_script().settings_grid(
        base, [0.5], [0.5], [0.001], ["vote"],
        more={"grouping.count_source": ["head", "votes"], "grouping.votes.iou": [0.4, 0.6]})]
    assert [(g.count_source, g.votes.iou) for g in grid] == \
        [("head", base.votes.iou), ("votes", 0.4), ("votes", 0.6)]
    words = load_script().describe(load_script().Setting(grid[1], ImageNetConfig()))
    assert "count_source=votes votes.iou=0.4 votes.min_frac=0.05" in words
    assert "imagenet.check.enabled=False" in words
    # likewise the ImageNet step's settings matter only with a weight

    grid = load_script().settings_grid(base, [0.5], [0.5], [0.001], ["vote"],
                                       more={"imagenet.weight": [0.0, 5.0],
                                             "imagenet.touch": [0.25, 0.5],
                                             "imagenet.check.enabled": [True]})
    assert [(s.weight, s.touch, s.check.enabled) for _, s in grid] == \
        [(0.0, ImageNetConfig().touch, False), (5.0, 0.25, True), (5.0, 0.5, True)]
    assert all(g == grid[0][0] for g, _ in grid)
    # a step switched off is one setting whatever its check says
    grid = load_script().settings_grid(base, [0.5], [0.5], [0.001], ["vote"],
                                       imagenet=ImageNetConfig(weight=5.0),
                                       more={"imagenet.enabled": [False, True],
                                             "imagenet.check.enabled": [False, True]})
    assert [(s.enabled, s.check.enabled) for _, s in grid] == \
        [(False, False), (True, False), (True, True)]
    # the refinement by the counts, on and off (--refine on off), a field of the rule's table
    module = load_script()
    args = module.parser().parse_args(["--weights", "w.pt", "--tau", "0.5", "--refine", "on",
                                       "off"])
    grid = module.grid_of(args, PFNConfig(grouping=base), ImageNetConfig())
    assert [g.refine for g, _ in grid] == [True, False]
    assert module.varied_fields(grid) == ["grouping.refine"]
    assert "refine=False" in module.describe(grid[1])


def test_settings_score_as_the_evaluation_loop_and_save_keeps_the_best(
        shared_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture) -> None:
    tune = load_script()
    weights = default_weights_path()
    _, cfg, _ = load_checkpoint(weights)
    predictor = Predictor(str(weights))
    settings = [cfg.grouping, dataclasses.replace(cfg.grouping, min_size_frac=0.9)]
    results = tune.evaluate_settings(predictor, settings, shared_data, limit=3)
    assert set(results) == {"coco-voc", "pennfudan", "horses"}
    es = next(e for e in real_specs(shared_data) if e.name == "pennfudan")
    ds = open_set(es, "val", predictor.class_names, limit=3)
    loop = evaluate_dataset(ds, model_producer(predictor, ds), progress=False)
    same = results["pennfudan"][0]
    assert same.ap_r == loop.ap_r and same.miou == pytest.approx(loop.miou)
    assert tune.person_count_error(same) == pytest.approx(tune.person_count_error(loop))
    # clusters under 90% of their class mask dropped: at most one person per photo is left
    assert results["pennfudan"][1].num_pred.sum() <= min(len(ds), same.num_pred.sum())

    monkeypatch.setenv("PFN_SHARED_DATA", str(shared_data))
    out = tmp_path / "tuned.pt"
    argv = ["--weights", str(weights), "--tau", str(cfg.grouping.tau), "--min-size",
            str(cfg.grouping.min_size_frac), "0.9", "--limit", "3"]  # a tie keeps the first
    assert tune.main([*argv, "--save", str(out)]) == 0
    printed = capsys.readouterr().out
    assert f"min_size_frac={cfg.grouping.min_size_frac:g}" in printed.splitlines()[-2]  # best
    assert f"imagenet.weight={cfg.imagenet.weight:g}" in printed.splitlines()[-2]
    assert f"count_source={cfg.grouping.count_source}" in printed.splitlines()[-2]
    rows = [line for line in printed.splitlines() if line.startswith(f"| {cfg.grouping.method} |")]
    assert len(rows) == 2  # each row ends with its own setting's mIoU per split
    assert rows[0].endswith(" | " + " | ".join(f"{results[n][0].miou:.1f}" for n in results)
                            + " |")
    _, tuned, meta = load_checkpoint(out)
    assert tuned.grouping == cfg.grouping and tuned.imagenet == cfg.imagenet
    assert "tune_grouping" in meta["notes"][-1]
    assert tune.main([*argv, "--save", str(out)]) == 2  # never overwrites
    assert tune.main(["--weights", str(tmp_path / "nope.pt")]) == 2
    assert "nope.pt: checkpoint file not found" in capsys.readouterr().err


# ----------------------------------------------------------------------------- --folds

def test_folds_are_stratified_deterministic_and_hold_each_photo_once() -> None:
    tune = load_script()
    sources = ["a"] * 7 + ["b"] * 5 + ["c"] * 3
    folds = tune.stratified_folds(sources, 3, seed=0)
    assert folds.shape == (15,) and set(folds.tolist()) == {0, 1, 2}  # one fold per photo
    # a dealt from fold 0 (3, 2, 2), b from fold 7 % 3 = 1 (1, 2, 2), c from 12 % 3 = 0
    per_source = {s: np.bincount(folds[np.array(sources) == s], minlength=3).tolist()
                  for s in "abc"}
    assert per_source == {"a": [3, 2, 2], "b": [1, 2, 2], "c": [1, 1, 1]}
    assert np.bincount(folds).tolist() == [5, 5, 5]
    assert np.array_equal(folds, tune.stratified_folds(sources, 3, seed=0))
    assert any(not np.array_equal(folds, tune.stratified_folds(sources, 3, seed=s))
               for s in (1, 2))
    with pytest.raises(PFNError, match="--folds 4: the source 'c' has only 3 photos"):
        tune.stratified_folds(sources, 4)
    with pytest.raises(PFNError, match="at least 2 folds"):
        tune.stratified_folds(sources, 1)


def _photo(tune, right: bool, score: float = 0.9):
    """A horse photo with one true horse and one shown horse, right or not (one class)."""
    return tune.PhotoScore(np.array([score]), np.array([1]), np.array([right]),
                           np.array([right]), np.array([1]), np.array([True]),
                           np.array([[10, 0], [0, 5]]))


def test_score_photo_matches_as_the_evaluator_and_counts_shown_objects() -> None:
    tune = load_script()
    instance_map = np.zeros((8, 8), np.int32)
    instance_map[:4, :4], instance_map[:4, 4:], instance_map[4:, :4] = 1, 2, 3
    instance_map[7, 7] = 255
    classes = np.array([1, 1, 2])
    class_map = np.where(instance_map == 255, 255, np.r_[0, classes][instance_map % 255])
    sample = Sample(np.zeros((8, 8, 3), np.uint8), class_map.astype(np.uint8), instance_map,
                    classes, "photo")
    masks = np.zeros((3, 8, 8), bool)
    masks[0, :4, :4] = True  # person 1 exactly: right
    masks[1, :4, :] = True  # both persons merged: IoU 16/32 = 0.5 with person 2
    masks[2, 4:, 4:] = True  # a dog where there is none
    inst = Instances(masks, np.array([1, 1, 2]), np.array([0.9, 0.8, 0.7]), "photo")
    semantic = inst.class_map()
    score = tune.score_photo(sample, inst, semantic, np.array([True, True]))
    assert score.tp.tolist() == [True, False, False]  # the AP's VOC rule: IoU above 0.5
    assert score.right.tolist() == [True, True, False]  # shown and right: IoU 0.5 or more
    assert score.num_gt.tolist() == [2, 1]
    ev = Evaluator(("person", "dog"))
    ev.add(sample, inst, semantic)
    metrics = ev.result()
    # person: one true positive of two true objects at precision 1 -> 0.5; dog: 0 -> mean 25
    assert tune.ap_half([score]) == pytest.approx(25.0) == 100 * metrics.mean_ap(0.5)
    assert tune.miou([score]) == pytest.approx(metrics.miou)
    assert tune.shown_right([score]) == pytest.approx((200 / 3, 1.0)) == \
        (metrics.precision, metrics.false_per_image)
    # background IoU 0 (15 true pixels, 16 shown, none shared), person 1, dog 0
    assert tune.miou([score]) == pytest.approx(100 / 3)
    # a source that labels only people: the dog is neither right nor false, its pixels count
    # as background (15 of the 31 shown are)
    only_people = tune.score_photo(sample, inst, semantic, np.array([True, False]))
    assert tune.shown_right([only_people, only_people]) == pytest.approx((100.0, 0.0))
    assert tune.miou([only_people]) == pytest.approx(100 * (15 / 31 + 1 + 0) / 3)


def test_each_fold_chooses_on_the_other_folds() -> None:
    tune = load_script()
    sources = ["horses"] * 4
    folds = np.array([0, 0, 1, 1])
    # setting 0 is right on fold 0's photos only, setting 1 on fold 1's only
    table = [[_photo(tune, r) for r in (True, True, False, False)],
             [_photo(tune, r) for r in (False, False, True, True)]]
    assert tune.chosen_per_fold(table, sources, folds) == [1, 0]
    assert tune.held_metrics(table[1], sources, folds, 0)["mean"] == 0.0  # it fails unseen
    assert tune.held_metrics(table[1], sources, folds, 1)["horses"] == 100.0
    assert tune.choose([np.nan, 2.0, 2.0]) == 1  # the first of a tie; never NaN
    # by AP and precision: setting 1 shows a second, false horse on every photo (AP 100,
    # precision 50): the AP cannot tell them apart, the precision can
    doubled = tune.PhotoScore(np.array([0.9, 0.1]), np.array([1, 1]), np.array([True, False]),
                              np.array([True, False]), np.array([1]), np.array([True]),
                              np.array([[10, 0], [0, 5]]))
    table = [[_photo(tune, True)] * 4, [doubled] * 4]
    assert tune.chosen_per_fold(table[::-1], sources, folds) == [0, 0]  # a tie: the first
    assert tune.chosen_per_fold(table[::-1], sources, folds, "ap+precision") == [1, 1]
    m = tune.held_metrics(table[1], sources, folds, 0, "ap+precision")
    assert (m["mean"], m["precision"], m["false"], m["objective"]) == (100.0, 50.0, 1.0, 75.0)


def test_an_added_setting_stays_only_if_it_wins_on_every_fold() -> None:
    tune = load_script()
    assert tune.wins_every_fold([3.0, 2.0, 5.0], [1.0, 1.0, 4.0])
    assert not tune.wins_every_fold([3.0, 2.0, 5.0], [1.0, 2.0, 4.0])  # a tie keeps the simpler
    assert not tune.wins_every_fold([3.0, np.nan], [1.0, 1.0])
    assert not tune.wins_every_fold([], [])
    base = (GroupingConfig(method="vote"), ImageNetConfig())
    simple = tune.Setting(*base)
    added = tune.Setting(GroupingConfig(method="vote", tau=0.35), ImageNetConfig())
    settings = [simple, added]
    assert tune.varied_fields(settings) == ["grouping.tau"]
    sources, folds = ["horses"] * 6, np.array([0, 0, 1, 1, 2, 2])

    def rule(simple_right, added_right):
        table = [[_photo(tune, r) for r in simple_right], [_photo(tune, r) for r in added_right]]
        picks = tune.chosen_per_fold(table, sources, folds)
        lines, stays = tune.field_rule(table, settings, sources, folds, picks, simple,
                                       ["grouping.tau"], base)
        return lines[-1], stays, tune.decided(settings, table, sources, simple, stays, picks)

    # tau 0.35 right everywhere, the simple tau nowhere: it wins on every fold and stays
    line, stays, best = rule([False] * 6, [True] * 6)
    assert stays == {"grouping.tau": True} and best == 1
    assert line == ("| grouping.tau (simple: 0.5) | 0.35: +100.0 | 0.35: +100.0 | "
                    "0.35: +100.0 | yes |")
    # chosen by every fold, but only as good on fold 3's photos: the simple one stays
    line, stays, best = rule([False] * 4 + [True] * 2, [True] * 6)
    assert stays == {"grouping.tau": False} and best == 0
    assert line == "| grouping.tau (simple: 0.5) | 0.35: +100.0 | 0.35: +100.0 | 0.35: +0.0 | no |"
    # a fold that chooses the simple value counts as a loss ('-'): on fold 1 the other
    # folds' photos tie, and the first setting (the simple one) is chosen
    line, stays, _ = rule([False] * 2 + [True] * 4, [True] * 6)
    assert line == "| grouping.tau (simple: 0.5) | - | 0.35: +0.0 | 0.35: +0.0 | no |"
    # the check wins on every fold but the step it belongs to does not stay: neither does it
    step = ImageNetConfig(weight=5.0)
    simple = tune.Setting(GroupingConfig(method="vote"), ImageNetConfig(weight=5.0,
                                                                        enabled=False))
    settings = [simple, tune.Setting(simple.grouping, step),
                tune.Setting(simple.grouping, tune.with_fields(step, {"check.enabled": True}))]
    fields = tune.varied_fields(settings)
    assert fields == ["imagenet.enabled", "imagenet.check.enabled"]
    table = [[_photo(tune, r) for r in right] for right in
             ([False, False, True, True, False, False], [False] * 6, [True] * 6)]
    picks = tune.chosen_per_fold(table, sources, folds)
    assert picks == [2, 2, 2]
    lines, stays = tune.field_rule(table, settings, sources, folds, picks, simple, fields,
                                   (simple.grouping, simple.imagenet))
    assert lines[-2:] == [
        "| imagenet.enabled (simple: off) | on: +100.0 | on: +0.0 | on: +100.0 | no |",
        "| imagenet.check.enabled (simple: off) | on: +100.0 | on: +100.0 | on: +100.0 | no "
        "(it needs imagenet.enabled) |"]
    assert tune.decided(settings, table, sources, simple, stays, picks) == 0


def test_a_weights_file_replaces_another_only_if_it_wins_on_every_fold(
        capsys: pytest.CaptureFixture) -> None:
    tune = load_script()
    sources, folds = ["horses"] * 6, np.array([0, 0, 1, 1, 2, 2])
    # each file has two settings (rows); each fold picks its file's best on the other folds
    old = [[_photo(tune, r) for r in (True, False) * 3],  # half right under setting 0
           [_photo(tune, False)] * 6]
    new = [[_photo(tune, False)] * 6,
           [_photo(tune, True)] * 6]  # every photo right, under its setting 1
    held_new, held_old, wins = tune.weights_verdict(new, old, sources, folds)
    assert held_new == [100.0, 100.0, 100.0] and held_old == [50.0, 50.0, 50.0] and wins
    # right on the photos of folds 1 and 2 only: fold 3 is a loss, so it does not replace it
    partial = [[_photo(tune, r) for r in (True,) * 4 + (False,) * 2], [_photo(tune, False)] * 6]
    held_new, held_old, wins = tune.weights_verdict(partial, old, sources, folds)
    assert held_new == [100.0, 100.0, 0.0] and not wins
    assert tune.weights_verdict(old, old, sources, folds)[2] is False  # a tie keeps the old
    assert tune.main(["--weights", "w.pt", "--against", "v.pt"]) == 2  # needs --folds
    assert "--against needs --folds" in capsys.readouterr().err


def test_against_a_file_that_cannot_be_compared_is_one_line_before_any_photo(
        shared_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture) -> None:
    from pfn_napari.checkpoint import save_weights
    from pfn_napari.config import load_config
    from pfn_napari.model import build_system

    tune = load_script()
    monkeypatch.setenv("PFN_SHARED_DATA", str(shared_data))
    monkeypatch.setattr(tune, "run_folds", lambda *a: pytest.fail("the photos were read"))
    argv = ["--weights", str(default_weights_path()), "--folds", "5", "--against"]
    assert tune.main([*argv, str(tmp_path / "nope.pt")]) == 2
    assert "--against " in capsys.readouterr().err
    cfg = load_config("cpu-lite0", ["model.backbone=alexnet", "model.fc7_channels=32",
                                    "model.count_hidden=16"])
    stage1 = save_weights(tmp_path / "cat.pt", build_system(cfg.model, "category"), cfg, {})
    assert tune.main([*argv, str(stage1)]) == 2
    assert "holds only the category network" in capsys.readouterr().err
    other = save_weights(tmp_path / "other.pt", build_system(cfg.model, "instance"), cfg, {})
    assert tune.main([*argv, str(other)]) == 2
    assert "are not those of --weights" in capsys.readouterr().err

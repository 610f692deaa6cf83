"""scripts/tune_grouping.py: its grid, its numbers against the one evaluation loop, --save."""

from __future__ import annotations

import dataclasses
import importlib.util
from pathlib import Path

import pytest

from pfn_napari.checkpoint import load_checkpoint
from pfn_napari.config import GroupingConfig, ImageNetConfig
from pfn_napari.demo import open_set, real_specs
from pfn_napari.inference import default_weights_path
from pfn_napari.predictor import Predictor
from pfn_napari.producers import evaluate_dataset, model_producer

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "tune_grouping.py"


def load_script():
    spec = importlib.util.spec_from_file_location("tune_grouping", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


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

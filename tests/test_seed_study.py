"""benchmarks/seed_study.py: its arms and the rule over seeds (training and reading the real
photos are the library's, tested elsewhere: train_stages with reuse in test_demo.py, the
protocol in test_tune_grouping.py)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from pfn_napari.errors import PFNError

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def study():
    spec = importlib.util.spec_from_file_location("seed_study", ROOT / "benchmarks" /
                                                  "seed_study.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_an_arm_names_its_settings_per_stage(study) -> None:
    assert study.parse_arm(["recipe"]) == ("recipe", {"category": [], "instance": [],
                                                      "counts": []})
    name, settings = study.parse_arm(["clip5", "instance:train.grad_clip=5",
                                      "train.channels_last=false", "counts:data.whole_size=321"])
    assert name == "clip5"
    assert settings == {"category": ["train.channels_last=false"],
                        "instance": ["train.grad_clip=5", "train.channels_last=false"],
                        "counts": ["train.channels_last=false", "data.whole_size=321"]}
    # a value holding ':' is a value, not a stage
    assert study.parse_arm(["a", "data.train=folder:x:y"])[1]["instance"] == \
        ["data.train=folder:x:y"]
    for words, message in ((["x=1"], "the first word names the arm"),
                           (["a", "stage3:train.lr=1"], "the stage must be one of"),
                           (["a", "instance:train.lr"], "expected [STAGE:]KEY=VALUE")):
        with pytest.raises(PFNError, match=message.replace("[", r"\[")):
            study.parse_arm(words)


def test_an_arm_wins_only_when_the_seeds_mean_is_higher_on_every_fold(study) -> None:
    """The numbers of the study that made stage 'counts' the 20-minute recipe (per fold, three
    seeds; docs/experiments/training.md): the mean wins every fold though seed 0 loses three."""
    three = {0: ([52.9, 42.9, 56.4, 43.7, 40.0], [47.1, 54.5, 61.6, 47.5, 36.0]),
             1: ([36.4, 51.4, 48.4, 49.0, 47.6], [35.6, 35.0, 39.7, 36.1, 35.2]),
             2: ([51.7, 51.2, 65.4, 51.1, 43.2], [39.6, 39.3, 38.5, 36.7, 28.8])}
    arm, base, wins = study.seed_verdict(three)
    assert arm == pytest.approx([47.0, 48.5, 56.73, 47.93, 43.6], abs=0.01)
    assert base == pytest.approx([40.77, 42.93, 46.6, 40.1, 33.33], abs=0.01)
    assert wins is True
    assert study.seed_verdict({0: three[0]})[2] is False  # seed 0 alone loses folds 2-4
    tie = {0: ([50.0, 50.0], [50.0, 40.0])}
    assert study.seed_verdict(tie)[2] is False  # a tie keeps the baseline


def test_the_pooled_numbers_are_averaged_over_the_seeds(study) -> None:
    rows = [{"coco": 0.9, "pennfudan": 52.9, "horses": 98.5, "mean": 50.8, "precision": 57.8,
             "false": 0.65},
            {"coco": 8.3, "pennfudan": 25.1, "horses": 100.0, "mean": 44.5, "precision": 42.5,
             "false": 1.07}]
    means = study.seed_means(rows)
    assert means == pytest.approx({"coco": 4.6, "pennfudan": 39.0, "horses": 99.25,
                                   "mean": 47.65, "precision": 50.15, "false": 0.86})
    assert [c[0] for c in study.MEAN_COLUMNS] == list(means)

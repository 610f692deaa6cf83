"""benchmarks/seed_study.py: its arms and the rule over seeds (training and reading the real
photos are the library's, tested elsewhere: train_stages with reuse in test_demo.py, the
protocol in test_tune_grouping.py)."""

from __future__ import annotations

import pytest

from pfn_napari.errors import PFNError
from script_helpers import import_script


@pytest.fixture(scope="module")
def study():
    return import_script("benchmarks/seed_study.py")


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


def _args(**kw):
    from types import SimpleNamespace
    base = dict(steps=[740, 661], count_steps=150, channels_last=True, synthetic=300)
    return SimpleNamespace(**{**base, **kw})


def test_an_arm_folder_keeps_its_settings_and_refuses_others(study, tmp_path) -> None:
    """A finished stage is reused by name, so the name must not change its settings."""
    _, clip5 = study.parse_arm(["clip5", "instance:train.grad_clip=5"])
    folder = tmp_path / "seed0" / "clip5"
    study.claim_arm_folder(folder, "clip5", study.arm_record(clip5, _args()))
    assert (folder / "arm.json").is_file()
    study.claim_arm_folder(folder, "clip5", study.arm_record(clip5, _args()))  # same: fine
    _, clip3 = study.parse_arm(["clip5", "instance:train.grad_clip=3"])
    with pytest.raises(PFNError, match="clip5: .* holds a chain of other settings \\(settings: "):
        study.claim_arm_folder(folder, "clip5", study.arm_record(clip3, _args()))
    with pytest.raises(PFNError, match="steps: \\[740, 661\\] there, \\[100, 100\\] now"):
        study.claim_arm_folder(folder, "clip5", study.arm_record(clip5, _args(steps=[100, 100])))


def _report(study, name: str, record: dict, seeds: dict) -> dict:
    """A one-arm study report as run_study makes it from ``{seed: (arm folds, base folds,
    arm pennfudan, base pennfudan)}``, against the baseline 'recipe'."""
    per_seed = {str(s): (v[0], v[1]) for s, v in seeds.items()}
    pooled = {str(s): ({"pennfudan": v[2]}, {"pennfudan": v[3]}) for s, v in seeds.items()}
    return {"argv": [name], "arms": {name: study.arm_entry(record, "recipe", per_seed, pooled)}}


def test_a_study_of_more_seeds_adds_to_the_record_and_keeps_the_other_arms(study) -> None:
    _, giou = study.parse_arm(["giou1", "instance:loss.giou_weight=1"])
    record = study.arm_record(giou, _args())
    old = {"argv_history": [["count3"]],
           "arms": {"count3": {"mean": [1.0], "note": "an earlier arm"}}}
    first = study.merge_study(old, _report(study, "giou1", record, {
        0: ([47.3, 53.0], [52.9, 42.9], 31.6, 32.5), 1: ([28.8, 50.2], [36.4, 51.4], 23.9, 49.9)}))
    assert first["arms"]["count3"] == old["arms"]["count3"]
    assert first["arms"]["giou1"]["seeds"] == ["0", "1"]
    # seed 2 alone, later: the verdict is taken over the three seeds
    both = study.merge_study(first, _report(study, "giou1", record, {2: ([60.0, 60.0], [40.0, 40.0],
                                                                  50.0, 40.0)}))
    entry = both["arms"]["giou1"]
    assert entry["seeds"] == ["0", "1", "2"]
    assert entry["mean"] == pytest.approx([(47.3 + 28.8 + 60.0) / 3, (53.0 + 50.2 + 60.0) / 3])
    assert entry["baseline_mean"] == pytest.approx([(52.9 + 36.4 + 40.0) / 3,
                                                    (42.9 + 51.4 + 40.0) / 3])
    assert entry["wins"] is True
    assert entry["pooled_seed_means"]["arm"]["pennfudan"] == pytest.approx(
        (31.6 + 23.9 + 50.0) / 3)
    assert both["argv_history"] == [["count3"], ["giou1"], ["giou1"]]
    # another baseline (or other steps) is another study: it replaces, it does not mix
    other = study.merge_study(both, _report(study, "giou1", study.arm_record(giou, _args(
        count_steps=0)), {2: ([1.0, 1.0], [2.0, 2.0], 1.0, 2.0)}))
    assert other["arms"]["giou1"]["seeds"] == ["2"] and other["arms"]["giou1"]["wins"] is False


def test_the_study_file_is_merged_under_a_lock(study, tmp_path) -> None:
    import json

    _, giou = study.parse_arm(["giou1", "instance:loss.giou_weight=1"])
    record = study.arm_record(giou, _args())
    path = tmp_path / "study.json"
    study.write_study(path, _report(study, "giou1", record, {0: ([1.0], [2.0], 1.0, 2.0)}))
    study.write_study(path, _report(study, "giou1", record, {1: ([3.0], [1.0], 3.0, 1.0)}))
    entry = json.loads(path.read_text())["arms"]["giou1"]
    assert entry["seeds"] == ["0", "1"] and entry["mean"] == [2.0]
    assert not (tmp_path / "study.json.lock").exists()
    held = study.lock_file(tmp_path / "study.json.lock")  # another study is writing
    try:
        import threading
        threading.Timer(0.3, study.release_lock_file, (tmp_path / "study.json.lock", held)).start()
        study.write_study(path, _report(study, "giou1", record, {2: ([5.0], [1.0], 5.0, 1.0)}))
    finally:
        held.close()
    assert json.loads(path.read_text())["arms"]["giou1"]["seeds"] == ["0", "1", "2"]


def test_an_arm_of_stage_counts_alone_links_the_shared_stage_2(study, tmp_path) -> None:
    shared = tmp_path / "seed0" / "recipe" / "instance"
    shared.mkdir(parents=True)
    (shared / "final.pt").write_bytes(b"stage 2")
    link = tmp_path / "seed0" / "countsreal" / "instance"
    study.share_stage(link, shared)
    assert link.is_symlink() and (link / "final.pt").read_bytes() == b"stage 2"
    own = tmp_path / "seed0" / "other" / "instance"
    own.mkdir(parents=True)
    study.share_stage(own, shared)  # a folder of its own is not replaced
    assert not own.is_symlink() and not any(own.iterdir())

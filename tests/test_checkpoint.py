"""checkpoint.py: atomic save, checked load, weights files, RNG states."""

from __future__ import annotations

import os
import random
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from pfn_napari import __version__
from pfn_napari.checkpoint import (FORMAT_TAG, FORMAT_VERSION, atomic_save, capture_rng_state,
                                   load_checkpoint, networks_of, read_checkpoint,
                                   restore_rng_state, run_meta, save_checkpoint, save_weights)
from pfn_napari.config import load_config, migrate
from pfn_napari.errors import CheckpointError

TINY = ["model.backbone=efficientnet_lite0", "model.num_classes=3",
        "data.classes=[disc,square,triangle]", "model.stream_channels=8",
        "model.count_channels=8", "model.count_hidden=16"]


@pytest.fixture(scope="module")
def cfg():
    return load_config(None, TINY)


@pytest.fixture(scope="module")
def system(cfg):
    from pfn_napari.model import build_network, PFNSystem

    torch.manual_seed(0)
    return PFNSystem(build_network(cfg.model, "category"), build_network(cfg.model, "instance"))


def _save(path: Path, system, cfg, **kw) -> Path:
    return save_checkpoint(path, system_state=system.state_dict(), config=cfg,
                           networks=networks_of(system), step=kw.pop("step", 7),
                           epoch=kw.pop("epoch", 2), **kw)


def test_round_trip_rebuilds_the_system_from_the_file_alone(tmp_path, cfg, system):
    opt = torch.optim.SGD(system.instance.parameters(), lr=0.1, momentum=0.9)
    path = _save(tmp_path / "last.pt", system, cfg, optimizer=opt.state_dict(),
                 extra={"note": "hello"})
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]  # no temporary file left
    loaded, cfg2, meta = load_checkpoint(path)
    assert cfg2 == cfg
    assert meta["kind"] == "training" and meta["step"] == 7 and meta["epoch"] == 2
    assert meta["pfn_napari_version"] == __version__ and meta["format_version"] == FORMAT_VERSION
    assert meta["networks"] == {"category": "category", "instance": "instance"}
    assert meta["extra"] == {"note": "hello"}
    assert meta["optimizer"]["param_groups"][0]["lr"] == 0.1
    assert not loaded.training
    ref = system.state_dict()
    got = loaded.state_dict()
    assert ref.keys() == got.keys()
    assert all(torch.equal(ref[k], got[k]) for k in ref)


def test_category_only_and_unified_systems(tmp_path, cfg):
    from pfn_napari.model import build_network, PFNSystem

    for sys_ in (PFNSystem(build_network(cfg.model, "category"), None),
                 PFNSystem(None, build_network(cfg.model, "unified"))):
        path = _save(tmp_path / "c.pt", sys_, cfg)
        loaded, _, meta = load_checkpoint(path)
        assert meta["networks"] == networks_of(sys_)
        assert (loaded.category is None) == (sys_.category is None)
        assert (loaded.instance is None) == (sys_.instance is None)


def test_weights_file_half_precision(tmp_path, cfg, system):
    full = save_weights(tmp_path / "w32.pt", system, cfg, meta={"trained_on": "synthetic"})
    half = save_weights(tmp_path / "w16.pt", system, cfg, half=True)
    assert half.stat().st_size < 0.6 * full.stat().st_size
    loaded, cfg2, meta = load_checkpoint(half)
    assert cfg2 == cfg and meta["kind"] == "weights" and meta["dtype"] == "float16"
    assert "optimizer" not in meta
    for k, v in system.state_dict().items():
        w = loaded.state_dict()[k]
        assert w.dtype == v.dtype
        if v.is_floating_point():
            torch.testing.assert_close(w, v, rtol=1e-3, atol=1e-4)
        else:
            assert torch.equal(w, v)
    _, _, meta32 = load_checkpoint(full)
    assert meta32["trained_on"] == "synthetic" and meta32["dtype"] == "float32"
    # written anew (half precision) from what was loaded: the new header wins, the rest is kept
    again = save_weights(tmp_path / "again.pt", loaded, cfg, run_meta(meta32), half=True)
    _, _, meta_again = load_checkpoint(again)
    assert run_meta(meta32) == {"trained_on": "synthetic"}
    assert meta_again["trained_on"] == "synthetic" and meta_again["dtype"] == "float16"


def test_missing_truncated_foreign_and_other_version_files(tmp_path, cfg, system):
    with pytest.raises(CheckpointError, match="nope.pt: checkpoint file not found"):
        load_checkpoint(tmp_path / "nope.pt")

    good = _save(tmp_path / "good.pt", system, cfg)
    data = good.read_bytes()
    cut = tmp_path / "cut.pt"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=r"cut\.pt: cannot read .* truncated") as info:
        load_checkpoint(cut)
    assert "\n" not in str(info.value)

    text = tmp_path / "notes.pt"
    text.write_text("hello")
    with pytest.raises(CheckpointError, match="notes.pt"):
        load_checkpoint(text)

    foreign = tmp_path / "foreign.pt"
    torch.save({"state_dict": {"w": torch.zeros(1)}}, foreign)
    with pytest.raises(CheckpointError, match="foreign.pt: not a pfn-napari checkpoint"):
        load_checkpoint(foreign)

    obj = torch.load(good, weights_only=True)
    obj["format_version"] = FORMAT_VERSION + 1
    other = tmp_path / "future.pt"
    torch.save(obj, other)
    with pytest.raises(CheckpointError, match=f"future.pt: checkpoint format version {FORMAT_VERSION + 1}"):
        load_checkpoint(other)


def test_weights_that_do_not_fit_the_stored_config(tmp_path, cfg, system):
    obj = torch.load(_save(tmp_path / "a.pt", system, cfg), weights_only=True)
    obj["config"]["model"]["num_classes"] = 5
    obj["config"]["data"]["classes"] = ["a", "b", "c", "d", "e"]
    bad = tmp_path / "bad.pt"
    torch.save(obj, bad)
    with pytest.raises(CheckpointError, match="bad.pt: stored weights do not fit"):
        load_checkpoint(bad)
    obj["config"]["model"]["backbone"] = "resnet"
    torch.save(obj, bad)
    with pytest.raises(CheckpointError, match="bad.pt: stored config"):
        load_checkpoint(bad)


def test_atomic_save_keeps_the_old_file_when_writing_fails(tmp_path):
    path = atomic_save({"format": FORMAT_TAG, "v": torch.arange(3)}, tmp_path / "last.pt")

    class Unpicklable:
        def __reduce__(self):
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        atomic_save({"v": Unpicklable()}, path)
    assert sorted(os.listdir(tmp_path)) == ["last.pt"]
    assert torch.equal(torch.load(path, weights_only=True)["v"], torch.arange(3))


def test_rng_state_round_trip_through_a_file(tmp_path):
    random.seed(1)
    np.random.seed(2)
    torch.manual_seed(3)
    state = capture_rng_state()
    atomic_save({"rng": state}, tmp_path / "r.pt")
    first = (random.random(), np.random.rand(), torch.rand(1).item(), np.random.randn())
    restore_rng_state(torch.load(tmp_path / "r.pt", weights_only=True)["rng"])
    again = (random.random(), np.random.rand(), torch.rand(1).item(), np.random.randn())
    assert first == again


def test_read_checkpoint_header(tmp_path, cfg, system):
    obj = read_checkpoint(_save(tmp_path / "h.pt", system, cfg))
    assert obj["format"] == FORMAT_TAG and obj["kind"] == "training"
    assert obj["config"]["model"]["backbone"] == "efficientnet_lite0"


def test_load_refuses_non_finite_weights(tmp_path, cfg, system):
    state = {k: v.clone() for k, v in system.state_dict().items()}
    name = next(k for k, v in state.items() if v.is_floating_point())
    state[name].view(-1)[0] = float("nan")
    path = save_checkpoint(tmp_path / "nan.pt", system_state=state, config=cfg,
                           networks=networks_of(system))
    with pytest.raises(CheckpointError, match=rf"nan\.pt: 1 weight tensor\(s\) hold NaN or "
                                              rf"infinite values \({name}\); the run that wrote "
                                              "it diverged"):
        load_checkpoint(path)


def test_atomic_save_on_a_full_disk_names_the_file_and_keeps_the_old_one(tmp_path, monkeypatch):
    import errno

    from pfn_napari import output
    from pfn_napari.errors import OutputError

    path = atomic_save({"format": FORMAT_TAG, "v": torch.arange(3)}, tmp_path / "last.pt")

    def full(self, data):  # the disk fills up: torch.save turns this into a RuntimeError
        self.error = self.error or OSError(errno.ENOSPC, "No space left on device")
        raise self.error

    monkeypatch.setattr(output._RecordingFile, "write", full)
    with pytest.raises(OutputError, match=r"disk full while writing .*last\.pt; the previous "
                                          "file is kept"):
        atomic_save({"v": torch.zeros(1000)}, path)
    monkeypatch.undo()
    assert sorted(os.listdir(tmp_path)) == ["last.pt"]
    assert torch.equal(torch.load(path, weights_only=True)["v"], torch.arange(3))


def _save_state(path: Path, state, cfg, system) -> Path:
    return save_checkpoint(path, system_state=state, config=cfg, networks=networks_of(system))


def test_load_refuses_weights_stored_as_integers(tmp_path, cfg, system):
    """An integer copy of a float weight used to load (rounded to whole numbers: an all-zero
    conv) and predict 0 instances without a word."""
    state = {k: v.clone() for k, v in system.state_dict().items()}
    name = "instance.heads.0.weight" if "instance.heads.0.weight" in state else \
        next(k for k, v in state.items() if v.is_floating_point() and k.startswith("instance."))
    state[name] = state[name].to(torch.int64)
    path = _save_state(tmp_path / "int.pt", state, cfg, system)
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path)
    assert str(info.value) == (f"{path}: weight tensor {name!r} is stored as torch.int64, but "
                               "the network holds torch.float32 there; the file is damaged or "
                               "was converted wrongly: use the original file")
    state[name] = system.state_dict()[name].clone()
    state[name].view(-1)[0] = float("inf")
    with pytest.raises(CheckpointError, match="hold NaN or infinite values"):
        load_checkpoint(_save_state(tmp_path / "inf.pt", state, cfg, system))


def test_load_checks_the_keys_strictly(tmp_path, cfg, system):
    """A missing layer would otherwise keep its random init, an extra key be ignored."""
    state = {k: v.clone() for k, v in system.state_dict().items()}
    missing = next(k for k in state if k.startswith("instance.") and k.endswith(".weight"))
    del state[missing]
    path = _save_state(tmp_path / "missing.pt", state, cfg, system)
    with pytest.raises(CheckpointError, match=rf"missing\.pt: stored weights do not fit the "
                                              rf"network built from its config \(.*Missing "
                                              rf"key\(s\) in state_dict: \"{missing}\""):
        load_checkpoint(path)
    state = {k: v.clone() for k, v in system.state_dict().items()}
    state["instance.extra_layer.weight"] = torch.zeros(3)
    path = _save_state(tmp_path / "extra.pt", state, cfg, system)
    with pytest.raises(CheckpointError, match=r"extra\.pt: stored weights do not fit .*Unexpected "
                                              r"key\(s\) in state_dict: \"instance.extra_layer"):
        load_checkpoint(path)


@pytest.mark.parametrize("field", ["bi_xy", "pos_xy", "bi_rgb"])
def test_a_stored_crf_width_of_zero_is_refused_at_load(tmp_path, cfg, system, field):
    """Stored in a checkpoint, crf.bi_xy=0 used to reach pydensecrf and segfault predict."""
    obj = torch.load(_save(tmp_path / "a.pt", system, cfg), weights_only=True)
    obj["config"]["crf"][field] = 0
    bad = tmp_path / "crf0.pt"
    torch.save(obj, bad)
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(bad)
    assert str(info.value) == (f"{bad}: stored config does not fit this pfn-napari: "
                               f"crf.{field}=0.0: in [0.1, {'1000' if field == 'bi_rgb' else '10000'}]"
                               + (" (colour levels 0..255)" if field == "bi_rgb" else " px"))


def test_the_shipped_weights_hold_the_test_time_settings_of_their_yaml() -> None:
    """weights/pfn-lite0-voc.yaml is the readable copy of what the .pt stores (after the
    migration table): grouping, crf, imagenet and show equal, section for section."""
    from pfn_napari.checkpoint import load_checkpoint

    root = Path(__file__).resolve().parents[1] / "weights"
    stored = load_checkpoint(root / "pfn-lite0-voc.pt")[1]
    text = load_config(root / "pfn-lite0-voc.yaml")
    for section in ("grouping", "crf", "imagenet", "show"):
        assert getattr(stored, section) == getattr(text, section), section
    assert text.show.classes == ("horse", "person")  # the rule on the training data
    assert text.imagenet.weight == 5.0 and text.imagenet.shape == "grabcut"  # read, not defaults
    # the cross-validation's decision (docs/experiments/cv-settings.md): the paper's tau, the
    # count source that won on every fold, the ImageNet step and its check off
    assert text.grouping.method == "vote" and text.grouping.tau == 0.5
    assert text.grouping.count_source == "mean"
    assert not text.imagenet.enabled and not text.imagenet.check.enabled
    assert not stored.imagenet.active
    raw = yaml.safe_load((root / "pfn-lite0-voc.yaml").read_text())
    assert migrate(raw) == raw  # written with today's names (grouping.votes, imagenet.check)


def test_the_model_cards_settings_row_is_generated_from_the_yaml() -> None:
    """weights/README.md's test-time settings row is grouping_row of the YAML's settings
    (scripts/train_default_weights.py writes the card from it)."""
    from script_helpers import import_script

    root = Path(__file__).resolve().parents[1]
    script = import_script("scripts/train_default_weights.py")
    settings = script.read_settings(root / "weights" / "pfn-lite0-voc.pt")
    row = next(line for line in (root / "weights" / "README.md").read_text().splitlines()
               if line.startswith("| test-time settings |"))
    assert row.endswith(": " + script.grouping_row(settings.grouping, settings.imagenet) + " |")
    assert "tau 0.5," in row and "votes.iou 0.6" in row
    assert row.endswith("; the ImageNet step is off (`--set imagenet.enabled=true` turns it on; "
                        "docs/imagenet.md) |")
    card = (root / "weights" / "README.md").read_text()
    assert "docs/experiments/cv-settings.md" in " ".join(card.split())  # how they were chosen


def test_the_settings_row_says_whether_the_imagenet_step_runs():
    """Step on: its thresholds; off in a model that has it: off, and how to turn it on;
    a model without it (weight 0): not a word."""
    from pfn_napari.config import GroupingConfig, ImageNetConfig

    script = _card_script()
    g = GroupingConfig(method="vote", tau=0.5)
    off = script.grouping_row(g, ImageNetConfig(enabled=False, weight=5.0))
    assert off.endswith("; the ImageNet step is off (`--set imagenet.enabled=true` turns it "
                        "on; docs/imagenet.md)")
    on = script.grouping_row(g, ImageNetConfig(enabled=True, weight=5.0))
    assert "; then the ImageNet step names objects" in on and "imagenet.weight 5," in on
    assert "ImageNet" not in script.grouping_row(g, ImageNetConfig(enabled=True, weight=0.0))


def _card_script():
    from script_helpers import import_script

    return import_script("scripts/train_default_weights.py")


def test_the_shown_class_rule_counts_training_instances_of_real_photos():
    """A class is shown from 100 training instances on, summed over the real sets."""
    script = _card_script()
    counts = {"person": {"coco-voc": 170, "pennfudan": 337}, "horse": {"coco-voc": 2,
                                                                        "horses": 223},
              "car": {"coco-voc": 31}, "dog": {"coco-voc": 60, "horses": 39}}
    classes = ("car", "dog", "horse", "person", "disc")
    assert script.shown_by_rule(counts, classes) == ("horse", "person")  # dog: 99
    assert script.shown_by_rule(counts, classes, minimum=99) == ("dog", "horse", "person")


def test_the_card_says_what_the_shown_classes_are_taken_for():
    script = _card_script()
    objects = [("horse", "giraffe"), ("person", None), ("horse", "zebra"), ("horse", "giraffe")]
    assert script.mistaken_words(objects, 23) == (
        "on the 23 COCO photos without a VOC object it shows 4 objects, all false; what most "
        "of each lies on: horse (3): giraffe 2, zebra 1; person (1): unlabelled background 1")
    assert script.mistaken_words([], 5) == \
        "on the 5 COCO photos without a VOC object it shows nothing"


def test_a_stage_that_finished_before_is_found_with_its_minutes(tmp_path):
    script = _card_script()
    assert script.finished_stage(tmp_path) is None  # nothing there: the stage runs
    (tmp_path / "config.yaml").write_text("train: {}\n")
    (tmp_path / "final.pt").write_bytes(b"")
    os.utime(tmp_path / "config.yaml", (1000.0, 1000.0))
    os.utime(tmp_path / "final.pt", (1000.0, 1000.0 + 90 * 60))
    assert script.finished_stage(tmp_path) == (tmp_path / "final.pt", 90.0)


def test_write_shown_classes_keeps_the_networks_and_writes_the_yaml(tmp_path, cfg, system):
    script = _card_script()
    path = save_weights(tmp_path / "w.pt", system, cfg, {"note": "kept"})
    script.write_shown_classes(path, ("square",))
    loaded, stored, meta = load_checkpoint(path)
    assert stored.show.classes == ("square",) and stored.grouping == cfg.grouping
    assert meta["note"] == "kept"
    for key, value in system.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    assert script.read_settings(path).show.classes == ("square",)  # the YAML, on its classes
    assert yaml.safe_load((tmp_path / "w.yaml").read_text())["show"] == {"classes": ["square"],
                                                                         "min_score": 0.0}


def test_the_cards_shown_table_comes_from_the_metrics_files(tmp_path):
    """Per shown class: training instances, then shown / right / precision per split; the
    last rows: every shown object, and false objects per photo."""
    import json

    script = _card_script()

    def metrics(per_class: dict, images: int) -> dict:
        shown = sum(d["num_pred"] for d in per_class.values())
        right = sum(d["num_right"] for d in per_class.values())
        return {"per_class": per_class, "num_pred": shown, "num_right": right,
                "precision": 100 * right / shown if shown else None,
                "false_per_image": (shown - right) / images, "num_images": images}

    person = {"num_pred": 8, "num_right": 6, "precision": 75.0}
    horse = {"num_pred": 2, "num_right": 0, "precision": 0.0}
    none = {"num_pred": 0, "num_right": 0, "precision": None}
    for name, data in {"a": metrics({"person": person, "horse": horse}, 4),
                       "b": metrics({"person": none, "horse": horse}, 2)}.items():
        (tmp_path / name).mkdir()
        (tmp_path / name / "metrics.json").write_text(json.dumps(data))
    rows = script.shown_rows(tmp_path, ["a", "b", "missing"], ("horse", "person"),
                             {"person": {"coco-voc": 170, "pennfudan": 337},
                              "horse": {"horses": 223}})
    assert rows == [
        "| horse | 223 (horses 223) | 2 / 0 / 0 % | 2 / 0 / 0 % | - |",
        "| person | 507 (coco-voc 170, pennfudan 337) | 8 / 6 / 75 % | 0 / 0 / - | - |",
        "| all shown | | 10 / 6 / 60 % | 2 / 0 / 0 % | - |",
        "| false objects per photo | | 1.00 (4 photos) | 1.00 (2 photos) | - |"]


def test_write_test_time_settings_changes_only_the_settings_named(tmp_path, cfg, system):
    """grouping.tau and the ImageNet switches written into the .pt and its YAML; the networks,
    meta and every other setting kept."""
    script = _card_script()
    path = save_weights(tmp_path / "w.pt", system, cfg, {"note": "kept"})
    script.write_test_time_settings(path, ["grouping.tau=0.5", "imagenet.enabled=false",
                                           "imagenet.check.enabled=false"])
    loaded, stored, meta = load_checkpoint(path)
    assert stored.grouping.tau == 0.5 and stored.grouping.sigma == cfg.grouping.sigma
    assert not stored.imagenet.enabled and not stored.imagenet.check.enabled
    assert stored.imagenet.weight == cfg.imagenet.weight and stored.show == cfg.show
    assert stored.model == cfg.model and meta["note"] == "kept"
    for key, value in system.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    assert script.read_settings(path).grouping.tau == 0.5  # the YAML beside it, equal
    assert yaml.safe_load((tmp_path / "w.yaml").read_text())["imagenet"]["enabled"] is False


def test_write_test_time_settings_refuses_other_sections_and_bad_values(tmp_path, cfg, system):
    """A network or training setting, or a value the config refuses: one line, file kept."""
    from pfn_napari.config import ConfigError

    script = _card_script()
    path = save_weights(tmp_path / "w.pt", system, cfg, {})
    before = path.read_bytes()
    with pytest.raises(ConfigError) as info:
        script.write_test_time_settings(path, ["grouping.tau=0.5", "model.backbone=vgg16"])
    assert str(info.value) == ("--set 'model.backbone=vgg16': not a test-time setting (the "
                               "sections grouping, crf, imagenet, show are; the networks' "
                               "settings are the training's)")
    with pytest.raises(ConfigError, match="grouping.sigma"):
        script.write_test_time_settings(path, ["grouping.sigma=-1"])
    assert path.read_bytes() == before and not (tmp_path / "w.yaml").exists()

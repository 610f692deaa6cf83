"""``pfn demo`` end to end on a tiny model trained in the test (the shipped weights are used by
the README's command; here the report's shape and its numbers' origin are checked)."""

from __future__ import annotations

import json
import shutil

import pytest

from pfn_napari.config import load_config
from pfn_napari.demo import SHAPE_CLASSES, demo_train_spec, train_stages

TINY = ["data.crop_size=65", "train.batch_size=2", "data.classes=[disc,square,triangle]",
        "model.num_classes=3", "train.checkpoint_every=0"]


@pytest.fixture(scope="module")
def tiny_weights(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo-train")
    ckpt, logs = train_stages(out, "synthetic:6", TINY, category_steps=2, instance_steps=2,
                              counts_steps=2, device="cpu", progress=False,
                              stage_overrides={"counts": ["data.whole_size=129"]})
    assert set(logs) == {"category", "instance", "counts"}
    assert all(p.is_file() for p in logs.values()) and ckpt == out / "counts" / "final.pt"
    stored = load_config(out / "counts" / "config.yaml")  # the recipe's counts settings
    assert (stored.train.stage, stored.train.batch_size, stored.train.lr_new,
            stored.train.init) == ("counts", 2, 0.001, str(out / "instance" / "final.pt"))
    return ckpt


def test_train_stages_reuse_goes_on_from_the_stages_already_finished(tiny_weights, tmp_path):
    """``reuse=True`` (a study stopped half-way, ``benchmarks/seed_study.py``) trains only
    the stages without a ``final.pt``, each from the checkpoint of the stage before."""
    out = tiny_weights.parent.parent
    stamps = {p: p.stat().st_mtime_ns for p in out.glob("*/final.pt")}
    kwargs = dict(category_steps=2, instance_steps=2, counts_steps=2, device="cpu",
                  progress=False, stage_overrides={"counts": ["data.whole_size=129"]},
                  reuse=True)
    assert train_stages(out, "synthetic:6", TINY, **kwargs) == (tiny_weights, {})
    assert {p: p.stat().st_mtime_ns for p in out.glob("*/final.pt")} == stamps
    for stage in ("category", "instance"):  # a study stopped before stage 'counts'
        shutil.copytree(out / stage, tmp_path / stage)
    ckpt, logs = train_stages(tmp_path, "synthetic:6", TINY, **kwargs)
    assert ckpt == tmp_path / "counts" / "final.pt" and set(logs) == {"counts"}
    assert load_config(tmp_path / "counts" / "config.yaml").train.init == \
        str(tmp_path / "instance" / "final.pt")


@pytest.mark.slow
def test_demo_writes_report_from_the_run(tiny_weights, tmp_path, monkeypatch):
    from pfn_napari.cli import main

    monkeypatch.setenv("PFN_SHARED_DATA", str(tmp_path / "absent"))  # embedded data only
    out = tmp_path / "report"
    assert main(["demo", "--quick", "--weights", str(tiny_weights), "--out", str(out),
                 "--device", "cpu"]) == 0
    data = json.loads((out / "metrics.json").read_text())
    assert set(data["ap_r"]) == {"0.5", "0.6", "0.7", "0.8", "0.9"}
    assert data["num_images"] == 6 and list(data["datasets"]) == ["synthetic"]
    assert data["model"]["weights"] == str(tiny_weights)
    assert data["per_class"].keys() == set(SHAPE_CLASSES)
    for name in ("metrics.md", "report.md", "index.html", "pr_curves.png", "synthetic/metrics.json"):
        assert (out / name).is_file(), name
    assert list((out / "samples").glob("*_overlay.png")) and list((out / "samples").glob("*_arrows.png"))
    assert "AP^r" in (out / "report.md").read_text()


def test_demo_train_spec_repeats_each_real_set(tmp_path):
    """The COCO photos are repeated TRAIN_REPEATS times unless ``repeats`` says otherwise;
    synthetic images come first, and no real data gives only them."""
    voc = tmp_path / "coco128-train" / "voc" / "VOC2012"
    voc.mkdir(parents=True)
    (tmp_path / "pennfudan" / "PNGImages").mkdir(parents=True)
    default = demo_train_spec(tmp_path, 5).split("+")
    assert default[0] == "synthetic:5"
    assert default.count(f"voc:{voc}") == 3 and len(default) == 5  # + Penn-Fudan once
    more = demo_train_spec(tmp_path, 0, {"coco-voc": 6}).split("+")
    assert more.count(f"voc:{voc}") == 6 and more[-1].endswith(":person")
    assert demo_train_spec(None, 7) == "synthetic:7"

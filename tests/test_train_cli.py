"""pfn train: argument -> config wiring and one-line errors (no training here)."""

from __future__ import annotations

import argparse

import pytest

from pfn_napari.cli import build_parser, main
from pfn_napari.cli.train import build_config
from pfn_napari.config import load_config


def _args(*argv: str) -> argparse.Namespace:
    return build_parser().parse_args(["train", *argv])


def test_flags_and_overrides_reach_the_config(tmp_path):
    cfg = build_config(_args("--stage", "instance", "--config", "cpu-lite0", "--out", str(tmp_path),
                             "--init", "on", "--backbone-weights", "1e3",
                             "--set", "train.max_steps=7", "--set", "data.crop_size=97"))
    assert cfg.train.stage == "instance" and cfg.train.out_dir == str(tmp_path)
    assert cfg.train.init == "on" and cfg.train.backbone_weights == "1e3"  # paths stay strings
    assert cfg.train.max_steps == 7 and cfg.data.crop_size == 97
    assert cfg.model.backbone == "efficientnet_lite0" and cfg.model.num_classes == 3
    assert cfg.data.train_exclude == ""  # off unless asked (or in the paper recipes)
    got = build_config(_args("--config", "paper-vgg16", "--train-exclude", "/data/VOC2012"))
    assert got.data.train_exclude == "/data/VOC2012"
    off = build_config(_args("--config", "paper-vgg16", "--train-exclude", ""))
    assert off.data.train_exclude == ""


def test_shipped_configs_are_the_papers_recipe():
    vgg = load_config("paper-vgg16")
    t = vgg.train
    assert (vgg.model.backbone, vgg.data.crop_size, t.batch_size, t.lr, t.lr_new, t.momentum,
            t.weight_decay, t.lr_step_epochs, t.lr_gamma, t.epochs, vgg.loss.loc_weight) == \
        ("vgg16", 321, 8, 0.001, 0.01, 0.9, 0.0005, 20, 0.1, 60, 10.0)
    assert vgg.data.train.startswith("sbd:") and len(vgg.data.classes) == 20
    assert load_config("paper-alexnet").model.backbone == "alexnet"
    lite = load_config("cpu-lite0")
    assert lite.data.classes == ("disc", "square", "triangle") and lite.train.max_steps > 0


def test_resume_without_config_uses_the_stored_one(tmp_path):
    from pfn_napari.checkpoint import save_checkpoint
    from pfn_napari.model import PFNSystem, build_network

    cfg = load_config("cpu-lite0", ["train.max_steps=5", "model.count_hidden=16"])
    system = PFNSystem(build_network(cfg.model, "category"), None)
    path = save_checkpoint(tmp_path / "last.pt", system_state=system.state_dict(), config=cfg,
                           networks={"category": "category"})
    got = build_config(_args("--resume", str(path), "--set", "train.max_steps=9"))
    assert got.model == cfg.model and got.train.max_steps == 9


def test_errors_are_one_line(tmp_path, capsys):
    code = main(["train", "--stage", "instance", "--config", "cpu-lite0", "--out", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("pfn: error: ") and "--init" in err
    assert err.count("\n") == 1
    code = main(["train", "--config", "no-such-recipe"])
    err = capsys.readouterr().err
    assert code == 2 and "no-such-recipe" in err and "cpu-lite0" in err
    code = main(["train", "--resume", str(tmp_path / "missing.pt")])
    assert code == 2 and "missing.pt: checkpoint file not found" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["train", "--stage", "bogus"])

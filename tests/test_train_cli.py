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


def test_out_holding_a_run_is_refused_unless_resume_or_overwrite(tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    (out / "final.pt").write_bytes(b"a finished run")
    (out / "log.csv").write_text("step,loss\n1,0.5\n")
    code = main(["train", "--config", "cpu-lite0", "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 2 and err == (f"pfn: error: {out} already holds a training run (final.pt, "
                                 f"log.csv); pass --resume {out / 'last.pt'} to continue it, "
                                 "--overwrite to replace it, or another --out\n")
    assert (out / "final.pt").read_bytes() == b"a finished run"
    assert _args("--overwrite").overwrite and not _args().overwrite


def test_overwrite_clears_the_old_run_first(tmp_path):
    from pfn_napari.train import _claim_out_dir

    (tmp_path / "tb").mkdir()
    for name in ("final.pt", "last.pt", "log.csv", "tb/events.out.tfevents.1.host", "keep.txt"):
        (tmp_path / name).write_text("old")
    notes: list[str] = []
    _claim_out_dir(tmp_path, True, True, notes.append)
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["keep.txt", "tb"]
    assert notes == [(f"replacing the run in {tmp_path} (deleted final.pt, last.pt, log.csv and "
                      "its TensorBoard events)")]


def test_out_that_is_a_file_and_stale_temporaries(tmp_path, capsys):
    import os
    import subprocess
    import sys

    blocker = tmp_path / "file"
    blocker.write_text("x")
    code = main(["train", "--config", "cpu-lite0", "--out", str(blocker)])
    assert code == 2 and capsys.readouterr().err == (
        f"pfn: error: train.out_dir (--out) {blocker}: is a file, not a folder; pass a folder\n")
    # a .last.pt.PID.*.tmp of a process killed while saving is deleted at the next start
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True).stdout.strip()
    out = tmp_path / "run"
    out.mkdir()
    (out / f".last.pt.{dead}.k1ll3d.tmp").write_bytes(b"half a checkpoint")
    code = main(["train", "--config", "cpu-lite0", "--out", str(out),
                 "--set", "data.train=nosuchkind:x"])  # stops at the data, after the clean-up
    err = capsys.readouterr().err
    assert code == 2 and f"removed .last.pt.{dead}.k1ll3d.tmp, left by a run killed" in err
    assert os.listdir(out) == []

"""pfn train: argument -> config wiring and one-line errors (no training here)."""

from __future__ import annotations

import argparse

import numpy as np
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
    counts = build_config(_args("--stage", "counts", "--config", "cpu-demo")).train
    assert (counts.stage, counts.max_steps, counts.batch_size, counts.lr_new) == \
        ("counts", 150, 2, 0.001)  # --stage picks the recipe's section of that stage
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
    code = main(["train", "--stage", "counts", "--config", "cpu-lite0", "--out", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 2 and err == ("pfn: error: stage 'counts' continues the count head of an "
                                 "instance-stage checkpoint: pass --init runs/instance/final.pt "
                                 "(train.init)\n")
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
    from pfn_napari.run_folder import claim_out_dir

    (tmp_path / "tb").mkdir()
    for name in ("final.pt", "last.pt", "log.csv", "tb/events.out.tfevents.1.host", "keep.txt"):
        (tmp_path / name).write_text("old")
    notes: list[str] = []
    claim_out_dir(tmp_path, True, True, notes.append)
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


def _folder(root, n: int = 3, labelled: bool = True) -> str:
    """``folder:IMAGES:MASKS`` of ``n`` 40x40 photos, each mask one square (or empty)."""
    import numpy as np
    from PIL import Image

    images, masks = root / "images", root / "masks"
    images.mkdir(parents=True)
    masks.mkdir()
    for i in range(n):
        Image.fromarray(np.full((40, 40, 3), 60 * i, np.uint8)).save(images / f"p{i}.png")
        mask = np.zeros((40, 40), np.uint8)
        if labelled:
            mask[10:30, 10:30] = 1
        Image.fromarray(mask).save(masks / f"p{i}_mask.png")
    return f"folder:{images}:{masks}"


def _train_error(capsys, *argv: str) -> str:
    code = main(["train", "--no-progress", *argv])
    err = capsys.readouterr().err
    assert code == 2, err
    lines = [line for line in err.splitlines() if line.startswith("pfn: error: ")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


@pytest.mark.parametrize("override, message", [
    ("train.batch_size=0", "train.batch_size=0: in [1, 4096]"),
    ("train.lr=-1", "train.lr=-1.0: must be >= 0 (0 keeps the pre-trained layers)"),
    ("data.crop_size=130", "data.crop_size=130: must be 8k+1 so the stride-8 grid lands on "
                           "pixels 8i (e.g. 129, 321), from 9 to 2049"),
    ("data.scale_min=1.5", "data.scale_min=1.5 is above data.scale_max=1.3; the scale is drawn "
                           "from [scale_min, scale_max]"),
    ("train.max_steps=0", "train.max_steps=0 and train.epochs=0: nothing to train; set "
                          "train.max_steps or train.epochs to at least 1"),
    ("grouping.sigma=[1", "override 'grouping.sigma=[1': the value is not valid YAML (while "
                          "parsing a flow sequence expected ',' or ']', but got '<stream end>')"),
    ("crf.bi_xy=0", "crf.bi_xy=0.0: in [0.1, 10000] px"),
    ("loss.loc_weight=abc", "--set loss.loc_weight=abc: expected a number, got 'abc'"),
    ("train.amp=maybe", "--set train.amp=maybe: expected true/false, got 'maybe'"),
])
def test_bad_settings_stop_train_with_one_line(tmp_path, capsys, override, message):
    out = tmp_path / "run"
    assert _train_error(capsys, "--config", "cpu-lite0", "--out", str(out), "--set", override) \
        == f"pfn: error: {message}"
    assert not out.exists()  # refused before anything is written


def test_a_stored_bad_setting_stops_resume_with_one_line(tmp_path, capsys):
    from pfn_napari.checkpoint import save_checkpoint
    from pfn_napari.model import PFNSystem, build_network

    cfg = load_config("cpu-lite0", ["model.count_hidden=16"])
    system = PFNSystem(build_network(cfg.model, "category"), None)
    path = save_checkpoint(tmp_path / "last.pt", system_state=system.state_dict(), config=cfg,
                           networks={"category": "category"})
    assert _train_error(capsys, "--resume", str(path), "--set", "train.batch_size=0") == \
        "pfn: error: train.batch_size=0: in [1, 4096]"
    assert _train_error(capsys, "--resume", str(path), "--set", "grouping.n_init=[") \
        .startswith("pfn: error: override 'grouping.n_init=[': the value is not valid YAML")
    assert _train_error(capsys, "--resume", str(path), "--set", "train.lr=abc") == \
        "pfn: error: --set train.lr=abc: expected a number, got 'abc'"


def test_data_whose_classes_are_none_of_the_config_is_refused_before_training(tmp_path, capsys):
    """A person folder with the shapes recipe used to train and report mIoU 100.00."""
    spec = _folder(tmp_path) + ":person"
    out = tmp_path / "run"
    assert _train_error(capsys, "--config", "cpu-lite0", "--out", str(out),
                        "--set", f"data.train={spec}", "--set", "data.train_split=all",
                        "--set", "data.classes=[disc,square,triangle]") == (
        f"pfn: error: data.train={spec!r}: its classes ['person'] are none of the config's "
        "data.classes ['disc', 'square', 'triangle']; to train on them: "
        "--set data.classes=[person] --set model.num_classes=1")
    assert not (out / "final.pt").exists() and not (out / "log.csv").exists()
    # with the suggested fix the training data passes; a shapes val set is then refused
    assert _train_error(capsys, "--config", "cpu-lite0", "--out", str(out),
                        "--set", f"data.train={spec}", "--set", "data.train_split=all",
                        "--set", "data.classes=[person]", "--set", "model.num_classes=1",
                        "--set", "train.batch_size=2", "--set", "data.val=synthetic:20@1") == (
        "pfn: error: data.val='synthetic:20@1': its classes ['disc', 'square', 'triangle'] are "
        "none of the config's data.classes ['person']; pass a data.val labelled with the "
        "classes of data.train")


def test_data_without_a_labelled_object_is_refused_before_training(tmp_path, capsys):
    spec = _folder(tmp_path / "empty", labelled=False) + ":disc"
    out = tmp_path / "run"
    assert _train_error(capsys, "--config", "cpu-lite0", "--out", str(out),
                        "--set", f"data.train={spec}", "--set", "data.train_split=all",
                        "--set", "data.classes=[disc,square,triangle]") == (
        f"pfn: error: data.train={spec!r} (split 'all'): none of its 3 images has a labelled "
        "object of data.classes ['disc', 'square', 'triangle']; check its masks or annotations")
    assert _train_error(capsys, "--config", "cpu-lite0", "--out", str(out),
                        "--set", f"data.val={spec}", "--set", "data.val_split=all") == (
        f"pfn: error: data.val={spec!r} (split 'all'): none of its 3 images has a labelled "
        "object of data.classes ['disc', 'square', 'triangle']; check its masks or annotations")
    assert not (out / "final.pt").exists() and not (out / "log.csv").exists()


def test_a_second_run_into_a_busy_out_is_refused_naming_the_pid(tmp_path, capsys):
    """Two fresh runs into one --out used to both run, interleaving their logs."""
    import os

    from pfn_napari.run_folder import LOCK, out_dir_lock

    out = tmp_path / "run"
    with out_dir_lock(out, True):  # another run holds the folder (here: this process)
        assert (out / LOCK).read_text() == f"{os.getpid()}\n"
        busy = (f"pfn: error: train.out_dir (--out) {out}: another `pfn train` or "
                f"`pfn finetune` (pid {os.getpid()}) is writing to this folder; wait "
                "for it to finish or pass another --out")
        assert _train_error(capsys, "--config", "cpu-lite0", "--out", str(out)) == busy
        assert _train_error(capsys, "--config", "cpu-lite0", "--out", str(out),
                            "--overwrite") == busy
    assert not (out / LOCK).exists()  # released and removed at the end of the run


def test_the_lock_of_a_killed_run_is_taken_over(tmp_path, capsys):
    import signal
    import subprocess
    import sys

    from pfn_napari.run_folder import LOCK

    out = tmp_path / "run"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from pathlib import Path; "
         "from pfn_napari.run_folder import out_dir_lock\n"
         f"with out_dir_lock(Path({str(out)!r}), True):\n"
         "    print('locked', flush=True); time.sleep(120)"],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        assert f"another `pfn train` or `pfn finetune` (pid {holder.pid})" in _train_error(
            capsys, "--config", "cpu-lite0", "--out", str(out))
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    assert (out / LOCK).read_text() == f"{holder.pid}\n"  # a kill -9 leaves the file
    # the next run takes it over (and stops at its bad data spec, after the lock)
    assert _train_error(capsys, "--config", "cpu-lite0", "--out", str(out),
                        "--set", "data.train=nosuchkind:x").startswith(
        "pfn: error: dataset spec 'nosuchkind:x'")
    assert not (out / LOCK).exists()


def _folder_of_people(root, n: int = 5):
    """``n`` 16 x 16 photos, each with one person (masks 0/1), Penn-Fudan style."""
    from PIL import Image

    images, masks = root / "PNGImages", root / "PedMasks"
    images.mkdir(parents=True)
    masks.mkdir()
    for i in range(n):
        Image.fromarray(np.full((16, 16, 3), 40 * i, np.uint8)).save(images / f"p{i}.png")
        m = np.zeros((16, 16), np.uint8)
        m[4:12, 4:8] = 1
        Image.fromarray(m).save(masks / f"p{i}_mask.png")
    return f"folder:{images}:{masks}:person"


def test_train_takes_classes_and_validation_from_the_users_data(tmp_path, capsys):
    """Issue 28: `--set data.train=folder:...:person` alone trains on [person] and validates on
    the held-back every 5th image of the same data, each said in one line."""
    from pfn_napari.cli import build_parser
    from pfn_napari.cli.train import build_config

    spec = _folder_of_people(tmp_path)
    args = build_parser().parse_args(["train", "--stage", "category", "--config", "cpu-lite0",
                                      "--set", f"data.train={spec}", "--out", str(tmp_path / "o")])
    cfg = build_config(args)
    assert cfg.data.classes == ("person",) and cfg.model.num_classes == 1
    assert (cfg.data.val, cfg.data.val_split, cfg.data.train_split) == (spec, "val", "train")
    err = capsys.readouterr().err
    assert "pfn train: data.classes=['person'] and model.num_classes=1, from the training data" in err
    assert "pfn train: validation on the held-back images of the training data" in err
    from pfn_napari.data import open_dataset

    assert open_dataset(cfg.data.val, "val").image_ids == ["p4"]
    assert open_dataset(spec, "train").image_ids == ["p0", "p1", "p2", "p3"]
    # what the user sets is kept
    args = build_parser().parse_args(["train", "--config", "cpu-lite0", "--set",
                                      f"data.train={spec}", "--set", "data.val=synthetic:4",
                                      "--set", "data.classes=[person,horse]", "--set",
                                      "model.num_classes=2"])
    cfg = build_config(args)
    assert cfg.data.classes == ("person", "horse") and cfg.data.val == "synthetic:4"
    # a run that continues a checkpoint (--init) takes the checkpoint's classes, not the data's
    from pfn_napari.checkpoint import save_checkpoint
    from pfn_napari.model import PFNSystem, build_network

    own = load_config("cpu-lite0", ["data.classes=[cat,person]", "model.num_classes=2",
                                    "model.count_hidden=16"])
    init = save_checkpoint(tmp_path / "init.pt", config=own, networks={"category": "category"},
                           system_state=PFNSystem(build_network(own.model, "category"),
                                                  None).state_dict())
    for stage in ("instance", "counts", "category"):
        cfg = build_config(build_parser().parse_args(
            ["train", "--stage", stage, "--config", "cpu-lite0", "--init", str(init), "--set",
             f"data.train={spec}"]))
        assert cfg.data.classes == ("cat", "person") and cfg.model.num_classes == 2
    assert f"from the --init checkpoint {init}" in capsys.readouterr().err
    # the recipe's own data: nothing changes
    cfg = build_config(build_parser().parse_args(["train", "--config", "cpu-lite0"]))
    assert cfg.data.classes == ("disc", "square", "triangle") and cfg.data.val.startswith("synthetic")

"""`pfn finetune`: a run from the command line, and its one-line errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from pfn_napari.checkpoint import save_weights
from pfn_napari.cli import main
from pfn_napari.config import load_config
from pfn_napari.data.corrections import correction_spec, save_correction
from pfn_napari.model import build_system

RECIPE = "data: {crop_size: 65, num_workers: 0, copy_paste: 0.0}\ntrain: {batch_size: 2}\n"


@pytest.fixture
def setup(tmp_path: Path) -> tuple[Path, Path, str]:
    cfg = load_config("cpu-lite0", ["model.backbone=alexnet", "model.streams=[pool3,fc7]",
                                    "model.fc7_channels=32", "model.count_hidden=16"])
    torch.manual_seed(0)
    weights = save_weights(tmp_path / "tiny.pt", build_system(cfg.model, "instance").eval(), cfg)
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(RECIPE)
    lab = np.zeros((48, 48), np.int64)
    lab[8:30, 8:30] = 1
    for i in range(2):
        save_correction(tmp_path / "set", np.full((48, 48, 3), 60 * i, np.uint8), lab,
                        {1: "kayak"}, f"k{i}")
    return weights, recipe, correction_spec(tmp_path / "set")


def test_pfn_finetune_writes_final_and_card(setup, tmp_path, capsys) -> None:
    weights, recipe, spec = setup
    out = tmp_path / "out"
    code = main(["finetune", str(weights), "--data", spec, "--minutes", "5", "--max-steps", "3",
                 "--out", str(out), "--recipe", str(recipe), "--no-progress"])
    printed = capsys.readouterr().out.splitlines()
    assert code == 0
    assert printed[-2] == "3 steps in 0.0 min; taught kayak (new: kayak); the model has 4 classes"
    assert printed[-1] == str(out / "final.pt")
    assert "| new classes | kayak |" in (out / "README.md").read_text()
    assert main(["predict", str(out / "final.pt"), str(tmp_path / "set" / "images" / "k1.png"),
                 "--out", str(tmp_path / "pred")]) == 0


def test_pfn_finetune_errors_are_one_line(setup, tmp_path, capsys) -> None:
    weights, recipe, spec = setup
    common = ["--out", str(tmp_path / "o"), "--recipe", str(recipe), "--no-progress"]
    assert main(["finetune", str(weights), "--data", spec, "--classes", "boat"] + common) == 2
    err = capsys.readouterr().err.strip()
    assert err == ("pfn: error: the data labels 'kayak', which is neither in --classes ['boat'] "
                   "nor a class of the model; add it to --classes or leave --classes out "
                   "(the data's classes are then used)")
    assert main(["finetune", str(tmp_path / "nope.pt"), "--data", spec] + common) == 2
    assert capsys.readouterr().err.strip() == \
        f"pfn: error: {tmp_path / 'nope.pt'}: checkpoint file not found"
    assert main(["finetune", str(weights), "--data", spec, "--resume"] + common) == 2
    assert "nothing to resume (no last.pt in --out)" in capsys.readouterr().err


def test_pfn_finetune_says_how_much_one_measured_object_weighs(setup, tmp_path, capsys) -> None:
    weights, recipe, spec = setup
    code = main(["finetune", str(weights), "--data", spec, "--val", spec, "--max-steps", "1",
                 "--out", str(tmp_path / "out"), "--recipe", str(recipe), "--no-progress"])
    printed = capsys.readouterr().out.splitlines()
    assert code == 0
    assert printed[0].startswith("before: AP^r@0.5 ") and printed[1].startswith("after: ")
    # two photos, one kayak each: one kayak more or less is half of AP^r@0.5
    assert printed[2] == ("measured on 2 images with 2 objects: one found or missed moves "
                          "AP^r@0.5 by about 50 points")

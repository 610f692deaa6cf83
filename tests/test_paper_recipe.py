"""The paper's recipe (config ``paper-vgg16``) run for one step per stage on the CPU.

The GPU reproduction (docs/paper-recipe.md) is too long for CI; this checks that its exact
config, its two commands' code path and the model it produces work, on tiny synthetic data.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np
import pytest

from pfn_napari.config import load_config

TINY = ["data.train=synthetic:2", "data.val=synthetic:1@1", "data.classes=[disc,square,triangle]",
        "model.num_classes=3", "data.crop_size=65", "train.batch_size=1", "train.max_steps=1",
        "data.num_workers=0", "train.val_every=0", "train.device=cpu"]


def test_paper_config_holds_the_papers_numbers():
    cfg = load_config("paper-vgg16")
    assert cfg.model.backbone == "vgg16" and cfg.model.encoding == "box6"
    assert cfg.model.streams == ("input", "pool1", "pool2", "pool3", "fc7")
    assert cfg.model.coord_maps and cfg.model.fusion == "concat"
    assert (cfg.train.batch_size, cfg.train.lr, cfg.train.lr_new) == (8, 1e-3, 1e-2)
    assert (cfg.train.momentum, cfg.train.weight_decay) == (0.9, 5e-4)
    assert (cfg.train.lr_step_epochs, cfg.train.epochs, cfg.train.lr_gamma) == (20, 60, 0.1)
    assert cfg.loss.loc_weight == 10.0 and cfg.data.crop_size == 321
    g = cfg.grouping
    assert (g.method, g.sigma, g.tau, g.min_size_frac, g.n_init) == ("spectral", 0.5, 0.5, 0.001, 20)


@pytest.mark.parametrize("name", ["paper-vgg16", "paper-alexnet"])
def test_paper_configs_follow_the_paper_where_the_defaults_do_not(name):
    """Issue 14, items 5, 7, 10: the dense CRF at test time, a full schedule per phase of
    'separate fine-tuning', VOC 2012 val images kept out of SBD training data."""
    cfg = load_config(name)
    assert cfg.crf.enabled and (cfg.crf.iterations, cfg.crf.bi_xy) == (10, 121.0)
    assert cfg.train.separate_schedule == "full" and cfg.train.count_finetune == "joint"
    assert cfg.data.train_exclude == "val" and cfg.data.val.startswith("voc:")


def test_new_choices_are_checked_with_the_bad_value_named():
    from pfn_napari.config import ConfigError

    assert load_config(None, ["model.fusion=plain_sum"]).model.fusion == "plain_sum"
    with pytest.raises(ConfigError, match="model.fusion='mean'"):
        load_config(None, ["model.fusion=mean"])
    with pytest.raises(ConfigError, match="train.separate_schedule='half': 'split' or 'full'"):
        load_config(None, ["train.separate_schedule=half"])


@pytest.mark.slow
def test_paper_recipe_one_step_per_stage(tmp_path):
    from pfn_napari.inference import load_model
    from pfn_napari.predictor import predict
    from pfn_napari.train import train

    cat = train(load_config("paper-vgg16", TINY + ["train.stage=category",
                                                   f"train.out_dir={tmp_path / 'cat'}"]),
                progress=False)
    inst = train(load_config("paper-vgg16", TINY + ["train.stage=instance", f"train.init={cat}",
                                                    f"train.out_dir={tmp_path / 'inst'}"]),
                 progress=False)
    _check_the_steps(cat, inst)
    model = load_model(inst, device="cpu")
    assert model.config.model.backbone == "vgg16"
    image = np.full((40, 56, 3), 120, np.uint8)
    out = predict(model, image)
    assert out.masks.shape[1:] == (40, 56)
    assert np.all((out.classes >= 1) & (out.classes <= 3))


def _log_row(run: Path) -> dict[str, float]:
    """The one row of a one-step run's log.csv."""
    with open(run.parent / "log.csv", newline="") as fh:
        (row,) = list(csv.DictReader(fh))
    return {k: float(v) for k, v in row.items()}


def _check_the_steps(cat: Path, inst: Path) -> None:
    """What each stage of the recipe trained, not only that it ran: the category stage's loss
    is the segmentation loss alone; the instance stage's is the paper's L = 10 Lo + Ln with
    Lo summed over the five streams and the fused output (deep supervision); the instance
    checkpoint carries the category network of ``train.init`` unchanged."""
    import torch

    from pfn_napari.checkpoint import load_checkpoint

    row = _log_row(cat)
    assert row["step"] == 1 and set(row) >= {"loss", "seg"} and "loc" not in row
    assert row["loss"] == pytest.approx(row["seg"], rel=1e-5) and math.isfinite(row["loss"])
    row = _log_row(inst)
    names = ("input", "pool1", "pool2", "pool3", "fc7", "fused")
    assert "seg" not in row and row["step"] == 1
    assert row["loc"] == pytest.approx(sum(row[f"loc/{n}"] for n in names), rel=1e-4)
    assert row["loss"] == pytest.approx(10.0 * row["loc"] + row["count"], rel=1e-4)
    cat_system, _, cat_meta = load_checkpoint(cat)
    system, cfg, meta = load_checkpoint(inst)
    assert (cat_meta["step"], meta["step"]) == (1, 1)
    assert cfg.model.streams == names[:5] and cfg.loss.loc_weight == 10.0
    before, after = cat_system.category.state_dict(), system.category.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)

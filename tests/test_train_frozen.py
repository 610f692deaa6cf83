"""train.py: ``train.frozen`` keeps parameters fixed (no backward through early layers)."""

from __future__ import annotations

import pytest
import torch

from pfn_napari.checkpoint import load_checkpoint
from pfn_napari.config import load_config
from pfn_napari.errors import PFNError
from pfn_napari.model import build_network, load_backbone_weights
from pfn_napari.train import train

TINY = ["model.backbone=efficientnet_lite0", "model.num_classes=3",
        "data.classes=[disc,square,triangle]", "data.train=synthetic:4:72",
        "data.val=synthetic:1@1:65", "data.crop_size=65", "train.batch_size=2",
        "train.device=cpu", "train.max_steps=2", "train.lr=0.05", "train.lr_new=0.05"]
EARLY = ["backbone._conv_stem", "backbone._blocks.0."]


def test_frozen_prefixes_stay_at_their_start(tmp_path):
    cfg = load_config(None, TINY + [f"train.out_dir={tmp_path / 'run'}",
                                    f"train.frozen={','.join(EARLY)}"])
    start = build_network(cfg.model, "category")
    load_backbone_weights(start)
    ckpt = train(cfg, progress=False)
    system, _, _ = load_checkpoint(ckpt)
    after = dict(system.category.named_parameters())
    before = dict(start.named_parameters())
    frozen = [n for n in before if n.startswith(tuple(EARLY))]
    assert frozen and all(torch.equal(before[n], after[n]) for n in frozen)
    later = [n for n in before if n.startswith("backbone._blocks.10.")]  # ImageNet, not frozen
    assert later and any(not torch.equal(before[n], after[n]) for n in later)


def test_frozen_prefix_matching_nothing_is_an_error(tmp_path):
    cfg = load_config(None, TINY + [f"train.out_dir={tmp_path / 'run'}",
                                    "train.frozen=backbone.nothing_here"])
    with pytest.raises(PFNError, match="no parameter"):
        train(cfg, progress=False)

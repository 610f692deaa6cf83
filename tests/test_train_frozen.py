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


def test_count_head_fine_tuning_continues_an_instance_checkpoint(tmp_path):
    """Stage 2 once, then a run initialised from its checkpoint with everything but the count
    head frozen: the locations stay, the count head moves."""
    inst = ["train.stage=instance", "model.count_head=density", "model.stream_channels=8",
            "model.count_channels=8", "model.count_hidden=16"]
    cat = train(load_config(None, TINY + [f"train.out_dir={tmp_path / 'cat'}"]), progress=False)
    first = train(load_config(None, TINY + inst + [f"train.out_dir={tmp_path / 'inst'}",
                                                   f"train.init={cat}"]), progress=False)
    second = train(load_config(None, TINY + inst + [
        f"train.out_dir={tmp_path / 'counts'}", f"train.init={first}", "model.count_gate=true",
        "train.frozen=backbone.,location_head.", "train.lr_new=0.001", "train.grad_clip=1"]),
        progress=False)
    a = dict(load_checkpoint(first)[0].instance.named_parameters())
    b = dict(load_checkpoint(second)[0].instance.named_parameters())
    assert all(torch.equal(a[n], b[n]) for n in a if not n.startswith("count_head."))
    assert any(not torch.equal(a[n], b[n]) for n in a if n.startswith("count_head."))
    other = load_config(None, TINY + ["train.stage=instance", f"train.init={first}",
                                      f"train.out_dir={tmp_path / 'bad'}"])
    with pytest.raises(PFNError, match="differs from this run"):
        train(other, progress=False)

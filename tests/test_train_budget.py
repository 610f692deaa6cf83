"""``train.max_minutes``: a fixed wall-clock budget stops the run cleanly (log row, final.pt)."""

from __future__ import annotations

import csv

from pfn_napari.checkpoint import read_checkpoint
from pfn_napari.config import load_config
from pfn_napari.train import train


def test_max_minutes_stops_after_the_budget(tmp_path):
    cfg = load_config("cpu-lite0", ["data.train=synthetic:4", "data.crop_size=65", "train.batch_size=2",
                                    "train.max_steps=50", "train.max_minutes=0.0001",
                                    "train.log_every=10", "train.checkpoint_every=0",
                                    f"train.out_dir={tmp_path}", "train.device=cpu"])
    final = train(cfg, progress=False)
    rows = list(csv.DictReader(open(tmp_path / "log.csv", newline="")))
    assert [int(r["step"]) for r in rows] == [1]  # stopped after the first step, and logged it
    assert read_checkpoint(final)["step"] == 1

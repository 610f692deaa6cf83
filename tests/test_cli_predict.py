"""``pfn predict``: files per image, predictions.json readable by ``pfn evaluate``, bad images."""

from __future__ import annotations

import json

import numpy as np
import torch
from PIL import Image

from pfn_napari.checkpoint import save_weights
from pfn_napari.cli import main
from pfn_napari.config import load_config
from pfn_napari.model import build_system


def test_predict_writes_files_and_skips_a_bad_image(tmp_path):
    cfg = load_config("cpu-lite0", ["model.backbone=alexnet", "model.streams=[pool3,fc7]",
                                    "model.fc7_channels=32", "model.count_hidden=16"])
    torch.manual_seed(0)
    weights = save_weights(tmp_path / "tiny.pt", build_system(cfg.model, "instance").eval(), cfg)
    images = tmp_path / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (40, 56, 3), dtype=np.uint8)).save(images / "a.png")
    (images / "b.jpg").write_text("not an image")
    out = tmp_path / "out"
    rc = main(["predict", str(weights), str(images), "--out", str(out), "--arrows", "--device", "cpu"])
    assert rc == 1  # one image failed, the other was written
    for name in ("a_instances.png", "a_classes.png", "a_overlay.png", "a_arrows.png"):
        assert (out / name).is_file(), name
    assert np.asarray(Image.open(out / "a_instances.png")).shape == (40, 56)
    results = json.loads((out / "predictions.json").read_text())
    assert all(r["image_id"] == "a" and r["segmentation"]["size"] == [40, 56] for r in results)
    assert not list(out.glob("b_*"))

"""``pfn predict``: files per image, predictions.json readable by ``pfn evaluate``, bad images."""

from __future__ import annotations

import json
import os
import re

import numpy as np
import torch
from PIL import Image

from pfn_napari.checkpoint import save_weights
from pfn_napari.cli import main
from pfn_napari.cli.predict import lock_output
from pfn_napari.config import load_config
from pfn_napari.model import build_system


def tiny_weights(tmp_path):
    cfg = load_config("cpu-lite0", ["model.backbone=alexnet", "model.streams=[pool3,fc7]",
                                    "model.fc7_channels=32", "model.count_hidden=16"])
    torch.manual_seed(0)
    return save_weights(tmp_path / "tiny.pt", build_system(cfg.model, "instance").eval(), cfg)


def test_predict_writes_files_and_skips_a_bad_image(tmp_path):
    weights = tiny_weights(tmp_path)
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


def test_predict_goes_on_after_an_image_too_large_or_any_other_failure(tmp_path, monkeypatch,
                                                                         capsys):
    """A decompression bomb (here: Pillow's limit lowered to 1000 pixels) or an unexpected
    error on one image is reported like a bad image; the later images and predictions.json
    are still written."""
    import pfn_napari.data as data

    weights = tiny_weights(tmp_path)
    images = tmp_path / "images"
    images.mkdir()
    for name, shape in (("a_big.png", (40, 56, 3)), ("b_oom.png", (24, 24, 3)),
                        ("c.png", (24, 24, 3))):
        Image.fromarray(np.full(shape, 120, np.uint8)).save(images / name)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # 40 x 56 > 2 x 1000: a "bomb"
    real = data.read_image

    def read(path, **kwargs):
        if path.name == "b_oom.png":
            raise MemoryError("Unable to allocate 11.2 GiB")
        return real(path, **kwargs)

    monkeypatch.setattr(data, "read_image", read)
    out = tmp_path / "out"
    assert main(["predict", str(weights), str(images), "--out", str(out), "--device", "cpu"]) == 1
    err = capsys.readouterr().err
    assert "a_big.png: too large to read (Image size (2240 pixels) exceeds limit of 2000" in err
    assert "b_oom.png: MemoryError: Unable to allocate 11.2 GiB" in err
    assert (out / "c_instances.png").is_file() and (out / "predictions.json").is_file()
    # a step after reading that fails with its own message (no file in it): the file is named
    from pfn_napari.errors import PFNError
    from pfn_napari.grouping import Grouper

    def fail(self, cfg, count_override=None):
        raise PFNError("grouping.prior_shape='grabcut' needs OpenCV")

    monkeypatch.setattr(Grouper, "run", fail)
    assert main(["predict", str(weights), str(images / "c.png"), "--out", str(tmp_path / "o2"),
                 "--device", "cpu"]) == 1
    assert f"{images / 'c.png'}: grouping.prior_shape='grabcut' needs OpenCV" in \
        capsys.readouterr().err


def test_predict_keeps_other_runs_predictions_and_never_writes_an_empty_file(tmp_path, capsys):
    weights = tiny_weights(tmp_path)
    images = tmp_path / "images"
    images.mkdir()
    Image.fromarray(np.full((24, 32, 3), 200, np.uint8)).save(images / "a.png")
    (images / "bad.jpg").write_text("not an image")
    out = tmp_path / "out"
    out.mkdir()
    seg = {"size": [24, 32], "counts": "0`<"}
    previous = [{"image_id": "x", "category_id": 1, "segmentation": seg, "score": 0.9},
                {"image_id": "a", "category_id": 2, "segmentation": seg, "score": 0.8}]
    (out / "predictions.json").write_text(json.dumps(previous))
    # every image fails: the existing file is left as it was
    assert main(["predict", str(weights), str(images / "bad.jpg"), "--out", str(out),
                 "--device", "cpu"]) == 1
    assert "none of the 1 images could be segmented; no predictions.json written; the existing" \
        in capsys.readouterr().err
    assert json.loads((out / "predictions.json").read_text()) == previous
    # image a again: its old entry is replaced, image x (another run's) is kept
    assert main(["predict", str(weights), str(images / "a.png"), "--out", str(out),
                 "--device", "cpu"]) == 0
    captured = capsys.readouterr()
    assert "kept 1 entries of 1 other image(s) already in predictions.json" in captured.out
    rate = re.search(r"\n([0-9.]+) images/s in all \(([0-9.]+) s\); per image: networks "
                     r"([0-9.]+) s, grouping ([0-9.]+) s", captured.out)
    assert rate and float(rate.group(1)) > 0 and float(rate.group(3)) > 0, captured.out
    assert re.search(r"[0-9.]+ img/s, a\.png", captured.err)  # the progress bar's rate
    merged = json.loads((out / "predictions.json").read_text())
    assert merged[0] == previous[0] and all(e["image_id"] == "a" for e in merged[1:])
    assert not [n for n in os.listdir(out) if n.endswith(".tmp")]


def test_predict_refuses_a_folder_another_run_is_writing_to_or_a_file(tmp_path, capsys):
    weights = tiny_weights(tmp_path)
    image = tmp_path / "a.png"
    Image.fromarray(np.full((24, 32, 3), 200, np.uint8)).save(image)
    out = tmp_path / "out"
    out.mkdir()
    held = lock_output(out)  # another run in progress
    try:
        assert main(["predict", str(weights), str(image), "--out", str(out)]) == 2
    finally:
        held.close()
    assert "another `pfn predict` is writing to this folder" in capsys.readouterr().err
    assert not (out / "predictions.json").exists()
    assert main(["predict", str(weights), str(image), "--out", str(image)]) == 2
    assert f"pfn: error: --out {image}: is a file, not a folder" in capsys.readouterr().err
    (out / "predictions.json").write_text("{}")
    assert main(["predict", str(weights), str(image), "--out", str(out)]) == 2
    assert "predictions.json: exists but is not a predictions list" in capsys.readouterr().err

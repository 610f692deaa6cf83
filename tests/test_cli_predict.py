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


def _photo(path, h, w, value=120):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((h, w, 3), value, np.uint8)).save(path)
    return path


def test_inputs_sharing_a_stem_get_their_own_ids_and_files(tmp_path, capsys):
    """a/photo.png, a/photo.bmp and b/photo.png: three ids, three sets of PNGs, each of its
    own size; images.json says which file each id came from. A later run gives a file its
    id again, and a new file whose stem is an earlier file's id gets another."""
    weights = tiny_weights(tmp_path)
    pics = tmp_path / "pics"
    a_png = _photo(pics / "a" / "photo.png", 24, 32)
    a_bmp = _photo(pics / "a" / "photo.bmp", 32, 24)
    b_png = _photo(pics / "b" / "photo.png", 40, 48)
    out = tmp_path / "out"
    assert main(["predict", str(weights), str(pics / "a"), str(b_png), "--out", str(out),
                 "--device", "cpu"]) == 0
    assert "wrote 3 of 3 images" in capsys.readouterr().out
    sizes = {"a_photo_bmp": (32, 24), "a_photo_png": (24, 32), "b_photo": (40, 48)}
    for image_id, size in sizes.items():
        assert np.asarray(Image.open(out / f"{image_id}_instances.png")).shape == size
    assert not (out / "photo_instances.png").exists()
    mapping = json.loads((out / "images.json").read_text())
    assert {e["image_id"]: e["file"] for e in mapping} == {
        "a_photo_bmp": str(a_bmp.resolve()), "a_photo_png": str(a_png.resolve()),
        "b_photo": str(b_png.resolve())}
    # b/photo.png alone: the same id as before (not "photo"), its entry replaced, not doubled
    assert main(["predict", str(weights), str(b_png), "--out", str(out), "--device", "cpu"]) == 0
    mapping = json.loads((out / "images.json").read_text())
    assert sorted(e["image_id"] for e in mapping) == sorted(sizes)
    # a new file c/b_photo.png: "b_photo" belongs to b/photo.png, which still exists
    c_png = _photo(pics / "c" / "b_photo.png", 16, 24)
    assert main(["predict", str(weights), str(c_png), "--out", str(out), "--device", "cpu"]) == 0
    assert np.asarray(Image.open(out / "b_photo_instances.png")).shape == (40, 48)
    assert np.asarray(Image.open(out / "b_photo_2_instances.png")).shape == (16, 24)


def test_image_ids_rules(tmp_path):
    from pfn_napari.cli.predict import image_ids

    x, y = tmp_path / "x", tmp_path / "y"
    paths = [x / "photo.jpg", x / "Photo.png", y / "photo.jpg", y / "cat.jpg"]
    assert image_ids(paths) == ["x_photo_jpg", "x_Photo_png", "y_photo", "cat"]
    assert image_ids([tmp_path / "cat.jpg"], reserved={"CAT"}) == ["cat_2"]
    known = {os.path.realpath(paths[3]): "kitty"}
    assert image_ids(paths[3:], reserved={"kitty"}, known=known) == ["kitty"]


def test_ctrl_c_writes_what_is_finished_and_resume_does_the_rest(tmp_path, monkeypatch, capsys):
    from pfn_napari.predictor import Predictor

    weights = tiny_weights(tmp_path)
    images = tmp_path / "images"
    for name in ("a", "b", "c"):
        _photo(images / f"{name}.png", 24, 32)
    out = tmp_path / "out"
    real, seen = Predictor.predict, []

    def predict(self, image, *args, **kwargs):
        seen.append(kwargs["image_id"])
        if kwargs["image_id"] == "b":
            raise KeyboardInterrupt
        return real(self, image, *args, **kwargs)

    monkeypatch.setattr(Predictor, "predict", predict)
    assert main(["predict", str(weights), str(images), "--out", str(out), "--device", "cpu"]) == 130
    err = capsys.readouterr().err
    assert "pfn: interrupted after 1 of 3 images; their results are in" in err
    assert [e["image_id"] for e in json.loads((out / "images.json").read_text())] == ["a"]
    assert isinstance(json.loads((out / "predictions.json").read_text()), list)
    monkeypatch.setattr(Predictor, "predict", real)
    seen.clear()
    assert main(["predict", str(weights), str(images), "--out", str(out), "--device", "cpu",
                 "--resume"]) == 0
    assert "--resume: 1 image(s) already in" in capsys.readouterr().out
    assert [e["image_id"] for e in json.loads((out / "images.json").read_text())] == ["a", "b", "c"]


def test_a_category_stage_checkpoint_is_refused_before_the_first_image(tmp_path, monkeypatch,
                                                                       capsys):
    from pfn_napari import inference

    cfg = load_config("cpu-lite0", ["model.backbone=alexnet", "model.fc7_channels=32"])
    weights = save_weights(tmp_path / "cat.pt", build_system(cfg.model, "category").eval(), cfg)
    images = tmp_path / "images"
    for name in ("a", "b"):
        _photo(images / f"{name}.png", 24, 32)
    calls = []
    real = inference.run_network
    monkeypatch.setattr(inference, "run_network", lambda *a, **k: calls.append(1) or real(*a, **k))
    out = tmp_path / "out"
    assert main(["predict", str(weights), str(images), "--out", str(out), "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert err == (f"pfn: error: {weights}: this checkpoint holds only the category network "
                   "(stage 1); pfn predict needs a stage-2 (instance) or unified checkpoint\n")
    assert calls == [] and not out.exists()


def test_odd_things_in_an_input_folder_are_left_out(tmp_path):
    """Hidden files, a link to nothing, a link to itself, two links in a circle (glob's
    ``**`` would follow them for ever), a folder named like an image and the outputs of an
    earlier run into that folder: only the photo is read, and the run's own outputs are not
    read back by the next run."""
    import signal

    from pfn_napari.cli.predict import collect_images

    weights = tiny_weights(tmp_path)
    images = tmp_path / "images"
    _photo(images / "a.png", 24, 32)
    _photo(images / ".hidden.png", 24, 32)
    (images / "._a.png").write_bytes(b"\0\5\26\7")  # macOS resource fork
    (images / "gone.png").symlink_to(tmp_path / "nowhere.png")
    (images / "self.png").symlink_to(images / "self.png")
    (images / "dir.png").mkdir()
    (images / "sub").mkdir()
    (images / "sub" / "up1").symlink_to(images)
    (images / "sub" / "up2").symlink_to(images)
    signal.alarm(30)  # a hang is a failure
    try:
        assert collect_images([str(images)]) == [images / "a.png"]
        assert collect_images([str(images / "**" / "*.png")]) == [images / "a.png"]
    finally:
        signal.alarm(0)
    assert main(["predict", str(weights), str(images), "--out", str(images), "--arrows",
                 "--device", "cpu"]) == 0
    assert (images / "a_overlay.png").is_file()
    assert collect_images([str(images)]) == [images / "a.png"]
    assert collect_images([str(images / "*.png")]) == [images / "a.png"]
    assert main(["predict", str(weights), str(images), "--out", str(images),
                 "--device", "cpu"]) == 0
    assert [e["image_id"] for e in json.loads((images / "images.json").read_text())] == ["a"]


def test_a_photo_is_segmented_as_its_exif_orientation_shows_it(tmp_path):
    weights = tiny_weights(tmp_path)
    stored = np.zeros((24, 40, 3), np.uint8)
    stored[:, 20:] = 255  # left half dark, right half bright, 40 wide and 24 high as stored
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to show": a phone held upright
    photo = tmp_path / "phone.jpg"
    Image.fromarray(stored).save(photo, exif=exif, quality=95)
    out = tmp_path / "out"
    assert main(["predict", str(weights), str(photo), "--out", str(out), "--device", "cpu"]) == 0
    assert np.asarray(Image.open(out / "phone_instances.png")).shape == (40, 24)
    assert json.loads((out / "images.json").read_text())[0]["file"] == str(photo)


def test_a_bad_pfn_max_side_is_one_line(tmp_path, monkeypatch, capsys):
    weights = tiny_weights(tmp_path)
    photo = _photo(tmp_path / "a.png", 24, 32)
    for value in ("0", "-5", "abc", "63"):
        monkeypatch.setenv("PFN_MAX_SIDE", value)
        assert main(["predict", str(weights), str(photo), "--out", str(tmp_path / "o"),
                     "--device", "cpu"]) == 2
        assert capsys.readouterr().err == (
            f"pfn: error: PFN_MAX_SIDE={value!r}: expected an integer from 64 to 32768 (the "
            "longest image side the networks see, in pixels; unset: 1024)\n")
    assert not (tmp_path / "o").exists()


def test_an_output_that_would_replace_an_input_is_refused(tmp_path, capsys):
    weights = tiny_weights(tmp_path)
    images = tmp_path / "images"
    _photo(images / "a.png", 24, 32)
    photo = _photo(images / "a_overlay.png", 24, 32, value=7)  # a photo, named unluckily
    assert main(["predict", str(weights), str(images), "--out", str(images), "--device", "cpu"]) == 2
    assert capsys.readouterr().err == (f"pfn: error: --out {images}: the output a_overlay.png "
                                       f"would replace the input {photo}; pass another --out\n")
    assert np.asarray(Image.open(photo)).max() == 7

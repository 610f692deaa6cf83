"""inference: padding, location rescaling, image conversion, size limits, model loading."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from pfn_napari import inference
from pfn_napari.checkpoint import save_weights
from pfn_napari.config import load_config
from pfn_napari.errors import CheckpointError, PFNError
from pfn_napari.model import build_system
from pfn_napari.structures import grid_size


@pytest.fixture(scope="module")
def tiny_model_path(tmp_path_factory):
    cfg = load_config("cpu-lite0", ["model.backbone=alexnet", "model.streams=[pool3,fc7]",
                                    "model.fc7_channels=32", "model.count_hidden=16"])
    torch.manual_seed(0)
    system = build_system(cfg.model, "instance").eval()
    return save_weights(tmp_path_factory.mktemp("w") / "tiny.pt", system, cfg)


def test_location_scale_undoes_the_padding():
    f = inference.location_scale("box6", (40, 56), (41, 57))  # (6, 1, 1)
    assert f.shape == (6, 1, 1)
    np.testing.assert_allclose(f.ravel(), [57 / 56, 41 / 40] * 3)
    f2 = inference.location_scale("center_wh4", (40, 56), (41, 57)).ravel()
    np.testing.assert_allclose(f2, [57 / 56, 41 / 40, 57 / 56, 41 / 40])


def test_as_rgb_uint8_converts_common_inputs():
    gray = np.arange(12, dtype=np.uint8).reshape(3, 4)
    assert inference.as_rgb_uint8(gray).shape == (3, 4, 3)
    rgba = np.zeros((3, 4, 4), np.uint8)
    rgba[..., 0] = 200
    assert inference.as_rgb_uint8(rgba)[0, 0].tolist() == [200, 0, 0]
    sixteen = np.full((2, 2, 3), 65535, np.uint16)
    assert inference.as_rgb_uint8(sixteen).max() == 255
    unit = np.full((2, 2, 3), 0.5, np.float32)
    assert inference.as_rgb_uint8(unit)[0, 0, 0] == 127
    with pytest.raises(PFNError, match="expected an RGB image"):
        inference.as_rgb_uint8(np.zeros((2, 2, 5)))


def test_fit_image_limits():
    with pytest.raises(PFNError, match="1x1 pixels is too small"):
        inference.fit_image(np.zeros((1, 1, 3), np.uint8))
    big = np.zeros((300, 2000, 3), np.uint8)
    out, scale = inference.fit_image(big, max_side=500)
    assert out.shape == (75, 500, 3) and scale == 0.25


def test_fit_image_reads_a_read_only_array_without_a_warning():
    # np.asarray(PIL.Image) is read-only; torch warns on from_numpy of such an array
    image = np.zeros((40, 80, 3), np.uint8)
    image[:, 40:] = 200
    image.setflags(write=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out, scale = inference.fit_image(image, max_side=40)
    assert out.shape == (20, 40, 3) and scale == 0.5
    assert out[:, :19].max() == 0 and out[:, 21:].min() == 200  # the edge is averaged


def test_load_model_errors_name_the_file(tmp_path):
    with pytest.raises(CheckpointError, match="missing.pt: weights file not found"):
        inference.load_model(tmp_path / "missing.pt")
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="bad.pt"):
        inference.load_model(bad)


def test_run_network_shapes_and_probabilities(tiny_model_path):
    model = inference.load_model(tiny_model_path, "cpu")
    image = np.random.default_rng(0).integers(0, 255, (40, 56, 3), dtype=np.uint8)
    net = inference.run_network(model, image)
    c = model.num_classes
    assert net.class_probs.shape == (c + 1, grid_size(40), grid_size(56))
    assert net.locations.shape == (6, grid_size(40), grid_size(56))
    assert net.full_class_probs.shape == (c + 1, 40, 56) and net.counts.shape == (c,)
    np.testing.assert_allclose(net.class_probs.sum(0), 1.0, atol=1e-5)
    np.testing.assert_allclose(net.full_class_probs.sum(0), 1.0, atol=1e-5)
    assert set(net.stream_locations) == {"pool3", "fc7"}


def test_predict_returns_masks_at_the_given_size(tiny_model_path, monkeypatch):
    model = inference.load_model(tiny_model_path, "cpu")
    monkeypatch.setattr(inference, "MAX_SIDE", 64)
    image = np.random.default_rng(1).integers(0, 255, (60, 130, 3), dtype=np.uint8)
    assert inference.run_network(model, image).image_size == (30, 64)  # resized for the networks
    from pfn_napari.predictor import predict

    inst = predict(model, image, image_id="x")
    assert inst.masks.shape[1:] == (60, 130) and inst.image_id == "x"
    assert len(inst.scores) == len(inst.classes) == len(inst.masks)


def test_grid_cells_reads_the_pixels_the_cells_sit_on():
    full = np.arange(2 * 17 * 10, dtype=np.float32).reshape(2, 17, 10)
    got = inference.grid_cells(full)  # rows 0, 8, 16; columns 0, 8
    assert got.shape == (2, grid_size(17), grid_size(10)) == (2, 3, 2)
    assert got[1].tolist() == [[170.0, 178.0], [250.0, 258.0], [330.0, 338.0]]


def test_crf_class_map_is_the_one_the_grouping_reads(tiny_model_path, monkeypatch):
    """With the CRF on, class_probs are its marginals at the cells' pixels (so the grid map
    the grouping clusters is the CRF's); off, they are the network's softmax."""
    import pfn_napari.model.crf as crf_module
    from pfn_napari.grouping import Grouper

    def fake_crf(rgb, probs, cfg):  # class 1 left of column 12, class 2 from there on
        out = np.zeros_like(probs)
        out[1, :, :12], out[2, :, 12:] = 1.0, 1.0
        return out

    monkeypatch.setattr(crf_module, "dense_crf", fake_crf)
    model = inference.load_model(tiny_model_path, "cpu")
    image = np.random.default_rng(2).integers(0, 255, (17, 25, 3), dtype=np.uint8)
    net = inference.run_network(model, image, crf=True)
    assert net.full_class_probs.argmax(0)[0].tolist() == [1] * 12 + [2] * 13
    assert net.class_probs.argmax(0).tolist() == [[1, 1, 2, 2]] * 3  # columns 0, 8, 16, 24
    assert Grouper(net).grid_class.tolist() == [[1, 1, 2, 2]] * 3
    plain = inference.run_network(model, image, crf=False)
    assert plain.class_probs.max() < 1.0  # the network's own softmax, not the fake's one-hot
    assert not np.array_equal(plain.class_probs, net.class_probs)


def test_resizing_is_torchs_and_copies_no_more_than_the_result():
    """fit_image (one channel at a time) and resize_instances (by indexing) give what one
    torch call on the whole array gives."""
    import torch.nn.functional as F

    from pfn_napari.structures import Instances

    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (1100, 700, 3), dtype=np.uint8)
    out, _ = inference.fit_image(image, max_side=333)
    t = torch.from_numpy(image).permute(2, 0, 1)[None].float()
    t = F.interpolate(t, size=out.shape[:2], mode="bilinear", align_corners=False, antialias=True)
    np.testing.assert_array_equal(out, t[0].permute(1, 2, 0).round().clamp(0, 255).byte().numpy())
    small = Instances(rng.random((2, 13, 17)) < 0.5, [1, 2], [0.5, 0.4])
    for size in ((40, 56), (99, 101), (7, 9)):
        big = inference.resize_instances(small, size).masks
        ref = F.interpolate(torch.from_numpy(small.masks[None].astype(np.uint8)).float(),
                            size=size, mode="nearest")[0] > 0.5
        np.testing.assert_array_equal(big, ref.numpy())


def test_as_rgb_uint8_scales_12_bit_data_by_4095():
    twelve = np.array([[0, 2048, 4095]], np.uint16)  # (1, 3) gray
    assert inference.as_rgb_uint8(twelve)[0, :, 0].tolist() == [0, 127, 255]
    sixteen = np.array([[0, 4096, 65535]], np.uint16)
    assert inference.as_rgb_uint8(sixteen)[0, :, 0].tolist() == [0, 15, 255]


def test_pfn_max_side_is_checked_where_used_not_at_import(monkeypatch):
    import os
    import subprocess
    import sys

    env = dict(os.environ, PFN_MAX_SIDE="abc")
    done = subprocess.run([sys.executable, "-c", "import pfn_napari.inference as i; "
                           "print(i.MAX_SIDE)"], env=env, capture_output=True, text=True)
    assert done.returncode == 0 and done.stdout == "1024\n", done.stderr
    image = np.zeros((100, 200, 3), np.uint8)
    for value in ("0", "-1", "abc", "1e3", "32769"):
        monkeypatch.setenv("PFN_MAX_SIDE", value)
        with pytest.raises(PFNError, match=rf"^PFN_MAX_SIDE='{value}': expected an integer "
                                           r"from 64 to 32768"):
            inference.fit_image(image)
    monkeypatch.setenv("PFN_MAX_SIDE", " 100 ")
    assert inference.fit_image(image)[0].shape == (50, 100, 3)
    monkeypatch.delenv("PFN_MAX_SIDE")
    monkeypatch.setattr(inference, "MAX_SIDE", 64)
    assert inference.fit_image(image)[0].shape == (32, 64, 3)


def test_load_model_default_is_the_shipped_weights(tiny_model_path, monkeypatch):
    monkeypatch.setenv("PFN_WEIGHTS", str(tiny_model_path))
    for name in ("default", None, ""):
        assert inference.load_model(name, "cpu", runtime="torch").path == tiny_model_path
    monkeypatch.setenv("PFN_WEIGHTS", "/nonexistent/w.pt")
    with pytest.raises(CheckpointError, match=r"w\.pt: weights file not found \(train one"):
        inference.load_model("default")

"""The fast CPU path (backbone trunks on ONNX Runtime) gives the PyTorch path's outputs, caches
its export, and falls back to PyTorch with one warning where it cannot run."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pfn_napari import inference
from pfn_napari.checkpoint import save_weights
from pfn_napari.config import GroupingConfig, load_config
from pfn_napari.errors import PFNError
from pfn_napari.grouping import group
from pfn_napari.model import build_system
from pfn_napari.model import runtime as rt

pytest.importorskip("onnxruntime")

LITE0 = ["model.stream_channels=16", "model.count_channels=16", "model.count_hidden=32"]


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    """Every test exports into its own cache folder and starts with empty in-memory caches."""
    monkeypatch.setenv("PFN_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("PFN_RUNTIME", raising=False)
    monkeypatch.setattr(rt, "_GRAPHS", {})
    monkeypatch.setattr(rt, "_SESSIONS", {})


@pytest.fixture(scope="module")
def lite0_path(tmp_path_factory):
    cfg = load_config("cpu-lite0", LITE0)
    torch.manual_seed(0)
    system = build_system(cfg.model, "instance").eval()
    with torch.no_grad():  # a non-trivial fc8 bias, so several classes win somewhere
        system.category.category_head.fc8.bias.copy_(torch.linspace(-1, 1, cfg.model.num_classes + 1))
    return save_weights(tmp_path_factory.mktemp("w") / "lite0.pt", system, cfg)


@pytest.fixture(scope="module")
def alexnet_path(tmp_path_factory):
    cfg = load_config("cpu-lite0", ["model.backbone=alexnet", "model.streams=[pool3,fc7]",
                                    "model.fc7_channels=32", "model.count_hidden=16"])
    torch.manual_seed(0)
    system = build_system(cfg.model, "instance").eval()
    return save_weights(tmp_path_factory.mktemp("w") / "alex.pt", system, cfg)


@pytest.mark.parametrize("size", [(57, 89), (70, 45)])
def test_onnx_system_matches_the_torch_system(lite0_path, size):
    model = inference.load_model(lite0_path, "cpu", runtime="torch")
    fast = rt.onnx_system(model.system)
    x = torch.rand(1, 3, *size, generator=torch.Generator().manual_seed(1)) * 255
    with torch.no_grad():
        ref, got = model.system(x), fast(x)
    for a, b in ((got.seg_logits, ref.seg_logits), (got.locations, ref.locations),
                 (got.counts, ref.counts)):
        assert a.shape == b.shape
        torch.testing.assert_close(a, b, atol=2e-4, rtol=1e-4)
    assert set(got.stream_locations) == set(ref.stream_locations)
    for name, a in got.stream_locations.items():
        torch.testing.assert_close(a, ref.stream_locations[name], atol=2e-4, rtol=1e-4)
    # the original system is untouched (the fast one is a copy)
    assert len(model.system.category.backbone._blocks) == 16


def test_run_network_onnx_gives_the_torch_outputs_and_instances(lite0_path):
    old = inference.load_model(lite0_path, "cpu", runtime="torch")
    new = inference.load_model(lite0_path, "cpu", runtime="onnx")
    assert (old.runtime, new.runtime) == ("torch", "onnx")
    image = np.random.default_rng(0).integers(0, 255, (61, 83, 3), dtype=np.uint8)
    a, b = inference.run_network(old, image), inference.run_network(new, image)
    for field in ("class_probs", "locations", "counts", "full_class_probs"):
        x, y = getattr(a, field), getattr(b, field)
        assert x.shape == y.shape and y.dtype == np.float32
        np.testing.assert_allclose(x, y, atol=1e-4, rtol=1e-4, err_msg=field)
    np.testing.assert_allclose(b.full_class_probs.sum(0), 1.0, atol=1e-5)
    cfg = GroupingConfig(method="vote")
    ia, ib = group(a, cfg), group(b, cfg)
    assert ia.classes.tolist() == ib.classes.tolist()
    for m1, m2 in zip(ia.masks, ib.masks):
        assert (m1 & m2).sum() >= 0.99 * (m1 | m2).sum()


def test_export_is_cached_on_disk_and_reused(lite0_path, tmp_path, monkeypatch):
    model = inference.load_model(lite0_path, "cpu", runtime="torch")
    rt.onnx_system(model.system)
    files = sorted((tmp_path / "cache" / "onnx").glob("*.onnx"))
    assert len(files) == 2 and not list((tmp_path / "cache" / "onnx").glob("*.tmp"))
    monkeypatch.setattr(rt, "_GRAPHS", {})
    monkeypatch.setattr(rt, "_SESSIONS", {})

    def no_export(backbone):
        raise AssertionError("exported again instead of reading the cache")

    monkeypatch.setattr(rt, "export_trunk", no_export)
    rt.onnx_system(model.system)  # reads both graphs from disk
    # other weights, another file name
    other = inference.load_model(lite0_path, "cpu", runtime="torch")
    with torch.no_grad():
        other.system.instance.backbone._conv_stem.weight.mul_(1.01)
    assert rt.weights_key(other.system.instance.backbone) != \
        rt.weights_key(model.system.instance.backbone)


def test_the_same_weights_at_another_output_stride_are_another_graph():
    # the cache is named by the key: a stride-8 trunk of the shipped tensors once took the
    # stride-16 trunk's name (same tensors), so a process held the wrong graph under it
    from pfn_napari.model.backbones import EfficientNetLite0
    torch.manual_seed(0)
    s16 = EfficientNetLite0(output_stride=16)
    s8 = EfficientNetLite0(output_stride=8)
    s8.load_state_dict(s16.state_dict())
    assert rt.weights_key(s8) != rt.weights_key(s16)
    twin = EfficientNetLite0(output_stride=16)
    twin.load_state_dict(s16.state_dict())
    assert rt.weights_key(twin) == rt.weights_key(s16)


def test_auto_picks_onnx_for_lite0_on_the_cpu_only(lite0_path, alexnet_path, monkeypatch):
    assert inference.load_model(lite0_path, "cpu").runtime == "onnx"
    assert inference.load_model(alexnet_path, "cpu").runtime == "torch"  # silently
    monkeypatch.setenv("PFN_RUNTIME", "torch")
    assert inference.load_model(lite0_path, "cpu").runtime == "torch"
    with pytest.raises(PFNError, match="runtime 'fast'"):
        inference.load_model(lite0_path, "cpu", runtime="fast")


def test_onnx_asked_for_where_it_cannot_run_warns_and_uses_torch(alexnet_path, lite0_path,
                                                                  monkeypatch):
    with pytest.warns(RuntimeWarning, match="EfficientNet-Lite backbones only"):
        model = inference.load_model(alexnet_path, "cpu", runtime="onnx")
    assert model.runtime == "torch" and model.network() is model.system
    monkeypatch.setattr(rt, "onnx_available", lambda: False)
    with pytest.warns(RuntimeWarning, match="onnxruntime is not installed"):
        assert inference.load_model(lite0_path, "cpu", runtime="onnx").runtime == "torch"
    assert inference.load_model(lite0_path, "cpu").runtime == "torch"  # auto: no warning


def test_a_failing_export_falls_back_to_torch_once(lite0_path, monkeypatch):
    model = inference.load_model(lite0_path, "cpu", runtime="onnx")

    def broken(backbone):
        raise RuntimeError("exporter exploded")

    monkeypatch.setattr(rt, "export_trunk", broken)
    image = np.random.default_rng(1).integers(0, 255, (33, 41, 3), dtype=np.uint8)
    with pytest.warns(RuntimeWarning, match="exporter exploded"):
        net = inference.run_network(model, image)
    assert model.runtime == "torch" and net.class_probs.shape[1:] == (5, 6)
    ref = inference.run_network(inference.load_model(lite0_path, "cpu", runtime="torch"), image)
    np.testing.assert_array_equal(net.class_probs, ref.class_probs)  # it *is* the torch path


@pytest.fixture(scope="module")
def cached_trunks(lite0_path, tmp_path_factory):
    """Two trunks (the category and instance backbones, other weights) and a cache folder
    holding both exported graphs with their records, made once for the tests below."""
    import shutil

    model = inference.load_model(lite0_path, "cpu", runtime="torch")
    trunks = (model.system.category.backbone, model.system.instance.backbone)
    folder = tmp_path_factory.mktemp("cache")
    old = rt.cache_dir
    rt.cache_dir = lambda: folder
    graphs, sessions = dict(rt._GRAPHS), dict(rt._SESSIONS)
    try:
        for bb in trunks:
            rt._graph(bb, rt.weights_key(bb))
    finally:
        rt.cache_dir = old
        rt._GRAPHS.clear(), rt._GRAPHS.update(graphs)
        rt._SESSIONS.clear(), rt._SESSIONS.update(sessions)
    keys = [rt.weights_key(bb) for bb in trunks]
    names = sorted(p.name for p in (folder / "onnx").glob("*.onnx"))
    assert names == sorted(f"{k}.onnx" for k in keys)
    return trunks, keys, folder, shutil


def _fast_pool3(bb, x):
    """The trunk's pool3 on ONNX Runtime (through the cache) and in PyTorch."""
    import copy

    fast = copy.deepcopy(bb)
    rt.onnx_backbone(fast)
    with torch.no_grad():
        return fast.forward_trunk(x)[1]["pool3"], bb.forward_trunk(x)[1]["pool3"]


def test_swapped_cache_files_are_rebuilt_not_trusted(cached_trunks, tmp_path):
    """The two cached graphs swapped (a file's bytes not the ones its record names) and then
    with their records swapped too: each is rebuilt with one warning, and gives its own
    trunk's outputs."""
    import hashlib
    import json

    (a, b), (ka, kb), folder, shutil = cached_trunks
    onnx = tmp_path / "cache" / "onnx"
    shutil.copytree(folder / "onnx", onnx)
    good_a = (onnx / f"{ka}.onnx").read_bytes()
    (onnx / f"{ka}.onnx").write_bytes((onnx / f"{kb}.onnx").read_bytes())
    x = torch.rand(1, 3, 41, 49, generator=torch.Generator().manual_seed(2)) * 255
    with pytest.warns(RuntimeWarning, match=rf"ONNX cache .*{ka}\.onnx: its bytes are not the "
                                            r"ones recorded \(corrupt or replaced\); rebuilt it"):
        got, ref = _fast_pool3(a, x)
    torch.testing.assert_close(got, ref, atol=1e-4, rtol=1e-4)
    assert (onnx / f"{ka}.onnx").read_bytes() == good_a  # the cache holds the right graph again
    assert json.loads((onnx / f"{ka}.json").read_text())["sha256"] == \
        hashlib.sha256(good_a).hexdigest()
    rt._GRAPHS.clear(), rt._SESSIONS.clear()
    (onnx / f"{kb}.json").write_text((onnx / f"{ka}.json").read_text())
    with pytest.warns(RuntimeWarning, match=rf"{kb}\.onnx: its record names another graph"):
        _fast_pool3(b, x)


def test_a_cache_file_that_lies_or_does_not_load_is_rebuilt(cached_trunks, tmp_path,
                                                             monkeypatch):
    """A graph of other weights under a trunk's name with no record (or a forged one): the
    probe image shows it; a damaged file with a matching record does not load: rebuilt, once.
    A later process uses the rebuilt file as it is: no warning, no export."""
    import hashlib
    import json
    import warnings

    (a, b), (ka, kb), folder, shutil = cached_trunks
    onnx = tmp_path / "cache" / "onnx"
    shutil.copytree(folder / "onnx", onnx)
    (onnx / f"{ka}.onnx").write_bytes((onnx / f"{kb}.onnx").read_bytes())
    (onnx / f"{ka}.json").unlink()
    x = torch.rand(1, 3, 41, 49, generator=torch.Generator().manual_seed(3)) * 255
    with pytest.warns(RuntimeWarning, match=rf"{ka}\.onnx: gives other outputs than the "
                                            r"weights it is named after"):
        got, ref = _fast_pool3(a, x)
    torch.testing.assert_close(got, ref, atol=1e-4, rtol=1e-4)
    damaged = b"\x08\x07garbage"
    (onnx / f"{kb}.onnx").write_bytes(damaged)
    (onnx / f"{kb}.json").write_text(json.dumps({"key": kb, "format": rt.FORMAT,
                                                 "sha256": hashlib.sha256(damaged).hexdigest()}))
    with pytest.warns(RuntimeWarning, match=rf"{kb}\.onnx: does not load"):
        _fast_pool3(b, x)
    rt._GRAPHS.clear(), rt._SESSIONS.clear()

    def no_export(backbone):
        raise AssertionError("exported again instead of reading the rebuilt cache")

    monkeypatch.setattr(rt, "export_trunk", no_export)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _fast_pool3(a, x), _fast_pool3(b, x)

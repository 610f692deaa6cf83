"""TorchScript and ONNX exports give the eager model's outputs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from pfn_napari.config import ModelConfig, PFNConfig
from pfn_napari.errors import CheckpointError
from pfn_napari.model import build_system
from pfn_napari.model.export import OUTPUT_NAMES, export_system, parse_size
from pfn_napari.structures import grid_size

SMALL = ModelConfig(backbone="alexnet", num_classes=2, fc7_channels=32, stream_channels=16,
                    count_channels=16, count_hidden=32)
SIZE = (49, 65)


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory):
    torch.manual_seed(0)
    system = build_system(SMALL, "instance").eval()
    out = tmp_path_factory.mktemp("export")
    paths = export_system(system, out, size=SIZE, onnx=True)
    return system, paths


def test_torchscript_matches_eager(exported) -> None:
    system, paths = exported
    x = torch.rand(1, 3, *SIZE) * 255  # another input than the trace's
    with torch.no_grad():
        eager = system(x)
        ts = torch.jit.load(str(paths["torchscript"]))(x)
    gh, gw = grid_size(SIZE[0]), grid_size(SIZE[1])
    assert ts[0].shape == (1, 3, gh, gw) and ts[1].shape == (1, 6, gh, gw) and ts[2].shape == (1, 2)
    for got, ref in zip(ts, (eager.seg_logits, eager.locations, eager.counts)):
        torch.testing.assert_close(got, ref, atol=1e-4, rtol=1e-4)


def test_onnx_matches_eager(exported) -> None:
    ort = pytest.importorskip("onnxruntime")
    system, paths = exported
    x = torch.rand(1, 3, *SIZE) * 255
    with torch.no_grad():
        eager = system(x)
    sess = ort.InferenceSession(str(paths["onnx"]), providers=["CPUExecutionProvider"])
    assert [o.name for o in sess.get_outputs()] == list(OUTPUT_NAMES)
    outs = sess.run(None, {"images": x.numpy()})
    for got, ref in zip(outs, (eager.seg_logits, eager.locations, eager.counts)):
        np.testing.assert_allclose(got, ref.numpy(), atol=1e-4, rtol=1e-4)
    meta = json.loads(paths["meta"].read_text())
    assert meta["input"]["shape"] == [1, 3, *SIZE] and meta["outputs"]["counts"] == [1, 2]


def test_stage1_system_is_refused(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="stage-2"):
        export_system(build_system(SMALL, "category"), tmp_path)


def test_parse_size() -> None:
    assert parse_size("321") == (321, 321) and parse_size("353x481") == (353, 481)
    with pytest.raises(ValueError):
        parse_size("big")


def test_cli_export_from_checkpoint(tmp_path: Path) -> None:
    checkpoint = pytest.importorskip("pfn_napari.checkpoint")
    from pfn_napari.cli import main

    cfg = PFNConfig(model=SMALL, data=PFNConfig().data.__class__(classes=("a", "b")))
    system = build_system(SMALL, "unified").eval()
    ckpt = checkpoint.save_weights(tmp_path / "w.pt", system, cfg)
    assert main(["export", str(ckpt), "--out", str(tmp_path / "out"), "--size", "33",
                 "--no-onnx"]) == 0
    ts = torch.jit.load(str(tmp_path / "out" / "pfn.pt"))
    x = torch.rand(1, 3, 33, 33) * 255
    with torch.no_grad():
        torch.testing.assert_close(ts(x)[2], system(x).counts, atol=1e-4, rtol=1e-4)
    assert main(["export", str(tmp_path / "missing.pt"), "--out", str(tmp_path / "o2")]) == 2
    assert main(["export", str(ckpt), "--out", str(tmp_path / "o3"), "--size", "x"]) == 2


def _tiny_checkpoint(tmp_path: Path, networks: str = "unified") -> Path:
    from pfn_napari.checkpoint import save_weights

    cfg = PFNConfig(model=SMALL, data=PFNConfig().data.__class__(classes=("a", "b")))
    torch.manual_seed(0)
    return save_weights(tmp_path / f"{networks}.pt", build_system(SMALL, networks).eval(), cfg)


def test_cli_export_checks_out_and_accepts_default(tmp_path: Path, monkeypatch, capsys) -> None:
    """--out a file or a read-only folder, an earlier export in --out, a stage-1 checkpoint:
    one line each, exit 2, nothing written; 'default' is the shipped weights ($PFN_WEIGHTS)."""
    import os

    from pfn_napari.cli import main

    ckpt = _tiny_checkpoint(tmp_path)
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    assert main(["export", str(ckpt), "--out", str(a_file), "--size", "17", "--no-onnx"]) == 2
    assert capsys.readouterr().err == (f"pfn: error: --out {a_file}: is a file, not a folder; "
                                       "pass a folder\n")
    if os.geteuid() != 0:  # root writes anywhere
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o555)
        assert main(["export", str(ckpt), "--out", str(locked), "--size", "17", "--no-onnx"]) == 2
        assert "cannot write in this folder" in capsys.readouterr().err
    stage1 = _tiny_checkpoint(tmp_path, "category")
    assert main(["export", str(stage1), "--out", str(tmp_path / "s1"), "--no-onnx"]) == 2
    assert f"pfn: error: {stage1}: this checkpoint has no location / count heads" in \
        capsys.readouterr().err
    assert not (tmp_path / "s1").exists()
    monkeypatch.setenv("PFN_WEIGHTS", str(ckpt))
    out = tmp_path / "out"
    assert main(["export", "default", "--out", str(out), "--size", "17", "--no-onnx"]) == 0
    first = (out / "pfn.pt").read_bytes()
    assert sorted(os.listdir(out)) == ["export.json", "pfn.pt"]  # no temporaries left
    assert main(["export", "default", "--out", str(out), "--size", "25", "--no-onnx"]) == 2
    assert capsys.readouterr().err == (f"pfn: error: --out {out}: already holds an export "
                                       "(pfn.pt, export.json); pass another --out, or "
                                       "--overwrite to replace it\n")
    assert (out / "pfn.pt").read_bytes() == first
    assert main(["export", "default", "--out", str(out), "--size", "25", "--no-onnx",
                 "--overwrite"]) == 0
    assert json.loads((out / "export.json").read_text())["input"]["shape"] == [1, 3, 25, 25]


def test_an_interrupted_export_leaves_the_previous_files(tmp_path: Path, monkeypatch) -> None:
    """A failure while a file is written (here: the disk fills) keeps the previous file whole
    and leaves no temporary behind."""
    import errno

    from pfn_napari.errors import OutputError

    system = build_system(SMALL, "unified").eval()
    paths = export_system(system, tmp_path, size=(17, 17), onnx=False)
    before = paths["torchscript"].read_bytes()
    real_fsync = __import__("os").fsync

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr("os.fsync", full)
    with pytest.raises(OutputError, match=r"disk full while writing .*pfn\.pt; the previous "
                                          r"file is kept"):
        export_system(system, tmp_path, size=(25, 25), onnx=False)
    monkeypatch.setattr("os.fsync", real_fsync)
    assert paths["torchscript"].read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["export.json", "pfn.pt"]


def test_parse_size_range() -> None:
    assert parse_size("9x4096") == (9, 4096)
    for text in ("8", "4097", "0x10", "-5"):
        with pytest.raises(ValueError, match="sides from 9 to 4096"):
            parse_size(text)

"""DDP: `torchrun --nproc_per_node 2 -m pfn_napari train` on the CPU (gloo), and kill -9 + resume."""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pfn_napari.checkpoint import load_checkpoint, read_checkpoint

TINY_SET = ["model.backbone=efficientnet_lite0", "model.num_classes=3",
            "data.classes=[disc,square,triangle]", "model.stream_channels=8",
            "model.count_channels=8", "model.count_hidden=16",
            "data.train=synthetic:8:72", "data.val=synthetic:1@1:65", "data.crop_size=65",
            "train.batch_size=2", "train.log_every=1", "train.device=cpu"]


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    return env


def _sets(*extra: str) -> list[str]:
    out: list[str] = []
    for item in [*TINY_SET, *extra]:
        out += ["--set", item]
    return out


@pytest.mark.slow
def test_two_cpu_processes_keep_identical_weights(tmp_path):
    out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "pfn_napari", "train", "--stage", "category", "--out", str(out),
           "--no-progress", *_sets("train.max_steps=3")]
    proc = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    meta = read_checkpoint(out / "final.pt")
    hashes = meta["extra"]["rank_param_sha256"]
    assert meta["extra"]["world_size"] == 2 and len(hashes) == 2
    assert hashes[0] == hashes[1]
    assert meta["step"] == 3 and len(meta["extra"]["rng_per_rank"]) == 2
    with (out / "log.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert [int(r["step"]) for r in rows] == [1, 2, 3]  # rank 0 alone writes
    # 8 images / (2 ranks x batch 2) = 2 steps per epoch: step 3 is in epoch 1
    assert rows[-1]["epoch"] == "1"
    load_checkpoint(out / "final.pt")


@pytest.mark.slow
def test_kill_9_after_a_checkpoint_then_resume(tmp_path):
    out = tmp_path / "killed"
    base = [sys.executable, "-m", "pfn_napari", "train", "--stage", "category", "--out", str(out),
            "--no-progress"]
    proc = subprocess.Popen(base + _sets("train.max_steps=30", "train.checkpoint_every=2"),
                            env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.time() + 180
        while not (out / "last.pt").is_file():
            assert proc.poll() is None, proc.stdout.read().decode()[-2000:]
            assert time.time() < deadline, "no checkpoint within 180 s"
            time.sleep(0.2)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGKILL
    step = read_checkpoint(out / "last.pt")["step"]
    assert 2 <= step < 16
    # resume from the stored config alone (no --config); --set still applies
    done = subprocess.run([sys.executable, "-m", "pfn_napari", "train", "--resume",
                           str(out / "last.pt"), "--no-progress", "--set", "train.max_steps=16"],
                          env=_env(), capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    assert Path(done.stdout.strip().splitlines()[-1]) == out / "final.pt"
    assert f"resumed from {out / 'last.pt'} at step {step}" in done.stderr
    system, cfg, meta = load_checkpoint(out / "final.pt")
    assert meta["step"] == 16 and cfg.train.max_steps == 16
    with (out / "log.csv").open() as fh:
        steps = [int(r["step"]) for r in csv.DictReader(fh)]
    assert steps == list(range(1, 17))  # rows after the checkpoint were dropped, then redone

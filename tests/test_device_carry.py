"""scripts/device_carry.py and scripts/device_check.sh: what travels to a lent GPU machine."""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from script_helpers import import_script

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def carry():
    return import_script("scripts/device_carry.py")


def test_pennfudan_is_packed_in_its_layout_with_jpeg_photos(carry, tmp_path) -> None:
    from pfn_napari.data import open_dataset

    src = tmp_path / "shared" / "pennfudan"
    (src / "PNGImages").mkdir(parents=True)
    (src / "PedMasks").mkdir()
    rng = np.random.default_rng(0)
    for i in range(5):
        Image.fromarray(rng.integers(0, 255, (40, 50, 3), dtype=np.uint8)).save(
            src / "PNGImages" / f"Ped{i:05d}.png")
        mask = np.zeros((40, 50), np.uint8)
        mask[5:30, 5 + i:20 + i] = 1
        mask[10:35, 30:45] = 2
        Image.fromarray(mask).save(src / "PedMasks" / f"Ped{i:05d}_mask.png")
    out = tmp_path / "device" / "pennfudan"
    assert carry.pack_pennfudan(tmp_path / "shared", out) == 5
    photos = sorted(p.name for p in (out / "PNGImages").iterdir())
    assert photos == [f"Ped{i:05d}.jpg" for i in range(5)]
    assert (out / "PedMasks" / "Ped00003_mask.png").read_bytes() == \
        (src / "PedMasks" / "Ped00003_mask.png").read_bytes()
    data = open_dataset(f"folder:{out}/PNGImages:{out}/PedMasks:person", "all", ["person"])
    assert len(data) == 5 and list(data[3].instance_classes) == [1, 1]
    assert data[3].image.shape[:2] == (40, 50)
    assert carry.pack_pennfudan(tmp_path / "shared", out) == 5  # again: nothing rewritten
    assert 0 < carry.folder_mb(out) < 0.1


def test_the_device_check_is_valid_bash() -> None:
    subprocess.run(["bash", "-n", str(ROOT / "scripts" / "device_check.sh")], check=True)

"""Shared test fixtures. Tests run on a 2-core CPU: keep inputs tiny and threads few."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

try:
    import torch

    torch.set_num_threads(1)
except ImportError:  # pragma: no cover
    pass

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("PFN_SHARED_DATA", REPO.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """``../shared/data`` (or $PFN_SHARED_DATA); tests using it skip when it is absent."""
    if not (SHARED_DATA / "README.md").is_file():
        pytest.skip(f"real data not found at {SHARED_DATA} (set PFN_SHARED_DATA to its folder)")
    return SHARED_DATA


@pytest.fixture(scope="session")
def voc_coco_root(shared_data: Path) -> Path:
    """The 77 COCO images in VOC 2012 layout (train 60 / val 17)."""
    root = shared_data / "coco128-train" / "voc" / "VOC2012"
    if not root.is_dir():
        pytest.skip(f"{root} not found")
    return root

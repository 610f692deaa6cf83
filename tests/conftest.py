"""Shared test fixtures. Tests run on a 2-core CPU: keep inputs tiny and threads few."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
if "PFN_CACHE_DIR" not in os.environ:  # the ONNX graphs of the shipped model: not in ~/.cache
    import atexit
    import shutil
    import tempfile

    os.environ["PFN_CACHE_DIR"] = tempfile.mkdtemp(prefix="pfn-test-cache-")
    atexit.register(shutil.rmtree, os.environ["PFN_CACHE_DIR"], True)


def _one_qt_binding() -> None:
    """Make pytest-qt use the binding qtpy (hence napari and the plugin) uses.

    qtpy prefers PyQt5 and pytest-qt PyQt6, so with both installed each would load its own
    Qt. ``QT_API`` picks the binding for both (``QT_API=pyqt6 python -m pytest ...``); unset,
    it is the first of PyQt5, PyQt6, PySide6 that is installed (qtpy's order).
    """
    from importlib.util import find_spec

    apis = {"pyqt5": "PyQt5", "pyqt6": "PyQt6", "pyside6": "PySide6"}
    api = os.environ.get("QT_API", "").lower()
    if not api:
        api = next((a for a, module in apis.items() if find_spec(module) is not None), "")
        if api:
            os.environ["QT_API"] = api
    if api in apis:
        os.environ.setdefault("PYTEST_QT_API", api)


_one_qt_binding()

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


@pytest.fixture
def training_convs(monkeypatch) -> list:
    """What every 2-d convolution run with gradients on (training steps, not the validations
    after them) saw: ``(output dtype, weight in channels-last order)``, the order None where
    the two orders are the same (one input channel or a 1 x 1 kernel)."""
    import torch

    seen: list = []
    conv_forward = torch.nn.Conv2d.forward

    def recording_forward(self, x):
        y = conv_forward(self, x)
        if torch.is_grad_enabled():
            w = self.weight  # (Cout, Cin, kh, kw)
            order = (w.is_contiguous(memory_format=torch.channels_last) and not w.is_contiguous()
                     if w.shape[1] > 1 and w.shape[2] * w.shape[3] > 1 else None)
            seen.append((y.dtype, order))
        return y

    monkeypatch.setattr(torch.nn.Conv2d, "forward", recording_forward)
    return seen


@pytest.fixture
def bfloat16_cpu(monkeypatch) -> None:
    """A CPU with native bfloat16 for ``train.amp`` (forced, so the test runs on any CPU)."""
    import pfn_napari.train as train_module

    monkeypatch.setattr(train_module, "cpu_has_bfloat16", lambda: True)


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Every test that needs the real data (the ``shared_data`` fixture, directly or through
    ``voc_coco_root``) is marked ``realdata``, so ``-m "not realdata"`` deselects exactly them."""
    for item in items:
        if "shared_data" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.realdata)

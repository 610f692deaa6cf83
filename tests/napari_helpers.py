"""A tiny, hand-set PFN model for the napari tests (no training, no shipped weights needed).

Its networks are randomly initialised EfficientNet-Lite0 PFN nets (8-channel heads, 64-channel
fc7, one location stream) with the last layers set by hand so the answers are known:

* fc8: zero weights, bias 5 on class ``PERSON``: every pixel is a person;
* location stream: zero weights except the coordinate maps, so every cell predicts its own
  position for each x channel (cx, lx, rx) and y channel (cy, ly, ry);
* count head: zero weights, bias ``COUNT`` on ``PERSON``: the network says 2 people.

So the person class covers the image and is clustered into 2 instances; an override of 4
gives 4 (the cells' positions differ, so any k fits).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

PERSON = 15  # VOC class index of 'person'
COUNT = 2.0


def make_tiny_weights(path: Path, method: str = "kmeans", prior_weight: float = 0.0,
                      count: float = COUNT, **grouping) -> Path:
    """The hand-set model saved to ``path``, its count head saying ``count`` people;
    ``grouping``: more GroupingConfig fields."""
    import torch

    from pfn_napari.checkpoint import save_weights
    from pfn_napari.config import (DataConfig, GroupingConfig, ImageNetConfig, ModelConfig,
                                   PFNConfig)
    from pfn_napari.model import build_system

    torch.manual_seed(0)
    cfg = PFNConfig(
        data=DataConfig(),
        model=ModelConfig(backbone="efficientnet_lite0", num_classes=20, streams=("fc7",),
                          stream_channels=8, count_channels=8, count_hidden=16, fc7_channels=64),
        grouping=GroupingConfig(method=method, **grouping),
        imagenet=ImageNetConfig(weight=prior_weight),
    )
    system = build_system(cfg.model, "unified").eval()
    net = system.instance
    with torch.no_grad():
        net.category_head.fc8.weight.zero_()
        net.category_head.fc8.bias.zero_()
        net.category_head.fc8.bias[PERSON] = 5.0
        conv2 = net.location_head.streams["fc7"].conv2
        conv2.weight.zero_()
        conv2.bias.zero_()
        mid = conv2.weight.shape[1] - 2  # channels mid (x) and mid + 1 (y) are the coordinates
        for ch, name in enumerate(("cx", "cy", "lx", "ly", "rx", "ry")):
            conv2.weight[ch, mid + (0 if name.endswith("x") else 1), 1, 1] = 1.0
        fc2 = net.count_head.fc2
        fc2.weight.zero_()
        fc2.bias.zero_()
        fc2.bias[PERSON - 1] = count
    return save_weights(path, system, cfg)


def small_image(h: int = 120, w: int = 160) -> np.ndarray:
    """The skaters sample, resized to ``w x h`` (uint8 RGB)."""
    from PIL import Image

    from pfn_napari.samples import load_sample

    return np.asarray(Image.fromarray(load_sample("skaters")).resize((w, h), Image.BILINEAR))


def stripes_output(columns: list[int], counts: dict[int, float], h: int = 64, w: int = 96):
    """A hand-made network output of an ``h x w`` image: grid column ``j`` is class
    ``columns[j]`` (0 background), each cell predicts its own position in every location
    channel (box6), and the count network says ``counts`` ``{class: number}`` (20 VOC classes).
    """
    from pfn_napari.structures import NetworkOutput

    gh, gw = -(-h // 8), -(-w // 8)
    assert len(columns) == gw, f"{gw} grid columns"
    probs = np.zeros((21, gh, gw), np.float32)
    for j, cls in enumerate(columns):
        probs[cls, :, j] = 1.0
    rows, cols = np.mgrid[0:gh, 0:gw].astype(np.float32)
    x, y = (8 * cols + 0.5) / w, (8 * rows + 0.5) / h
    locations = np.stack([x, y, x, y, x, y])  # cx cy lx ly rx ry
    count = np.zeros(20, np.float32)
    for cls, value in counts.items():
        count[cls - 1] = value
    return NetworkOutput(probs, locations, count, (h, w), "box6")


#: Marks for the widget test modules: a deprecation warning (FutureWarning, DeprecationWarning,
#: PendingDeprecationWarning) issued from napari's modules, or attributed to the plugin's own
#: code (where napari's deprecations point, with stacklevel=2), is an error, so the next napari
#: deprecation the plugin walks into fails CI instead of scrolling by.
NAPARI_WARNINGS_ARE_ERRORS = [
    pytest.mark.filterwarnings(f"error::{category}:{module}")
    for category in ("FutureWarning", "DeprecationWarning", "PendingDeprecationWarning")
    for module in ("napari", "pfn_napari")
]


# ---- fixtures shared by the widget tests (imported by name into each test module)

@pytest.fixture(scope="module")
def tiny_weights(tmp_path_factory) -> Path:
    return make_tiny_weights(tmp_path_factory.mktemp("pfn") / "tiny.pt")


@pytest.fixture
def widget(qtbot, tiny_weights):
    from napari.components import ViewerModel

    from pfn_napari.napari import PFNWidget

    w = PFNWidget(ViewerModel())
    qtbot.addWidget(w)
    w.synchronous = True
    w.weights_edit.setText(str(tiny_weights))
    w.device_combo.setCurrentText("cpu")
    return w


def add_image(widget, data, name="photo", **kw):
    layer = widget.viewer.add_image(data, name=name, **kw)
    widget.image_combo.setCurrentText(name)
    return layer


def has_gl() -> bool:
    """Whether Qt can make an OpenGL context (napari's canvas): Xvfb or a display."""
    from qtpy.QtGui import QOffscreenSurface, QOpenGLContext

    ctx, surface = QOpenGLContext(), QOffscreenSurface()
    surface.create()
    ok = ctx.create() and ctx.makeCurrent(surface)
    if ok:
        ctx.doneCurrent()
    return bool(ok)


@pytest.fixture
def viewer_widget(request, qtbot, tiny_weights):
    """The widget docked in a real napari viewer (canvas and all) where OpenGL works (Xvfb,
    CI), else over a ViewerModel; synchronous, tiny weights, CPU."""
    from pfn_napari.napari import PFNWidget

    if has_gl():
        viewer = request.getfixturevalue("make_napari_viewer")()
    else:
        from napari.components import ViewerModel

        viewer = ViewerModel()
    w = PFNWidget(viewer)
    if hasattr(viewer, "window"):
        viewer.window.add_dock_widget(w, name="PFN instance segmentation", area="right")
    else:
        qtbot.addWidget(w)
    w.synchronous = True
    w.weights_edit.setText(str(tiny_weights))
    w.device_combo.setCurrentText("cpu")
    return w


@pytest.fixture(scope="session")
def needs_gl(qapp) -> None:
    """Skip when Qt cannot make an OpenGL context (offscreen without an X server)."""
    from qtpy.QtGui import QOffscreenSurface, QOpenGLContext

    ctx, surface = QOpenGLContext(), QOffscreenSurface()
    surface.create()
    if not (ctx.create() and ctx.makeCurrent(surface)):
        pytest.skip("no OpenGL context for napari's canvas: run under Xvfb "
                    "(xvfb-run -a python -m pytest ...; .ci/run starts one)")
    ctx.doneCurrent()

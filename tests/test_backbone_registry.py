"""A backbone is one entry of ``config.BACKBONES``: registering a tiny one is all it takes for
config validation, ``build_network`` and ``load_backbone_weights`` to know it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import Tensor, nn

from pfn_napari.config import (BACKBONES, BackboneSpec, ConfigError, ModelConfig, load_config,
                               register_backbone)
from pfn_napari.model import align_to_grid, build_network, load_backbone_weights
from pfn_napari.model.backbones import Backbone, build_backbone, build_vgg16
from pfn_napari.model.weights import lite0_weights_file, load_vgg16_weights
from pfn_napari.structures import grid_size


class TinyBackbone(Backbone):
    """Three stride-2 convs and a 1x1 'fc7': the least a backbone must provide."""

    name = "tiny"

    def __init__(self, fc7_channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 4, 3, stride=2, padding=1)
        self.conv2 = nn.Conv2d(4, 4, 3, stride=2, padding=1)
        self.conv3 = nn.Conv2d(4, 4, 3, stride=2, padding=1)
        self.fc7 = nn.Conv2d(4, fc7_channels, 1)
        self.channels = {"input": 3, "pool1": 4, "pool2": 4, "pool3": 4, "fc7": fc7_channels}

    def forward(self, images: Tensor) -> dict[str, Tensor]:
        H, W = images.shape[-2:]
        x = images / 255.0  # (B, 3, H, W)
        p1 = self.conv1(x)  # (B, 4, ~H/2, ~W/2)
        p2 = self.conv2(p1)  # (B, 4, ~H/4, ~W/4)
        p3 = align_to_grid(self.conv3(p2), 8, H, W)  # (B, 4, h, w)
        return {"input": x, "pool1": p1, "pool2": p2, "pool3": p3, "fc7": self.fc7(p3)}


BUILT: list[dict] = []
LOADED: list[Path] = []


def build_tiny(fc7_channels: int, **options) -> TinyBackbone:
    BUILT.append({**options, "fc7_channels": fc7_channels})
    return TinyBackbone(fc7_channels)


def load_tiny(backbone: nn.Module, sd: dict[str, Tensor], path: Path) -> None:
    LOADED.append(path)
    backbone.load_state_dict(sd)


@pytest.fixture
def tiny():
    BUILT.clear()
    LOADED.clear()
    spec = register_backbone(BackboneSpec("tiny", build_tiny, load_tiny, fc7_channels=8))
    yield spec
    del BACKBONES["tiny"]


def test_unregistered_backbone_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="model.backbone='tiny': choose one of"):
        load_config(None, ["model.backbone=tiny"])


def test_one_entry_makes_a_backbone_known_everywhere(tiny, tmp_path: Path) -> None:
    # config accepts the name
    assert load_config(None, ["model.backbone=tiny"]).model.backbone == "tiny"
    # build_network builds it, with the entry's default fc7 width and the model's options
    cfg = ModelConfig(backbone="tiny", num_classes=2, stream_channels=4, count_channels=4,
                      count_hidden=8, lite_output_stride=32)
    net = build_network(cfg, "unified")
    assert isinstance(net.backbone, TinyBackbone) and net.backbone.channels["fc7"] == 8
    assert BUILT == [{"fc7_channels": 8, "ceil_mode": True, "dropout": 0.5,
                      "output_stride": 32}]
    out = net(torch.rand(1, 3, 33, 41) * 255)
    assert out.seg_logits.shape == (1, 3, grid_size(33), grid_size(41)) == (1, 3, 5, 6)
    assert out.locations.shape == (1, 6, 5, 6) and out.counts.shape == (1, 2)
    # weight loading dispatches to the entry's loader
    source = TinyBackbone(8)
    file = tmp_path / "tiny.pth"
    torch.save(source.state_dict(), file)
    assert load_backbone_weights(net, file) == file
    assert LOADED == [file]
    assert torch.equal(net.backbone.conv1.weight, source.conv1.weight)
    # no file and no default_weights in the entry: He init kept, with a warning
    with pytest.warns(UserWarning, match="no ImageNet weights"):
        assert load_backbone_weights(net, None) is None


def test_builtin_entries_name_their_code_lazily() -> None:
    assert set(BACKBONES) >= {"vgg16", "alexnet", "efficientnet_lite0", "efficientnet_lite1",
                              "efficientnet_lite2"}
    assert BACKBONES["vgg16"].resolve("build") is build_vgg16
    assert BACKBONES["vgg16"].resolve("load_weights") is load_vgg16_weights
    assert BACKBONES["efficientnet_lite0"].resolve("default_weights") is lite0_weights_file
    assert BACKBONES["vgg16"].default_weights is None
    for name, spec in BACKBONES.items():
        backbone = build_backbone(name, 16)
        assert backbone.name == name and backbone.channels["fc7"] == 16
        assert callable(spec.resolve("load_weights"))
    assert build_backbone("efficientnet_lite0").channels["fc7"] == 256  # the entry's default


def test_config_imports_no_torch() -> None:
    """config sits at the bottom: reading and validating a config imports neither torch nor
    the model (the backbone entries name their code by ``"module:function"``)."""
    code = ("import sys; from pfn_napari.config import load_config; "
            "load_config('paper-vgg16').validate(); "
            "bad = [m for m in ('torch', 'pfn_napari.model') if m in sys.modules]; "
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True)

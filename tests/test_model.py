"""Every network variant: forward + backward on odd sizes, grid-exact output shapes, the same
typed output in train and eval; the geometry helpers; training helpers; the two-net system."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F

from pfn_napari.config import ENCODING_CHANNELS, ConfigError, ModelConfig
from pfn_napari.model import (NetOutputs, PFNNet, PFNSystem, align_to_grid, build_network,
                              build_system)
from pfn_napari.model.backbones import VGG16LargeFOV, build_backbone
from pfn_napari.model.heads import (COUNT_POOL, CountHead, LocationHead, LocationStream,
                                    coordinate_maps)
from pfn_napari.structures import grid_size

C = 3
SIZES = ((1, 65, 97), (2, 57, 57))
# small widths keep the variant sweep fast; the real widths are tested below on VGG
SMALL = dict(num_classes=C, fc7_channels=64, stream_channels=16, count_channels=16,
             count_hidden=32)


def _check_outputs(out: NetOutputs, kind: str, b: int, h: int, w: int, L: int,
                   streams: tuple[str, ...]) -> None:
    gh, gw = grid_size(h), grid_size(w)
    assert isinstance(out, NetOutputs)
    if kind in ("category", "unified"):
        assert out.seg_logits is not None and out.seg_logits.shape == (b, C + 1, gh, gw)
    else:
        assert out.seg_logits is None
    if kind in ("instance", "unified"):
        assert out.locations is not None and out.locations.shape == (b, L, gh, gw)
        assert out.counts is not None and out.counts.shape == (b, C)
        assert set(out.stream_locations) == set(streams)
        for t in out.stream_locations.values():
            assert t.shape == (b, L, gh, gw)
    else:
        assert out.locations is None and out.counts is None and not out.stream_locations


def _forward_backward(net: PFNNet, kind: str, cfg: ModelConfig) -> None:
    L = len(ENCODING_CHANNELS[cfg.encoding])
    for b, h, w in SIZES:
        x = torch.rand(b, 3, h, w) * 255
        out = net(x)
        _check_outputs(out, kind, b, h, w, L, cfg.streams)
        loss = sum(t.square().mean() for t in (out.seg_logits, out.locations, out.counts)
                   if t is not None)
        net.zero_grad()
        loss.backward()
        grads = [p.grad for p in net.parameters() if p.requires_grad]
        assert all(g is not None and torch.isfinite(g).all() for g in grads)
        assert any(float(g.abs().sum()) > 0 for g in grads)


@pytest.mark.parametrize("backbone", ["vgg16", "alexnet", "efficientnet_lite0"])
def test_every_backbone_and_kind(backbone: str) -> None:
    cfg = ModelConfig(backbone=backbone, **SMALL)
    shared = build_backbone(backbone, cfg.fc7_channels)  # one backbone, three head sets
    nets = {}
    for kind in ("category", "instance", "unified"):
        nets[kind] = build_network(cfg, kind, backbone=shared)
        _forward_backward(nets[kind], kind, cfg)
    # the unified network is the category and the instance heads on one backbone: with their
    # weights it gives their outputs (the heads of a kind, and only those, exist)
    assert [type(h).__name__ for h in nets["category"].heads()] == ["CategoryHead"]
    assert [type(h).__name__ for h in nets["instance"].heads()] == ["LocationHead", "CountHead"]
    unified = nets["unified"]
    unified.category_head.load_state_dict(nets["category"].category_head.state_dict())
    unified.location_head.load_state_dict(nets["instance"].location_head.state_dict())
    unified.count_head.load_state_dict(nets["instance"].count_head.state_dict())
    x = torch.rand(1, 3, 57, 73) * 255
    with torch.no_grad():
        outs = {kind: net.eval()(x) for kind, net in nets.items()}
    assert torch.allclose(outs["unified"].seg_logits, outs["category"].seg_logits, atol=1e-5)
    assert torch.allclose(outs["unified"].locations, outs["instance"].locations, atol=1e-5)
    assert torch.allclose(outs["unified"].counts, outs["instance"].counts, atol=1e-5)
    with torch.no_grad():  # other weights, other outputs: the comparisons above can fail
        fresh = build_network(cfg, "unified").eval()(x)
    assert not torch.allclose(outs["unified"].locations, fresh.locations, atol=1e-5)


ABLATIONS = [
    dict(encoding="offsets2"), dict(encoding="center_wh4"), dict(encoding="center_tl4"),
    dict(encoding="box10"), dict(streams=("fc7",)), dict(streams=("input", "pool2")),
    dict(coord_maps=False), dict(fusion="sum"), dict(fusion="plain_sum"),
    dict(count_features="category"),
    dict(count_features="instance"), dict(ceil_mode=False),
]


@pytest.mark.parametrize("change", ABLATIONS, ids=lambda d: ",".join(f"{k}={v}" for k, v in d.items()))
def test_structural_ablations(change: dict) -> None:
    cfg = ModelConfig(backbone="alexnet", **SMALL, **change)
    _forward_backward(build_network(cfg, "instance"), "instance", cfg)


def _head_parameters(cfg: ModelConfig, channels: dict[str, int]) -> int:
    """The location and count heads' parameter count by hand: per stream conv1 3x3 (cin ->
    mid) and conv2 3x3 (mid + 2 coordinate maps -> L); the fusion (concat: 1x1 M L -> L; sum:
    one weight per stream and channel + a bias per channel; plain sum or one stream: none);
    the count head's 3x3 conv (its input -> count_channels), fc pool^2 -> hidden, fc -> C."""
    L, mid, m = len(ENCODING_CHANNELS[cfg.encoding]), cfg.stream_channels, len(cfg.streams)
    coords = 2 if cfg.coord_maps else 0
    total = sum(channels[n] * mid * 9 + mid + (mid + coords) * L * 9 + L for n in cfg.streams)
    if m > 1:
        total += {"concat": m * L * L + L, "sum": m * L + L, "plain_sum": 0}[cfg.fusion]
    count_in = {"both": cfg.fc7_channels + L, "category": cfg.fc7_channels,
                "instance": L}[cfg.count_features]
    cc, hidden = cfg.count_channels, cfg.count_hidden
    return total + (count_in * cc * 9 + cc + cc * COUNT_POOL ** 2 * hidden + hidden
                    + hidden * C + C)


def _n_params(*modules: torch.nn.Module) -> int:
    return sum(p.numel() for m in modules for p in m.parameters())


@pytest.mark.parametrize("change", [{}] + ABLATIONS,
                         ids=lambda d: ",".join(f"{k}={v}" for k, v in d.items()) or "paper")
def test_ablation_flags_shape_the_heads_by_their_parameter_count(change: dict) -> None:
    cfg = ModelConfig(backbone="alexnet", **SMALL, **change)
    net = build_network(cfg, "instance")
    assert tuple(net.location_head.streams) == cfg.streams
    assert _n_params(net.location_head, net.count_head) == _head_parameters(
        cfg, net.backbone.channels)


def _fusion_outputs(fusion: str) -> NetOutputs:
    torch.manual_seed(0)
    net = build_network(ModelConfig(backbone="alexnet", fusion=fusion, **SMALL), "instance")
    with torch.no_grad():
        return net(torch.rand(1, 3, 33, 41) * 255), net


def test_fusion_flag_decides_how_the_streams_are_combined() -> None:
    out, net = _fusion_outputs("concat")
    stacked = torch.cat(list(out.stream_locations.values()), dim=1)  # (1, 5 L, h, w)
    assert torch.allclose(out.locations, net.location_head.fuse(stacked), atol=1e-6)
    out, _ = _fusion_outputs("plain_sum")
    total = torch.stack(list(out.stream_locations.values())).sum(0)
    assert torch.allclose(out.locations, total, atol=1e-6)
    assert not torch.allclose(out.locations, total / 5, atol=1e-3)  # not the mean
    out, _ = _fusion_outputs("sum")  # the learnable weighted sum starts as the mean
    assert torch.allclose(out.locations, total / 5, atol=1e-6)


def test_without_coordinate_maps_a_stream_cannot_tell_positions_apart() -> None:
    """A uniform grey image: the input stream's interior cells see the same pixels, so without
    the coordinate maps they predict the same; with them the prediction varies with (x, y)."""
    image = torch.full((1, 3, 57, 57), 128.0)
    outs = {}
    for coord_maps in (True, False):
        torch.manual_seed(0)
        net = build_network(ModelConfig(backbone="alexnet", streams=("input",),
                                        coord_maps=coord_maps, **SMALL), "instance")
        with torch.no_grad():
            outs[coord_maps] = net(image).locations[0, :, 1:-1, 1:-1]  # (L, 6, 6) interior
    flat = outs[False]
    assert torch.allclose(flat, flat[:, :1, :1].expand_as(flat), atol=1e-6)
    varying = outs[True]
    assert (varying - varying[:, :1, :1]).abs().amax() > 1e-4


@pytest.mark.parametrize("features", ["both", "category", "instance"])
def test_count_features_flag_decides_what_the_count_head_reads(features) -> None:
    """The count head's input is fc7 ('category'), the fused locations ('instance') or both
    concatenated ('both', the paper's 64 + 6 channels here)."""
    torch.manual_seed(0)
    net = build_network(ModelConfig(backbone="alexnet", count_features=features, **SMALL),
                        "instance").eval()
    seen = []
    net.count_head.register_forward_hook(lambda module, args, out: seen.append(args[0]))
    x = torch.rand(1, 3, 41, 41) * 255
    with torch.no_grad():
        out = net(x)
        fc7 = net.backbone(x)["fc7"]  # (1, 64, 6, 6)
    expected = {"both": torch.cat([fc7, out.locations], dim=1), "category": fc7,
                "instance": out.locations}[features]
    (got,) = seen
    assert got.shape == expected.shape and torch.allclose(got, expected, atol=1e-6)
    assert net.count_head.conv.in_channels == {"both": 70, "category": 64, "instance": 6}[features]


def test_ceil_mode_changes_the_backbone_with_the_same_weights() -> None:
    """A 67-px input: conv1 (11x11/2 pad 5) gives 34 cells; pool1 (3x3/2 pad 1) gives
    ceil(33 / 2) + 1 = 18 in ceil mode, floor(33 / 2) + 1 = 17 without."""
    torch.manual_seed(0)
    paper = build_network(ModelConfig(backbone="alexnet", **SMALL), "instance").eval()
    x = torch.rand(1, 3, 67, 67) * 255
    with torch.no_grad():
        ref = paper.backbone(x)
        other = build_network(ModelConfig(backbone="alexnet", **SMALL, ceil_mode=False),
                              "instance").eval()
        other.load_state_dict(paper.state_dict())  # no weight differs
        feats = other.backbone(x)
        assert (ref["pool2"].shape[-1], feats["pool2"].shape[-1]) == (18, 17)
        assert torch.equal(ref["pool2"][..., :17, :17], feats["pool2"])


@pytest.mark.parametrize("output_stride", [8, 32])
def test_lite0_output_strides(output_stride: int) -> None:
    cfg = ModelConfig(backbone="efficientnet_lite0", lite_output_stride=output_stride, **SMALL)
    net = build_network(cfg, "unified")
    assert net.backbone.deep_stride == output_stride
    _forward_backward(net, "unified", cfg)


def test_vgg_real_widths_and_deeplab_geometry() -> None:
    """321 -> 41 (DeepLab's 8k+1), the paper's 1030-channel count input, fc6 dilation 12."""
    net = build_network(ModelConfig(num_classes=C), "unified")
    bb = net.backbone
    assert bb.fc6.dilation == (12, 12) and bb.fc6.weight.shape == (1024, 512, 3, 3)
    assert bb.fc7.weight.shape == (1024, 1024, 1, 1)
    assert [m.dilation for m in bb.block5 if isinstance(m, torch.nn.Conv2d)] == [(2, 2)] * 3
    assert net.count_head is not None and net.count_head.conv.in_channels == 1024 + 6
    assert net.location_head is not None and net.location_head.fuse is not None
    assert net.location_head.fuse.in_channels == 5 * 6
    # 321 -> 161 -> 81 -> 41 through the three 3x3/2 ceil-mode pools (convs keep the size)
    x = torch.zeros(1, 1, 321, 321)
    sizes = []
    for block in (bb.block1, bb.block2, bb.block3, bb.block4, bb.block5):
        x = block[-1](x)
        sizes.append(x.shape[-1])
    assert sizes == [161, 81, 41, 41, 41]
    with torch.no_grad():
        feats = net.backbone(torch.zeros(1, 3, 81, 81))
    assert feats["fc7"].shape == (1, 1024, 11, 11)
    # ceil mode: a 8k+2 side gives one more pool3 cell, cropped back onto the grid
    vgg = build_backbone("vgg16", 64)
    with torch.no_grad():
        assert vgg(torch.zeros(1, 3, 50, 66))["fc7"].shape[-2:] == (7, 9)


def test_caffe_normalisation_is_bgr_minus_mean() -> None:
    vgg = VGG16LargeFOV(64)
    x = torch.tensor([10.0, 20.0, 30.0]).view(1, 3, 1, 1).expand(1, 3, 9, 9)
    got = vgg(x)["input"][0, :, 0, 0]
    assert torch.allclose(got, torch.tensor([30 - 104.008, 20 - 116.669, 10 - 122.675]))


def test_same_output_type_in_train_and_eval() -> None:
    net = build_network(ModelConfig(backbone="alexnet", **SMALL), "unified")
    x = torch.rand(1, 3, 33, 41) * 255
    net.train()
    a = net(x)
    net.eval()
    with torch.no_grad():
        b = net(x)
    assert type(a) is type(b) is NetOutputs
    for t in (a.seg_logits, a.locations, a.counts, b.seg_logits, b.locations, b.counts):
        assert t is not None
    assert set(a.stream_locations) == set(b.stream_locations)


def test_align_to_grid_is_exact() -> None:
    # stride 8 map one cell too long (ceil mode): crop
    x = torch.arange(6.0).view(1, 1, 1, 6).expand(1, 1, 2, 6)
    assert align_to_grid(x, 8, 9, 33).tolist() == [[[[0.0, 1.0, 2.0, 3.0, 4.0]] * 2]]
    # stride 32 -> 8: sample k sits at pixel 8k = feature coordinate k / 4; beyond: replicate
    y = torch.tensor([[[[0.0, 4.0]]]])  # cells on pixels 0 and 32, image width 41 -> grid 6
    assert align_to_grid(y, 32, 1, 41)[0, 0, 0].tolist() == [0.0, 1.0, 2.0, 3.0, 4.0, 4.0]
    # stride 2 -> 8: every 4th cell
    z = torch.arange(9.0).view(1, 1, 1, 9)
    assert align_to_grid(z, 2, 1, 17)[0, 0, 0].tolist() == [0.0, 4.0, 8.0]


def test_coordinate_maps_are_pixel_centres() -> None:
    c = coordinate_maps(2, 3, 4, 8, 10, torch.zeros(1))
    assert c.shape == (1, 2, 2, 3)
    assert torch.allclose(c[0, 0, 0], torch.tensor([0.5, 4.5, 8.5]) / 10)
    assert torch.allclose(c[0, 1, :, 0], torch.tensor([0.5, 4.5]) / 8)


@pytest.mark.parametrize("stride,size,coords", [(1, (33, 50), True), (1, (41, 41), False),
                                                 (2, (33, 49), True), (2, (34, 40), True),
                                                 (4, (33, 47), True), (8, (33, 49), True)])
def test_stream_on_grid_equals_full_resolution_then_subsample(stride: int, size: tuple,
                                                              coords: bool) -> None:
    """Whatever the stream computes, it is the full-resolution prediction read at pixels 8i."""
    torch.manual_seed(0)
    H, W = size
    s = LocationStream(5, stride, 6, mid_channels=7, coord_maps=coords)
    hs, ws = (H - 1) // stride + 1, (W - 1) // stride + 1  # cell i on pixel stride * i
    feat = torch.randn(2, 5, hs, ws)
    got = s(feat, (H, W))
    y = F.relu(s.conv1(feat))
    if coords:
        y = torch.cat([y, coordinate_maps(hs, ws, stride, H, W, y).expand(2, -1, -1, -1)], dim=1)
    full = F.conv2d(y, s.conv2.weight, s.conv2.bias, padding=1)  # stride 1: every cell
    step = 8 // stride
    assert got.shape == (2, 6, grid_size(H), grid_size(W))
    assert torch.allclose(got, full[:, :, ::step, ::step], atol=1e-5)


def test_count_head_pool_matches_adaptive_avg_pool() -> None:
    torch.manual_seed(0)
    head = CountHead(4, 2, channels=3, hidden=5, pool=4)
    x = torch.randn(2, 4, 21, 11)
    y = F.relu(head.conv(x))
    ref = head.fc2(F.relu(head.fc1(F.adaptive_avg_pool2d(y, 4).flatten(1))))
    assert torch.allclose(head(x), ref, atol=1e-6)


def test_sum_fusion_starts_as_mean_and_one_stream_is_identity() -> None:
    net = build_network(ModelConfig(backbone="alexnet", fusion="sum", **SMALL), "instance")
    out = net(torch.rand(1, 3, 25, 25) * 255)
    mean = torch.stack(list(out.stream_locations.values())).mean(0)
    assert torch.allclose(out.locations, mean, atol=1e-6)
    one = build_network(ModelConfig(backbone="alexnet", streams=("fc7",), **SMALL), "instance")
    o = one(torch.rand(1, 3, 25, 25) * 255)
    assert o.locations is o.stream_locations["fc7"]


def _constant_streams_head(fusion: str) -> LocationHead:
    """Two stride-8 streams whose last conv has zero weights: stream pool3 outputs the
    constants 1..6, stream fc7 10..60 (their biases), at every cell."""
    head = LocationHead({"pool3": (4, 8), "fc7": (5, 8)}, 6, mid_channels=3, fusion=fusion)
    with torch.no_grad():
        for name, scale in (("pool3", 1.0), ("fc7", 10.0)):
            head.streams[name].conv2.weight.zero_()
            head.streams[name].conv2.bias.copy_(scale * torch.arange(1.0, 7.0))
    return head


def test_plain_sum_fusion_adds_the_streams_and_has_no_parameters() -> None:
    head = _constant_streams_head("plain_sum")
    assert head.fuse is None and head.sum_weight is None and head.sum_bias is None
    feats = {"pool3": torch.rand(2, 4, 3, 5), "fc7": torch.rand(2, 5, 3, 5)}
    fused, streams, _ = head(feats, (17, 33))  # grid 3 x 5
    assert fused.shape == (2, 6, 3, 5)
    expected = torch.tensor([11.0, 22.0, 33.0, 44.0, 55.0, 66.0]).view(1, 6, 1, 1)
    assert torch.equal(fused, expected.expand(2, 6, 3, 5))
    assert torch.equal(streams["pool3"][0, :, 0, 0], torch.arange(1.0, 7.0))
    # the weighted sum starts as the mean of the same streams: (1 + 10) / 2, ...
    mean, _, _ = _constant_streams_head("sum")(feats, (17, 33))
    assert torch.allclose(mean[0, :, 1, 2], expected.view(6) / 2)
    with pytest.raises(ValueError, match="fusion 'product'"):
        LocationHead({"fc7": (5, 8)}, 6, fusion="product")
    with pytest.raises(ConfigError, match="model.fusion='product'"):
        build_network(ModelConfig(backbone="alexnet", fusion="product", **SMALL), "instance")


def test_new_layers_gaussian_init() -> None:
    net = build_network(ModelConfig(backbone="alexnet", num_classes=C), "unified")
    w = net.count_head.fc1.weight.detach()
    assert abs(float(w.std()) - 0.01) < 1e-3 and float(net.count_head.fc1.bias.abs().sum()) == 0
    assert abs(float(net.category_head.fc8.weight.std()) - 0.01) < 2e-3


def test_param_groups_split_backbone_from_heads() -> None:
    net = build_network(ModelConfig(backbone="efficientnet_lite0", **SMALL), "unified")
    pre, new = net.param_groups()
    pre_ids, new_ids = {id(p) for p in pre}, {id(p) for p in new}
    assert not pre_ids & new_ids
    assert id(net.backbone._conv_stem.weight) in pre_ids
    assert id(net.backbone.project.weight) in new_ids  # Lite0's fc7 projection is new
    assert id(net.category_head.fc8.weight) in new_ids
    n_all = sum(1 for p in net.parameters() if p.requires_grad)
    assert len(pre) + len(new) == n_all


def test_init_from_category_network_and_freeze() -> None:
    cfg = ModelConfig(backbone="alexnet", **SMALL)
    cat = build_network(cfg, "category")
    inst = build_network(cfg, "instance")
    keys = inst.init_from(cat.state_dict())
    assert keys and all(k.startswith("backbone.") for k in keys)
    assert torch.equal(inst.backbone.fc7.weight, cat.backbone.fc7.weight)
    # from a system state dict (category.* prefix)
    inst2 = build_network(cfg, "instance")
    inst2.init_from(PFNSystem(cat, None).state_dict())
    assert torch.equal(inst2.backbone.conv1.weight, cat.backbone.conv1.weight)
    with pytest.raises(ValueError):
        inst.init_from(build_network(ModelConfig(backbone="vgg16", **SMALL), "category").state_dict())
    inst.freeze_all_but_count_head()
    trainable = {n for n, p in inst.named_parameters() if p.requires_grad}
    assert trainable and all(n.startswith("count_head.") for n in trainable)
    pre, new = inst.param_groups()
    assert not pre and len(new) == len(trainable)
    inst.unfreeze()
    assert all(p.requires_grad for p in inst.parameters())


def test_system_merges_category_and_instance() -> None:
    cfg = ModelConfig(backbone="alexnet", **SMALL)
    system = build_system(cfg, "instance").eval()
    x = torch.rand(1, 3, 41, 49) * 255
    with torch.no_grad():
        out = system(x)
        seg = system.category(x).seg_logits
        inst = system.instance(x)
    assert torch.equal(out.seg_logits, seg)
    assert torch.equal(out.locations, inst.locations) and torch.equal(out.counts, inst.counts)
    keys = system.state_dict().keys()
    assert any(k.startswith("category.") for k in keys) and any(k.startswith("instance.") for k in keys)
    assert system.complete
    stage1 = build_system(cfg, "category")
    assert not stage1.complete and stage1(x).locations is None
    unified = build_system(cfg, "unified")
    assert unified.category is None and unified(x).seg_logits is not None
    counts = build_system(cfg, "counts")  # stage 'counts' holds what stage 2 holds
    assert counts.complete and counts.state_dict().keys() == system.state_dict().keys()
    with pytest.raises(ConfigError, match="'category', 'instance', 'unified' or 'counts'"):
        build_system(cfg, "stage3")
    with pytest.raises(ValueError):
        PFNSystem(None, build_network(cfg, "instance"))


def test_bad_config_values_raise_config_error() -> None:
    with pytest.raises(ConfigError, match="model.backbone"):
        build_network(ModelConfig(backbone="resnet"), "category")
    with pytest.raises(ConfigError, match="kind"):
        build_network(ModelConfig(), "both")
    with pytest.raises(ConfigError, match="streams"):
        build_network(replace(ModelConfig(), streams=("pool9",)), "instance")


def test_gated_counts_weight_each_cell_by_the_category_probability():
    from pfn_napari.model.pfn import gated_counts

    density = torch.ones(1, 2, 2, 2)  # one instance per cell and class: 4 each ungated
    logits = torch.full((1, 3, 3, 3), -1e4)  # grid 3x3 -> density cells on grid cells 0, 2
    logits[0, 0] = 0.0  # background everywhere ...
    logits[0, 0, 0, 0], logits[0, 1, 0, 0] = -1e4, 0.0  # ... but class 1 at grid cell (0, 0)
    logits[0, 0, 2, 2], logits[0, 2, 2, 2] = -1e4, 0.0  # and class 2 at grid cell (2, 2)
    logits[0, 0, 1, 1], logits[0, 1, 1, 1] = -1e4, 0.0  # class 1 off the density cells: unread
    counts = gated_counts(density, logits)
    assert counts.tolist() == [[1.0, 1.0]]


def test_system_gates_density_counts_only_when_asked():
    from pfn_napari.config import ModelConfig

    torch.manual_seed(0)
    for gate in (False, True):
        cfg = ModelConfig(backbone="alexnet", num_classes=2, streams=("fc7",), fc7_channels=16,
                          count_hidden=8, count_head="density", count_gate=gate)
        system = build_system(cfg, "instance").eval()
        out = system(torch.rand(1, 3, 65, 65) * 255)
        ungated = out.count_density.sum(dim=(2, 3))
        assert torch.allclose(out.counts, ungated) != gate

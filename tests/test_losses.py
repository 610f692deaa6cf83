"""Losses against hand-computed values."""

from __future__ import annotations

import math

import pytest
import torch

from pfn_napari.config import LossConfig
from pfn_napari.losses import count_loss, location_loss, segmentation_loss, total_loss
from pfn_napari.model.pfn import NetOutputs


def test_segmentation_loss_ignores_void() -> None:
    logits = torch.zeros(1, 2, 1, 3)
    logits[0, 1, 0, 0] = math.log(3.0)  # p(class 1) = 3/4 at cell 0
    target = torch.tensor([[[1, 0, 255]]])
    # cell 0: -log(3/4); cell 1: logits equal -> -log(1/2); cell 2 ignored
    expected = (-math.log(0.75) + math.log(2.0)) / 2
    assert segmentation_loss(logits, target).item() == pytest.approx(expected, rel=1e-6)
    all_void = torch.full((1, 1, 3), 255)
    assert segmentation_loss(logits, all_void).item() == 0.0


def test_location_loss_masked_smooth_l1_per_foreground_cell() -> None:
    pred = torch.zeros(1, 2, 1, 3)
    target = torch.zeros(1, 2, 1, 3)
    target[0, 0, 0, 0] = 0.5  # |d| < 1: 0.5 d^2 = 0.125
    target[0, 1, 0, 0] = 3.0  # |d| >= 1: |d| - 0.5 = 2.5
    target[0, 0, 0, 1] = 2.0  # 1.5, but on a background cell
    target[0, 1, 0, 2] = -0.2  # 0.02
    weight = torch.tensor([[[1.0, 0.0, 1.0]]])
    expected = (0.125 + 2.5 + 0.02) / 2  # two foreground cells
    assert location_loss(pred, target, weight).item() == pytest.approx(expected, rel=1e-6)


def test_location_loss_pools_foreground_over_the_batch() -> None:
    pred = torch.zeros(2, 1, 1, 2)
    target = torch.tensor([[[[0.4, 0.0]]], [[[0.0, 0.0]]]])  # only image 0 has an error
    weight = torch.tensor([[[1.0, 0.0]], [[1.0, 1.0]]])  # 3 foreground cells in the batch
    assert location_loss(pred, target, weight).item() == pytest.approx(0.5 * 0.16 / 3, rel=1e-6)


def test_location_loss_divides_by_foreground_cells_not_by_the_weights() -> None:
    # weights 2 and 0.5 on two foreground cells (errors 0.4 and 0.2): Omega = 2 cells, not
    # 2.5; the loss is (2 * 0.5 * 0.16 + 0.5 * 0.5 * 0.04) / 2 = 0.085
    pred = torch.zeros(1, 1, 1, 3)
    target = torch.tensor([[[[0.4, 0.2, 0.9]]]])
    weight = torch.tensor([[[2.0, 0.5, 0.0]]])
    assert location_loss(pred, target, weight).item() == pytest.approx(0.085, rel=1e-6)


def test_location_loss_empty_foreground_is_zero_with_finite_gradient() -> None:
    pred = torch.randn(2, 6, 3, 3, requires_grad=True)
    loss = location_loss(pred, torch.ones(2, 6, 3, 3), torch.zeros(2, 3, 3))
    loss.backward()
    assert loss.item() == 0.0
    assert pred.grad is not None and torch.isfinite(pred.grad).all() and pred.grad.abs().sum() == 0


def test_count_loss_is_mean_squared_error() -> None:
    pred = torch.tensor([[1.0, 0.0], [2.0, 2.0]])
    target = torch.tensor([[3.0, 0.0], [2.0, 1.0]])
    assert count_loss(pred, target).item() == pytest.approx((4 + 0 + 0 + 1) / 4)


def _batch() -> dict[str, torch.Tensor]:
    return {
        "class_map": torch.tensor([[[1, 0]]]),  # (1, 1, 2)
        "locations": torch.tensor([[[[0.5, 0.0]]]]),  # (1, 1, 1, 2)  L = 1
        "location_weight": torch.tensor([[[1.0, 0.0]]]),
        "counts": torch.tensor([[2.0]]),
    }


def test_total_loss_instance_sums_streams_and_fused() -> None:
    zeros = torch.zeros(1, 1, 1, 2)
    out = NetOutputs(locations=zeros.clone(),
                     stream_locations={"input": zeros.clone(), "fc7": zeros + 1.5},
                     counts=torch.tensor([[1.0]]))
    cfg = LossConfig(loc_weight=10.0, count_weight=1.0)
    loss, parts = total_loss(out, _batch(), cfg, "instance")
    # per output: cell 0 only; fused/input: 0.5 * 0.25 = 0.125; fc7: |1.0| - 0.5 = 0.5
    lo = 0.125 + 0.125 + 0.5
    assert parts["loc"] == pytest.approx(lo)
    assert parts["loc/fc7"] == pytest.approx(0.5) and parts["loc/fused"] == pytest.approx(0.125)
    assert parts["count"] == pytest.approx(1.0)
    assert loss.item() == pytest.approx(10 * lo + 1.0) and parts["total"] == pytest.approx(loss.item())
    assert "seg" not in parts


def test_total_loss_counts_is_the_count_loss_alone() -> None:
    """Stage 'counts': the weighted count loss, no location or segmentation term."""
    out = NetOutputs(locations=torch.zeros(1, 1, 1, 2) + 9.0,
                     stream_locations={"fc7": torch.zeros(1, 1, 1, 2) + 9.0},
                     counts=torch.tensor([[5.0]]))
    loss, parts = total_loss(out, _batch(), LossConfig(count_weight=0.5), "counts")
    assert parts["count"] == pytest.approx(9.0)  # (5 - 2) ** 2
    assert loss.item() == pytest.approx(4.5) and set(parts) == {"count", "total"}
    with pytest.raises(ValueError, match="needs counts"):
        total_loss(NetOutputs(), _batch(), LossConfig(), "counts")


def test_total_loss_single_stream_counted_once_and_unified_adds_seg() -> None:
    fused = torch.zeros(1, 1, 1, 2)
    out = NetOutputs(seg_logits=torch.zeros(1, 2, 1, 2), locations=fused,
                     stream_locations={"fc7": fused}, counts=torch.tensor([[2.0]]))
    loss, parts = total_loss(out, _batch(), LossConfig(loc_weight=2.0, seg_weight=0.5), "unified")
    assert set(k for k in parts if k.startswith("loc/")) == {"loc/fc7"}
    expected = 0.5 * math.log(2.0) + 2.0 * 0.125 + 0.0
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    seg_only, parts = total_loss(out, _batch(), LossConfig(), "category")
    assert set(parts) == {"seg", "total"} and seg_only.item() == pytest.approx(math.log(2.0))
    with pytest.raises(ValueError):
        total_loss(NetOutputs(), _batch(), LossConfig(), "instance")


def test_total_loss_is_float32_for_a_mixed_precision_forward_pass() -> None:
    """Maps in bfloat16 (``train.amp``'s forward pass) give a float32 loss, equal to the loss
    of the same values in float32, with gradients flowing back in bfloat16."""
    torch.manual_seed(0)
    maps = [torch.randn(1, 2, 1, 2), torch.randn(1, 2, 1, 2), torch.randn(1, 1) * 3]
    low = [m.to(torch.bfloat16).requires_grad_() for m in maps]
    out = NetOutputs(seg_logits=low[0], locations=low[1], stream_locations={"fc7": low[1]},
                     counts=low[2])
    loss, parts = total_loss(out, _batch(), LossConfig(), "unified")
    assert loss.dtype == torch.float32
    same = NetOutputs(seg_logits=low[0].float(), locations=low[1].float(),
                      stream_locations={"fc7": low[1].float()}, counts=low[2].float())
    assert loss.item() == total_loss(same, _batch(), LossConfig(), "unified")[0].item()
    loss.backward()
    assert all(m.grad is not None and m.grad.dtype == torch.bfloat16 for m in low)


def test_count_loss_sum_is_caffe_euclidean_per_image() -> None:
    pred = torch.tensor([[1.0, 2.0, 0.0], [0.0, 0.0, 0.0]])
    target = torch.tensor([[0.0, 0.0, 0.0], [3.0, 0.0, 1.0]])
    # image 1: (1 + 4) / 2 = 2.5; image 2: (9 + 1) / 2 = 5; mean 3.75
    assert count_loss(pred, target, "sum").item() == pytest.approx(3.75)
    assert count_loss(pred, target).item() == pytest.approx(15 / 6)
    with pytest.raises(ValueError, match="reduction"):
        count_loss(pred, target, "max")


def test_location_units_alternate_x_and_y() -> None:
    from pfn_napari.losses import location_units

    u = location_units(6, (96, 64), 32.0, torch.zeros(1))
    assert u.shape == (1, 6, 1, 1)
    assert u.flatten().tolist() == [2.0, 3.0, 2.0, 3.0, 2.0, 3.0]  # W / 32, H / 32


def test_total_loss_in_pixel_units_does_not_depend_on_the_crop_size() -> None:
    """The same 16-pixel error on a 64- and a 128-pixel input gives the same loss."""
    from pfn_napari.config import LossConfig

    cfg = LossConfig(loc_weight=1.0, count_weight=0.0, loc_unit=32.0)
    values = []
    for size in (64, 128):
        target = torch.full((1, 2, 3, 3), 0.5)
        pred = target + 16.0 / size  # 16 px off in x and y
        out = NetOutputs(locations=pred, stream_locations={"fc7": pred},
                         counts=torch.zeros(1, 1))
        batch = {"image": torch.zeros(1, 3, size, size), "locations": target,
                 "location_weight": torch.ones(1, 3, 3), "counts": torch.zeros(1, 1)}
        loss, _ = total_loss(out, batch, cfg, "instance")
        values.append(loss.item())
    # 0.5 unit per channel: smooth-L1 (beta 1) = 0.5 * 0.25 = 0.125, two channels
    assert values == pytest.approx([0.25, 0.25])


def _count_and_location_case() -> tuple[NetOutputs, dict[str, torch.Tensor]]:
    """One image, one stream, 3 classes: location error 0.5 on the one foreground cell; counts
    (1, 0, 0) against (3, 1, 0)."""
    fused = torch.zeros(1, 1, 1, 2)
    out = NetOutputs(locations=fused, stream_locations={"fc7": fused},
                     counts=torch.tensor([[1.0, 0.0, 0.0]]))
    batch = dict(_batch(), counts=torch.tensor([[3.0, 1.0, 0.0]]))
    return out, batch


@pytest.mark.parametrize("reduction, expected", [("mean", (4 + 1 + 0) / 3),
                                                 ("sum", (4 + 1 + 0) / 2)])
def test_total_loss_reads_loss_count_reduction(reduction, expected) -> None:
    out, batch = _count_and_location_case()
    cfg = LossConfig(loc_weight=0.0, count_weight=1.0, count_reduction=reduction)
    loss, parts = total_loss(out, batch, cfg, "instance")
    assert parts["count"] == pytest.approx(expected)
    assert loss.item() == pytest.approx(expected)


def test_single_stream_with_location_units_is_counted_once() -> None:
    """With size-consistent locations (unit > 0) the head returns the one stream and the fused
    output as two tensors of equal values (``anchor + raw * scale`` each); the loss counts that
    stream once, as without units (it counted it twice: the location loss doubled for
    ``model.streams=[fc7]`` in the CPU recipes)."""
    from pfn_napari.model.heads import LocationHead

    torch.manual_seed(0)
    head = LocationHead({"fc7": (8, 8)}, 2, mid_channels=4, channels=("cx", "cy"), unit=32.0)
    fused, streams, _ = head({"fc7": torch.randn(1, 8, 2, 2)}, (16, 16))
    assert streams["fc7"] is not fused and torch.equal(streams["fc7"], fused)
    out = NetOutputs(locations=fused, stream_locations=streams, counts=torch.tensor([[2.0]]))
    batch = {"image": torch.zeros(1, 3, 16, 16), "locations": torch.zeros(1, 2, 2, 2),
             "location_weight": torch.ones(1, 2, 2), "counts": torch.tensor([[2.0]])}
    cfg = LossConfig(loc_weight=1.0, loc_unit=32.0)
    loss, parts = total_loss(out, batch, cfg, "instance")
    assert set(k for k in parts if k.startswith("loc/")) == {"loc/fc7"}
    assert parts["loc"] == pytest.approx(parts["loc/fc7"]) and parts["loc"] > 0
    assert loss.item() == pytest.approx(parts["loc/fc7"])

"""Losses against hand-computed values."""

from __future__ import annotations

import math

import pytest
import torch

from pfn_napari.config import LossConfig
from pfn_napari.losses import (box_giou_loss, coherence_loss, count_loss, location_loss,
                               segmentation_loss, separation_loss, total_loss)
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


def _two_people_and_a_dog() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """One image of 5 cells: two of person A, two of person B (class 1; boxes 2 units apart on
    each x channel), one of a dog (class 2). Returns ``target (1, 6, 1, 5)``, ``weight``,
    ``class_map`` and the person boxes ``(2, 6)``."""
    a = torch.zeros(6)
    b = torch.tensor([2.0, 0.0, 2.0, 0.0, 2.0, 0.0])
    dog = torch.full((6,), 1.0)
    target = torch.stack([a, a, b, b, dog], dim=1).view(1, 6, 1, 5)
    class_map = torch.tensor([[[1, 1, 1, 1, 2]]])
    return target, torch.ones(1, 1, 5), class_map, torch.stack([a, b])


def test_separation_loss_scores_each_cell_against_the_rival_boxes_of_its_class() -> None:
    target, weight, class_map, (a, b) = _two_people_and_a_dog()
    # every cell at its own box: log(1 + exp(-1 / 0.25)) per person cell; the dog has no rival
    assert separation_loss(target, target, weight, class_map).item() == pytest.approx(
        math.log(1 + math.exp(-4.0)), rel=1e-5)
    # the person cells halfway between the two boxes: log 2 whatever the boxes' distance
    for scale in (1.0, 5.0):
        mid = (a + b) / 2 * scale
        pred = torch.stack([mid] * 4 + [target[0, :, 0, 4]], dim=1).view(1, 6, 1, 5)
        loss = separation_loss(pred, target * scale, weight, class_map)
        assert loss.item() == pytest.approx(math.log(2.0), rel=1e-6)
    # a cell that drifts towards the rival costs more than one that misses away from both
    away, towards = target.clone(), target.clone()
    away[0, 0, 0, 0] = -1.0  # person A's cell 1 unit off, away from B
    towards[0, 0, 0, 0] = 1.0  # 1 unit off, towards B
    assert (separation_loss(towards, target, weight, class_map)
            > separation_loss(away, target, weight, class_map))
    assert location_loss(towards, target, weight) == location_loss(away, target, weight)


def test_separation_loss_pushes_each_cell_towards_its_own_box_and_ignores_lone_instances() -> None:
    target, weight, class_map, (a, b) = _two_people_and_a_dog()
    pred = torch.stack([(a + b) / 2] * 4 + [torch.full((6,), 9.0)], dim=1).view(1, 6, 1, 5)
    pred.requires_grad_(True)
    separation_loss(pred, target, weight, class_map).backward()
    grad_x = pred.grad[0, 0, 0]  # (5,) on the cx channel; descent moves against it
    assert (grad_x[:2] > 0).all() and (grad_x[2:4] < 0).all()  # A's cells left, B's right
    assert grad_x[4] == 0 and (pred.grad[0, 1::2] == 0).all()  # the dog; the equal y channels
    # only one person (B's cells are background): nothing to tell apart, a zero loss and gradient
    lone = weight.clone()
    lone[0, 0, 2:4] = 0
    pred.grad = None
    loss = separation_loss(pred, target, lone, class_map)
    loss.backward()
    assert loss.item() == 0.0 and (pred.grad == 0).all()


def test_total_loss_adds_the_separation_term_on_the_fused_output_only_when_weighted() -> None:
    target, weight, class_map, (a, b) = _two_people_and_a_dog()
    fused = torch.stack([(a + b) / 2] * 4 + [target[0, :, 0, 4]], dim=1).view(1, 6, 1, 5)
    size = 32  # a 32-pixel input: with loc_unit 32, one normalised unit is one loss unit
    out = NetOutputs(locations=fused, stream_locations={"fc7": target, "pool3": target},
                     counts=torch.zeros(1, 2))
    batch = {"image": torch.zeros(1, 3, size, size), "locations": target,
             "location_weight": weight, "class_map": class_map, "counts": torch.zeros(1, 2)}
    plain, parts0 = total_loss(out, batch, LossConfig(loc_weight=1.0, loc_unit=32.0), "instance")
    assert "sep" not in parts0
    cfg = LossConfig(loc_weight=1.0, loc_unit=32.0, separation_weight=2.0)
    loss, parts = total_loss(out, batch, cfg, "instance")
    assert parts["sep"] == pytest.approx(math.log(2.0), rel=1e-6)  # the fused output's cells
    assert loss.item() == pytest.approx(plain.item() + 2.0 * math.log(2.0), rel=1e-6)


def test_coherence_loss_charges_the_cells_of_an_instance_for_disagreeing_not_for_missing() -> None:
    target, weight, class_map, (a, b) = _two_people_and_a_dog()
    # every cell of an instance off by the same amount: they agree, nothing to pay
    assert coherence_loss(target + 3.0, target, weight, class_map).item() == 0.0
    # person A's two cells 1 unit apart on cx (mean halfway): 0.5 * 0.5^2 each, over 5 cells
    pred = target.clone()
    pred[0, 0, 0, 0] += 0.5
    pred[0, 0, 0, 1] -= 0.5
    assert coherence_loss(pred, target, weight, class_map).item() == pytest.approx(
        2 * 0.125 / 5, rel=1e-6)
    # its gradient draws the two cells together (descent moves against it)
    pred.requires_grad_(True)
    coherence_loss(pred, target, weight, class_map).backward()
    assert pred.grad[0, 0, 0, 0] > 0 > pred.grad[0, 0, 0, 1]
    assert (pred.grad[0, :, 0, 2:] == 0).all()  # B and the dog agree already
    empty = torch.zeros_like(weight)
    assert coherence_loss(pred, target, empty, class_map).item() == 0.0


def test_total_loss_adds_the_coherence_term_when_weighted() -> None:
    target, weight, class_map, _ = _two_people_and_a_dog()
    fused = target.clone()
    fused[0, 0, 0, 0] += 0.5
    fused[0, 0, 0, 1] -= 0.5
    out = NetOutputs(locations=fused, stream_locations={"fc7": target, "pool3": target},
                     counts=torch.zeros(1, 2))
    batch = {"image": torch.zeros(1, 3, 32, 32), "locations": target,
             "location_weight": weight, "class_map": class_map, "counts": torch.zeros(1, 2)}
    plain, _ = total_loss(out, batch, LossConfig(loc_weight=1.0, loc_unit=32.0), "instance")
    cfg = LossConfig(loc_weight=1.0, loc_unit=32.0, coherence_weight=4.0)
    loss, parts = total_loss(out, batch, cfg, "instance")
    assert parts["coh"] == pytest.approx(0.05, rel=1e-6) and "sep" not in parts
    assert loss.item() == pytest.approx(plain.item() + 4.0 * 0.05, rel=1e-6)


def _box_cells(boxes: list[list[float]]) -> torch.Tensor:
    """``(1, 6, 1, n)`` box6 locations of ``n`` cells from their ``[lx, ly, rx, ry]`` boxes
    (the center channels hold the box centers)."""
    rows = [[(b[0] + b[2]) / 2, (b[1] + b[3]) / 2, *b] for b in boxes]
    return torch.tensor(rows).T.reshape(1, 6, 1, len(boxes))


def test_box_giou_loss_is_one_minus_giou_relative_to_the_objects_size() -> None:
    target = _box_cells([[0.1, 0.1, 0.3, 0.5]])  # 0.2 x 0.4
    weight = torch.ones(1, 1, 1)
    assert box_giou_loss(target, target, weight).item() == pytest.approx(0.0, abs=1e-5)
    wider = _box_cells([[0.1, 0.1, 0.5, 0.5]])  # twice as wide: IoU 1/2, the hull is the union
    assert box_giou_loss(wider, target, weight).item() == pytest.approx(0.5, rel=1e-5)
    # relative: the same box error on an object 5x larger costs far less; an axis scaled
    # alike on both boxes (pixels instead of fractions of W) changes nothing
    big = _box_cells([[0.1, 0.1, 1.1, 2.1]])
    big_off = _box_cells([[0.1, 0.1, 1.3, 2.1]])  # 0.2 wider, as above
    assert box_giou_loss(big_off, big, weight).item() == pytest.approx(1 - 1 / 1.2, rel=1e-5)
    scale = torch.tensor([3.0, 1.0]).repeat(3).view(1, 6, 1, 1)
    assert box_giou_loss(wider * scale, target * scale, weight).item() == pytest.approx(
        0.5, rel=1e-5)
    # disjoint boxes: IoU 0, and the hull term: hull 0.6 x 0.4, union 0.12 -> GIoU = -0.5
    apart = _box_cells([[0.6, 0.1, 0.7, 0.5]])
    assert box_giou_loss(apart, target, weight).item() == pytest.approx(1.5, rel=1e-5)


def test_box_giou_loss_of_crossed_corners_is_finite_and_ignores_the_background() -> None:
    target = _box_cells([[0.1, 0.1, 0.3, 0.5], [0.0, 0.0, 0.2, 0.2]])
    pred = _box_cells([[0.4, 0.1, 0.35, 0.5], [0.0, 0.0, 0.9, 0.9]])  # cell 0: rx < lx
    weight = torch.tensor([[[1.0, 0.0]]])  # cell 1 is background
    pred.requires_grad_(True)
    loss = box_giou_loss(pred, target, weight)
    loss.backward()
    # a crossed box has no area: IoU 0; hull 0.25 x 0.4, union 0.08 -> GIoU -0.2
    assert loss.item() == pytest.approx(1.2, rel=1e-5)
    assert torch.isfinite(pred.grad).all()
    assert (pred.grad[0, :, 0, 1] == 0).all()
    assert box_giou_loss(pred, target, torch.zeros(1, 1, 2)).item() == 0.0


def test_total_loss_adds_the_giou_term_of_every_stream_when_weighted() -> None:
    target = _box_cells([[0.1, 0.1, 0.3, 0.5], [0.1, 0.1, 0.3, 0.5]])
    wider = _box_cells([[0.1, 0.1, 0.5, 0.5], [0.1, 0.1, 0.5, 0.5]])
    out = NetOutputs(locations=target, stream_locations={"fc7": wider, "pool3": target},
                     counts=torch.zeros(1, 1))
    batch = {"image": torch.zeros(1, 3, 16, 16), "locations": target,
             "location_weight": torch.ones(1, 1, 2), "class_map": torch.ones(1, 1, 2).long(),
             "counts": torch.zeros(1, 1)}
    plain, parts = total_loss(out, batch, LossConfig(loc_weight=1.0, loc_unit=32.0), "instance")
    assert "giou" not in parts
    cfg = LossConfig(loc_weight=1.0, loc_unit=32.0, giou_weight=2.0)
    loss, parts = total_loss(out, batch, cfg, "instance")
    # fc7's boxes are twice as wide (0.5 each cell); pool3 and the fused output are exact
    assert parts["giou"] == pytest.approx(0.5, rel=1e-4)
    assert loss.item() == pytest.approx(plain.item() + 2.0 * 0.5, rel=1e-4)

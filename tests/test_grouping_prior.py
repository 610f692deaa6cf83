"""grouping/prior.py: the ImageNet prior names objects only on the category map's background."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
from scipy import ndimage

from pfn_napari.config import GroupingConfig
from pfn_napari.config import ConfigError
from pfn_napari.grouping import Grouper
from pfn_napari.errors import PFNError
from pfn_napari.grouping.prior import (RELABEL_OWN_MAX, check_instances, fused_labels,
                                       grabcut_shape, prior_fill)
from pfn_napari.structures import NetworkOutput

H, W, C = 64, 96, 3  # classes: 1 person (no ImageNet counterpart), 2 dog, 3 bus


def scene():
    """A person found by the network at the left; evidence for a dog far right (a 20 x 20
    square) and for a bus in an 8-pixel strip hugging the person; background everywhere else.
    (The fill reads the fused label every 8 pixels first: what it names is at least that wide.)"""
    class_map = np.zeros((H, W), np.uint8)
    class_map[10:50, 5:25] = 1  # (H, W) the person
    probs = np.zeros((C + 1, H, W), np.float32)
    probs[0] = 0.9
    probs[1:] = 0.1 / C
    probs[:, class_map == 1] = np.array([0.05, 0.9, 0.025, 0.025])[:, None]
    evidence = np.full((C, H, W), 0.01, np.float32)
    evidence[0] = 0.0  # person: no ImageNet class
    evidence[1, 30:50, 60:80] = 0.8  # a dog the network missed
    evidence[2, 10:50, 25:33] = 0.8  # "bus" along the person's right side
    fillable = evidence.reshape(C, -1).max(1) > 0
    return class_map, probs, evidence, fillable


def test_fused_labels_add_the_bonus_to_fillable_classes_only() -> None:
    probs = np.array([[0.9, 0.9], [0.05, 0.05], [0.05, 0.05]], np.float32)  # (C+1, n), C = 2
    evidence = np.array([[0.9, 0.9], [0.0, 0.9]], np.float32)  # (C, n)
    # class 1 is not fillable: its strong evidence changes nothing; class 2 wins where e = 0.9
    labels = fused_labels(probs, evidence, np.array([False, True]), weight=5, eps=0.1)
    assert labels.tolist() == [0, 2]
    assert fused_labels(probs, evidence, np.array([True, True]), 0.0, 0.1).tolist() == [0, 0]


def test_a_missed_object_becomes_one_instance_and_found_objects_stay() -> None:
    class_map, probs, evidence, fillable = scene()
    fill = prior_fill(class_map, probs, evidence, fillable, weight=5, eps=0.1, min_frac=0.02,
                      touch=0.25)
    assert fill.classes.tolist() == [2]  # the dog; the bus strip hugs the person: dropped
    dog = np.zeros((H, W), bool)
    dog[30:50, 60:80] = True
    assert np.array_equal(fill.masks[0], dog)
    assert fill.scores[0] == pytest.approx(0.8)
    assert np.array_equal(fill.labels, dog.astype(np.uint8) * 2)
    assert not (fill.labels[class_map > 0]).any()  # never on the network's objects


def test_touch_min_frac_and_weight_decide_what_is_kept() -> None:
    class_map, probs, evidence, fillable = scene()
    loose = prior_fill(class_map, probs, evidence, fillable, 5, 0.1, 0.02, touch=1.0)
    assert sorted(loose.classes.tolist()) == [2, 3]  # the strip too, with no touch limit
    bus = loose.masks[loose.classes.tolist().index(3)]
    assert bus[10:50, 25:33].all() and bus.sum() == 320
    big = prior_fill(class_map, probs, evidence, fillable, 5, 0.1, min_frac=0.1, touch=1.0)
    assert len(big.classes) == 0 and not big.labels.any()  # 400 px < 10 % of 6144
    off = prior_fill(class_map, probs, evidence, fillable, 0.0, 0.1, 0.02, 1.0)
    assert len(off.classes) == 0
    weak = prior_fill(class_map, probs, evidence * 0.01, fillable, 5, 0.1, 0.02, 1.0)
    assert len(weak.classes) == 0  # confident background resists weak evidence


def test_void_and_other_classes_are_not_background() -> None:
    class_map, probs, evidence, fillable = scene()
    class_map[30:50, 60:80] = 255  # void where the dog is
    fill = prior_fill(class_map, probs, evidence, fillable, 5, 0.1, 0.02, 0.25)
    assert len(fill.classes) == 0


def network_output(with_evidence: bool) -> NetworkOutput:
    """The scene on a stride-8 grid (exact cells), locations all pointing at the person."""
    class_map, probs, evidence, _ = scene()
    h, w = (H - 1) // 8 + 1, (W - 1) // 8 + 1
    grid = probs[:, ::8, ::8]  # (C+1, h, w)
    locations = np.zeros((6, h, w), np.float32)
    locations[:, :, :] = np.array([15, 30, 5, 10, 25, 50], np.float32)[:, None, None] / \
        np.array([W, H, W, H, W, H], np.float32)[:, None, None]
    ev32 = evidence[:, ::32, ::32] if with_evidence else None  # (C, 2, 3)
    if with_evidence:  # a stride-32 grid of the same scene: the dog in the last column's cells
        ev32 = np.full((C, 2, 3), 0.01, np.float32)
        ev32[0] = 0.0
        ev32[1, 1, 2] = 0.8
    return NetworkOutput(class_probs=grid, locations=locations,
                         counts=np.array([1.0, 0.0, 0.0], np.float32), image_size=(H, W),
                         full_class_probs=probs, prior_evidence=ev32)


def test_grouper_appends_the_prior_objects_and_keeps_the_others() -> None:
    cfg = GroupingConfig(method="vote", count_source="head", min_size_frac=0.0)
    plain = Grouper(network_output(False)).run(replace(cfg, prior_weight=5.0))
    assert plain.prior_labels is None and plain.instances.classes.tolist() == [1]
    without = Grouper(network_output(True)).run(cfg)
    assert without.prior_labels is None
    result = Grouper(network_output(True)).run(replace(cfg, prior_weight=5.0, prior_touch=1.0))
    assert result.instances.classes.tolist() == [1, 2]
    assert np.array_equal(result.instances.masks[0], without.instances.masks[0])
    dog = result.instances.masks[1]
    assert dog[50:64, 80:96].all() and not dog[class_map_of_person()].any()
    assert (result.full_class_map[dog] == 2).all() and (result.prior_labels[dog] == 2).all()
    x1, y1, x2, y2 = result.boxes[1]
    assert (x2, y2) == (W, H) and result.centers[1][0] > x1 and "prior" in result.timings


def class_map_of_person() -> np.ndarray:
    return scene()[0] == 1


def test_prior_settings_are_validated() -> None:
    for bad in ({"prior_weight": -1.0}, {"prior_eps": 0.0}, {"prior_min_frac": 1.0},
                {"prior_touch": 1.5}, {"prior_check_any": 2.0}, {"prior_check_named": -0.1},
                {"prior_check_relabel": 0.0}, {"prior_shape": "snake"}):
        with pytest.raises(ConfigError, match=f"grouping.{next(iter(bad))}"):
            GroupingConfig(**bad).validate()


def test_wrong_evidence_shape_is_one_clear_error() -> None:
    net = replace(network_output(True), prior_evidence=np.zeros((2, 2, 3), np.float32))
    with pytest.raises(PFNError, match=r"prior_evidence \(2, 2, 3\) is not \(C, h, w\)"):
        Grouper(net).run(GroupingConfig(method="vote", prior_weight=5.0))


# ---------------------------------------------------------------- the crop check and the shape
def test_check_instances_drops_relabels_and_keeps_by_the_rules() -> None:
    covered = np.array([False, True, True, True])  # 1 person; 2 dog, 3 bus, 4 horse
    classes = np.array([1, 3, 3, 4, 2, 2])
    from_prior = np.array([False, False, False, False, True, True])
    ev = np.array([[0.0, 0.9, 0.0, 0.0],   # person: never read
                   [0.0, 0.02, 0.03, 0.0],  # a network's bus the crop sees nothing of: dropped
                   [0.0, 0.9, 0.01, 0.0],  # a network's bus the crop is sure is a dog
                   [0.0, 0.7, 0.0, 0.1],  # a network's horse: dog 0.7 < 0.8, kept a horse
                   [0.0, 0.25, 0.0, 0.0],  # a prior dog its crop confirms
                   [0.0, 0.15, 0.6, 0.0]])  # a prior dog its crop does not: dropped
    keep, out = check_instances(classes, from_prior, ev, covered, any_min=0.1, named_min=0.2,
                                relabel_min=0.8)
    assert keep.tolist() == [True, False, True, True, True, False]
    assert out.tolist() == [1, 3, 2, 4, 2, 2]  # prior objects are never relabelled
    # own class at RELABEL_OWN_MAX or more: the network's class stands
    ev[2, 2] = RELABEL_OWN_MAX
    assert check_instances(classes, from_prior, ev, covered, 0.1, 0.2, 0.8)[1][2] == 3
    # relabel_min above 1: never relabelled; nothing covered: nothing read
    assert check_instances(classes, from_prior, ev, covered, 0.1, 0.2, 1.1)[1].tolist() == \
        classes.tolist()
    keep, out = check_instances(classes, from_prior, ev, np.zeros(4, bool), 0.1, 0.2, 0.8)
    assert keep.all() and out.tolist() == classes.tolist()


def dark_square_photo() -> tuple[np.ndarray, np.ndarray]:
    """A light, noisy ``(H, W, 3)`` photo with a dark 16-pixel square; and the square's mask."""
    rng = np.random.default_rng(0)
    image = rng.integers(185, 215, size=(H, W, 3)).astype(np.uint8)
    square = np.zeros((H, W), bool)
    square[36:52, 68:84] = True
    image[square] = rng.integers(30, 50, size=(int(square.sum()), 3)).astype(np.uint8)
    return image, square


def test_grabcut_fits_a_coarse_region_to_the_object() -> None:
    pytest.importorskip("cv2")
    image, square = dark_square_photo()
    blob = ndimage.binary_dilation(square, iterations=7)  # what the stride-32 evidence names
    everywhere = np.ones((H, W), bool)
    out = grabcut_shape(image, blob, everywhere)
    iou = (out & square).sum() / (out | square).sum()
    assert iou > 0.9 and (blob & square).sum() / (blob | square).sum() < 0.5
    assert np.array_equal(out, grabcut_shape(image, blob, everywhere))  # the same every time
    allowed = everywhere.copy()
    allowed[:, 80:] = False  # the square's right quarter belongs to another object
    part = grabcut_shape(image, blob, allowed)
    assert not part[:, 80:].any() and part[36:52, 68:80].mean() > 0.9
    # a flat photo: nothing to fit, the region stays
    flat = np.full((H, W, 3), 128, np.uint8)
    assert grabcut_shape(flat, blob, everywhere).sum() >= 0.05 * blob.sum()
    assert not grabcut_shape(image, np.zeros((H, W), bool), everywhere).any()


def bus_output() -> NetworkOutput:
    """The scene with the network's object a bus (class 3, which ImageNet knows) instead of the
    person."""
    net = network_output(True)
    swap = [0, 3, 2, 1]  # person <-> bus
    probs = net.full_class_probs[swap]
    return replace(net, class_probs=net.class_probs[swap], full_class_probs=probs,
                   counts=np.array([0.0, 0.0, 1.0], np.float32))


class FakeCrops:
    """``classify_crops``: the bus box (left) gets ``left``, the dog box (right) ``right``; the
    boxes asked are kept."""

    def __init__(self, left, right) -> None:
        self.left, self.right, self.calls = np.array(left), np.array(right), []

    def __call__(self, image: np.ndarray, boxes: np.ndarray) -> np.ndarray:
        assert image.shape == (H, W, 3) and boxes.shape[1] == 4
        self.calls.append(boxes.copy())
        return np.stack([self.left if x0 < 30 else self.right for x0, *_ in boxes])


CHECK = GroupingConfig(method="vote", count_source="head", min_size_frac=0.0, prior_weight=5.0,
                       prior_touch=1.0, prior_check=True)


def test_the_check_relabels_a_found_object_everywhere_it_is_painted() -> None:
    image, _ = dark_square_photo()
    crops = FakeCrops([0.0, 0.9, 0.0], [0.0, 0.5, 0.0])
    grouper = Grouper(bus_output(), image=image, classify_crops=crops)
    before = Grouper(bus_output()).run(CHECK)  # no photo: no check
    assert before.instances.classes.tolist() == [3, 2]
    result = grouper.run(CHECK)
    assert result.instances.classes.tolist() == [2, 2]  # the bus is a dog; the prior dog kept
    bus = before.instances.masks[0]
    assert (result.full_class_map[bus] == 2).all()
    assert (result.refined_class_map[result.grid_labels == 1] == 2).all()
    assert "prior_check" in result.timings and len(crops.calls) == 1
    grouper.run(CHECK)
    assert len(crops.calls) == 1  # the same objects: classified once
    assert grouper.run(replace(CHECK, prior_check=False)).instances.classes.tolist() == [3, 2]


def test_the_check_drops_what_the_crops_do_not_see_and_renumbers() -> None:
    image, _ = dark_square_photo()
    before = Grouper(bus_output()).run(CHECK)
    bus, dog = before.instances.masks
    result = Grouper(bus_output(), image=image,
                     classify_crops=FakeCrops([0.0, 0.02, 0.03], [0.0, 0.5, 0.0])).run(CHECK)
    assert result.instances.classes.tolist() == [2]  # only the prior's dog
    assert not result.full_class_map[bus].any() and not result.grid_labels.any()
    assert result.boxes.shape == (1, 4) and tuple(result.boxes[0][2:]) == (W, H)
    result = Grouper(bus_output(), image=image,
                     classify_crops=FakeCrops([0.0, 0.0, 0.9], [0.0, 0.1, 0.0])).run(CHECK)
    assert result.instances.classes.tolist() == [3]  # the prior's dog is not confirmed
    assert not result.prior_labels.any() and not result.full_class_map[dog].any()
    assert (result.grid_labels[before.grid_labels == 1] == 1).all()


def test_people_are_never_sent_to_the_classifier() -> None:
    image, _ = dark_square_photo()
    crops = FakeCrops([0.0, 0.0, 0.0], [0.0, 0.5, 0.0])
    result = Grouper(network_output(True), image=image, classify_crops=crops).run(CHECK)
    assert result.instances.classes.tolist() == [1, 2]
    assert [len(b) for b in crops.calls] == [1] and crops.calls[0][0][0] >= 30  # the dog only


def test_the_grouper_fits_the_prior_objects_to_the_photo() -> None:
    pytest.importorskip("cv2")
    image, square = dark_square_photo()
    cfg = replace(CHECK, prior_check=False, prior_shape="grabcut")
    region = Grouper(network_output(True)).run(cfg).instances.masks[1]  # no photo: the region
    fitted = Grouper(network_output(True), image=image).run(cfg)
    dog = fitted.instances.masks[1]
    assert region.sum() > 3 * square.sum()
    assert (dog & square).sum() / (dog | square).sum() > 0.9
    assert np.array_equal(fitted.prior_labels > 0, dog) and (fitted.full_class_map[dog] == 2).all()
    assert not fitted.full_class_map[region & ~dog].any()
    assert np.array_equal(fitted.instances.masks[0],
                          Grouper(network_output(True)).run(cfg).instances.masks[0])
    with pytest.raises(PFNError, match=r"image \(10, 10\) is not the networks'"):
        Grouper(network_output(True), image=image[:10, :10])


def test_grabcut_runs_once_per_region_across_re_runs(monkeypatch) -> None:
    pytest.importorskip("cv2")
    import pfn_napari.grouping.grouper as grouper_module

    calls = []
    real = grouper_module.grabcut_shape

    def counted(image, mask, allowed):
        calls.append(int(mask.sum()))
        return real(image, mask, allowed)

    monkeypatch.setattr(grouper_module, "grabcut_shape", counted)
    image, _ = dark_square_photo()
    grouper = Grouper(network_output(True), image=image)
    cfg = replace(CHECK, prior_check=False, prior_shape="grabcut")
    first = grouper.run(cfg).instances.masks[1]
    again = grouper.run(replace(cfg, sigma=0.7)).instances.masks[1]  # a knob turned in napari
    assert len(calls) == 1 and np.array_equal(first, again)

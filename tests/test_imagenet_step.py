"""pfn_napari/imagenet: the ImageNet step after the grouping names objects only on the category
map's background, checks objects on their crops and fits outlines; a stage of its own."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
from scipy import ndimage

from pfn_napari.config import (ConfigError, CropCheckConfig, GroupingConfig, ImageNetConfig,
                               config_to_dict, load_config)
from pfn_napari.errors import PFNError
from pfn_napari.grouping import Grouper
from pfn_napari.imagenet import ImageNetStep, name_missed_objects
from pfn_napari.imagenet.regions import (GRABCUT_MISSING, RELABEL_OWN_MAX, check_instances,
                                         fused_labels, grabcut_shape, prior_fill)
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


def network_output() -> NetworkOutput:
    """The scene on a stride-8 grid (exact cells), locations all pointing at the person."""
    class_map, probs, evidence, _ = scene()
    h, w = (H - 1) // 8 + 1, (W - 1) // 8 + 1
    grid = probs[:, ::8, ::8]  # (C+1, h, w)
    locations = np.zeros((6, h, w), np.float32)
    locations[:, :, :] = np.array([15, 30, 5, 10, 25, 50], np.float32)[:, None, None] / \
        np.array([W, H, W, H, W, H], np.float32)[:, None, None]
    return NetworkOutput(class_probs=grid, locations=locations,
                         counts=np.array([1.0, 0.0, 0.0], np.float32), image_size=(H, W),
                         full_class_probs=probs)


def evidence32() -> np.ndarray:
    """``(C, 2, 3)`` a stride-32 grid of the scene's evidence: the dog in the last column."""
    ev32 = np.full((C, 2, 3), 0.01, np.float32)
    ev32[0] = 0.0
    ev32[1, 1, 2] = 0.8
    return ev32


GROUPING = GroupingConfig(method="vote", count_source="head", min_size_frac=0.0)
STEP = ImageNetConfig(weight=5.0, touch=1.0)


def grouped(net: NetworkOutput | None = None):
    """The grouping's result and the full-resolution probabilities the step reads."""
    grouper = Grouper(net or network_output())
    return grouper.run(GROUPING), grouper.full_probs


def test_the_step_appends_named_objects_and_keeps_the_others() -> None:
    before, probs = grouped()
    assert before.prior_labels is None and before.instances.classes.tolist() == [1]
    off = name_missed_objects(before, replace(STEP, enabled=False), probs, evidence32())
    assert off is before  # switched off: the grouping's result as it was
    assert name_missed_objects(before, ImageNetConfig(), probs, evidence32()) is before
    result = name_missed_objects(before, STEP, probs, evidence32())
    assert result.instances.classes.tolist() == [1, 2]
    assert np.array_equal(result.instances.masks[0], before.instances.masks[0])
    dog = result.instances.masks[1]
    assert dog[50:64, 80:96].all() and not dog[class_map_of_person()].any()
    assert (result.full_class_map[dog] == 2).all() and (result.prior_labels[dog] == 2).all()
    assert not before.full_class_map[dog].any()  # the input result is not changed
    x1, y1, x2, y2 = result.boxes[1]
    assert (x2, y2) == (W, H) and result.centers[1][0] > x1 and "imagenet" in result.timings


def class_map_of_person() -> np.ndarray:
    return scene()[0] == 1


def test_imagenet_settings_are_validated() -> None:
    for bad in ({"weight": -1.0}, {"eps": 0.0}, {"min_frac": 1.0}, {"touch": 1.5},
                {"shape": "snake"}):
        with pytest.raises(ConfigError, match=f"imagenet.{next(iter(bad))}"):
            ImageNetConfig(**bad).validate()
    for override, message in (("imagenet.check.any=2", r"imagenet.check.any=2.0: in \[0, 1\]"),
                              ("imagenet.check.named=-0.1", "imagenet.check.named=-0.1: in"),
                              ("imagenet.check.relabel=0", "imagenet.check.relabel=0.0: must be")):
        with pytest.raises(ConfigError, match=message):
            load_config(None, [override])


def test_old_grouping_prior_keys_load_into_the_imagenet_section() -> None:
    """The shipped weights store grouping.prior_*: the migration table moves each."""
    from pfn_napari.config import config_from_dict

    old = {"prior_weight": 5.0, "prior_eps": 0.2, "prior_min_frac": 0.005, "prior_touch": 0.3,
           "prior_check": True, "prior_check_any": 0.1, "prior_check_named": 0.15,
           "prior_check_relabel": 0.9, "prior_shape": "grabcut"}
    cfg = config_from_dict({"grouping": {"method": "vote", **old}})
    assert cfg.imagenet == ImageNetConfig(True, 5.0, 0.2, 0.005, 0.3,
                                          CropCheckConfig(True, 0.1, 0.15, 0.9), "grabcut")
    assert cfg.grouping.method == "vote" and cfg.imagenet.active


def test_the_check_settings_are_a_section_under_imagenet_check() -> None:
    """imagenet.check_* (read only with the check) nest under imagenet.check (issue 29); the
    flat names of a file or --set before it still load, and --set of the new names too."""
    from pfn_napari.config import config_from_dict

    flat = {"check": True, "check_any": 0.1, "check_named": 0.15, "check_relabel": 0.9}
    cfg = config_from_dict({"imagenet": flat})
    assert cfg.imagenet.check == CropCheckConfig(enabled=True, any=0.1, named=0.15, relabel=0.9)
    assert load_config(None, ["imagenet.check=true", "imagenet.check_any=0.1"]).imagenet.check \
        == CropCheckConfig(enabled=True, any=0.1)
    new = load_config(None, ["imagenet.check.enabled=true", "imagenet.check.relabel=2"])
    assert new.imagenet.check == CropCheckConfig(enabled=True, relabel=2.0)
    assert config_to_dict(new)["imagenet"]["check"] == {"enabled": True, "any": 0.2,
                                                        "named": 0.2, "relabel": 2.0}


def test_wrong_evidence_shape_is_one_clear_error() -> None:
    before, probs = grouped()
    with pytest.raises(PFNError, match=r"ImageNet evidence \(2, 2, 3\) is not \(C, h, w\)"):
        name_missed_objects(before, STEP, probs, np.zeros((2, 2, 3), np.float32))


def test_the_step_fills_once_per_class_map(monkeypatch) -> None:
    """The fill depends on the refined map and the step's settings only: a new sigma or count
    re-uses it (it took 40-100 ms of every napari re-cluster); a new step fills again."""
    import pfn_napari.imagenet.step as step_module

    calls = []
    real = step_module.prior_fill
    monkeypatch.setattr(step_module, "prior_fill",
                        lambda *a, **k: calls.append(1) or real(*a, **k))
    grouper = Grouper(network_output(), eager=True)
    step = ImageNetStep(lambda: grouper.full_probs, evidence32)
    step.run(grouper.run(GROUPING), STEP)
    step.run(grouper.run(replace(GROUPING, sigma=0.1)), STEP)
    step.run(grouper.run(GROUPING, count_override={1: 2}), STEP)  # count above tau: same map
    assert len(calls) == 1
    step.run(grouper.run(GROUPING), replace(STEP, min_frac=0.5))  # another step setting
    name_missed_objects(grouper.run(GROUPING), STEP, grouper.full_probs, evidence32())
    assert len(calls) == 3


def test_grabcut_without_opencv_is_one_line_naming_the_extra(monkeypatch) -> None:
    monkeypatch.setitem(__import__("sys").modules, "cv2", None)
    image, square = dark_square_photo()
    with pytest.raises(PFNError) as err:
        grabcut_shape(image, square, np.ones((H, W), bool))
    assert str(err.value) == GRABCUT_MISSING
    assert "imagenet.shape='grabcut'" in GRABCUT_MISSING
    assert "pip install 'pfn-napari[grabcut]'" in GRABCUT_MISSING


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
    net = network_output()
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


CHECK = replace(STEP, check=CropCheckConfig(enabled=True))


def stepped(net: NetworkOutput, cfg: ImageNetConfig, image=None, crops=None):
    """``(grouping result, step result)`` of ``net`` with the step's ``cfg``."""
    before, probs = grouped(net)
    return before, name_missed_objects(before, cfg, probs, evidence32(), image, crops)


def test_the_check_relabels_a_found_object_everywhere_it_is_painted() -> None:
    image, _ = dark_square_photo()
    crops = FakeCrops([0.0, 0.9, 0.0], [0.0, 0.5, 0.0])
    before, probs = grouped(bus_output())
    _, unchecked = stepped(bus_output(), CHECK)  # no photo: no check
    assert unchecked.instances.classes.tolist() == [3, 2]
    step = ImageNetStep(probs, evidence32(), image, crops)
    result = step.run(before, CHECK)
    assert result.instances.classes.tolist() == [2, 2]  # the bus is a dog; the named dog kept
    bus = before.instances.masks[0]
    assert (result.full_class_map[bus] == 2).all()
    assert (result.refined_class_map[result.grid_labels == 1] == 2).all()
    assert "imagenet_check" in result.timings and len(crops.calls) == 1
    step.run(before, CHECK)
    assert len(crops.calls) == 1  # the same objects: classified once
    assert step.run(before, replace(CHECK, check=CropCheckConfig())).instances.classes.tolist() == [3, 2]


def test_the_check_drops_what_the_crops_do_not_see_and_renumbers() -> None:
    image, _ = dark_square_photo()
    _, named = stepped(bus_output(), CHECK)
    bus, dog = named.instances.masks
    before, result = stepped(bus_output(), CHECK, image, FakeCrops([0.0, 0.02, 0.03],
                                                                    [0.0, 0.5, 0.0]))
    assert result.instances.classes.tolist() == [2]  # only the named dog
    assert not result.full_class_map[bus].any() and not result.grid_labels.any()
    assert result.boxes.shape == (1, 4) and tuple(result.boxes[0][2:]) == (W, H)
    _, result = stepped(bus_output(), CHECK, image, FakeCrops([0.0, 0.0, 0.9],
                                                              [0.0, 0.1, 0.0]))
    assert result.instances.classes.tolist() == [3]  # the named dog is not confirmed
    assert not result.prior_labels.any() and not result.full_class_map[dog].any()
    assert (result.grid_labels[before.grid_labels == 1] == 1).all()


def test_people_are_never_sent_to_the_classifier() -> None:
    image, _ = dark_square_photo()
    crops = FakeCrops([0.0, 0.0, 0.0], [0.0, 0.5, 0.0])
    _, result = stepped(network_output(), CHECK, image, crops)
    assert result.instances.classes.tolist() == [1, 2]
    assert [len(b) for b in crops.calls] == [1] and crops.calls[0][0][0] >= 30  # the dog only


def test_the_step_fits_the_named_objects_to_the_photo() -> None:
    pytest.importorskip("cv2")
    image, square = dark_square_photo()
    cfg = replace(STEP, shape="grabcut")
    _, plain = stepped(network_output(), cfg)  # no photo: the region
    region = plain.instances.masks[1]
    _, fitted = stepped(network_output(), cfg, image)
    dog = fitted.instances.masks[1]
    assert region.sum() > 3 * square.sum()
    assert (dog & square).sum() / (dog | square).sum() > 0.9
    assert np.array_equal(fitted.prior_labels > 0, dog) and (fitted.full_class_map[dog] == 2).all()
    assert not fitted.full_class_map[region & ~dog].any()
    assert np.array_equal(fitted.instances.masks[0], plain.instances.masks[0])


def test_grabcut_runs_once_per_region_across_re_runs(monkeypatch) -> None:
    pytest.importorskip("cv2")
    import pfn_napari.imagenet.step as step_module

    calls = []
    real = step_module.grabcut_shape

    def counted(image, mask, allowed):
        calls.append(int(mask.sum()))
        return real(image, mask, allowed)

    monkeypatch.setattr(step_module, "grabcut_shape", counted)
    image, _ = dark_square_photo()
    grouper = Grouper(network_output())
    step = ImageNetStep(grouper.full_probs, evidence32(), image)
    cfg = replace(STEP, shape="grabcut")
    first = step.run(grouper.run(GROUPING), cfg).instances.masks[1]
    again = step.run(grouper.run(replace(GROUPING, sigma=0.7)), cfg)  # a knob turned in napari
    assert len(calls) == 1 and np.array_equal(first, again.instances.masks[1])


# ------------------------------------------------------------------ through the Predictor
class FakeClassifier:
    """``model.imagenet_prior()``: the scene's stride-32 evidence on any photo; counts calls."""

    def __init__(self) -> None:
        self.dense_calls = 0
        self.crops = FakeCrops([0.0, 0.0, 0.0], [0.0, 0.5, 0.0])

    def __call__(self, x):
        import torch

        assert tuple(x.shape) == (1, 3, H, W)
        self.dense_calls += 1
        return torch.from_numpy(evidence32())[None]

    def classify_crops(self, image, boxes):
        return self.crops(image, boxes)


def scene_predictor(monkeypatch, imagenet: ImageNetConfig):
    """A Predictor on a model whose networks (faked) give :func:`network_output` and whose
    ImageNet classifier (faked) gives :func:`evidence32`."""
    from types import SimpleNamespace

    import torch

    import pfn_napari.inference as inference
    from pfn_napari.config import DataConfig, ModelConfig, PFNConfig
    from pfn_napari.inference import PFNModel
    from pfn_napari.predictor import Predictor

    seen = []

    def fake_run_network(model, image, crf=None, name="image", **kw):
        seen.append(kw)
        return network_output()

    monkeypatch.setattr(inference, "run_network", fake_run_network)
    cfg = PFNConfig(data=DataConfig(classes=("person", "dog", "bus")),
                    model=ModelConfig(num_classes=C), grouping=GROUPING, imagenet=imagenet)
    model = PFNModel(system=SimpleNamespace(instance=object()), config=cfg,
                     device=torch.device("cpu"))
    model._prior = FakeClassifier()
    return Predictor(model), model._prior, seen


def test_group_then_the_step_is_what_the_predictor_gives(monkeypatch) -> None:
    """The same settings give the same instances: group() alone with the step off, group()
    then name_missed_objects() with it on (the photo: the check runs in both)."""
    from pfn_napari.grouping import group

    image, _ = dark_square_photo()
    on = replace(CHECK, shape="region")
    for step in (replace(on, enabled=False), on):
        predictor, classifier, _ = scene_predictor(monkeypatch, step)
        got = predictor.predict(image)
        want = group(network_output(), GROUPING)
        if step.active:
            before, probs = grouped()
            want = name_missed_objects(before, step, probs, evidence32(), image,
                                       FakeCrops([0.0, 0.0, 0.0], [0.0, 0.5, 0.0])).instances
        assert got.classes.tolist() == ([1, 2] if step.active else [1])
        assert got.classes.tolist() == want.classes.tolist()
        assert np.array_equal(got.masks, want.masks)
        assert np.allclose(got.scores, want.scores)
        assert classifier.dense_calls == int(step.active)


def test_a_predictor_made_with_the_step_off_applies_it_when_asked(monkeypatch) -> None:
    """set_image runs no classifier whatever the step's setting; instances(<on>) runs it once
    for the image, and a swapped network output (the oracle's) on the same image gets it too."""
    predictor, classifier, seen = scene_predictor(monkeypatch, replace(STEP, enabled=False))
    image, _ = dark_square_photo()
    predictor.set_image(image)
    assert seen == [{}] and classifier.dense_calls == 0  # no `prior` asked of the networks
    assert predictor.instances().classes.tolist() == [1]
    assert classifier.dense_calls == 0
    assert predictor.instances(imagenet=STEP).classes.tolist() == [1, 2]
    assert predictor.instances(imagenet=STEP).classes.tolist() == [1, 2]
    assert classifier.dense_calls == 1  # cached for the image
    predictor.set_network_output(replace(network_output()))  # e.g. with_true_locations
    assert predictor.instances(imagenet=STEP).classes.tolist() == [1, 2]
    assert classifier.dense_calls == 1
    predictor.set_image(image)
    predictor.instances(imagenet=STEP)
    assert classifier.dense_calls == 2  # a new image: the classifier again

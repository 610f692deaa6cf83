"""Joint transforms on hand-built samples: shapes, void padding, flips, determinism, renumbering."""

from __future__ import annotations

import numpy as np
import pytest

from pfn_napari.data.transforms import (PAD_COLOUR, EvalTransform, TrainTransform, crop, hflip,
                                        pad_to, resize_sample)
from pfn_napari.structures import Sample


def make_sample(h: int = 20, w: int = 30) -> Sample:
    """Three instances: id 1 (class 2) top-left, id 2 (class 1) right, id 3 (class 3) bottom."""
    image = np.zeros((h, w, 3), np.uint8)
    image[..., 0] = np.arange(w, dtype=np.uint8)[None, :] * 8  # red grows with x
    image[..., 1] = np.arange(h, dtype=np.uint8)[:, None] * 8  # green grows with y
    inst = np.zeros((h, w), np.int32)
    inst[2:6, 2:6] = 1
    inst[2:8, 20:28] = 2
    inst[14:18, 10:16] = 3
    inst[0, 0] = 255
    classes = np.array([2, 1, 3], np.int64)
    lut = np.array([0, 2, 1, 3], np.uint8)
    cls = np.where(inst == 255, 255, lut[np.minimum(inst, 3)]).astype(np.uint8)
    return Sample(image, cls, inst, classes, "toy", "toy.png")


def test_pad_to_pads_bottom_right_with_void() -> None:
    s = pad_to(make_sample(), 25, 33)
    assert s.image.shape == (25, 33, 3) and s.class_map.shape == s.instance_map.shape == (25, 33)
    assert (s.class_map[20:] == 255).all() and (s.instance_map[:, 30:] == 255).all()
    assert (s.image[24, 32] == PAD_COLOUR).all()
    assert np.array_equal(s.instance_map[:20, :30], make_sample().instance_map)
    assert pad_to(make_sample(), 10, 10).image.shape == (20, 30, 3)  # never crops


def test_crop_drops_and_renumbers_instances() -> None:
    s = crop(make_sample(), 0, 15, 10, 15)  # only instance 2 (class 1) is inside
    assert s.instance_classes.tolist() == [1]
    assert set(np.unique(s.instance_map).tolist()) == {0, 1}
    assert (s.instance_map[2:8, 5:13] == 1).all()
    s = crop(make_sample(), 4, 4, 14, 8)  # corner of id 1 and part of id 3
    assert s.instance_classes.tolist() == [2, 3]
    assert (s.instance_map[0:2, 0:2] == 1).all() and (s.instance_map[10:14, 6:8] == 2).all()


def test_hflip_mirrors_all_maps_together() -> None:
    s0 = make_sample()
    s = hflip(s0)
    assert np.array_equal(s.image[:, 0], s0.image[:, -1])
    assert (s.instance_map[2:8, 2:10] == 2).all() and s.instance_map[0, 29] == 255
    assert np.array_equal(s.instance_classes, s0.instance_classes)


def test_resize_nearest_labels_bilinear_image() -> None:
    s = resize_sample(make_sample(), 2.0)
    assert s.image.shape == (40, 60, 3)
    assert (s.instance_map[4:12, 4:12] == 1).all() and (s.instance_map[4:16, 40:56] == 2).all()
    assert set(np.unique(s.class_map).tolist()) == {0, 1, 2, 3, 255}  # no blended label values
    small = resize_sample(make_sample(), (5, 6))  # 4x4 of id 1 at stride 4-5 keeps one pixel
    assert small.class_map.shape == (5, 6)
    assert small.instance_classes.tolist() == [small.class_map[small.instance_map == k][0]
                                               for k in range(1, small.num_instances + 1)]
    # 2x2: sources are rows 5, 15 and cols 7, 22; only (5, 22) hits an instance (id 2, class 1)
    tiny = resize_sample(make_sample(), (2, 2))
    assert tiny.instance_map.tolist() == [[0, 1], [0, 0]] and tiny.instance_classes.tolist() == [1]


def test_train_transform_shapes_determinism_and_consistency() -> None:
    t = TrainTransform(crop_size=17, scale_min=0.5, scale_max=1.5, flip=True)
    a = t(make_sample(), np.random.default_rng(5))
    b = t(make_sample(), np.random.default_rng(5))
    assert a.image.shape == (17, 17, 3) and a.instance_map.shape == (17, 17)
    assert np.array_equal(a.image, b.image) and np.array_equal(a.instance_map, b.instance_map)
    for seed in range(20):
        s = t(make_sample(), np.random.default_rng(seed))
        k = s.num_instances
        present = set(np.unique(s.instance_map).tolist()) - {0, 255}
        assert present == set(range(1, k + 1))
        for i, c in enumerate(s.instance_classes, start=1):
            assert (s.class_map[s.instance_map == i] == c).all()
        assert ((s.class_map == 255) == (s.instance_map == 255)).all()


def test_train_transform_pads_small_images_with_void() -> None:
    t = TrainTransform(crop_size=65, scale_min=1.0, scale_max=1.0, flip=False)
    s = t(make_sample(), np.random.default_rng(0))
    assert s.image.shape == (65, 65, 3)
    assert (s.class_map[20:] == 255).all() and (s.instance_map[:, 30:] == 255).all()
    assert s.num_instances == 3 and np.array_equal(s.image[:20, :30], make_sample().image)


def test_flip_happens_about_half_the_time() -> None:
    t = TrainTransform(crop_size=17, scale_min=1.0, scale_max=1.0, flip=True)
    s0 = make_sample(17, 17)
    flips = sum(np.array_equal(t(s0, np.random.default_rng(i)).image, s0.image[:, ::-1])
                for i in range(40))
    assert 8 <= flips <= 32


def test_eval_transform_pads_to_8k_plus_1() -> None:
    s = EvalTransform()(make_sample())
    assert s.image.shape == (25, 33, 3)
    s = EvalTransform(max_size=60)(make_sample())
    assert s.class_map.shape == (41, 65)


def test_bad_crop_size() -> None:
    with pytest.raises(ValueError, match="8k\\+1"):
        TrainTransform(crop_size=320)


def test_copy_paste_occludes_renumbers_and_appends_classes() -> None:
    from pfn_napari.data.transforms import copy_paste

    target = make_sample()  # ids 1 (class 2) [2:6, 2:6], 2 (class 1) [2:8, 20:28], 3 (class 3)
    src_inst = np.zeros((20, 30), np.int32)
    src_inst[0:8, 0:8] = 1  # covers target instance 1 entirely
    src_inst[4:8, 18:24] = 2  # covers part of target instance 2
    src_inst[19, 29] = 255  # void: never pasted
    src_cls = np.where(src_inst == 1, 4, np.where(src_inst == 2, 5, 0)).astype(np.uint8)
    src_cls[19, 29] = 255
    source = Sample(np.full((20, 30, 3), 200, np.uint8), src_cls, src_inst,
                    np.array([4, 5], np.int64), "src")
    out = copy_paste(target, source, np.random.default_rng(0), keep_prob=1.0)
    # target 1 hidden entirely -> dropped; 2 and 3 stay (ids 1, 2); pasted 1, 2 -> ids 3, 4
    assert out.instance_classes.tolist() == [1, 3, 4, 5]
    assert (out.instance_map[0:8, 0:8] == 3).all() and (out.class_map[0:8, 0:8] == 4).all()
    assert (out.instance_map[4:8, 18:24] == 4).all()
    visible_2 = out.instance_map == 1
    assert visible_2.sum() == 6 * 8 - 4 * 4  # target 2 lost the 4 x 4 pixels under the paste
    assert (out.image[0:8, 0:8] == 200).all() and (out.image[10, 10] == target.image[10, 10]).all()
    assert out.instance_map[19, 29] == target.instance_map[19, 29]  # source void not pasted
    assert np.array_equal(out.instance_map[14:18, 10:16], np.full((4, 6), 2))


def test_copy_paste_keeps_a_random_non_empty_subset_deterministically() -> None:
    from pfn_napari.data.transforms import copy_paste

    target, source = make_sample(), hflip(make_sample())
    a = copy_paste(target, source, np.random.default_rng(3))
    b = copy_paste(target, source, np.random.default_rng(3))
    assert np.array_equal(a.instance_map, b.instance_map)
    assert 3 < a.num_instances <= 6  # at least one pasted, at most all three
    empty = Sample(target.image, np.zeros_like(target.class_map),
                   np.zeros_like(target.instance_map), np.zeros(0, np.int64), "e")
    assert copy_paste(target, empty, np.random.default_rng(0)) is target
    with pytest.raises(ValueError, match="differ in size"):
        copy_paste(target, pad_to(source, 25, 30), np.random.default_rng(0))


def test_training_set_copy_paste_is_a_function_of_seed_epoch_index() -> None:
    from pfn_napari.data.loader import TrainingSet

    samples = [make_sample(), hflip(make_sample()), make_sample()]
    ts = TrainingSet(samples, TrainTransform(17, 1.0, 1.0), num_classes=3, seed=1, copy_paste=1.0)
    plain = TrainingSet(samples, TrainTransform(17, 1.0, 1.0), num_classes=3, seed=1)
    a, b = ts[0], ts[0]
    assert torch_equal(a["image"], b["image"]) and torch_equal(a["counts"], b["counts"])
    pasted = [int(ts[i]["counts"].sum()) > int(plain[i]["counts"].sum()) for i in range(3)]
    assert any(pasted)  # some crop gained instances


def torch_equal(a, b) -> bool:
    return bool((a == b).all())


def test_crop_shares_follow_the_instances_through_crop_flip_and_paste() -> None:
    from pfn_napari.data.transforms import copy_paste, crop_shares
    from pfn_napari.targets import count_targets

    sample = make_sample()  # id 1 (class 2) 4x4 at [2:6, 2:6], 2 (class 1) 6x8, 3 (class 3)
    window = (slice(0, 10), slice(4, 24))
    shares = crop_shares(sample.instance_map, sample.num_instances, window)
    np.testing.assert_allclose(shares, [8 / 16, 24 / 48, 0.0])  # half of 1 and of 2, none of 3
    cut = crop(Sample(sample.image, sample.class_map, sample.instance_map, sample.instance_classes,
                      "toy", "toy.png", shares), 0, 4, 10, 20)
    assert cut.instance_classes.tolist() == [2, 1]  # id 3 dropped, its share with it
    np.testing.assert_allclose(hflip(cut).instance_share, [0.5, 0.5])
    np.testing.assert_allclose(count_targets(cut, 3), [0.5, 0.5, 0.0])  # per class 1..3
    np.testing.assert_allclose(count_targets(sample, 3), [1.0, 1.0, 1.0])  # no share: whole
    # pasted instances without a recorded share count whole; the occluded ones keep theirs
    src = make_sample()
    src_inst = np.where(src.instance_map == 2, 1, 0).astype(np.int32)
    source = Sample(src.image, np.where(src_inst > 0, 3, 0).astype(np.uint8), src_inst,
                    np.array([3], np.int64), "src")
    pasted = copy_paste(pad_to(cut, 20, 30), source, np.random.default_rng(0), keep_prob=1.0)
    np.testing.assert_allclose(pasted.instance_share, [0.5, 0.5, 1.0])
    np.testing.assert_allclose(count_targets(pasted, 3), [0.5, 0.5, 1.0])


def test_train_transform_records_crop_shares_only_when_asked() -> None:
    from pfn_napari.targets import count_targets

    rng = np.random.default_rng(0)
    assert TrainTransform(17, 1.0, 1.0)(make_sample(), rng).instance_share is None
    for seed in range(5):
        out = TrainTransform(17, 1.0, 1.0, count_share=True)(make_sample(),
                                                              np.random.default_rng(seed))
        assert out.instance_share.shape == (out.num_instances,)
        assert ((out.instance_share > 0) & (out.instance_share <= 1)).all()
        whole = np.bincount(out.instance_classes - 1, minlength=3)
        assert (count_targets(out, 3) <= whole + 1e-6).all()
    big = TrainTransform(33, 1.0, 1.0, count_share=True)(make_sample(), rng)  # holds it all
    np.testing.assert_allclose(big.instance_share, [1.0, 1.0, 1.0])

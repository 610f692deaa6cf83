"""data/loader.py: TrainingSet items, determinism per (seed, epoch, index), collate, sampler."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pfn_napari.data.loader import EpochSampler, TrainingSet, collate
from pfn_napari.structures import Sample


def _sample(k: int) -> Sample:
    """17x17 image, one 4x4 square of class 1 (instance 1) at column k, a void pixel."""
    image = np.full((17, 17, 3), 10 * k, np.uint8)
    cls = np.zeros((17, 17), np.uint8)
    inst = np.zeros((17, 17), np.int32)
    cls[8:12, k:k + 4] = 1
    inst[8:12, k:k + 4] = 1
    cls[0, 16] = 255
    inst[0, 16] = 255
    return Sample(image, cls, inst, np.array([1]), image_id=f"s{k}")


def flip_transform(sample: Sample, rng: np.random.Generator) -> Sample:
    """Horizontal flip with probability 1/2, drawn from rng (a stand-in for TrainTransform)."""
    if rng.random() < 0.5:
        return Sample(sample.image[:, ::-1].copy(), sample.class_map[:, ::-1].copy(),
                      sample.instance_map[:, ::-1].copy(), sample.instance_classes,
                      sample.image_id)
    return sample


def test_item_tensors_and_hand_computed_targets():
    ts = TrainingSet([_sample(0)], None, num_classes=2, encoding="box6")
    item = ts[0]
    assert item["image"].shape == (3, 17, 17) and item["image"].dtype == torch.float32
    assert item["image"].max().item() == 0.0
    # grid 3x3 on pixels 0, 8, 16: the square covers rows 8..11, cols 0..3 -> cell (1, 0)
    cm = item["class_map"]
    assert cm.dtype == torch.int64 and cm.shape == (3, 3)
    assert cm[1, 0].item() == 1 and cm[0, 2].item() == 255 and cm.sum().item() == 256
    assert item["location_weight"].tolist() == [[0, 0, 0], [1, 0, 0], [0, 0, 0]]
    loc = item["locations"][:, 1, 0]  # (6,) box of the square: x 0..4/17, y 8..12/17
    np.testing.assert_allclose(loc.numpy(), [2 / 17, 10 / 17, 0, 8 / 17, 4 / 17, 12 / 17],
                               atol=1e-6)
    assert item["counts"].tolist() == [1.0, 0.0]


def test_items_are_a_function_of_seed_epoch_index():
    data = [_sample(0) for _ in range(6)]  # flipped iff cell (1, 0) is background
    a = TrainingSet(data, flip_transform, 1, seed=3)
    b = TrainingSet(data, flip_transform, 1, seed=3)
    flips = []
    for epoch in range(4):
        a.set_epoch(epoch)
        b.set_epoch(epoch)
        for i in reversed(range(6)):  # order of access does not matter
            assert torch.equal(a[i]["class_map"], b[i]["class_map"])
        flips.append(tuple(bool(a[i]["class_map"][1, 0] == 0) for i in range(6)))
    assert len(set(flips)) > 1  # epochs draw different augmentations
    assert len({f for epoch in flips for f in epoch}) == 2  # both outcomes occur
    c = TrainingSet(data, flip_transform, 1, seed=4)
    assert tuple(bool(c[i]["class_map"][1, 0] == 0) for i in range(6)) != flips[0]


def test_collate_stacks_and_rejects_mixed_sizes():
    ts = TrainingSet([_sample(0), _sample(4)], None, num_classes=1)
    batch = collate([ts[0], ts[1]])
    assert batch["image"].shape == (2, 3, 17, 17)
    assert batch["locations"].shape == (2, 6, 3, 3)
    assert batch["counts"].shape == (2, 1)
    assert batch["index"].tolist() == [0, 1]
    small = _sample(0)
    small = Sample(small.image[:9, :9], small.class_map[:9, :9], small.instance_map[:9, :9],
                   small.instance_classes, "small")
    other = TrainingSet([small], None, num_classes=1)[0]
    with pytest.raises(ValueError, match="image"):
        collate([ts[0], other])


def test_epoch_sampler_splits_ranks_and_skips():
    full = EpochSampler(10, seed=1)
    full.set_epoch(2)
    order = full.indices()
    assert sorted(order) == list(range(10))
    full.set_epoch(3)
    assert full.indices() != order  # a new permutation each epoch
    r0, r1 = EpochSampler(10, 2, 0, seed=1), EpochSampler(10, 2, 1, seed=1)
    for s in (r0, r1):
        s.set_epoch(2)
    assert sorted(r0.indices() + r1.indices()) == list(range(10))
    assert r0.indices() == order[0::2] and r1.indices() == order[1::2]
    r0.set_epoch(2, skip=2)
    assert list(r0) == order[0::2][2:] and len(r0) == 3

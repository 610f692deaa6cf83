"""The synthetic shapes dataset: determinism, disjoint splits, exact visible-part masks."""

from __future__ import annotations

import numpy as np
import pytest

from pfn_napari.data import open_dataset
from pfn_napari.data.synthetic import MIN_VISIBLE_PIXELS, SYNTHETIC_CLASSES
from pfn_napari.errors import DatasetError


def test_spec_and_attributes() -> None:
    ds = open_dataset("synthetic:5@3")
    assert len(ds) == 5 and ds.classes == SYNTHETIC_CLASSES == ("disc", "square", "triangle")
    assert ds.category_ids == (1, 2, 3) and ds.name == "synthetic:5@3"
    assert len(set(ds.image_ids)) == 5
    s = open_dataset("synthetic:2@3:65")[1]
    assert s.image.shape == (65, 65, 3)


def test_same_spec_gives_identical_arrays_and_splits_differ() -> None:
    a, b = open_dataset("synthetic:3@7")[2], open_dataset("synthetic:3@7")[2]
    assert np.array_equal(a.image, b.image) and np.array_equal(a.instance_map, b.instance_map)
    assert np.array_equal(a.instance_classes, b.instance_classes)
    val = open_dataset("synthetic:3@7", split="val")
    assert val.image_ids != open_dataset("synthetic:3@7").image_ids
    v = val[2]
    assert v.image.shape != a.image.shape or not np.array_equal(v.image, a.image)
    other_seed = open_dataset("synthetic:3@8")[2]
    assert other_seed.image.shape != a.image.shape or not np.array_equal(other_seed.image, a.image)


def test_samples_are_consistent() -> None:
    ds = open_dataset("synthetic:12@0")
    total = 0
    for s in ds:
        h, w = s.class_map.shape
        assert 129 <= h <= 200 and 129 <= w <= 200
        k = s.num_instances
        assert 1 <= k <= 6
        total += k
        assert s.instance_map.max() == k and s.instance_map.min() == 0
        for i, c in enumerate(s.instance_classes, start=1):
            mask = s.instance_map == i
            assert mask.sum() >= MIN_VISIBLE_PIXELS  # visible part only, never swallowed
            assert (s.class_map[mask] == c).all()
        assert ((s.class_map > 0) == (s.instance_map > 0)).all()
        assert set(s.instance_classes.tolist()) <= {1, 2, 3}
        assert s.image.std() > 10  # textured, not flat
    assert total > 24


def test_class_names_remap_by_name() -> None:
    ds = open_dataset("synthetic:2@0", classes=["triangle", "disc"])
    s, raw = ds[0], open_dataset("synthetic:2@0")[0]
    lut = {1: 2, 2: 0, 3: 1}  # disc -> 2, square -> background, triangle -> 1
    assert s.instance_classes.tolist() == [lut[c] for c in raw.instance_classes if lut[c]]
    assert np.array_equal(s.class_map, np.vectorize(lambda v: lut.get(v, 0))(raw.class_map))


@pytest.mark.parametrize("spec", ["synthetic:x", "synthetic:0", "synthetic:3@-1", "synthetic:3@1:8",
                                  "nonsense:3", "synthetic"])
def test_bad_specs(spec: str) -> None:
    with pytest.raises(DatasetError, match="synthetic|spec"):
        open_dataset(spec)

"""targets.py: boxes, encodings (round trips, also across the stride-8 grid), weights, counts."""

from __future__ import annotations

import numpy as np
import pytest

from pfn_napari.config import ENCODING_CHANNELS
from pfn_napari.structures import Sample, grid_size
from pfn_napari.targets import (
    BOX_ENCODINGS,
    ENCODINGS,
    build_targets,
    decode_locations,
    encode_locations,
    grid_pixel_positions,
    instance_boxes,
    instance_counts,
    location_weights,
    pixel_positions,
)


def tiny_map() -> np.ndarray:
    """(4, 5): instance 1 covers rows 0-1, cols 1-2; instance 2 rows 2-3, col 4; one void."""
    m = np.zeros((4, 5), np.int32)
    m[0:2, 1:3] = 1
    m[2:4, 4] = 2
    m[3, 0] = 255
    return m


def big_map() -> np.ndarray:
    """(41, 57) with three instances of odd shapes, void on a boundary."""
    m = np.zeros((41, 57), np.int32)
    m[3:20, 5:30] = 1
    m[10:15, 5:8] = 0  # a hole does not change the box
    m[22:40, 33:56] = 2
    m[23:28, 39:45] = 3  # instance 3 inside 2's box, on grid cell (3, 5)
    m[21, :] = 255
    return m


def test_instance_boxes_by_hand():
    boxes = instance_boxes(tiny_map())
    # instance 1: cols 1..2 -> [1/5, 3/5], rows 0..1 -> [0, 2/4]
    np.testing.assert_allclose(boxes[0], [1 / 5, 0, 3 / 5, 2 / 4])
    np.testing.assert_allclose(boxes[1], [4 / 5, 2 / 4, 5 / 5, 4 / 4])
    # an id with no pixel is NaN; void 255 is not an instance
    boxes = instance_boxes(tiny_map(), 3)
    assert boxes.shape == (3, 4) and np.isnan(boxes[2]).all()
    assert instance_boxes(np.zeros((3, 3), np.int32)).shape == (0, 4)


def test_encode_box6_by_hand():
    loc = encode_locations(tiny_map(), "box6")
    assert loc.shape == (6, 4, 5) and loc.dtype == np.float32
    np.testing.assert_allclose(loc[:, 0, 1], [2 / 5, 1 / 4, 1 / 5, 0, 3 / 5, 2 / 4], rtol=1e-6)
    np.testing.assert_allclose(loc[:, 3, 4], [0.9, 0.75, 0.8, 0.5, 1.0, 1.0], rtol=1e-6)
    assert (loc[:, 0, 0] == 0).all() and (loc[:, 3, 0] == 0).all()  # background, void


def test_encode_offsets_and_others_by_hand():
    m = tiny_map()
    off = encode_locations(m, "offsets2")
    # pixel (row 0, col 1) sits at (1.5/5, 0.5/4); center (2/5, 1/4)
    np.testing.assert_allclose(off[:, 0, 1], [2 / 5 - 1.5 / 5, 1 / 4 - 0.5 / 4], atol=1e-7)
    assert (off[:, 0, 0] == 0).all()
    wh = encode_locations(m, "center_wh4")
    np.testing.assert_allclose(wh[:, 2, 4], [0.9, 0.75, 0.2, 0.5], rtol=1e-6)
    tl = encode_locations(m, "center_tl4")
    np.testing.assert_allclose(tl[:, 2, 4], [0.9, 0.75, 0.8, 0.5], rtol=1e-6)
    b10 = encode_locations(m, "box10")
    np.testing.assert_allclose(b10[6:, 2, 4], [1.0, 0.5, 0.8, 1.0], rtol=1e-6)  # tr, bl
    assert encode_locations(np.zeros((3, 4), np.int32), "box10").shape == (10, 3, 4)


@pytest.mark.parametrize("encoding", ENCODINGS)
def test_round_trip_full_resolution(encoding):
    m = big_map()
    boxes = instance_boxes(m)
    loc = encode_locations(m, encoding)
    assert loc.shape == (len(ENCODING_CHANNELS[encoding]), *m.shape)
    dec = decode_locations(loc, encoding)
    for k in (1, 2, 3):
        on = m == k
        cx = (boxes[k - 1, 0] + boxes[k - 1, 2]) / 2
        cy = (boxes[k - 1, 1] + boxes[k - 1, 3]) / 2
        np.testing.assert_allclose(dec["cx"][on], cx, atol=1e-6)
        np.testing.assert_allclose(dec["cy"][on], cy, atol=1e-6)
        if encoding in BOX_ENCODINGS:
            for i, key in enumerate(("x1", "y1", "x2", "y2")):
                np.testing.assert_allclose(dec[key][on], boxes[k - 1, i], atol=1e-6)
    assert ("x1" in dec) == (encoding in BOX_ENCODINGS)


@pytest.mark.parametrize("encoding", ENCODINGS)
def test_round_trip_across_stride8_grid(encoding):
    """Encode at full resolution, sample on pixels 8i, decode: the full-resolution boxes."""
    m = big_map()
    boxes = instance_boxes(m)
    sample = Sample(image=np.zeros((*m.shape, 3), np.uint8),
                    class_map=np.where(m == 255, 255, np.where(m > 0, 5, 0)).astype(np.uint8),
                    instance_map=m, instance_classes=np.array([5, 5, 7]), image_id="x")
    t = build_targets(sample, num_classes=20, encoding=encoding)
    h, w = grid_size(41), grid_size(57)
    assert (h, w) == (6, 8) and t.locations.shape == (len(ENCODING_CHANNELS[encoding]), h, w)
    grid_ids = m[::8, ::8]
    assert grid_ids.shape == (h, w)
    dec = decode_locations(t.locations, encoding, pixel_xy=grid_pixel_positions(m.shape))
    seen = 0
    for k in (1, 2, 3):
        on = grid_ids == k
        assert on.any()
        seen += on.sum()
        b = boxes[k - 1]
        np.testing.assert_allclose(dec["cx"][on], (b[0] + b[2]) / 2, atol=1e-6)
        np.testing.assert_allclose(dec["cy"][on], (b[1] + b[3]) / 2, atol=1e-6)
        if encoding in BOX_ENCODINGS:
            np.testing.assert_allclose(
                np.stack([dec[key][on] for key in ("x1", "y1", "x2", "y2")], 1),
                np.broadcast_to(b, (on.sum(), 4)), atol=1e-6)
    assert seen == 10  # grid cells on instances 1, 2, 3


def test_offsets_need_grid_positions():
    """Decoding grid offsets with full-resolution positions would be wrong: the helper is right."""
    xy = grid_pixel_positions((41, 57))
    assert xy.shape == (2, 6, 8)
    np.testing.assert_allclose(xy[0, 0, :3], [0.5 / 57, 8.5 / 57, 16.5 / 57])
    np.testing.assert_allclose(xy[1, :2, 0], [0.5 / 41, 8.5 / 41])
    np.testing.assert_allclose(pixel_positions(2, 3)[0, 1], [0.5 / 3, 1.5 / 3, 2.5 / 3])


def test_decode_rejects_wrong_channels():
    with pytest.raises(ValueError, match="box6"):
        decode_locations(np.zeros((4, 2, 2)), "box6")
    with pytest.raises(ValueError, match="unknown location encoding"):
        encode_locations(np.zeros((2, 2), np.int32), "box7")


def test_location_weights():
    cm = np.array([[0, 3, 255], [1, 1, 0]], np.uint8)
    np.testing.assert_array_equal(location_weights(cm), [[0, 1, 0], [1, 1, 0]])
    im = np.array([[0, 1, 255], [0, 2, 0]], np.int32)  # a class pixel without an instance
    np.testing.assert_array_equal(location_weights(cm, im), [[0, 1, 0], [0, 1, 0]])
    assert location_weights(cm).dtype == np.float32


def test_location_weights_take_no_balance() -> None:
    """loss.loc_balance left the code (issue 29): every instance pixel weighs 1."""
    with pytest.raises(TypeError):
        location_weights(np.ones((1, 1), np.uint8), np.ones((1, 1), np.int32), balance=0.5)
    with pytest.raises(TypeError):
        build_targets(Sample(np.zeros((9, 9, 3), np.uint8), np.zeros((9, 9), np.uint8),
                             np.zeros((9, 9), np.int32), np.zeros(0, np.int64), "x"),
                      num_classes=1, loc_balance=0.0)


def test_instance_counts():
    np.testing.assert_array_equal(instance_counts(np.array([1, 3, 3, 4]), 4), [1, 0, 2, 1])
    c = instance_counts(np.zeros(0, np.int64), 3)
    assert c.dtype == np.float32 and c.tolist() == [0, 0, 0]
    with pytest.raises(ValueError):
        instance_counts(np.array([0]), 3)


def test_build_targets_samples_pixels_8i_and_counts_visible():
    h, w = 17, 9  # grid 3 x 2: pixels rows (0, 8, 16), cols (0, 8)
    cm = np.zeros((h, w), np.uint8)
    im = np.zeros((h, w), np.int32)
    cm[8:17, 0:9] = 2
    im[8:17, 0:9] = 1
    cm[0, 8] = 255
    im[0, 8] = 255
    cm[1, 1] = 4
    im[1, 1] = 2  # visible at full resolution, not on the grid: still counted
    sample = Sample(np.zeros((h, w, 3), np.uint8), cm, im, np.array([2, 4, 3]), "s")  # id 3 absent
    t = build_targets(sample, num_classes=4, encoding="box6")
    assert t.class_map.dtype == np.int64
    np.testing.assert_array_equal(t.class_map, [[0, 255], [2, 2], [2, 2]])
    np.testing.assert_array_equal(t.location_weight, [[0, 0], [1, 1], [1, 1]])
    np.testing.assert_array_equal(t.counts, [0, 1, 0, 1])  # instance 3 has no pixel
    # instance 1 box: cols 0..8 -> [0, 1], rows 8..16 -> [8/17, 1]
    np.testing.assert_allclose(t.locations[:, 2, 1], [0.5, 12.5 / 17, 0, 8 / 17, 1, 1], rtol=1e-6)
    assert (t.locations[:, 0] == 0).all()

"""pfn_napari.visualize and the pixel-unit centers it draws (targets.predicted_centers), on a
hand-built instance."""

from __future__ import annotations

import numpy as np
import pytest

from pfn_napari.config import ENCODING_CHANNELS
from pfn_napari.grouping import oracle_network_output
from pfn_napari.structures import Sample
from pfn_napari.targets import predicted_centers


def one_box() -> Sample:
    """A 24 x 32 image with one class-1 instance on rows 0..15 and columns 8..23 (half-open
    0:16, 8:24): its center is pixel-index (x, y) = ((8 + 23) / 2, (0 + 15) / 2) = (15.5, 7.5),
    the continuous point (16, 8), normalised (16 / 32, 8 / 24). On the stride-8 grid (3 x 4)
    its cells are rows 0-1 x columns 1-2 (pixels x 8, 16 and y 0, 8)."""
    class_map = np.zeros((24, 32), np.uint8)
    instance_map = np.zeros((24, 32), np.int32)
    class_map[0:16, 8:24] = 1
    instance_map[0:16, 8:24] = 1
    return Sample(np.zeros((24, 32, 3), np.uint8), class_map, instance_map, np.array([1]), "box")


@pytest.mark.parametrize("encoding", tuple(ENCODING_CHANNELS))
def test_predicted_centers_in_pixel_index_units(encoding):
    net = oracle_network_output(one_box(), 1, encoding=encoding)
    pixels = predicted_centers(net, pixels=True)  # (2, 3, 4)
    normalised = predicted_centers(net)
    assert pixels.shape == normalised.shape == (2, 3, 4)
    np.testing.assert_allclose(pixels[:, 0:2, 1:3], np.broadcast_to([[[15.5]], [[7.5]]],
                                                                    (2, 2, 2)), atol=1e-5)
    np.testing.assert_allclose(normalised[:, 0:2, 1:3], np.broadcast_to(
        [[[16 / 32]], [[8 / 24]]], (2, 2, 2)), atol=1e-6)


def test_save_arrows_draws_from_each_cells_pixel_to_its_center(tmp_path, monkeypatch):
    import matplotlib.axes
    from PIL import Image

    from pfn_napari.visualize import save_arrows

    drawn = []
    original = matplotlib.axes.Axes.quiver

    def recording(self, *args, **kwargs):
        drawn.append([np.asarray(a, np.float64) for a in args[:4]])
        return original(self, *args, **kwargs)

    monkeypatch.setattr(matplotlib.axes.Axes, "quiver", recording)
    net = oracle_network_output(one_box(), 1)
    out = save_arrows(tmp_path / "arrows.png", np.zeros((24, 32, 3), np.uint8), net, step=1)
    (x, y, u, v), = drawn
    # the 4 foreground cells in row-major order, at pixels (8, 0), (16, 0), (8, 8), (16, 8)
    np.testing.assert_array_equal(x, [8, 16, 8, 16])
    np.testing.assert_array_equal(y, [0, 0, 8, 8])
    np.testing.assert_allclose(x + u, [15.5] * 4, atol=1e-5)
    np.testing.assert_allclose(y + v, [7.5] * 4, atol=1e-5)
    assert Image.open(out).format == "PNG"
    assert [p.name for p in tmp_path.iterdir()] == ["arrows.png"]  # no temp file left

"""model/heads.py: size-consistent locations (``location_unit``) and the density count head."""

from __future__ import annotations

import pytest
import torch

from pfn_napari.config import ENCODING_CHANNELS
from pfn_napari.model.heads import COORD_UNIT_PX, DensityCountHead, LocationHead

BOX6 = ENCODING_CHANNELS["box6"]


def one_stream_head(unit: float) -> LocationHead:
    torch.manual_seed(0)
    head = LocationHead({"fc7": (4, 8)}, 6, mid_channels=4, channels=BOX6, unit=unit)
    for p in head.parameters():
        torch.nn.init.normal_(p, 0.0, 0.3)
    return head


def features_on(canvas: int, content: torch.Tensor) -> dict[str, torch.Tensor]:
    """``content (1, 4, 5, 5)`` in the top-left corner of a zero stride-8 map of ``canvas``."""
    n = (canvas - 1) // 8 + 1
    fc7 = torch.zeros(1, 4, n, n)
    fc7[:, :, :5, :5] = content
    return {"fc7": fc7}


def test_zero_offsets_put_every_location_on_its_own_cell() -> None:
    head = LocationHead({"fc7": (4, 8)}, 6, mid_channels=4, channels=BOX6, unit=32.0)
    for p in head.parameters():
        torch.nn.init.zeros_(p)
    fused, streams, content = head({"fc7": torch.rand(1, 4, 3, 5)}, (17, 33))
    assert content.abs().max() == 0
    x = (torch.arange(5) * 8 + 0.5) / 33  # cell j on pixel 8j, normalised by W
    y = (torch.arange(3) * 8 + 0.5) / 17
    for c in (0, 2, 4):  # cx, lx, rx
        assert torch.allclose(fused[0, c], x.expand(3, 5))
    for c in (1, 3, 5):  # cy, ly, ry
        assert torch.allclose(fused[0, c], y[:, None].expand(3, 5))
    assert torch.equal(streams["fc7"], fused)  # one stream: the fused output is that stream


def test_a_cells_answer_in_pixels_does_not_depend_on_the_canvas_in_unit_mode() -> None:
    """The same features padded onto a bigger canvas: unit mode gives the same pixel
    locations away from the border; the literal (normalised) reading does not."""
    content = torch.rand(1, 4, 5, 5)
    for unit, same in ((32.0, True), (0.0, False)):
        head = one_stream_head(unit)
        pixels = []
        for canvas in (65, 129):
            fused, _, _ = head(features_on(canvas, content), (canvas, canvas))
            pixels.append(fused[0, :, 1:3, 1:3] * canvas)  # interior cells, in pixels
        assert torch.allclose(pixels[0], pixels[1], atol=1e-4) == same


def test_unit_mode_coordinate_maps_are_pixels_over_a_constant() -> None:
    head = one_stream_head(32.0)
    stream = head.streams["fc7"]
    assert stream.constant_coords and stream._coord_norm((65, 129)) == (COORD_UNIT_PX,) * 2
    assert not one_stream_head(0.0).streams["fc7"].constant_coords


def test_unit_mode_needs_the_channel_names() -> None:
    with pytest.raises(ValueError, match="names"):
        LocationHead({"fc7": (4, 8)}, 6, unit=32.0)


def test_density_count_head_sums_non_negative_counts_per_cell() -> None:
    torch.manual_seed(0)
    head = DensityCountHead(5, 3, channels=4, hidden=8)
    x = torch.rand(2, 5, 9, 7)
    density = head.density(x)
    assert density.shape == (2, 3, 5, 4) and (density >= 0).all()
    assert torch.allclose(head(x), density.sum(dim=(2, 3)))
    # untrained: about softplus(-6) = 0.0025 per cell, so ~0.05 for 20 cells, not 0.69 each
    assert float(head(x).detach().max()) < 0.2

"""The dense CRF snaps blurry probabilities to an image edge."""

from __future__ import annotations

import numpy as np
import pytest

from pfn_napari.config import CRFConfig

pytest.importorskip("pydensecrf.densecrf")

from pfn_napari.model.crf import dense_crf  # noqa: E402


def test_crf_sharpens_probabilities_along_an_edge() -> None:
    h, w, edge = 24, 32, 16
    image = np.zeros((h, w, 3), np.uint8)
    image[:, edge:] = 255  # left half black, right half white
    # a soft ramp from class 0 to class 1 across the edge, shifted 3 px to the left
    x = np.arange(w, dtype=np.float32)
    p1 = np.clip(0.5 + (x - (edge - 3.5)) / 16.0, 0.05, 0.95)
    probs = np.stack([1 - p1, p1])[:, None, :].repeat(h, axis=1)  # (2, h, w)
    before = probs.argmax(0)
    q = dense_crf(image, probs, CRFConfig(iterations=10))
    assert q.shape == (2, h, w) and q.dtype == np.float32
    np.testing.assert_allclose(q.sum(0), 1.0, atol=1e-4)
    after = q.argmax(0)
    truth = (x >= edge).astype(int)[None].repeat(h, axis=0)
    assert (before != truth).sum() == 3 * h  # the ramp put 3 columns on the wrong side
    assert (after == truth).all()  # the CRF moved the boundary onto the edge
    # and made the decision more confident on both sides
    assert q[1, :, edge + 1].mean() > probs[1, :, edge + 1].mean()
    assert q[0, :, edge - 2].mean() > probs[0, :, edge - 2].mean()


def test_crf_rejects_mismatched_sizes() -> None:
    with pytest.raises(ValueError, match="differ"):
        dense_crf(np.zeros((4, 5, 3), np.uint8), np.full((2, 4, 4), 0.5, np.float32))


@pytest.mark.parametrize("field", ["bi_xy", "pos_xy", "bi_rgb"])
def test_a_kernel_width_of_zero_is_refused_before_the_cpp_library(field) -> None:
    """pydensecrf divides by these widths in C++: 0 was a segfault (exit 139), not an error."""
    from pfn_napari.config import ConfigError

    image = np.zeros((4, 4, 3), np.uint8)
    probs = np.full((2, 4, 4), 0.5, np.float32)
    with pytest.raises(ConfigError, match=rf"crf.{field}=0: in \[0.1, "):
        dense_crf(image, probs, CRFConfig(**{field: 0}))

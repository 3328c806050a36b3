"""Compositing: palette lookup and blend match a straightforward float reference."""
import numpy as np
import pytest

from vidseg.composite import Compositor, color_lut, make_palette


def test_palette_is_distinct_and_voc_compatible():
    p = make_palette(21)
    assert p.shape == (21, 3) and p.dtype == np.uint8
    assert len({tuple(c) for c in p}) == 21
    assert tuple(p[1]) == (128, 0, 0) and tuple(p[15]) == (192, 128, 128)  # VOC: aeroplane, person


@pytest.mark.parametrize("alpha", [0.0, 0.3, 1.0])
def test_blend_matches_float_reference(alpha):
    rng = np.random.default_rng(0)
    frame = rng.integers(0, 256, (37, 53, 3), dtype=np.uint8)
    mask = rng.integers(0, 7, (37, 53), dtype=np.uint8)
    pal = make_palette(7)
    out = Compositor(pal, alpha)(frame, mask)
    ref = frame * (1 - alpha) + pal[mask][..., ::-1].astype(np.float64) * alpha  # palette RGB → frame BGR
    assert out.shape == frame.shape and out.dtype == np.uint8
    assert np.abs(out - ref).max() <= 1.0


def test_ids_beyond_palette_are_black_and_mismatch_is_an_error():
    lut = color_lut(make_palette(3))
    assert lut.shape == (1, 256, 3) and not lut[0, 3:].any()
    c = Compositor(make_palette(3), 1.0)
    out = c(np.full((4, 4, 3), 200, np.uint8), np.full((4, 4), 9, np.uint8))
    assert not out.any()
    with pytest.raises(ValueError, match="does not match"):
        c(np.zeros((4, 4, 3), np.uint8), np.zeros((4, 5), np.uint8))
    with pytest.raises(ValueError, match="alpha"):
        Compositor(make_palette(3), 1.5)

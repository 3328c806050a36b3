"""Compositing: palette lookup and blend match a straightforward float reference."""
import numpy as np
import pytest

from vidseg.composite import Compositor, color_lut, make_palette, shown_classes


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


# -- overlay styles, class selection, legend -------------------------------------------------------
NAMES = ("background", "road", "car", "person", "sky")


def _scene(h: int = 72, w: int = 96, seed: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """A random frame and a mask of solid rectangles of every class (borders between them)."""
    rng = np.random.default_rng(seed)
    frame = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    mask = np.zeros((h, w), np.uint8)
    mask[10:40, 8:40] = 1
    mask[30:60, 30:70] = 2
    mask[5:25, 60:90] = 3
    mask[50:70, 5:25] = 4
    return frame, mask


def _sv_fill(frame, mask, palette, alpha, ids):
    """supervision's MaskAnnotator on the same classes, colours and opacity (semantic mask -> one detection per class)."""
    sv = pytest.importorskip("supervision", reason="the comparison with supervision needs pip install 'vidseg[bench]'")
    present = [c for c in ids if (mask == c).any()]
    masks = np.stack([mask == c for c in present])
    det = sv.Detections(xyxy=sv.mask_to_xyxy(masks).astype(float), mask=masks, class_id=np.array(present))
    colors = sv.ColorPalette([sv.Color(*map(int, c)) for c in palette])
    ann = sv.MaskAnnotator(color=colors, opacity=alpha, color_lookup=sv.ColorLookup.CLASS)
    return ann.annotate(frame.copy(), det)


@pytest.mark.parametrize("alpha", [0.5, 0.3, 0.85])
@pytest.mark.parametrize("with_background", [False, True])
def test_fill_is_pixel_equal_to_supervision_mask_annotator(alpha, with_background):
    import cv2

    rng = np.random.default_rng(7)
    frame = rng.integers(0, 256, (270, 480, 3), dtype=np.uint8)
    mask = np.zeros((270, 480), np.uint8)
    for _ in range(30):  # overlapping discs of 19 classes: many borders, uneven areas
        cv2.circle(mask, (int(rng.integers(0, 480)), int(rng.integers(0, 270))), int(rng.integers(5, 80)), int(rng.integers(1, 19)), -1)
    names = ["background"] + [f"c{i}" for i in range(1, 19)]
    pal = make_palette(19)
    shown = shown_classes(names, names if with_background else ())
    ours = Compositor(pal, alpha, shown=shown)(frame, mask)
    theirs = _sv_fill(frame, mask, pal, alpha, [c for c in range(19) if shown[c]])
    assert np.array_equal(ours, theirs), int((ours != theirs).sum())


def test_background_is_not_drawn_by_default_and_classes_selects_what_is():
    frame, mask = _scene()
    pal = make_palette(len(NAMES))
    out = Compositor(pal, 0.5, shown=shown_classes(NAMES))(frame, mask)
    assert np.array_equal(out[mask == 0], frame[mask == 0])  # background: the frame, not dimmed
    assert (out[mask != 0] != frame[mask != 0]).any(axis=-1).mean() > 0.9
    only = Compositor(pal, 0.5, shown=shown_classes(NAMES, ["Car", "4"]))(frame, mask)  # a name (any case) and an id
    drawn = np.isin(mask, [2, 4])
    assert np.array_equal(only[~drawn], frame[~drawn])
    assert (only[drawn] != frame[drawn]).any(axis=-1).mean() > 0.9
    with pytest.raises(ValueError, match="'bus' is not a class of this model; its classes are: background, road, car"):
        shown_classes(NAMES, ["bus"])
    with pytest.raises(ValueError, match="ids 0..4"):
        shown_classes(NAMES, ["5"])


def test_contour_draws_opaque_borders_only_on_the_shown_side():
    frame, mask = _scene()
    pal = make_palette(len(NAMES))
    comp = Compositor(pal, 0.5, style="contour", shown=shown_classes(NAMES))
    out = comp(frame, mask)
    border = comp.borders(mask) > 0
    colours = pal[mask][..., ::-1]
    assert border.any() and np.array_equal(out[border], colours[border])  # opaque class colour on the border
    assert np.array_equal(out[~border], frame[~border])  # everything else untouched
    assert not border[mask == 0].any()  # the hidden background gets no line
    assert not border[20, 20] and border[10, 20]  # inside region 1 no line; on its top edge a line


def test_fill_plus_contour_side_by_side_and_mask_styles():
    frame, mask = _scene()
    pal = make_palette(len(NAMES))
    shown = shown_classes(NAMES)
    fill = Compositor(pal, 0.4, shown=shown)(frame, mask)
    both_c = Compositor(pal, 0.4, style="fill+contour", shown=shown)
    both = both_c(frame, mask)
    border = both_c.borders(mask) > 0
    assert np.array_equal(both[~border], fill[~border])
    assert np.array_equal(both[border], pal[mask][..., ::-1][border])
    sbs = Compositor(pal, 0.4, style="side-by-side", shown=shown)
    assert sbs.output_size(96, 72) == (192, 72)
    wide = sbs(frame, mask)
    assert wide.shape == (72, 192, 3) and np.array_equal(wide[:, :96], frame) and np.array_equal(wide[:, 96:], fill)
    m = Compositor(pal, 0.4, style="mask", shown=shown)(frame, mask)
    assert np.array_equal(m[mask != 0], pal[mask][..., ::-1][mask != 0]) and not m[mask == 0].any()
    with pytest.raises(ValueError, match="overlay 'halo' is not one of fill, contour"):
        Compositor(pal, 0.4, style="halo")


def test_legend_shows_the_shown_classes_colours_in_the_top_right_corner():
    frame, mask = _scene(240, 320)
    pal = np.array([[1, 2, 3], [250, 10, 10], [10, 250, 10], [10, 10, 250], [200, 200, 10]], np.uint8)
    shown = shown_classes(NAMES, ["road", "car", "sky"])
    plain = Compositor(pal, 0.5, shown=shown, class_names=NAMES)(frame, mask)
    out = Compositor(pal, 0.5, shown=shown, class_names=NAMES, legend=True)(frame, mask)
    changed = (out != plain).any(axis=-1)
    ys, xs = np.nonzero(changed)
    assert xs.max() == 319 and ys.min() == 0 and xs.min() > 160 and ys.max() < 120  # a panel in the top-right corner
    panel = out[: ys.max() + 1, xs.min():].reshape(-1, 3)
    colours = {tuple(c) for c in panel.tolist()}
    for i in (1, 2, 4):
        assert tuple(int(v) for v in pal[i][::-1]) in colours, NAMES[i]  # its swatch, exact
    assert tuple(int(v) for v in pal[3][::-1]) not in colours  # person is not shown: not in the legend


def test_legend_with_more_classes_than_fit_stays_inside_the_frame():
    from vidseg.composite import render_legend

    names = [f"class{i}" for i in range(150)]
    panel, opaque = render_legend(names, make_palette(150), 120, 160)
    assert panel.shape[0] <= 120 and panel.shape[1] <= 160 and opaque.any()
    out = Compositor(make_palette(150), 0.5, class_names=names, legend=True)(*_scene(120, 160))
    assert out.shape == (120, 160, 3)

"""Tests for the synthetic scene generator (vidseg.scenes)."""
from __future__ import annotations

import subprocess
import sys
from dataclasses import replace
from fractions import Fraction
from pathlib import Path

import cv2
import numpy as np
import pytest

from vidseg import scenes
from vidseg.scenes import (
    CLASS_NAMES,
    PALETTE,
    Scene,
    SceneConfig,
    generate_scene,
    write_scene,
)

SMALL = SceneConfig(width=160, height=120, num_frames=12, seed=5)
# No lighting drift and no noise: frame pixels are exactly what was painted.
CLEAN = replace(SceneConfig(seed=7), lighting=0.0, noise=0.0)


def _clip(cfg: SceneConfig) -> tuple[np.ndarray, np.ndarray]:
    frames, masks = zip(*generate_scene(cfg))
    return np.stack(frames), np.stack(masks)


# ----------------------------------------------------------------- basics


def test_class_names_and_palette():
    assert 5 <= len(CLASS_NAMES) <= 6
    assert CLASS_NAMES[0] == "background"
    assert len(set(CLASS_NAMES)) == len(CLASS_NAMES)
    assert PALETTE.shape == (len(CLASS_NAMES), 3) and PALETTE.dtype == np.uint8
    # Visually distinct: every pair differs clearly.
    p = PALETTE.astype(int)
    d = np.abs(p[:, None] - p[None]).sum(-1)
    assert d[~np.eye(len(p), dtype=bool)].min() >= 100


def test_palette_contrasts_with_the_objects_it_marks_and_the_demo_cards_use_it():
    """Each class colour is far in hue from its objects' own colour (an overlay of red on red discs is invisible)."""
    from vidseg.train import SCENE_KNOBS
    from vidseg.zoo import zoo_cards

    frames = list(generate_scene(SceneConfig(width=320, height=240, num_frames=12, seed=3, **SCENE_KNOBS)))
    img = np.concatenate([f[0] for f in frames])
    mask = np.concatenate([f[1] for f in frames])
    hsv = cv2.cvtColor(img, cv2.COLOR_BGR2HSV)
    for c in range(1, len(CLASS_NAMES)):
        sel = (mask == c) & (hsv[..., 1] > 60)  # coloured pixels of that class
        hist = np.bincount(hsv[..., 0][sel], minlength=180).astype(float)
        smooth = np.convolve(np.r_[hist[-4:], hist, hist[:4]], np.ones(9), "valid")  # circular, 18 degrees wide
        object_hue = int(np.argmax(smooth))  # OpenCV hue: 0..179, two degrees a step
        pal_hue = int(cv2.cvtColor(PALETTE[c][None, None, ::-1].copy(), cv2.COLOR_BGR2HSV)[0, 0, 0])
        apart = min(abs(object_hue - pal_hue), 180 - abs(object_hue - pal_hue)) * 2
        assert apart >= 90, (CLASS_NAMES[c], object_hue * 2, pal_hue * 2)
    for name in ("ccnet-demo", "deeplabv3plus-demo"):
        assert zoo_cards()[name][0].palette == tuple(map(tuple, PALETTE.tolist())), name


def test_shapes_dtypes_and_valid_ids():
    cfg = replace(SMALL, width=161, height=97)  # odd sizes are fine for generation
    n = 0
    for frame, mask in generate_scene(cfg):
        assert frame.shape == (97, 161, 3) and frame.dtype == np.uint8
        assert mask.shape == (97, 161) and mask.dtype == np.uint8
        assert frame.flags.c_contiguous and mask.flags.c_contiguous
        assert mask.max() < len(CLASS_NAMES)
        n += 1
    assert n == cfg.num_frames


def test_same_seed_is_bit_identical_and_random_access_matches():
    f1, m1 = _clip(SMALL)
    f2, m2 = _clip(SMALL)
    assert np.array_equal(f1, f2) and np.array_equal(m1, m2)
    # Rendering frame t directly (no earlier frames) gives the same frame.
    sf = Scene(SMALL).render(7)
    assert np.array_equal(sf.frame, f1[7]) and np.array_equal(sf.mask, m1[7])


def test_different_seeds_differ():
    f1, m1 = _clip(SMALL)
    f2, m2 = _clip(replace(SMALL, seed=SMALL.seed + 1))
    assert not np.array_equal(m1, m2)
    assert np.abs(f1.astype(int) - f2.astype(int)).mean() > 10


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_every_class_appears_in_a_default_clip(seed):
    _, masks = _clip(SceneConfig(seed=seed))
    assert set(np.unique(masks).tolist()) == set(range(len(CLASS_NAMES)))
    # ...and background still dominates, objects are not a few stray pixels.
    frac = np.bincount(masks.ravel(), minlength=len(CLASS_NAMES)) / masks.size
    assert 0.5 < frac[0] < 0.97
    assert (frac[1:] > 0.003).all()


def test_config_validation():
    with pytest.raises(ValueError):
        SceneConfig(width=8)
    with pytest.raises(ValueError):
        SceneConfig(num_frames=0)
    with pytest.raises(ValueError):
        SceneConfig(seed=-1)
    with pytest.raises(ValueError):
        SceneConfig(object_size=(0.2, 0.1))
    with pytest.raises(ValueError):
        SceneConfig(noise=-1.0)
    with pytest.raises(ValueError):
        SceneConfig(fps=0)


# ----------------------------------------------------------------- masks agree with frames


def test_flat_objects_paint_exactly_the_mask():
    """Each object painted in its instance colour lands exactly on its mask pixels.

    Background values stay in [16, 239] (no lighting/noise here), so a pixel
    with B == 255 and G == 0 can only have been painted by an object; R holds
    the instance number.
    """
    cfg = replace(CLEAN, flat_objects=True)
    scene = Scene(cfg)
    for t in range(0, cfg.num_frames, 3):
        sf = scene.render(t)
        painted = (sf.frame[..., 0] == 255) & (sf.frame[..., 1] == 0)
        assert np.array_equal(painted, sf.mask > 0)
        assert np.array_equal(sf.instances > 0, sf.mask > 0)
        assert np.array_equal(sf.frame[..., 2][painted], (sf.instances[painted] & 0xFF).astype(np.uint8))
        cls_of = np.array((0,) + sf.instance_classes, np.uint8)
        assert np.array_equal(cls_of[sf.instances], sf.mask)


def test_textured_objects_are_painted_only_inside_the_mask():
    """Against the same scene without objects (same camera, lighting, background)."""
    scene = Scene(CLEAN)
    empty = Scene(replace(CLEAN, num_objects=0))  # objects are drawn after the world
    flat = Scene(replace(CLEAN, flat_objects=True))
    for t in (0, 20, 47):
        sf, bg, fl = scene.render(t), empty.render(t), flat.render(t)
        assert np.array_equal(sf.mask, fl.mask)  # texture does not change geometry
        outside = sf.mask == 0
        assert np.array_equal(sf.frame[outside], bg.frame[outside])
        assert np.array_equal(sf.frame[outside], fl.frame[outside])
        inside = ~outside
        changed = (sf.frame != bg.frame).any(-1)
        assert changed[inside].mean() > 0.95  # the object, not the background, is there


def test_objects_have_class_textures_not_flat_colours():
    """Within one visible object the texture spans a real range of values."""
    scene = Scene(CLEAN)
    sf = scene.render(10)
    grey = cv2.cvtColor(sf.frame, cv2.COLOR_BGR2GRAY).astype(float)
    checked = 0
    for i in range(len(sf.instance_classes)):
        sel = sf.instances == i + 1
        if sel.sum() > 200:
            assert grey[sel].std() > 8
            checked += 1
    assert checked >= 3


# ----------------------------------------------------------------- dynamics


def test_occlusion_happens():
    scene = Scene(SceneConfig(seed=3))
    partly_hidden = 0
    for sf in scene:
        visible = np.bincount(sf.instances.ravel(), minlength=len(sf.full_areas) + 1)[1:]
        assert (visible <= sf.full_areas).all()
        assert visible.sum() == np.count_nonzero(sf.mask)
        partly_hidden += int(((visible > 0) & (visible < sf.full_areas)).sum())
    assert partly_hidden > 0


def test_objects_enter_and_leave():
    scene = Scene(SceneConfig(seed=0, num_frames=96))
    vis = []
    for sf in scene:
        vis.append(np.bincount(sf.instances.ravel(), minlength=len(sf.full_areas) + 1)[1:] > 0)
    vis = np.array(vis)
    entered = (~vis[:-1] & vis[1:]).any()
    left = (vis[:-1] & ~vis[1:]).any()
    assert entered and left
    assert vis.sum(1).min() >= 2  # never an empty scene


def test_camera_moves_the_background():
    still = Scene(replace(CLEAN, camera_motion=0.0))
    moving = Scene(CLEAN)
    a, b = moving.render(0), moving.render(12)
    bg = (a.mask == 0) & (b.mask == 0)
    diff = np.abs(a.frame.astype(int) - b.frame.astype(int)).sum(-1)[bg]
    assert diff.mean() > 5
    # Control: without camera motion (and no lighting/noise) the background is static.
    c, d = still.render(0), still.render(12)
    bg = (c.mask == 0) & (d.mask == 0)
    assert np.array_equal(c.frame[bg], d.frame[bg])
    # The motion is a global shift, not noise: phase correlation finds it.
    ga = cv2.cvtColor(moving.render(0).frame, cv2.COLOR_BGR2GRAY).astype(np.float64)
    gb = cv2.cvtColor(moving.render(4).frame, cv2.COLOR_BGR2GRAY).astype(np.float64)
    (dx, dy), _ = cv2.phaseCorrelate(ga, gb)
    assert np.hypot(dx, dy) > 0.5


def test_lighting_drifts_over_time():
    base = replace(CLEAN, camera_motion=0.0, num_objects=0)
    lit = Scene(replace(base, lighting=1.0))
    means = [lit.render(t).frame.mean() for t in range(0, 48, 4)]
    assert max(means) - min(means) > 4
    dark = Scene(base)
    assert np.array_equal(dark.render(0).frame, dark.render(40).frame)


def test_sensor_noise_level():
    clean = Scene(replace(CLEAN, num_objects=0)).render(5).frame.astype(float)
    noisy = Scene(replace(CLEAN, num_objects=0, noise=3.0)).render(5).frame.astype(float)
    d = noisy - clean
    assert abs(d.mean()) < 0.2
    assert 2.6 < d.std() < 3.4
    # Independent per frame.
    n2 = Scene(replace(CLEAN, num_objects=0, noise=3.0, camera_motion=0.0))
    c2 = Scene(replace(CLEAN, num_objects=0, camera_motion=0.0))
    e1 = n2.render(1).frame.astype(float) - c2.render(1).frame
    e2 = n2.render(2).frame.astype(float) - c2.render(2).frame
    assert abs(np.corrcoef(e1.ravel(), e2.ravel())[0, 1]) < 0.05


def test_module_imports_neither_torch_nor_av():
    code = (
        "import importlib.util, sys\n"
        f"spec = importlib.util.spec_from_file_location('scenes_alone', {str(Path(scenes.__file__))!r})\n"
        "mod = importlib.util.module_from_spec(spec); sys.modules['scenes_alone'] = mod\n"
        "spec.loader.exec_module(mod)\n"
        "print('torch' in sys.modules, 'av' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]


# ----------------------------------------------------------------- writing


def _listing(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


def test_write_scene_video_and_masks(tmp_path):
    av = pytest.importorskip("av")
    cfg = SceneConfig(seed=2, num_frames=20)
    video, masks_dir = tmp_path / "out" / "scene.mp4", tmp_path / "out" / "masks"
    meta = write_scene(cfg, video, masks_dir)
    assert meta["frames"] == 20 and meta["fps"] == 25.0
    assert meta["size"] == (320, 240) and meta["classes"] == list(CLASS_NAMES)

    # Nothing but the two outputs: no temporary files or folders left behind.
    names = _listing(tmp_path / "out")
    assert names == sorted(["masks", "scene.mp4"] + [f"masks/{i:06d}.png" for i in range(20)])

    data = video.read_bytes()
    assert 0 <= data.find(b"moov") < data.find(b"mdat")  # +faststart

    ref_frames, ref_masks = _clip(cfg)
    with av.open(str(video)) as c:
        assert len(c.streams.audio) == 0
        vs = c.streams.video[0]
        assert vs.codec_context.name == "h264"
        assert vs.codec_context.pix_fmt == "yuv420p"
        assert (vs.codec_context.width, vs.codec_context.height) == (320, 240)
        assert vs.average_rate == Fraction(25)
        decoded = [f.to_ndarray(format="bgr24") for f in c.decode(vs)]
    assert len(decoded) == 20
    for got, ref in zip(decoded, ref_frames):
        err = got.astype(float) - ref
        psnr = 10 * np.log10(255**2 / (err**2).mean())
        assert psnr > 24  # lossy (and chroma-subsampled), but the same picture

    for i in range(20):
        m = cv2.imread(str(masks_dir / f"{i:06d}.png"), cv2.IMREAD_UNCHANGED)
        assert m.dtype == np.uint8 and m.shape == (240, 320)
        assert np.array_equal(m, ref_masks[i])


def test_write_scene_with_audio(tmp_path):
    av = pytest.importorskip("av")
    cfg = SceneConfig(seed=1, num_frames=15, width=160, height=120, fps=30)
    meta = write_scene(cfg, tmp_path / "a.mp4", tmp_path / "m", audio=True)
    assert meta["audio"] is True
    with av.open(str(tmp_path / "a.mp4")) as c:
        assert len(c.streams.video) == 1 and len(c.streams.audio) == 1
        a = c.streams.audio[0]
        assert a.codec_context.name == "aac"
        v = c.streams.video[0]
        assert v.average_rate == Fraction(30)
        vdur = float(v.duration * v.time_base)
        adur = float(a.duration * a.time_base)
        assert abs(adur - 15 / 30) < 0.05 and abs(vdur - 15 / 30) < 0.05
    with av.open(str(tmp_path / "a.mp4")) as c:
        n_video, chunks = 0, []
        for packet in c.demux():
            for f in packet.decode():
                if isinstance(f, av.VideoFrame):
                    n_video += 1
                else:
                    chunks.append(f.to_ndarray().ravel())
    assert n_video == 15
    samples = np.concatenate(chunks)
    assert np.abs(samples).max() > 0.1  # an actual tone, not silence
    assert len(list((tmp_path / "m").iterdir())) == 15
    assert _listing(tmp_path) == sorted(["a.mp4", "m"] + [f"m/{i:06d}.png" for i in range(15)])


def test_write_scene_replaces_old_masks_but_not_foreign_folders(tmp_path):
    pytest.importorskip("av")
    cfg = replace(SMALL, num_frames=6)
    write_scene(cfg, tmp_path / "v.mp4", tmp_path / "m")
    write_scene(replace(cfg, num_frames=4), tmp_path / "v.mp4", tmp_path / "m")
    assert _listing(tmp_path) == sorted(["m", "v.mp4"] + [f"m/{i:06d}.png" for i in range(4)])

    (tmp_path / "m" / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError):
        write_scene(cfg, tmp_path / "w.mp4", tmp_path / "m")
    assert (tmp_path / "m" / "notes.txt").read_text() == "mine"
    assert not (tmp_path / "w.mp4").exists()
    assert not any(p.name.startswith(".") for p in tmp_path.iterdir())


def test_write_scene_rejects_odd_size_and_cleans_up(tmp_path):
    pytest.importorskip("av")
    with pytest.raises(ValueError):
        write_scene(replace(SMALL, width=161), tmp_path / "v.mp4", tmp_path / "m")
    assert list(tmp_path.iterdir()) == []


def test_write_scene_failure_leaves_no_temp_files(tmp_path, monkeypatch):
    pytest.importorskip("av")

    def boom(self, t):
        if t == 3:
            raise RuntimeError("render failed")
        return real(self, t)

    real = Scene.render
    monkeypatch.setattr(Scene, "render", boom)
    with pytest.raises(RuntimeError):
        write_scene(SMALL, tmp_path / "v.mp4", tmp_path / "m")
    assert list(tmp_path.iterdir()) == []


def test_class_hues_put_each_class_in_its_own_hue_band():
    import cv2

    from vidseg.scenes import _CLASS_HUE

    cfg = SceneConfig(seed=5, num_frames=4, class_hues=True, distractors=0, lighting=0.0, noise=0.0, camera_motion=0.0)
    frame, mask = next(iter(generate_scene(cfg)))
    hsv = cv2.cvtColor(frame, cv2.COLOR_BGR2HSV)
    checked = 0
    for cls in range(1, len(_CLASS_HUE)):
        sel = (mask == cls) & (hsv[..., 1] > 150)  # saturated pixels: the class's main colour
        if sel.sum() < 50:
            continue
        checked += 1
        hue = hsv[..., 0][sel].astype(float)
        d = np.abs(((hue - _CLASS_HUE[cls]) + 90) % 180 - 90)  # circular distance
        assert np.median(d) < 15, (cls, np.median(d))
    assert checked >= 3

"""Overlay drawing speed: vidseg's styles against supervision's MaskAnnotator on the same 1080p frames and masks.

    python benchmarks/bench_overlay.py [--frames 8] [--repeat 5] [--threads 0]

Inputs: 1920x1080 frames and semantic (class-id) masks, two kinds: generated
scenes (6 classes, the demo's) and a Cityscapes-like map of 19 classes in
random overlapping regions. supervision draws instance masks, so its input is
one boolean mask per class present (a ``Detections``); it is timed twice:
annotating prebuilt Detections (its best case), and with the conversion from
the semantic mask that a vidseg user would have to do. Both draw the same
classes (every class but the background) in the same colours at opacity 0.5;
the fill outputs are compared pixel for pixel on every frame.

Per-frame times are medians over ``--repeat`` rounds, each running every
candidate over all frames in turn (after one warm-up pass); OpenCV's thread count is reported (``--threads 1`` pins both to
one thread). Needs ``pip install -e '.[bench]'`` (supervision). Prints a table,
writes ``benchmarks/results/overlay.json``.
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from vidseg.composite import Compositor, make_palette, shown_classes  # noqa: E402

W, H = 1920, 1080


def scene_inputs(n: int) -> tuple[list[np.ndarray], list[np.ndarray], list[str], np.ndarray]:
    from vidseg.scenes import CLASS_NAMES, PALETTE, SceneConfig, generate_scene
    from vidseg.train import SCENE_KNOBS

    pairs = list(generate_scene(SceneConfig(width=W, height=H, num_frames=n, seed=11, **SCENE_KNOBS)))
    return [f for f, _ in pairs], [m for _, m in pairs], list(CLASS_NAMES), PALETTE


def city_inputs(n: int, frames: list[np.ndarray]) -> tuple[list[np.ndarray], list[np.ndarray], list[str], np.ndarray]:
    """19 classes in random polygons and discs over a 'road' background (class 0 here plays background)."""
    import cv2

    rng = np.random.default_rng(5)
    masks = []
    for _ in range(n):
        m = np.zeros((H, W), np.uint8)
        for _ in range(60):
            c = int(rng.integers(1, 19))
            if rng.random() < 0.5:
                cv2.circle(m, (int(rng.integers(0, W)), int(rng.integers(0, H))), int(rng.integers(20, 260)), c, -1)
            else:
                pts = rng.integers(0, [W, H], size=(int(rng.integers(3, 8)), 2)).astype(np.int32)
                cv2.fillPoly(m, [pts], c)
        masks.append(m)
    names = ["background"] + [f"class{i}" for i in range(1, 19)]
    return frames, masks, names, make_palette(19)


def sv_detections(mask: np.ndarray, shown: np.ndarray):
    """supervision's input for a semantic mask: one boolean mask per class present (the conversion a user writes)."""
    import supervision as sv

    ids = [int(c) for c in np.unique(mask) if shown[c]]
    masks = np.stack([mask == c for c in ids])
    return sv.Detections(xyxy=sv.mask_to_xyxy(masks).astype(float), mask=masks, class_id=np.array(ids))


def interleaved_ms(fns: dict, repeat: int) -> dict[str, float]:
    """Per-frame ms of each ``name: (fn, items)``: one warm-up pass, then ``repeat`` rounds that run every
    candidate once in turn, so load from other processes falls on all of them alike; the median round."""
    for fn, items in fns.values():
        for it in items:
            fn(*it)
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeat):
        for name, (fn, items) in fns.items():
            t0 = time.perf_counter()
            for it in items:
                fn(*it)
            times[name].append((time.perf_counter() - t0) / len(items) * 1000)
    return {k: statistics.median(v) for k, v in times.items()}


def bench(kind: str, frames, masks, names, palette, repeat: int) -> dict:
    import supervision as sv

    shown = shown_classes(names)
    fill = Compositor(palette, 0.5, shown=shown)
    annot = sv.MaskAnnotator(color=sv.ColorPalette([sv.Color(*map(int, c)) for c in palette]), opacity=0.5,
                             color_lookup=sv.ColorLookup.CLASS)
    dets = [sv_detections(m, shown) for m in masks]
    equal = all(np.array_equal(fill(f, m), annot.annotate(f.copy(), d)) for f, m, d in zip(frames, masks, dets))

    pairs = list(zip(frames, masks))
    row = {"kind": kind, "classes": len(names), "frames": len(frames), "pixel_equal": equal}
    fns = {
        "vidseg_fill_ms": (fill, pairs),
        "sv_annotate_ms": (lambda f, d: annot.annotate(f.copy(), d), list(zip(frames, dets))),
        "sv_with_conversion_ms": (lambda f, m: annot.annotate(f.copy(), sv_detections(m, shown)), pairs),
        "frame_copy_ms": (lambda f, m: f.copy(), pairs),  # included in the supervision timings (it draws in place)
    }
    for style in ("contour", "fill+contour", "side-by-side", "mask"):
        fns[f"vidseg_{style}_ms"] = (Compositor(palette, 0.5, style=style, shown=shown), pairs)
    fns["vidseg_fill_legend_ms"] = (Compositor(palette, 0.5, shown=shown, class_names=names, legend=True), pairs)
    row.update(interleaved_ms(fns, repeat))
    row["speedup_vs_sv"] = row["sv_annotate_ms"] / row["vidseg_fill_ms"]
    row["speedup_vs_sv_with_conversion"] = row["sv_with_conversion_ms"] / row["vidseg_fill_ms"]
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--frames", type=int, default=8)
    ap.add_argument("--repeat", type=int, default=9)
    ap.add_argument("--threads", type=int, default=0, help="OpenCV threads (0: OpenCV's default)")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "overlay.json"))
    a = ap.parse_args()
    import cv2

    try:
        import supervision
    except ImportError:
        raise SystemExit("this benchmark needs supervision: pip install -e '.[bench]'") from None
    if a.threads:
        cv2.setNumThreads(a.threads)
    frames, masks, names, palette = scene_inputs(a.frames)
    rows = [bench("generated scenes", frames, masks, names, palette, a.repeat)]
    rows.append(bench("19 classes, random regions", *city_inputs(a.frames, frames), a.repeat))

    print(f"1920x1080, opacity 0.5, background not drawn; OpenCV threads {cv2.getNumThreads()}; "
          f"supervision {supervision.__version__}; ms per frame (median of {a.repeat} interleaved rounds over {a.frames} frames)\n")
    print("| masks | vidseg fill | supervision annotate | ×  | supervision incl. conversion | ×  | pixel-equal |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['kind']} | {r['vidseg_fill_ms']:.1f} ({1000 / r['vidseg_fill_ms']:.0f} fps) | "
              f"{r['sv_annotate_ms']:.1f} ({1000 / r['sv_annotate_ms']:.0f} fps) | {r['speedup_vs_sv']:.1f} | "
              f"{r['sv_with_conversion_ms']:.1f} | {r['speedup_vs_sv_with_conversion']:.1f} | {'yes' if r['pixel_equal'] else 'NO'} |")
    print("\n| masks | contour | fill+contour | side-by-side | mask | fill + legend |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['kind']} | {r['vidseg_contour_ms']:.1f} | {r['vidseg_fill+contour_ms']:.1f} | "
              f"{r['vidseg_side-by-side_ms']:.1f} | {r['vidseg_mask_ms']:.1f} | {r['vidseg_fill_legend_ms']:.1f} |")
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps({"rows": rows, "opencv_threads": cv2.getNumThreads(), "supervision": supervision.__version__,
                                      "machine": platform.platform(), "cpus": __import__("os").cpu_count()}, indent=2))
    if not all(r["pixel_equal"] for r in rows):
        raise SystemExit("the fill style and supervision's MaskAnnotator disagree")


if __name__ == "__main__":
    main()

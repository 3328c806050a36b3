"""The browser preview (--serve), in a real headless Chromium, and the first contact without a display.

The browser test drives Debian's ``chromium`` through Playwright: the page
loads, the live image updates, the legend lists the model card's classes with
their colours, the figures fill in, a phone-sized second viewer works at the
same time. ``VIDSEG_SCREENSHOT=docs/preview.png`` keeps its screenshot (the
README's picture comes from this test).
"""
from __future__ import annotations

import json
import os
import shutil
import socket
import time
import urllib.request
from fractions import Fraction

import numpy as np
import pytest

from helpers import HANG, TINY, free_ports, get, make_clip, null_model, one_line_error, probe, vidseg, wait_until


def chromium_path() -> str | None:
    """Debian's chromium (its real binary, not the shell wrapper), or another Chromium/Chrome on PATH."""
    for p in ("/usr/lib/chromium/chromium", shutil.which("chromium"), shutil.which("chromium-browser"),
              shutil.which("google-chrome")):
        if p and os.access(p, os.X_OK):
            return p
    return None


def canvas_hash(page, selector: str) -> int:
    """A hash of what the browser currently shows in ``selector`` (an <img> playing MJPEG), read through a canvas."""
    return page.eval_on_selector(selector, """img => {
        if (!img.naturalWidth) return 0;
        const c = document.createElement('canvas');
        c.width = img.naturalWidth; c.height = img.naturalHeight;
        const x = c.getContext('2d'); x.drawImage(img, 0, 0);
        const d = x.getImageData(0, 0, c.width, c.height).data;
        let h = 17;
        for (let i = 0; i < d.length; i += 61) h = (h * 31 + d[i]) | 0;
        return h;
    }""")


def test_preview_page_in_headless_chromium(tmp_path, procs):
    playwright = pytest.importorskip("playwright.sync_api", reason="the browser test needs Playwright: pip install -e '.[test]'")
    browser_bin = chromium_path()
    if browser_bin is None:
        pytest.skip("no Chromium here: apt-get install chromium (.ci/run installs it)")
    from vidseg.scenes import SceneConfig, write_scene
    from vidseg.train import SCENE_KNOBS
    from vidseg.zoo import zoo_cards

    clip = tmp_path / "scene.mp4"
    write_scene(SceneConfig(width=320, height=240, num_frames=250, fps=25, seed=31, **SCENE_KNOBS), clip, tmp_path / "gt")
    card = zoo_cards()["deeplabv3plus-demo"][0]
    port = free_ports(1)
    run = procs.start("run", "run", "--source", str(clip), "--mode", "live", "--model", card.name, "--device", "cpu",
                      "--serve", f":{port}", "--output", str(tmp_path / "o.mp4"), "--no-progress")
    wait_until(lambda: get(port, "/stats.json")[0] == 200 and json.loads(get(port, "/stats.json")[1])["streams"],
               alive=(run,), what="the preview serving a stream", logs=procs.logs)

    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=browser_bin, headless=True)
        try:
            page = browser.new_page(viewport={"width": 1000, "height": 640})
            page.goto(f"http://127.0.0.1:{port}/")
            page.wait_for_selector("#legend li", timeout=30_000)
            names = page.eval_on_selector_all("#legend li .name", "els => els.map(e => e.textContent)")
            colours = page.eval_on_selector_all("#legend li .swatch", "els => els.map(e => getComputedStyle(e).backgroundColor)")
            shown = [i for i, n in enumerate(card.class_names) if n != "background"]  # the background is not drawn
            assert names == [card.class_names[i] for i in shown]
            assert colours == ["rgb(%d, %d, %d)" % card.palette[i] for i in shown]

            img = "section.stream[data-stream='0'] img"
            page.wait_for_function(f"document.querySelector(\"{img}\").naturalWidth > 0", timeout=30_000)
            assert page.eval_on_selector(img, "i => [i.naturalWidth, i.naturalHeight]") == [320, 240]
            seen = {canvas_hash(page, img)}
            deadline = time.monotonic() + HANG
            while len(seen) < 3 and time.monotonic() < deadline and run.poll() is None:
                page.wait_for_timeout(150)
                seen.add(canvas_hash(page, img))
            assert len(seen) >= 3, "the image did not update"

            page.wait_for_function("Number(document.querySelector('[data-fig=\"fps\"] b').textContent) > 0", timeout=30_000)
            assert page.text_content("#workers") == "1"
            assert "deeplabv3plus-demo" in page.text_content("#model")
            assert page.is_hidden("#warning")  # trained weights: no "meaningless masks" warning

            # A second viewer, phone-sized, at the same time: the page fits and plays there too.
            phone = browser.new_page(viewport={"width": 390, "height": 844}, is_mobile=True, device_scale_factor=2)
            phone.goto(f"http://127.0.0.1:{port}/")
            phone.wait_for_function(f"document.querySelector(\"{img}\") && document.querySelector(\"{img}\").naturalWidth > 0",
                                    timeout=30_000)
            width = phone.eval_on_selector(img, "i => i.getBoundingClientRect().width")
            assert 300 <= width <= 390  # scaled to the phone's width, no sideways scrolling
            assert phone.evaluate("document.documentElement.scrollWidth") <= 390
            page.wait_for_function("Number(document.querySelector('#viewers').textContent) >= 2", timeout=30_000)

            shot = tmp_path / "preview.png"
            page.screenshot(path=str(shot))
            assert shot.stat().st_size > 10_000
            if os.environ.get("VIDSEG_SCREENSHOT"):
                shutil.copyfile(shot, os.environ["VIDSEG_SCREENSHOT"])
        finally:
            browser.close()
    assert run.wait(HANG) == 0, run.text()


def test_a_stalled_viewer_never_slows_the_pipeline(tmp_path, procs):
    """A viewer that stops reading holds up only its own connection: a lossless run still writes every frame."""
    n = 90
    clip = make_clip(tmp_path / "c.mp4", frames=n, width=160, height=96, fps=Fraction(25), audio=False)
    port = free_ports(1)
    out = tmp_path / "o.mp4"
    run = procs.start("run", "run", "--source", str(clip), "--output", str(out), "--alpha", "0.25", *null_model(30),
                      "--serve", f"127.0.0.1:{port}", "--no-progress")
    wait_until(lambda: json.loads(get(port, "/stats.json")[1] or "{}").get("streams") if get(port, "/stats.json")[0] == 200 else False,
               alive=(run,), what="the preview up", logs=procs.logs)
    stalled = socket.create_connection(("127.0.0.1", port), timeout=10)
    stalled.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    stalled.sendall(b"GET /stream/0.mjpg HTTP/1.1\r\nHost: x\r\n\r\n")  # ... and never reads
    jpegs = []
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/stream/0.mjpg", timeout=30) as r:
            assert r.headers["Content-Type"].startswith("multipart/x-mixed-replace")
            while len(jpegs) < 3 and run.poll() is None:
                line = r.readline()
                if line.lower().startswith(b"content-length:"):
                    r.readline()
                    jpegs.append(r.read(int(line.split(b":")[1])))
        assert run.wait(HANG) == 0, run.text()
    finally:
        stalled.close()
    import cv2

    frames = [cv2.imdecode(np.frombuffer(j, np.uint8), cv2.IMREAD_COLOR) for j in jpegs]
    assert len(frames) == 3 and all(f.shape == (96, 160, 3) for f in frames)
    assert len({f.tobytes() for f in frames}) == 3  # three different frames, in the order they were written
    got = probe(out)["frames"]
    assert len(got) == n  # every frame: the stalled viewer did not hold up the sink


def test_frame_endpoint_and_figures_of_a_served_sink(tmp_path, procs):
    clip = make_clip(tmp_path / "c.mp4", frames=150, fps=Fraction(25), audio=False)
    port = free_ports(1)
    run = procs.start("run", "run", "--source", str(clip), "--mode", "live", *TINY, "--model", "ccnet", "--serve", str(port),
                      "--overlay", "side-by-side", "--no-progress")
    wait_until(lambda: get(port, "/frame/0.jpg")[0] == 200, alive=(run,), what="a frame served", logs=procs.logs)
    import cv2

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/frame/0.jpg", timeout=30) as r:
        assert r.headers["Content-Type"] == "image/jpeg"
        img = cv2.imdecode(np.frombuffer(r.read(), np.uint8), cv2.IMREAD_COLOR)
    assert img.shape == (64, 192, 3)  # side by side: twice the clip's width
    stats = json.loads(get(port, "/stats.json")[1])
    assert stats["warning"] and "meaningless" in stats["warning"]  # random weights, said on the page too
    assert len(stats["legend"]) == 19 and stats["streams"][0]["name"] == "c.mp4"
    assert get(port, "/nope")[0] == 404
    assert run.wait(HANG) == 0, run.text()
    assert "the masks are meaningless" in run.text()  # at the start and in the summary


# -- first contact without a display ------------------------------------------------------------
def _no_display() -> dict:
    return {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "WAYLAND_DISPLAY")}


def test_no_display_and_nothing_to_write_says_how_to_watch_in_a_browser(clip, tmp_path):
    r = vidseg("run", "--source", str(clip), *TINY, env=_no_display(), cwd=tmp_path)
    assert r.returncode == 2, r.stderr
    one_line_error(r.stderr, "no display here for a preview window", "--serve :8080")
    assert "qt.qpa" not in r.stderr and list(tmp_path.iterdir()) == []
    r = vidseg("sink", "--preview", "--connect-timeout", "1", env=_no_display())
    assert r.returncode == 2
    one_line_error(r.stderr, "--preview needs a display", "--serve :8080")


def test_serve_on_a_busy_port_fails_before_any_work(clip, tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        r = vidseg("run", "--source", str(clip), *TINY, "--serve", f"127.0.0.1:{port}", cwd=tmp_path)
    assert r.returncode == 3
    one_line_error(r.stderr, f"--serve 127.0.0.1:{port}: cannot listen there")
    r = vidseg("run", "--source", str(clip), *TINY, "--serve", "127.0.0.1:99999", cwd=tmp_path)
    assert r.returncode == 2 and "within 1..65535" in r.stderr


def test_camera_probing_prints_no_opencv_noise_before_our_error(tmp_path):
    r = vidseg("run", "--source", "cam9", "--output", str(tmp_path / "o.mp4"), *TINY)
    assert r.returncode == 2
    one_line_error(r.stderr, "camera 9 could not be opened")
    assert r.stderr.strip().splitlines() == [next(ln for ln in r.stderr.splitlines() if ln.startswith("vidseg: error:"))]


def test_preview_jpegs_of_wide_frames_are_shrunk_to_the_page_width():
    import cv2

    from vidseg.preview import PREVIEW_MAX_WIDTH, encode_jpeg

    wide = np.zeros((1080, 3840, 3), np.uint8)  # side by side at 1080p
    wide[:, ::2] = 255
    img = cv2.imdecode(np.frombuffer(encode_jpeg(wide), np.uint8), cv2.IMREAD_COLOR)
    assert img.shape == (360, PREVIEW_MAX_WIDTH, 3)
    small = np.full((64, 96, 3), 77, np.uint8)
    assert cv2.imdecode(np.frombuffer(encode_jpeg(small), np.uint8), cv2.IMREAD_COLOR).shape == (64, 96, 3)

"""The browser preview (``--serve HOST:PORT``): every stream's live annotated view, the legend, live figures.

``/``                 the page: works on a phone, any number of viewers at once
``/stream/N.mjpg``    stream N as MJPEG (multipart/x-mixed-replace): any browser plays it without a plugin
``/frame/N.jpg``      the newest annotated frame of stream N as one JPEG
``/stats.json``       what the page shows: per-stream frames/s, latency p50/p99, drops; workers; the legend

A slow viewer never slows the pipeline. The sink only hands over a reference
to its newest annotated frame (:meth:`PreviewServer.publish`, no copy, no
encoding). One encoder thread JPEG-encodes the newest frame of a stream that
somebody watches, at most :data:`PREVIEW_FPS` times a second and at most
:data:`PREVIEW_MAX_WIDTH` pixels wide; each viewer's
own thread sends the newest JPEG whenever it is ready for one. So a slow
viewer gets fewer frames, never a queue, and with nobody watching nothing is
encoded at all.
"""
from __future__ import annotations

import json
import logging
import os
import re
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np

from .webserver import QuietHandler, start_server, stop_server, url_of

log = logging.getLogger("vidseg.preview")

PREVIEW_FPS = 15.0  # JPEGs per second per watched stream, at most
PREVIEW_MAX_WIDTH = 1280  # wider frames are shrunk for the page (bilinear: cheaper than encoding the pixels it drops)
JPEG_QUALITY = 80
VIEWER_TIMEOUT = 60.0  # seconds a viewer's socket may refuse our data before its connection is dropped
_BOUNDARY = b"vidsegframe"


def encode_jpeg(frame: np.ndarray) -> bytes | None:
    """The preview's JPEG of ``frame``: shrunk to :data:`PREVIEW_MAX_WIDTH` when wider (aspect kept)."""
    import cv2

    h, w = frame.shape[:2]
    if w > PREVIEW_MAX_WIDTH:
        frame = cv2.resize(frame, (PREVIEW_MAX_WIDTH, max(1, round(h * PREVIEW_MAX_WIDTH / w))), interpolation=cv2.INTER_LINEAR)
    ok, buf = cv2.imencode(".jpg", frame, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])  # releases the GIL
    return buf.tobytes() if ok else None


def has_display() -> bool:
    """True where a window can be opened: Windows, macOS, or an X11/Wayland display named in the environment."""
    if os.name == "nt" or os.uname().sysname == "Darwin":
        return True
    return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))


@dataclass
class _Feed:
    """One stream: its newest frame (a reference) and its newest JPEG."""

    name: str
    frame: np.ndarray | None = None
    published: int = 0  # frames handed over so far
    encoded: int = 0  # the ``published`` count the current JPEG was made from
    jpeg: bytes | None = None
    jpegs: int = 0  # JPEGs made so far (viewers wait for this to change)
    viewers: int = 0


class PreviewServer:
    """Serve the preview page and the MJPEG streams on ``address`` (see the module docstring)."""

    def __init__(self, address: str, *, title: str = "vidseg"):
        self.address = address
        self.title = title
        self._cond = threading.Condition()
        self._feeds: dict[int, _Feed] = {}
        self._legend: list[dict[str, Any]] = []
        self._stats: Callable[[], dict[str, Any]] = dict
        self._closed = False
        self._srv = start_server(address, _handler(self), "--serve")
        self._encoder = threading.Thread(target=self._encode_loop, name="vidseg-preview-jpeg", daemon=True)
        self._encoder.start()
        log.info("preview: open %s/ in a browser", url_of(address))

    # -- what the sink tells it ------------------------------------------------------
    def add_stream(self, sid: int, name: str) -> None:
        with self._cond:
            self._feeds.setdefault(sid, _Feed(name))

    def set_legend(self, names: Sequence[str], colors_rgb: Sequence[Sequence[int]], shown: Sequence[bool]) -> None:
        """The classes drawn (names and colours from the model card)."""
        self._legend = [{"id": i, "name": str(n), "color": "#%02x%02x%02x" % tuple(int(v) for v in c[:3])}
                        for i, (n, c) in enumerate(zip(names, colors_rgb)) if shown[i]]

    def set_stats(self, fn: Callable[[], dict[str, Any]]) -> None:
        """``fn()`` gives the live figures (called from a viewer's thread, once a second per page)."""
        self._stats = fn

    def publish(self, sid: int, frame: np.ndarray) -> None:
        """Hand over stream ``sid``'s newest annotated frame; the caller must not modify it afterwards."""
        with self._cond:
            feed = self._feeds.get(sid)
            if feed is None:
                feed = self._feeds[sid] = _Feed(f"stream {sid}")
            feed.frame = frame
            feed.published += 1
            if feed.viewers:
                self._cond.notify_all()

    @property
    def viewers(self) -> int:
        with self._cond:
            return sum(f.viewers for f in self._feeds.values())

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        stop_server(self._srv)
        self._encoder.join(timeout=5)

    # -- encoding ---------------------------------------------------------------------
    def _due(self) -> list[tuple[int, np.ndarray, int]]:
        return [(sid, f.frame, f.published) for sid, f in self._feeds.items()
                if f.viewers and f.frame is not None and f.published != f.encoded]

    def _encode_loop(self) -> None:
        period = 1.0 / PREVIEW_FPS
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._closed or self._due(), timeout=1.0)
                if self._closed:
                    return
                todo = self._due()
            started = time.monotonic()
            for sid, frame, published in todo:
                jpeg = encode_jpeg(frame)
                if jpeg is None:
                    continue
                with self._cond:
                    feed = self._feeds[sid]
                    feed.jpeg, feed.encoded = jpeg, published
                    feed.jpegs += 1
                    self._cond.notify_all()
            time.sleep(max(0.0, started + period - time.monotonic()))

    # -- what viewers get -----------------------------------------------------------
    def _stats_json(self) -> bytes:
        with self._cond:
            feeds = {sid: (f.name, f.viewers) for sid, f in self._feeds.items()}
        stats = dict(self._stats())
        streams = stats.pop("streams", {})
        stats["streams"] = [{"id": sid, "name": name, "viewers": viewers, **streams.get(sid, {})}
                            for sid, (name, viewers) in sorted(feeds.items())]
        stats.update(title=self.title, legend=self._legend, viewers=sum(v for _, v in feeds.values()), closed=self._closed)
        return json.dumps(stats).encode()

    def _watch(self, sid: int, send: Callable[[bytes], None]) -> None:
        """Send stream ``sid``'s newest JPEG each time a new one is made, until closed or the viewer goes."""
        with self._cond:
            feed = self._feeds[sid]
            feed.viewers += 1
            self._cond.notify_all()
        try:
            seen = -1
            while True:
                with self._cond:
                    self._cond.wait_for(lambda: self._closed or (feed.jpeg is not None and feed.jpegs != seen), timeout=5.0)
                    if self._closed:
                        return
                    jpeg, seen = feed.jpeg, feed.jpegs
                if jpeg is not None:
                    send(jpeg)
        finally:
            with self._cond:
                feed.viewers -= 1

    def _newest_jpeg(self, sid: int, timeout: float = 5.0) -> bytes | None:
        """One JPEG of stream ``sid`` (waits for the encoder when nobody is watching yet)."""
        with self._cond:
            feed = self._feeds[sid]
            feed.viewers += 1  # count as a viewer while waiting, so the encoder makes one
            self._cond.notify_all()
            try:
                self._cond.wait_for(lambda: self._closed or (feed.jpeg is not None and feed.encoded == feed.published),
                                    timeout=timeout)
                return feed.jpeg
            finally:
                feed.viewers -= 1

    def has_stream(self, sid: int) -> bool:
        with self._cond:
            return sid in self._feeds


_STREAM = re.compile(r"^/stream/(\d+)\.mjpg$")
_FRAME = re.compile(r"^/frame/(\d+)\.jpg$")


def _handler(server: PreviewServer) -> type:
    class Handler(QuietHandler):
        timeout = VIEWER_TIMEOUT  # a viewer that stops reading is dropped; it never blocks anyone else

        def do_GET(self) -> None:  # noqa: N802 - http.server's name
            path = self.path.split("?", 1)[0]
            if path in ("/", "/index.html"):
                self.reply(200, PAGE.encode(), "text/html; charset=utf-8")
            elif path == "/stats.json":
                self.reply(200, server._stats_json(), "application/json")
            elif (m := _STREAM.match(path)) and server.has_stream(int(m.group(1))):
                self._mjpeg(int(m.group(1)))
            elif (m := _FRAME.match(path)) and server.has_stream(int(m.group(1))):
                jpeg = server._newest_jpeg(int(m.group(1)))
                if jpeg is None:
                    self.reply(503, b"no frame yet\n")
                else:
                    self.reply(200, jpeg, "image/jpeg")
            else:
                self.reply(404, b"not found: the page is at /\n")

        def _mjpeg(self, sid: int) -> None:
            self.close_connection = True
            self.send_response(200)
            self.send_header("Content-Type", f"multipart/x-mixed-replace; boundary={_BOUNDARY.decode()}")
            self.send_header("Cache-Control", "no-store")
            self.send_header("Connection", "close")
            self.end_headers()

            def send(jpeg: bytes) -> None:
                self.wfile.write(b"--%s\r\nContent-Type: image/jpeg\r\nContent-Length: %d\r\n\r\n" % (_BOUNDARY, len(jpeg)))
                self.wfile.write(jpeg)
                self.wfile.write(b"\r\n")
                self.wfile.flush()

            try:
                server._watch(sid, send)
            except (BrokenPipeError, ConnectionResetError, TimeoutError, OSError):
                pass  # the viewer went away (or stopped reading for VIEWER_TIMEOUT)

    return Handler


PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>vidseg preview</title>
<style>
  :root { color-scheme: dark; }
  body { margin: 0; font: 15px/1.4 system-ui, -apple-system, "Segoe UI", sans-serif; background: #111; color: #eee; }
  header { display: flex; flex-wrap: wrap; gap: .2em 1.4em; align-items: baseline; padding: .6em 1em; background: #1d1d1d; }
  header h1 { font-size: 1.15em; margin: 0; }
  .muted { color: #aaa; }
  #warning { background: #5a3b00; color: #ffd27a; padding: .5em 1em; }
  main { display: flex; flex-wrap: wrap; gap: 1em; padding: 1em; }
  #streams { flex: 1 1 30em; display: flex; flex-direction: column; gap: 1em; min-width: 0; }
  .stream h2 { font-size: 1em; margin: 0 0 .3em; font-weight: 600; overflow-wrap: anywhere; }
  .stream img { display: block; width: 100%; height: auto; max-height: 72vh; object-fit: contain; object-position: left top;
                border-radius: 4px; }
  .figures { display: grid; grid-template-columns: repeat(auto-fit, minmax(6.5em, 1fr)); gap: .3em; margin: .4em 0 0; }
  .figure { background: #1d1d1d; border-radius: 4px; padding: .3em .5em; }
  .figure b { display: block; font-size: 1.15em; font-variant-numeric: tabular-nums; }
  .figure span { font-size: .8em; color: #aaa; }
  aside { flex: 0 1 15em; }
  aside h2 { font-size: 1em; margin: 0 0 .4em; }
  #legend { list-style: none; padding: 0; margin: 0; }
  #legend li { display: flex; align-items: center; gap: .55em; padding: .12em 0; }
  .swatch { flex: none; width: 1.1em; height: 1.1em; border-radius: 3px; border: 1px solid #fff3; }
</style>
</head>
<body>
<header>
  <h1 id="title">vidseg</h1>
  <span id="model" class="muted"></span>
  <span>workers <b id="workers">-</b></span>
  <span>viewers <b id="viewers">-</b></span>
  <span id="state" class="muted">connecting...</span>
</header>
<div id="warning" hidden></div>
<main>
  <div id="streams"></div>
  <aside><h2>Classes</h2><ul id="legend"></ul></aside>
</main>
<script>
"use strict";
const FIGURES = [["fps", "frames/s", 1], ["latency_p50_ms", "latency p50 ms", 0], ["latency_p99_ms", "latency p99 ms", 0],
                 ["dropped", "dropped", 0], ["frames", "frames", 0]];
const cards = new Map();
let legendDone = false;

function text(el, value) { if (el.textContent !== value) el.textContent = value; }

function card(s) {
  let c = cards.get(s.id);
  if (c) return c;
  c = document.createElement("section");
  c.className = "stream";
  c.dataset.stream = s.id;
  const h = document.createElement("h2");
  h.textContent = s.name;
  const img = document.createElement("img");
  img.alt = "stream " + s.id + ", annotated";
  img.src = "stream/" + s.id + ".mjpg";
  const figs = document.createElement("div");
  figs.className = "figures";
  for (const [key, label] of FIGURES) {
    const f = document.createElement("div");
    f.className = "figure";
    f.innerHTML = "<b>-</b><span></span>";
    f.dataset.fig = key;
    f.lastChild.textContent = label;
    figs.appendChild(f);
  }
  c.append(h, img, figs);
  document.getElementById("streams").appendChild(c);
  cards.set(s.id, c);
  return c;
}

function legend(items) {
  const ul = document.getElementById("legend");
  for (const it of items) {
    const li = document.createElement("li");
    li.dataset.cls = it.id;
    const sw = document.createElement("span");
    sw.className = "swatch";
    sw.style.background = it.color;
    const name = document.createElement("span");
    name.className = "name";
    name.textContent = it.name;
    li.append(sw, name);
    ul.appendChild(li);
  }
  legendDone = true;
}

async function refresh() {
  let s;
  try {
    s = await (await fetch("stats.json", {cache: "no-store"})).json();
  } catch (e) {
    text(document.getElementById("state"), "the pipeline has ended (or the sink is unreachable)");
    return;
  }
  text(document.getElementById("title"), s.title || "vidseg");
  text(document.getElementById("model"), s.model ? "model " + s.model : "");
  text(document.getElementById("workers"), String(s.workers ?? "-"));
  text(document.getElementById("viewers"), String(s.viewers ?? "-"));
  text(document.getElementById("state"), s.closed ? "ended" : "live");
  const w = document.getElementById("warning");
  if (s.warning) { text(w, s.warning); w.hidden = false; } else { w.hidden = true; }
  if (!legendDone && s.legend && s.legend.length) legend(s.legend);
  for (const st of s.streams || []) {
    const c = card(st);
    for (const [key, , digits] of FIGURES) {
      const v = st[key];
      text(c.querySelector('[data-fig="' + key + '"] b'), v === null || v === undefined ? "-" : Number(v).toFixed(digits));
    }
  }
}
refresh();
setInterval(refresh, 1000);
</script>
</body>
</html>
"""

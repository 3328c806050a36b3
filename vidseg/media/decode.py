"""Decoding a source: video files, cameras, network streams, image folders.

Files and streams are decoded with PyAV (exact timestamps, frame counts,
truncation detection, timeouts), cameras with OpenCV. Every reader iterates
``(bgr_frame, pts_seconds)`` and knows its size, rate and expected count.
"""
from __future__ import annotations

import contextlib
import logging
import os
import queue
import re
import threading
import time
from fractions import Fraction
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from ..errors import InputError, short_reason

log = logging.getLogger("vidseg.decode")

_CAM = re.compile(r"^cam(\d+)$")


def converter(fmt: str = "bgr24") -> Callable[[object], np.ndarray]:
    """A decoded ``av.VideoFrame`` -> ndarray in ``fmt``, keeping one swscale context for the whole stream.

    ``frame.to_ndarray(format=...)`` keeps its context on the frame, so every frame
    builds a new one: at 720p that set-up costs ~1.6 ms, more than the conversion
    itself (decoding to bgr24 then runs at 230 frames/s instead of 360 on 2 cores).
    One reformatter per stream gives the same pixels; it rebuilds its context only
    when the frame size or format changes.
    """
    from av.video.reformatter import VideoReformatter

    reformat = VideoReformatter().reformat
    return lambda frame: reformat(frame, format=fmt).to_ndarray()


def is_camera(uri: str) -> bool:
    """True for ``camN`` sources."""
    return bool(_CAM.match(uri))


class FrameReader:
    """Iterates ``(bgr_frame, pts_seconds)``; knows size, rate and expected count."""

    width: int
    height: int
    fps: Fraction
    expected: int | None  # frames the container claims, None when unknown (cameras)
    live: bool = False
    audio_path: str | None = None
    decoded: int = 0
    errors: int = 0  # frames the decoder rejected (damaged data), counted as it reports them
    start: float = 0.0  # the first frame's time in the file, seconds: pts are relative to it (audio is aligned the same way)

    def __iter__(self) -> Iterator[tuple[np.ndarray, float]]:  # pragma: no cover - interface
        raise NotImplementedError

    @property
    def announced(self) -> int | None:
        """Frames expected, for progress display: the container's count or an estimate."""
        return self.expected

    @property
    def lost(self) -> int:
        """Frames that could not be decoded: those the decoder rejected, or the container announced and never delivered."""
        if self.expected is None:
            return self.errors
        return max(self.errors, self.expected - self.decoded)

    def close(self) -> None:
        pass

    def __enter__(self) -> "FrameReader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class FileReader(FrameReader):
    """A video file decoded with PyAV."""

    def __init__(self, path: str):
        import av

        p = Path(path)
        if not p.exists():
            raise InputError(f"source file {path} does not exist; check the path")
        if p.is_dir():
            raise InputError(f"source {path} is a directory; give a video file")
        if not os.access(p, os.R_OK):
            raise InputError(f"source file {path} is not readable; check its permissions")
        try:
            self._c = av.open(str(p), "r")
        except (av.error.FFmpegError, UnicodeDecodeError, ValueError) as e:
            raise InputError(
                f"{path} is not a video FFmpeg can read ({short_reason(e)}); give an MP4/MKV/AVI/MOV file"
            ) from None
        if not self._c.streams.video:
            self._c.close()
            raise InputError(f"{path} has no video stream; give a video file")
        self._v = self._c.streams.video[0]
        self._v.thread_type = "AUTO"
        cc = self._v.codec_context
        self.width, self.height = int(cc.width), int(cc.height)
        if self.width <= 0 or self.height <= 0:
            self._c.close()
            raise InputError(f"{path} has a video stream without a frame size; the file may be damaged")
        rate = self._v.average_rate or self._v.guessed_rate or Fraction(25)
        self.fps = Fraction(rate).limit_denominator(1001000)
        self.expected = int(self._v.frames) or None
        self._estimated = None
        if self.expected is None and self._v.duration and self._v.time_base:
            # Containers without a frame count (mkv, ts): an estimate from duration, for progress only —
            # wrong for variable frame rates, so losses are then counted from the decoder's own errors.
            self._estimated = int(round(float(self._v.duration * self._v.time_base) * float(self.fps)))
        self.audio_path = str(p.resolve()) if self._c.streams.audio else None
        self.path = str(p)
        self.decode_error: str | None = None
        # Decode the first frame now: a file with no decodable frame fails before any work starts.
        self._frames = self._decode()
        self._first = next(self._frames, None)
        if self._first is None:
            self._c.close()
            raise InputError(f"{path} has no decodable video frame; the file is empty or damaged")
        tb = self._v.time_base
        self.start = float(self._first.pts * tb) if self._first.pts is not None and tb else 0.0

    @property
    def announced(self) -> int | None:
        """Frames the container claims, or its estimate from the duration (progress display only)."""
        return self.expected if self.expected is not None else self._estimated

    def _decode(self) -> Iterator:
        """Decoded frames, packet by packet: a damaged packet costs its frame (counted), not the rest of the file."""
        import av

        try:
            for packet in self._c.demux(self._v):
                try:
                    frames = packet.decode()
                except av.error.FFmpegError as e:
                    self.errors += 1
                    if self.errors <= 3 or self.errors % 100 == 0:
                        log.info("%s: a damaged frame was skipped (%s); %d so far", self.path, short_reason(e), self.errors)
                    continue
                yield from frames
        except (av.error.FFmpegError, EOFError) as e:
            # A damaged tail the demuxer cannot read past: keep what decoded, report the rest as lost.
            self.decode_error = short_reason(e)
            log.info("decoding %s stopped early: %s", self.path, self.decode_error)

    def __iter__(self) -> Iterator[tuple[np.ndarray, float]]:
        tb = self._v.time_base
        step = 1.0 / float(self.fps)
        last = None
        first, self._first = self._first, None
        to_bgr = converter()
        for frame in _chain(first, self._frames):
            # The frame's own timestamp: variable frame rates and gaps after damaged frames keep their real timing.
            pts = float(frame.pts * tb) if frame.pts is not None and tb else (last + step if last is not None else self.start)
            last = pts
            img = to_bgr(frame)
            self.decoded += 1
            yield img, pts - self.start
        if self.expected is not None and self.decoded > self.expected:
            self.expected = self.decoded

    def close(self) -> None:
        self._c.close()


class CameraReader(FrameReader):
    """A local camera opened with OpenCV (``camN``)."""

    live = True

    def __init__(self, uri: str, *, open_timeout: float = 5.0):
        import cv2

        m = _CAM.match(uri)
        assert m, uri
        self.index = int(m.group(1))
        with _opencv_quiet():  # each backend that fails to open prints WARN/ERROR lines before our own error
            self._cap = cv2.VideoCapture(self.index)
            ok = self._cap.isOpened()
        frame = None
        if ok:
            deadline = time.monotonic() + open_timeout
            while time.monotonic() < deadline:
                ok, frame = self._cap.read()
                if ok:
                    break
                time.sleep(0.05)
        if not ok or frame is None:
            self._cap.release()
            raise InputError(
                f"camera {self.index} could not be opened; check it is connected and free, "
                "or pick another index (--source camN)"
            )
        self._first = frame
        self.height, self.width = frame.shape[:2]
        fps = self._cap.get(cv2.CAP_PROP_FPS) or 30.0
        self.fps = Fraction(fps).limit_denominator(1001) if 1 <= fps <= 240 else Fraction(30)
        self.expected = None

    def __iter__(self) -> Iterator[tuple[np.ndarray, float]]:
        t0 = time.monotonic()
        frame = self._first
        while frame is not None:
            self.decoded += 1
            yield frame, time.monotonic() - t0
            ok, frame = self._cap.read()
            if not ok:
                raise InputError(f"camera {self.index} stopped delivering frames; check its connection")

    def close(self) -> None:
        self._cap.release()


class ImageFolderReader(FrameReader):
    """A folder of images, or a glob, played in name order at ``fps``."""

    EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")

    def __init__(self, spec: str, *, fps: float = 25.0):
        import glob

        import cv2

        p = Path(spec)
        if p.is_dir():
            files = sorted(f for f in p.iterdir() if f.suffix.lower() in self.EXTENSIONS)
        else:
            files = sorted(Path(f) for f in glob.glob(spec) if Path(f).suffix.lower() in self.EXTENSIONS)
        if not files:
            raise InputError(f"no images found in {spec}; give a folder or a glob of {'/'.join(e[1:] for e in self.EXTENSIONS[:3])} files")
        self.files = files
        first = cv2.imread(str(files[0]), cv2.IMREAD_COLOR)
        if first is None:
            raise InputError(f"{files[0]} is not a readable image; remove it or fix the glob")
        self.height, self.width = first.shape[:2]
        self.fps = Fraction(fps).limit_denominator(1001)
        self.expected = len(files)
        self.path = spec

    def __iter__(self) -> Iterator[tuple[np.ndarray, float]]:
        import cv2

        for i, f in enumerate(self.files):
            img = cv2.imread(str(f), cv2.IMREAD_COLOR)
            if img is None:
                log.warning("skipping unreadable image %s", f)
                continue
            if img.shape[:2] != (self.height, self.width):
                img = cv2.resize(img, (self.width, self.height), interpolation=cv2.INTER_AREA)
            self.decoded += 1
            yield img, i / float(self.fps)


class StreamReader(FrameReader):
    """A network stream (rtsp://, http(s):// incl. MJPEG) read with PyAV, reconnecting on loss.

    Every read has a timeout, so a silent camera never hangs the pipeline; a
    dropped stream is reopened with exponential backoff (and said so); frames
    of a different size after a reconnect are resized to the first size.
    """

    live = True

    def __init__(self, url: str, *, timeout: float = 5.0, retry_for: float = 30.0):
        self.url, self.timeout, self.retry_for = url, timeout, retry_for
        self.reconnects = 0
        self.expected = None
        try:
            self._c, self._v = self._open()
            self._first = next(self._c.decode(self._v))
        except Exception as e:  # noqa: BLE001 - any failure to open is the same user error
            raise InputError(f"stream {url} could not be opened ({short_reason(e)}); check the URL and that the server is up") from None
        self.width, self.height = self._first.width, self._first.height
        rate = self._v.average_rate or self._v.guessed_rate
        self.fps = Fraction(rate).limit_denominator(1001) if rate and 1 <= float(rate) <= 240 else Fraction(25)

    def _open(self):
        import av

        us = str(int(self.timeout * 1e6))
        opts = {"rw_timeout": us, "timeout": us} if not self.url.startswith("rtsp") else {"stimeout": us, "timeout": us, "rtsp_transport": "tcp"}
        c = av.open(self.url, "r", options=opts, timeout=self.timeout)
        if not c.streams.video:
            c.close()
            raise InputError(f"stream {self.url} has no video; check the URL")
        v = c.streams.video[0]
        return c, v

    def __iter__(self) -> Iterator[tuple[np.ndarray, float]]:
        import cv2

        t0 = time.monotonic()
        first = self._first
        to_bgr = converter()
        while True:
            try:
                for frame in _chain(first, self._c.decode(self._v)):
                    img = to_bgr(frame)
                    if img.shape[:2] != (self.height, self.width):
                        img = cv2.resize(img, (self.width, self.height), interpolation=cv2.INTER_AREA)
                    self.decoded += 1
                    yield img, time.monotonic() - t0
                why = "ended"
            except Exception as e:  # noqa: BLE001 - network errors come in many types
                why = short_reason(e)
            first = None
            self._close()
            if not self._reconnect(why):
                return

    def _reconnect(self, why: str) -> bool:
        delay, deadline = 0.25, time.monotonic() + self.retry_for
        log.warning("stream %s dropped (%s); reconnecting", self.url, why)
        while time.monotonic() < deadline:
            time.sleep(min(delay, max(0.0, deadline - time.monotonic())))
            try:
                self._c, self._v = self._open()
            except Exception as e:  # noqa: BLE001
                log.warning("stream %s: reconnect failed (%s); next try in %.1f s", self.url, short_reason(e), min(delay * 2, 8.0))
                delay = min(delay * 2, 8.0)
                continue
            self.reconnects += 1
            log.warning("stream %s: reconnected (%d so far)", self.url, self.reconnects)
            return True
        log.warning("stream %s: gave up reconnecting after %.0f s; ending the stream", self.url, self.retry_for)
        return False

    def _close(self) -> None:
        try:
            self._c.close()
        except Exception:  # noqa: BLE001 - already broken
            pass

    def close(self) -> None:
        self._close()


@contextlib.contextmanager
def _opencv_quiet() -> Iterator[None]:
    """Silence OpenCV's own log (backend probing noise) for the duration; restore its level afterwards."""
    import cv2

    logging_ = getattr(getattr(cv2, "utils", None), "logging", None)
    if logging_ is None:  # a build without cv2.utils.logging
        yield
        return
    previous = logging_.getLogLevel()
    logging_.setLogLevel(logging_.LOG_LEVEL_SILENT)
    try:
        yield
    finally:
        logging_.setLogLevel(previous)


class ReadAhead:
    """Decodes ``reader`` in a thread, up to ``depth`` frames ahead of whoever takes them.

    ``take()`` never waits for the decoder: it returns the next ``(frame, pts)``,
    None when none is decoded yet, or raises ``EOFError`` after the last frame
    (a decoding failure is raised as it happened). ``on_ready`` is called from
    the thread when a frame arrives in an empty queue: the taker may be
    waiting for it. The reader is closed by its owner only after ``close()``
    returned True: FFmpeg must not free a demuxer a read is still inside.
    """

    def __init__(self, reader: FrameReader, depth: int, on_ready=None):
        self.reader = reader
        self._q: queue.Queue = queue.Queue(maxsize=max(1, depth))
        self._on_ready = on_ready
        self._stop = threading.Event()
        self.done = False
        self.error: BaseException | None = None
        self._t = threading.Thread(target=self._run, name="vidseg-decode", daemon=True)
        self._t.start()

    def _run(self) -> None:
        try:
            for item in self.reader:
                while True:  # bounded: wait for room, but never past a stop
                    if self._stop.is_set():
                        return
                    try:
                        self._q.put(item, timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if self._on_ready is not None and self._q.qsize() == 1:
                    self._on_ready()
        except BaseException as e:  # noqa: BLE001 - raised in the taker's thread
            self.error = e
        finally:
            self.done = True
            if self._on_ready is not None:
                self._on_ready()  # the end is news too

    def take(self) -> tuple[np.ndarray, float] | None:
        done = self.done  # read before looking: a frame queued before the end is never missed
        try:
            return self._q.get_nowait()
        except queue.Empty:
            if self.error is not None:
                raise self.error
            if done:
                raise EOFError from None
            return None

    def stop(self) -> None:
        """Decode nothing more (the thread ends at its next frame)."""
        self._stop.set()

    def close(self, timeout: float = 15.0) -> bool:
        """Stop decoding and join the thread; True when it has ended."""
        self._stop.set()
        self._t.join(timeout)
        return not self._t.is_alive()


def is_stream_url(uri: str) -> bool:
    return uri.startswith(("rtsp://", "rtsps://", "http://", "https://", "rtmp://", "udp://", "tcp://"))


def open_source(uri: str, *, fps: float | None = None) -> FrameReader:
    """Open a source: a video file, ``camN``, a stream URL, an image folder or glob."""
    if is_camera(uri):
        return CameraReader(uri)
    if is_stream_url(uri):
        return StreamReader(uri)
    p = Path(uri)
    if p.is_dir() or any(ch in uri for ch in "*?["):
        return ImageFolderReader(uri, fps=fps or 25.0)
    return FileReader(uri)


def _chain(first, rest):
    """``first`` (unless None), then everything in ``rest``."""
    if first is not None:
        yield first
    yield from rest

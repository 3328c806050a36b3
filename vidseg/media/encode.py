"""Writing the video: browser-playable H.264 MP4 (yuv420p, moov first) with audio.

PyAV's libx264 does the encoding (OpenCV wheels cannot write H.264). Audio is
either copied packet by packet from the source (no re-encoding) or, for
generated clips, a synthesized tone encoded as AAC. Files are written under a
temporary name and renamed when complete.
"""
from __future__ import annotations

import logging
import os
import tempfile
from fractions import Fraction
from pathlib import Path
from typing import Iterable

import numpy as np

from ..errors import InputError, short_reason

log = logging.getLogger("vidseg.encode")

TONE_RATE = 48000


def current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def bgr_to_yuv420p(av, frame: np.ndarray):
    """BGR uint8 -> yuv420p ``av.VideoFrame`` (BT.601, limited range), rounded.

    swscale's direct bgr24 -> yuv420p path truncates instead of rounding (luma
    comes out about one level dark); its bgr24 -> yuv444p path is exact, so go
    through that and average each 2x2 chroma block ourselves.
    """
    import cv2

    h, w = frame.shape[:2]
    yuv = av.VideoFrame.from_ndarray(frame, format="bgr24").reformat(format="yuv444p").to_ndarray()
    uv = cv2.resize(np.ascontiguousarray(yuv[1:].transpose(1, 2, 0)), (w // 2, h // 2), interpolation=cv2.INTER_AREA)
    planes = np.concatenate([yuv[0].ravel(), uv[..., 0].ravel(), uv[..., 1].ravel()])
    return av.VideoFrame.from_ndarray(planes.reshape(h * 3 // 2, w), format="yuv420p")


class VideoWriter:
    """H.264 yuv420p MP4 (moov first), written under a temporary name next to ``path``.

    ``close()`` finalises and renames to the target path; ``abort()`` removes
    the partial file. Audio: packets from ``audio_from`` are copied without
    re-encoding, or ``tone_hz`` synthesizes a mono AAC tone (generated clips);
    either is interleaved with the video as it is written, so the muxer never
    buffers the whole stream. ``exact_yuv`` rounds the colour conversion
    (generated clips whose pixels are compared); the default is swscale's.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        *,
        width: int,
        height: int,
        fps: Fraction,
        audio_from: str | None = None,
        tone_hz: float | None = None,
        crf: int = 20,
        preset: str = "veryfast",
        exact_yuv: bool = False,
    ):
        import av

        self.path = Path(path)
        # yuv420p needs even sizes: drop the last odd row/column rather than rescale.
        self.width, self.height = width - width % 2, height - height % 2
        if (self.width, self.height) != (width, height):
            log.warning("output is %dx%d: H.264 4:2:0 needs even sizes (input %dx%d)", self.width, self.height, width, height)
        if self.width < 2 or self.height < 2:
            raise InputError(f"frames of {width}x{height} are too small to encode")
        self.fps = Fraction(fps)
        self.exact_yuv = exact_yuv
        fd, tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", suffix=".partial.mp4", dir=self.path.parent or ".")
        os.close(fd)
        self._tmp = Path(tmp)
        self._c = av.open(str(self._tmp), "w", format="mp4", options={"movflags": "+faststart"})
        self._v = self._c.add_stream("libx264", rate=self.fps)
        self._v.width, self._v.height, self._v.pix_fmt = self.width, self.height, "yuv420p"
        self._v.options = {"crf": str(crf), "preset": preset}
        self.frames = 0
        self._audio_in = None
        self._audio_iter = None
        self._audio_pending = None
        self._tone = None
        if audio_from:
            self._open_audio(audio_from)
        elif tone_hz:
            self._tone = (float(tone_hz), self._c.add_stream("aac", rate=TONE_RATE, layout="mono"))
            self._tone_sent = 0

    def _open_audio(self, path: str) -> None:
        import av

        try:
            src = av.open(path, "r")
        except (av.error.FFmpegError, OSError) as e:
            log.warning("audio not copied: cannot open %s (%s)", path, short_reason(e))
            return
        if not src.streams.audio:
            src.close()
            return
        ia = src.streams.audio[0]
        try:
            self._a = self._c.add_stream_from_template(ia)
        except (ValueError, av.error.FFmpegError) as e:  # codec MP4 cannot hold
            log.warning("audio not copied: %s in MP4 is not supported (%s)", ia.codec_context.name, short_reason(e))
            src.close()
            return
        self._audio_in, self._audio_tb = src, ia.time_base
        self._audio_iter = src.demux(ia)

    def _mux_audio_until(self, t: float | None) -> None:
        """Copy (or synthesize) audio up to ``t`` seconds (all of it when None)."""
        import av

        if self._tone is not None:
            self._encode_tone(t)
            return
        if self._audio_iter is None:
            return
        while True:
            pkt = self._audio_pending
            self._audio_pending = None
            if pkt is None:
                try:
                    pkt = next(self._audio_iter)
                except (StopIteration, av.error.FFmpegError):
                    self._audio_iter = None
                    return
            if pkt.dts is None:
                continue
            if t is not None and pkt.pts is not None and float(pkt.pts * self._audio_tb) > t:
                self._audio_pending = pkt
                return
            pkt.stream = self._a
            self._c.mux(pkt)

    def _encode_tone(self, t: float | None) -> None:
        import av

        hz, stream = self._tone
        until = int(round((t if t is not None else self.frames / self.fps) * TONE_RATE))
        while self._tone_sent < until:
            n = min(1024, until - self._tone_sent)
            ts = np.arange(self._tone_sent, self._tone_sent + n, dtype=np.float64) / TONE_RATE
            af = av.AudioFrame.from_ndarray((0.2 * np.sin(2 * np.pi * hz * ts)).astype(np.float32)[None, :],
                                            format="fltp", layout="mono")
            af.sample_rate, af.pts, af.time_base = TONE_RATE, self._tone_sent, Fraction(1, TONE_RATE)
            for pkt in stream.encode(af):
                self._c.mux(pkt)
            self._tone_sent += n
        if t is None:
            for pkt in stream.encode(None):
                self._c.mux(pkt)

    def write(self, frame: np.ndarray) -> None:
        """Encode one BGR frame; frames are timed by index at the source rate."""
        import av

        if frame.shape[0] != self.height or frame.shape[1] != self.width:
            frame = frame[: self.height, : self.width]
        frame = np.ascontiguousarray(frame)
        vf = bgr_to_yuv420p(av, frame) if self.exact_yuv else av.VideoFrame.from_ndarray(frame, format="bgr24")
        vf.pts = self.frames
        for pkt in self._v.encode(vf):
            self._c.mux(pkt)
        self.frames += 1
        self._mux_audio_until(self.frames / float(self.fps))

    def close(self) -> Path:
        """Flush, finalise and rename; returns the final path."""
        try:
            for pkt in self._v.encode(None):
                self._c.mux(pkt)
            self._mux_audio_until(None)
            self._c.close()
            if self._audio_in is not None:
                self._audio_in.close()
            os.chmod(self._tmp, 0o666 & ~current_umask())  # mkstemp made it private
        except BaseException:
            self.abort()  # never leave a half-written partial file behind
            raise
        os.replace(self._tmp, self.path)
        return self.path

    def abort(self) -> None:
        """Drop the partial file."""
        try:
            self._c.close()
        except Exception:  # noqa: BLE001 - the file is being thrown away anyway
            pass
        if self._audio_in is not None:
            self._audio_in.close()
        self._tmp.unlink(missing_ok=True)


def write_clip(path: str | os.PathLike, frames: Iterable[np.ndarray], *, fps: Fraction | float, tone_hz: float | None = None,
               crf: int = 18, preset: str = "veryfast", exact_yuv: bool = True) -> int:
    """Encode BGR ``frames`` (all the same size) into an H.264 MP4 at ``path``; returns the frame count.

    The one clip writer of the project: the scene generator, the tests and the
    benchmarks make their videos with it (``tone_hz``: an AAC tone as long as the video).
    """
    fps = Fraction(fps).limit_denominator(1001) if not isinstance(fps, Fraction) else fps
    it = iter(frames)
    first = next(it, None)
    if first is None:
        raise ValueError("write_clip needs at least one frame")
    h, w = first.shape[:2]
    writer = VideoWriter(path, width=w, height=h, fps=fps, tone_hz=tone_hz, crf=crf, preset=preset, exact_yuv=exact_yuv)
    try:
        writer.write(first)
        for frame in it:
            writer.write(frame)
    except BaseException:
        writer.abort()
        raise
    writer.close()
    return writer.frames

"""Writing the video: browser-playable H.264 MP4 (yuv420p, moov first) with audio.

PyAV's libx264 does the encoding (OpenCV wheels cannot write H.264). Each
frame keeps its own presentation time (variable frame rates, gaps after
damaged frames, live streams timed by the clock), so the output lasts as long
as the input and stays in sync with the audio. Audio is copied packet by
packet from the source when browsers can play it in MP4 (AAC, MP3), else
transcoded to AAC (AC3, PCM, ...); for generated clips a synthesized tone is
encoded as AAC. Files are written under a temporary name and renamed when
complete.
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
#: Video timestamps are kept on the 90 kHz MPEG clock: exact for every common frame rate.
CLOCK = 90000
#: Audio codecs every browser plays inside MP4: copied as they are; anything else is transcoded to AAC.
BROWSER_AUDIO = ("aac", "mp3")


def current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


#: BT.601 limited-range chroma (Cb, Cr) from 8-bit B, G, R, with the offset: swscale's default matrix, and
#: the one the output is tagged with (:class:`VideoWriter`).
_CHROMA = np.array([[112.0, -74.203, -37.797, 128 * 255], [-18.214, -93.786, 112.0, 128 * 255]]) / 255


def bgr_to_i420(frame: np.ndarray) -> np.ndarray:
    """BGR uint8 with even sides -> I420 planes ``(H*3/2, W)`` uint8: BT.601 limited range, rounded.

    Each chroma sample is that of its 2x2 block's mean colour (chroma is linear
    in B, G, R, so this is the mean of the four samples, rounded once). Within
    one level of the exact arithmetic (tests/test_dataplane.py), and about 2x
    faster than swscale's bgr24 -> yuv420p, which also truncates instead of
    rounding (luma comes out about one level dark): 0.7 ms against 1.6 ms per
    720p frame on this project's 2-core CI machine.
    """
    import cv2

    h, w = frame.shape[:2]
    if h % 2 or w % 2:
        raise ValueError(f"4:2:0 needs even sides, got {w}x{h}")
    out = np.empty((h * 3 // 2, w), np.uint8)
    # Luma, correctly rounded; the chroma this writes (one pixel of each block) is replaced below.
    out = cv2.cvtColor(frame, cv2.COLOR_BGR2YUV_I420, dst=out)
    half = cv2.resize(frame, (w // 2, h // 2), interpolation=cv2.INTER_AREA)  # each 2x2 block's mean
    flat, q = out.reshape(-1), h * w // 4
    for i, plane in enumerate((flat[h * w: h * w + q], flat[h * w + q:])):
        plane = plane.reshape(h // 2, w // 2)
        got = cv2.transform(half, _CHROMA[i: i + 1], dst=plane)
        if got is not plane:  # OpenCV allocated instead of writing in place
            plane[...] = got.reshape(plane.shape)
    return out


def encoder_threads() -> int:
    """The CPUs this process may run on (its affinity, as a container or ``taskset`` limits it)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def x264_options(crf: int, preset: str, threads: int | None = None) -> dict[str, str]:
    """libx264's options for every H.264 this project writes (and the bench's transcode baseline)."""
    # No B-frames: decode order is presentation order, so a track with irregular timestamps (variable
    # frame rates, gaps, live drops) keeps its exact length; with reordering, MP4's decode-time index
    # would stretch or cut it by the reorder delay (a few % larger files at the same quality).
    # x264's threads set explicitly (default: the CPUs this process may use), not left to its guess
    # from the machine's core count, which overcommits a container or a pinned stage.
    return {"crf": str(crf), "preset": preset, "bf": "0", "threads": str(threads or encoder_threads())}


class VideoWriter:
    """H.264 yuv420p MP4 (moov first), written under a temporary name next to ``path``.

    ``write(frame, pts)`` places each frame at its own time (seconds from the
    stream's start; by index at ``fps`` when not given). ``close()`` finalises
    and renames to the target path; ``close(trim_audio=True)`` ends the audio
    with the last frame (an interrupted run); ``abort()`` removes the partial
    file. Audio: ``audio_from``'s track, aligned by ``audio_start`` (the
    source's first video timestamp), copied when browsers play it in MP4, else
    transcoded to AAC; or ``tone_hz`` synthesizes a mono AAC tone (generated
    clips). It is interleaved with the video as it is written, so the muxer
    never buffers the whole stream. Frames are converted to yuv420p by
    :func:`bgr_to_i420` and the stream is tagged BT.601 limited range, so players
    (browsers assume BT.709 for untagged HD) turn them back into the same colours.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        *,
        width: int,
        height: int,
        fps: Fraction,
        audio_from: str | None = None,
        audio_start: float = 0.0,
        tone_hz: float | None = None,
        crf: int = 20,
        preset: str = "veryfast",
        threads: int | None = None,
        on_partial=None,
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
        fd, tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", suffix=".partial.mp4", dir=self.path.parent or ".")
        os.close(fd)
        self._tmp = Path(tmp)
        if on_partial is not None:
            on_partial(self._tmp)  # recorded before a byte is written: whoever cleans up after a kill finds it
        self._c = av.open(str(self._tmp), "w", format="mp4", options={"movflags": "+faststart"})
        self._v = self._c.add_stream("libx264", rate=self.fps)
        self._v.width, self._v.height, self._v.pix_fmt = self.width, self.height, "yuv420p"
        # The matrix and range of bgr_to_i420, written into the stream so no player has to guess.
        self._v.codec_context.colorspace = av.video.reformatter.Colorspace.ITU601
        self._v.codec_context.color_range = av.video.reformatter.ColorRange.MPEG
        self._v.codec_context.time_base = Fraction(1, CLOCK)
        self._v.options = x264_options(crf, preset, threads)
        self.frames = 0
        self.end = 0.0  # seconds of video written: the last frame's time plus one frame
        self._step = round(CLOCK / self.fps)
        self._last_step = self._step
        self._last_pts: int | None = None
        self._first_pts: int | None = None
        self._first_dts = None
        self._held = None  # the newest video packet: its duration is set at close so the track ends with its frame
        self._audio_in = None
        self._audio_iter = None
        self._audio_pending = None
        self._audio_shift = 0.0
        self._transcode = False
        self._tone = None
        if audio_from:
            self._open_audio(audio_from, audio_start)
        elif tone_hz:
            self._tone = (float(tone_hz), self._c.add_stream("aac", rate=TONE_RATE, layout="mono"))
            self._tone_sent = 0

    @property
    def has_audio(self) -> bool:
        return self._audio_in is not None or self._tone is not None

    def _open_audio(self, path: str, start: float) -> None:
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
        name = ia.codec_context.name
        try:
            if name in BROWSER_AUDIO:
                self._a = self._c.add_stream_from_template(ia)
            else:
                self._a = self._c.add_stream("aac", rate=ia.codec_context.sample_rate or TONE_RATE,
                                             layout=_aac_layout(ia.codec_context.layout))
                self._a.bit_rate = 64000 * max(1, min(self._a.codec_context.layout.nb_channels, 8))
                self._transcode = True
                log.info("audio: transcoding %s to AAC (browsers cannot play %s in MP4)", name, name)
        except (ValueError, av.error.FFmpegError) as e:
            log.warning("audio not copied: %s in MP4 is not supported (%s)", name, short_reason(e))
            src.close()
            return
        self._audio_in, self._audio_tb = src, ia.time_base
        self._audio_shift = start  # the video starts at the source's first frame: the audio moves with it
        self._audio_iter = src.decode(ia) if self._transcode else src.demux(ia)

    def _mux_audio_until(self, t: float | None) -> None:
        """Copy, transcode (or synthesize) audio up to ``t`` seconds of output (all of it when None)."""
        import av

        if self._tone is not None:
            self._encode_tone(t)
            return
        if self._audio_iter is None:
            return
        shift = round(self._audio_shift / self._audio_tb) if self._audio_tb else 0
        while True:
            item = self._audio_pending
            self._audio_pending = None
            if item is None:
                try:
                    item = next(self._audio_iter)
                except (StopIteration, av.error.FFmpegError):
                    self._audio_iter = None
                    break
            if item.pts is None or (not self._transcode and item.dts is None):
                continue
            if t is not None and float((item.pts - shift) * self._audio_tb) > t:
                self._audio_pending = item
                return
            if self._transcode:
                if item.pts - shift < 0:
                    continue  # before the first video frame
                item.pts -= shift
                for pkt in self._a.encode(item):
                    self._c.mux(pkt)
            else:
                item.pts -= shift
                item.dts -= shift
                item.stream = self._a
                self._c.mux(item)
        if self._transcode:
            for pkt in self._a.encode(None):
                self._c.mux(pkt)

    def _encode_tone(self, t: float | None) -> None:
        import av

        hz, stream = self._tone
        until = int(round((t if t is not None else self.end) * TONE_RATE))
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

    def write(self, frame: np.ndarray, pts: float | None = None) -> None:
        """Encode one BGR frame at ``pts`` seconds from the stream's start (by index at the source rate when None)."""
        import av

        if frame.shape[0] != self.height or frame.shape[1] != self.width:
            frame = frame[: self.height, : self.width]
        frame = np.ascontiguousarray(frame)
        vf = av.VideoFrame.from_ndarray(bgr_to_i420(frame), format="yuv420p")
        ticks = self.frames * self._step if pts is None else round(pts * CLOCK)
        if self._last_pts is not None and ticks <= self._last_pts:
            ticks = self._last_pts + 1  # a repeated or backwards timestamp (damaged input): keep the order
        if self._first_pts is None:
            self._first_pts = ticks
        vf.pts, vf.time_base = ticks, Fraction(1, CLOCK)
        if self._last_pts is not None:
            self._last_step = ticks - self._last_pts  # the last frame lasts as long as the one before it
        self._last_pts = ticks
        self._mux_video(self._v.encode(vf))
        self.frames += 1
        self.end = (ticks + self._last_step) / CLOCK
        self._mux_audio_until(self.end)

    def _mux_video(self, packets) -> None:
        for pkt in packets:
            if self._first_dts is None:
                self._first_dts = pkt.dts
            if self._held is not None:
                self._c.mux(self._held)
            self._held = pkt

    def _finish_video(self) -> None:
        """Flush the encoder; the last packet lasts until its frame's end, so the track is as long as the frames."""
        self._mux_video(self._v.encode(None))
        pkt = self._held
        if pkt is None:
            return
        self._held = None
        if pkt.dts is not None and self._first_dts is not None and pkt.time_base:
            to_tb = Fraction(1, CLOCK) / pkt.time_base
            want = round((self._last_pts + self._last_step - self._first_pts) * to_tb)  # presented length
            pkt.duration = max(1, want - (pkt.dts - self._first_dts))
        self._c.mux(pkt)

    def close(self, *, trim_audio: bool = False) -> Path:
        """Flush, finalise and rename; returns the final path. ``trim_audio``: no audio past the last frame."""
        try:
            self._finish_video()
            self._mux_audio_until(self.end if trim_audio else None)
            if trim_audio and self._transcode and self._audio_iter is not None:
                for pkt in self._a.encode(None):
                    self._c.mux(pkt)
            if trim_audio and self._tone is not None:
                for pkt in self._tone[1].encode(None):
                    self._c.mux(pkt)
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


def _aac_layout(layout) -> str:
    """A channel layout FFmpeg's AAC encoder takes: the source's when it can, else stereo (or mono)."""
    name = getattr(layout, "name", "") or ""
    if name in ("mono", "stereo", "3.0", "4.0", "5.0", "5.1", "7.1"):
        return name
    return "mono" if getattr(layout, "nb_channels", 2) == 1 else "stereo"


def write_clip(path: str | os.PathLike, frames: Iterable[np.ndarray], *, fps: Fraction | float, tone_hz: float | None = None,
               crf: int = 18, preset: str = "veryfast") -> int:
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
    writer = VideoWriter(path, width=w, height=h, fps=fps, tone_hz=tone_hz, crf=crf, preset=preset)
    try:
        writer.write(first)
        for frame in it:
            writer.write(frame)
    except BaseException:
        writer.abort()
        raise
    writer.close()
    return writer.frames

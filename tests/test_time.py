"""Time is kept: each frame's own timestamp travels from the decoder (or a live source's clock) to the encoder.

Inputs are real files written here with PyAV directly (not with vidseg's writer, which is under test):
variable frame rates, a damaged MJPEG AVI, AC3 and PCM audio. Outputs are read back with PyAV: every
written frame's barcode and presentation time, and the audio track's codec and length.
"""
from __future__ import annotations

import re
import signal
import subprocess
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

from helpers import (
    ALPHA,
    BASE,
    FAST,
    HANG,
    MjpegServer,
    barcode_frame,
    make_clip,
    masks_written,
    no_partials,
    null_model,
    read_barcode,
    wait_until,
)


def _tone(n: int, rate: int, start: int) -> np.ndarray:
    t = (np.arange(start, start + n) / rate).astype(np.float32)
    return (0.2 * np.sin(2 * np.pi * 440 * t))[None, :]


def write_input(path: Path, times: list[float], *, container: str = "mp4", video: str = "libx264", audio: str | None = "aac",
                audio_seconds: float | None = None, rate: int = 48000, clock: int = 1000) -> Path:
    """Barcode frames ``i`` at ``times[i]`` seconds, and a 440 Hz tone as long as the video (or ``audio_seconds``)."""
    c = av.open(str(path), "w", format=container)
    v = c.add_stream(video, rate=Fraction(clock) if video == "mjpeg" else None)
    v.width, v.height = 96, 64
    v.pix_fmt = "yuvj420p" if video == "mjpeg" else "yuv420p"
    v.codec_context.time_base = Fraction(1, clock)
    if video == "libx264":
        v.options = {"crf": "12", "preset": "ultrafast"}
    a = None
    if audio:
        a = c.add_stream(audio, rate=rate, layout="stereo" if audio == "ac3" else "mono")
    for i, t in enumerate(times):
        f = av.VideoFrame.from_ndarray(barcode_frame(i, 64, 96), format="bgr24")
        f.pts, f.time_base = round(t * clock), Fraction(1, clock)
        for p in v.encode(f):
            c.mux(p)
    for p in v.encode(None):
        c.mux(p)
    if a is not None:
        total = int((audio_seconds if audio_seconds is not None else times[-1] + (times[-1] - times[-2])) * rate)
        fmt = {"aac": "fltp", "ac3": "fltp", "pcm_s16le": "s16"}[audio]
        sent = 0
        while sent < total:
            n = min(1024, total - sent)
            x = _tone(n, rate, sent)
            if a.layout.nb_channels == 2:
                x = np.concatenate([x, x])
            if fmt == "s16":
                af = av.AudioFrame.from_ndarray((x * 32767).astype(np.int16).T.reshape(1, -1), format="s16", layout=a.layout.name)
            else:
                af = av.AudioFrame.from_ndarray(x, format="fltp", layout=a.layout.name)
            af.sample_rate, af.pts, af.time_base = rate, sent, Fraction(1, rate)
            for p in a.encode(af):
                c.mux(p)
            sent += n
        for p in a.encode(None):
            c.mux(p)
    c.close()
    return path


def read_output(path: Path) -> dict:
    """Barcodes and presentation times of every frame, the video's length, and the audio track."""
    with av.open(str(path)) as c:
        v = c.streams.video[0]
        frames = [(read_barcode(f.to_ndarray(format="bgr24")), float(f.pts * v.time_base)) for f in c.decode(v)]
        out = {"ids": [i for i, _ in frames], "times": [t for _, t in frames],
               "duration": float(v.duration * v.time_base), "audio": None, "audio_duration": None}
        if c.streams.audio:
            s = c.streams.audio[0]
            out["audio"] = s.codec_context.name
            out["audio_duration"] = float(s.duration * s.time_base) if s.duration else None
    return out


def vidseg_run(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([*BASE, "run", *args, *ALPHA, *null_model(0), *FAST], capture_output=True, text=True, timeout=HANG, cwd=cwd)


def test_a_variable_frame_rate_file_keeps_every_frames_time(tmp_path):
    # bursts and pauses: 25 fps, a 0.5 s gap, 10 fps, a 1 s gap
    times = [i * 0.04 for i in range(10)] + [0.86 + i * 0.1 for i in range(10)] + [2.76 + i * 0.04 for i in range(10)]
    src = write_input(tmp_path / "vfr.mp4", times)
    out = tmp_path / "out.mp4"
    r = vidseg_run("--source", str(src), "--output", str(out), cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    got = read_output(out)
    assert got["ids"] == list(range(30))
    assert got["times"] == pytest.approx(times, abs=0.002)  # they were 0, 1/fps, 2/fps, ...: the wrong speed
    assert got["duration"] == pytest.approx(times[-1] + 0.04, abs=0.05)
    assert got["audio"] == "aac" and got["audio_duration"] == pytest.approx(got["duration"], abs=0.05)


def _damage_jpegs(path: Path, which: tuple[int, ...]) -> None:
    """Overwrite the whole JPEG (SOI to EOI) of frames ``which`` in an MJPEG AVI, sizes kept: undecodable, the audio intact."""
    data = bytearray(path.read_bytes())
    soi = [i for i in range(len(data) - 1) if data[i] == 0xFF and data[i + 1] == 0xD8]
    for k in which:
        end = data.find(b"\xff\xd9", soi[k]) + 2
        data[soi[k]:end] = bytes((x % 200) + 1 for x in range(end - soi[k]))
    path.write_bytes(bytes(data))


def test_a_damaged_avi_keeps_its_length_its_sound_and_an_honest_loss_count(tmp_path):
    """A damaged AVI of 29.6 s came out as 4.5 s: decoding stopped at the first bad frame and frames were
    re-timed by index. Now a bad frame costs only itself (counted), the rest keep their times, and the
    PCM sound, which browsers cannot play in MP4, is transcoded to AAC."""
    n, fps = 40, 10
    src = write_input(tmp_path / "cam.avi", [i / fps for i in range(n)], container="avi", video="mjpeg", audio="pcm_s16le", clock=fps)
    damaged = (5, 6, 20)
    _damage_jpegs(src, damaged)
    out = tmp_path / "out.mp4"
    r = vidseg_run("--source", str(src), "--output", str(out), cwd=tmp_path)
    assert r.returncode == 5, r.stderr
    assert re.search(r"vidseg: error: 3 frame\(s\) of the source could not be decoded", r.stderr), r.stderr
    assert "transcoding pcm_s16le to AAC" in r.stderr
    got = read_output(out)
    kept = [i for i in range(n) if i not in damaged]
    assert got["ids"] == kept
    assert got["times"] == pytest.approx([i / fps for i in kept], abs=0.002)  # the gaps are where the damage was
    assert got["duration"] == pytest.approx(n / fps, abs=0.05)
    assert got["audio"] == "aac" and got["audio_duration"] == pytest.approx(n / fps, abs=0.1)


def test_ac3_audio_is_transcoded_to_aac_that_browsers_play(tmp_path):
    src = write_input(tmp_path / "ac3.mkv", [i / 25 for i in range(25)], container="matroska", audio="ac3")
    with av.open(str(src)) as c:
        assert c.streams.audio[0].codec_context.name == "ac3"
    out = tmp_path / "out.mp4"
    r = vidseg_run("--source", str(src), "--output", str(out), cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "audio: transcoding ac3 to AAC (browsers cannot play ac3 in MP4)" in r.stderr
    got = read_output(out)
    assert got["ids"] == list(range(25))
    assert got["audio"] == "aac" and got["audio_duration"] == pytest.approx(1.0, abs=0.1)


def test_aac_audio_is_copied_not_transcoded(tmp_path):
    src = write_input(tmp_path / "aac.mp4", [i / 25 for i in range(25)])
    out = tmp_path / "out.mp4"
    r = vidseg_run("--source", str(src), "--output", str(out), cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "transcoding" not in r.stderr
    with av.open(str(src)) as a, av.open(str(out)) as b:
        pa = [bytes(p) for p in a.demux(a.streams.audio[0]) if p.size]
        pb = [bytes(p) for p in b.demux(b.streams.audio[0]) if p.size]
    assert pb == pa[: len(pb)] and len(pb) >= len(pa) - 1  # the same packets, bit for bit


def test_an_mjpeg_stream_is_written_at_its_real_rate(tmp_path, procs):
    """MJPEG/RTSP were written at a fixed 25 fps: 35 s of a 10 fps stream became 13.7 s of video."""
    out = tmp_path / "out.mp4"
    srv = MjpegServer(fps=10)
    try:
        run = procs.start("run", "run", "--source", srv.url, "--output", str(out), "--masks", str(tmp_path / "masks"),
                          *ALPHA, *null_model(0), *FAST)
        wait_until(lambda: masks_written(tmp_path) >= 25, alive=(run,), what="25 frames written")
        run.signal(signal.SIGINT)
        assert run.wait() == 130, run.text()
        sent = dict(srv.sent)
    finally:
        srv.stop()
    got = read_output(out)
    ids, times = got["ids"], got["times"]
    assert len(ids) >= 25 and ids == sorted(ids)
    real = sent[ids[-1]] - sent[ids[0]]
    assert real > 2.0
    # Timed by the live source's clock: as long as the frames really took to arrive (reading jitter aside).
    assert times[-1] - times[0] == pytest.approx(real, rel=0.15, abs=0.25)
    assert got["duration"] == pytest.approx(times[-1] - times[0] + 0.1, abs=0.3)


def test_live_mode_drops_keep_the_real_duration_and_the_sound_in_sync(tmp_path):
    """Dropped live frames shortened the video while the audio stayed full length."""
    n = 75
    clip = make_clip(tmp_path / "live.mp4", frames=n, fps=Fraction(25), audio=True)
    out = tmp_path / "out.mp4"
    r = subprocess.run([*BASE, "run", "--source", str(clip), "--mode", "live", "--output", str(out), *ALPHA,
                        *null_model(150), *FAST], capture_output=True, text=True, timeout=HANG, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    got = read_output(out)
    assert 0 < len(got["ids"]) < n  # frames were dropped ...
    assert got["times"] == pytest.approx([i / 25 for i in got["ids"]], abs=0.002)  # ... and each kept its own time
    last = got["times"][-1] - got["times"][-2]  # the last frame lasts as long as the gap before it
    # (the track's duration counts from its first frame, which is not frame 0 when that one was dropped)
    assert got["duration"] == pytest.approx(got["times"][-1] + last - got["times"][0], abs=0.01)
    assert got["times"][-1] + last > (n - 10) / 25  # the video still spans the stream, not len(ids) / 25
    assert got["audio_duration"] == pytest.approx(n / 25, abs=0.1)


def test_an_interrupted_run_trims_its_audio_to_what_was_written(tmp_path, procs):
    """One Ctrl-C gave exit 0, 'done', and a short video carrying the full-length audio."""
    n = 150
    clip = make_clip(tmp_path / "c.mp4", frames=n, fps=Fraction(25), audio=True)
    out = tmp_path / "out.mp4"
    run = procs.start("run", "run", "--source", str(clip), "--output", str(out), "--masks", str(tmp_path / "masks"),
                      *ALPHA, *null_model(100), *FAST)
    wait_until(lambda: masks_written(tmp_path) >= 10, alive=(run,), what="10 frames written")
    run.signal(signal.SIGINT)
    assert run.wait() == 130, run.text()
    got = read_output(out)
    k = len(got["ids"])
    assert 10 <= k < n and got["ids"] == list(range(k))
    lines = [ln for ln in run.text().splitlines() if ln.startswith("vidseg:")]
    masks = tmp_path / "masks"  # both outputs named: the masks were kept too
    assert lines == [f"vidseg: interrupted: wrote {k} of ~{n} frame(s) to {out} and {masks} (its audio trimmed to match)"
                     ], run.text()
    assert got["duration"] == pytest.approx(k / 25, abs=0.05)
    assert got["audio_duration"] == pytest.approx(k / 25, abs=0.05)  # not 6 s
    assert no_partials(tmp_path) == []

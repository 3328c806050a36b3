"""The data plane: masks travel at the inference size and come out bit-identical; frames are read ahead."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from helpers import FAST, TINY, FakeSource, make_clip, vidseg
from vidseg.geometry import resize_labels


@pytest.mark.parametrize("src,dst", [((288, 512), (720, 1280)), ((520, 700), (480, 640)), ((7, 5), (13, 2)),
                                     ((36, 64), (64, 96)), ((64, 96), (64, 96)), ((1, 1), (3, 4))])
def test_sink_resize_is_the_workers_nearest_rule(src, dst):
    """The sink (NumPy) brings a mask to its frame's size with exactly the ids the worker (torch) would have."""
    ids = np.random.default_rng(sum(src)).integers(0, 19, src, dtype=np.uint8)
    ours = resize_labels(ids, dst)
    theirs = resize_labels(torch.from_numpy(ids)[None], dst)[0].numpy()
    assert ours.shape == dst and ours.dtype == np.uint8
    np.testing.assert_array_equal(ours, theirs)


def test_pipeline_masks_are_bit_identical_to_full_size_inference(tmp_path):
    """Masks cross the wire at the inference size; what the sink writes equals a full-size in-process run."""
    from vidseg.config import ModelConfig
    from vidseg.media.decode import FileReader
    from vidseg.media.masks import MASK_VIDEO, read_mask_video
    from vidseg.predictor import Segmenter
    from vidseg.zoo import load_model

    clip = make_clip(tmp_path / "in.mp4", frames=10, width=200, height=120, audio=False)
    r = vidseg("run", "--source", str(clip), "--model", "deeplabv3plus", "--masks", str(tmp_path / "m"), *TINY, "-v")
    assert r.returncode == 0, r.stderr
    got = list(read_mask_video(tmp_path / "m" / MASK_VIDEO))

    model, card = load_model(ModelConfig(model="deeplabv3plus", width_mult=0.125, device="cpu"))
    seg = Segmenter(model, card, device="cpu", input_size=64)  # full_size: ids resized on the worker's side
    small = Segmenter(model, card, device="cpu", input_size=64, full_size=False)
    with FileReader(str(clip)) as reader:
        frames = [f for f, _ in reader]
    assert len(got) == len(frames) == 10
    for frame, mask in zip(frames, got):
        (want,) = seg([frame])
        (wire,) = small([frame])
        assert wire.shape[0] < 120 and wire.shape[1] < 200  # what travelled was smaller than the frame
        np.testing.assert_array_equal(mask, want)


def test_a_masks_only_sink_takes_no_pixels_and_brings_small_masks_to_frame_size(tmp_path, procs):
    """A sink writing masks asks for no frames (hello frames=false): stamps carry place and time; masks
    arrive at the inference size and are written at the frame's size by the nearest rule."""
    from vidseg.media.masks import MASK_VIDEO, read_mask_video

    n, (h, w), small = 5, (64, 96), (40, 64)
    rng = np.random.default_rng(5)
    masks = [rng.integers(0, 19, small, dtype=np.uint8) for _ in range(n)]
    fake = FakeSource()
    try:
        sink = procs.start("sink", "sink", "--connect", fake.endpoint, "--masks", str(tmp_path / "m"), *FAST)
        hello = fake.recv(kinds=("hello",), alive=(sink,))
        assert hello["frames"] is False
        fake.send("info", stream=0, streams=1, width=w, height=h, fps=[25, 1], frames=n, source="fake", audio=None, mode="lossless")
        for i in range(n):
            fake.send("stamp", stream=0, seq=i, pts=i / 25)
            fake.send("mask", masks[i], stream=0, seq=i)
            assert fake.recv(kinds=("ack",), alive=(sink,))["written"] == i + 1
        fake.send("eos", stream=0, frames=n, lost=0, dropped=0)
        assert sink.wait(30) == 0, sink.text()
    finally:
        fake.close()
    got = list(read_mask_video(tmp_path / "m" / MASK_VIDEO))
    assert len(got) == n
    for mask, sent in zip(got, masks):
        np.testing.assert_array_equal(mask, resize_labels(torch.from_numpy(sent)[None], (h, w))[0].numpy())


def test_a_sink_that_draws_frames_asks_for_them_and_refuses_stamps(tmp_path, procs):
    fake = FakeSource()
    try:
        sink = procs.start("sink", "sink", "--connect", fake.endpoint, "--output", str(tmp_path / "o.mp4"), *FAST)
        assert fake.recv(kinds=("hello",), alive=(sink,))["frames"] is True
        fake.send("info", stream=0, streams=1, width=96, height=64, fps=[25, 1], frames=1, source="fake", audio=None, mode="lossless")
        fake.send("stamp", stream=0, seq=0, pts=0.0)  # pixels it needs are missing: dropped as malformed
        fake.send("frame", np.zeros((64, 96, 3), np.uint8), stream=0, seq=0, pts=0.0)
        fake.send("mask", np.zeros((32, 48), np.uint8), stream=0, seq=0)
        assert fake.recv(kinds=("ack",), alive=(sink,))["written"] == 1
        fake.send("eos", stream=0, frames=1, lost=0, dropped=0)
        assert sink.wait(30) == 0, sink.text()
    finally:
        fake.close()
    assert "a frame without pixels for a sink that draws frames" in sink.text()


class _Frames:
    """A reader of ``n`` numbered frames that fails at frame ``fail`` (if given)."""

    def __init__(self, n: int, fail: int | None = None):
        self.n, self.fail, self.read = n, fail, 0

    def __iter__(self):
        for i in range(self.n):
            if i == self.fail:
                raise OSError("damaged at frame %d" % i)
            self.read += 1
            yield np.full((2, 2, 3), i, np.uint8), i / 25


def _take_all(ahead, limit: int = 1000):
    import time

    got = []
    for _ in range(limit):  # bounded: each pass waits at most 10 ms
        try:
            item = ahead.take()
        except EOFError:
            return got
        if item is None:
            time.sleep(0.01)
        else:
            got.append(item)
    raise AssertionError(f"no end after {limit} looks; got {len(got)} frames")


def test_read_ahead_keeps_order_ends_and_wakes_the_taker():
    import threading

    from vidseg.media.decode import ReadAhead

    woken = threading.Semaphore(0)
    ahead = ReadAhead(_Frames(20), depth=3, on_ready=woken.release)
    got = _take_all(ahead)
    assert [int(f[0, 0, 0]) for f, _ in got] == list(range(20)) and [p for _, p in got] == [i / 25 for i in range(20)]
    assert woken.acquire(timeout=5)  # told at least once (the first frame or the end)
    assert ahead.close()


def test_read_ahead_raises_the_decoders_failure_after_the_frames_before_it():
    from vidseg.media.decode import ReadAhead

    ahead = ReadAhead(_Frames(10, fail=4), depth=2)
    with pytest.raises(OSError, match="damaged at frame 4"):
        _take_all(ahead)
    assert ahead.close()


def test_read_ahead_is_bounded_and_stops_mid_stream():
    import time

    from vidseg.media.decode import ReadAhead

    frames = _Frames(1000)
    ahead = ReadAhead(frames, depth=4)
    for _ in range(200):  # bounded wait for the queue to fill (the thread blocks on it)
        if frames.read >= 5:
            break
        time.sleep(0.01)
    time.sleep(0.2)
    assert frames.read <= 4 + 1  # the queue's 4 and the one waiting for room: never the whole file
    assert ahead.close(timeout=5)  # stopped while blocked on a full queue
    assert frames.read < 1000


def test_a_worker_may_ask_for_smaller_frames_and_masks_still_come_out_at_frame_size(tmp_path):
    """--wire-size: the source shrinks frames (area averaging) before sending; the sink writes frame-size masks
    equal to inference on the shrunk frame brought back by the nearest rule."""
    import cv2

    from vidseg.config import ModelConfig
    from vidseg.media.decode import FileReader
    from vidseg.media.masks import MASK_VIDEO, read_mask_video
    from vidseg.predictor import Segmenter
    from vidseg.zoo import load_model

    clip = make_clip(tmp_path / "in.mp4", frames=6, width=200, height=120, audio=False)
    r = vidseg("run", "--source", str(clip), "--model", "deeplabv3plus", "--masks", str(tmp_path / "m"),
               "--wire-size", "100", *TINY)
    assert r.returncode == 0, r.stderr
    got = list(read_mask_video(tmp_path / "m" / MASK_VIDEO))
    model, card = load_model(ModelConfig(model="deeplabv3plus", width_mult=0.125, device="cpu"))
    seg = Segmenter(model, card, device="cpu", input_size=64, full_size=False)
    with FileReader(str(clip)) as reader:
        frames = [f for f, _ in reader]
    assert len(got) == len(frames) == 6
    for frame, mask in zip(frames, got):
        (small,) = seg([cv2.resize(frame, (100, 60), interpolation=cv2.INTER_AREA)])
        assert mask.shape == (120, 200)
        np.testing.assert_array_equal(mask, resize_labels(small, (120, 200)))


def test_the_streams_one_converter_gives_the_pixels_of_each_frames_own(tmp_path):
    # One swscale context per stream instead of one per frame (the set-up cost more than the conversion):
    # the pixels must not change, also when the size or pixel format changes in the middle of a stream.
    import av

    from vidseg.media.decode import converter

    rng = np.random.default_rng(3)
    frames = []
    for w, h, fmt in [(64, 48, "yuv420p"), (64, 48, "yuv420p"), (96, 40, "yuv420p"), (64, 48, "yuv444p"),
                      (64, 48, "gray")]:
        f = av.VideoFrame.from_ndarray(rng.integers(0, 256, (h, w, 3), np.uint8), format="bgr24").reformat(format=fmt)
        frames.append(f)
    for fmt in ("bgr24", "gray"):
        convert = converter(fmt)
        for f in frames:
            assert np.array_equal(convert(f), f.to_ndarray(format=fmt)), (fmt, f.width, f.height, f.format.name)


def _i420_reference(bgr: np.ndarray) -> np.ndarray:
    """BT.601 limited range in float64, each chroma sample the mean of its 2x2 block, rounded once."""
    b, g, r = (bgr[..., i].astype(np.float64) for i in range(3))
    h, w = bgr.shape[:2]
    y = 16 + (65.481 * r + 128.553 * g + 24.966 * b) / 255
    u = 128 + (-37.797 * r - 74.203 * g + 112.0 * b) / 255
    v = 128 + (112.0 * r - 93.786 * g - 18.214 * b) / 255
    mean = lambda p: p.reshape(h // 2, 2, w // 2, 2).mean(axis=(1, 3))  # noqa: E731
    planes = [np.rint(p).clip(0, 255).ravel() for p in (y, mean(u), mean(v))]
    return np.concatenate(planes).reshape(h * 3 // 2, w)


@pytest.mark.parametrize("kind", ["noise", "flat"])
def test_bgr_to_i420_is_within_one_level_of_exact_bt601(kind):
    from vidseg.media.encode import bgr_to_i420

    rng = np.random.default_rng(5)
    if kind == "noise":  # every 2x2 block mixes colours: chroma must be the block's mean, not one of its pixels
        bgr = rng.integers(0, 256, (36, 52, 3), np.uint8)
    else:
        bgr = np.zeros((36, 52, 3), np.uint8)
        bgr[:, :26] = (30, 120, 200)
        bgr[:, 26:] = (250, 5, 60)
    got = bgr_to_i420(bgr).astype(int)
    ref = _i420_reference(bgr)
    assert got.shape == (54, 52)
    assert np.abs(got - ref).max() <= 1
    # Rounded, not truncated: swscale's direct path comes out half a level low on average.
    assert abs((got - ref).mean()) < 0.1
    with pytest.raises(ValueError, match="even"):
        bgr_to_i420(bgr[:35])


def test_written_video_is_tagged_with_the_matrix_it_was_converted_with(tmp_path):
    import av

    from vidseg.media.encode import write_clip

    write_clip(tmp_path / "c.mp4", [np.full((48, 64, 3), (30, 120, 200), np.uint8)] * 3, fps=25)
    with av.open(str(tmp_path / "c.mp4")) as c:
        cc = c.streams.video[0].codec_context
        # BT.601 (bt470bg) matrix, limited ("tv") range: what bgr_to_i420 computes.
        assert (int(cc.colorspace), int(cc.color_range)) == (5, 1)
        f = next(c.decode(video=0))
        assert np.abs(f.to_ndarray(format="bgr24")[20, 20].astype(int) - (30, 120, 200)).max() <= 4


@pytest.mark.parametrize("src,dst", [((36, 64), (90, 160)), ((37, 61), (720, 1280)), ((50, 50), (50, 50)),
                                     ((90, 160), (36, 64)), ((7, 300), (1, 1)), ((1, 1), (33, 17))])
def test_label_counts_on_the_small_mask_are_the_counts_of_the_resized_one(src, dst):
    from vidseg.geometry import label_counts

    rng = np.random.default_rng(sum(src) + sum(dst))
    noise = rng.integers(0, 256, src, np.uint8)
    runs = np.repeat(rng.integers(0, 6, (src[0], 1), np.uint8), src[1], axis=1)  # what masks are: long runs
    runs[:, : src[1] // 3] = 255
    for ids in (noise, runs):
        want = np.bincount(resize_labels(ids, dst).ravel(), minlength=256)
        got = label_counts(ids, dst)
        assert got.dtype == np.int64 and np.array_equal(got, want)
    assert np.array_equal(label_counts(noise), np.bincount(noise.ravel(), minlength=256))


# --------------------------------------------------------------------------- CPU batches side by side
def _tiny_segmenter(**kw):
    from vidseg.config import ModelConfig
    from vidseg.predictor import Segmenter
    from vidseg.zoo import load_model

    model, card = load_model(ModelConfig(model="deeplabv3plus", width_mult=0.125, device="cpu"))
    return Segmenter(model, card, device="cpu", input_size=64, full_size=False, **kw)


def test_cpu_batches_in_flight_run_side_by_side_and_come_back_in_order():
    """With ``in_flight=2`` on the CPU two batches compute at the same time, each on a thread of its own
    with half the threads, and the ring hands back exactly the masks of one batch at a time over all
    the threads, in the order submitted."""
    from vidseg.predictor import split_threads

    frames = [np.random.default_rng(i).integers(0, 256, (72, 128, 3), dtype=np.uint8) for i in range(6)]
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(4)
        serial = _tiny_segmenter()
        want = [serial([f])[0] for f in frames]
        assert serial.depth == serial.lanes == 1
        assert split_threads("cpu", "torch", in_flight=2, threads=4) == (2, 2)  # as the worker does
        _lanes_in_order(frames, want, serial)
    finally:
        torch.set_num_threads(before)


def _lanes_in_order(frames: list[np.ndarray], want: list[np.ndarray], serial) -> None:
    """Two lanes must meet inside the forward (a barrier) and give ``want`` in order."""
    import threading

    from vidseg.ring import Ring

    seg = _tiny_segmenter(in_flight=2)
    assert seg.depth == seg.lanes == 2
    both = threading.Barrier(2, timeout=60)  # broken (and the batch fails) unless the first two overlap
    threads, calls, forward = set(), [], seg.model.forward

    def meeting(x):
        calls.append(1)
        if len(calls) <= 2:
            both.wait()
        threads.add(threading.get_ident())
        return forward(x)

    seg.model.forward = meeting
    wakes = []
    assert seg.notify(lambda: wakes.append(1)) and not serial.notify(lambda: None)  # the worker waits, not polls
    ring = Ring(seg, depth=seg.depth)
    got = []
    for i, f in enumerate(frames):
        got += ring.submit([f], tag=i)
    got += ring.drain()
    seg.close()  # waits for the lanes' threads, whose done-callbacks (the wake-ups) have then all run
    assert [tag for tag, _ in got] == list(range(6))
    for (_, (mask,)), expected in zip(got, want):
        np.testing.assert_array_equal(mask, expected)
    assert len(threads) == 2 and threading.get_ident() not in threads
    assert len(wakes) == 6  # one wake-up per batch completed


def test_in_flight_defaults_and_the_threads_each_batch_gets():
    from vidseg.predictor import default_in_flight, split_threads

    assert default_in_flight("cuda", 1) == 3  # copies and compute overlap
    assert default_in_flight("cpu", 2) == default_in_flight("cpu", 16) == 2
    assert default_in_flight("cpu", 1) == 1 and default_in_flight("cpu", 8, runtime="onnxruntime") == 1
    before = torch.get_num_threads()
    try:
        assert split_threads("cpu", "torch", in_flight=None, threads=4) == (2, 2) and torch.get_num_threads() == 2
        assert split_threads("cpu", "torch", in_flight=3, threads=7) == (3, 2) and torch.get_num_threads() == 2
        assert split_threads("cpu", "torch", in_flight=1, threads=2) == (1, 2) and torch.get_num_threads() == 2
        assert split_threads("cpu", "torch", in_flight=4, threads=2) == (4, 1)  # asked for: a thread per lane
        assert split_threads("cpu", "onnxruntime", in_flight=None, threads=2) == (1, None)
    finally:
        torch.set_num_threads(before)


def test_another_runtime_with_batches_in_flight_is_a_clear_error():
    from vidseg.errors import InputError
    from vidseg.predictor import Segmenter
    from vidseg.runtimes.base import Backend
    from vidseg.zoo import ModelCard

    class OneAtATime(Backend):
        name = "onnxruntime"

        def labels(self, x):
            return np.zeros((x.shape[0], *x.shape[2:]), np.uint8)

        def logits(self, x):
            raise AssertionError("not asked for")

    card = ModelCard(name="t", architecture="deeplabv3plus", backbone="mobilenetv2", num_classes=2)
    with pytest.raises(InputError, match="runs one batch at a time; drop --in-flight or use --runtime torch"):
        Segmenter(OneAtATime(), card, in_flight=2)
    assert Segmenter(OneAtATime(), card).lanes == 1

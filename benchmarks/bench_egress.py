"""What one source process carries at 1080p: frames/s and bytes/s out of a real `vidseg source`.

A generated 1920×1080 H.264 clip is served by a real `vidseg source` process over tcp on
127.0.0.1, plain and with CURVE. Its peers are stand-ins that cost next to nothing (one
process, one thread): a worker that answers every frame at once with a ready-made mask at
the inference size (512×288, as masks travel), and a sink that acknowledges each frame as
soon as its frame (or, for a sink that writes only masks, its pixel-less stamp) and its mask
are in. So the figure is the source's own ceiling: decode + send every frame to a worker
(and to a sink that draws video) + relay every mask. The baseline, measured in the same run, is decoding
alone (vidseg's own reader, same clip): the source cannot go faster than that. On this
2-core machine the peers' receiving (and CURVE decryption) shares the cores with the source.

    python benchmarks/bench_egress.py [--frames 150]
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import zmq

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
sys.path.insert(0, str(ROOT / "tests"))

import _clips  # noqa: E402
from helpers import free_endpoint  # noqa: E402
from vidseg.config import CurveConfig  # noqa: E402
from vidseg.transport import dealer, recv, send, send_msg  # noqa: E402
from vidseg.wire import pack  # noqa: E402

W, H = 1920, 1080


def decode_only(clip: Path) -> float:
    """Frames/s of vidseg's reader alone on the clip (the baseline)."""
    from vidseg.media.decode import open_source

    r = open_source(str(clip))
    t0, n = time.perf_counter(), 0
    for _frame, _pts in r:
        n += 1
    dt = time.perf_counter() - t0
    r.close()
    return n / dt


#: The stand-in worker's model card (the source admits no worker without one).
CARD = {"name": "stand-in", "class_names": ["background", "thing"], "palette": [[0, 0, 0], [255, 255, 255]]}
MASK = (288, 512)  # a mask at the inference size of a 1080p frame at long side 512


def serve_once(clip: Path, frames: int, curve: dict | None, sink_frames: bool = True) -> dict:
    """Run a real source against stand-in peers; frames/s and bytes/s it sent, first frame to last."""
    ep = free_endpoint()
    args = [sys.executable, "-m", "vidseg", "source", "--source", str(clip), "--bind", ep, "--credits", "4"]
    client = CurveConfig()
    if curve:
        args += ["--curve-secret", curve["server_secret"], "--curve-clients", curve["allowed"]]
        client = CurveConfig(curve_secret=curve["client_secret"], curve_server=curve["server_public"])
    log = open(clip.parent / "source.log", "w+")
    src = subprocess.Popen(args, stderr=log, text=True)
    worker = dealer(ep, linger=0, curve=client)
    sink = dealer(ep, linger=0, curve=client)
    mask = np.zeros(MASK, np.uint8)
    try:
        send_msg(worker, "hello", role="worker", credits=4, pid=0, card=CARD)
        send_msg(sink, "hello", role="sink", frames=sink_frames)
        poller = zmq.Poller()
        poller.register(worker, zmq.POLLIN)
        poller.register(sink, zmq.POLLIN)
        have: dict[int, int] = {}  # seq -> parts in (frame, mask)
        written, nbytes, t_first, t_last, done, eos = 0, 0, None, None, False, None
        deadline = time.monotonic() + 120
        while not done:
            if time.monotonic() > deadline or src.poll() not in (None, 0):
                raise SystemExit(f"source stopped or hung: {src.poll()}\n{Path(log.name).read_text()}")
            for sock, _ in poller.poll(1000):
                for _ in range(64):
                    if not sock.getsockopt(zmq.EVENTS) & zmq.POLLIN:
                        break
                    _, msg = recv(sock)
                    if msg.array is not None:
                        nbytes += msg.array.nbytes
                    if sock is worker:
                        if msg.kind == "frame":
                            send(worker, pack("mask", mask, stream=msg["stream"], seq=msg["seq"]))
                        elif msg.kind == "stop":
                            pass
                        continue
                    if msg.kind in ("frame", "stamp", "mask"):
                        seq = int(msg["seq"])
                        t_first = t_first or time.perf_counter()
                        have[seq] = have.get(seq, 0) + 1
                        while have.get(written) == 2:
                            del have[written]
                            written += 1
                            t_last = time.perf_counter()
                            send_msg(sink, "ack", stream=0, written=written)
                    elif msg.kind == "eos":
                        eos = int(msg["frames"])
                    done = eos is not None and written >= eos
                if done:
                    break
        assert src.wait(timeout=60) == 0, Path(log.name).read_text()
        dt = t_last - t_first
        return {"frames": written, "fps": written / dt, "bytes_per_s": nbytes / dt, "bytes_per_frame": nbytes / written}
    finally:
        worker.close(linger=0)
        sink.close(linger=0)
        if src.poll() is None:
            src.kill()
            src.wait()
        log.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=150)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        clip = _clips.make_clip(tmp / "1080p.mp4", args.frames, width=W, height=H)
        r = subprocess.run([sys.executable, "-m", "vidseg", "keys", str(tmp / "keys")], capture_output=True, text=True)
        assert r.returncode == 0, r.stderr
        (tmp / "allowed").mkdir()
        (tmp / "allowed" / "client.key").write_bytes((tmp / "keys" / "client.key").read_bytes())
        curve = {"server_secret": str(tmp / "keys" / "server.key_secret"), "allowed": str(tmp / "allowed"),
                 "client_secret": str(tmp / "keys" / "client.key_secret"), "server_public": str(tmp / "keys" / "server.key")}
        base = decode_only(clip)
        runs = {"tcp": serve_once(clip, args.frames, None), "tcp_masks_only": serve_once(clip, args.frames, None, False),
                "tcp_curve": serve_once(clip, args.frames, curve),
                "tcp_curve_masks_only": serve_once(clip, args.frames, curve, False)}
    names = {"tcp": "source, tcp, sink draws video", "tcp_masks_only": "source, tcp, sink writes masks only",
             "tcp_curve": "source, tcp + CURVE, video", "tcp_curve_masks_only": "source, tcp + CURVE, masks only"}
    rows = [("decode only (baseline)", base, None)] + [(names[k], r["fps"], r) for k, r in runs.items()]
    print(f"1920×1080 BGR frames ({W * H * 3 / 1e6:.2f} MB) + uint8 masks at 512×288 ({MASK[0] * MASK[1] / 1e6:.2f} MB), "
          f"{args.frames} frames, 127.0.0.1")
    print("| what | frames/s | ÷ decode only | egress MB/s | egress Gbit/s | MB per frame |")
    print("|---|---|---|---|---|---|")
    for name, fps, r in rows:
        eg = f"{r['bytes_per_s'] / 1e6:.0f} | {r['bytes_per_s'] * 8 / 1e9:.2f} | {r['bytes_per_frame'] / 1e6:.2f}" if r else "– | – | –"
        print(f"| {name} | {fps:.1f} | {fps / base:.2f} | {eg} |")
    out = ROOT / "benchmarks" / "results" / "egress.json"
    out.write_text(json.dumps({"width": W, "height": H, "frames": args.frames, "mask": list(MASK),
                               "decode_only_fps": base, **runs}, indent=2))
    print(f"-> {out.relative_to(ROOT)}")


if __name__ == "__main__":
    main()

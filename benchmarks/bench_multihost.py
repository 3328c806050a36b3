"""A pulled cable between hosts: how long until the worker is written off, what is re-dispatched, how fast it rejoins.

The scene of tests/test_multihost.py, measured: source, two workers (the `null` model,
60 ms per frame) and the sink each in its own network namespace, tcp + CURVE. After 20
frames worker1's switch port goes down; the time from the cut to the source's write-off
line is compared with the configured --worker-timeout (the baseline: the write-off can be
no earlier than timeout − one heartbeat). Then the port comes back up and the time to the
worker's second hello is measured. Frames re-dispatched are read from the source's log and
compared with --credits (the most a worker holds). Needs root (ip netns).

    python benchmarks/bench_multihost.py [--runs 3]
"""
from __future__ import annotations

import argparse
import json
import re
import shutil
import statistics
import sys
import tempfile
import time
from fractions import Fraction
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

import netns  # noqa: E402
from helpers import FAST, Proc, make_clip, masks_written, redispatched, vidseg, worker_args  # noqa: E402

WORKER_TIMEOUT = 1.5
HEARTBEAT = float(FAST[1])
CREDITS = 2
POLL = 0.01


def wait_for(cond, what: str, procs: list[Proc], limit: float = 90.0) -> float:
    """Poll ``cond`` every 10 ms; returns the monotonic time it first held."""
    deadline = time.monotonic() + limit
    while not cond():
        if time.monotonic() > deadline or any(p.poll() not in (None, 0) for p in procs):
            raise SystemExit(f"gave up waiting for {what}:\n" + "\n".join(f"--- {p.name}\n{p.text()}" for p in procs))
        time.sleep(POLL)
    return time.monotonic()


def one_run(work: Path, clip: Path, keys: Path) -> dict:
    hosts = ("source", "worker1", "worker2", "sink")
    procs: list[Proc] = []
    with netns.Hosts(hosts) as h:
        try:
            ep = f"tcp://{h.addrs['source']}:5555"
            client = ["--curve-secret", str(keys / "client.key_secret"), "--curve-server", str(keys / "server.key")]
            src = Proc("source", ["source", "--source", str(clip), "--bind", ep, *FAST, "--worker-timeout", str(WORKER_TIMEOUT),
                                  "--credits", str(CREDITS), "--curve-secret", str(keys / "server.key_secret"),
                                  "--curve-clients", str(keys.parent / "allowed")], work, h.prefix("source"))
            sink = Proc("sink", ["sink", "--connect", ep, "--masks", str(work / "masks"), *FAST, *client], work, h.prefix("sink"))
            w1 = Proc("worker1", worker_args(ep, 60, *client, "--credits", str(CREDITS)), work, h.prefix("worker1"))
            w2 = Proc("worker2", worker_args(ep, 60, *client, "--credits", str(CREDITS)), work, h.prefix("worker2"))
            procs = [src, sink, w1, w2]
            wait_for(lambda: masks_written(work) >= 20, "20 frames", procs)
            t_cut = time.monotonic()
            h.cut("worker1")
            t_off = wait_for(lambda: "missed heartbeats" in src.text(), "the write-off", procs)
            t_restore = time.monotonic()
            h.restore("worker1")
            t_back = wait_for(lambda: src.text().count(f"(pid {w1.pid},") >= 2, "the rejoin", procs)
            for p in (src, sink, w1, w2):
                p.wait()
            m = re.search(r"re-dispatching its (\d+) frame", src.text())
            return {
                "write_off_s": t_off - t_cut,
                "rejoin_s": t_back - t_restore,
                "redispatched_at_write_off": int(m.group(1)),
                "redispatched_total": redispatched(src.text()),
                "exit_codes": [p.poll() for p in procs],
            }
        finally:
            for p in procs:
                p.cleanup()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    why = netns.unavailable()
    if why:
        raise SystemExit(f"network namespaces cannot be made here: {why}")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        clip = make_clip(tmp / "c.mp4", frames=200, fps=Fraction(25), audio=False)
        r = vidseg("keys", str(tmp / "keys"))
        assert r.returncode == 0, r.stderr
        (tmp / "allowed").mkdir()
        shutil.copy(tmp / "keys" / "client.key", tmp / "allowed" / "client.key")
        runs = []
        for i in range(args.runs):
            work = tmp / f"run{i}"
            work.mkdir()
            runs.append(one_run(work, clip, tmp / "keys"))
    print(f"worker-timeout {WORKER_TIMEOUT} s, heartbeat {HEARTBEAT} s, credits {CREDITS}; {args.runs} runs")
    print("| run | cut → written off (s) | ÷ worker-timeout | re-dispatched at write-off | ÷ credits | re-dispatched in all | cable back → rejoined (s) | exit codes |")
    print("|---|---|---|---|---|---|---|---|")
    for i, r in enumerate(runs):
        print(f"| {i + 1} | {r['write_off_s']:.2f} | {r['write_off_s'] / WORKER_TIMEOUT:.2f} | {r['redispatched_at_write_off']} | "
              f"{r['redispatched_at_write_off'] / CREDITS:.2f} | {r['redispatched_total']} | {r['rejoin_s']:.2f} | {r['exit_codes']} |")
    summary = {
        "worker_timeout_s": WORKER_TIMEOUT, "heartbeat_s": HEARTBEAT, "credits": CREDITS,
        "write_off_s_median": statistics.median(r["write_off_s"] for r in runs),
        "rejoin_s_median": statistics.median(r["rejoin_s"] for r in runs),
        "runs": runs,
    }
    out = ROOT / "benchmarks" / "results" / "multihost.json"
    out.write_text(json.dumps(summary, indent=2))
    print(f"median write-off {summary['write_off_s_median']:.2f} s ({summary['write_off_s_median'] / WORKER_TIMEOUT:.2f} × the timeout); "
          f"median rejoin {summary['rejoin_s_median']:.2f} s -> {out.relative_to(ROOT)}")


if __name__ == "__main__":
    main()

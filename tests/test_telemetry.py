"""Metrics and health, scraped over HTTP from live stages: /metrics, /healthz, /readyz.

Real processes and real sockets. The scrape test pauses the pipeline on purpose
(one worker frozen with SIGSTOP while it holds frames: ordering then stops the
sink and the window stops the source), so every live counter can be compared
exactly with the others while the stages are still running; afterwards the
persistent workers' counters must add up to the frames in the written file.
"""
from __future__ import annotations

import os
import signal
import socket
import sys
import time
from fractions import Fraction

import pytest
from prometheus_client.parser import text_string_to_metric_families

from helpers import FAST, HANG, free_endpoint, free_ports, get, make_clip, null_model, one_line_error, probe, vidseg, wait_until
from vidseg.stages.source import READ_AHEAD


def scrape(port: int) -> dict[tuple[str, tuple], float] | None:
    """Every sample of a stage's /metrics as ``{(name, sorted labels): value}``; None when it does not answer."""
    status, body = get(port, "/metrics")
    if status != 200:
        return None
    out = {}
    for fam in text_string_to_metric_families(body):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def value(m: dict, name: str, **labels) -> float:
    return m[(name, tuple(sorted((k, str(v)) for k, v in labels.items())))]


def by_label(m: dict, name: str, label: str) -> dict[str, float]:
    return {dict(k[1])[label]: v for k, v in m.items() if k[0] == name}


def test_scrape_a_live_run_and_the_counters_add_up_to_the_frames_written(tmp_path, procs):
    n = 80
    clip = make_clip(tmp_path / "c.mp4", frames=n, fps=Fraction(25), audio=False)
    ep, out = free_endpoint(), tmp_path / "out.mp4"
    ps, pk, pa, pb = (free_ports(1) for _ in range(4))
    hold = ["--worker-timeout", "300", "--peer-timeout", "300"]  # the frozen worker is waited for, not written off
    src = procs.start("source", "source", "--source", str(clip), "--bind", ep, "--window", "8", *FAST, *hold,
                      "--metrics", f"127.0.0.1:{ps}")
    wait_until(lambda: get(ps, "/healthz")[0] == 200, alive=(src,), what="the source's /healthz", logs=procs.logs)
    # Alive but not ready: "starting" while it opens its sources and socket, then what it waits for.
    wait_until(lambda: get(ps, "/readyz") == (503, "not ready: waiting for a sink and a worker\n"), alive=(src,),
               what="the source saying what it waits for", logs=procs.logs)

    sink = procs.start("sink", "sink", "--connect", ep, "--output", str(out), *FAST, *hold, "--metrics", f":{pk}")
    wait_until(lambda: get(pk, "/readyz")[0] == 200, alive=(src, sink), what="the sink ready", logs=procs.logs)
    status, body = get(ps, "/readyz")
    assert status == 503 and "waiting for a worker" in body and "sink" not in body, body

    worker = ["worker", "--connect", ep, *null_model(40), "--threads", "1", "--persist", *FAST, *hold]
    a = procs.start("workerA", *worker, "--metrics", f"127.0.0.1:{pa}")
    b = procs.start("workerB", *worker, "--metrics", f"127.0.0.1:{pb}")
    wait_until(lambda: get(ps, "/readyz")[0] == 200 and get(pa, "/readyz")[0] == 200 and get(pb, "/readyz")[0] == 200,
               alive=(src, sink, a, b), what="every stage ready", logs=procs.logs)
    assert get(pa, "/healthz") == (200, "ok\n")

    # Mid-run: counters only grow, and what was written never exceeds what was dispatched.
    previous: dict = {}
    wait_until(lambda: (scrape(pk) or {}).get(("vidseg_sink_frames_written_total", (("stream", "0"),)), 0) >= 5,
               alive=(src, sink, a, b), what="5 frames written", logs=procs.logs)
    for _ in range(3):
        k, s = scrape(pk), scrape(ps)
        assert value(k, "vidseg_sink_frames_written_total", stream=0) <= value(s, "vidseg_source_frames_dispatched_total", stream=0)
        for key, v in (s | k).items():
            if key[0].endswith("_total") and key in previous:
                assert v >= previous[key], key
        previous = s | k

    # Freeze worker B while it holds frames: the sink waits for them (order), the window stops the source.
    b.signal(signal.SIGSTOP)
    try:
        last, stable_since = None, time.monotonic()
        deadline = time.monotonic() + HANG
        while time.monotonic() < deadline:
            snap = (scrape(ps), scrape(pk), scrape(pa))
            assert None not in snap, procs.logs()
            figures = [{k: v for k, v in m.items() if k[0].startswith("vidseg_") and "seconds" not in k[0]} for m in snap]
            if figures != last:
                last, stable_since = figures, time.monotonic()
            elif time.monotonic() - stable_since > 1.5:
                break
            time.sleep(0.25)
        else:
            raise AssertionError(f"the pipeline never settled with a frozen worker\n{procs.logs()}")
        s, k, wa = snap
        dispatched = value(s, "vidseg_source_frames_dispatched_total", stream=0)
        written = value(k, "vidseg_sink_frames_written_total", stream=0)
        per_worker = by_label(s, "vidseg_source_worker_frames_total", "worker")
        assert 5 <= written < dispatched < n, (written, dispatched)
        # lossless: every frame sent was read, and at most the read-ahead (and the one waiting for room) more
        assert dispatched <= value(s, "vidseg_source_frames_read_total", stream=0) <= dispatched + READ_AHEAD + 1
        assert value(s, "vidseg_source_frames_written_total", stream=0) == written  # the sink's acks
        assert dispatched - written <= 8  # the window
        assert value(k, "vidseg_sink_frames_received_total", stream=0) == dispatched
        assert value(k, "vidseg_sink_masks_received_total", stream=0) == sum(per_worker.values())
        assert value(k, "vidseg_sink_frames_buffered", stream=0) == dispatched - written
        assert value(k, "vidseg_sink_latency_seconds_count", stream=0) == written
        held = dispatched - sum(per_worker.values())  # frames sitting in the frozen worker
        assert 1 <= held <= 3, held  # its credits: two batches of one, plus one
        assert value(s, "vidseg_source_frames_in_flight", stream=0) == held
        assert value(s, "vidseg_source_workers") == 2 and value(s, "vidseg_source_redispatched_total") == 0
        assert value(wa, "vidseg_worker_frames_returned_total") in per_worker.values()
        assert value(wa, "vidseg_worker_frames_received_total") == value(wa, "vidseg_worker_frames_returned_total")
        assert value(wa, "vidseg_worker_inference_seconds_count") == value(wa, "vidseg_worker_frames_returned_total")
        assert value(wa, "vidseg_worker_model_load_seconds") > 0
        assert value(s, "vidseg_malformed_messages_total") == value(k, "vidseg_malformed_messages_total") == 0
        assert value(s, "vidseg_source_mask_latency_seconds_count") == sum(per_worker.values())
        roles = {dict(key[1]).get("role") for m in (s, k, wa) for key in m if key[0] == "vidseg_stage_info"}
        assert roles == {"source", "sink", "worker"}
    finally:
        b.signal(signal.SIGCONT)

    for p in (src, sink):
        assert p.wait(HANG) == 0, procs.logs()
    frames = len(probe(out)["frames"])
    ma, mb = scrape(pa), scrape(pb)  # the persistent workers outlive the run: their totals are final
    returned = [value(m, "vidseg_worker_frames_returned_total") for m in (ma, mb)]
    assert frames == n and sum(returned) == n and min(returned) > 0, (frames, returned)
    assert [value(m, "vidseg_worker_frames_received_total") for m in (ma, mb)] == returned
    assert get(pk, "/healthz")[0] == 0  # the sink has exited: nothing answers any more


def test_run_metrics_gives_each_stage_its_own_port_with_its_role(tmp_path, procs):
    clip = make_clip(tmp_path / "c.mp4", frames=60, fps=Fraction(15), audio=False)
    base = free_ports(4)
    run = procs.start("run", "run", "--source", str(clip), "--mode", "live", "--workers", "2", "--output",
                      str(tmp_path / "o.mp4"), *null_model(10), "--metrics", f"127.0.0.1:{base}")
    roles: dict[int, tuple[str, str]] = {}

    def all_up() -> bool:
        for port in range(base, base + 4):
            m = scrape(port) if port not in roles else None
            if m:
                info = next(dict(k[1]) for k in m if k[0] == "vidseg_stage_info")
                roles[port] = (info["role"], info["pid"])
        return len(roles) == 4

    wait_until(all_up, alive=(run,), what="four stages serving metrics", logs=procs.logs)
    assert [roles[p][0] for p in range(base, base + 4)] == ["source", "sink", "worker", "worker"]
    assert len({pid for _, pid in roles.values()}) == 4  # four processes
    assert run.wait(HANG) == 0, run.text()
    assert "metrics on http://127.0.0.1:%d/metrics" % (base + 3) in run.text()


def test_metrics_without_prometheus_client_names_the_extra(tmp_path, clip):
    blocked = tmp_path / "blocked" / "prometheus_client"
    blocked.mkdir(parents=True)
    (blocked / "__init__.py").write_text("raise ImportError('not installed (test)')\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(blocked.parent), os.environ.get("PYTHONPATH", "")])}
    import subprocess

    r = subprocess.run([sys.executable, "-m", "vidseg", "source", "--source", str(clip), "--metrics", ":9"],
                       capture_output=True, text=True, timeout=120, env=env)
    assert r.returncode == 2
    one_line_error(r.stderr, "--metrics needs prometheus-client", "pip install 'vidseg[metrics]'")


def test_bad_or_busy_metrics_address_is_one_line(clip):
    r = vidseg("source", "--source", str(clip), "--metrics", "localhost:http")
    assert r.returncode == 2 and "is not HOST:PORT" in r.stderr and "Traceback" not in r.stderr
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        r = vidseg("source", "--source", str(clip), "--metrics", f"127.0.0.1:{port}", "--connect-timeout", "1")
    assert r.returncode == 3
    one_line_error(r.stderr, f"--metrics 127.0.0.1:{port}: cannot listen there", "choose another port")


@pytest.mark.gpu
def test_worker_on_cuda_reports_its_gpu_memory(tmp_path, procs):
    port = free_ports(1)
    w = procs.start("worker", "worker", "--connect", free_endpoint(), "--model", "deeplabv3plus", "--width-mult", "0.25",
                    "--device", "cuda", "--metrics", f"127.0.0.1:{port}", "--connect-timeout", "60")

    def gpu_memory() -> dict:
        m = scrape(port) or {}
        return by_label(m, "vidseg_worker_gpu_memory_bytes", "kind")

    wait_until(lambda: gpu_memory(), alive=(w,), what="the GPU memory gauge", logs=procs.logs)
    mem = gpu_memory()
    assert mem["allocated"] > 0 and mem["reserved"] >= mem["allocated"]
    assert get(port, "/readyz")[0] == 503  # loaded, but no source is there

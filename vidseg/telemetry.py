"""Prometheus metrics and health endpoints of one stage (``--metrics HOST:PORT``).

On that one port:

``/metrics``  Prometheus text format, through prometheus-client (the ``metrics`` extra)
``/healthz``  200 while the process is alive
``/readyz``   200 when the stage is connected and has what it needs, else 503 and the reason:
              the source has a sink and a worker; a worker has its model loaded and hears
              from its source; the sink hears from a source

Counts and gauges are read from the stage's own state when scraped
(``Stage.samples``), so nothing is counted twice and a pipeline nobody scrapes
pays nothing for them; only the latency histograms are observed as frames go by.
:data:`METRICS` is the list of every figure, with its labels and meaning.
"""
from __future__ import annotations

import logging
import os
from typing import Any, Callable, Iterable

from .config import TelemetryConfig
from .errors import InputError
from .webserver import QuietHandler, start_server, stop_server, url_of

log = logging.getLogger("vidseg.telemetry")

#: Every figure a stage exports: name -> (type, label names, help). Counters get ``_total`` on the wire.
METRICS: dict[str, tuple[str, tuple[str, ...], str]] = {
    "vidseg_malformed_messages": ("counter", (), "Malformed messages rejected (every stage)"),
    # source
    "vidseg_source_frames_read": ("counter", ("stream",), "Frames decoded or grabbed from the source"),
    "vidseg_source_frames_dispatched": ("counter", ("stream",), "Frames numbered and sent to a worker and the sink"),
    "vidseg_source_frames_written": ("counter", ("stream",), "Frames the sink has acknowledged as written"),
    "vidseg_source_frames_dropped": ("counter", ("stream",), "Stale frames dropped (live mode)"),
    "vidseg_source_frames_lost": ("counter", ("stream",), "Frames the container announced that could not be decoded"),
    "vidseg_source_frames_in_flight": ("gauge", ("stream",), "Frames at the workers: dispatched, their mask not back yet"),
    "vidseg_source_redispatched": ("counter", (), "Frames sent again because their worker went silent"),
    "vidseg_source_workers": ("gauge", (), "Workers connected"),
    "vidseg_source_worker_frames": ("counter", ("worker",), "Masks returned per worker (its throughput: rate())"),
    # worker
    "vidseg_worker_frames_received": ("counter", (), "Frames received for inference"),
    "vidseg_worker_frames_returned": ("counter", (), "Masks sent back"),
    "vidseg_worker_queued": ("gauge", (), "Frames waiting for inference"),
    "vidseg_worker_model_load_seconds": ("gauge", (), "Seconds it took to load the model"),
    "vidseg_worker_gpu_memory_bytes": ("gauge", ("device", "kind"), "GPU memory held by PyTorch (allocated, reserved; CUDA only)"),
    # sink
    "vidseg_sink_frames_received": ("counter", ("stream",), "Frames received from the source"),
    "vidseg_sink_masks_received": ("counter", ("stream",), "Masks received from the workers (through the source)"),
    "vidseg_sink_frames_written": ("counter", ("stream",), "Annotated frames written (encoded, shown, saved)"),
    "vidseg_sink_frames_dropped": ("counter", ("stream",), "Stale frames the source dropped (live mode), as last reported"),
    "vidseg_sink_frames_buffered": ("gauge", ("stream",), "Frames waiting in the reorder buffer for their mask or turn"),
    "vidseg_sink_workers": ("gauge", (), "Workers whose masks arrived in the last 5 s"),
    "vidseg_sink_preview_viewers": ("gauge", (), "Browsers watching the preview's streams (--serve)"),
}
#: Histograms, observed as frames go by: name -> (label names, help).
HISTOGRAMS: dict[str, tuple[tuple[str, ...], str]] = {
    "vidseg_source_mask_latency_seconds": ((), "From grab to the mask back at the source"),
    "vidseg_worker_inference_seconds": ((), "One forward pass (a batch), resize and argmax included"),
    "vidseg_sink_latency_seconds": (("stream",), "From grab to written"),
    "vidseg_sink_write_seconds": ((), "Compositing and encoding one frame"),
}
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)

#: One figure from ``Stage.samples``: ``(name, value, label values)``.
Sample = tuple[str, float, tuple[str, ...]]


class _Null:
    """Stands in for a histogram when metrics are off: every call does nothing."""

    def labels(self, *_a: Any, **_k: Any) -> "_Null":
        return self

    def observe(self, _v: float) -> None:
        pass


NULL = _Null()


class Telemetry:
    """One stage's metrics registry and its HTTP endpoints (nothing at all when ``cfg.metrics`` is None)."""

    def __init__(self, role: str, cfg: TelemetryConfig = TelemetryConfig()):
        self.role = role
        self.address = cfg.metrics
        self._ready: Callable[[], tuple[bool, str]] = lambda: (False, "starting")
        self._samples: Callable[[], Iterable[Sample]] = lambda: ()
        self._hist: dict[str, Any] = {}
        self._server = None
        self.registry = None
        if not cfg.metrics:
            return
        try:
            import prometheus_client as pc
        except ImportError:
            raise InputError("--metrics needs prometheus-client: pip install 'vidseg[metrics]'") from None
        from . import __version__

        self.registry = pc.CollectorRegistry(auto_describe=True)
        pc.ProcessCollector(registry=self.registry)
        pc.Info("vidseg_stage", "This process's pipeline role", registry=self.registry).info(
            {"role": role, "pid": str(os.getpid()), "version": __version__})
        for name, (labels, doc) in HISTOGRAMS.items():
            if name.startswith(f"vidseg_{role}_"):
                self._hist[name] = pc.Histogram(name, doc, labels, registry=self.registry, buckets=LATENCY_BUCKETS)
        self.registry.register(_StageCollector(self))
        self._server = start_server(cfg.metrics, _handler(self), "--metrics")
        log.info("metrics on %s/metrics; health on /healthz and /readyz", url_of(cfg.metrics))

    @property
    def enabled(self) -> bool:
        return self.registry is not None

    def histogram(self, name: str):
        """The named histogram of :data:`HISTOGRAMS` (a no-op when metrics are off)."""
        return self._hist.get(name, NULL)

    def attach(self, stage) -> None:
        """Serve ``stage``'s readiness and figures (``stage.ready()``, ``stage.samples()``)."""
        self._ready, self._samples = stage.ready, stage.samples

    def not_ready(self, why: str) -> None:
        """Say why the stage is not ready yet (e.g. while a worker loads its model)."""
        self._ready = lambda: (False, why)

    def ready(self) -> tuple[bool, str]:
        try:
            return self._ready()
        except Exception as e:  # noqa: BLE001 - a probe must answer, never raise
            return False, f"readiness check failed: {e}"

    def samples(self) -> list[Sample]:
        return list(self._samples())

    def close(self) -> None:
        stop_server(self._server)
        self._server = None


class _StageCollector:
    """Turns the stage's samples into metric families at scrape time."""

    def __init__(self, tel: Telemetry):
        self.tel = tel

    def describe(self):
        return []  # the families depend on the stage's state; nothing to pre-register

    def collect(self):
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        families: dict[str, Any] = {}
        for name, value, labels in self.tel.samples():
            kind, label_names, doc = METRICS[name]
            fam = families.get(name)
            if fam is None:
                cls = CounterMetricFamily if kind == "counter" else GaugeMetricFamily
                fam = families[name] = cls(name, doc, labels=label_names)
            fam.add_metric([str(v) for v in labels], float(value))
        yield from families.values()


def _handler(tel: Telemetry) -> type:
    class Handler(QuietHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server's name
            path = self.path.split("?", 1)[0]
            if path == "/healthz":
                self.reply(200, b"ok\n")
            elif path == "/readyz":
                ok, why = tel.ready()
                self.reply(200 if ok else 503, (b"ready\n" if ok else f"not ready: {why}\n".encode()))
            elif path == "/metrics":
                from prometheus_client.exposition import choose_encoder

                encoder, content_type = choose_encoder(self.headers.get("Accept", ""))
                self.reply(200, encoder(tel.registry), content_type)
            else:
                self.reply(404, b"not found: try /metrics, /healthz or /readyz\n")

        do_HEAD = do_GET

    return Handler

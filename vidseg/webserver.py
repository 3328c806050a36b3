"""The HTTP side shared by the preview page (``--serve``) and the metrics endpoint (``--metrics``).

``HOST:PORT`` parsing (HOST defaults to 127.0.0.1: nothing is exposed beyond
this machine unless asked), a threaded standard-library server running in a
daemon thread, and a one-line error when the address cannot be listened on.
Each request gets its own thread, so a slow client only ever holds itself up.
"""
from __future__ import annotations

import logging
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from .errors import InputError, TransportError

DEFAULT_HOST = "127.0.0.1"
log = logging.getLogger("vidseg.http")


def parse_address(text: str, flag: str) -> tuple[str, int]:
    """``"HOST:PORT"``, ``":PORT"`` or ``"PORT"`` (``[v6]:PORT`` too) -> ``(host, port)``; HOST defaults to 127.0.0.1."""
    s = str(text).strip()
    host, sep, port = s.rpartition(":")
    if not sep:
        host, port = "", s
    host = host.strip().strip("[]") or DEFAULT_HOST
    try:
        number = int(port)
    except ValueError:
        raise InputError(f"{flag} {text!r} is not HOST:PORT; e.g. {flag} 127.0.0.1:8080 (or {flag} :8080)") from None
    if not 1 <= number <= 65535:
        raise InputError(f"{flag} {text!r}: the port must be within 1..65535")
    return host, number


def format_address(host: str, port: int) -> str:
    """The inverse of :func:`parse_address` (IPv6 hosts in brackets)."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def normalise_address(text: str, flag: str) -> str:
    """``text`` as ``HOST:PORT`` with the default host filled in (what a stage's command line carries)."""
    return format_address(*parse_address(text, flag))


def url_of(address: str) -> str:
    """The ``http://`` URL a person opens for ``address`` (a wildcard host shown as 127.0.0.1)."""
    host, port = parse_address(address, "address")
    host = DEFAULT_HOST if host in ("0.0.0.0", "::", "") else host
    return f"http://{format_address(host, port)}"


class _Server(ThreadingHTTPServer):
    daemon_threads = True  # a viewer still connected never keeps the process alive
    allow_reuse_address = True  # a restarted stage gets its port back at once
    request_queue_size = 64


class _Server6(_Server):
    address_family = socket.AF_INET6


class QuietHandler(BaseHTTPRequestHandler):
    """A request handler that logs through ``logging`` at debug level, not to stderr."""

    protocol_version = "HTTP/1.1"

    def log_message(self, fmt: str, *args) -> None:  # noqa: D401 - BaseHTTPRequestHandler's hook
        log.debug("%s %s", self.address_string(), fmt % args)

    def reply(self, code: int, body: bytes, content_type: str = "text/plain; charset=utf-8") -> None:
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)


def _bind(address: str, handler: type[BaseHTTPRequestHandler], flag: str) -> ThreadingHTTPServer:
    host, port = parse_address(address, flag)
    cls = _Server6 if ":" in host else _Server
    try:
        return cls((host, port), handler)
    except OSError as e:
        raise TransportError(f"{flag} {address}: cannot listen there ({e.strerror or e}); choose another port or host") from None


def start_server(address: str, handler: type[BaseHTTPRequestHandler], flag: str) -> ThreadingHTTPServer:
    """Listen on ``address`` and serve in a daemon thread; a busy or bad address is a TransportError."""
    srv = _bind(address, handler, flag)
    port = srv.server_address[1]
    threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.25}, name=f"vidseg-http-{port}", daemon=True).start()
    return srv


def stop_server(srv: ThreadingHTTPServer | None) -> None:
    """Stop serving and close the listening socket (connections in flight end with the process)."""
    if srv is not None:
        srv.shutdown()
        srv.server_close()


def check_free(address: str, flag: str) -> None:
    """Fail now, with the fix, when ``address`` cannot be listened on (``vidseg run`` checks before starting stages)."""
    _bind(address, QuietHandler, flag).server_close()

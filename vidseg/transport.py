"""ZeroMQ plumbing: the source's ROUTER and the peers' DEALERs, clear bind/connect errors, CURVE, signals."""
from __future__ import annotations

import re

import zmq

from .config import CurveConfig
from .errors import TransportError
from .wire import Message, pack, unpack

_ENDPOINT = re.compile(r"^(tcp://[^\s]+:(\d+|\*)|ipc://.+|inproc://.+)$")


def check_endpoint(endpoint: str) -> str:
    """Validate an endpoint string; returns it unchanged."""
    if not _ENDPOINT.match(endpoint):
        raise TransportError(
            f"endpoint {endpoint!r} is not valid; use tcp://HOST:PORT or ipc:///path/to/socket"
        )
    return endpoint


def bind(sock: zmq.Socket, endpoint: str) -> str:
    """Bind and return the endpoint actually bound (resolves ``tcp://host:*``)."""
    check_endpoint(endpoint)
    try:
        sock.bind(endpoint)
    except zmq.ZMQError as e:
        if e.errno == zmq.EADDRINUSE:
            raise TransportError(
                f"endpoint {endpoint} is already in use; pick another port/path or stop the process using it"
            ) from None
        raise TransportError(f"cannot bind {endpoint} ({e.strerror}); check the address") from None
    return sock.getsockopt_string(zmq.LAST_ENDPOINT)


def connect(sock: zmq.Socket, endpoint: str) -> None:
    check_endpoint(endpoint)
    try:
        sock.connect(endpoint)
    except zmq.ZMQError as e:
        raise TransportError(f"cannot connect to {endpoint} ({e.strerror}); check the address") from None


def _socket(kind: int, *, linger: int) -> zmq.Socket:
    sock = zmq.Context.instance().socket(kind)
    sock.setsockopt(zmq.LINGER, linger)
    # Unbounded HWMs: the source's credits and windows bound the traffic, and a
    # high-water mark must never silently drop a frame under them.
    sock.setsockopt(zmq.SNDHWM, 0)
    sock.setsockopt(zmq.RCVHWM, 0)
    return sock


def router(endpoint: str, *, linger: int, curve: CurveConfig = CurveConfig()) -> tuple[zmq.Socket, str, object]:
    """The source's ROUTER, bound: every other stage connects to it.

    ROUTER_MANDATORY makes a send to a vanished peer an error (PeerGone)
    instead of a silent drop. Returns ``(socket, bound endpoint, CURVE
    authenticator or None)``; stop the authenticator when the socket closes.
    """
    from .errors import InputError

    if curve.curve_clients and not curve.curve_secret:
        raise InputError("--curve-clients needs --curve-secret (the source's secret key)")
    sock = _socket(zmq.ROUTER, linger=linger)
    sock.setsockopt(zmq.ROUTER_MANDATORY, 1)
    auth = None
    try:
        if curve.curve_secret:  # must be set before bind
            auth = curve_server(sock, curve.curve_secret, curve.curve_clients)
        bound = bind(sock, endpoint)
    except BaseException:
        sock.close(linger=0)
        if auth is not None:
            auth.stop()
        raise
    return sock, bound, auth


def dealer(endpoint: str, *, linger: int, curve: CurveConfig = CurveConfig()) -> zmq.Socket:
    """The DEALER a worker or sink uses to reach the source: optional CURVE, connected."""
    from .errors import InputError

    sock = _socket(zmq.DEALER, linger=linger)
    try:
        if curve.curve_secret or curve.curve_server:
            if not (curve.curve_secret and curve.curve_server):
                raise InputError("CURVE needs both --curve-secret (this stage's key) and --curve-server (the source's public key)")
            curve_client(sock, curve.curve_secret, curve.curve_server)
        connect(sock, endpoint)
    except BaseException:
        sock.close(linger=0)
        raise
    return sock


def send(sock: zmq.Socket, parts: list, *, identity: bytes | None = None) -> None:
    """Send without copying the pixel buffer."""
    if identity is not None:
        parts = [identity, *parts]
    try:
        sock.send_multipart(parts, copy=False)
    except zmq.ZMQError as e:
        if e.errno == zmq.EHOSTUNREACH:  # ROUTER_MANDATORY: that peer has disconnected
            raise PeerGone(identity) from None
        raise


class PeerGone(TransportError):
    """A routed send found its peer disconnected."""

    def __init__(self, identity: bytes | None):
        super().__init__(f"peer {identity.hex()[:8] if identity else '?'} has disconnected")
        self.identity = identity


def send_msg(sock: zmq.Socket, kind: str, array=None, *, identity: bytes | None = None, **fields) -> None:
    send(sock, pack(kind, array, **fields), identity=identity)


def recv(sock: zmq.Socket, *, routed: bool = False) -> tuple[bytes | None, Message]:
    """Receive one message (the caller has polled). Raises WireError if malformed."""
    parts = sock.recv_multipart(copy=False)
    ident = None
    if routed:
        ident = parts[0].bytes
        parts = parts[1:]
    return ident, unpack(parts)


def ignore_signals() -> None:
    """From here on SIGINT/SIGTERM are ignored: used while outputs are being finalised."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


def install_drain_handlers(log, role: str, on_first=None) -> None:
    """First SIGINT/SIGTERM: drain (``on_first`` if given), a second: abort via KeyboardInterrupt."""
    import signal

    state = {"n": 0}

    def handler(signum, frame):  # noqa: ARG001
        state["n"] += 1
        if state["n"] > 1:
            raise KeyboardInterrupt
        log.warning("%s: finishing the frames in flight (signal again to abort)", role)
        if on_first is not None:
            on_first()

    signal.signal(signal.SIGINT, handler)
    signal.signal(signal.SIGTERM, handler)


def _load_cert(path: str, *, secret: bool) -> tuple[bytes, bytes | None]:
    import zmq.auth

    from .errors import InputError

    try:
        public, secret_key = zmq.auth.load_certificate(path)
    except (OSError, ValueError) as e:
        raise InputError(f"cannot read CURVE key file {path} ({e}); create keys with 'vidseg keys DIR'") from None
    if secret and not secret_key:
        raise InputError(f"{path} holds no secret key; give the '.key_secret' file")
    return public, secret_key


def curve_server(sock: zmq.Socket, secret_file: str, clients_dir: str | None = None):
    """Encrypt a bound socket with CURVE; with ``clients_dir``, admit only those public keys.

    Returns the authenticator thread (keep it alive, stop it on exit) or None.
    """
    from .errors import InputError

    public, secret = _load_cert(secret_file, secret=True)
    auth = None
    if clients_dir:
        from pathlib import Path

        from zmq.auth.thread import ThreadAuthenticator

        if not Path(clients_dir).is_dir():
            raise InputError(f"CURVE clients folder {clients_dir} does not exist; put the allowed '.key' files there")
        auth = ThreadAuthenticator(zmq.Context.instance())
        auth.start()
        auth.configure_curve(domain="*", location=clients_dir)
    sock.curve_secretkey, sock.curve_publickey, sock.curve_server = secret, public, True
    return auth


def curve_client(sock: zmq.Socket, secret_file: str, server_public_file: str) -> None:
    """Encrypt a connecting socket with CURVE against the server's public key."""
    public, secret = _load_cert(secret_file, secret=True)
    server_public, _ = _load_cert(server_public_file, secret=False)
    sock.curve_secretkey, sock.curve_publickey, sock.curve_serverkey = secret, public, server_public

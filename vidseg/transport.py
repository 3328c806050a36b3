"""ZeroMQ plumbing: the source's ROUTER and the peers' DEALERs, clear bind/connect errors, CURVE, signals."""
from __future__ import annotations

import collections
import logging
import os
import re
import stat
import weakref

import zmq
from zmq.utils.monitor import parse_monitor_message

from .config import CurveConfig
from .errors import TransportError
from .wire import MAX_HEADER, MAX_SIDE, Message, pack, unpack

log = logging.getLogger("vidseg.transport")

#: The largest message part a worker or sink accepts: one frame of the largest size the wire allows.
DEALER_MAX_PART = MAX_SIDE * MAX_SIDE * 3
_HANDSHAKE_FAILED = zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL | zmq.EVENT_HANDSHAKE_FAILED_AUTH

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


def _socket(kind: int, *, linger: int, max_part: int) -> zmq.Socket:
    sock = zmq.Context.instance().socket(kind)
    sock.setsockopt(zmq.LINGER, linger)
    # Unbounded HWMs: the source's credits and windows bound the traffic, and a
    # high-water mark must never silently drop a frame under them.
    sock.setsockopt(zmq.SNDHWM, 0)
    sock.setsockopt(zmq.RCVHWM, 0)
    # libzmq reads a part's size before its bytes: a peer announcing more is
    # disconnected before anything is allocated (a 100 MB header costs nothing).
    sock.setsockopt(zmq.MAXMSGSIZE, max_part)
    return sock


def router(endpoint: str, *, linger: int, curve: CurveConfig = CurveConfig(), max_part: int = MAX_HEADER,
           max_queued: int = 0) -> tuple[zmq.Socket, str, object]:
    """The source's ROUTER, bound: every other stage connects to it.

    ROUTER_MANDATORY makes a send to a vanished peer an error (PeerGone)
    instead of a silent drop. ``max_part``: the largest message part a peer
    may send (the source's largest mask). ``max_queued``: messages waiting
    from one peer before libzmq stops reading that peer (its own queue, so a
    flooding peer slows only itself and cannot fill the source's memory);
    0 is unbounded. Returns ``(socket, bound endpoint, CURVE watch or None)``;
    close the watch when the socket closes.
    """
    from .errors import InputError

    if curve.curve_clients and not curve.curve_secret:
        raise InputError("--curve-clients needs --curve-secret (the source's secret key)")
    sock = _socket(zmq.ROUTER, linger=linger, max_part=max(max_part, MAX_HEADER))
    sock.setsockopt(zmq.RCVHWM, max_queued)
    sock.setsockopt(zmq.ROUTER_MANDATORY, 1)
    watch = None
    try:
        if curve.curve_secret:  # must be set before bind
            watch = curve_server(sock, curve.curve_secret, curve.curve_clients, insecure_ok=curve.curve_insecure_key)
        bound = bind(sock, endpoint)
    except BaseException:
        sock.close(linger=0)
        if watch is not None:
            watch.close()
        raise
    return sock, bound, watch


_WATCHES: "weakref.WeakKeyDictionary[zmq.Socket, HandshakeWatch]" = weakref.WeakKeyDictionary()


def dealer(endpoint: str, *, linger: int, curve: CurveConfig = CurveConfig(), max_part: int = DEALER_MAX_PART) -> zmq.Socket:
    """The DEALER a worker or sink uses to reach the source: optional CURVE, connected.

    Its handshake is watched: :func:`handshake_failure` says why the source
    refused it (CURVE on one side only, a key not admitted, a wrong server key).
    """
    from .errors import InputError

    sock = _socket(zmq.DEALER, linger=linger, max_part=max_part)
    try:
        curved = bool(curve.curve_secret or curve.curve_server)
        if curved:
            if not (curve.curve_secret and curve.curve_server):
                raise InputError("CURVE needs both --curve-secret (this stage's key) and --curve-server (the source's public key)")
            curve_client(sock, curve.curve_secret, curve.curve_server, insecure_ok=curve.curve_insecure_key)
        _WATCHES[sock] = HandshakeWatch(sock, endpoint, curved)  # before connect: no event is missed
        connect(sock, endpoint)
    except BaseException:
        close_socket(sock, linger=0)
        raise
    return sock


def close_socket(sock: zmq.Socket, linger: int | None = None) -> None:
    """Close a socket and its handshake watch, if any."""
    watch = _WATCHES.pop(sock, None)
    if watch is not None:
        watch.close()
    sock.close(linger=linger)


def handshake_failure(sock: zmq.Socket) -> str | None:
    """Why the source refused this DEALER's handshake, as an error message; None while nothing failed."""
    watch = _WATCHES.get(sock)
    return watch.failure() if watch is not None else None


class _HandshakeEvents:
    """A socket's failed-handshake events, read without blocking (libzmq's monitor)."""

    def __init__(self, sock: zmq.Socket):
        self._sock = sock
        self._mon = sock.get_monitor_socket(_HANDSHAKE_FAILED)

    def events(self):
        """``(event, value)`` of each failed handshake since the last call."""
        while self._mon.poll(0):
            ev = parse_monitor_message(self._mon.recv_multipart())
            yield ev["event"], ev["value"]

    def close(self) -> None:
        try:
            self._sock.disable_monitor()
        except zmq.ZMQError:
            pass
        self._mon.close(linger=0)


class HandshakeWatch(_HandshakeEvents):
    """A DEALER's handshake: remembers the first failure as a sentence with the fix."""

    def __init__(self, sock: zmq.Socket, endpoint: str, curved: bool):
        super().__init__(sock)
        self.endpoint, self.curved = endpoint, curved
        self._failed: str | None = None

    def failure(self) -> str | None:
        if self._failed is None:
            self._failed = next((self._explain(e, v) for e, v in self.events()), None)
        return self._failed

    def _explain(self, event: int, value: int) -> str:
        where = f"the source at {self.endpoint}"
        if not self.curved:  # vidseg's only handshake that can fail a stage without keys is a CURVE source's
            return (f"{where} uses CURVE encryption; give this stage --curve-secret (its key) and --curve-server "
                    "(the source's public key), made with 'vidseg keys'")
        if event == zmq.EVENT_HANDSHAKE_FAILED_AUTH:
            return (f"{where} refused this stage's CURVE key; copy this stage's public key (.key) into the "
                    "source's --curve-clients folder")
        if event == zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL and value == zmq.PROTOCOL_ERROR_ZMTP_MECHANISM_MISMATCH:
            return f"{where} does not use CURVE; drop --curve-secret/--curve-server or start the source with them"
        return (f"the CURVE handshake with {where} failed; check that --curve-server is the source's public key "
                "and --curve-secret this stage's secret key")


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
        log.warning("finishing the frames in flight (signal again to abort)")
        if on_first is not None:
            on_first()

    signal.signal(signal.SIGINT, handler)
    signal.signal(signal.SIGTERM, handler)


def _load_cert(path: str, *, secret: bool, insecure_ok: bool = False) -> tuple[bytes, bytes | None]:
    import zmq.auth

    from .errors import InputError

    try:
        public, secret_key = zmq.auth.load_certificate(path)
    except (OSError, ValueError) as e:
        raise InputError(f"cannot read CURVE key file {path} ({e}); create keys with 'vidseg keys'") from None
    if secret and not secret_key:
        raise InputError(f"{path} holds no secret key; give the '.key_secret' file")
    if secret:
        _check_private(path, insecure_ok)
    return public, secret_key


def _check_private(path: str, insecure_ok: bool) -> None:
    """A secret key other users can read is refused (or, with --curve-insecure-key, used with a warning)."""
    from .errors import InputError

    mode = stat.S_IMODE(os.stat(path).st_mode)
    if not mode & 0o077:
        return
    who = "every user" if mode & 0o004 else "its group"
    if not insecure_ok:
        raise InputError(f"CURVE secret key {path} can be read by {who} (mode {mode:04o}); run 'chmod 600 {path}' "
                         "or pass --curve-insecure-key to use it anyway")
    log.warning("CURVE secret key %s can be read by %s (mode %04o); using it because of --curve-insecure-key", path, who, mode)


class _KeyFolder:
    """The admitted public keys (a folder of '.key' files), remembering which clients were refused."""

    def __init__(self, folder: str):
        import zmq.auth

        self.allowed = set(zmq.auth.load_certificates(folder))
        self.refused: collections.deque[tuple[str, str]] = collections.deque(maxlen=64)  # (address, key)
        self.address = "?"

    def callback(self, domain: str, key: bytes) -> bool:  # noqa: ARG002 - one domain
        if key in self.allowed:
            return True
        self.refused.append((self.address, key.decode("ascii", "replace")))
        return False


class CurveWatch(_HandshakeEvents):
    """The source side of CURVE: the authenticator (when clients are restricted) and refused-handshake events.

    :meth:`refusals` yields one sentence per client refused since the last call.
    """

    def __init__(self, sock: zmq.Socket, clients_dir: str | None):
        super().__init__(sock)
        self.keys = None
        self.auth = None
        if clients_dir:
            from zmq.auth.thread import ThreadAuthenticator

            keys = self.keys = _KeyFolder(clients_dir)

            class _Auth(ThreadAuthenticator):
                async def handle_zap_message(self, msg: list[bytes]) -> None:
                    if len(msg) > 3:  # the client's address, for the refusal's log line
                        keys.address = msg[3].decode("utf-8", "replace")
                    await super().handle_zap_message(msg)

            self.auth = _Auth(zmq.Context.instance())
            self.auth.start()
            self.auth.configure_curve_callback(domain="*", credentials_provider=keys)

    def refusals(self):
        for event, value in self.events():
            if event == zmq.EVENT_HANDSHAKE_FAILED_AUTH:
                who = self.keys.refused.popleft() if self.keys and self.keys.refused else ("?", "?")
                yield f"a client at {who[0]} with key {who[1][:12]}... is not in --curve-clients"
            elif event == zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL and value == zmq.PROTOCOL_ERROR_ZMTP_MECHANISM_MISMATCH:
                yield "a client without CURVE keys tried to connect (it needs --curve-secret and --curve-server)"
            elif event == zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL and value == zmq.PROTOCOL_ERROR_ZMTP_CRYPTOGRAPHIC:
                yield "a client's CURVE handshake failed: its --curve-server is not this source's public key"
            else:
                yield "a client's CURVE handshake failed"

    def close(self) -> None:
        super().close()
        if self.auth is not None:
            self.auth.stop()


def curve_server(sock: zmq.Socket, secret_file: str, clients_dir: str | None = None, *, insecure_ok: bool = False) -> CurveWatch:
    """Encrypt a bound socket with CURVE; with ``clients_dir``, admit only those public keys.

    Returns the watch (authenticator and refusal events): close it on exit.
    """
    from pathlib import Path

    from .errors import InputError

    public, secret = _load_cert(secret_file, secret=True, insecure_ok=insecure_ok)
    if clients_dir and not Path(clients_dir).is_dir():
        raise InputError(f"CURVE clients folder {clients_dir} does not exist; put the allowed '.key' files there")
    if not clients_dir:
        log.warning("--curve-secret without --curve-clients: traffic is encrypted, but a client with any key pair is "
                    "admitted; put the admitted public keys in a folder and pass --curve-clients")
    watch = CurveWatch(sock, clients_dir)
    sock.curve_secretkey, sock.curve_publickey, sock.curve_server = secret, public, True
    return watch


def curve_client(sock: zmq.Socket, secret_file: str, server_public_file: str, *, insecure_ok: bool = False) -> None:
    """Encrypt a connecting socket with CURVE against the server's public key."""
    public, secret = _load_cert(secret_file, secret=True, insecure_ok=insecure_ok)
    server_public, _ = _load_cert(server_public_file, secret=False)
    sock.curve_secretkey, sock.curve_publickey, sock.curve_serverkey = secret, public, server_public

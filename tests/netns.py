"""Test hosts on one machine: network namespaces joined by veth pairs to a bridge (iproute2).

Each host is a namespace with one interface, ``eth0``, whose veth peer is a port of a bridge
that lives in a switch namespace of its own. Nothing is attached to the machine's own network
namespace, and the private addresses used exist only inside these namespaces, so no packet
can leave the machine. ``cut(host)`` sets the host's switch port down (a pulled cable: the
host's own configuration is untouched), ``restore(host)`` sets it up again.

Closing (also after a failure) kills whatever still runs inside the namespaces made here and
deletes them, which deletes their veths and the bridge with them.
"""
from __future__ import annotations

import itertools
import os
import shutil
import signal
import subprocess
from typing import Sequence

SUBNET = "10.203.0"  # a /24 that exists only inside the namespaces made here
_serial = itertools.count()


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30, check=check)


def unavailable() -> str | None:
    """Why network namespaces cannot be made here, or None when they can."""
    if shutil.which("ip") is None:
        return "iproute2's `ip` is not installed (apt-get install iproute2)"
    probe = f"vsprobe{os.getpid()}"
    r = _ip("netns", "add", probe, check=False)
    if r.returncode != 0:
        return f"`ip netns add` failed (needs root or CAP_SYS_ADMIN): {r.stderr.strip()}"
    _ip("netns", "del", probe, check=False)
    return None


class Hosts:
    """Namespaces ``names`` on one bridge, addressed ``SUBNET.11``, ``.12``, … in that order."""

    def __init__(self, names: Sequence[str]):
        tag = f"vs{os.getpid()}x{next(_serial)}"
        self.switch = f"{tag}-sw"
        self.ns = {n: f"{tag}-{n}" for n in names}
        self.addrs = {n: f"{SUBNET}.{11 + i}" for i, n in enumerate(names)}
        self.ports = {n: f"p{i}" for i, n in enumerate(names)}
        self._made: list[str] = []

    def __enter__(self) -> "Hosts":
        try:
            self._up()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _add_ns(self, ns: str) -> None:
        _ip("netns", "add", ns)
        self._made.append(ns)
        _ip("-n", ns, "link", "set", "lo", "up")

    def _up(self) -> None:
        self._add_ns(self.switch)
        _ip("-n", self.switch, "link", "add", "br0", "type", "bridge")
        _ip("-n", self.switch, "link", "set", "br0", "up")
        for name, ns in self.ns.items():
            self._add_ns(ns)
            port = self.ports[name]
            _ip("link", "add", "eth0", "netns", ns, "type", "veth", "peer", "name", port, "netns", self.switch)
            _ip("-n", self.switch, "link", "set", port, "master", "br0")
            _ip("-n", self.switch, "link", "set", port, "up")
            _ip("-n", ns, "addr", "add", f"{self.addrs[name]}/24", "dev", "eth0")
            _ip("-n", ns, "link", "set", "eth0", "up")

    def prefix(self, name: str) -> list[str]:
        """The command prefix that runs a program on host ``name``."""
        return ["ip", "netns", "exec", self.ns[name]]

    def cut(self, name: str) -> None:
        """Pull host ``name``'s cable: its switch port goes down; packets to and from it are lost."""
        _ip("-n", self.switch, "link", "set", self.ports[name], "down")

    def restore(self, name: str) -> None:
        _ip("-n", self.switch, "link", "set", self.ports[name], "up")

    def close(self) -> None:
        for ns in reversed(self._made):
            r = _ip("netns", "pids", ns, check=False)
            for pid in r.stdout.split():
                try:
                    os.kill(int(pid), signal.SIGKILL)
                except (ProcessLookupError, ValueError):
                    pass
            _ip("netns", "del", ns, check=False)
        self._made.clear()

    def exists(self) -> list[str]:
        """The namespaces of these hosts that still exist (for tests of the clean-up)."""
        listed = _ip("netns", "list", check=False).stdout.split()
        return [ns for ns in [self.switch, *self.ns.values()] if ns in listed]

"""A fault-injecting TCP proxy in front of every master's Raft port, able to cut one pair of masters.

Layout: master `m` listens for Raft on a private port (`tessera master --raft-bind`) and advertises
another (`--raft`), where this proxy listens and forwards to the private one. Every Raft byte between
two masters therefore crosses exactly one proxy: pysyncobj only dials from the node with the larger
address to the smaller one (`transport.py`, `_shouldConnect`), so the connection between `a` and `b`
enters the proxy of the smaller of the two and nothing else carries their traffic.

Which master dialled is not in the bytes we can read (the Raft port is encrypted), so the proxy asks
the kernel: the accepted connection's remote (host, port) is a socket owned by exactly one master
process, found with psutil by pid. A connection whose owner cannot be found (its process just died)
is closed; pysyncobj dials again.

Two ways to cut a pair, both healed by `heal`:
- `blackhole`: bytes are swallowed in both directions and new connections are accepted but stay
  silent, like a network that drops packets. pysyncobj does not notice (its connection timeout is an
  hour); Raft does, through missing heartbeats. On heal those connections are closed, since bytes
  were lost from their streams, and pysyncobj reconnects.
- `reset`: existing connections are closed and new ones closed at once, like a firewall rejecting.

Everything runs on threads (one acceptor per master, two pumps per connection) and stops with
`close()`; sockets are bound to 127.0.0.1 on ports the caller chose.
"""

from __future__ import annotations

import logging
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

import psutil

log = logging.getLogger("tessera.faults.proxy")

BLACKHOLE = "blackhole"
RESET = "reset"


def _pair(a: str, b: str) -> frozenset[str]:
    return frozenset((a, b))


@dataclass(eq=False)
class _Link:
    """One proxied connection: `peer` (the dialling master) -> `target` (the master behind the proxy)."""

    peer: str
    target: str
    client: socket.socket
    upstream: socket.socket
    cut: bool = False  # bytes were dropped: the streams are broken, close on heal
    closed: bool = False
    lock: threading.Lock = field(default_factory=threading.Lock)

    def close(self) -> None:
        with self.lock:
            if self.closed:
                return
            self.closed = True
        for s in (self.client, self.upstream):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()


class RaftProxies:
    """Proxies for a set of masters. `routes` maps a master name to (listen address, bind address);
    `pids` returns the current pid of every running master by name (it changes across restarts)."""

    def __init__(self, routes: dict[str, tuple[str, str]], pids: Callable[[], dict[str, int]]) -> None:
        self._routes = dict(routes)
        self._pids = pids
        self._lock = threading.Lock()
        self._cuts: dict[frozenset[str], str] = {}
        self._links: set[_Link] = set()
        self._servers: list[socket.socket] = []
        self._stopping = threading.Event()
        self._threads: list[threading.Thread] = []
        self.connections_seen = 0
        self.unidentified = 0

    # ---- lifecycle -----------------------------------------------------------------------------
    def start(self) -> RaftProxies:
        for name, (listen, _bind) in self._routes.items():
            host, port = listen.rsplit(":", 1)
            srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            srv.bind((host, int(port)))
            srv.listen(64)
            srv.settimeout(0.2)
            self._servers.append(srv)
            t = threading.Thread(target=self._accept_loop, args=(name, srv), name=f"proxy-{name}", daemon=True)
            t.start()
            self._threads.append(t)
        return self

    def close(self) -> None:
        self._stopping.set()
        for srv in self._servers:
            srv.close()
        with self._lock:
            links = list(self._links)
        for link in links:
            link.close()
        for t in self._threads:
            t.join(timeout=2)

    # ---- faults --------------------------------------------------------------------------------
    def cut(self, a: str, b: str, mode: str = BLACKHOLE) -> None:
        """Cut the link between masters `a` and `b` (both directions) until `heal`."""
        if mode not in (BLACKHOLE, RESET):
            raise ValueError(f"unknown cut mode {mode!r}")
        pair = _pair(a, b)
        with self._lock:
            self._cuts[pair] = mode
            affected = [link for link in self._links if _pair(link.peer, link.target) == pair]
            for link in affected:
                link.cut = True
        if mode == RESET:
            for link in affected:
                link.close()

    def isolate(self, name: str, mode: str = BLACKHOLE) -> None:
        for other in self._routes:
            if other != name:
                self.cut(name, other, mode)

    def heal(self) -> None:
        """Restore every link; connections that lost bytes are closed so both ends dial again."""
        with self._lock:
            self._cuts.clear()
            broken = [link for link in self._links if link.cut]
        for link in broken:
            link.close()

    def cuts(self) -> dict[frozenset[str], str]:
        with self._lock:
            return dict(self._cuts)

    # ---- plumbing ------------------------------------------------------------------------------
    def _owner(self, address: tuple[str, int]) -> str | None:
        for name, pid in self._pids().items():
            try:
                conns = psutil.Process(pid).net_connections(kind="tcp4")
            except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                continue
            for c in conns:
                if c.laddr and (c.laddr.ip, c.laddr.port) == address:
                    return name
        return None

    def _accept_loop(self, target: str, srv: socket.socket) -> None:
        bind = self._routes[target][1]
        host, port = bind.rsplit(":", 1)
        while not self._stopping.is_set():
            try:
                client, remote = srv.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self.connections_seen += 1
            peer = self._owner(remote)
            if peer is None or peer == target:
                self.unidentified += 1
                client.close()
                continue
            with self._lock:
                mode = self._cuts.get(_pair(peer, target))
            if mode == RESET:
                client.close()
                continue
            try:
                upstream = socket.create_connection((host, int(port)), timeout=1.0)
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)
            client.settimeout(None)
            for s in (client, upstream):
                s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            link = _Link(peer, target, client, upstream, cut=mode == BLACKHOLE)
            with self._lock:
                self._links.add(link)
            for src, dst in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(link, src, dst), daemon=True,
                                 name=f"pump-{peer}-{target}").start()

    def _pump(self, link: _Link, src: socket.socket, dst: socket.socket) -> None:
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                if link.cut:
                    continue  # swallowed: the network dropped it
                dst.sendall(data)
        except OSError:
            pass
        finally:
            link.close()
            with self._lock:
                self._links.discard(link)

"""The Raft proxy cuts exactly the pair it is told to, both ways, and heals: checked with real sockets,
the dialling side identified by the kernel as this test's own process."""

from __future__ import annotations

import os
import socket
import threading
from collections.abc import Iterator

import pytest

from tests.faults.proxy import BLACKHOLE, RESET, RaftProxies
from tests.support.cluster import free_port


@pytest.fixture
def proxied() -> Iterator[tuple[RaftProxies, str]]:
    """Master "b" is an echo server behind its proxy; this process plays master "a", which dials it."""
    bind = ("127.0.0.1", free_port())
    server = socket.create_server(bind)
    server.settimeout(0.2)
    stop = threading.Event()

    def echo(conn: socket.socket) -> None:
        with conn:
            while data := conn.recv(4096):
                conn.sendall(data)

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except TimeoutError:
                continue
            except OSError:
                return  # closed at teardown
            threading.Thread(target=echo, args=(conn,), daemon=True).start()

    server_thread = threading.Thread(target=serve, daemon=True)
    server_thread.start()
    listen = f"127.0.0.1:{free_port()}"
    proxies = RaftProxies({"b": (listen, f"{bind[0]}:{bind[1]}")}, lambda: {"a": os.getpid()}).start()
    yield proxies, listen
    proxies.close()
    stop.set()
    server_thread.join(timeout=2)
    server.close()


def _dial(listen: str) -> socket.socket:
    host, port = listen.rsplit(":", 1)
    s = socket.create_connection((host, int(port)), timeout=2)
    s.settimeout(0.5)
    return s


def _echoes(s: socket.socket, payload: bytes = b"append-entries") -> bool:
    try:
        s.sendall(payload)
        return s.recv(4096) == payload
    except OSError:
        return False


def test_a_blackholed_pair_swallows_bytes_until_healed_then_reconnects(proxied: tuple[RaftProxies, str]) -> None:
    proxies, listen = proxied
    conn = _dial(listen)
    assert _echoes(conn)
    proxies.cut("a", "b", BLACKHOLE)
    assert not _echoes(conn)  # nothing comes back, and the connection stays open
    fresh = _dial(listen)  # a new connection is accepted but silent too
    assert not _echoes(fresh)
    proxies.heal()
    conn.settimeout(2)
    assert conn.recv(4096) == b""  # the broken stream is closed, so the peer dials again
    again = _dial(listen)
    assert _echoes(again)
    assert proxies.connections_seen == 3 and proxies.unidentified == 0


def test_a_reset_pair_closes_connections_and_refuses_new_ones(proxied: tuple[RaftProxies, str]) -> None:
    proxies, listen = proxied
    conn = _dial(listen)
    assert _echoes(conn)
    proxies.cut("b", "a", RESET)
    assert not _echoes(conn)
    assert not _echoes(_dial(listen))
    proxies.heal()
    assert _echoes(_dial(listen))


def test_a_cut_between_other_masters_leaves_this_pair_alone(proxied: tuple[RaftProxies, str]) -> None:
    proxies, listen = proxied
    conn = _dial(listen)
    proxies.cut("b", "c", BLACKHOLE)
    assert _echoes(conn)


def test_a_connection_from_an_unknown_process_is_closed() -> None:
    proxies = RaftProxies({"b": (f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}")}, dict).start()
    try:
        conn = _dial(proxies._routes["b"][0])
        conn.settimeout(2)
        assert conn.recv(10) == b""
        assert proxies.unidentified == 1
    finally:
        proxies.close()

"""The HAProxy configuration of the balanced services (control_plane/discovery/haproxy_config.py), checked
by the real `haproxy -c` (Debian's haproxy; .ci/run installs it)."""

from __future__ import annotations

import shutil
from pathlib import Path

from tessera.control_plane.discovery.endpoints import Endpoint, Port
from tessera.control_plane.discovery.haproxy import Haproxy
from tessera.control_plane.discovery.haproxy_config import LB_MODE, LB_PORT, LB_PORT_NAME, render, services_of


def web(task_id: str, address: str, port: int, **labels: str) -> Endpoint:
    return Endpoint(task_id, "web", "svc", address, (Port(port, "tcp", "http"), Port(port + 1, "tcp", "admin")),
                    tuple({LB_PORT: "10080", **labels}.items()))


def test_tasks_asking_for_a_service_port_are_the_servers_of_one_backend() -> None:
    backends, problems = services_of([web("web.2", "127.0.0.2", 31002), web("web.1", "127.0.0.1", 31001),
                                      Endpoint("db.1", "db", "svc", "127.0.0.3", (Port(31005),))])
    assert problems == ()
    assert len(backends) == 1
    b = backends[0]
    assert (b.service, b.service_port, b.mode) == ("web", 10080, "tcp")
    assert b.servers == (("web-1", "127.0.0.1", 31001), ("web-2", "127.0.0.2", 31002))  # sorted: same text


def test_labels_choose_the_mode_and_the_port() -> None:
    backends, _ = services_of([web("web.1", "127.0.0.1", 31001, **{LB_MODE: "http", LB_PORT_NAME: "admin"})])
    assert backends[0].mode == "http" and backends[0].servers == (("web-1", "127.0.0.1", 31002),)


def test_problems_do_not_stop_the_others() -> None:
    other = Endpoint("api.1", "api", "svc", "127.0.0.4", (Port(31009),), ((LB_PORT, "10080"),))
    bad = Endpoint("x.1", "x", "svc", "127.0.0.5", (Port(31010),), ((LB_PORT, "http"),))
    unnamed = web("web.9", "127.0.0.9", 31020, **{LB_PORT_NAME: "metrics"})
    rendered = render([web("web.1", "127.0.0.1", 31001), other, bad, unnamed])
    assert [b.service for b in rendered.backends] == ["api"]  # the task id sorting first keeps the port
    assert len(rendered.problems) == 3
    assert any("service port 10080 is api's already; web not balanced there" in p for p in rendered.problems)
    assert all(f"# problem: {p}" in rendered.text for p in rendered.problems)


def test_the_rendered_configuration_is_one_haproxy_accepts(tmp_path: Path) -> None:
    assert shutil.which("haproxy"), "the haproxy package is needed (.ci/run installs it)"
    proxy = Haproxy(tmp_path)
    rendered = render([web("web.1", "127.0.0.1", 31001), web("web.2", "127.0.0.2", 31002, **{LB_MODE: "http"})])
    assert proxy.check(rendered.text) is None, rendered.text
    assert render([]).backends == ()  # no service: nothing HAProxy could run (it needs a listener)
    assert proxy.check(rendered.text.replace("balance roundrobin", "balance nonsense")) is not None

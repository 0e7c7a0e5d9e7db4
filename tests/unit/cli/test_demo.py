"""The demo service `tessera up --demo` applies: a valid app definition (through the same YAML reading and
checks as `tessera service apply`), and what up prints about it with and without HAProxy."""

from __future__ import annotations

import os
from pathlib import Path

from tessera.control_plane.cli.definitions import load_definition
from tessera.control_plane.cli.demo import HELLO, demo_lines, find_haproxy, hello_definition
from tessera.sdk.services.app import parse_app


def test_the_demo_service_is_two_checked_http_servers_on_any_port_of_the_offer() -> None:
    app = parse_app(load_definition(hello_definition(None), "hello.yaml").data)
    assert (app.id, app.instances, app.user) == (HELLO, 2, "")
    assert [(p.name, p.host_port) for p in app.ports] == [("http", 0)]
    assert app.health_checks[0].protocol == "HTTP" and "$PORT0" in app.cmd
    assert dict(app.labels) == {}


def test_with_a_load_balancer_the_demo_service_asks_for_its_service_port() -> None:
    app = parse_app(load_definition(hello_definition(20471, "nobody"), "hello.yaml").data)
    assert dict(app.labels) == {"tessera.lb.port": "20471", "tessera.lb.mode": "http"} and app.user == "nobody"


def test_up_says_how_to_reach_the_demo_service_and_why_there_is_no_load_balancer(tmp_path: Path) -> None:
    definition = tmp_path / "hello.yaml"
    status, try_lines = demo_lines("127.0.0.1:5353", None, None, definition)
    assert status == [f"demo service: hello, 2 instances of an HTTP server, kept by `tessera services` "
                      f"(the definition: {definition})", "lb: not started (haproxy not found)"]
    assert "tessera service list" in try_lines and "dig @127.0.0.1 -p 5353 hello.tessera A" in try_lines
    status, try_lines = demo_lines("127.0.0.1:5353", 20471, None, definition)
    assert status[1] == "lb: http://127.0.0.1:20471/ (the demo service hello, through HAProxy)"
    assert "curl http://127.0.0.1:20471/" in try_lines
    status, _ = demo_lines("127.0.0.1:5353", None, "no tessera-services framework is registered", definition)
    assert status[0].startswith("demo service: hello NOT applied: no tessera-services framework is registered")


def test_haproxy_is_looked_up_on_the_path_up_hands_its_children(tmp_path: Path) -> None:
    assert find_haproxy(str(tmp_path)) is None
    binary = tmp_path / "haproxy"
    binary.write_text("#!/bin/sh\n")
    os.chmod(binary, 0o755)
    assert find_haproxy(f"/nonexistent:{tmp_path}") == str(binary)
